"""Benchmark the attention kernels at DeepSeek-V4-Flash sizes against PyTorch and dense attention.

Run as ``python -m v4lab.bench kernels`` (or ``python -m v4lab.bench_kernels``).  Sizes follow
V4-Flash: 64 query heads of width 512 over one shared 512-d key/value vector per entry, top-k
512 compressed entries (CSA, ratio 4) plus a 128-token window, HCA ratio 128, and a Lightning
Indexer of 64 heads x 128.

What is measured, per context length L (batch 1 by default):

* ``decode`` -- one query at position L-1: indexer scores and top-k (the difference is the
  cost of the selection) over the L/4 CSA index keys, sparse
  attention over 512 + 128 rows (plain and split-K), sparse attention over the L/128 + 128
  rows of an HCA-sized list, HCA dense attention, compressor pooling of one block.
* ``prefill`` -- a chunk of ``--prefill-queries`` queries at the end of a context of L tokens
  (chunked prefill; rates per token are what matter): the same kernels, plus the pooling of
  the chunk's blocks.
* ``dense`` -- ``torch.nn.functional.scaled_dot_product_attention`` over all L keys of the
  same width (64 heads x 512, one shared K=V head, heads folded into the query axis so no key
  copies are made).  For a prefill chunk the causal triangle inside the chunk is ignored
  (at most S/2L extra work).
* ``csa_layer`` -- the whole CSA attention core, indexer top-k + sparse attention, against
  ``dense``; the crossover is the smallest measured L where the CSA core is faster.
* ``copy`` (GPU) -- device-to-device copy bandwidth, the ceiling for memory-bound decode
  kernels (target: decode at 1M context >= 50% of it).

Every kernel runs on the Triton backend (GPU only) and on its PyTorch reference.  On a CPU
only the PyTorch path is measured (the Triton interpreter says nothing about speed), with small
default sizes so that a run takes about a minute.  TFLOP/s count the useful multiply-adds
(2 FLOP each) of the math actually requested; GB/s count the bytes a kernel must read and write
once (gathered rows once per query), so they are a lower bound on real traffic.

Outputs ``kernels.json`` and ``kernels.md`` in ``--out`` (default ``bench_out``).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

FLASH = dict(heads=64, head_dim=512, topk=512, window=128, index_heads=64, index_dim=128,
             csa_ratio=4, hca_ratio=128)
GPU_DECODE = [8192, 32768, 131072, 524288, 1048576]
GPU_PREFILL = [8192, 32768, 131072]
CPU_DECODE = [2048, 8192, 32768, 131072]
CPU_PREFILL = [2048, 8192, 32768]


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------

class Timer:
    """Median wall time of ``fn`` in milliseconds.  On GPU: CUDA events around each call, with
    the L2 cache flushed before each call (so memory-bound kernels read from HBM)."""

    def __init__(self, device, repeats, warmup=2):
        self.device = torch.device(device)
        self.repeats = repeats
        self.warmup = warmup
        self.flush = None
        if self.device.type == "cuda":
            self.flush = torch.empty(256 << 20, dtype=torch.int8, device=self.device)

    def __call__(self, fn):
        for _ in range(self.warmup):
            fn()
        times = []
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            for _ in range(self.repeats):
                self.flush.zero_()
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        else:
            for _ in range(self.repeats):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def copy_bandwidth(device, timer, nbytes=1 << 30):
    """Device-to-device copy bandwidth in GB/s (read + write counted)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9


# --------------------------------------------------------------------------------------------
# workloads
# --------------------------------------------------------------------------------------------

def _rand(*shape, device, dtype, scale=1.0):
    return (torch.randn(*shape, device=device, dtype=torch.float32) * scale).to(dtype)


def make_inputs(L, S, batch, device, dtype, dims):
    """Random tensors for a context of L tokens and S queries at positions L-S .. L-1."""
    H, D, topk, win = dims["heads"], dims["head_dim"], dims["topk"], dims["window"]
    HI, CI, r_csa, r_hca = dims["index_heads"], dims["index_dim"], dims["csa_ratio"], dims["hca_ratio"]
    B = batch
    n_csa, n_hca = L // r_csa, L // r_hca
    x = {}
    x["q"] = _rand(B, S, H, D, device=device, dtype=dtype)
    x["sink"] = torch.zeros(H, device=device)
    x["q_pos"] = torch.arange(L - S, L, device=device)
    # CSA: raw tokens then compressed entries in one table; window + top-k rows per query
    x["kv_all"] = _rand(B, L + n_csa, D, device=device, dtype=dtype)
    n_valid = max(1, (L - S + 1) // r_csa)            # valid for every query of the chunk
    picks = torch.randint(0, n_valid, (B, S, min(topk, n_csa)), device=device) + L
    wins = (x["q_pos"][None, :, None] - torch.arange(win, device=device)).clamp(min=0)
    x["idx_csa"] = torch.cat([wins.expand(B, S, win), picks], dim=-1).to(torch.int32)
    # HCA-sized index list (every compressed entry + window) for the long-K sparse variant
    hca_rows = torch.arange(n_hca, device=device) + L
    x["idx_long"] = torch.cat([wins.expand(B, S, win),
                               hca_rows.expand(B, S, n_hca)], -1).to(torch.int32)
    # indexer
    x["qi"] = _rand(B, S, HI, CI, device=device, dtype=dtype)
    x["wi"] = _rand(B, S, HI, device=device, dtype=torch.float32, scale=(HI * CI) ** -0.5)
    x["ki"] = _rand(B, n_csa, CI, device=device, dtype=dtype)
    # HCA: window rows (the raw tokens in prefill, a ring buffer in decode) + compressed
    if S == 1:
        x["kv_win"] = _rand(B, win, D, device=device, dtype=dtype)
        x["win_pos"] = torch.arange(L - win, L, device=device).roll(L % win)
    else:
        x["kv_win"] = x["kv_all"][:, :L]
        x["win_pos"] = torch.arange(L, device=device)
    x["comp"] = _rand(B, n_hca, D, device=device, dtype=dtype)
    # compressor pooling: the S tokens of the chunk (decode: the state rows of one block)
    Sc = max(S, r_hca)
    x["ckv"] = _rand(B, Sc, 2 * D, device=device, dtype=dtype)
    x["cgate"] = _rand(B, Sc, 2 * D, device=device, dtype=dtype)
    x["ape4"] = _rand(r_csa, 2 * D, device=device, dtype=torch.float32)
    x["hkv"] = _rand(B, Sc, D, device=device, dtype=dtype)
    x["hgate"] = _rand(B, Sc, D, device=device, dtype=dtype)
    x["ape128"] = _rand(r_hca, D, device=device, dtype=torch.float32)
    return x


def dense_attention(q, kv, scale, budget=1 << 31):
    """Dense MQA over all keys with SDPA: q [B, S, H, D], kv [B, L, D] -> [B, S, H, D].

    Heads are folded into the query axis (one K=V head, no copies); long query blocks are
    split so the score matrix stays under ``budget`` bytes when SDPA falls back to math."""
    B, S, H, D = q.shape
    L = kv.shape[1]
    k = kv[:, None]                                                  # [B, 1, L, D]
    qf = q.reshape(B, 1, S * H, D)
    step = max(H, (budget // max(L * 4, 1)) // H * H)
    outs = [torch.nn.functional.scaled_dot_product_attention(qf[:, :, i:i + step], k, k, scale=scale)
            for i in range(0, S * H, step)]
    return torch.cat(outs, 2).reshape(B, S, H, D)


# --------------------------------------------------------------------------------------------
# cases: (name, flops, bytes, {backend: fn})
# --------------------------------------------------------------------------------------------

def cases(x, L, S, dims, mode, ops_by_backend, elt):
    H, D, win = dims["heads"], dims["head_dim"], dims["window"]
    HI, CI, r_csa, r_hca = dims["index_heads"], dims["index_dim"], dims["csa_ratio"], dims["hca_ratio"]
    B = x["q"].shape[0]
    scale = D ** -0.5
    n_csa, n_hca = L // r_csa, L // r_hca
    # valid counts summed over the queries of the chunk
    pos = x["q_pos"].double().cpu()
    valid_csa = float(torch.clamp(torch.floor((pos + 1) / r_csa), max=n_csa).sum()) * B
    valid_hca = float(torch.clamp(torch.floor((pos + 1) / r_hca), max=n_hca).sum()) * B
    K_csa = x["idx_csa"].shape[-1]
    K_long = x["idx_long"].shape[-1]
    topk = dims["topk"]
    out = []

    def per_backend(fn_of_ops):
        return {name: (lambda ops=ops: fn_of_ops(ops)) for name, ops in ops_by_backend.items()}

    qbytes = B * S * H * D * elt * 2                                 # read q, write o
    out.append(("indexer_scores", 2 * HI * CI * valid_csa,
                B * (n_csa * CI * elt + S * HI * (CI * elt + 4) + S * n_csa * 4),
                per_backend(lambda o: o.indexer_scores(x["qi"], x["wi"], x["ki"], x["q_pos"],
                                                       r_csa))))
    out.append(("indexer_topk", 2 * HI * CI * valid_csa,
                B * (n_csa * CI * elt + S * HI * (CI * elt + 4) + S * n_csa * 8),
                per_backend(lambda o: o.indexer_topk(x["qi"], x["wi"], x["ki"], x["q_pos"],
                                                     r_csa, topk))))
    out.append(("sparse_attention", 4 * H * D * K_csa * B * S,
                B * S * K_csa * (D * elt + 4) + qbytes,
                per_backend(lambda o: o.sparse_attention(x["q"], x["kv_all"], x["idx_csa"],
                                                         x["sink"], scale))))
    if mode == "decode":
        out.append(("sparse_attention_decode", 4 * H * D * K_csa * B * S,
                    B * S * K_csa * (D * elt + 4) + qbytes,
                    per_backend(lambda o: o.sparse_attention_decode(
                        x["q"], x["kv_all"], x["idx_csa"], x["sink"], scale))))
        out.append(("sparse_decode_hca_list", 4 * H * D * K_long * B * S,
                    B * S * K_long * (D * elt + 4) + qbytes,
                    per_backend(lambda o: o.sparse_attention_decode(
                        x["q"], x["kv_all"], x["idx_long"], x["sink"], scale))))
    hca_rows = B * S * win + valid_hca
    out.append(("hca_attention", 4 * H * D * hca_rows, hca_rows * D * elt + qbytes,
                per_backend(lambda o: o.hca_attention(x["q"], x["kv_win"], x["win_pos"], x["comp"],
                                                      x["q_pos"], r_hca, win, x["sink"], scale))))
    if mode == "decode":
        ckv, cg = x["ckv"][:, :2 * r_csa], x["cgate"][:, :2 * r_csa]
        out.append(("compress_pool_decode_csa", 4 * ckv.numel(),
                    2 * ckv.numel() * elt + B * D * 4,
                    per_backend(lambda o: o.compress_pool_decode(ckv, cg, True))))
        hkv, hg = x["hkv"][:, :r_hca], x["hgate"][:, :r_hca]
        out.append(("compress_pool_decode_hca", 4 * hkv.numel(),
                    2 * hkv.numel() * elt + B * D * 4,
                    per_backend(lambda o: o.compress_pool_decode(hkv, hg, False))))
    else:
        ckv, cg = x["ckv"][:, :S], x["cgate"][:, :S]
        out.append(("compress_pool_csa", 4 * ckv.numel(),
                    2 * ckv.numel() * elt + B * (S // r_csa) * D * 4,
                    per_backend(lambda o: o.compress_pool(ckv, cg, x["ape4"], r_csa, True))))
        Sh = max(S, r_hca)                                           # at least one block
        hkv, hg = x["hkv"][:, :Sh], x["hgate"][:, :Sh]
        out.append(("compress_pool_hca", 4 * hkv.numel(),
                    2 * hkv.numel() * elt + B * (Sh // r_hca) * D * 4,
                    per_backend(lambda o: o.compress_pool(hkv, hg, x["ape128"], r_hca, False))))
    dense_kv = x["kv_all"][:, :L]
    out.append(("dense_sdpa", 4 * H * D * L * B * S, B * L * D * elt + qbytes,
                {"dense": lambda: dense_attention(x["q"], dense_kv, scale)}))

    def csa_layer(o):
        sel = o.indexer_topk(x["qi"], x["wi"], x["ki"], x["q_pos"], r_csa, topk)
        wins = x["idx_csa"][..., :win].long()
        idx = torch.cat([wins, torch.where(sel >= 0, sel + L, sel)], dim=-1)
        return o.sparse_attention(x["q"], x["kv_all"], idx, x["sink"], scale)

    out.append(("csa_layer", 2 * HI * CI * valid_csa + 4 * H * D * (win + topk) * B * S,
                B * n_csa * CI * elt + B * S * (win + topk) * D * elt + qbytes,
                per_backend(csa_layer)))
    return out


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------

GPU_WORDS = r"\b(GPU|CUDA|NVIDIA|H100|H200|H800|A100|L40S?|RTX)\b"


def gpu_sections(markdown_text: str) -> list[str]:
    """The sections of a Markdown file (e.g. ``BENCHMARKS.md``) whose heading names a GPU, each
    with its subsections, in order."""
    import re

    words = re.compile(GPU_WORDS, re.IGNORECASE)
    sections, current, level = [], None, 0
    for line in markdown_text.splitlines():
        heading = re.match(r"^(#{1,6})\s+(.*)", line)
        if heading:
            depth = len(heading.group(1))
            if current is not None and depth <= level:
                sections.append(current)
                current = None
            if current is None and words.search(heading.group(2)):
                current, level = [], depth
        if current is not None:
            current.append(line)
    if current is not None:
        sections.append(current)
    return ["\n".join(sec) for sec in sections]


def recorded_gpu_results(path) -> tuple[str, list[str]]:
    """What ``BENCHMARKS.md`` at ``path`` records for GPUs: ``("measured", sections)`` when a GPU
    section holds figures, ``("not measured", sections)`` when its GPU sections say none were
    taken, ``("absent", [])`` when there is no such section or no file."""
    path = Path(path)
    found = gpu_sections(path.read_text()) if path.exists() else []
    measured = [sec for sec in found if "not measured" not in sec.lower()]
    if measured:
        return "measured", measured
    return ("not measured", found) if found else ("absent", [])


def _parse_sizes(text):
    out = []
    for tok in text.split(","):
        tok = tok.strip().lower()
        if not tok:
            continue
        mult = 1
        if tok.endswith("k"):
            mult, tok = 1024, tok[:-1]
        elif tok.endswith("m"):
            mult, tok = 1 << 20, tok[:-1]
        out.append(int(float(tok) * mult))
    return out


def build_parser():
    p = argparse.ArgumentParser(prog="python -m v4lab.bench kernels", description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--modes", default="decode,prefill", help="decode,prefill")
    p.add_argument("--decode-contexts", default=None, help="e.g. 8k,32k,128k,512k,1m")
    p.add_argument("--prefill-contexts", default=None, help="e.g. 8k,32k,128k")
    p.add_argument("--max-context", default=None, help="drop contexts above this (e.g. 128k)")
    p.add_argument("--prefill-queries", type=int, default=None,
                   help="queries per prefill chunk (default 1024 on GPU, 16 on CPU)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case (median)")
    p.add_argument("--backends", default=None, help="subset of triton,torch,dense")
    p.add_argument("--kernels", default=None, help="only these case names (comma separated)")
    p.add_argument("--heads", type=int, default=FLASH["heads"], help="query heads (Flash: 64)")
    p.add_argument("--out", default="bench_out", help="folder for kernels.json / kernels.md")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for PyTorch (on a busy shared machine 1 is steadier)")
    p.add_argument("--quick", action="store_true", help="smallest sizes only (smoke run)")
    return p


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0 or math.isnan(v):
            return f"{v:g}"
        return f"{v:.{digits}g}"
    return str(v)


def markdown(report):
    lines = [f"# Kernel benchmark ({report['device_name']})", "", report["note"], ""]
    if report.get("copy_GBps"):
        lines += [f"Device-to-device copy bandwidth: **{report['copy_GBps']:.0f} GB/s**", ""]
    lines += ["| mode | context | kernel | backend | ms | TFLOP/s | GB/s | % copy BW |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['context']} | {r['kernel']} | {r['backend']} | "
                         f"error: {r['error'][:60]} | | | |")
            continue
        lines.append(f"| {r['mode']} | {r['context']} | {r['kernel']} | {r['backend']} | "
                     f"{_fmt(r['ms'])} | {_fmt(r['tflops'])} | {_fmt(r['GBps'])} | "
                     f"{_fmt(r.get('pct_copy_bw'))} |")
    lines += ["", "## CSA attention core (indexer + sparse) vs dense SDPA", "",
              "| mode | backend | context | CSA ms | dense ms | speed-up |", "|---|---|---|---|---|---|"]
    for row in report["csa_vs_dense"]:
        lines.append(f"| {row['mode']} | {row['backend']} | {row['context']} | {_fmt(row['csa_ms'])} | "
                     f"{_fmt(row['dense_ms'])} | {_fmt(row['speedup'])} |")
    lines += [""]
    for key, val in report["crossover"].items():
        lines.append(f"* crossover {key}: " + (f"CSA faster from L = {val}" if val else
                                                "CSA not faster at any measured L"))
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is available")
    dims = dict(FLASH, heads=args.heads)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    elt = torch.finfo(dtype).bits // 8

    decode_ctx = _parse_sizes(args.decode_contexts) if args.decode_contexts else \
        (GPU_DECODE if on_gpu else CPU_DECODE)
    prefill_ctx = _parse_sizes(args.prefill_contexts) if args.prefill_contexts else \
        (GPU_PREFILL if on_gpu else CPU_PREFILL)
    if args.max_context:
        cap = _parse_sizes(args.max_context)[0]
        decode_ctx = [c for c in decode_ctx if c <= cap]
        prefill_ctx = [c for c in prefill_ctx if c <= cap]
    if args.quick:
        decode_ctx, prefill_ctx = decode_ctx[:1], prefill_ctx[:1]
    sq = args.prefill_queries or (1024 if on_gpu else 16)
    repeats = args.repeats or (10 if on_gpu else 3)

    from . import kernels

    backends = {"torch": kernels.reference, "dense": None}
    if on_gpu:
        backends = {"triton": kernels.backend("triton"), **backends}
    if args.backends:
        wanted = {b.strip() for b in args.backends.split(",")}
        backends = {k: v for k, v in backends.items() if k in wanted}
    ops_by_backend = {k: v for k, v in backends.items() if v is not None}
    only = {k.strip() for k in args.kernels.split(",")} if args.kernels else None

    timer = Timer(device, repeats, warmup=2 if on_gpu else 1)
    note = ("GPU run: Triton kernels vs their PyTorch references vs dense SDPA, bf16." if on_gpu else
            "CPU run: measures the PyTorch path only (references and dense SDPA, fp32); the Triton "
            "kernels need a GPU to be timed (the interpreter says nothing about speed).")
    print(note, flush=True)
    report = dict(device=str(device), device_name=(torch.cuda.get_device_name(device) if on_gpu
                                                   else platform.processor() or "cpu"),
                  torch=torch.__version__, dtype=str(dtype), dims=dims, batch=args.batch,
                  prefill_queries=sq, repeats=repeats, note=note, results=[])
    try:
        import triton
        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None
    copy_bw = None
    if on_gpu:
        copy_bw = copy_bandwidth(device, timer)
        report["copy_GBps"] = copy_bw
        print(f"copy bandwidth: {copy_bw:.0f} GB/s", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = [("decode", L, 1) for L in decode_ctx] if "decode" in args.modes else []
    plan += [("prefill", L, min(sq, L)) for L in prefill_ctx] if "prefill" in args.modes else []
    for mode, L, S in plan:
        try:
            x = make_inputs(L, S, args.batch, device, dtype, dims)
        except RuntimeError as e:  # out of memory at this size: record and go on
            report["results"].append(dict(mode=mode, context=L, kernel="inputs", backend="-",
                                          error=f"{type(e).__name__}: {e}"[:300]))
            continue
        for name, flops, nbytes, fns in cases(x, L, S, dims, mode, ops_by_backend, elt):
            if only and name not in only and name != "dense_sdpa":
                continue
            for backend, fn in fns.items():
                if backend not in backends:
                    continue
                row = dict(mode=mode, context=L, queries=S, kernel=name, backend=backend)
                try:
                    ms = timer(fn)
                    row.update(ms=ms, tflops=flops / (ms * 1e-3) / 1e12,
                               GBps=nbytes / (ms * 1e-3) / 1e9)
                    if copy_bw and mode == "decode":
                        row["pct_copy_bw"] = 100 * row["GBps"] / copy_bw
                except Exception as e:  # noqa: BLE001 - record and keep going
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                    if on_gpu:
                        torch.cuda.empty_cache()
                report["results"].append(row)
                msg = (f"{mode:7s} L={L:>8d} {name:26s} {backend:6s} " +
                       (f"{row['ms']:9.3f} ms {row['tflops']:8.2f} TFLOP/s {row['GBps']:8.1f} GB/s"
                        if "ms" in row else row["error"][:80]))
                print(msg, flush=True)
        del x
        if on_gpu:
            torch.cuda.empty_cache()
        summarize(report, decode_ctx, prefill_ctx, ops_by_backend)
        write(report, out)           # after every size, so an interrupted run still leaves data
    summarize(report, decode_ctx, prefill_ctx, ops_by_backend)
    write(report, out)
    print(f"wrote {out / 'kernels.json'} and {out / 'kernels.md'}", flush=True)
    return 0


def summarize(report, decode_ctx, prefill_ctx, ops_by_backend):
    """CSA core vs dense per context, and the crossover (smallest L where CSA is faster)."""
    table, crossover = [], {}
    by = {(r["mode"], r["context"], r["kernel"], r["backend"]): r for r in report["results"]
          if "ms" in r}
    for mode in ("decode", "prefill"):
        for backend in ops_by_backend:
            first = None
            for L in (decode_ctx if mode == "decode" else prefill_ctx):
                csa = by.get((mode, L, "csa_layer", backend))
                dense = by.get((mode, L, "dense_sdpa", "dense"))
                if not csa or not dense:
                    continue
                speedup = dense["ms"] / csa["ms"]
                table.append(dict(mode=mode, backend=backend, context=L, csa_ms=csa["ms"],
                                  dense_ms=dense["ms"], speedup=speedup))
                if speedup > 1 and first is None:
                    first = L
            crossover[f"{mode}/{backend}"] = first
    report["csa_vs_dense"] = table
    report["crossover"] = crossover


def write(report, out: Path):
    (out / "kernels.json").write_text(json.dumps(report, indent=1))
    (out / "kernels.md").write_text(markdown(report))


if __name__ == "__main__":
    raise SystemExit(main())
