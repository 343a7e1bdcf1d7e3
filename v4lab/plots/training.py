"""Figures of a training run, from its log (``v4lab.train.read_train_log``): the loss curves with
the recipe's phases shaded, and two optimisers against wall-clock time."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ._common import fig_ax

LABELS = {
    "lm": "next-token loss (nats)",
    "mtp": "MTP loss (nats)",
    "answer": "answer-token loss (nats)",
    "answer_acc": "answer-token accuracy",
    "indexer_kl": "indexer KL (nats)",
    "total": "total loss",
}
PHASE_COLORS = ["#dddddd", "#cfe3f5", "#d7f0d2", "#f8e3c8", "#ecd5f0"]


def running_mean(values, window: int) -> np.ndarray:
    """Mean of the last ``window`` finite values at each point (NaN-aware), same length as
    ``values``; a window of 1 returns the values."""
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    c = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    n = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(1, len(v) + 1)
    lo = np.maximum(0, i - window)
    cnt = n[i] - n[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, (c[i] - c[lo]) / cnt, np.nan)


def _series(rows, key):
    return np.array([r.get(key, np.nan) for r in rows], dtype=float)


def plot_training_history(rows: list[dict], metrics=("lm", "answer_acc", "indexer_kl"), smooth: int = 25,
                          title: str = "flash-mini's training, phase by phase") -> Figure:
    """One panel per metric against the step, the raw values faint and their running mean
    (``smooth`` steps) bold, each phase of the recipe (``row["phase"]``) shaded and named."""
    from ..train import training_phases

    phases = training_phases(rows)
    fig = Figure(figsize=(11, 2.3 * len(metrics) + 0.8), layout="constrained")
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    steps = np.array([r["step"] for r in rows])
    colors = {}
    for name, _, _ in phases:
        colors.setdefault(name, PHASE_COLORS[len(colors) % len(PHASE_COLORS)])
    for ax, key in zip(axes, metrics):
        y = _series(rows, key)
        ax.plot(steps, y, color="C0", alpha=0.2, lw=0.8)
        ax.plot(steps, running_mean(y, smooth), color="C0", lw=2, label=f"mean of {smooth} steps")
        seen = set()
        for name, a, b in phases:
            ax.axvspan(a - 0.5, b + 0.5, color=colors[name], zorder=0,
                       label=name if name not in seen else None)
            seen.add(name)
        ax.set_ylabel(LABELS.get(key, key))
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8, ncol=len(colors) + 1)
    axes[-1].set_xlabel("training step")
    fig.suptitle(title)
    return fig


def plot_optimizer_comparison(logs: dict, metric: str = "answer_acc", smooth: int = 20,
                              chance: float | None = None, ax=None) -> Figure:
    """``logs``: ``{optimiser: rows}`` of runs that differ only in the optimiser; the running mean
    of ``metric`` against wall-clock minutes (the fair axis: a Muon step costs more than an AdamW
    one), with a chance line when given."""
    fig, ax = fig_ax(ax, (8, 3.6))
    for i, (name, rows) in enumerate(logs.items()):
        t = np.array([r["elapsed"] for r in rows]) / 60
        ax.plot(t, running_mean(_series(rows, metric), smooth), color=f"C{i}", lw=2,
                label=f"{name} ({len(rows)} steps)")
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", label=f"chance ({chance:g})")
    ax.set_xlabel("wall-clock minutes (2-core CPU)")
    ax.set_ylabel(LABELS.get(metric, metric) + f", mean of {smooth}")
    ax.set_title("Same recipe, same data: which optimiser learns retrieval sooner")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig
