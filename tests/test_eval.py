"""Evaluation helpers: speculative decoding equals greedy; needle scoring; bits per byte."""
import torch

from v4lab import V4Config
from v4lab.bench import fit_exponent
from v4lab.eval import bits_per_byte, needle_accuracy, needle_picks, speculative_generate
from v4lab.generation import generate
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


def test_needle_picks_counts_steps_whose_top_k_holds_the_needle_block():
    from v4lab.data import make_needle_task

    cfg = V4Config.preset("tiny", vocab_size=320, index_topk=2)
    text = "It was a bright cold day in April, and the clocks were striking thirteen. " * 40
    task = make_needle_task(text, 399, 3, depth=0.5, position_offset=1)
    span = task.needle_spans[0]
    first = (span.value_start + 1) // 4           # entry of the value's first byte (BOS in front)
    last = span.value_end // 4                    # entry of its last byte
    far = 2 if first > 10 else last + 20
    sel = torch.tensor([[[far, first], [far, far + 1], [last, -1]]])     # [1, steps, k]; -1: no pick
    records = {1: {"kind": "csa", "sel": [sel], "pos": [torch.tensor([399, 400, 401])]},
               2: {"kind": "hca", "sel": [], "pos": []}}
    got = needle_picks(records, task, cfg)
    assert set(got) == {1} and (got[1]["hits"], got[1]["steps"]) == (2, 3)
    n_needle = last - first + 1
    expect = sum(n_needle * 2 / ((p + 1) // 4) for p in (399, 400, 401)) / 3
    assert abs(got[1]["chance"] - expect) < 1e-12


def test_bits_per_byte_of_a_random_model_is_near_uniform():
    model = _model()
    bpb = bits_per_byte(model, ["some text to score " * 30], window=128, stride=64)
    assert 5.0 < bpb < 12.0  # log2(320) = 8.3 for a uniform guess


def test_fit_exponent_recovers_a_power_law():
    rows = [{"length": L, "prefill_s": 3e-6 * L**1.2} for L in (16384, 32768, 65536, 131072)]
    assert abs(fit_exponent(rows, 16384, 131072) - 1.2) < 1e-9


def _reader(which):
    """An answerer that reads the prompt as text: the codes given for the asked key, in order of
    appearance, and answers ``which(codes, rank)`` (rank from the question's ordinal word)."""
    import re

    from v4lab.data import ORDINALS, decode_ids, encode_text

    def fake_answer(model, prompt_ids, max_new, stop_id=None, chunk=2048, record=False, **kw):
        text = decode_ids(prompt_ids[1:])
        q = re.search(r"gives (\d+) codes for the (.+?)\. What is the (\w+) of them\?\nAnswer: $", text)
        n, key, word = int(q.group(1)), q.group(2), q.group(3)
        codes = re.findall(r"The code of the " + re.escape(key) + r" is (\d+)\.", text[: q.start()])
        assert len(codes) == n
        rank = n if word == "last" else ORDINALS.index(word) + 1
        return encode_text(which(codes, rank) + "\n"), ({} if record else None)

    return fake_answer


def test_mrcr_accuracy_scores_the_asked_rank_per_rank_and_depth(monkeypatch):
    import v4lab.eval as ev

    model = _model()
    text = "It was a bright cold day in April, and the clocks were striking thirteen. " * 80
    monkeypatch.setattr(ev, "answer", _reader(lambda codes, r: codes[r - 1]))
    res = ev.mrcr_accuracy(model, text, 1500, n_needles=4, n_trials=8, seed=3)
    assert [t["ask"] for t in res.trials] == [1, 2, 3, 4, 1, 2, 3, 4]   # every rank asked equally
    assert res.accuracy == 1.0 and res.by_ask() == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}
    # the i-th code sits deeper than the (i-1)-th: depths rise with the rank within a trial's set
    for a, b in zip(res.trials[:3], res.trials[1:4]):
        assert a["depth"] < b["depth"]

    monkeypatch.setattr(ev, "answer", _reader(lambda codes, r: codes[0]))   # always the first code
    res = ev.mrcr_accuracy(model, text, 1500, n_needles=4, asks=[1, 2, 4, 1], seed=3)
    assert res.by_ask() == {1: 1.0, 2: 0.0, 4: 0.0} and res.accuracy == 0.5
    assert [t["other_rank"] for t in res.trials] == [None, 1, 1, None] and res.other_code_rate == 1.0
    monkeypatch.setattr(ev, "answer", _reader(lambda codes, r: "00000"))      # not a code at all
    res = ev.mrcr_accuracy(model, text, 1500, n_needles=4, asks=[2, 3], seed=3)
    assert [t["other_rank"] for t in res.trials] == [None, None] and res.other_code_rate == 0.0
    assert all(0 <= d <= 1 for d in res.by_depth())


def test_mrcr_accuracy_refuses_bad_ranks_and_contexts_past_the_model():
    import pytest

    from v4lab.eval import mrcr_accuracy

    model = _model()
    with pytest.raises(ValueError, match="asks must lie in 1 .. 4"):
        mrcr_accuracy(model, "text " * 400, 1000, n_needles=4, asks=[0, 5])
    with pytest.raises(ValueError, match="n_needles"):
        mrcr_accuracy(model, "text " * 400, 1000, n_needles=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        mrcr_accuracy(model, "text " * 400, model.config.max_position_embeddings + 1)
