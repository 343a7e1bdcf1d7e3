"""What the figures say, not only that they draw: legends, titles, marked needle hits, the sink on
its own scale, every probe value written on its bar, picks that leave the scores visible, one
panel per group of kernels, numbers on the needle heatmap."""
import random

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from v4lab import V4Config, V4Model  # noqa: E402
from v4lab import eval as v4eval  # noqa: E402
from v4lab.attention import ForwardContext  # noqa: E402
from v4lab.data import make_needle_task  # noqa: E402
from v4lab.indexer import topk_lowest_index  # noqa: E402
from v4lab.plots import attention as ap  # noqa: E402
from v4lab.plots import costs as cp  # noqa: E402
from v4lab.plots import eval as ep  # noqa: E402
from v4lab.plots import model as mp  # noqa: E402


def _legend(obj):
    leg = obj.get_legend() if hasattr(obj, "get_legend") else None
    legs = [leg] if leg is not None else list(getattr(obj, "legends", []))
    return [t.get_text() for lg in legs for t in lg.get_texts()]


def test_visibility_mask_is_the_rule_of_each_layer_type():
    w, m = 4, 4
    M = ap.visibility_mask("window", 12, w)
    assert (M[9] == 1).sum() == w and M[9, 6:10].tolist() == [1, 1, 1, 1] and M[9, :6].sum() == 0
    H = ap.visibility_mask("hca", 12, w, m)
    # t = 9: blocks 0 (tokens 0-3) and 1 (4-7) are complete; the window covers 6-9
    assert H[9, :6].tolist() == [2] * 6 and H[9, 6:10].tolist() == [1] * 4 and H[9, 10:].sum() == 0
    C = ap.visibility_mask("csa", 12, w, m, selected=[[]] * 9 + [[1], [], []])
    # CSA entry 1 pools block 1 and block 0 (8 tokens): 0..5 behind the entry, then the window
    assert C[9, :6].tolist() == [2] * 6 and C[8, :5].sum() == 0


def test_layer_masks_have_a_legend_and_say_what_each_panel_shows():
    fig = ap.plot_layer_masks(length=32, window=8, csa_ratio=4, hca_ratio=8, topk=2)
    titles = [a.get_title() for a in fig.axes]
    assert titles == ["window-only (SWA)", "CSA (m=4, top-2 entries)", "HCA (m=8, every complete entry)"]
    legend = _legend(fig)
    assert legend == ["raw token in the 8-token window", "token reached through a compressed entry", "not seen by the query"]
    assert "query" in fig.get_suptitle()


@pytest.fixture(scope="module")
def answered():
    cfg = V4Config.preset("tiny", vocab_size=320, max_position_embeddings=4096, index_topk=6)
    model = V4Model(cfg, seed=3).eval()
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind. " * 60
    task = make_needle_task(text, 500, random.Random(2), depth=0.5, position_offset=1)
    got, want, recs = v4eval.answer_task(model, task, chunk=128, record=True)
    return cfg, task, recs


def test_indexer_picks_mark_the_needle_hits_and_count_them(answered):
    cfg, task, recs = answered
    fig = ap.plot_indexer_picks(recs, task, cfg)
    csa = [i for i, r in sorted(recs.items()) if r["kind"] == "csa"]
    axes = fig.axes
    assert len(axes) == len(csa)
    for ax, layer in zip(axes, csa):
        assert ax.get_ylabel() == "answer step"
        sel = torch.cat(recs[layer]["sel"], 1)[0]
        want = v4eval.needle_entries(task, cfg.compress_ratios[layer])
        hit_steps = sum(bool(set(row[row >= 0].tolist()) & want) for row in sel)
        assert f"a needle entry picked at {hit_steps} of {sel.shape[0]} answer steps" in ax.get_title(loc="left")
        red = ax.collections[1]  # the hits, drawn red over the other picks
        n_hits = sum(len(set(row[row >= 0].tolist()) & want) for row in sel)
        assert len(red.get_offsets()) == n_hits
        assert len(ax.collections[0].get_offsets()) + n_hits == int((sel >= 0).sum())
    legend = _legend(fig)
    assert legend[:3] == ["picked entry", "picked entry holding the asked value", "asked value"]
    assert fig.legends and not any(ax.get_legend() for ax in axes)  # the legend is outside the panels


def test_attention_mass_shows_the_sink_on_its_own_scale():
    cfg = V4Config.preset("tiny")
    model = V4Model(cfg, seed=0).eval()
    ctx = ForwardContext(record=True)
    with torch.no_grad():
        model(torch.randint(0, cfg.vocab_size, (1, 50), generator=torch.Generator().manual_seed(0)), ctx=ctx)
    mass = ap.attention_mass(ctx.records)
    assert mass == dict(sorted(v4eval.attention_mass(ctx.records).items()))
    fig = ap.plot_attention_mass(ctx.records)
    top, low = fig.axes
    assert _legend(top) == ["window", "compressed", "sink"]
    sink = [mass[l]["sink"] for l in mass]
    assert np.allclose([p.get_height() for p in low.patches], sink)
    assert [t.get_text() for t in low.texts] == [f"{v:.2%}" for v in sink]
    assert low.get_ylim()[1] < 0.5 * top.get_ylim()[1]  # its own, smaller scale
    assert [t.get_text() for t in low.get_xticklabels()] == [f"{l}\n{mass[l]['kind']}" for l in mass]


def test_indexer_scores_draw_the_picks_of_some_rows_and_name_the_window_edge():
    g = torch.Generator().manual_seed(0)
    S, N = 96, 24
    s = torch.randn(S, N, generator=g)
    pos = torch.arange(S)
    s = s.masked_fill((torch.arange(N)[None] + 1) * 4 > pos[:, None] + 1, float("-inf"))
    picks = topk_lowest_index(s, 3)
    fig = mp.plot_indexer_scores(s, pos, picks, window=8, pick_rows=12)
    ax = fig.axes[0]
    rings = ax.collections[0].get_offsets()
    rows = sorted({int(y) for _, y in rings})
    # every 8th of 96 rows (12 rows), those with at least one valid pick
    assert rows == [r for r in range(0, S, 8) if (picks[r] >= 0).any()] and len(rows) >= 10
    assert len(rings) == int((picks[::8] >= 0).sum())
    assert _legend(ax) == ["top-3 picks of every 8th query row", "window edge (left of it: out of the window)"]


def test_probe_bars_carry_their_values_even_below_zero():
    fig = mp.plot_probe({"a": {"x": 0.5, "y": -0.06}, "b": {"x": 0.0}}, chance={"a": 0.2})
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["0.50", "0.00", "-0.06", "n/a"]
    assert ax.get_ylim()[0] < -0.06  # the negative bar is visible
    assert _legend(ax) == ["x", "y", "chance"]


def test_kernel_timings_split_whole_layers_from_their_parts():
    res = []
    for L in (2048, 8192):
        res += [dict(mode="decode", context=L, kernel=k, backend="torch", ms=0.1 * (i + 1) * L / 2048)
                for i, k in enumerate(["csa_layer", "hca_attention", "indexer_scores", "indexer_topk", "sparse_attention"])]
        res.append(dict(mode="decode", context=L, kernel="dense_sdpa", backend="dense", ms=L / 1000))
    fig = cp.plot_kernel_timings(dict(device="cpu", device_name="cpu", dtype="torch.float32", results=res))
    left, right = fig.axes
    assert [l.get_label() for l in left.lines] == ["csa_layer (indexer top-k + sparse)", "hca_attention",
                                                  "dense SDPA over all L keys"]
    assert [l.get_label() for l in right.lines] == ["indexer_scores", "indexer_topk", "sparse_attention"]
    assert "whole layers against dense" in left.get_title() and "parts" in right.get_title()
    assert len({l.get_marker() for l in right.lines}) == 3  # told apart without colour too


def test_needle_heatmap_writes_every_accuracy():
    fig = ep.plot_needle_accuracy({2048: {0.1: 1.0, 0.5: 0.5}, 8192: {0.1: 0.25}}, train_len=8192)
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["100%", "25%", "50%"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2K", "8K"]
    assert "training length 8192" in ax.get_xlabel()
