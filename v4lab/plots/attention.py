"""Figures of what V4 attention sees: layer-type masks, indexer picks, attention mass.

Every function returns a matplotlib ``Figure`` (built without pyplot, so it works headless) and
takes an optional ``ax`` where a single panel makes sense.
"""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from ._common import KIND_COLORS, fig_ax  # noqa: F401  (KIND_COLORS: also read from here)
from .model import receptive_field          # the one statement of what each layer type reads


def visibility_mask(kind: str, length: int, window: int, ratio: int = 0, selected=None) -> np.ndarray:
    """Token-level visibility [query t, source token s] of one layer type, in the units the
    attention reads: 1 = raw token in the window, 2 = token reached through a compressed entry.

    kind 'window': s in (t-window, t].  'hca': plus every token of a complete block of ``ratio``.
    'csa': plus the tokens of the entries in ``selected[t]`` (lists of entry ids; default: all
    complete entries, i.e. top-k covering everything).  Entry j of CSA pools block j and the first
    half of the channels of block j-1 (8 tokens); HCA entry j pools block j."""
    M = np.zeros((length, length), dtype=np.int8)
    for t in range(length):
        rf = receptive_field(kind, t, window, ratio, None if selected is None else selected[t])
        for a, b in rf["compressed"]:
            M[t, a:b] = 2
        M[t, rf["window"][0]:rf["window"][1]] = 1
    return M


def plot_layer_masks(length: int = 64, window: int = 16, csa_ratio: int = 4, hca_ratio: int = 16,
                     topk: int = 3, seed: int = 0) -> Figure:
    """Three panels: what a query token sees in a window-only, a CSA and an HCA layer
    (blue = raw window tokens, orange = tokens behind compressed entries, white = not seen), with
    a legend.  The CSA panel uses a random top-k per query to show sparsity; the prose of the
    notebook explains the indexer."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    rng = np.random.default_rng(seed)
    sel = [rng.permutation(max(1, (t + 1) // csa_ratio))[:topk].tolist() for t in range(length)]
    panels = [
        ("window-only (SWA)", visibility_mask("window", length, window)),
        (f"CSA (m={csa_ratio}, top-{topk} entries)", visibility_mask("csa", length, window, csa_ratio, sel)),
        (f"HCA (m={hca_ratio}, every complete entry)", visibility_mask("hca", length, window, hca_ratio)),
    ]
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    cmap = ListedColormap(["white", KIND_COLORS["window"], KIND_COLORS["csa"]])
    for i, (title, M) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(M, cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel("source token s")
        ax.set_ylabel("query token t")
    handles = [Patch(color=KIND_COLORS["window"], label=f"raw token in the {window}-token window"),
               Patch(color=KIND_COLORS["csa"], label="token reached through a compressed entry"),
               Patch(facecolor="white", edgecolor="0.5", label="not seen by the query")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9)
    fig.suptitle("What one query token can read in each layer type (row t: the sources query t sees)")
    return fig


def _selected_tokens(records: dict) -> dict:
    out = {}
    for layer, rec in records.items():
        if rec["kind"] != "csa" or not rec["sel"]:
            continue
        sel = torch.cat(rec["sel"], 1)[0]  # [steps, k]
        pos = torch.cat(rec["pos"])
        out[layer] = (pos.numpy(), sel.numpy(), rec.get("ratio", 4))  # CSA: 4 where not recorded
    return out


def plot_indexer_picks(records: dict, task=None, cfg=None, ax=None, bos: bool = True) -> Figure:
    """Which compressed entries the Lightning Indexer picked, per CSA layer, at each recorded
    answer step, against the position of the entry's block in the prompt.  With ``task``, the
    asked value is a red band, picks of an entry that holds a byte of it ("needle hits") are red
    and counted in the panel's title, other facts are dashed lines; the legend sits under the
    panels, clear of the points."""
    from matplotlib.lines import Line2D

    picks = _selected_tokens(records)
    fig = Figure(figsize=(10, 2.0 + 1.5 * max(1, len(picks))), layout="constrained")
    if not picks:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no CSA picks recorded", ha="center", va="center")
        return fig
    needle, others = None, []
    if task is not None and task.needle_spans:
        s = task.needle_spans[task.target]  # the asked fact (MRCR: one of several)
        needle = (s.value_start + int(bos), s.value_end + int(bos))  # token positions of the value
        others = [(o.value_start + o.value_end) / 2 + int(bos) for i, o in enumerate(task.needle_spans)
                  if i != task.target]
    axes = fig.subplots(len(picks), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (layer, (pos, sel, ratio)) in zip(axes, sorted(picks.items())):
        steps = np.repeat(np.arange(len(pos)), sel.shape[1])
        ent = sel.reshape(-1)
        ok = ent >= 0
        hit = np.zeros_like(ok)
        if needle:
            want = np.array(sorted({p // ratio for p in range(needle[0], needle[1])}))
            hit = ok & np.isin(ent, want)
            ax.axvspan(needle[0], needle[1], color="red", alpha=0.25, lw=0)
        for x in others:
            ax.axvline(x, color="grey", lw=1, ls="--", alpha=0.6)
        ax.scatter(ent[ok & ~hit] * ratio, steps[ok & ~hit], s=10, marker="s", color=KIND_COLORS["csa"])
        ax.scatter(ent[hit] * ratio, steps[hit], s=28, marker="s", color="red", edgecolors="black", linewidths=0.5)
        n_hit = len({int(t) for t in steps[hit]})
        title = f"layer {layer} (CSA, top-{sel.shape[1]})"
        if needle:
            title += f": a needle entry picked at {n_hit} of {len(pos)} answer steps"
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_xlim(0, max(int(pos.max()) + 1, 1))
        ax.set_ylim(-0.6, len(pos) - 0.4)
        ax.set_yticks(range(len(pos)))
        ax.set_ylabel("answer step")
    axes[-1].set_xlabel("token position in the prompt (an entry is drawn at its block's first token)")
    handles = [Line2D([], [], marker="s", ls="none", color=KIND_COLORS["csa"], label="picked entry")]
    if needle:
        handles += [Line2D([], [], marker="s", ls="none", color="red", markeredgecolor="black",
                           label="picked entry holding the asked value"),
                    Line2D([], [], color="red", alpha=0.4, lw=6, label="asked value")]
    if others:
        handles.append(Line2D([], [], color="grey", ls="--", label="other facts"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    fig.suptitle("Which compressed entries the Lightning Indexer picked while the answer was written")
    return fig


def attention_mass(records: dict) -> dict:
    """Per layer: mean share of attention on window / compressed entries / sink
    (``v4lab.eval.attention_mass`` without a task)."""
    from ..eval import attention_mass as _mass

    return dict(sorted(_mass(records).items()))


def plot_attention_mass(records: dict) -> Figure:
    """Where each layer's attention goes: stacked bars of the window / compressed / sink shares
    with their percentages, and below them the sink's share on its own scale (it is too small to
    see in the stack, and it is what keeps a head free to attend to nothing)."""
    mass = attention_mass(records)
    layers = list(mass)
    fig = Figure(figsize=(8, 5), layout="constrained")
    top, low = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.3])
    bottom = np.zeros(len(layers))
    for part, color in (("window", KIND_COLORS["window"]), ("compressed", KIND_COLORS["csa"]), ("sink", KIND_COLORS["sink"])):
        vals = np.array([mass[l][part] for l in layers])
        top.bar(range(len(layers)), vals, bottom=bottom, color=color, label=part)
        for x, (v, b) in enumerate(zip(vals, bottom)):
            if v >= 0.04:
                top.text(x, b + v / 2, f"{v:.0%}", ha="center", va="center", fontsize=8, color="white")
        bottom += vals
    top.set_ylabel("share of attention")
    top.set_ylim(0, 1)
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    top.set_title("Where each layer's attention goes: its window, compressed entries, the sink")
    sink = np.array([mass[l]["sink"] for l in layers])
    low.bar(range(len(layers)), sink, color=KIND_COLORS["sink"])
    for x, v in enumerate(sink):
        low.text(x, v, f"{v:.2%}", ha="center", va="bottom", fontsize=8)
    low.set_ylim(0, max(float(sink.max()) * 1.35, 1e-6))
    low.set_ylabel("sink share\n(own scale)")
    low.set_xticks(range(len(layers)), [f"{l}\n{mass[l]['kind']}" for l in layers])
    low.set_xlabel("layer")
    return fig
