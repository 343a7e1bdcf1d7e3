"""Evaluation of flash-mini: needle retrieval, indexer recall, bits per byte, MTP speculation.

* ``needle_accuracy(model, haystack_text, context_len, ...)`` hides a key -> value fact in any text
  (so it also works on text the model never saw), asks for the value at the end, decodes greedily
  and scores exact matches, per depth.  With ``recall=True`` it also records, for every CSA layer,
  how often the Lightning Indexer's top-k contains a compressed entry of the needle's value while
  the answer is produced, next to the chance level k / number of entries.
* ``mrcr_accuracy(model, haystack_text, context_len, n_needles=8)``: multi-round recall, the
  n-th of n codes given for the same key; accuracy per asked rank and per depth.
* ``bits_per_byte(model, texts, window, stride)``: next-byte cross-entropy in bits.
* ``speculative_generate(model, ids, n)``: greedy decoding that drafts one token with the MTP
  block and verifies it with the main model; the output is identical to plain greedy decoding.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .attention import ForwardContext
from .data import BOS_ID, decode_ids, encode_text, iter_windows, make_needle_task
from .generation import check_room, generate, prefill


@dataclass
class NeedleResult:
    context_len: int
    trials: list = field(default_factory=list)  # dicts: depth, value, answer, correct, recall{layer: bool}

    @property
    def accuracy(self) -> float:
        return sum(t["correct"] for t in self.trials) / max(1, len(self.trials))

    def by_depth(self) -> dict:
        out = {}
        for t in self.trials:
            out.setdefault(round(t["depth"], 3), []).append(t["correct"])
        return {d: sum(v) / len(v) for d, v in sorted(out.items())}

    def recall(self) -> dict:
        """Per CSA layer: fraction of answer steps whose top-k held a needle entry, and chance."""
        hits, chance = {}, {}
        for t in self.trials:
            for layer, r in t.get("recall", {}).items():
                hits.setdefault(layer, []).append(r["hit"])
                chance.setdefault(layer, []).append(r["chance"])
        return {l: {"recall": sum(h) / len(h), "chance": sum(chance[l]) / len(chance[l])} for l, h in hits.items()}


@torch.no_grad()
def answer(model, prompt_ids: list[int], max_new: int, stop_id: int | None = None, chunk: int = 2048,
           record: bool = False, progress: bool = False, cache=None, on_token=None):
    """Greedy answer to a prompt; returns (new ids, records of the answer steps or None).

    It is ``generate`` (greedy, ``ctx_prompt="last"``), so the decode loop is
    :func:`v4lab.generation.decode`: the answer ends at ``stop_id`` (included) or after ``max_new``
    tokens, and every answer token is fed, so the cache ends at the end of the answer.  With
    ``record=True`` the records cover the steps that chose an answer token (the last prompt token
    and every answer token but the last).  ``cache``: a ``model.new_cache(1)`` to fill (to measure
    it afterwards), else a new one; its ``pos`` plus the prompt plus ``max_new`` must fit in
    ``max_position_embeddings`` (checked before any work).  ``on_token(id)`` is called with each
    new token as soon as it is chosen (for streaming)."""
    if not isinstance(max_new, int) or max_new < 0:
        raise ValueError(f"max_new must be an integer >= 0, got {max_new!r}")
    ids = torch.tensor([prompt_ids], device=model.device)
    if ids.numel() == 0:
        raise ValueError("answer: the prompt is empty")
    if cache is not None:
        cache.check(model, 1, ids.shape[1])
    check_room(model, cache, ids.shape[1], max_new, what="answer")
    # everything but the last prompt token without recording, then the rest with records
    ctx = ForwardContext(record=record)
    res = generate(model, ids, int(max_new), stop=stop_id, cache=cache, on_token=on_token, prefill_chunk=chunk,
                   progress=progress, ctx=ctx, ctx_prompt="last")
    return res.tokens, (ctx.records if record else None)


def answer_task(model, task, chunk: int, record: bool):
    """Greedy answer to a needle / MRCR task (BOS + prompt, up to the answer's length, stop at the
    newline): (answer ids, wanted ids, records or None)."""
    want = encode_text(task.answer)
    got, recs = answer(model, [BOS_ID] + encode_text(task.prompt), len(want), stop_id=encode_text("\n")[0],
                       chunk=chunk, record=record)
    return got, want, recs


def needle_accuracy(model, haystack_text: str, context_len: int, n_trials: int = 5,
                    depths=(0.1, 0.3, 0.5, 0.7, 0.9), seed: int = 0, recall: bool = False,
                    chunk: int = 2048, progress: bool = False) -> NeedleResult:
    """Exact-match accuracy of needle retrieval at ``context_len`` tokens (BOS included).
    ``n_trials`` needles per depth; the haystack is cut from ``haystack_text`` at random offsets."""
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    res = NeedleResult(context_len)
    jobs = [(d, i) for d in depths for i in range(n_trials)]
    for d, _ in tqdm(jobs, desc=f"needles @ {context_len}", disable=not progress, leave=False):
        task = make_needle_task(haystack_text, context_len - 1, rng, depth=d, position_offset=1)
        got, want, recs = answer_task(model, task, chunk, recall)
        t = {"depth": d, "value": task.value, "answer": decode_ids(got), "correct": got == want}
        if recall:
            t["recall"] = _needle_recall(recs, task, model.config)
        res.trials.append(t)
    return res


@dataclass
class MRCRResult(NeedleResult):
    """Multi-round recall: trials are dicts with ``ask`` (1-based: which of the ``n_needles`` same-key
    facts was asked for), ``depth`` (where that fact sits), value, answer, correct, ``other_rank``
    (a wrong answer that is another code of the asked key: that code's rank, else None), recall."""

    n_needles: int = 8

    def by_ask(self) -> dict:
        """Exact-match accuracy per asked rank i = 1 .. n_needles."""
        out = {}
        for t in self.trials:
            out.setdefault(t["ask"], []).append(t["correct"])
        return {i: sum(v) / len(v) for i, v in sorted(out.items())}

    @property
    def other_code_rate(self) -> float:
        """Of the wrong answers, the share that is another code of the asked key (0 when none wrong)."""
        wrong = [t for t in self.trials if not t["correct"]]
        return sum(t["other_rank"] is not None for t in wrong) / len(wrong) if wrong else 0.0

    def by_depth(self, bins: int = 5) -> dict:
        """Accuracy by the depth of the asked fact, in ``bins`` equal slices keyed by their centres."""
        out = {}
        for t in self.trials:
            b = min(int(t["depth"] * bins), bins - 1)
            out.setdefault(round((b + 0.5) / bins, 3), []).append(t["correct"])
        return {d: sum(v) / len(v) for d, v in sorted(out.items())}


def mrcr_accuracy(model, haystack_text: str, context_len: int, n_needles: int = 8, n_trials: int = 16,
                  n_distractors: int = 2, asks=None, seed: int = 0, recall: bool = False, chunk: int = 2048,
                  progress: bool = False) -> MRCRResult:
    """MRCR in small: ``n_needles`` facts give different codes for one key, spread through a
    ``context_len``-token prompt cut from ``haystack_text`` (plus ``n_distractors`` facts about
    other keys); the question asks for the i-th of them and the greedy answer is scored by exact
    match.  ``asks``: the ranks asked, one trial each (default: ``n_trials`` trials cycling through
    1 .. n_needles, so every rank is asked equally often).  With ``recall=True`` each trial also
    records whether the CSA layers' top-k held an entry of the asked code (see ``needle_picks``)."""
    from tqdm.auto import tqdm

    from .data import make_mrcr_task

    if not isinstance(n_needles, int) or n_needles < 1:
        raise ValueError(f"n_needles must be an integer >= 1, got {n_needles!r}")
    asks = [1 + i % n_needles for i in range(n_trials)] if asks is None else [int(a) for a in asks]
    bad = [a for a in asks if not 1 <= a <= n_needles]
    if bad:
        raise ValueError(f"asks must lie in 1 .. {n_needles}, got {bad}")
    check_room(model, None, context_len, 0, what="mrcr_accuracy")  # prompt + answer = context_len
    rng = random.Random(seed)
    res = MRCRResult(context_len, n_needles=n_needles)
    for k in tqdm(asks, desc=f"MRCR-{n_needles} @ {context_len}", disable=not progress, leave=False):
        task = make_mrcr_task(haystack_text, context_len - 1, rng, n_facts=n_needles, ask=k,
                              n_distractors=n_distractors, position_offset=1)
        got, want, recs = answer_task(model, task, chunk, recall)
        codes = [sp.value for sp in task.needle_spans if sp.key == task.needle_spans[task.target].key]
        said = decode_ids(got).strip()
        t = {"ask": k, "depth": task.placed_depths[task.target], "value": task.value,
             "answer": decode_ids(got), "correct": got == want,
             # a wrong answer that is another code of the asked key: its rank (retrieval right, order wrong)
             "other_rank": codes.index(said) + 1 if got != want and said in codes else None}
        if recall:
            t["recall"] = _needle_recall(recs, task, model.config)
        res.trials.append(t)
    return res


def needle_entries(task, ratio: int) -> set[int]:
    """Compressed entries (of a layer with compression ``ratio``) whose own block holds a byte of
    the asked fact's value, in a prompt that starts with BOS."""
    span = task.needle_spans[task.target]
    return {p // ratio for p in range(span.value_start + 1, span.value_end + 1)}  # +1: BOS in front


def attention_mass(records: dict, task=None) -> dict:
    """Where each layer's attention went, from the records of a ``ForwardContext(record=True)``
    pass (e.g. ``answer_task(..., record=True)``): ``{layer: {"kind", "window", "compressed",
    "sink"[, "needle"]}}``, each a softmax share averaged over heads, batch and recorded queries.
    With ``task``, "needle" (compressed layers, decode steps) is the share on the entries whose
    own block holds a byte of the asked value; it is part of "compressed".
    window + compressed + sink = 1."""
    out = {}
    for layer, rec in records.items():
        mass = torch.cat(rec["mass"], 1).flatten(0, 1)  # [batch x queries, 3]: window, compressed, sink
        row = {"kind": rec["kind"], "window": float(mass[:, 0].mean()), "compressed": float(mass[:, 1].mean()),
               "sink": float(mass[:, 2].mean())}
        if task is not None and rec.get("entry_mass"):
            want = torch.tensor(sorted(needle_entries(task, rec["ratio"])))
            shares = [float(p[0, 0][torch.isin(idx[0, 0], want)].sum()) for idx, p in rec["entry_mass"]]
            row["needle"] = sum(shares) / len(shares)
        out[layer] = row
    return out


def fact_shares(records: dict, task, kind: str = "csa") -> list[float]:
    """For each fact of ``task`` (in prompt order), the share of the answer's attention on the
    compressed entries holding that fact's value, averaged over the ``kind`` layers, heads and
    answer steps (records of ``answer_task(..., record=True)``).  With MRCR's facts that all share
    one key this shows whether the model finds the asked one or all of them alike."""
    import dataclasses

    out = []
    for i in range(len(task.needle_spans)):
        t = dataclasses.replace(task, target=i)
        rows = [r for r in attention_mass(records, t).values() if r["kind"] == kind and "needle" in r]
        if not rows:
            raise ValueError(f"no {kind} layer with per-entry records: answer with record=True")
        out.append(sum(r["needle"] for r in rows) / len(rows))
    return out


def mass_by_kind(reports: list[dict]) -> dict:
    """The mean of several ``attention_mass`` reports, per layer kind:
    ``{kind: {"window", "compressed", "sink"[, "needle"]}}``."""
    acc: dict = {}
    for rep in reports:
        for row in rep.values():
            k = acc.setdefault(row["kind"], {})
            for part, v in row.items():
                if part != "kind":
                    k.setdefault(part, []).append(v)
    return {kind: {part: sum(v) / len(v) for part, v in parts.items()} for kind, parts in acc.items()}


def needle_picks(records: dict, task, cfg) -> dict:
    """Per CSA layer, from ``ForwardContext(record=True)`` records of the answer steps: at how many
    steps the Lightning Indexer's top-k held an entry whose own block holds a byte of the asked
    needle's value (entry j pools block j and the first half of block j-1), out of how many, and
    the chance level of that per step (needle entries x k / complete entries).
    Returns ``{layer: {"hits": int, "steps": int, "chance": float}}``."""
    out = {}
    for layer, rec in records.items():
        if rec["kind"] != "csa" or not rec["sel"]:
            continue
        m = rec.get("ratio", 4)  # CSA records made before layers recorded their rate were all rate 4
        entries = needle_entries(task, m)
        sel = torch.cat(rec["sel"], 1)[0]  # [steps, k]
        steps_pos = torch.cat(rec["pos"])
        hits = sum(bool(set(row[row >= 0].tolist()) & entries) for row in sel)
        n_entries = [int(p + 1) // m for p in steps_pos.tolist()]
        chance = sum(min(1.0, len(entries) * cfg.index_topk / max(1, n)) for n in n_entries) / len(n_entries)
        out[layer] = {"hits": hits, "steps": len(sel), "chance": chance}
    return out


def _needle_recall(records: dict, task, cfg) -> dict:
    """For each CSA layer: did any answer step's top-k contain a needle entry (and the chance)?"""
    return {layer: {"hit": r["hits"] > 0, "chance": r["chance"]}
            for layer, r in needle_picks(records, task, cfg).items()}


@torch.no_grad()
def bits_per_byte(model, texts, window: int = 1024, stride: int = 512, max_windows: int | None = None) -> float:
    """Average next-byte cross-entropy in bits over ``texts`` (each byte scored once, with up to
    ``window - stride`` bytes of context before it)."""
    total, n = 0.0, 0
    count = 0
    for text in texts:
        for w in iter_windows(text, window, stride):
            ids = torch.as_tensor(w.ids, device=model.device).view(1, -1)
            logits = model(ids[:, :-1])
            tgt = ids[:, 1:]
            ce = F.cross_entropy(logits[0].float(), tgt[0], reduction="none")
            s = max(0, w.score_from - 1)
            total += float(ce[s:].sum())
            n += int(ce[s:].numel())
            count += 1
            if max_windows and count >= max_windows:
                return total / n / math.log(2)
    return total / max(1, n) / math.log(2)


# ----------------------------------------------------------------------------------------------
# MTP self-speculative decoding
# ----------------------------------------------------------------------------------------------
@dataclass
class SpeculativeResult:
    tokens: list
    drafted: int
    accepted: int
    seconds: float
    forwards: int

    @property
    def acceptance(self) -> float:
        return self.accepted / max(1, self.drafted)


@torch.no_grad()
def speculative_generate(model, input_ids, max_new_tokens: int, chunk: int = 2048) -> SpeculativeResult:
    """Greedy decoding with one MTP-drafted token per step, verified by the main model.

    The main model processes [confirmed, draft] in one forward; if its prediction after the
    confirmed token equals the draft, both are kept (and the token after them is known),
    otherwise the cache is rolled back and only the confirmed token is kept.  The tokens are
    exactly those of plain greedy decoding."""
    from .cache import LayerCache

    cfg = model.config
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=model.device).view(1, -1)
    t0 = time.perf_counter()
    cache = model.new_cache(1)
    P = ids.shape[1]
    last, H_all = prefill(model, ids, cache, chunk, progress=False, return_hidden=True)
    mtp_lc = LayerCache(cfg, cfg.mtp_ratio, 1, model.dtype, model.device, "native", "fp4",
                        kind=cfg.layer_kind(cfg.num_hidden_layers))
    mtp_pos = 0
    # the MTP block has seen (H_t, x_{t+1}) for t < P-1
    if P > 1:
        model.mtp_logits(H_all[:, : P - 1], ids[:, 1:], start_pos=0, lc=mtp_lc)
        mtp_pos = P - 1
    H_last = H_all[:, -1:]
    nxt = int(last[0].argmax())
    out, drafted, accepted, forwards = [nxt], 0, 0, 1
    while len(out) < max_new_tokens:
        # draft the token after `nxt` from the final streams at the previous position
        d_logits = model.mtp_logits(H_last, torch.tensor([[nxt]], device=model.device), start_pos=mtp_pos, lc=mtp_lc)
        mtp_pos += 1
        draft = int(d_logits[0, -1].argmax())
        drafted += 1
        snap = cache.snapshot()
        logits, H = model(torch.tensor([[nxt, draft]], device=model.device), cache=cache, return_hidden=True)
        forwards += 1
        if int(logits[0, 0].argmax()) == draft:
            accepted += 1
            out.append(draft)
            # the MTP block must also see position (nxt's) with the draft as next token
            model.mtp_logits(H[:, :1], torch.tensor([[draft]], device=model.device), start_pos=mtp_pos, lc=mtp_lc)
            mtp_pos += 1
            H_last = H[:, 1:]
            nxt = int(logits[0, 1].argmax())
            if len(out) < max_new_tokens:
                out.append(nxt)
        else:
            cache.restore(snap)
            logits, H = model(torch.tensor([[nxt]], device=model.device), cache=cache, return_hidden=True)
            forwards += 1
            H_last = H
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
    return SpeculativeResult(out[:max_new_tokens], drafted, accepted, time.perf_counter() - t0, forwards)


def quick_check(model, seed: int = 0, context_len: int = 512) -> dict:
    """The shipped model's fingerprint figures, cheap enough for CI: bits per byte on 8 windows of
    the first validation document and needle accuracy at the training length (16 trials).  The
    keys name the needle length: ``{"val_bpb_8x1024": ..., "needle_acc_512_16": ...}``."""
    from .data import load_documents

    docs = load_documents("val")
    bpb = bits_per_byte(model, [docs[0].text], window=1024, stride=512, max_windows=8)
    hay = "\n\n".join(d.text for d in docs)
    acc = needle_accuracy(model, hay, context_len, n_trials=4, depths=(0.2, 0.4, 0.6, 0.8), seed=seed).accuracy
    return {"val_bpb_8x1024": round(bpb, 4), f"needle_acc_{context_len}_16": round(acc, 4)}
