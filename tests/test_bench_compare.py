"""The compare benchmark's measurement: v4lab and transformers on the same config and weights,
whose logits it checks (here on a tiny random model, in process; the figures come from
``python -m v4lab.bench compare``)."""
import pytest
import torch

from v4lab import V4Config, V4Model
from v4lab.bench import _compare_table, compare_run


def test_compare_run_measures_both_and_their_logits_agree():
    pytest.importorskip("transformers")
    cfg = V4Config.preset("tiny", vocab_size=320)
    state = V4Model(cfg, numerics="hf", seed=3).state_dict()
    runs = {impl: compare_run(impl, 40, 5, chunk=16, cfg=cfg, state=state) for impl in ("v4lab", "transformers")}
    for r in runs.values():
        assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 and r["peak_rss_bytes"] > 0
        assert r["logits"].shape == (1 + 5, cfg.vocab_size)
    diff = (runs["v4lab"]["logits"] - runs["transformers"]["logits"]).abs().max()
    assert runs["v4lab"]["logits"].abs().max() > 0.1 and diff <= 1e-4
    with pytest.raises(ValueError, match="unknown implementation"):
        compare_run("vllm", 8, 1, cfg=cfg, state=state)


def test_compare_table_gives_the_ratios():
    row = {"length": 8192, "max_logit_diff": 2e-5,
           "v4lab": {"prefill_tok_s": 4000.0, "decode_tok_s": 90.0, "peak_rss_bytes": 500 * 2**20},
           "transformers": {"prefill_tok_s": 1000.0, "decode_tok_s": 60.0, "peak_rss_bytes": 800 * 2**20}}
    t = _compare_table({"date": "2026-12-03", "machine": "m", "weights": "shipped", "repeats": 3, "rows": [row],
                        "nano": "not installed", "command": "python -m v4lab.bench compare"})
    assert "| 8,192 | 4,000 | 1,000 | 4.00x | 90.0 | 60.0 | 1.50x | 500 / 800 | 2.0e-05 |" in t
    assert "median of 3 fresh processes" in t and "nano-deepseek-v4: not installed" in t
