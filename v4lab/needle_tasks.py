"""Synthetic long-context tasks: facts hidden in real text, then a question whose answer is one.

* ``make_needle_task``: key -> value facts ("The code of the red fox is 48213.") hidden in a
  haystack at chosen depths, then "What is the code of the red fox?".
* ``make_mrcr_task``: multi-round recall: several codes for one key (and facts about other
  keys), then "What is the third of them?".

Facts can be put at chosen offsets modulo the compression block sizes (4 for CSA, 128 for HCA,
``straddle=``), so a value is split across two compressed entries.  Texts are ASCII: byte
offsets, string indices and token positions (``TaskSample.token_ids``) agree.  All of these are
also importable from :mod:`v4lab.data`, whose ``TrainingMix`` mixes these tasks into training.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

from .corpus import normalize_text
from .tokenizer import BOS_ID, encode_text

__all__ = ["ADJECTIVES", "NOUNS", "FACT", "NEEDLE_QUESTION", "MRCR_QUESTION", "ORDINALS",
           "VALUE_DIGITS", "Straddle", "NeedleSpan", "TaskSample", "make_needle_task",
           "make_mrcr_task", "question_for"]

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



def question_for(spans: Sequence[NeedleSpan], i: int) -> str:
    """The question whose answer is span ``i``'s value: a needle question when its key is unique
    among ``spans``, else a multi-round-recall question with its ordinal among that key's facts."""
    same = [j for j, s in enumerate(spans) if s.key == spans[i].key]
    if len(same) == 1:
        return NEEDLE_QUESTION.format(key=spans[i].key)
    return MRCR_QUESTION.format(n=len(same), key=spans[i].key, ordinal=_ordinal(same.index(i) + 1))
