"""Figures of the model's parts, for notebooks 00-05 and 08: layer schedules, the token-level
compressor, the Lightning Indexer, receptive fields, mHC, MoE routing and measured scaling.

Every ``plot_*`` function returns a matplotlib ``Figure`` built without pyplot (so it works
headless and in tests); the data each figure shows is computed by a plain function next to it
(``compressor_membership``, ``indexer_view``, ``receptive_field``, ...) that the tests call
directly.
"""
from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from ._common import KIND_COLORS, fig_ax, short_len

SCHEDULE_COLORS = {"S": KIND_COLORS["window"], "C": KIND_COLORS["csa"], "H": KIND_COLORS["hca"]}
"""Colour of each layer letter of :meth:`V4Config.schedule_string`."""

_KIND_OF_LETTER = {"S": "window-only (SWA)", "C": "CSA (m=4, top-k)", "H": "HCA (m=128, dense)"}


def _np(x) -> np.ndarray:
    """A numpy array from a tensor, a list or an array."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


# ----------------------------------------------------------------------------------------------
# 00: layer schedules
# ----------------------------------------------------------------------------------------------
def schedule_cells(schedule: str) -> list[tuple[str, bool]]:
    """``"SSCH|S"`` -> ``[("S", False), ("S", False), ("C", False), ("H", False), ("S", True)]``
    (letter, is the MTP block)."""
    main, _, mtp = schedule.partition("|")
    return [(c, False) for c in main] + [(c, True) for c in mtp]


def plot_schedule(schedules: dict) -> Figure:
    """One row of coloured cells per model: the layer schedule (S window-only, C CSA, H HCA),
    the MTP block last and hatched.  ``schedules``: {name: V4Config or schedule string}."""
    from matplotlib.patches import Patch, Rectangle

    rows = []
    for name, s in schedules.items():
        s = s.schedule_string() if hasattr(s, "schedule_string") else str(s)
        rows.append((name, schedule_cells(s)))
    width = max(len(cells) for _, cells in rows)
    fig = Figure(figsize=(min(14, 2 + 0.2 * width), 1.1 + 0.55 * len(rows)), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for r, (name, cells) in enumerate(rows):
        y = len(rows) - 1 - r
        for i, (letter, mtp) in enumerate(cells):
            ax.add_patch(Rectangle((i, y + 0.1), 0.9, 0.8, facecolor=SCHEDULE_COLORS[letter],
                                   edgecolor="black" if mtp else "none", hatch="//" if mtp else None,
                                   linewidth=0.8))
            if len(cells) <= 12:
                ax.text(i + 0.45, y + 0.5, letter, ha="center", va="center", color="white", fontsize=9)
        n_main = len(cells) - sum(m for _, m in cells)
        ax.text(len(cells) + 0.2, y + 0.5, f"{n_main} layers + MTP", va="center", fontsize=8)
    ax.set_xlim(0, width + 6)
    ax.set_ylim(0, len(rows))
    ax.set_yticks([len(rows) - 1 - r + 0.5 for r in range(len(rows))], [n for n, _ in rows])
    ax.set_xlabel("layer")
    ax.spines[["top", "right", "left"]].set_visible(False)
    handles = [Patch(color=SCHEDULE_COLORS[k], label=v) for k, v in _KIND_OF_LETTER.items()]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="MTP block"))
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    ax.set_title("Layer schedules")
    return fig


def plot_cache_by_layer(by_layer: dict, dense_total: int | None = None, ax=None) -> Figure:
    """Stacked bars of a cache's bytes per layer (``V4Cache.nbytes(by_layer=True)``): window
    ring, compressed entries, indexer keys, compressor state; ``dense_total`` (bytes of a dense
    cache of the same length, per layer) as a dashed line."""
    fig, ax = fig_ax(ax, (7, 3.4))
    rows = by_layer["layers"]
    parts = [("window", KIND_COLORS["window"]), ("compressed", KIND_COLORS["csa"]),
             ("indexer", "#C44E52"), ("state", KIND_COLORS["sink"])]
    bottom = np.zeros(len(rows))
    for part, color in parts:
        vals = np.array([r[part] for r in rows], dtype=float) / 2**20
        ax.bar(range(len(rows)), vals, bottom=bottom, color=color, label=part)
        bottom += vals
    if dense_total is not None:
        ax.axhline(dense_total / 2**20, color="black", linestyle="--", linewidth=1,
                   label="dense layer, same length")
    ax.set_xticks(range(len(rows)), [f"{r['layer']}\n{r['kind']}" for r in rows])
    ax.set_ylabel("MiB")
    ax.set_title("KV cache per layer")
    ax.legend(fontsize=8)
    return fig


# ----------------------------------------------------------------------------------------------
# 01: the token-level compressor
# ----------------------------------------------------------------------------------------------
def compressor_membership(n_tokens: int, ratio: int, overlap: bool) -> np.ndarray:
    """[n_entries, n_tokens] int: 2 where token s feeds entry j with its own-block (B) half,
    1 where it feeds it with its previous-block (A) half (CSA only), 0 elsewhere.  Only
    complete blocks make entries: n_entries = n_tokens // ratio."""
    nb = n_tokens // ratio
    M = np.zeros((nb, n_tokens), dtype=np.int8)
    for j in range(nb):
        M[j, j * ratio : (j + 1) * ratio] = 2
        if overlap and j > 0:
            M[j, (j - 1) * ratio : j * ratio] = 1
    return M


def plot_compressor_windows(n_tokens: int = 26, csa_ratio: int = 4, hca_ratio: int = 8) -> Figure:
    """Which tokens feed which compressed entry: CSA's overlapping windows (every token is
    recorded twice, once with each half of its projections) and HCA's disjoint blocks.  The
    last, incomplete block makes no entry yet."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=[1, 0.6])
    cmap = ListedColormap(["white", "#F2B880", KIND_COLORS["csa"]])
    for ax, (title, ratio, overlap, color) in zip(axes, [
        (f"CSA: m = {csa_ratio}, overlapping (2m = {2 * csa_ratio} tokens per entry)", csa_ratio, True, None),
        (f"HCA: m = {hca_ratio}, disjoint blocks", hca_ratio, False, KIND_COLORS["hca"]),
    ]):
        M = compressor_membership(n_tokens, ratio, overlap)
        cm = cmap if overlap else ListedColormap(["white", color, color])
        ax.imshow(M, cmap=cm, vmin=0, vmax=2, aspect="auto", interpolation="nearest")
        for j in range(M.shape[0]):
            for s in range(n_tokens):
                if M[j, s]:
                    ax.text(s, j, "A" if M[j, s] == 1 else ("B" if overlap else ""), ha="center",
                            va="center", fontsize=7)
        for b in range(0, n_tokens + 1, ratio):
            ax.axvline(b - 0.5, color="grey", linewidth=0.5)
        ax.set_yticks(range(M.shape[0]))
        ax.set_xlabel("token position s")
        ax.set_ylabel("compressed entry j")
        ax.set_title(title, fontsize=10)
        ax.axvspan(M.shape[0] * ratio - 0.5, n_tokens - 0.5, color="grey", alpha=0.15)
    axes[0].legend(handles=[Patch(color=KIND_COLORS["csa"], label="B half: own block j"),
                            Patch(color="#F2B880", label="A half: previous block j-1"),
                            Patch(color="grey", alpha=0.3, label="incomplete block: no entry yet")],
                   loc="lower left", fontsize=8)
    return fig


def plot_gate_weights(weights, row_labels=None, titles=None, channels: int | None = 32,
                      vmax: float | None = None) -> Figure:
    """Heatmaps of the compressor's gate: softmax weights over the rows (tokens) of an entry,
    separately for every channel.  ``weights``: [rows, C] or [E, rows, C] (E entries side by
    side); each column sums to 1.  ``row_labels``: one list of row names per entry (or one
    shared list); ``channels``: show the first this many channels; ``vmax``: top of the colour
    scale (default: the largest weight shown)."""
    W = _np(weights)
    if W.ndim == 2:
        W = W[None]
    if channels:
        W = W[..., :channels]
    E, R, C = W.shape
    vmax = float(W.max()) if vmax is None else vmax
    fig = Figure(figsize=(min(14, 1.5 + 3.6 * E), min(6.0, 0.9 + 0.3 * R)), layout="constrained")
    axes = fig.subplots(1, E, squeeze=False)[0]
    im = None
    for e, ax in enumerate(axes):
        im = ax.imshow(W[e], cmap="viridis", vmin=0, vmax=vmax, aspect="auto", interpolation="nearest")
        labels = None
        if row_labels is not None:
            labels = row_labels[e] if isinstance(row_labels[0], (list, tuple)) else row_labels
        if R <= 24:
            ax.set_yticks(range(R), labels if labels is not None else range(R), fontsize=7)
        else:
            ax.set_yticks(range(0, R, max(1, R // 8)))
        ax.set_ylabel("row (token) of the entry")
        ax.set_xlabel("channel e")
        if titles is not None:
            ax.set_title(titles[e], fontsize=9)
    fig.colorbar(im, ax=list(axes), shrink=0.9, label="gate weight")
    return fig


# ----------------------------------------------------------------------------------------------
# 02: the Lightning Indexer
# ----------------------------------------------------------------------------------------------
def standardize_rows(scores) -> np.ndarray:
    """Scores [queries, entries] with each row's valid (finite) entries shifted and scaled to mean
    0 and standard deviation 1 (NaN where not valid), so that rows of different scale compare."""
    S = _np(scores).astype(float)
    S = np.where(np.isfinite(S), S, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mu = np.nanmean(S, axis=1, keepdims=True)
            sd = np.nanstd(S, axis=1, keepdims=True)
        return (S - mu) / np.where(sd > 0, sd, 1.0)


def plot_indexer_scores(scores, positions, picks=None, ratio: int = 4, window: int | None = None,
                        ax=None, title: str = "Lightning Indexer scores I[t, j]",
                        standardize: bool = True, pick_rows: int = 24) -> Figure:
    """Heatmap of indexer scores [queries, entries] (-inf = not valid yet, drawn white) with the
    top-k picks of some queries as rings and, optionally, the window edge (entries left of the
    dashed line hold tokens that are no longer in the window).  ``positions``: the token
    position of each query row; ``standardize``: show each row's scores as z-scores
    (:func:`standardize_rows`); ``pick_rows``: the picks of about this many evenly spaced query
    rows are drawn (all rows' picks would cover the scores they come from)."""
    from matplotlib.lines import Line2D

    S = _np(scores).astype(float)
    pos = _np(positions).astype(int)
    fig, ax = fig_ax(ax, (8.5, 4.8))
    shown = standardize_rows(S) if standardize else np.where(np.isfinite(S), S, np.nan)
    im = ax.imshow(shown, aspect="auto", cmap="magma", interpolation="nearest",
                   extent=(-0.5, S.shape[1] - 0.5, S.shape[0] - 0.5, -0.5))
    fig.colorbar(im, ax=ax, label="score (z-score per query)" if standardize else "score")
    handles = []
    if picks is not None:
        P = _np(picks).astype(int)
        every = max(1, int(np.ceil(P.shape[0] / max(1, pick_rows))))
        shown_rows = np.arange(0, P.shape[0], every)
        rows = np.repeat(shown_rows, P.shape[1])
        ent = P[shown_rows].reshape(-1)
        ok = ent >= 0
        ax.scatter(ent[ok], rows[ok], s=14, facecolors="none", edgecolors="#00E5FF", linewidths=0.9)
        what = "every query" if every == 1 else f"every {every}th query row"
        handles.append(Line2D([], [], marker="o", ls="none", markerfacecolor="none", markeredgecolor="#00E5FF",
                              label=f"top-{P.shape[1]} picks of {what}"))
    if window is not None:
        edge = np.maximum(pos - window + 1, 0) / ratio
        ax.plot(edge, np.arange(len(pos)), color="white", linewidth=1, linestyle="--")
        handles.append(Line2D([], [], color="0.3", ls="--", label="window edge (left of it: out of the window)"))
    if handles:
        ax.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.9)
    step = max(1, len(pos) // 8)
    ax.set_yticks(range(0, len(pos), step), pos[::step])
    ax.set_ylabel("query position t")
    ax.set_xlabel(f"compressed entry j (tokens {ratio}j .. {ratio}j+{ratio - 1})")
    ax.set_title(title)
    return fig


def indexer_view(scores, positions, query: int, k: int, ratio: int = 4) -> dict:
    """Everything the indexer explorer shows for one query row and one k.

    Returns ``{"position", "valid", "picks" (entry ids, best first, lowest index on ties),
    "html", "figure"}``: the figure has the query's scores over its valid entries with the picks
    highlighted and the k-th score as a line."""
    import html as _html

    import torch

    from ..indexer import topk_lowest_index

    S = _np(scores).astype(np.float32)
    pos = _np(positions).astype(int)
    row = torch.from_numpy(S[query])
    picks = topk_lowest_index(row[None], k)[0]
    picks = sorted((int(p) for p in picks.tolist() if p >= 0), key=lambda j: (-float(S[query, j]), j))
    valid = int(np.isfinite(S[query]).sum())
    t = int(pos[query])
    fig = Figure(figsize=(9, 3), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(valid)
    y = S[query, :valid]
    ax.bar(x, y, width=1.0, color="#BBBBBB", label="valid entries")
    if picks:
        ax.bar(picks, S[query, picks], width=1.0, color=KIND_COLORS["csa"], label=f"top-{k} picks")
        ax.axhline(S[query, picks[-1]], color="black", linewidth=0.8, linestyle=":")
    ax.set_xlim(-0.5, max(valid, 1) - 0.5)
    ax.set_xlabel("compressed entry j")
    ax.set_ylabel("I[t, j]")
    ax.set_title(f"query t = {t}: {valid} complete entries, {len(picks)} picked")
    ax.legend(fontsize=8)
    spans = ", ".join(f"{ratio * j}-{ratio * j + ratio - 1}" for j in sorted(picks))
    html = (f"<p>query position <b>t = {t}</b>: {valid} valid entries ((j+1)&middot;{ratio} &le; t+1), "
            f"top-{k} picks (best first): {_html.escape(str(picks))}<br>"
            f"token blocks read through the picks: {_html.escape(spans) or '(none)'}</p>")
    return {"position": t, "valid": valid, "picks": picks, "html": html, "figure": fig}


# ----------------------------------------------------------------------------------------------
# 04: receptive fields
# ----------------------------------------------------------------------------------------------
def receptive_field(kind: str, t: int, window: int, ratio: int = 0, picks=None) -> dict:
    """The source tokens a query at position t reads in one layer type, as half-open intervals.

    Returns ``{"window": (lo, hi), "compressed": [(lo, hi), ...], "tokens": n}`` where
    ``tokens`` counts distinct source tokens (window and compressed entries together).  HCA: all
    complete blocks [0, floor((t+1)/m) m); CSA: the blocks of ``picks`` (entry j covers tokens
    (j-1)m .. (j+1)m - 1, the overlapping window), default all complete entries."""
    lo = max(0, t - window + 1)
    win = (lo, t + 1)
    comp: list[tuple[int, int]] = []
    if kind == "hca":
        n = (t + 1) // ratio
        if n:
            comp = [(0, n * ratio)]
    elif kind == "csa":
        n = (t + 1) // ratio
        ents = range(n) if picks is None else sorted({int(j) for j in picks if 0 <= int(j) < n})
        for j in ents:
            comp.append((max(0, (j - 1) * ratio), (j + 1) * ratio))
    elif kind != "window":
        raise ValueError(f"kind must be 'window', 'csa' or 'hca', got {kind!r}")
    covered = np.zeros(t + 1, dtype=bool)
    covered[win[0] : win[1]] = True
    for a, b in comp:
        covered[a:b] = True
    return {"window": win, "compressed": comp, "tokens": int(covered.sum())}


def plot_receptive_fields(t: int, window: int, csa_ratio: int = 4, hca_ratio: int = 128,
                          csa_picks=None, ax=None) -> Figure:
    """How far back each layer type reads for a query at position t: window-only (the last
    ``window`` tokens), CSA (window + the picked 8-token windows), HCA (window + every complete
    128-token block, each as one entry)."""
    fig, ax = fig_ax(ax, (10, 2.8))
    rows = [("window-only", receptive_field("window", t, window), KIND_COLORS["window"]),
            ("CSA", receptive_field("csa", t, window, csa_ratio, csa_picks), KIND_COLORS["csa"]),
            ("HCA", receptive_field("hca", t, window, hca_ratio), KIND_COLORS["hca"])]
    for y, (name, rf, color) in enumerate(rows[::-1]):
        for a, b in rf["compressed"]:
            ax.broken_barh([(a, b - a)], (y - 0.3, 0.6), facecolors=color, alpha=0.85)
        a, b = rf["window"]
        ax.broken_barh([(a, b - a)], (y - 0.3, 0.6), facecolors=KIND_COLORS["window"])
        ax.text(t + 1 + 0.01 * t, y, f"{rf['tokens']:,} tokens", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows[::-1]])
    ax.set_xlim(0, 1.15 * (t + 1))
    ax.set_xlabel("source token position")
    ax.set_title(f"What a query at t = {t:,} can read (blue: raw window tokens; colour: through compressed entries)")
    return fig


def plot_probe(results: dict, metric: str = "accuracy", chance: dict | None = None, ax=None) -> Figure:
    """Bars of linear-probe scores: ``results`` {probe name: {representation: score}}; one group
    of bars per probe, one bar per representation, each labelled with its value (a score of 0 or
    below, e.g. an R^2 under 0, is still drawn and labelled; a missing one says "n/a");
    ``chance`` {probe name: chance level}, dotted."""
    from matplotlib.lines import Line2D

    fig, ax = fig_ax(ax, (8.5, 3.8))
    probes = list(results)
    reps = []
    for p in probes:
        for r in results[p]:
            if r not in reps:
                reps.append(r)
    width = 0.8 / max(1, len(reps))
    colors = [KIND_COLORS["window"], KIND_COLORS["csa"], KIND_COLORS["hca"], "#8172B3", "#937860"]
    lo = 0.0
    for i, r in enumerate(reps):
        vals = [results[p].get(r, np.nan) for p in probes]
        xs = np.arange(len(probes)) + (i - (len(reps) - 1) / 2) * width
        ax.bar(xs, vals, width, color=colors[i % len(colors)], label=r)
        for x, v in zip(xs, vals):
            if np.isnan(v):
                ax.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=7, color="0.4")
            else:
                ax.text(x, max(v, 0) + 0.015, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
                lo = min(lo, v)
    handles, labels = ax.get_legend_handles_labels()
    if chance:
        for i, p in enumerate(probes):
            if p in chance:
                ax.hlines(chance[p], i - 0.45, i + 0.45, color="black", linestyle=":", linewidth=1)
        handles.append(Line2D([], [], color="black", ls=":", label="chance"))
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(range(len(probes)), probes, fontsize=8)
    ax.set_ylabel(metric)
    ax.set_ylim(min(0.0, lo - 0.08), 1.05)
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    ax.set_title("What a linear read-out recovers from each representation of a block")
    return fig


# ----------------------------------------------------------------------------------------------
# 05: mHC and MoE
# ----------------------------------------------------------------------------------------------
def sinkhorn_trace(logits, iters: int, eps: float) -> dict:
    """Run the Sinkhorn projection step by step (row softmax, then column / row normalisations,
    as ``v4lab.mhc.sinkhorn``) and record after every iteration the largest deviation of the row
    sums and of the column sums from 1.  Returns ``{"matrix", "row_err", "col_err"}``."""
    import torch

    m = torch.as_tensor(logits, dtype=torch.float64).softmax(dim=-1) + eps
    m = m / (m.sum(dim=-2, keepdim=True) + eps)
    row_err, col_err = [], []

    def record(x):
        row_err.append(float((x.sum(-1) - 1).abs().max()))
        col_err.append(float((x.sum(-2) - 1).abs().max()))

    record(m)
    for _ in range(iters - 1):
        m = m / (m.sum(dim=-1, keepdim=True) + eps)
        m = m / (m.sum(dim=-2, keepdim=True) + eps)
        record(m)
    return {"matrix": m, "row_err": row_err, "col_err": col_err}


def plot_sinkhorn_convergence(row_err, col_err, shipped_iters: int | None = 20, ax=None) -> Figure:
    """Largest |row sum - 1| and |column sum - 1| after each Sinkhorn iteration (log scale)."""
    fig, ax = fig_ax(ax, (6, 3.4))
    it = np.arange(1, len(row_err) + 1)
    ax.semilogy(it, np.maximum(row_err, 1e-17), "o-", ms=3, label="max |row sum - 1|")
    ax.semilogy(it, np.maximum(col_err, 1e-17), "s-", ms=3, label="max |column sum - 1|")
    if shipped_iters:
        ax.axvline(shipped_iters, color="grey", linestyle=":", label=f"hc_sinkhorn_iters = {shipped_iters}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("deviation from 1")
    ax.set_title("Sinkhorn projection to a doubly stochastic matrix")
    ax.legend(fontsize=8)
    return fig


def plot_comb_matrices(combs: dict, annotate: bool = True) -> Figure:
    """Heatmaps of mHC stream-mixing matrices comb[i, j] (stream i -> stream j), one panel per
    entry of ``combs`` {label: [n, n]}."""
    items = list(combs.items())
    cols = min(6, len(items))
    nrows = math.ceil(len(items) / cols)
    fig = Figure(figsize=(2.1 * cols + 1, 2.2 * nrows + 0.3), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False)
    im = None
    for k, ax in enumerate(axes.flat):
        if k >= len(items):
            ax.set_axis_off()
            continue
        label, M = items[k]
        M = _np(M)
        im = ax.imshow(M, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        if annotate:
            for i in range(M.shape[0]):
                for j in range(M.shape[1]):
                    ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if M[i, j] > 0.6 else "black")
        ax.set_title(str(label), fontsize=8)
        ax.set_xticks(range(M.shape[1]))
        ax.set_yticks(range(M.shape[0]))
        ax.tick_params(labelsize=6)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="comb[i, j]")
    return fig


def plot_expert_load(loads: dict, hash_layers=(), ax=None) -> Figure:
    """Tokens routed to each expert, one panel per layer: ``loads`` {layer: counts [E]}; hash-
    routed layers in grey.  The dashed line is a perfectly even load."""
    items = list(loads.items())
    cols = min(len(items), 3 if len(items) <= 6 else 4)
    nrows = math.ceil(len(items) / cols)
    fig = Figure(figsize=(2.6 * cols + 0.4, 2.2 * nrows + 0.3), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False, sharey=True)
    for k, ax in enumerate(axes.flat):
        if k >= len(items):
            ax.set_axis_off()
            continue
        layer, counts = items[k]
        c = _np(counts).astype(float)
        share = c / max(c.sum(), 1)
        is_hash = layer in set(hash_layers)
        ax.bar(range(len(c)), share, color="#8C8C8C" if is_hash else "#DD8452")
        ax.axhline(1 / len(c), color="black", linestyle="--", linewidth=0.8)
        ax.set_title(f"layer {layer}: {'hash' if is_hash else 'learned'}", fontsize=9)
        ax.set_xticks(range(len(c)))
        ax.tick_params(labelsize=7)
        ax.set_xlabel("expert", fontsize=8)
    axes[0, 0].set_ylabel("share of routed slots")
    return fig


# ----------------------------------------------------------------------------------------------
# 08: measured scaling
# ----------------------------------------------------------------------------------------------
def plot_scaling(rows, speed: str = "prefill_tok_s") -> Figure:
    """Two panels against context length (log-log): tokens per second (``speed``: the
    ``prefill_tok_s`` or ``decode_tok_s`` key) and cache bytes, one line per model.  ``rows``:
    dicts with ``model``, ``length``, ``cache_bytes`` and the speed key (the rows of
    ``python -m v4lab.bench decode``)."""
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax_s, ax_c = fig.subplots(1, 2)
    colors = {"flash-mini": KIND_COLORS["csa"], "dense": "black"}
    models = []
    for r in rows:
        if r["model"] not in models:
            models.append(r["model"])
    for name in models:
        rs = sorted((r for r in rows if r["model"] == name), key=lambda r: r["length"])
        L = [r["length"] for r in rs]
        color = colors.get(name)
        sp = [(l, r.get(speed)) for l, r in zip(L, rs) if r.get(speed)]
        if sp:
            ax_s.loglog(*zip(*sp), "o-", color=color, label=name)
        ax_c.loglog(L, [r["cache_bytes"] / 2**20 for r in rs], "o-", color=color, label=name)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    lengths = sorted({r["length"] for r in rows})
    for ax in (ax_s, ax_c):
        ax.set_xticks(lengths, [short_len(L) for L in lengths])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
    ax_s.set_ylabel("tokens / s" + (" (prefill)" if speed.startswith("prefill") else " (decode)"))
    ax_c.set_ylabel("cache MiB")
    for ax in (ax_s, ax_c):
        ax.set_xlabel("context length (tokens)")
        ax.legend(fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
    ax_s.set_title("Speed")
    ax_c.set_title("KV cache")
    return fig


# ----------------------------------------------------------------------------------------------
# 03: attention mass along the document
# ----------------------------------------------------------------------------------------------
def mass_by_position(records: dict, bins: int = 16) -> dict:
    """Per layer (``ForwardContext(record=True).records``): the query positions cut into ``bins``
    equal ranges, and the mean share of attention on window / compressed entries / sink in each.
    Returns {layer: {"kind", "centers" [bins], "window", "compressed", "sink" [bins]}}."""
    import torch

    out = {}
    for layer, rec in sorted(records.items()):
        mass = torch.cat(rec["mass"], 1)[0].float().numpy()  # [S, 3]
        pos = torch.cat(rec["pos"]).numpy()
        edges = np.linspace(pos.min(), pos.max() + 1, bins + 1)
        which = np.clip(np.searchsorted(edges, pos, side="right") - 1, 0, bins - 1)
        row = {"kind": rec["kind"], "centers": (edges[:-1] + edges[1:]) / 2}
        for i, part in enumerate(("window", "compressed", "sink")):
            row[part] = np.array([mass[which == b, i].mean() if (which == b).any() else np.nan
                                  for b in range(bins)])
        out[layer] = row
    return out


def plot_mass_by_position(records: dict, bins: int = 16, ax=None) -> Figure:
    """Share of attention on compressed entries against the query's position, one line per CSA /
    HCA layer: how much the layers read beyond the window as the context grows."""
    fig, ax = fig_ax(ax, (7, 3.4))
    styles, seen = ("-", "--", ":", "-."), {}
    for layer, row in mass_by_position(records, bins).items():
        if row["kind"] == "window":
            continue
        n = seen[row["kind"]] = seen.get(row["kind"], -1) + 1
        ax.plot(row["centers"], row["compressed"], styles[n % len(styles)], marker="o", ms=3,
                color=KIND_COLORS[row["kind"]], label=f"layer {layer} ({row['kind']})")
    ax.set_xlabel("query position t")
    ax.set_ylabel("share on compressed entries")
    ax.set_title("Attention beyond the window, along the document")
    ax.legend(fontsize=8)
    return fig
