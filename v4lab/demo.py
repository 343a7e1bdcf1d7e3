"""The main job: flash-mini reads a long document and answers a question about a hidden fact.

    python -m v4lab.demo                     # 100K-token validation document, needle at depth 0.5
    python -m v4lab.demo --context 131072 --depth 0.2 --figure artifacts/indexer_picks.png
    python -m v4lab.demo --mrcr              # MRCR-8: the i-th of 8 codes given for the same key

It loads the shipped weights (sha256 checked), hides "The code of the <key> is <value>." in a
validation document the model never trained on, prefills the whole prompt in chunks (progress
bar), streams the answer, prints prefill and decode speed and the KV cache it needed against a
plain dense KV cache of the same model, and saves a figure of which compressed blocks the
Lightning Indexer selected in each CSA layer while the answer was produced.  With ``--mrcr`` the
document holds 8 codes for the same key (one in each eighth of it, plus 2 facts about other keys)
and the question asks for the i-th of them (``--ask``, default: drawn from the seed).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

import torch


def run(context: int = 100_000, depth: float = 0.5, seed: int = 0, chunk: int = 2048, figure: str | None = None,
        threads: int | None = None, out=sys.stdout, mrcr: bool = False, ask: int | None = None) -> dict:
    from . import costs
    from .bench import dense_config
    from .data import BOS_ID, decode_ids, encode_text, long_document, make_mrcr_task, make_needle_task
    from .eval import answer, needle_picks
    from .pretrained import load_flash_mini

    if threads:
        torch.set_num_threads(threads)
    model = load_flash_mini()
    cfg = model.config
    # held-out text only: the validation split, and the test split after it past its length
    try:
        doc = long_document(min_bytes=context + 2048, split="val")
    except ValueError:
        doc = long_document(min_bytes=context + 2048, split="val+test")
    rng = random.Random(seed)
    if mrcr:
        if ask is not None and not 1 <= ask <= 8:
            raise ValueError(f"ask must lie in 1 .. 8 (which of the 8 codes), got {ask}")
        task = make_mrcr_task(doc.text, context - 1, rng, n_facts=8, ask=ask, position_offset=1)
    else:
        task = make_needle_task(doc.text, context - 1, rng, depth=depth, position_offset=1)
    question = task.prompt[task.question_start :].strip()
    print(f"document: {doc.title} ({doc.nbytes:,} bytes); prompt of {context - len(task.answer):,} tokens "
          f"(byte-level, BOS included)", file=out)
    for i, span in enumerate(task.needle_spans):
        mark = "  <- asked" if mrcr and i == task.target else ""
        print(f"hidden fact at depth {task.placed_depths[i]:.2f}: {task.prompt[span.start:span.end].strip()!r}{mark}",
              file=out)
    print(f"question: {question!r}", file=out)

    ids = [BOS_ID] + encode_text(task.prompt)
    newline = encode_text("\n")[0]
    cache = model.new_cache(1)
    times = []                     # when each answer token was chosen

    def stream(token: int) -> None:
        if not times:              # after the prefill's progress bar
            print("answer: ", end="", file=out, flush=True)
        times.append(time.perf_counter())
        if token != newline:
            print(decode_ids([token]), end="", file=out, flush=True)

    t0 = time.perf_counter()
    # up to 12 answer tokens, fewer where the context ends sooner (at 1M the room is the answer's 6)
    max_new = min(12, cfg.max_position_embeddings - len(ids))
    answer_ids, records = answer(model, ids, max_new, stop_id=newline, chunk=chunk, record=True, progress=True,
                                 cache=cache, on_token=stream)
    print(file=out)
    got = decode_ids(answer_ids).strip()
    ok = got == task.value
    n_prefill = len(ids) - 1
    prefill_s = times[0] - t0                 # the prompt, and the forward of its last token
    steps, decode_s = len(times) - 1, max(times[-1] - times[0], 1e-9)
    kv = cache.nbytes(by_layer=True)
    dense = costs.kv_cache_bytes(dense_config(cfg, cache.pos), cache.pos, cache.dtype).total
    print(f"expected {task.value}: {'correct' if ok else 'wrong'}", file=out)
    for layer, r in needle_picks(records, task, cfg).items():
        print(f"CSA layer {layer}: the needle's block was among the indexer's {cfg.index_topk} picks at "
              f"{r['hits']} of {r['steps']} answer steps (chance {r['chance']:.2%} a step)", file=out)
    print(f"prefill: {n_prefill:,} tokens in {prefill_s:.1f} s = {n_prefill / prefill_s:,.0f} tokens/s", file=out)
    print(f"decode: {steps} steps at {cache.pos:,} tokens of context in {decode_s:.2f} s = "
          f"{steps / decode_s:.1f} tokens/s", file=out)
    print(f"KV cache: {kv['total'] / 2**20:.1f} MiB (window {kv['window'] / 2**20:.1f}, compressed "
          f"{kv['compressed'] / 2**20:.1f}, indexer keys {kv['indexer'] / 2**20:.1f}, compressor state "
          f"{kv['state'] / 2**20:.2f}) vs a dense cache of the same model {dense / 2**20:.1f} MiB "
          f"({dense / kv['total']:.1f}x larger)", file=out)
    result = {"correct": ok, "answer": got, "value": task.value, "prefill_tokens_per_s": n_prefill / prefill_s,
              "decode_tokens_per_s": steps / decode_s, "kv_bytes": kv["total"], "dense_kv_bytes": dense,
              "records": records, "task": task}
    if figure:
        from .plots.attention import plot_indexer_picks

        fig = plot_indexer_picks(records, task, cfg)
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
    p.add_argument("--mrcr", action="store_true", help="ask for the i-th of 8 codes given for one key")
    p.add_argument("--ask", type=int, default=None, help="with --mrcr: which code, 1-8 (default: from the seed)")
    a = p.parse_args(argv)
    res = run(a.context, a.depth, a.seed, a.chunk, a.figure or None, a.threads or None, mrcr=a.mrcr, ask=a.ask)
    return 0 if res["answer"] else 1


if __name__ == "__main__":
    sys.exit(main())
