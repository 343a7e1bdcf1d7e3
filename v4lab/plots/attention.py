"""Figures of what V4 attention sees: layer-type masks, indexer picks, attention mass.

Every function returns a matplotlib ``Figure`` (built without pyplot, so it works headless) and
takes an optional ``ax`` where a single panel makes sense.
"""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from ._common import fig_ax

KIND_COLORS = {"window": "#4C72B0", "csa": "#DD8452", "hca": "#55A868", "sink": "#8C8C8C"}


def visibility_mask(kind: str, length: int, window: int, ratio: int = 0, selected=None) -> np.ndarray:
    """Token-level visibility [query t, source token s] of one layer type, in the units the
    attention reads: 1 = raw token in the window, 2 = token reached through a compressed entry.

    kind 'window': s in (t-window, t].  'hca': plus every token of a complete block of ``ratio``.
    'csa': plus the tokens of the entries in ``selected[t]`` (lists of entry ids; default: all
    complete entries, i.e. top-k covering everything).  Entry j of CSA pools block j and the first
    half of the channels of block j-1 (8 tokens); HCA entry j pools block j."""
    from .model import receptive_field          # the one statement of what each layer type reads

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
    (blue = raw window tokens, orange = tokens behind compressed entries).  The CSA panel uses
    a random top-k per query to show sparsity; the prose of the notebook explains the indexer."""
    from matplotlib.colors import ListedColormap

    rng = np.random.default_rng(seed)
    sel = [rng.permutation(max(1, (t + 1) // csa_ratio))[:topk].tolist() for t in range(length)]
    panels = [
        ("window-only (SWA)", visibility_mask("window", length, window)),
        (f"CSA (m={csa_ratio}, top-{topk})", visibility_mask("csa", length, window, csa_ratio, sel)),
        (f"HCA (m={hca_ratio}, dense)", visibility_mask("hca", length, window, hca_ratio)),
    ]
    fig = Figure(figsize=(12, 4))
    cmap = ListedColormap(["white", KIND_COLORS["window"], KIND_COLORS["csa"]])
    for i, (title, M) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(M, cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel("source token s")
        ax.set_ylabel("query token t")
    fig.tight_layout()
    return fig


def _selected_tokens(records: dict) -> dict:
    out = {}
    for layer, rec in records.items():
        if rec["kind"] != "csa" or not rec["sel"]:
            continue
        sel = torch.cat(rec["sel"], 1)[0]  # [steps, k]
        pos = torch.cat(rec["pos"])
        out[layer] = (pos.numpy(), sel.numpy(), rec.get("ratio", 4))
    return out


def plot_indexer_picks(records: dict, task=None, cfg=None, ax=None, bos: bool = True) -> Figure:
    """Which compressed entries the Lightning Indexer picked, per CSA layer, for each recorded
    query (e.g. the answer tokens), against the entry's position in the document; the needle's
    value (if ``task`` is given) is marked."""
    picks = _selected_tokens(records)
    fig = Figure(figsize=(10, 1.6 + 1.4 * max(1, len(picks))))
    if not picks:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no CSA picks recorded", ha="center", va="center")
        return fig
    needle, others = None, []
    if task is not None and task.needle_spans:
        s = task.needle_spans[task.target]  # the asked fact (MRCR: one of several)
        needle = (s.value_start + int(bos), s.value_end + int(bos))
        others = [(o.value_start + o.value_end) / 2 + int(bos) for i, o in enumerate(task.needle_spans)
                  if i != task.target]
    for i, (layer, (pos, sel, ratio)) in enumerate(sorted(picks.items())):
        ax = fig.add_subplot(len(picks), 1, i + 1)
        steps = np.repeat(np.arange(len(pos)), sel.shape[1])
        ent = sel.reshape(-1)
        ok = ent >= 0
        ax.scatter(ent[ok] * ratio, steps[ok], s=10, marker="s", color=KIND_COLORS["csa"], label="picked entry (block start)")
        for j, x in enumerate(others):
            ax.axvline(x, color="grey", lw=1, ls="--", alpha=0.6, label="other facts" if j == 0 else None)
        if needle:
            ax.axvline((needle[0] + needle[1]) / 2, color="red", lw=1.5, alpha=0.7, label="asked value")
        ax.set_xlim(0, max(int(pos.max()) + 1, 1))
        ax.set_ylabel(f"layer {layer}\nquery #")
        if i == 0:
            ax.set_title("Lightning Indexer top-k picks (x: token position of the entry's block)")
            ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("token position in the prompt")
    fig.tight_layout()
    return fig


def attention_mass(records: dict) -> dict:
    """Per layer: mean share of attention on window / compressed entries / sink."""
    out = {}
    for layer, rec in sorted(records.items()):
        m = torch.cat(rec["mass"], 1)  # [B, S, 3]
        out[layer] = {"kind": rec["kind"], **dict(zip(("window", "compressed", "sink"), m.mean((0, 1)).tolist()))}
    return out


def plot_attention_mass(records: dict, ax=None) -> Figure:
    """Stacked bars: where each layer's attention goes (window vs compressed vs sink)."""
    mass = attention_mass(records)
    fig, ax = fig_ax(ax, (7, 3.5))
    layers = list(mass)
    bottom = np.zeros(len(layers))
    for part, color in (("window", KIND_COLORS["window"]), ("compressed", KIND_COLORS["csa"]), ("sink", KIND_COLORS["sink"])):
        vals = np.array([mass[l][part] for l in layers])
        ax.bar(range(len(layers)), vals, bottom=bottom, color=color, label=part)
        bottom += vals
    ax.set_xticks(range(len(layers)), [f"{l}\n{mass[l]['kind']}" for l in layers])
    ax.set_ylabel("share of attention")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Where the attention mass goes")
    return fig
