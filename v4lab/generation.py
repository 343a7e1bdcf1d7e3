"""Text generation with chunked prefill and a V4 cache.

``generate(model, input_ids, max_new_tokens)`` feeds the prompt in chunks of ``prefill_chunk``
tokens (a progress bar for long prompts), then decodes one token at a time: greedy at
``temperature=0``, otherwise temperature + nucleus (top-p) sampling with a seeded generator.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from .cache import V4Cache


@dataclass
class GenerationResult:
    tokens: list[int]  # the new tokens (stop token included if one was produced)
    cache: V4Cache
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    prompt_tokens: int = 0
    stopped: bool = False  # a stop token ended generation
    last_logits: torch.Tensor | None = None
    logits: list = field(default_factory=list)  # per-step logits when keep_logits=True

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        n = len(self.tokens) - 1  # the first new token comes from the prefill logits
        return n / self.decode_seconds if self.decode_seconds and n > 0 else float("nan")


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> next ids [B]."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
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
            ctx=None) -> torch.Tensor:
    """Feed ``input_ids`` [B, S] through ``cache`` in chunks; returns the last position's logits [B, V]."""
    from tqdm.auto import tqdm

    S = input_ids.shape[1]
    show = progress if progress is not None else S > 4 * chunk
    last = None
    with tqdm(total=S, unit="tok", desc="prefill", disable=not show, leave=False) as bar:
        for s0 in range(0, S, chunk):
            out = model(input_ids[:, s0 : s0 + chunk], cache=cache, ctx=ctx)
            last = out[:, -1]
            bar.update(out.shape[1])
    return last


@torch.no_grad()
def generate(model, input_ids, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             stop: Iterable[int] | int | None = None, cache: V4Cache | None = None,
             on_token: Callable[[int], None] | None = None, prefill_chunk: int = 2048, seed: int = 0,
             progress: bool | None = None, keep_logits: bool = False, ctx=None) -> GenerationResult:
    """Generate up to ``max_new_tokens`` after ``input_ids`` (a list or [S] / [1, S] tensor).

    ``stop``: token id(s) that end generation (included in the result); ``on_token`` is called
    with each new token as soon as it exists (streaming); ``cache``: continue from an existing
    cache (the prompt is appended to it).  Returns a ``GenerationResult`` with timings."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=model.device)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.shape[0] != 1:
        raise ValueError("generate() decodes one sequence; batch size must be 1")
    stops = {stop} if isinstance(stop, int) else set(stop or ())
    cache = cache if cache is not None else model.new_cache(1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    t0 = time.perf_counter()
    logits = prefill(model, ids, cache, prefill_chunk, progress, ctx)
    t1 = time.perf_counter()
    res = GenerationResult([], cache, prefill_seconds=t1 - t0, prompt_tokens=ids.shape[1])
    for i in range(max_new_tokens):
        if keep_logits:
            res.logits.append(logits[0].clone())
        nxt = int(sample_next(logits.cpu(), temperature, top_p, gen)[0])
        res.tokens.append(nxt)
        if on_token is not None:
            on_token(nxt)
        if nxt in stops:
            res.stopped = True
            break
        if i + 1 == max_new_tokens:
            break
        logits = model(torch.tensor([[nxt]], device=model.device), cache=cache, ctx=ctx)[:, -1]
    res.decode_seconds = time.perf_counter() - t1
    res.last_logits = logits
    return res
