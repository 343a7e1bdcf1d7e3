"""What notebooks 11 and 12 build on: reading a training log into phases, the training figures,
the attention-mass report of an answer, its per-fact shares, and their figures."""
import json
import random

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from v4lab import V4Config, V4Model  # noqa: E402
from v4lab import eval as v4eval  # noqa: E402
from v4lab.data import make_mrcr_task, make_needle_task  # noqa: E402
from v4lab.plots import eval as eval_plots  # noqa: E402
from v4lab.plots import training as training_plots  # noqa: E402
from v4lab.train import read_train_log, training_phases  # noqa: E402


def _log(tmp_path, rows, name="log.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_read_train_log_names_each_phase_and_places_a_continued_run(tmp_path):
    old = [{"step": s, "elapsed": 2.0 * s, "dense_csa": s <= 3, "lm": 5.0 - s} for s in range(1, 9)]
    args = {"seq_len": 512, "long_from": 6, "long_seq_len": 2048}
    rows = read_train_log(_log(tmp_path, old), args)
    assert [r["seq_len"] for r in rows] == [512] * 5 + [2048] * 3
    assert training_phases(rows) == [("dense warm-up", 1, 3), ("sparse 512", 4, 5), ("sparse 2,048", 6, 8)]
    new = [{"step": s, "elapsed": 1.0 * s, "dense_csa": False, "seq_len": 8192, "lm": 1.0} for s in (1, 2)]
    more = read_train_log(_log(tmp_path, new, "b.jsonl"), step_offset=8, elapsed_offset=16.0)
    assert [(r["step"], r["elapsed"], r["phase"]) for r in more] == [(9, 17.0, "sparse 8,192"), (10, 18.0, "sparse 8,192")]
    with pytest.raises(ValueError, match="train_args"):
        read_train_log(_log(tmp_path, old, "c.jsonl"))  # no seq_len and nothing to take it from


def test_running_mean_ignores_missing_values():
    got = training_plots.running_mean([1.0, np.nan, 3.0, 5.0], 2)
    assert np.allclose(got, [1.0, 1.0, 3.0, 4.0])
    assert np.allclose(training_plots.running_mean([2.0, 4.0], 1), [2.0, 4.0])


def test_training_figures_show_each_phase_and_each_optimiser(tmp_path):
    rows = read_train_log(_log(tmp_path, [{"step": s, "elapsed": 60.0 * s, "dense_csa": s <= 4, "seq_len": 512,
                                            "lm": 6.0 / s, "answer_acc": s / 10, "indexer_kl": 0.2 / s}
                                           for s in range(1, 11)]))
    fig = training_plots.plot_training_history(rows, smooth=3)
    axes = fig.axes
    assert [a.get_ylabel() for a in axes] == ["next-token loss (nats)", "answer-token accuracy", "indexer KL (nats)"]
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert "dense warm-up" in legend and "sparse 512" in legend and "mean of 3 steps" in legend
    bold = [l for l in axes[0].get_lines() if l.get_label() == "mean of 3 steps"][0]
    assert np.allclose(bold.get_ydata()[2], np.mean([6.0, 3.0, 2.0]))
    other = [dict(r, answer_acc=0.25) for r in rows]
    fig = training_plots.plot_optimizer_comparison({"muon": rows, "adamw": other}, smooth=2, chance=0.25)
    ax = fig.axes[0]
    labels = [l.get_label() for l in ax.get_lines()]
    assert labels == ["muon (10 steps)", "adamw (10 steps)", "chance (0.25)"]
    assert np.allclose(ax.get_lines()[0].get_xdata(), np.arange(1, 11))  # minutes
    assert "minutes" in ax.get_xlabel()


@pytest.fixture(scope="module")
def tiny_answer():
    cfg = V4Config.preset("tiny", vocab_size=320, max_position_embeddings=4096)
    model = V4Model(cfg, seed=1).eval()
    text = "All the world's a stage, and all the men and women merely players. " * 60
    task = make_needle_task(text, 400, random.Random(0), depth=0.4, position_offset=1)
    got, want, recs = v4eval.answer_task(model, task, chunk=128, record=True)
    return model, task, recs


def test_attention_mass_adds_up_and_the_needle_share_is_its_entries(tiny_answer):
    model, task, recs = tiny_answer
    cfg = model.config
    rep = v4eval.attention_mass(recs, task)
    assert [rep[i]["kind"] for i in sorted(rep)] == cfg.layer_types
    for i, row in rep.items():
        assert abs(row["window"] + row["compressed"] + row["sink"] - 1) < 1e-5
        if row["kind"] == "window":
            assert row["compressed"] < 1e-6 and "needle" not in row
        else:
            assert 0 <= row["needle"] <= row["compressed"] + 1e-6
    # by hand, for a CSA layer: the mass of the entries j = (p + 1) // m over the value's bytes p
    layer = next(i for i, r in rep.items() if r["kind"] == "csa")
    span, m = task.needle_spans[task.target], cfg.compress_ratios[layer]
    want = {(p + 1) // m for p in range(span.value_start, span.value_end)}
    steps = [sum(float(p[0, 0, k]) for k, j in enumerate(idx[0, 0].tolist()) if j in want)
             for idx, p in recs[layer]["entry_mass"]]
    assert abs(sum(steps) / len(steps) - rep[layer]["needle"]) < 1e-6
    agg = v4eval.mass_by_kind([rep, rep])
    csa = [r["needle"] for r in rep.values() if r["kind"] == "csa"]
    assert abs(agg["csa"]["needle"] - sum(csa) / len(csa)) < 1e-9 and set(agg) == set(cfg.layer_types)


def test_fact_shares_and_their_figure():
    cfg = V4Config.preset("tiny", vocab_size=320, max_position_embeddings=4096, index_topk=64)
    model = V4Model(cfg, seed=2).eval()
    text = "Now is the winter of our discontent made glorious summer by this sun of York. " * 80
    task = make_mrcr_task(text, 900, random.Random(1), n_facts=4, ask=2, position_offset=1)
    got, want, recs = v4eval.answer_task(model, task, chunk=256, record=True)
    shares = v4eval.fact_shares(recs, task)
    assert len(shares) == len(task.needle_spans) and all(0 <= s <= 1 for s in shares)
    # the asked fact's share is the CSA layers' mean needle share of attention_mass
    rep = v4eval.attention_mass(recs, task)
    csa = [r["needle"] for r in rep.values() if r["kind"] == "csa"]
    assert abs(shares[task.target] - sum(csa) / len(csa)) < 1e-9
    fig = eval_plots.plot_fact_shares(shares, task, answer="12345")
    ax = fig.axes[0]
    bars = ax.patches[: len(shares)]
    assert np.allclose([b.get_height() for b in bars], shares)
    key = task.needle_spans[task.target].key
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == f"asked: {key} #2" and "12345" in ax.get_title()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[task.target].endswith("ASKED") and sum(t.endswith("ASKED") for t in ticks) == 1
    with pytest.raises(ValueError, match="record=True"):
        v4eval.fact_shares({}, task)


def test_mass_by_distance_figure_draws_every_part_per_kind():
    res = {100: {"window": {"window": 0.99, "compressed": 0.0, "sink": 0.01},
                 "csa": {"window": 0.6, "compressed": 0.38, "sink": 0.02, "needle": 0.12},
                 "hca": {"window": 0.9, "compressed": 0.09, "sink": 0.01, "needle": 0.001}},
           5000: {"window": {"window": 0.98, "compressed": 0.0, "sink": 0.02},
                  "csa": {"window": 0.55, "compressed": 0.43, "sink": 0.02, "needle": 0.15},
                  "hca": {"window": 0.88, "compressed": 0.11, "sink": 0.01, "needle": 0.002}}}
    fig = eval_plots.plot_mass_by_distance(res, window=128)
    titles = [a.get_title() for a in fig.axes]
    assert titles == ["window-only layers", "CSA layers", "HCA layers"]
    csa = {l.get_label(): l for l in fig.axes[1].get_lines()}
    assert list(csa["entries holding the asked value"].get_ydata()) == [0.12, 0.15]
    assert list(csa["sink"].get_xdata()) == [100, 5000] and "window reach (128)" in csa
    assert "entries holding the asked value" not in {l.get_label() for l in fig.axes[0].get_lines()}
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["100", "5.0K"]
