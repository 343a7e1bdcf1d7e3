"""Figures and widgets of the notebooks: v4lab.plots.widgets, v4lab.plots.quant and the measured
-cost figures of v4lab.plots.costs (plot_measured_cache, plot_kernel_timings)."""
import math

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure

matplotlib.use("Agg")

from v4lab import chat, costs, quant  # noqa: E402
from v4lab.config import V4Config  # noqa: E402
from v4lab.plots import costs as cost_plots  # noqa: E402
from v4lab.plots import quant as quant_plots  # noqa: E402
from v4lab.plots import widgets  # noqa: E402
from v4lab.tokenizer import ByteTokenizer  # noqa: E402


# ----------------------------------------------------------------------------------------------
# KV-cost explorer
# ----------------------------------------------------------------------------------------------
def test_kv_cost_view_matches_the_cost_model():
    view = widgets.kv_cost_view(2**20, "deployed", "fp4", "flash")
    assert set(view) == {"rows", "html", "figure"}
    assert isinstance(view["figure"], Figure) and len(view["figure"].axes) == 2
    rows = {r["model"]: r for r in view["rows"]}
    assert list(rows) == ["DeepSeek-V3.2", "DeepSeek-V4-Pro", "DeepSeek-V4-Flash", "dense GQA-8"]
    flash = rows["DeepSeek-V4-Flash"]
    assert flash["kv_bytes"] == costs.kv_cache_bytes("flash", 2**20, "deployed", "fp4").total
    assert round(100 * flash["kv_vs_v32"], 1) == 7.3 and round(100 * flash["flops_vs_v32"], 1) == 10.0
    html = view["html"]
    assert html.count("<tr>") == 5 and "L = 1,048,576 tokens (1M)" in html
    assert "7.3% (13.62x smaller)" in html


@pytest.mark.parametrize("storage", ["deployed", "bf16", "fp32"])
def test_kv_cost_view_storage_changes_the_numbers(storage):
    rows = widgets.kv_cost_rows(2**16, storage)
    want = costs.kv_cache_bytes("pro", 2**16, storage).total
    assert {r["model"]: r["kv_bytes"] for r in rows}["DeepSeek-V4-Pro"] == want


def test_kv_cost_html_escapes_and_handles_empty():
    assert widgets.kv_cost_html([]) == "<p>(no rows)</p>"
    rows = widgets.kv_cost_rows(1024, "deployed")
    rows[0] = dict(rows[0], model="<b>x</b>")
    assert "&lt;b&gt;x&lt;/b&gt;" in widgets.kv_cost_html(rows)


def test_kv_cost_explorer_updates_on_every_control():
    pytest.importorskip("ipywidgets")
    box = widgets.kv_cost_explorer(context_len=2**20)
    table, image = box.children[3], box.children[4]
    html0, png0 = table.value, bytes(image.value)
    assert png0[:8] == b"\x89PNG\r\n\x1a\n" and "1,048,576" in html0

    box.controls["context"].value = 2**12
    assert "4,096" in table.value and table.value != html0 and bytes(image.value) != png0

    html1 = table.value
    box.controls["storage"].value = "bf16"
    assert table.value != html1 and box.controls["indexer"].disabled
    box.controls["storage"].value = "deployed"
    assert not box.controls["indexer"].disabled
    box.controls["indexer"].value = "fp8"
    assert "indexer fp8" in table.value

    png2 = bytes(image.value)
    box.controls["model"].value = "pro"
    assert bytes(image.value) != png2


def test_kv_cost_explorer_rejects_unknown_length():
    pytest.importorskip("ipywidgets")
    with pytest.raises(ValueError, match="context_len"):
        widgets.kv_cost_explorer(context_len=1000)


def test_plot_kv_bars_labels():
    fig = widgets.plot_kv_bars(widgets.kv_cost_rows(2**20))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["V3.2", "V4-Pro", "V4-Flash", "dense GQA-8"]
    assert any("10.5%" in t.get_text() for t in ax.texts)


# ----------------------------------------------------------------------------------------------
# chat prompts
# ----------------------------------------------------------------------------------------------
def _conversation():
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "reasoning_content": "think A", "content": "ok",
         "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]},
        {"role": "tool", "tool_call_id": "1", "content": "R"},
        {"role": "user", "content": "more"},
    ]
    return chat.render(msgs, tools=[tool])


def test_chat_segments_regions_and_round_trip():
    prompt = _conversation()
    segs = widgets.chat_segments(prompt)
    assert "".join(s["text"] for s in segs) == prompt
    tok = ByteTokenizer()
    specials = [i for i in tok.encode(prompt) if i < tok.byte_offset]
    assert [s["id"] for s in segs if s["id"] is not None] == specials
    by_region = {}
    for s in segs:
        by_region.setdefault(s["region"], "")
        by_region[s["region"]] += s["text"]
    assert "think A" in by_region["reasoning"] and "think A" not in by_region["plain"]
    assert ' name="x" string="false">1' in by_region["dsml"]
    results = [s["text"] for s in segs if s["region"] == "tool_result"]
    assert results == ["<tool_result>R</tool_result>"]
    # the tools section is plain text, though it spells <think>...</think>
    assert "## Tools" in by_region["plain"] and "complete reasoning" in by_region["plain"]
    assert "complete reasoning" not in by_region["reasoning"]
    assert segs[-1]["text"] == chat.THINK_OPEN and segs[-1]["region"] == "reasoning"


def test_chat_html_escapes_and_counts():
    prompt = _conversation() + "<script>"
    out = widgets.chat_html(prompt, max_chars=50)
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert f"{len(ByteTokenizer().encode(prompt)):,} ids" in out
    assert out.count("class='v4lab-tok'") == sum(1 for s in widgets.chat_segments(prompt) if s["id"] is not None)
    assert "characters ...]" in out  # the tools section was shortened


# ----------------------------------------------------------------------------------------------
# number formats
# ----------------------------------------------------------------------------------------------
def test_value_tables():
    fp8 = quant_plots.e4m3_values()
    vals = fp8["value"]
    assert len(vals) == 256 and math.isnan(vals[0x7F]) and math.isnan(vals[0xFF])
    assert vals[0x7E] == 448 and vals[0x01] == 2.0**-9 and vals[0x08] == 2.0**-6 and vals[0x38] == 1
    assert all(vals[b | 0x80] == -vals[b] for b in range(0x7F))
    fp4 = quant_plots.e2m1_values()
    assert fp4["value"][:8] == list(quant.E2M1_VALUES) and fp4["value"][8:] == [-v for v in quant.E2M1_VALUES]


def test_plot_value_grids():
    fig = quant_plots.plot_value_grids()
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    top, bottom = fig.axes
    assert len(top.collections[0].get_offsets()) == 16
    n_points = sum(len(c.get_offsets()) for c in bottom.collections)
    assert n_points == 0x7E  # bytes 0x01..0x7E


@pytest.mark.parametrize("fmt,block", [("fp4", 32), ("fp8", 64), ("fp4", 16)])
def test_plot_block_roundtrip(fmt, block):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, generator=g) * torch.tensor([0.05] * 32 + [1.0] * 32 + [8.0] * 32)
    fig = quant_plots.plot_block_roundtrip(x, fmt, block)
    ax = fig.axes[0]
    assert sum("scale 2^" in t.get_text() for t in ax.texts) == math.ceil(96 / block)
    q = (quant.fp4_roundtrip if fmt == "fp4" else quant.fp8_roundtrip)(x[None], block=block)[0]
    assert f"{float((q - x).abs().max()):.3g}" in ax.get_title()


def test_plot_block_roundtrip_rejects_format():
    with pytest.raises(ValueError, match="fmt"):
        quant_plots.plot_block_roundtrip([1.0, 2.0], "int8")


# ----------------------------------------------------------------------------------------------
# measured costs
# ----------------------------------------------------------------------------------------------
def test_plot_measured_cache_draws_model_and_points():
    cfg = V4Config.preset("tiny")
    rows = [dict(name="tiny", cfg=cfg, storage=s, indexer_storage="fp8", context_len=L,
                 bytes=costs.kv_cache_bytes(cfg, L, s, "fp8").total)
            for s in ("fp32", "deployed") for L in (1, 9, 64)]
    fig = cost_plots.plot_measured_cache(rows)
    ax = fig.axes[0]
    assert len(ax.lines) == 4  # a model line and a marker line per storage
    model_line, points = ax.lines[0], ax.lines[1]
    assert list(points.get_xdata()) == [1, 9, 64]
    assert model_line.get_ydata()[0] == costs.kv_cache_bytes(cfg, 0, "fp32", "fp8").total / 1024


def _report(device, backend):
    res = []
    for L in (2048, 8192):
        res += [dict(mode="decode", context=L, kernel="csa_layer", backend=backend, ms=1.0 + L / 8192),
                dict(mode="decode", context=L, kernel="indexer_scores", backend=backend, ms=0.1),
                dict(mode="decode", context=L, kernel="dense_sdpa", backend="dense", ms=L / 1000),
                dict(mode="decode", context=L, kernel="hca_attention", backend=backend, error="x")]
    return dict(device=device, device_name="NVIDIA H200" if device == "cuda" else "cpu",
                dtype="torch.float32", results=res)


def test_plot_kernel_timings_labels_the_machine():
    fig = cost_plots.plot_kernel_timings(_report("cpu", "torch"))
    ax = fig.axes[0]
    assert "PyTorch path on CPU" in ax.get_title()
    labels = [line.get_label() for line in ax.lines]
    assert labels[-1] == "dense SDPA over all L keys" and any(s.startswith("csa_layer") for s in labels)
    assert not any("hca_attention" in s for s in labels)  # rows with errors are skipped
    gpu = cost_plots.plot_kernel_timings(_report("cuda", "triton")).axes[0]
    assert "Triton kernels on NVIDIA H200" in gpu.get_title()


# ----------------------------------------------------------------------------------------------
# long-context curves beside the report's MRCR-8 figures
# ----------------------------------------------------------------------------------------------
def test_plot_long_context_draws_each_curve_its_trials_and_the_report_points():
    from v4lab.plots.eval import plot_long_context

    curves = {"needle (validation)": {2048: (1.0, 20), "65536": (0.9, 20), 262144: (0.6, 5)},
              "MRCR-8 (validation)": {2048: 0.25, 65536: 0.125}}
    fig = plot_long_context(curves, train_len=8192)
    ax = fig.axes[0]
    lines = {l.get_label(): l for l in ax.get_lines()}
    needle = lines["needle (validation)"]
    assert list(needle.get_xdata()) == [2048, 65536, 262144] and list(needle.get_ydata()) == [1.0, 0.9, 0.6]
    assert list(lines["MRCR-8 (validation)"].get_ydata()) == [0.25, 0.125]
    assert sorted(t.get_text() for t in ax.texts) == ["n=20", "n=20", "n=5"]   # trials where given
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("report, real model" in s and "0.82" in s and "256K" in s for s in legend)
    star = [l for l in ax.get_lines() if "0.59" in l.get_label()][0]
    assert list(star.get_xdata()) == [1048576] and list(star.get_ydata()) == [0.59]
    assert ax.get_xscale() == "log" and "1M" in [t.get_text() for t in ax.get_xticklabels()]
    # without the report, only our curves (and the training-length marker)
    ax2 = plot_long_context(curves, report=None).axes[0]
    assert not any("report" in l.get_label() for l in ax2.get_lines())
