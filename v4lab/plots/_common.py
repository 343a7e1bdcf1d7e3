"""Helpers every figure module uses: a figure and axes without pyplot, short length labels."""
from __future__ import annotations

from matplotlib.figure import Figure

# one colour per layer kind (and the sink), shared by every figure
KIND_COLORS = {"window": "#4C72B0", "csa": "#DD8452", "hca": "#55A868", "sink": "#8C8C8C"}


def fig_ax(ax, size):
    """``(figure, axes)``: those of ``ax`` when given, else a new constrained-layout figure of
    ``size`` inches with one axes."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot(1, 1, 1)


def short_len(L: int) -> str:
    """A context length as a label: 4096 -> '4K', 1048576 -> '1M', 1000 -> '1,000'."""
    if L >= 2**20 and L % 2**20 == 0:
        return f"{L // 2**20}M"
    if L >= 1024 and L % 1024 == 0:
        return f"{L // 1024}K"
    return f"{L:,}"
