"""Tokenizers for the chat format of spec section 9.

:class:`ByteTokenizer` is the tokenizer of the project's small model: UTF-8 bytes plus the
special strings of the chat format as single ids.  Its id layout (vocab_size 320)::

    id        token
    0         <｜begin▁of▁sentence｜>   BOS (same id as in the real V4 tokenizer)
    1         <｜end▁of▁sentence｜>     EOS (same id as in the real V4 tokenizer)
    2         <pad>                    padding; never produced by encode()
    3..20     SPECIAL_STRINGS, in order:
              3 <｜User｜>  4 <｜Assistant｜>  5 <｜latest_reminder｜>  6 <think>  7 </think>
              8 ｜DSML｜  9 <｜DSML｜tool_calls>  10 </｜DSML｜tool_calls>  11 <｜DSML｜invoke
              12 </｜DSML｜invoke>  13 <｜DSML｜parameter  14 </｜DSML｜parameter>
              15 <｜action｜>  16 <｜query｜>  17 <｜authority｜>  18 <｜domain｜>  19 <｜title｜>
              20 <｜read_url｜>
    21..31    reserved for more special strings (unused)
    32..287   byte b -> id 32 + b
    288..319  reserved (unused; pads the vocabulary to a multiple of 32)

Every token string that spec 9 names is one id.  The DSML tag openers and closers are single ids
too, so that the small model writes a tool call in a few ids; ``｜DSML｜`` alone (the token of
the real tokenizer) still covers tags that are not in the list.  The invoke and parameter
openers stop before their attributes: ``<｜DSML｜invoke name="f">`` is id 11, then the bytes of
`` name="f">``.  ``<tool_result>`` is plain text (bytes), as in the real format.

The layout's numbers (:data:`BOS_ID`, :data:`EOS_ID`, :data:`PAD_ID`, :data:`BYTE_OFFSET`,
:data:`VOCAB_SIZE`) and the plain-text path (:func:`encode_text`, :func:`decode_ids`) are
defined here once; :mod:`v4lab.data` re-exports them for the training and evaluation code.

:func:`load_tokenizer` wraps a real ``tokenizer.json`` (for instance DeepSeek's) with the
``tokenizers`` package behind the same interface, and :func:`check_chat_tokens` verifies that
the chat tokens are single ids in any of these tokenizers.

Encoding a rendered prompt (:func:`v4lab.chat.encode_messages`, :func:`v4lab.chat.render`)
needs no ``add_bos``: the prompt already
starts with the BOS string, which encodes to the BOS id.  Special strings typed by a user are
encoded as special ids too; strip them from untrusted text before rendering if that matters.
"""
from __future__ import annotations

import os
import re
from typing import Iterable

import numpy as np

from .chat_tokens import (ASSISTANT, BOS, DSML, EOS, INVOKE_CLOSE, INVOKE_OPEN, LATEST_REMINDER,
                          PARAMETER_CLOSE, PARAMETER_OPEN, TASK_TOKENS, THINK_CLOSE, THINK_OPEN,
                          TOOL_CALLS_CLOSE, TOOL_CALLS_OPEN, USER)

# ---------------------------------------------------------------------------------------------
# The byte tokenizer's id layout: the one definition (v4lab.data re-exports these names)

BOS_ID, EOS_ID, PAD_ID = 0, 1, 2
FIRST_SPECIAL_ID = 3        # ids 3..31 are special strings
BYTE_OFFSET = 32            # byte b -> 32 + b
VOCAB_SIZE = 320            # 288..319 reserved


def encode_text(text: str) -> list[int]:
    """Token ids of plain text: ``[32 + b for b in text.encode("utf-8")]``.

    Equal to ``ByteTokenizer``'s encoding of text that contains no special-token strings, with
    no BOS/EOS added.
    """
    return [BYTE_OFFSET + b for b in text.encode("utf-8")]


def encode_text_array(text: str) -> np.ndarray:
    """:func:`encode_text` as a uint16 array (fast for megabytes of text)."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16) + BYTE_OFFSET


def decode_ids(ids) -> str:
    """Inverse of :func:`encode_text`; special ids (< 32) and padding ids (>= 288) are dropped."""
    data = bytes(int(i) - BYTE_OFFSET for i in ids if BYTE_OFFSET <= int(i) < BYTE_OFFSET + 256)
    return data.decode("utf-8", errors="replace")


PAD = "<pad>"

# Special strings of ByteTokenizer from id 3 on. Append new ones at the end (ids 21..31 are
# free); never reorder, or trained checkpoints read the wrong ids.
SPECIAL_STRINGS = (
    USER, ASSISTANT, LATEST_REMINDER, THINK_OPEN, THINK_CLOSE,
    DSML, TOOL_CALLS_OPEN, TOOL_CALLS_CLOSE, INVOKE_OPEN, INVOKE_CLOSE,
    PARAMETER_OPEN, PARAMETER_CLOSE,
    *TASK_TOKENS,
)

# The strings every tokenizer used with the chat format must keep as one id each: every
# special token that v4lab.chat.encode_messages writes (turn and thinking markers, the DSML
# token, the task tokens).  <tool_result> is plain text in the real format.
CHAT_TOKENS = (BOS, EOS, USER, ASSISTANT, LATEST_REMINDER, THINK_OPEN, THINK_CLOSE, DSML,
               *TASK_TOKENS)


class ByteTokenizer:
    """Byte-level tokenizer with the chat special strings as single ids (layout in module doc)."""

    vocab_size = VOCAB_SIZE
    byte_offset = BYTE_OFFSET  # id of byte 0
    bos_id, eos_id, pad_id = BOS_ID, EOS_ID, PAD_ID

    def __init__(self):
        first = FIRST_SPECIAL_ID
        assert first + len(SPECIAL_STRINGS) <= self.byte_offset, "too many special strings"
        self.special_tokens: dict[str, int] = {BOS: self.bos_id, EOS: self.eos_id,
                                               PAD: self.pad_id}
        self.special_tokens.update({s: first + i for i, s in enumerate(SPECIAL_STRINGS)})
        self._special_by_id = {i: s for s, i in self.special_tokens.items()}
        # encode() matches special strings longest first (e.g. "<｜DSML｜invoke" before
        # "｜DSML｜"); "<pad>" in text stays plain bytes.
        matched = sorted((s for s in self.special_tokens if s != PAD), key=len, reverse=True)
        self._special_pattern = re.compile("|".join(map(re.escape, matched)))

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Ids of ``text``: special strings become their single id, the rest UTF-8 bytes."""
        ids = [self.bos_id] if add_bos else []
        pos = 0
        for match in self._special_pattern.finditer(text):
            ids.extend(encode_text(text[pos:match.start()]))
            ids.append(self.special_tokens[match.group()])
            pos = match.end()
        ids.extend(encode_text(text[pos:]))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: special ids give their strings, byte ids their bytes as UTF-8.

        Broken UTF-8 (say, a sequence cut in the middle of a character) and the reserved ids
        decode to U+FFFD; ids outside ``0..vocab_size-1`` raise ``ValueError``.
        """
        pieces: list[str] = []
        buffer = bytearray()
        for i in ids:
            i = int(i)
            if self.byte_offset <= i < self.byte_offset + 256:
                buffer.append(i - self.byte_offset)
                continue
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
            if buffer:
                pieces.append(buffer.decode("utf-8", errors="replace"))
                buffer.clear()
            pieces.append(self._special_by_id.get(i, "\ufffd"))
        pieces.append(buffer.decode("utf-8", errors="replace"))
        return "".join(pieces)


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (from a ``tokenizer.json``) with ByteTokenizer's interface.

    ``special_tokens`` lists the added tokens marked special; ``bos_id``/``eos_id`` are the ids
    of the BOS/EOS strings (None when missing); ``pad_id`` is DeepSeek's ``<｜▁pad▁｜>`` or
    ``<pad>`` when the tokenizer has one.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.special_tokens = {t.content: i for i, t in
                               tokenizer.get_added_tokens_decoder().items() if t.special}
        self.bos_id = tokenizer.token_to_id(BOS)
        self.eos_id = tokenizer.token_to_id(EOS)
        pads = (tokenizer.token_to_id(p) for p in ("<｜▁pad▁｜>", PAD))
        self.pad_id = next((i for i in pads if i is not None), None)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Ids of ``text``; added tokens (the chat markers) are matched in the text."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add_bos:
            if self.bos_id is None:
                raise ValueError(f"this tokenizer has no {BOS!r} token")
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, special tokens included."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def load_tokenizer(path: str | os.PathLike) -> HFTokenizer:
    """Load a Hugging Face ``tokenizer.json`` (the file, or the folder that holds it)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as e:  # an optional dependency: pip install tokenizers
        raise ImportError("load_tokenizer needs the 'tokenizers' package "
                          "(pip install tokenizers)") from e
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    return HFTokenizer(Tokenizer.from_file(path))


def check_chat_tokens(tokenizer, tokens: Iterable[str] = CHAT_TOKENS) -> dict[str, int]:
    """Check that each chat token is one id that decodes back to itself; return their ids.

    Works with :class:`ByteTokenizer` and :class:`HFTokenizer`.  Raises ``ValueError`` naming
    every token that the tokenizer splits (a tokenizer that was not made for V4's format).
    """
    found, problems = {}, []
    for token in tokens:
        ids = tokenizer.encode(token)
        if len(ids) == 1 and tokenizer.decode(ids) == token:
            found[token] = ids[0]
        else:
            problems.append(f"{token!r} -> {ids}")
    if problems:
        raise ValueError("chat tokens that are not single ids in this tokenizer: "
                         + ", ".join(problems))
    return found


__all__ = ["ByteTokenizer", "HFTokenizer", "load_tokenizer", "check_chat_tokens",
           "SPECIAL_STRINGS", "CHAT_TOKENS", "PAD", "BOS_ID", "EOS_ID", "PAD_ID",
           "FIRST_SPECIAL_ID", "BYTE_OFFSET", "VOCAB_SIZE", "encode_text", "encode_text_array",
           "decode_ids"]
