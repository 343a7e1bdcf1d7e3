"""Figures and widgets of notebooks 00-05 and 08 (v4lab.plots.model, indexer_explorer)."""

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

matplotlib.use("Agg")

from v4lab import mhc  # noqa: E402
from v4lab.attention import ForwardContext  # noqa: E402
from v4lab.config import V4Config  # noqa: E402
from v4lab.indexer import Indexer, topk_lowest_index  # noqa: E402
from v4lab.model import V4Model  # noqa: E402
from v4lab.plots import model as mp  # noqa: E402
from v4lab.plots import widgets  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run():
    cfg = V4Config.preset("tiny")
    model = V4Model(cfg, seed=0).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 70), generator=torch.Generator().manual_seed(0))
    ctx = ForwardContext(record=True)
    cache = model.new_cache(1)
    with torch.no_grad():
        model(ids, cache=cache, ctx=ctx)
    return cfg, model, ctx, cache


# ----------------------------------------------------------------------------------------------
def test_schedule_cells_and_figure():
    assert mp.schedule_cells("SSCH|S") == [("S", False), ("S", False), ("C", False), ("H", False), ("S", True)]
    fig = mp.plot_schedule({"flash": V4Config.preset("flash"), "mini": "SSCHCH|S"})
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["flash", "mini"]
    assert len(ax.patches) == 44 + 7  # one cell per layer + MTP


def test_cache_by_layer(tiny_run):
    cfg, _, _, cache = tiny_run
    by_layer = cache.nbytes(by_layer=True)
    fig = mp.plot_cache_by_layer(by_layer, dense_total=70 * cfg.head_dim * 4)
    ax = fig.axes[0]
    assert len(ax.get_xticklabels()) == cfg.num_hidden_layers
    tops = {}
    for p in ax.patches:  # stacked bars: the highest top per layer is that layer's total
        x = round(p.get_x() + p.get_width() / 2)
        tops[x] = max(tops.get(x, 0), p.get_y() + p.get_height())
    want = [r["total"] / 2**20 for r in by_layer["layers"]]
    assert np.allclose([tops[i] for i in range(len(want))], want)


# ----------------------------------------------------------------------------------------------
def test_compressor_membership():
    M = mp.compressor_membership(26, 4, overlap=True)
    assert M.shape == (6, 26)
    assert (M[0, :4] == 2).all() and (M[0, 4:] == 0).all()  # entry 0: no previous block
    assert (M[3, 8:12] == 1).all() and (M[3, 12:16] == 2).all()
    assert ((M > 0).sum(1)[1:] == 8).all()  # 8 tokens per entry after the first
    H = mp.compressor_membership(26, 8, overlap=False)
    assert H.shape == (3, 26) and set(np.unique(H)) == {0, 2} and ((H > 0).sum(0)[:24] == 1).all()
    assert mp.compressor_membership(3, 4, True).shape == (0, 3)
    assert len(mp.plot_compressor_windows().axes) == 2


def test_gate_weights_figure():
    W = torch.softmax(torch.randn(3, 8, 64), dim=1)
    fig = mp.plot_gate_weights(W, [["a"] * 8] * 3, titles=["x", "y", "z"], channels=16)
    assert len(fig.axes) == 4  # 3 panels + colorbar
    assert fig.axes[0].images[0].get_array().shape == (8, 16)
    tall = mp.plot_gate_weights(torch.softmax(torch.randn(128, 32), 0))
    assert tall.get_size_inches()[1] <= 6.0


# ----------------------------------------------------------------------------------------------
def _scores(S=40, N=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, w = torch.randn(1, S, 3, 8, generator=g), torch.randn(1, S, 3, generator=g)
    k = torch.randn(1, N, 8, generator=g)
    return Indexer.scores(q, w, k, torch.arange(S))[0], torch.arange(S)


def test_standardize_rows():
    s, _ = _scores()
    z = mp.standardize_rows(s)
    assert np.isnan(z[0]).all()  # no valid entry yet at t = 0
    row = z[-1]
    assert abs(np.nanmean(row)) < 1e-6 and abs(np.nanstd(row) - 1) < 1e-5
    assert np.array_equal(np.isnan(z), ~torch.isfinite(s).numpy())


def test_indexer_scores_figure_and_view():
    s, pos = _scores()
    picks = topk_lowest_index(s, 3)
    fig = mp.plot_indexer_scores(s, pos, picks, window=8)
    assert len(fig.axes) == 2
    view = mp.indexer_view(s, pos, query=35, k=3)
    assert view["position"] == 35 and view["valid"] == 9
    assert sorted(view["picks"]) == sorted(picks[35].tolist())
    vals = [float(s[35, j]) for j in view["picks"]]
    assert vals == sorted(vals, reverse=True)  # best first
    assert "t = 35" in view["html"] and isinstance(view["figure"], Figure)
    early = mp.indexer_view(s, pos, query=5, k=3)  # one valid entry only
    assert early["picks"] == [0] and early["valid"] == 1


def test_indexer_explorer_updates():
    pytest.importorskip("ipywidgets")
    s, pos = _scores()
    box = widgets.indexer_explorer(s, pos, k=3)
    text, image = box.children[1], box.children[2]
    html0, png0 = text.value, bytes(image.value)
    assert png0[:8] == b"\x89PNG\r\n\x1a\n" and "t = 39" in html0
    box.controls["query"].value = 20
    assert "t = 20" in text.value and bytes(image.value) != png0
    box.controls["k"].value = 1
    assert text.value.count(",") < html0.count(",")
    with pytest.raises(ValueError):
        widgets.indexer_explorer(s, pos, query=40)


# ----------------------------------------------------------------------------------------------
def test_receptive_field():
    rf = mp.receptive_field("window", 500, 128)
    assert rf == {"window": (373, 501), "compressed": [], "tokens": 128}
    hca = mp.receptive_field("hca", 500, 128, 128)
    assert hca["compressed"] == [(0, 384)] and hca["tokens"] == 501
    for t in range(0, 1000, 7):  # window + complete blocks always cover every earlier token
        assert mp.receptive_field("hca", t, 128, 128)["tokens"] == t + 1
    csa = mp.receptive_field("csa", 500, 128, 4, picks=[0, 10, 10, 124, 200])
    assert csa["compressed"] == [(0, 4), (36, 44), (492, 500)]  # 200 is not complete yet, dupes dropped
    assert csa["tokens"] == 128 + 4 + 8  # (492, 500) lies inside the window
    assert len(mp.receptive_field("csa", 15, 128, 4)["compressed"]) == 4
    with pytest.raises(ValueError):
        mp.receptive_field("dense", 5, 4)
    assert len(mp.plot_receptive_fields(4000, 128, csa_picks=[1, 50, 900]).axes) == 1


def test_probe_figure():
    fig = mp.plot_probe({"a": {"x": 0.5, "y": 0.2}, "b": {"x": 0.9}}, chance={"a": 0.1})
    ax = fig.axes[0]
    assert len(ax.patches) == 4  # 2 representations x 2 probes (a missing one is drawn as NaN)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]


# ----------------------------------------------------------------------------------------------
def test_sinkhorn_trace_matches_the_package():
    logits = 2 * torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tr = mp.sinkhorn_trace(logits, 20, 1e-6)
    assert torch.allclose(tr["matrix"], mhc.sinkhorn(logits, 20, 1e-6))
    assert len(tr["row_err"]) == len(tr["col_err"]) == 20
    assert tr["col_err"][-1] < 1e-5 and tr["row_err"][-1] < tr["row_err"][0]
    fig = mp.plot_sinkhorn_convergence(tr["row_err"], tr["col_err"])
    assert len(fig.axes[0].lines) == 3


def test_comb_and_expert_figures():
    combs = {f"l{i}": mhc.sinkhorn(torch.randn(4, 4), 20, 1e-6) for i in range(3)}
    fig = mp.plot_comb_matrices(combs)
    assert sum(1 for ax in fig.axes if ax.images) == 3
    loads = {i: torch.tensor([5, 3, 0, 8]) for i in range(6)}
    fig = mp.plot_expert_load(loads, hash_layers=(0, 1))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:3] == ["layer 0: hash", "layer 1: hash", "layer 2: learned"]
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert np.allclose(heights, [5 / 16, 3 / 16, 0, 8 / 16])


def test_mass_by_position(tiny_run):
    cfg, _, ctx, _ = tiny_run
    out = mp.mass_by_position(ctx.records, bins=5)
    assert list(out) == list(range(cfg.num_hidden_layers))
    for row in out.values():
        total = row["window"] + row["compressed"] + row["sink"]
        assert np.allclose(total, 1, atol=1e-5) and len(row["centers"]) == 5
    assert np.allclose(out[0]["compressed"], 0, atol=1e-6)  # window-only layer
    fig = mp.plot_mass_by_position(ctx.records, bins=5)
    assert len(fig.axes[0].lines) == 4  # the CSA and HCA layers of the tiny preset


def test_plot_scaling():
    rows = [{"model": m, "length": L, "prefill_tok_s": 1000 / (1 + (m == "dense") * L / 4096),
             "decode_tok_s": 50.0, "cache_bytes": L * (100 if m == "dense" else 15)}
            for m in ("flash-mini", "dense") for L in (2048, 4096, 8192)]
    fig = mp.plot_scaling(rows)
    assert len(fig.axes) == 2
    assert all(len(ax.lines) == 2 for ax in fig.axes)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["2K", "4K", "8K"]
    assert len(mp.plot_scaling(rows, speed="decode_tok_s").axes) == 2
    from v4lab.plots._common import short_len

    assert short_len(2**20) == "1M" and short_len(1000) == "1,000"
