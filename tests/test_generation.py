"""Generation through a cache equals one full forward of the whole conversation; early length
errors; batches of prompts; eval.answer shares the decode loop.  Oracle: the model's own full
forward (no cache) over the concatenated tokens."""
import random

import pytest
import torch

from v4lab import V4Config, generate
from v4lab.cache import CacheError
from v4lab.eval import answer
from v4lab.model import V4Model

CFG = V4Config.preset("tiny", sliding_window=16, compress_ratios=[0, 4, 16, 4, 16, 0], index_topk=5)


def _model(numerics="reference", seed=0, cfg=CFG):
    m = V4Model(cfg, numerics=numerics, seed=seed)
    with torch.no_grad():  # non-zero sinks, ape, biases; a sharper head so greedy picks are clear
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in m.named_parameters():
            if p.dim() == 1 and not name.endswith("norm.weight"):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
            if name.endswith(".ape"):
                p.copy_(torch.randn(p.shape, generator=g))
        m.head.weight.mul_(4.0)
    return m


def _ids(n, seed=0, vocab=CFG.vocab_size, batch=1):
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("numerics", ["reference", "hf"])
def test_two_generate_calls_through_one_cache_equal_one_full_forward(numerics):
    model = _model(numerics)
    rng = random.Random(0)
    for trial in range(3 if numerics == "reference" else 2):
        p1, n1, p2, n2 = rng.randint(1, 40), rng.randint(1, 12), rng.randint(1, 25), rng.randint(1, 12)
        prompt1, prompt2 = _ids(p1, seed=10 + trial), _ids(p2, seed=20 + trial)
        cache = model.new_cache(1)
        r1 = generate(model, prompt1, n1, cache=cache, prefill_chunk=rng.randint(1, 9))
        assert len(r1.tokens) == n1 and r1.cache is cache
        assert cache.pos == p1 + n1  # the cache ends where the returned sequence ends
        r2 = generate(model, prompt2, n2, cache=cache, keep_logits=True, prefill_chunk=rng.randint(1, 9))
        assert cache.pos == p1 + n1 + p2 + n2
        seq = torch.cat([prompt1, torch.tensor([r1.tokens]), prompt2, torch.tensor([r2.tokens])], 1)
        with torch.no_grad():
            full = model(seq)[0]  # [S, V], no cache
        o1, o2 = p1 - 1, p1 + n1 + p2 - 1  # positions whose logits predict each turn's first token
        assert full[o1 : o1 + n1].argmax(-1).tolist() == r1.tokens, trial
        assert full[o2 : o2 + n2].argmax(-1).tolist() == r2.tokens, trial
        got = torch.stack(r2.logits)  # the logits each continuation token was picked from
        assert (got - full[o2 : o2 + n2]).abs().max() <= 1e-4, trial
        assert (r2.last_logits[0] - full[-1]).abs().max() <= 1e-4  # after the last returned token


def test_length_past_max_position_embeddings_fails_before_any_work():
    cfg = CFG.replace(max_position_embeddings=40)
    model = _model(cfg=cfg)
    seen = []
    cache = model.new_cache(1)
    with pytest.raises(ValueError, match=r"max_position_embeddings \(40\)"):
        generate(model, _ids(30), 11, cache=cache, on_token=seen.append)
    assert cache.pos == 0 and not seen and cache.broken is None  # nothing ran
    assert len(generate(model, _ids(30), 10, cache=cache).tokens) == 10  # exactly up to the limit
    assert cache.pos == 40
    cache = model.new_cache(1)
    generate(model, _ids(20), 5, cache=cache)
    with pytest.raises(ValueError, match=r"cache\.pos.*max_position_embeddings"):
        generate(model, _ids(10), 6, cache=cache)
    assert cache.pos == 25
    generate(model, _ids(10), 5, cache=cache)
    assert cache.pos == 40
    with pytest.raises(ValueError, match="answer"):
        answer(model, list(range(35)), 6)
    # other bad input, before any work
    for bad in (dict(max_new_tokens=-1), dict(temperature=-1.0), dict(top_p=0.0), dict(stop=[cfg.vocab_size])):
        kw = {"max_new_tokens": 3, **bad}
        c = model.new_cache(1)
        with pytest.raises(ValueError):
            generate(model, _ids(5), cache=c, **kw)
        assert c.pos == 0


def test_batch_of_prompts_equals_each_prompt_alone():
    model = _model()
    prompts = _ids(23, seed=3, batch=3)
    alone = [generate(model, prompts[i], 9).tokens for i in range(3)]
    res = generate(model, prompts, 9)
    assert res.tokens == alone and res.rows == alone
    assert res.cache.batch_size == 3 and res.cache.pos == 23 + 9 and res.cache.broken is None
    # a list of equal-length lists is a batch too
    assert generate(model, prompts.tolist(), 3).tokens == [a[:3] for a in alone]
    # per-row stop tokens: row 0 stops early, the others run on
    stop = alone[0][3]
    want = [a[: a.index(stop) + 1] if stop in a else a for a in alone]
    assert len(want[0]) <= 4 and any(len(w) == 9 for w in want)
    streamed = []
    res = generate(model, prompts, 9, stop=stop, on_token=streamed.append)
    assert res.tokens == want
    assert res.stopped_rows == [stop in a for a in alone] and res.stopped == all(res.stopped_rows)
    assert streamed[0] == [w[0] for w in want] and all(len(step) == 3 for step in streamed)
    for i in range(3):  # each row's stream: its tokens, then None once it stopped
        col = [step[i] for step in streamed]
        assert col == want[i] + [None] * (len(streamed) - len(want[i]))
    assert generate(model, prompts[0], 9, stop=stop).tokens == want[0]
    # rows of different lengths leave a cache that no longer is one sequence per row
    with pytest.raises(CacheError, match="different lengths"):
        generate(model, _ids(2, batch=3), 2, cache=res.cache)
    # sampling: reproducible per seed, one generator for the batch
    a = generate(model, prompts, 5, temperature=1.0, top_p=0.9, seed=4).tokens
    assert a == generate(model, prompts, 5, temperature=1.0, top_p=0.9, seed=4).tokens
    assert a != generate(model, prompts, 5, temperature=1.0, top_p=0.9, seed=5).tokens
    with pytest.raises(ValueError, match="equal lengths"):
        generate(model, [[1, 2, 3], [4, 5]], 2)


def test_answer_shares_the_decode_loop_and_ends_the_cache_at_its_answer():
    model = _model()
    prompt = _ids(41, seed=6)[0].tolist()
    ref = generate(model, prompt, 7).tokens
    stop = ref[4]
    cache = model.new_cache(1)
    got, records = answer(model, prompt, 7, stop_id=stop, cache=cache, record=True)
    want = ref[: ref.index(stop) + 1]
    assert got == want and got == generate(model, prompt, 7, stop=stop).tokens
    assert cache.pos == len(prompt) + len(got)
    # records cover the steps that chose an answer token: the last prompt token and every answer
    # token but the last (the last is fed to the cache without recording)
    steps = sum(int(p.numel()) for p in records[1]["pos"])
    assert steps == len(got)
    with torch.no_grad():
        full = model(torch.tensor([prompt + got]))[0]
    assert full[len(prompt) - 1 : -1].argmax(-1).tolist() == got


def test_generate_answer_and_the_demo_run_the_one_decode_loop(monkeypatch):
    import io

    from v4lab import demo, generation, pretrained
    from v4lab import eval as ev
    from v4lab.data import decode_ids, encode_text

    loops = []
    real_decode = generation.decode

    def counted(*a, **k):
        out = real_decode(*a, **k)
        loops.append(out[0])  # the rows it produced
        return out

    monkeypatch.setattr(generation, "decode", counted)
    model = _model(cfg=CFG.replace(vocab_size=320), seed=2)  # byte-level ids, as the demo's prompt
    prompt = torch.randint(0, 320, (37,), generator=torch.Generator().manual_seed(9)).tolist()
    g = generate(model, prompt, 6)
    a, _ = answer(model, prompt, 6)
    assert len(loops) == 2 and loops[0] == loops[1] == [g.tokens] and a == g.tokens
    # the demo answers with eval.answer -> generate -> decode, and streams what the loop picks
    prompts = []
    real_generate = ev.generate
    monkeypatch.setattr(ev, "generate", lambda m, ids, *x, **k: prompts.append(ids) or real_generate(m, ids, *x, **k))
    monkeypatch.setattr(pretrained, "load_flash_mini", lambda *x, **k: model)
    out = io.StringIO()
    res = demo.run(context=300, depth=0.5, figure=None, out=out)
    assert len(loops) == 3 and len(prompts) == 1
    picked = loops[2][0]
    newline = encode_text("\n")[0]
    assert res["answer"] == decode_ids(picked).strip()
    assert f"answer: {decode_ids([t for t in picked if t != newline])}\n" in out.getvalue()
    # the same tokens as generate on the demo's prompt, stopping at the newline
    assert generate(model, prompts[0], len(picked), stop=newline).tokens == picked
    with pytest.raises(ValueError, match="ctx_prompt"):
        generate(model, prompt, 2, ctx_prompt="none")
