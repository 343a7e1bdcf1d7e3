"""Evaluation helpers: speculative decoding equals greedy; needle scoring; bits per byte."""
import torch

from v4lab import V4Config
from v4lab.bench import fit_exponent
from v4lab.eval import bits_per_byte, needle_accuracy, speculative_generate
from v4lab.generate import generate
from v4lab.model import V4Model


def _model():
    cfg = V4Config.preset("tiny", vocab_size=320, sliding_window=16, compress_ratios=[0, 4, 16, 4, 16, 0])
    return V4Model(cfg, seed=0).eval()


def test_mtp_speculative_decoding_is_exactly_greedy():
    model = _model()
    prompt = torch.randint(32, 160, (1, 41), generator=torch.Generator().manual_seed(0))
    plain = generate(model, prompt, 30).tokens
    spec = speculative_generate(model, prompt, 30)
    assert spec.tokens == plain
    assert spec.drafted > 0 and 0 <= spec.accepted <= spec.drafted


def test_needle_accuracy_scores_exact_matches_and_records_recall():
    model = _model()
    text = "It was a bright cold day in April, and the clocks were striking thirteen. " * 40
    res = needle_accuracy(model, text, 400, n_trials=1, depths=(0.3, 0.7), recall=True, seed=1)
    assert len(res.trials) == 2
    for t in res.trials:  # a random model does not know the 5-digit values
        assert t["correct"] == (t["answer"].strip() == t["value"])
    rec = res.recall()
    assert set(rec) == {1, 3}  # the two CSA layers
    for r in rec.values():
        assert 0 <= r["recall"] <= 1 and 0 < r["chance"] <= 1


def test_bits_per_byte_of_a_random_model_is_near_uniform():
    model = _model()
    bpb = bits_per_byte(model, ["some text to score " * 30], window=128, stride=64)
    assert 5.0 < bpb < 12.0  # log2(320) = 8.3 for a uniform guess


def test_fit_exponent_recovers_a_power_law():
    rows = [{"length": L, "prefill_s": 3e-6 * L**1.2} for L in (16384, 32768, 65536, 131072)]
    assert abs(fit_exponent(rows, 16384, 131072) - 1.2) < 1e-9
