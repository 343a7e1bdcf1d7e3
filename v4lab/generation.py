"""Text generation with chunked prefill and a V4 cache.

``generate(model, input_ids, max_new_tokens)`` feeds the prompt in chunks of ``prefill_chunk``
tokens (a progress bar for long prompts), then decodes one token at a time: greedy at
``temperature=0``, otherwise temperature + nucleus (top-p) sampling with a seeded generator.

Every new token, the last one included, is fed through the model, so the returned cache ends
exactly at the end of the returned sequence (``cache.pos == previous pos + prompt + new
tokens``): a second ``generate(model, next_prompt, n, cache=result.cache)`` continues the
conversation exactly as one forward over the whole of it would.  ``result.last_logits`` holds
the prediction after the last returned token.

A batch of prompts (equal lengths: V4's compressor blocks cannot skip padding) decodes together;
each row stops at its own stop token.  ``decode`` is the one decode loop: ``generate`` runs it,
and ``v4lab.eval.answer`` (so the demo, ``python -m v4lab.demo``) runs ``generate``;
``v4lab.eval.speculative_generate`` shares ``prefill``.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from .cache import V4Cache


@dataclass
class GenerationResult:
    """What ``generate`` returns.

    ``tokens``: the new tokens (a stop token included where one was produced) -- a ``list[int]``
    for a single prompt (a list, a [S] or a [1, S] tensor), one such list per row for a batch of
    B > 1 prompts (``rows`` is always the list of rows).  ``stopped``: a stop token ended
    generation (for a batch: of every row; per row in ``stopped_rows``).  ``cache``: ends at the
    end of the returned sequence.  ``last_logits`` [B, V]: the model's prediction after the last
    returned token.  ``logits`` (``keep_logits=True``): per step, the logits each new token was
    chosen from, [V] for a single prompt, [B, V] for a batch."""

    tokens: list
    cache: V4Cache
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    prompt_tokens: int = 0
    stopped: bool = False
    last_logits: torch.Tensor | None = None
    logits: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    stopped_rows: list = field(default_factory=list)
    decode_steps: int = 0  # forward passes of one token per row after the prefill

    @property
    def prefill_tokens_per_s(self) -> float:
        n = self.prompt_tokens * max(1, len(self.rows))
        return n / self.prefill_seconds if self.prefill_seconds else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens fed per second while decoding (all rows of a batch together)."""
        n = self.decode_steps * max(1, len(self.rows))
        return n / self.decode_seconds if self.decode_seconds and n > 0 else float("nan")


def _check_sampling(temperature: float, top_p: float) -> None:
    if not temperature >= 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> next ids [B]."""
    _check_sampling(temperature, top_p)
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        sp, si = probs.sort(-1, descending=True)
        keep = sp.cumsum(-1) - sp < top_p  # smallest set whose mass reaches top_p
        sp = sp * keep
        probs = torch.zeros_like(probs).scatter(-1, si, sp)
    return torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def prefill(model, input_ids: torch.Tensor, cache: V4Cache, chunk: int = 2048, progress: bool | None = None,
            ctx=None, return_hidden: bool = False):
    """Feed ``input_ids`` [B, S] through ``cache`` in chunks; returns the last position's logits [B, V]
    (with ``return_hidden=True``: and the final streams of every position, [B, S, n, d])."""
    from tqdm.auto import tqdm

    if chunk < 1:
        raise ValueError(f"prefill chunk must be >= 1, got {chunk}")
    S = input_ids.shape[1]
    show = progress if progress is not None else S > 4 * chunk
    last, hidden = None, []
    with tqdm(total=S, unit="tok", desc="prefill", disable=not show, leave=False) as bar:
        for s0 in range(0, S, chunk):
            if return_hidden:
                out, H = model(input_ids[:, s0 : s0 + chunk], cache=cache, ctx=ctx, return_hidden=True)
                hidden.append(H)
            else:
                out = model(input_ids[:, s0 : s0 + chunk], cache=cache, ctx=ctx)
            last = out[:, -1]
            bar.update(out.shape[1])
    return (last, torch.cat(hidden, 1)) if return_hidden else last


def check_room(model, cache: V4Cache | None, n_prompt: int, max_new_tokens: int, what: str = "generate") -> None:
    """ValueError unless ``cache.pos + n_prompt + max_new_tokens`` fits in max_position_embeddings."""
    start = cache.pos if cache is not None else 0
    limit = model.config.max_position_embeddings
    if start + n_prompt + max_new_tokens > limit:
        at = f"cache.pos ({start}) + " if cache is not None and start else ""
        raise ValueError(
            f"{what}: {at}prompt ({n_prompt}) + max_new_tokens ({max_new_tokens}) = "
            f"{start + n_prompt + max_new_tokens} tokens would pass max_position_embeddings ({limit}); "
            f"ask for at most {max(0, limit - start - n_prompt)} new tokens or shorten the prompt")


def _stop_set(stop, vocab: int) -> set:
    stops = {stop} if isinstance(stop, int) else set(stop if stop is not None else ())
    for s in stops:
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < vocab:
            raise ValueError(f"stop token ids must be integers in [0, {vocab}), got {s!r}")
    return stops


@torch.no_grad()
def decode(model, logits: torch.Tensor, cache: V4Cache, max_new_tokens: int, temperature: float = 0.0,
           top_p: float = 1.0, stop: Iterable[int] | int | None = None, generator: torch.Generator | None = None,
           on_token: Callable | None = None, keep_logits: bool = False, ctx=None):
    """The decode loop.  ``logits`` [B, V]: the prediction after the cache's last position.

    Picks up to ``max_new_tokens`` tokens per row and feeds every one of them (the last included)
    through ``cache``.  A row stops after one of its tokens is in ``stop``; while other rows run
    on, a stopped row is fed its stop token again, and if the rows end at different lengths the
    cache is marked unusable (it no longer holds one sequence per row).  ``on_token`` gets the
    new token (an int) for a batch of one, else a list with one entry per row (None for rows
    already stopped).  With ``ctx`` (e.g. ``ForwardContext(record=True)``) every step that picks a
    token runs under it; the feed of the last token runs without recording.

    Returns ``(rows, stopped_rows, step_logits, last_logits, steps)``."""
    B = logits.shape[0]
    stops = _stop_set(stop, model.config.vocab_size)
    rows: list[list[int]] = [[] for _ in range(B)]
    stopped = [False] * B
    step_logits = []
    steps = 0
    final_ctx = dataclasses.replace(ctx, record=False, indexer_loss=False) if ctx is not None else None
    for step in range(max_new_tokens):
        if keep_logits:
            step_logits.append(logits[0].clone() if B == 1 else logits.clone())
        nxt = sample_next(logits.cpu(), temperature, top_p, generator).tolist()
        active = [not s for s in stopped]
        for b in range(B):
            if active[b]:
                rows[b].append(nxt[b])
                stopped[b] = nxt[b] in stops
        if on_token is not None:
            on_token(nxt[0] if B == 1 else [t if a else None for t, a in zip(nxt, active)])
        last = step + 1 == max_new_tokens or all(stopped)
        feed = [r[-1] for r in rows]  # a stopped row repeats its stop token
        logits = model(torch.tensor(feed, device=model.device)[:, None], cache=cache,
                       ctx=final_ctx if last else ctx)[:, -1]
        steps += 1
        if last:
            break
    if len({len(r) for r in rows}) > 1:
        cache.broken = (f"the rows of the batch ended at different lengths ({[len(r) for r in rows]} new tokens; "
                        "stopped rows were fed filler tokens)")
    return rows, stopped, step_logits, logits, steps


def _as_batch(input_ids, device) -> tuple[torch.Tensor, bool]:
    if isinstance(input_ids, (list, tuple)) and input_ids and all(isinstance(r, (list, tuple)) for r in input_ids):
        lengths = sorted({len(r) for r in input_ids})
        if len(lengths) > 1:
            raise ValueError(f"the prompts of a batch must have equal lengths, got lengths {lengths}: V4's "
                             "compressor blocks would count padding; generate them separately")
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=device)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2:
        raise ValueError(f"input_ids must be a list, [S] or [B, S]; got shape {tuple(ids.shape)}")
    if ids.shape[1] == 0:
        raise ValueError("input_ids is empty: give at least one prompt token")
    return ids, ids.shape[0] == 1


@torch.no_grad()
def generate(model, input_ids, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             stop: Iterable[int] | int | None = None, cache: V4Cache | None = None,
             on_token: Callable | None = None, prefill_chunk: int = 2048, seed: int = 0,
             progress: bool | None = None, keep_logits: bool = False, ctx=None, *,
             ctx_prompt: str = "all") -> GenerationResult:
    """Generate up to ``max_new_tokens`` after ``input_ids``: one prompt (a list, a [S] or a [1, S]
    tensor) or a batch of prompts of equal length (a [B, S] tensor or a list of lists).

    ``stop``: token id(s) that end a row (included in its result); ``on_token`` is called as soon
    as each new token exists (streaming; an int for one prompt, a list per step for a batch);
    ``cache``: continue from an existing cache (the prompt is appended to it; it ends at the end of
    the returned sequence, so the next call continues exactly).  Bad input -- including a length
    that would pass ``max_position_embeddings`` -- raises a ValueError before any work.  Returns a
    ``GenerationResult`` with timings.

    ``ctx`` (e.g. ``ForwardContext(record=True)``) runs the forward passes; ``ctx_prompt="all"``:
    all of the prompt's too, ``"last"``: only the steps that choose a new token (the prompt but
    its last token is prefilled without ``ctx``, the last one is fed on its own under it), as
    ``v4lab.eval.answer`` records them."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    _check_sampling(temperature, top_p)
    _stop_set(stop, model.config.vocab_size)
    if ctx_prompt not in ("all", "last"):
        raise ValueError(f"ctx_prompt must be 'all' or 'last', got {ctx_prompt!r}")
    ids, single = _as_batch(input_ids, model.device)
    B, S = ids.shape
    if cache is not None:
        cache.check(model, B, S)
    check_room(model, cache, S, max_new_tokens)
    cache = cache if cache is not None else model.new_cache(B)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    t0 = time.perf_counter()
    if ctx_prompt == "all":
        logits = prefill(model, ids, cache, prefill_chunk, progress, ctx)
    else:
        if S > 1:
            prefill(model, ids[:, :-1], cache, prefill_chunk, progress)
        logits = model(ids[:, -1:], cache=cache, ctx=ctx)[:, -1]
    t1 = time.perf_counter()
    rows, stopped, step_logits, last, steps = decode(
        model, logits, cache, max_new_tokens, temperature, top_p, stop, gen, on_token, keep_logits, ctx)
    return GenerationResult(
        rows[0] if single else rows, cache, prefill_seconds=t1 - t0, decode_seconds=time.perf_counter() - t1,
        prompt_tokens=S, stopped=all(stopped), last_logits=last, logits=step_logits,
        rows=rows, stopped_rows=stopped, decode_steps=steps)
