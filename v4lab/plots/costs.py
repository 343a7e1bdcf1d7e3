"""Figures of the cost model (:mod:`v4lab.costs`): KV cache and decode FLOPs against context,
and the per-layer make-up of the cache.

Every function returns a :class:`matplotlib.figure.Figure`; pass ``ax`` to draw into an existing
axes instead. No pyplot state is used, so the functions work under any backend (Agg included).
"""
from __future__ import annotations

from matplotlib.figure import Figure

from .. import costs
from ._common import fig_ax, short_len

# drawing order, colour and line style of the compared models
_STYLE = {
    "v3.2": dict(color="tab:gray", linestyle="-"),
    "pro": dict(color="tab:blue", linestyle="-"),
    "flash": dict(color="tab:orange", linestyle="-"),
    "dense": dict(color="black", linestyle="--"),
}
_PART_COLORS = {"window": "tab:green", "compressed": "tab:blue", "indexer": "tab:purple", "state": "tab:red"}
_KIND_LETTER = {"window": "S", "csa": "C", "hca": "H", "mla": "M", "dense": "D"}
ONE_M = 2**20


def default_context_lens() -> list[int]:
    """1K to 1M tokens, four points per doubling."""
    return sorted({int(round(2 ** (10 + i / 4))) for i in range(41)})


def _ratio_note(key, name, model_ratio, L, report, verb):
    text = f"at {short_len(L)}: {name} {model_ratio:.2f}x {verb} than V3.2"
    if L == ONE_M and key in report:
        text += f" (report: {report[key]}x)"
    return text


def _curves(ax, lens, value, report, verb, ylabel):
    """Draw one line per compared model, annotate the V4 end points with their ratio to V3.2."""
    ends = {}
    for key, style in _STYLE.items():
        model = costs.preset(key)
        ys = [value(model, L) for L in lens]
        ax.plot(lens, ys, label=costs.model_name(model), marker="o", markevery=[len(lens) - 1],
                markersize=4, **style)
        ends[key] = (costs.model_name(model), ys[-1])
    L = lens[-1]
    ref = ends["v3.2"][1]
    for key, y_text in (("pro", 0.64), ("flash", 0.52)):
        name, y = ends[key]
        ax.text(
            0.02, y_text, _ratio_note(key, name.replace("DeepSeek-", ""), ref / y, L, report, verb),
            transform=ax.transAxes, va="top", fontsize=8, color=_STYLE[key]["color"],
            bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=1.5),
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = [L for L in (2**k for k in range(10, 31, 2)) if lens[0] <= L <= lens[-1]]
    ax.set_xticks(ticks, [short_len(t) for t in ticks])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


def plot_kv_cache(context_lens=None, storage="deployed", indexer_storage="fp4", ax=None) -> Figure:
    """KV cache of one sequence (GB) against context for V3.2, V4-Pro, V4-Flash and the dense GQA-8
    baseline, log-log, with the V4 ratios to V3.2 at the longest context next to the report's
    9.5x (Pro) / 13.7x (Flash) when that context is 1M."""
    lens = sorted(default_context_lens() if context_lens is None else list(context_lens))
    fig, ax = fig_ax(ax, (7, 4.5))
    _curves(
        ax, lens,
        lambda m, L: costs.kv_cache_bytes(m, L, storage, indexer_storage).total / costs.GB,
        costs.REPORT_KV_RATIO, "smaller", "KV cache per sequence (GB)",
    )
    ax.set_title(f"KV cache vs context, storage: {costs.storage_label(storage, indexer_storage)}", fontsize=10)
    return fig


def plot_decode_flops(context_lens=None, weighting="fp8-equivalent", ax=None) -> Figure:
    """FLOPs to decode one token (GFLOP) against context for V3.2, V4-Pro, V4-Flash and the dense
    GQA-8 baseline, log-log, with the V4 ratios to V3.2 at the longest context next to the
    report's 3.7x (Pro) / 9.8x (Flash) when that context is 1M."""
    lens = sorted(default_context_lens() if context_lens is None else list(context_lens))
    fig, ax = fig_ax(ax, (7, 4.5))
    _curves(
        ax, lens,
        lambda m, L: costs.decode_flops(m, L, weighting).total / 1e9,
        costs.REPORT_FLOPS_RATIO, "fewer FLOPs", f"GFLOP per decoded token ({weighting})",
    )
    ax.set_title(f"Decode FLOPs per token vs context, weighting: {weighting}", fontsize=10)
    return fig


def plot_layer_breakdown(cfg, context_len, storage="deployed", indexer_storage="fp4", ax=None) -> Figure:
    """Stacked bars, one per main layer: window ring, compressed entries, indexer keys and
    compressor state of ``cfg``'s cache at ``context_len`` tokens. Tick labels give the layer
    index and kind (S = window-only, C = CSA, H = HCA)."""
    kv = costs.kv_cache_bytes(cfg, context_len, storage, indexer_storage)
    biggest = max(row["total"] for row in kv.per_layer)
    unit, scale = next((u, s) for u, s in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1)) if biggest >= s)
    n = len(kv.per_layer)
    fig, ax = fig_ax(ax, (max(6.0, 0.16 * n + 2), 4))
    x = list(range(n))
    bottom = [0.0] * n
    for part in costs.PARTS:
        heights = [row[part] / scale for row in kv.per_layer]
        ax.bar(x, heights, bottom=bottom, label=part, color=_PART_COLORS[part], width=0.8)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(x, [f"{row['layer']} {_KIND_LETTER.get(row['kind'], '?')}" for row in kv.per_layer],
                  rotation=90, fontsize=7)
    ax.set_xlabel("layer (S = window-only, C = CSA, H = HCA)")
    ax.set_ylabel(f"bytes ({unit})")
    ax.set_title(
        f"{kv.model}: cache per layer at L = {kv.context_len:,}, storage {kv.storage}; "
        f"total {costs.format_bytes(kv.total)}", fontsize=9,
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def plot_measured_cache(measured, ax=None) -> Figure:
    """Bytes held by real :class:`~v4lab.cache.V4Cache` objects (markers) on the cost model's
    prediction (lines, evaluated at every token count, so the steps of the compressed blocks
    show).

    ``measured``: dicts with ``name`` (legend label of the model), ``cfg`` (its V4Config),
    ``storage`` and ``indexer_storage`` (as :func:`v4lab.costs.kv_cache_bytes` takes them),
    ``context_len`` and ``bytes`` (what ``cache.nbytes()`` returned).  One line per
    (name, storage, indexer_storage).
    """
    groups: dict = {}
    for row in measured:
        key = (row["name"], str(row["storage"]), row.get("indexer_storage", "fp4"))
        groups.setdefault(key, {"cfg": row["cfg"], "storage": row["storage"], "points": []})
        groups[key]["points"].append((row["context_len"], row["bytes"]))
    fig, ax = fig_ax(ax, (7, 4.2))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
              "tab:olive", "tab:cyan", "tab:gray"]
    for i, ((name, storage, ist), g) in enumerate(groups.items()):
        top = max(L for L, _ in g["points"])
        lens = list(range(0, top + 1, max(1, top // 2000)))
        pred = [costs.kv_cache_bytes(g["cfg"], L, g["storage"], ist).total / 2**10 for L in lens]
        color = colors[i % len(colors)]
        label = f"{name}, {costs.storage_label(g['storage'], ist)}"
        ax.plot(lens, pred, color=color, lw=1, label=label)
        ax.plot([L for L, _ in g["points"]], [b / 2**10 for _, b in g["points"]], "o", color=color,
                markersize=5, markerfacecolor="none")
    ax.set_xlabel("tokens in the cache")
    ax.set_ylabel("cache bytes (KiB)")
    ax.set_title("V4Cache bytes: measured (circles) on costs.kv_cache_bytes (lines)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def plot_kernel_timings(report: dict, mode: str = "decode", backend: str | None = None,
                        kernels=None) -> Figure:
    """Median time per call against context length from a :mod:`v4lab.bench_kernels` report
    (the dict written to ``kernels.json``), log-log, in two panels so that no line hides another:
    left, whole layers (``csa_layer``: indexer top-k + sparse attention; ``hca_attention``)
    against dense SDPA over all L keys (dashed, the baseline); right, the parts a CSA / HCA layer
    is made of.

    ``backend``: "torch" (the PyTorch references) or "triton" (GPU runs); default: "triton" when
    the report has it, else "torch".  The title names the device of the run, so CPU timings of
    the PyTorch path are never mistaken for kernel speed.
    """
    results = [r for r in report.get("results", []) if r.get("mode") == mode and "ms" in r]
    have = {r["backend"] for r in results}
    backend = backend or ("triton" if "triton" in have else "torch")
    names = []
    for r in results:
        if r["backend"] == backend and r["kernel"] not in names and (kernels is None or r["kernel"] in kernels):
            names.append(r["kernel"])
    whole = [n for n in names if n in ("csa_layer", "hca_attention")]
    parts = [n for n in names if n not in whole and n != "dense_sdpa"]
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    markers = "osD^vP*X<>"
    for ax, group in ((left, whole), (right, parts)):
        for i, name in enumerate(group):
            pts = sorted((r["context"], r["ms"]) for r in results if r["kernel"] == name and r["backend"] == backend)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)], markersize=4,
                    lw=2.0 if ax is left else 1.2, color=f"C{i}",
                    label=name + (" (indexer top-k + sparse)" if name == "csa_layer" else ""))
    dense = sorted((r["context"], r["ms"]) for r in results if r["kernel"] == "dense_sdpa")
    if dense:
        left.plot([p[0] for p in dense], [p[1] for p in dense], "k--", marker="s", markersize=3, lw=1.5,
                  label="dense SDPA over all L keys")
    ctx = sorted({r["context"] for r in results})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        if ctx:
            ax.set_xticks(ctx, [short_len(L) for L in ctx])
        ax.set_xlabel("context length (tokens)")
        ax.grid(True, which="major", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left")
    left.set_ylabel("ms per call (median)")
    where = "PyTorch path" if backend == "torch" else "Triton kernels"
    device = str(report.get("device", "?"))
    machine = report.get("device_name") or device
    on = machine if not device.startswith("cpu") else "CPU" if machine in (device, "") else f"CPU ({machine})"
    left.set_title(f"{mode}: {where} on {on}, {str(report.get('dtype', '?')).replace('torch.', '')}: "
                   "whole layers against dense", fontsize=10)
    right.set_title("the parts of a CSA / HCA layer", fontsize=10)
    return fig
