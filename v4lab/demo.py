"""The main job: flash-mini reads a long document and answers a question about a hidden fact.

    python -m v4lab.demo                     # 100K-token validation document, needle at depth 0.5
    python -m v4lab.demo --context 131072 --depth 0.2 --figure artifacts/indexer_picks.png

It loads the shipped weights (sha256 checked), hides "The code of the <key> is <value>." in a
validation document the model never trained on, prefills the whole prompt in chunks (progress
bar), streams the answer, prints prefill and decode speed and the KV cache it needed against a
plain dense KV cache of the same model, and saves a figure of which compressed blocks the
Lightning Indexer selected in each CSA layer while the answer was produced.
"""
from __future__ import annotations

import argparse
import random
import sys
import time

import torch


def dense_cache_bytes(cfg, length: int, bytes_per_value: int) -> int:
    """A plain causal-attention cache of the same widths: one K=V vector per token per layer."""
    return cfg.num_hidden_layers * length * cfg.head_dim * bytes_per_value


def run(context: int = 100_000, depth: float = 0.5, seed: int = 0, chunk: int = 2048, figure: str | None = None,
        threads: int | None = None, out=sys.stdout) -> dict:
    from .attention import ForwardContext
    from .data import BOS_ID, decode_ids, encode_text, long_document, make_needle_task
    from .eval import needle_picks
    from .generate import prefill
    from .pretrained import load_flash_mini

    if threads:
        torch.set_num_threads(threads)
    model = load_flash_mini()
    cfg = model.config
    doc = long_document(min_bytes=context + 2048, split="val")
    rng = random.Random(seed)
    task = make_needle_task(doc.text, context - 1, rng, depth=depth, position_offset=1)
    question = task.prompt[task.question_start :].strip()
    print(f"document: {doc.title} ({doc.nbytes:,} bytes); prompt of {context - len(task.answer):,} tokens "
          f"(byte-level, BOS included)", file=out)
    print(f"hidden fact at depth {task.placed_depths[0]:.2f}: {task.prompt[task.needle_spans[0].start:task.needle_spans[0].end].strip()!r}", file=out)
    print(f"question: {question!r}", file=out)

    ids = torch.tensor([[BOS_ID] + encode_text(task.prompt)])
    cache = model.new_cache(1)
    t0 = time.perf_counter()
    with torch.no_grad():
        prefill(model, ids[:, :-1], cache, chunk, progress=True)
        t1 = time.perf_counter()
        ctx = ForwardContext(record=True)
        logits = model(ids[:, -1:], cache=cache, ctx=ctx)[:, -1]
        newline = encode_text("\n")[0]
        answer = []
        print("answer: ", end="", file=out, flush=True)
        t2 = time.perf_counter()
        steps = 0
        for _ in range(12):
            nxt = int(logits.argmax(-1))
            answer.append(nxt)
            if nxt == newline and decode_ids(answer).strip():
                break  # a newline ends the answer once something was said
            print(decode_ids([nxt]), end="", file=out, flush=True)
            logits = model(torch.tensor([[nxt]]), cache=cache, ctx=ctx)[:, -1]
            steps += 1
        t3 = time.perf_counter()
    print(file=out)
    got = decode_ids(answer).strip()
    ok = got == task.value
    n_prefill = ids.shape[1] - 1
    kv = cache.nbytes(by_layer=True)
    dense = dense_cache_bytes(cfg, cache.pos, cache.dtype.itemsize)
    print(f"expected {task.value}: {'correct' if ok else 'wrong'}", file=out)
    for layer, r in needle_picks(ctx.records, task, cfg).items():
        print(f"CSA layer {layer}: the needle's block was among the indexer's {cfg.index_topk} picks at "
              f"{r['hits']} of {r['steps']} answer steps (chance {r['chance']:.2%} a step)", file=out)
    print(f"prefill: {n_prefill:,} tokens in {t1 - t0:.1f} s = {n_prefill / (t1 - t0):,.0f} tokens/s", file=out)
    print(f"decode: {steps} steps at {cache.pos:,} tokens of context in {t3 - t2:.2f} s = "
          f"{steps / (t3 - t2):.1f} tokens/s", file=out)
    print(f"KV cache: {kv['total'] / 2**20:.1f} MiB (window {kv['window'] / 2**20:.1f}, compressed "
          f"{kv['compressed'] / 2**20:.1f}, indexer keys {kv['indexer'] / 2**20:.1f}, compressor state "
          f"{kv['state'] / 2**20:.2f}) vs a dense cache of the same model {dense / 2**20:.1f} MiB "
          f"({dense / kv['total']:.1f}x larger)", file=out)
    result = {"correct": ok, "answer": got, "value": task.value, "prefill_tokens_per_s": n_prefill / (t1 - t0),
              "decode_tokens_per_s": steps / (t3 - t2), "kv_bytes": kv["total"], "dense_kv_bytes": dense,
              "records": ctx.records, "task": task}
    if figure:
        from .plots.attention import plot_indexer_picks

        fig = plot_indexer_picks(ctx.records, task, cfg)
        import os

        os.makedirs(os.path.dirname(os.path.abspath(figure)), exist_ok=True)
        fig.savefig(figure, dpi=110, bbox_inches="tight")
        print(f"figure of the indexer's picks: {figure}", file=out)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m v4lab.demo", description=__doc__.split("\n")[0])
    p.add_argument("--context", type=int, default=100_000, help="prompt length in tokens (bytes)")
    p.add_argument("--depth", type=float, default=0.5, help="where the fact sits, 0 = start, 1 = end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=2048, help="prefill chunk length")
    p.add_argument("--figure", default="artifacts/indexer_picks.png")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    res = run(a.context, a.depth, a.seed, a.chunk, a.figure or None, a.threads or None)
    return 0 if res["answer"] else 1


if __name__ == "__main__":
    sys.exit(main())
