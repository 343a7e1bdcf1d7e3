"""Benchmarks that print figures: ``python -m v4lab.bench decode|kernels [options]``.

``decode``: flash-mini on this machine's CPU.  For each context length: chunked prefill
tokens/s and the process's peak RSS, decode tokens/s at that context, and the cache bytes; the
same for a dense-attention baseline of equal size (same widths, every layer plain causal
attention over a full KV cache); and the fitted growth exponent of prefill time with length.
Each (model, length) runs in a fresh subprocess so that peak RSS belongs to that run alone.
Results go to ``--out`` as JSON and a markdown table, written after every run (an interrupted
benchmark keeps what it finished).

``kernels``: see ``v4lab.bench_kernels`` (Triton kernels vs PyTorch reference vs dense SDPA).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def dense_config(cfg, length: int):
    """The same model with every layer plain causal attention over all earlier tokens."""
    n = cfg.num_hidden_layers
    return cfg.replace(compress_ratios=[0] * (n + 1), sliding_window=length, max_position_embeddings=max(length, cfg.max_position_embeddings))


def _one_run(kind: str, length: int, decode_tokens: int, chunk: int, weights: bool) -> dict:
    import torch

    from .config import V4Config
    from .model import V4Model

    torch.manual_seed(0)
    if weights:
        from .pretrained import load_flash_mini

        model = load_flash_mini(verify=False)
        cfg = model.config
    else:
        cfg = V4Config.preset("flash-mini")
        model = V4Model(cfg).eval()
    if kind == "dense":
        dcfg = dense_config(cfg, length + decode_tokens)
        dense = V4Model(dcfg, init=False).eval()
        dense.load_state_dict(model.state_dict(), strict=False)  # same weights where they exist
        model = dense
    model.requires_grad_(False)
    ids = torch.randint(32, 32 + 128, (1, length + decode_tokens), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache(1)
    from .attention import ForwardContext
    from .generation import prefill

    ctx = ForwardContext(query_block=64 if kind == "dense" else 256)
    t0 = time.perf_counter()
    with torch.no_grad():
        prefill(model, ids[:, :length], cache, chunk, progress=False, ctx=ctx)
        t1 = time.perf_counter()
        for i in range(decode_tokens):
            model(ids[:, length + i : length + i + 1], cache=cache, ctx=ctx)
        t2 = time.perf_counter()
    return {
        "model": kind, "length": length, "prefill_s": t1 - t0, "prefill_tok_s": length / (t1 - t0),
        "decode_tokens": decode_tokens, "decode_tok_s": decode_tokens / (t2 - t1) if decode_tokens else None,
        "cache_bytes": cache.nbytes(), "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": torch.get_num_threads(),
    }


def fit_exponent(rows, lo: int, hi: int) -> float | None:
    """Least-squares slope of log(prefill time) against log(length) for lo <= length <= hi."""
    pts = [(math.log(r["length"]), math.log(r["prefill_s"])) for r in rows if lo <= r["length"] <= hi]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def _table(rows) -> str:
    lines = ["| model | context | prefill tok/s | prefill s | decode tok/s | cache MiB | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = f"{r['decode_tok_s']:.1f}" if r.get("decode_tok_s") else "-"
        lines.append(f"| {r['model']} | {r['length']:,} | {r['prefill_tok_s']:,.0f} | {r['prefill_s']:.1f} | {d} | "
                     f"{r['cache_bytes'] / 2**20:.1f} | {r['peak_rss_bytes'] / 2**20:,.0f} |")
    return "\n".join(lines)


def decode_main(argv=None):
    p = argparse.ArgumentParser(prog="python -m v4lab.bench decode")
    p.add_argument("--lengths", default="8192,16384,32768,65536,131072")
    p.add_argument("--dense-lengths", default=None, help="lengths for the dense baseline (default: the same)")
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--random-weights", action="store_true", help="do not load the shipped weights")
    p.add_argument("--out", default="artifacts/bench_decode")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:  # child process: one measurement, JSON on stdout
        kind, length = a.one.split(":")
        print(json.dumps(_one_run(kind, int(length), a.decode_tokens, a.chunk, not a.random_weights)))
        return 0
    from .pretrained import has_weights

    weights = has_weights() and not a.random_weights
    lengths = [int(x) for x in a.lengths.split(",")]
    dense_lengths = [int(x) for x in (a.dense_lengths or a.lengths).split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}"
    print(f"decode benchmark on CPU ({machine}); flash-mini with {'shipped' if weights else 'random'} weights")
    rows = []
    summary = {"exponent_16k_128k": {}}
    jobs = [("flash-mini", L) for L in lengths] + [("dense", L) for L in dense_lengths]
    for kind, L in jobs:
        cmd = [sys.executable, "-m", "v4lab.bench", "decode", "--one", f"{kind}:{L}", "--decode-tokens",
               str(a.decode_tokens), "--chunk", str(a.chunk)] + (["--random-weights"] if not weights else [])
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"{kind} @ {L}: failed\n{proc.stderr[-2000:]}")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{kind:>10} @ {L:>7,}: prefill {row['prefill_tok_s']:8,.0f} tok/s ({row['prefill_s']:.1f} s), "
              f"decode {row['decode_tok_s'] or 0:6.1f} tok/s, cache {row['cache_bytes'] / 2**20:8.1f} MiB, "
              f"peak RSS {row['peak_rss_bytes'] / 2**20:,.0f} MiB   [{time.perf_counter() - t:.0f} s]", flush=True)
        summary = {"machine": machine, "weights": "shipped" if weights else "random", "rows": rows,
                   "exponent_16k_128k": {k: fit_exponent([r for r in rows if r["model"] == k], 16384, 131072)
                                         for k in ("flash-mini", "dense")}}
        (out / "decode.json").write_text(json.dumps(summary, indent=1))
        (out / "decode.md").write_text(_table(rows) + "\n")
    for k, e in summary["exponent_16k_128k"].items():
        print(f"prefill-time growth exponent 16K-128K, {k}: {e:.2f}" if e else f"{k}: not enough lengths for a fit")
    print(_table(rows))
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("decode", "kernels"):
        print("usage: python -m v4lab.bench decode|kernels [options]  (--help after the subcommand)")
        return 2
    if argv[0] == "decode":
        return decode_main(argv[1:])
    from .bench_kernels import main as kernels_main

    return kernels_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
