"""Data for flash-mini: public-domain documents, synthetic long-context tasks, a training mix.

Everything here is byte-level: one token per UTF-8 byte (``id = 32 + byte``), and the texts
are kept ASCII, so a byte offset, a string index and a token position are the same number
(plus one when a BOS token is put in front).

* ``TrainingMix`` (defined here): plain text windows mixed with needle / MRCR tasks at the
  training length, deterministic given ``seed`` and the step, so a run can resume at any step.
* The documents (:mod:`v4lab.corpus`): ``load_documents(split)``, ``long_document()``,
  ``iter_windows()``, ``normalize_text()``, ``external_text()`` (out-of-distribution text).
* The tasks (:mod:`v4lab.needle_tasks`): ``make_needle_task`` / ``make_mrcr_task``, key -> value
  facts hidden in real text at chosen depths and block offsets, then a question.
* The byte encoding (:mod:`v4lab.tokenizer`, the plain-text path of its ``ByteTokenizer``):
  ``BOS_ID``, ``EOS_ID``, ``PAD_ID``, ``BYTE_OFFSET``, ``VOCAB_SIZE``, ``encode_text``,
  ``decode_ids``.

Every name above stays importable from here (``from v4lab.data import make_needle_task``).
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Mapping, NamedTuple, Sequence

import numpy as np

from .corpus import (DATA_FILES, EXTERNAL_PACKAGE, SPLITS, Document, Window,  # noqa: F401
                     data_dir, external_text, iter_windows, load_documents, long_document,
                     normalize_text)
from .needle_tasks import (ADJECTIVES, FACT, MRCR_QUESTION, NEEDLE_QUESTION, NOUNS,  # noqa: F401
                           ORDINALS, VALUE_DIGITS, NeedleSpan, Straddle, TaskSample,
                           make_mrcr_task, make_needle_task, question_for)
from .tokenizer import (BOS_ID, BYTE_OFFSET, EOS_ID, PAD_ID, VOCAB_SIZE,  # noqa: F401
                        decode_ids, encode_text, encode_text_array)

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
# Training mix

TASK_KINDS = ("needle", "multi_needle", "mrcr")


class MixBatch(NamedTuple):
    tokens: "torch.Tensor"      # [B, seq_len + 1] int64: inputs tokens[:, :-1], targets [:, 1:]
    loss_mask: "torch.Tensor"   # [B, seq_len] float32 weight of each target token
    kinds: tuple[str, ...]      # "text" or a task kind, per row
    answer_mask: "torch.Tensor | None" = None   # [B, seq_len] 1.0 on answer targets, else 0.0


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
            parts += [encode_text_array(t), sep]
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
                q = question_for(task.needle_spans, i)
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
            tokens = np.concatenate([[BOS_ID], encode_text_array(text)]).astype(np.int64)
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

