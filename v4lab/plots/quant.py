"""Figures of the checkpoint number formats (:mod:`v4lab.quant`): the FP8 e4m3 and FP4 e2m1
value grids, and a block-scaled round trip.

Every function returns a :class:`matplotlib.figure.Figure` (no pyplot state); the values drawn
come from the package's codecs, not from tables typed here.
"""
from __future__ import annotations

import torch
from matplotlib.figure import Figure

from .. import quant
from ._common import fig_ax


def e4m3_values() -> dict:
    """All 256 e4m3 bytes decoded: ``{"byte": [...], "value": [...]}`` (NaN for 0x7F / 0xFF)."""
    b = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    v = quant.fp8_e4m3_decode(b, torch.float64)
    return {"byte": list(range(256)), "value": v.tolist()}


def e2m1_values() -> dict:
    """All 16 e2m1 codes decoded: ``{"code": [...], "value": [...]}``."""
    c = torch.arange(16)
    return {"code": c.tolist(), "value": quant.fp4_e2m1_decode(c, torch.float64).tolist()}


def plot_value_grids() -> Figure:
    """Two panels.  Top: the 16 e2m1 codes on the number line (15 distinct values, +-0 share
    a point).  Bottom: the value of every positive e4m3 byte 0x00..0x7E on a log scale, with the
    subnormals (exponent field 0) marked, the smallest subnormal 2^-9, the smallest normal 2^-6
    and the largest finite value 448 annotated."""
    fig = Figure(figsize=(9, 5.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[1, 2.2])

    fp4 = e2m1_values()
    vals = fp4["value"]
    top.axhline(0, color="0.7", lw=0.8, zorder=0)
    top.scatter(vals, [0] * 16, s=36, color="tab:purple", zorder=2)
    for code, v in zip(fp4["code"], vals):
        if code == 8:  # -0 sits on +0
            continue
        label = f"{code:X}" if code else "0 / 8"
        top.annotate(label, (v, 0), xytext=(0, 9), textcoords="offset points", ha="center", fontsize=8)
        top.annotate(f"{v:g}", (v, 0), xytext=(0, -16), textcoords="offset points", ha="center",
                     fontsize=7, color="0.35")
    top.set_yticks([])
    top.set_ylim(-1, 1)
    top.set_xlim(-6.8, 6.8)
    top.set_title("FP4 e2m1: code (hex, above) -> value (below); codes 8..F are the negatives of 0..7",
                  fontsize=9)
    for side in ("left", "right", "top"):
        top.spines[side].set_visible(False)

    fp8 = e4m3_values()
    pos = [(b, v) for b, v in zip(fp8["byte"], fp8["value"]) if 0 < b < 0x7F]
    sub = [(b, v) for b, v in pos if (b >> 3) & 0xF == 0]
    nrm = [(b, v) for b, v in pos if (b >> 3) & 0xF != 0]
    bottom.scatter([b for b, _ in nrm], [v for _, v in nrm], s=8, color="tab:blue", label="normal")
    bottom.scatter([b for b, _ in sub], [v for _, v in sub], s=8, color="tab:red",
                   label="subnormal (exponent field 0)")
    bottom.set_yscale("log", base=2)
    bottom.set_ylim(2.0**-10.5, 2.0**10)
    for b, text in ((0x01, "0x01 = 2^-9"), (0x08, "0x08 = 2^-6 (smallest normal)"),
                    (0x38, "0x38 = 1"), (0x7E, "0x7E = 448 (max)")):
        v = fp8["value"][b]
        right = b == 0x7E
        bottom.annotate(text, (b, v), xytext=(-10 if right else 10, 8 if right else -10),
                        textcoords="offset points", fontsize=7, ha="right" if right else "left",
                        va="center", arrowprops=dict(arrowstyle="-", color="0.5", lw=0.6))
    bottom.set_xlabel("byte (sign bit 0); 0x7F is NaN, 0x80..0xFE are the negatives")
    bottom.set_ylabel("value")
    bottom.set_xticks(range(0, 0x80, 0x10), [f"0x{b:02X}" for b in range(0, 0x80, 0x10)])
    bottom.grid(True, alpha=0.3)
    bottom.legend(fontsize=8, loc="upper left")
    bottom.set_title("FP8 e4m3: 8 values per power of two (3 mantissa bits), 2^-9 .. 448", fontsize=9)
    return fig


def plot_block_roundtrip(x, fmt: str = "fp4", block: int = 32, ax=None) -> Figure:
    """A 1-D signal ``x`` and its round trip through ``fmt`` ("fp4": e2m1 with one ue8m0 scale
    per ``block``; "fp8": e4m3 with one scale per ``block``), block boundaries dashed and each
    block's scale 2^e written above it."""
    x = torch.as_tensor(x, dtype=torch.float32).flatten()
    if fmt == "fp4":
        q = quant.fp4_roundtrip(x[None], block=block)[0]
        qmax = quant.E2M1_MAX
    elif fmt == "fp8":
        q = quant.fp8_roundtrip(x[None], block=block)[0]
        qmax = quant.E4M3_MAX
    else:
        raise ValueError(f"fmt must be 'fp4' or 'fp8', got {fmt!r}")
    fig, ax = fig_ax(ax, (9, 3.2))
    n = x.numel()
    idx = list(range(n))
    ax.plot(idx, x.tolist(), color="0.6", lw=1, label="input")
    ax.step(idx, q.tolist(), where="mid", color="tab:purple" if fmt == "fp4" else "tab:blue", lw=1.2,
            label=f"{fmt.upper()} round trip")
    top = float(x.abs().max()) if n else 1.0
    for start in range(0, n, block):
        seg = x[start:start + block]
        e = int(quant.pow2_scale_exponent(seg.abs().amax(), qmax, eps=1e-4))
        if start:
            ax.axvline(start - 0.5, color="0.8", ls="--", lw=0.8)
        ax.text(start + min(block, n - start) / 2 - 0.5, 1.12 * top, f"scale 2^{e}", ha="center",
                fontsize=7, color="0.3")
    ax.set_ylim(-1.3 * top, 1.3 * top)
    ax.set_xlabel("channel")
    err = float((q - x).abs().max()) if n else 0.0
    ax.set_title(f"{fmt.upper()} with one power-of-two scale per {block} channels; max abs error {err:.3g}",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    return ax.figure
