"""Interactive controls and HTML views for the notebooks, with the drawing kept in plain functions.

:func:`kv_cost_view` computes everything one setting of the KV-cost explorer shows (an HTML
table and a figure) and is what the tests call; :func:`kv_cost_explorer` wraps it in widgets:
a context-length slider (1K to 1M tokens), the storage precision of the cached entries, the
indexer-key format and the V4 model whose per-layer cache is drawn.  Moving a control calls
:func:`kv_cost_view` again and replaces the table and the picture.

The figure is shown as a PNG inside an ``ipywidgets.Image`` so that the explorer renders the
same way in JupyterLab, in VS Code and in a saved notebook with widget state.

:func:`chat_html` shows a rendered chat prompt as the model reads it: every special token as one
chip with its id, reasoning, DSML tool-call blocks and tool results on coloured backgrounds.
"""
from __future__ import annotations

import html
import io
import re

from matplotlib.figure import Figure

from .. import chat, costs
from ..tokenizer import ByteTokenizer
from ._common import fig_ax, short_len
from .costs import plot_layer_breakdown
from .model import indexer_view

EXPLORER_MODELS = ("v3.2", "pro", "flash", "dense")
"""Models of the explorer's table, V3.2 first (the reference of the ratios)."""

CONTEXT_CHOICES = tuple(2**k for k in range(10, 21))
"""Context lengths of the slider: 1K, 2K, ..., 1M tokens."""

STORAGE_CHOICES = (
    ("deployed (FP8 nope + BF16 RoPE)", "deployed"),
    ("BF16 everywhere", "bf16"),
    ("FP32 everywhere", "fp32"),
)
"""(label, ``storage`` of :func:`v4lab.costs.kv_cache_bytes`) pairs of the storage menu."""

_BAR_COLORS = {"v3.2": "tab:gray", "pro": "tab:blue", "flash": "tab:orange", "dense": "black"}


def kv_cost_rows(context_len: int, storage: str = "deployed", indexer_storage: str = "fp4",
                 models=EXPLORER_MODELS) -> list[dict]:
    """One dict per model at ``context_len``: KV bytes and decode FLOPs (fp8-equivalent), and
    both as a fraction of V3.2 (keys as in :func:`v4lab.costs.compare`)."""
    return costs.compare([context_len], storage=storage, weighting="fp8-equivalent",
                         indexer_storage=indexer_storage, models=models)


def kv_cost_html(rows: list[dict]) -> str:
    """An HTML table of :func:`kv_cost_rows` (model, KV GB, KV vs V3.2, GFLOP/token, FLOPs vs
    V3.2)."""
    if not rows:
        return "<p>(no rows)</p>"
    L = rows[0]["context_len"]
    head = ("<tr><th>model</th><th>KV cache</th><th>KV vs V3.2</th>"
            "<th>GFLOP / token</th><th>FLOPs vs V3.2</th></tr>")
    body = []
    for r in rows:
        body.append(
            "<tr>"
            f"<td>{html.escape(r['model'])}</td>"
            f"<td>{html.escape(costs.format_bytes(r['kv_bytes']))}</td>"
            f"<td>{100 * r['kv_vs_v32']:.1f}% ({r['kv_x_smaller']:.2f}x smaller)</td>"
            f"<td>{r['decode_gflops']:.1f}</td>"
            f"<td>{100 * r['flops_vs_v32']:.1f}% ({r['flops_x_fewer']:.2f}x fewer)</td>"
            "</tr>"
        )
    caption = (f"L = {L:,} tokens ({short_len(L)}); KV storage: {html.escape(rows[0]['storage'])}; "
               f"FLOPs: {html.escape(rows[0]['weighting'])}")
    return (f"<table class='v4lab-kv-table'><caption>{caption}</caption>{head}"
            + "".join(body) + "</table>")


def plot_kv_bars(rows: list[dict], ax=None) -> Figure:
    """Bars of the KV cache (GB, log scale) of each model of :func:`kv_cost_rows`, each labelled
    with its size relative to V3.2."""
    fig, ax = fig_ax(ax, (5, 3.6))
    key_of = {costs.model_name(costs.preset(k)): k for k in _BAR_COLORS}
    names = [r["model"].replace("DeepSeek-", "") for r in rows]
    vals = [r["kv_gb"] for r in rows]
    colors = [_BAR_COLORS.get(key_of.get(r["model"]), "tab:green") for r in rows]
    bars = ax.bar(range(len(rows)), vals, color=colors)
    for bar, r in zip(bars, rows):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() * 1.15,
                f"{costs.format_bytes(r['kv_bytes']).split(' (')[0]}\n{100 * r['kv_vs_v32']:.1f}%",
                ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), names, fontsize=8)
    ax.set_yscale("log")
    lo, hi = min(vals), max(vals)
    ax.set_ylim(lo / 3, hi * 20)
    ax.set_ylabel("KV cache per sequence (GB)")
    ax.set_title(f"KV cache at {short_len(rows[0]['context_len'])} tokens (% of V3.2)", fontsize=9)
    ax.grid(True, axis="y", which="major", alpha=0.3)
    return ax.figure


def kv_cost_view(context_len: int = 2**20, storage: str = "deployed", indexer_storage: str = "fp4",
                 breakdown: str = "flash") -> dict:
    """Everything one setting of the explorer shows.

    Returns ``{"rows": kv_cost_rows(...), "html": kv_cost_html(rows), "figure": Figure}``; the
    figure has the KV bars of every model (left) and the per-layer cache of ``breakdown``
    ("flash" or "pro") at ``context_len`` (right).
    """
    rows = kv_cost_rows(context_len, storage, indexer_storage)
    fig = Figure(figsize=(12, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 2.2])
    plot_kv_bars(rows, ax=left)
    plot_layer_breakdown(costs.preset(breakdown), context_len, storage, indexer_storage, ax=right)
    return {"rows": rows, "html": kv_cost_html(rows), "figure": fig}


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """PNG bytes of a figure (for an ``ipywidgets.Image``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def kv_cost_explorer(context_len: int = 2**20, storage: str = "deployed", indexer_storage: str = "fp4",
                     breakdown: str = "flash"):
    """A widget box: context slider, storage / indexer-key / model menus, the table and the
    figure of :func:`kv_cost_view`, redrawn whenever a control moves.

    The box has ``update()`` (redraw from the controls' current values) and ``controls`` (a
    dict of the control widgets: "context", "storage", "indexer", "model") attributes.
    """
    import ipywidgets as W

    if context_len not in CONTEXT_CHOICES:
        raise ValueError(f"context_len must be one of {list(CONTEXT_CHOICES)}, got {context_len!r}")
    context = W.SelectionSlider(
        options=[(short_len(L), L) for L in CONTEXT_CHOICES], value=context_len,
        description="context", continuous_update=False, layout=W.Layout(width="420px"),
    )
    store = W.Dropdown(options=list(STORAGE_CHOICES), value=storage, description="KV storage",
                       style={"description_width": "initial"})
    index = W.ToggleButtons(options=[("FP4 keys", "fp4"), ("FP8 keys", "fp8")], value=indexer_storage,
                            description="indexer", style={"button_width": "80px"})
    model = W.ToggleButtons(options=[("V4-Flash", "flash"), ("V4-Pro", "pro")], value=breakdown,
                            description="per layer", style={"button_width": "80px"})
    table = W.HTML()
    image = W.Image(format="png")
    note = W.HTML()

    def update(*_):
        view = kv_cost_view(context.value, store.value, index.value, model.value)
        table.value = view["html"]
        image.value = figure_png(view["figure"])
        index.disabled = store.value != "deployed"
        note.value = ("<small>Indexer keys are stored like the other entries when the storage is "
                      "not 'deployed'; the FP4/FP8 choice applies to the deployed formats only."
                      "</small>" if index.disabled else "")

    for w in (context, store, index, model):
        w.observe(update, names="value")
    update()
    box = W.VBox([W.HBox([context, store]), W.HBox([index, model]), note, table, image])
    box.add_class("v4lab-kv-explorer")
    box.update = update
    box.controls = {"context": context, "storage": store, "indexer": index, "model": model}
    return box


# ----------------------------------------------------------------------------------------------
# chat prompts
# ----------------------------------------------------------------------------------------------
CHAT_COLORS = {"reasoning": "#fff3c4", "dsml": "#dceeff", "tool_result": "#ddf5dd", "plain": "transparent"}
"""Background of each region of :func:`chat_html`."""


def chat_segments(text: str, tokenizer=None) -> list[dict]:
    """``text`` split as ``tokenizer`` (default: :class:`v4lab.tokenizer.ByteTokenizer`) reads it:
    a list of ``{"text", "id" (special tokens only, else None), "region"}`` where region
    is "reasoning" (from the ``<think>`` after ``<｜Assistant｜>`` up to ``</think>``), "dsml"
    (inside a tool-call block), "tool_result" (inside ``<tool_result>...</tool_result>``) or
    "plain"."""
    tok = tokenizer or ByteTokenizer()
    special = {i: s for s, i in tok.special_tokens.items()}
    ids = tok.encode(text)
    segs: list[dict] = []
    region = "plain"
    run: list[int] = []

    results = re.compile(f"({re.escape(chat.TOOL_RESULT_OPEN)}.*?{re.escape(chat.TOOL_RESULT_CLOSE)})", re.DOTALL)

    def flush_run():
        if not run:
            return
        piece = tok.decode(run)
        # tool results are plain text (bytes) in the format: a complete <tool_result>...</tool_result>
        # inside one text run is a result (a lone "<tool_result>", say in the tools section, is not)
        for part in results.split(piece):
            if part:
                is_result = part.startswith(chat.TOOL_RESULT_OPEN) and part.endswith(chat.TOOL_RESULT_CLOSE)
                segs.append({"text": part, "id": None, "region": "tool_result" if is_result else region})
        run.clear()

    for i in ids:
        if i not in special:
            run.append(i)
            continue
        flush_run()
        s = special[i]
        if s == chat.THINK_OPEN and segs and segs[-1]["text"] == chat.ASSISTANT:
            # reasoning opens right after the assistant marker (the tools section also
            # spells <think>...</think> in its text)
            segs.append({"text": s, "id": i, "region": "reasoning"})
            region = "reasoning"
        elif s == chat.THINK_CLOSE:
            segs.append({"text": s, "id": i, "region": "reasoning" if region == "reasoning" else "plain"})
            region = "plain"
        elif s == chat.TOOL_CALLS_OPEN:
            region = "dsml"
            segs.append({"text": s, "id": i, "region": region})
        elif s == chat.TOOL_CALLS_CLOSE:
            segs.append({"text": s, "id": i, "region": "dsml"})
            region = "plain"
        else:
            segs.append({"text": s, "id": i, "region": region})
    flush_run()
    return segs


def chat_html(text: str, tokenizer=None, max_chars: int | None = None) -> str:
    """HTML of a chat prompt (see :func:`chat_segments`): special tokens as bordered chips with
    their id, coloured regions for reasoning, DSML and tool results, and a legend with the id
    count.  ``max_chars`` shortens long plain-text runs (the tools section) in the middle."""
    tok = tokenizer or ByteTokenizer()
    segs = chat_segments(text, tok)
    out = []
    for seg in segs:
        bg = CHAT_COLORS[seg["region"]]
        if seg["id"] is not None:
            out.append(
                f"<span class='v4lab-tok' title='id {seg['id']}' style='border:1px solid #888;"
                f"border-radius:3px;padding:0 2px;margin:0 1px;background:{bg};font-weight:bold'>"
                f"{html.escape(seg['text'])}<sub style='color:#a33'>{seg['id']}</sub></span>")
        else:
            t = seg["text"]
            if max_chars and len(t) > max_chars:
                half = max_chars // 2
                t = f"{t[:half]} [... {len(t) - max_chars:,} characters ...] {t[-half:]}"
            out.append(f"<span style='background:{bg}'>{html.escape(t)}</span>")
    n_ids = len(tok.encode(text))
    n_special = sum(1 for s in segs if s["id"] is not None)
    legend = " ".join(
        f"<span style='background:{CHAT_COLORS[k]};padding:0 4px;border:1px solid #ccc'>{k.replace('_', ' ')}</span>"
        for k in ("reasoning", "dsml", "tool_result"))
    return (f"<div class='v4lab-chat'><div style='font-size:90%;margin-bottom:4px'>{n_ids:,} ids, "
            f"{n_special} of them special tokens (chips, id below). Regions: {legend}</div>"
            f"<div style='font-family:monospace;white-space:pre-wrap;line-height:1.6;font-size:85%'>"
            + "".join(out) + "</div></div>")


# ----------------------------------------------------------------------------------------------
# Lightning Indexer explorer
# ----------------------------------------------------------------------------------------------
def indexer_explorer(scores, positions, k: int = 16, query: int | None = None, ratio: int = 4,
                     max_k: int = 64):
    """A widget box: a slider for the query row and one for k over precomputed indexer scores
    [queries, entries] (``positions``: each row's token position); shows the picks
    (:func:`v4lab.plots.model.indexer_view`) and redraws whenever a slider moves.

    The box has ``update()`` and ``controls`` ({"query", "k"}) attributes, like
    :func:`kv_cost_explorer`."""
    import ipywidgets as W

    n = len(positions)
    query = n - 1 if query is None else query
    if not 0 <= query < n:
        raise ValueError(f"query must be in [0, {n}), got {query}")
    q_slider = W.IntSlider(value=query, min=0, max=n - 1, description="query row",
                           continuous_update=False, layout=W.Layout(width="420px"))
    k_slider = W.IntSlider(value=k, min=1, max=max(max_k, k), description="k",
                           continuous_update=False)
    text = W.HTML()
    image = W.Image(format="png")

    def update(*_):
        view = indexer_view(scores, positions, q_slider.value, k_slider.value, ratio)
        text.value = view["html"]
        image.value = figure_png(view["figure"])

    for w in (q_slider, k_slider):
        w.observe(update, names="value")
    update()
    box = W.VBox([W.HBox([q_slider, k_slider]), text, image])
    box.add_class("v4lab-indexer-explorer")
    box.update = update
    box.controls = {"query": q_slider, "k": k_slider}
    return box
