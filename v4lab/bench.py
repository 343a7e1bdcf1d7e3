"""Benchmarks that print figures: ``python -m v4lab.bench decode|kernels [options]``.

``decode``: flash-mini on this machine's CPU.  For each context length: chunked prefill
tokens/s and the process's peak RSS, decode tokens/s at that context, and the cache bytes; the
same for a dense-attention baseline of equal size (same widths, every layer plain causal
attention over a full KV cache); and the fitted growth exponent of prefill time with length.
Each (model, length) runs in a fresh subprocess so that peak RSS belongs to that run alone.
Results go to ``--out`` as JSON and a markdown table, written after every run (an interrupted
benchmark keeps what it finished).

``compare``: flash-mini's weights in v4lab (``numerics="hf"``, the same arithmetic) against
``transformers``' ``DeepseekV4ForCausalLM`` built from the same config and weights through the
converters: prefill tokens/s (chunked, 2,048 tokens a forward, each with its cache), decode
tokens/s (after two untimed warm-up steps) and peak RSS per length, each run in a fresh process, implementations interleaved,
the median of ``--repeats``; the last prefill logits and every decode step's logits of the two are
compared, so a speed figure never stands for a wrong answer.  ``--benchmarks BENCHMARKS.md``
replaces the block between ``<!-- bench compare -->`` markers of that file with the table.

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


IMPLEMENTATIONS = ("v4lab", "transformers")


def compare_run(impl: str, length: int, decode_tokens: int, chunk: int = 2048, weights: bool = True,
                cfg=None, state=None) -> dict:
    """One measurement of ``impl`` ("v4lab" or "transformers") in this process: chunked prefill
    of ``length`` tokens, then ``decode_tokens`` decode steps fed the same fixed tokens.  Returns
    the timings, peak RSS and the logits (last prefill position, then each decode step) as a
    [1 + decode_tokens, vocab] tensor under "logits".  ``cfg``/``state``: another model's config
    and official state dict instead of flash-mini (tests)."""
    import torch

    from .convert import official_to_hf
    from .model import V4Model

    torch.manual_seed(0)
    if cfg is None:
        from .config import V4Config
        from .pretrained import load_flash_mini

        base = load_flash_mini(numerics="hf", verify=False) if weights else V4Model(V4Config.preset("flash-mini"))
        cfg, state = base.config, base.state_dict()
    cfg = cfg.replace(max_position_embeddings=max(cfg.max_position_embeddings, length + decode_tokens))
    ids = torch.randint(32, 32 + 128, (1, length + decode_tokens), generator=torch.Generator().manual_seed(1))
    outs = []
    with torch.no_grad():
        if impl == "v4lab":
            model = V4Model(cfg, numerics="hf", init=False).eval()
            model.load_state_dict(state)
            cache = model.new_cache(1)
            step = lambda x: model(x, cache=cache)[:, -1]  # noqa: E731
        elif impl == "transformers":
            from transformers import DeepseekV4Config, DeepseekV4ForCausalLM, DynamicCache

            d = cfg.to_hf()
            for k in ("model_type", "architectures"):
                d.pop(k)
            hf = DeepseekV4ForCausalLM(DeepseekV4Config(**d)).float().eval()
            missing = hf.load_state_dict(official_to_hf(state, cfg), strict=False)
            if missing.missing_keys:
                raise RuntimeError(f"transformers model lacks weights: {missing.missing_keys[:5]}")
            cache = DynamicCache(config=hf.config)
            pos = [0]

            def step(x):
                out = hf(x, past_key_values=cache, use_cache=True).logits[:, -1]
                pos[0] += x.shape[1]
                return out
        else:
            raise ValueError(f"unknown implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
        t0 = time.perf_counter()
        for s0 in range(0, length, chunk):
            last = step(ids[:, s0 : min(length, s0 + chunk)])
        t1 = t1_prefill = time.perf_counter()
        outs.append(last.float())
        warm = min(2, decode_tokens - 1) if decode_tokens > 1 else 0  # first steps untimed (warm-up)
        for i in range(decode_tokens):
            if i == warm:
                t1 = time.perf_counter()
            outs.append(step(ids[:, length + i : length + i + 1]).float())
        t2 = time.perf_counter()
    return {"impl": impl, "length": length, "prefill_s": t1_prefill - t0, "prefill_tok_s": length / (t1_prefill - t0),
            "decode_tok_s": (decode_tokens - warm) / (t2 - t1) if decode_tokens else None,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "logits": torch.cat(outs, 0)}


def _compare_table(summary: dict) -> str:
    lines = [f"Measured {summary['date']} on {summary['machine']}, flash-mini ({summary['weights']} weights), "
             f"median of {summary['repeats']} fresh processes per cell, implementations interleaved; "
             f"command: `{summary['command']}`.", "",
             "| context | v4lab prefill tok/s | transformers prefill tok/s | ratio | v4lab decode tok/s | "
             "transformers decode tok/s | ratio | peak RSS MiB (v4lab / transformers) | max abs logit diff |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        v, t = r["v4lab"], r["transformers"]
        lines.append(f"| {r['length']:,} | {v['prefill_tok_s']:,.0f} | {t['prefill_tok_s']:,.0f} | "
                     f"{v['prefill_tok_s'] / t['prefill_tok_s']:.2f}x | {v['decode_tok_s']:.1f} | {t['decode_tok_s']:.1f} | "
                     f"{v['decode_tok_s'] / t['decode_tok_s']:.2f}x | {v['peak_rss_bytes'] / 2**20:,.0f} / "
                     f"{t['peak_rss_bytes'] / 2**20:,.0f} | {r['max_logit_diff']:.1e} |")
    lines.append("")
    lines.append(f"nano-deepseek-v4: {summary['nano']}")
    return "\n".join(lines)


def compare_main(argv=None):
    import datetime
    import statistics
    import tempfile

    p = argparse.ArgumentParser(prog="python -m v4lab.bench compare")
    p.add_argument("--lengths", default="8192,16384")
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--out", default="artifacts/bench_compare")
    p.add_argument("--benchmarks", default=None, help="a BENCHMARKS.md whose <!-- bench compare --> block to replace")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--logits-out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:  # child process: one measurement
        import torch

        impl, length = a.one.split(":")
        row = compare_run(impl, int(length), a.decode_tokens, a.chunk, not a.random_weights)
        torch.save(row.pop("logits"), a.logits_out)
        print(json.dumps(row))
        return 0
    from .pretrained import has_weights

    weights = has_weights() and not a.random_weights
    lengths = [int(x) for x in a.lengths.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}"
    try:
        import nano_deepseek_v4  # noqa: F401
        nano = "installed, not run: v4lab has no adapter for its weight layout yet"
    except ImportError:
        nano = "not installed (pip install nano-deepseek-v4), not run"
    print(f"compare on CPU ({machine}); flash-mini with {'shipped' if weights else 'random'} weights; {nano}")
    rows = []
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        for L in lengths:
            runs = {impl: [] for impl in IMPLEMENTATIONS}
            logits = {}
            for rep in range(a.repeats):
                for impl in IMPLEMENTATIONS:  # interleaved
                    lp = os.path.join(tmp, f"{impl}_{L}_{rep}.pt")
                    cmd = [sys.executable, "-m", "v4lab.bench", "compare", "--one", f"{impl}:{L}", "--decode-tokens",
                           str(a.decode_tokens), "--chunk", str(a.chunk), "--logits-out", lp]
                    cmd += ["--random-weights"] if not weights else []
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    if proc.returncode:
                        raise SystemExit(f"{impl} @ {L}: failed\n{proc.stderr[-3000:]}")
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                    runs[impl].append(r)
                    logits.setdefault(impl, torch.load(lp))
                    print(f"{impl:>12} @ {L:>7,} [{rep + 1}/{a.repeats}]: prefill {r['prefill_tok_s']:8,.0f} tok/s, "
                          f"decode {r['decode_tok_s']:6.1f} tok/s, peak RSS {r['peak_rss_bytes'] / 2**20:,.0f} MiB", flush=True)
            diff = float((logits["v4lab"] - logits["transformers"]).abs().max())
            med = {impl: {k: statistics.median(r[k] for r in rs) for k in ("prefill_tok_s", "decode_tok_s", "peak_rss_bytes")}
                   for impl, rs in runs.items()}
            rows.append({"length": L, **med, "max_logit_diff": diff, "runs": runs})
            if diff > 1e-3:
                print(f"WARNING: logits differ by {diff:.3g} at {L}: the speed figures compare different answers")
    summary = {"date": datetime.date.today().isoformat(), "machine": machine, "weights": "shipped" if weights else "random",
               "repeats": a.repeats, "rows": rows, "nano": nano,
               "command": "python -m v4lab.bench compare " + " ".join(argv or sys.argv[2:])}
    (out / "compare.json").write_text(json.dumps(summary, indent=1))
    table = _compare_table(summary)
    (out / "compare.md").write_text(table + "\n")
    print(table)
    if a.benchmarks:
        path = Path(a.benchmarks)
        text = path.read_text()
        mark = "<!-- bench compare -->"
        if text.count(mark) != 2:
            raise SystemExit(f"{path} needs two '{mark}' lines around the block to replace")
        head, _, tail = text.split(mark)
        path.write_text(head + mark + "\n" + table + "\n" + mark + tail)
        print(f"updated {path}")
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("decode", "compare", "kernels"):
        print("usage: python -m v4lab.bench decode|compare|kernels [options]  (--help after the subcommand)")
        return 2
    if argv[0] == "decode":
        return decode_main(argv[1:])
    if argv[0] == "compare":
        return compare_main(argv[1:])
    from .bench_kernels import main as kernels_main

    return kernels_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
