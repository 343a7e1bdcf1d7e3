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
