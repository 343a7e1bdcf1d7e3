"""Figures of flash-mini's evaluation: needle accuracy over context length and depth."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ._common import fig_ax, short_len


def plot_needle_accuracy(results: dict, train_len: int | None = None, ax=None) -> Figure:
    """results: {context_len: {depth: accuracy}} -> heatmap (depth x context) with the numbers."""
    lens = sorted(results)
    depths = sorted({d for r in results.values() for d in r})
    M = np.array([[results[L].get(d, np.nan) for L in lens] for d in depths])
    fig, ax = fig_ax(ax, (1.3 * len(lens) + 2, 0.5 * len(depths) + 1.8))
    im = ax.imshow(M, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for i in range(len(depths)):
        for j in range(len(lens)):
            if not np.isnan(M[i, j]):
                ax.text(j, i, f"{M[i, j]:.0%}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lens)), [short_len(L) for L in lens])
    ax.set_yticks(range(len(depths)), [f"{d:.1f}" for d in depths])
    ax.set_xlabel("context (tokens)" + (f"; training length {train_len}" if train_len else ""))
    ax.set_ylabel("needle depth")
    ax.set_title("flash-mini needle retrieval (exact match)")
    fig.colorbar(im, ax=ax, fraction=0.04)
    return fig


# DeepSeek-V4's technical report, MRCR 8-needle (the real model, not flash-mini): above 0.82
# through 256K tokens and 0.59 at 1M.
REPORT_MRCR8 = {"through": (262144, 0.82), "at_1m": (1048576, 0.59)}


def plot_long_context(curves: dict, report: dict | None = REPORT_MRCR8, train_len: int | None = None,
                      ax=None) -> Figure:
    """Accuracy against context length, one line per curve, beside the report's MRCR-8 figures.

    curves: ``{label: {context_len: (accuracy, trials)}}`` (or ``{context_len: accuracy}``); every
    point is annotated with its number of trials.  ``report``: the report's published points,
    drawn as a dashed line at 0.82 up to 256K and a marker at 0.59 at 1M, labelled as the report's
    figures for the real model (None: leave them out)."""
    fig, ax = fig_ax(ax, (8.5, 4.2))
    all_lens = set()
    for label, pts in curves.items():
        lens = sorted(int(L) for L in pts)
        all_lens |= set(lens)
        vals = [pts[L] if L in pts else pts[str(L)] for L in lens]
        acc = [v[0] if isinstance(v, (tuple, list)) else v for v in vals]
        line, = ax.plot(lens, acc, marker="o", label=label)
        for L, v, a in zip(lens, vals, acc):
            if isinstance(v, (tuple, list)):
                ax.annotate(f"n={v[1]}", (L, a), textcoords="offset points", xytext=(0, 6), ha="center",
                            fontsize=7, color=line.get_color())
    if report:
        L1, a1 = report["through"]
        L2, a2 = report["at_1m"]
        lo = min(all_lens | {L1}) if all_lens else 1024
        ax.hlines(a1, lo, L1, colors="black", linestyles="--", lw=1.2,
                  label=f"DeepSeek-V4 report, real model: MRCR-8 > {a1} through {short_len(L1)}")
        ax.plot([L2], [a2], marker="*", ms=12, color="black", ls="none",
                label=f"DeepSeek-V4 report, real model: MRCR-8 {a2} at {short_len(L2)}")
        all_lens |= {L2}
    if train_len:
        ax.axvline(train_len, color="grey", lw=1, ls=":", label=f"last training length ({short_len(train_len)})")
    ax.set_xscale("log", base=2)
    ticks = sorted(all_lens)
    ax.set_xticks(ticks, [short_len(L) for L in ticks])
    ax.set_ylim(-0.03, 1.08)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("exact-match accuracy")
    ax.set_title("flash-mini long-context retrieval")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    return fig


KIND_NAMES = {"window": "window-only layers", "csa": "CSA layers", "hca": "HCA layers"}
PART_STYLE = {"window": ("sliding window", "C0", "-"), "compressed": ("all compressed entries", "C2", "--"),
              "needle": ("entries holding the asked value", "C3", "-"), "sink": ("sink", "grey", ":")}


def plot_mass_by_distance(results: dict, window: int | None = None, title: str | None = None) -> Figure:
    """Where the answer's attention goes as the needle moves away.  ``results``:
    ``{distance in tokens: eval.mass_by_kind(...)}``; one panel per layer kind, one line per part
    (window, compressed, the needle's own entries, sink), the window's reach marked."""
    dists = sorted(results)
    kinds = [k for k in ("window", "csa", "hca") if any(k in results[d] for d in dists)]
    fig = Figure(figsize=(4.2 * len(kinds) + 0.6, 3.8), layout="constrained")
    axes = fig.subplots(1, len(kinds), sharey=True, squeeze=False)[0]
    for ax, kind in zip(axes, kinds):
        for part, (label, color, ls) in PART_STYLE.items():
            pts = [(d, results[d][kind][part]) for d in dists if kind in results[d] and part in results[d][kind]]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=color, ls=ls, label=label)
        if window:
            ax.axvline(window, color="black", lw=1, ls=":", label=f"window reach ({window})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(dists, [f"{d / 1000:.1f}K" if d >= 1000 else str(d) for d in dists])
        ax.minorticks_off()
        ax.set_title(KIND_NAMES[kind])
        ax.set_xlabel("needle distance from the question (tokens)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of the answer's attention")
    axes[-1].legend(fontsize=7, loc="center right")
    fig.suptitle(title or "Where the answer's attention goes as the needle moves away")
    return fig


def plot_fact_shares(shares: list[float], task, answer: str | None = None, ax=None) -> Figure:
    """One bar per fact of ``task`` in document order: the attention share on the entries that
    hold its value (``eval.fact_shares``).  The asked fact is red, the other facts about the same
    key orange, facts about other keys grey; the model's answer, if given, is named."""
    spans = task.needle_spans
    key = spans[task.target].key
    fig, ax = fig_ax(ax, (max(6.0, 0.7 * len(spans) + 2), 3.4))
    colors = ["C3" if i == task.target else ("C1" if s.key == key else "0.6") for i, s in enumerate(spans)]
    ax.bar(range(len(spans)), shares, color=colors)
    ax.set_xticks(range(len(spans)), [f"{s.value}\n{'ASKED' if i == task.target else s.key}"
                                     for i, s in enumerate(spans)], fontsize=7)
    from matplotlib.patches import Patch

    handles = [Patch(color="C3", label=f"asked: {key} #{_ordinal_of(task)}"),
               Patch(color="C1", label=f"other codes of the {key}"), Patch(color="0.6", label="other keys")]
    ax.legend(handles=handles, fontsize=7, loc="upper right")
    ax.set_ylabel("share of the answer's attention")
    ax.set_xlabel("facts in document order (value)")
    said = f"; the model answered {answer}" if answer is not None else ""
    ax.set_title(f"Which fact the answer's attention reads{said}", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return fig


def _ordinal_of(task) -> int:
    key = task.needle_spans[task.target].key
    same = [i for i, s in enumerate(task.needle_spans) if s.key == key]
    return same.index(task.target) + 1
