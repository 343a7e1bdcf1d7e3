"""Chunked prefill + decoding equals one full forward; cache bytes; generation; errors."""
import random

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from v4lab import V4Config, costs
from v4lab.attention import ForwardContext
from v4lab.cache import CacheError
from v4lab.generation import generate
from v4lab.model import V4Model

# window 16 and HCA 16 so that a few hundred tokens span many blocks and several windows
CFG = V4Config.preset("tiny", sliding_window=16, compress_ratios=[0, 4, 16, 4, 16, 0], index_topk=5)


def _model(numerics="reference", seed=0, cfg=CFG, dtype=torch.float32):
    m = V4Model(cfg, numerics=numerics, seed=seed, dtype=dtype)
    with torch.no_grad():  # non-zero sinks, ape, biases so that every state path matters
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in m.named_parameters():
            if p.dim() == 1 and not name.endswith("norm.weight"):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
            if name.endswith(".ape"):
                p.copy_(torch.randn(p.shape, generator=g))
    return m


def _ids(n, seed=0, vocab=CFG.vocab_size):
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def _chunkings(total, rng):
    fixed = [3, 4, 5, 127, 128, 129]
    out = [[c] * (total // c + 1) for c in fixed]
    out.append([rng.randint(1, 40) for _ in range(total)])
    return out


def _run_chunks(model, ids, sizes, ctx=None):
    cache = model.new_cache(ids.shape[0])
    outs, s0 = [], 0
    for c in sizes:
        if s0 >= ids.shape[1]:
            break
        outs.append(model(ids[:, s0 : s0 + c], cache=cache, ctx=ctx))
        s0 += c
    return torch.cat(outs, 1), cache


# "hf" numerics in fp32.  "reference" numerics round KV to FP8 and indexer q/k to FP4: in fp32, the
# ~1e-7 differences between chunk shapes (BLAS blocking) can flip a rounding decision, so the exact
# comparison runs in fp64, where such flips do not happen.
@pytest.mark.parametrize("numerics,dtype", [("hf", torch.float32), ("reference", torch.float64)])
@pytest.mark.parametrize("length", [260, 261, 262, 263])  # 0, 1, 2, 3 mod 4; > 16 HCA blocks, > 16 windows
def test_chunked_prefill_then_decode_equals_full_forward(numerics, dtype, length):
    model = _model(numerics, seed=length, dtype=dtype)
    ids = _ids(length, seed=length)
    ctx_full = ForwardContext(record=True)
    full = model(ids, ctx=ctx_full)
    rng = random.Random(length)
    for sizes in _chunkings(length, rng):
        prompt = length - rng.randint(1, 24)  # then up to 24 one-token decode steps
        # chunked prefill of the prompt, then one token at a time
        sizes = [s for s in sizes] if sum(sizes[:1]) else sizes
        plan, acc = [], 0
        for s in sizes:
            if acc >= prompt:
                break
            plan.append(min(s, prompt - acc))
            acc += plan[-1]
        plan += [1] * (length - prompt)
        ctx = ForwardContext(record=True)
        got, cache = _run_chunks(model, ids, plan, ctx)
        assert cache.pos == length
        diff = (got - full).abs().max().item()
        assert diff <= 1e-4, f"chunks {plan[:6]}...: max |diff| {diff}"
        # the indexer picked the same entries for every query of every CSA layer
        for layer, rec in ctx_full.records.items():
            if rec["kind"] != "csa":
                continue
            want = torch.cat([s for s in rec["sel"]], 1).sort(-1).values
            have = torch.cat([torch.nn.functional.pad(s, (0, want.shape[-1] - s.shape[-1]), value=-1)
                              for s in ctx.records[layer]["sel"]], 1).sort(-1).values
            assert torch.equal(want, have), f"layer {layer}: indexer picks differ"


def test_one_token_at_a_time_from_the_start_equals_full_forward():
    model = _model("hf", seed=1)
    ids = _ids(137, seed=1)  # 1 mod 4, > 8 HCA blocks of 16, > 8 windows
    full = model(ids)
    got, _ = _run_chunks(model, ids, [1] * 137)
    assert (got - full).abs().max() <= 1e-4


def test_greedy_generate_matches_transformers():
    from hf_oracle import tiny_hf_model
    from v4lab.convert import from_transformers

    cfg = V4Config.preset("tiny")
    hf = tiny_hf_model(cfg, seed=5)
    ours = from_transformers(hf)
    prompt = _ids(19, seed=3, vocab=cfg.vocab_size)
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=64, do_sample=False, min_new_tokens=64, eos_token_id=None,
                          pad_token_id=0)[0, 19:].tolist()
    res = generate(ours, prompt, 64, prefill_chunk=7)
    assert len(ref) == 64
    assert res.tokens == ref


def test_generate_streams_stops_and_samples_reproducibly():
    model = _model()
    prompt = _ids(30)
    streamed = []
    res = generate(model, prompt, 20, on_token=streamed.append)
    assert streamed == res.tokens and len(res.tokens) == 20
    stop = res.tokens[5]
    first = res.tokens.index(stop)
    res2 = generate(model, prompt, 20, stop=stop)
    assert res2.tokens == res.tokens[: first + 1] and res2.stopped
    a = generate(model, prompt, 15, temperature=1.0, top_p=0.9, seed=7).tokens
    b = generate(model, prompt, 15, temperature=1.0, top_p=0.9, seed=7).tokens
    c = generate(model, prompt, 15, temperature=1.0, top_p=0.9, seed=8).tokens
    assert a == b and a != c


@pytest.mark.parametrize("preset", ["tiny", "flash-mini"])
@pytest.mark.parametrize("storage", [None, "bf16", "deployed"])
def test_cache_bytes_equal_the_cost_model(preset, storage):
    cfg = V4Config.preset(preset, num_nextn_predict_layers=0,
                          compress_ratios=V4Config.preset(preset).compress_ratios)
    model = V4Model(cfg, seed=0)
    cache = model.new_cache(1, storage=storage)
    dtype = model.dtype if storage in (None, "deployed") else torch.bfloat16
    for n in [5, 3, 300 if preset == "tiny" else 130]:
        model(_ids(n, vocab=cfg.vocab_size), cache=cache)
        want = costs.kv_cache_bytes(cfg, cache.pos, storage=storage or dtype, indexer_storage="fp4")
        got = cache.nbytes(by_layer=True)
        assert got["total"] == want.total
        for g, w in zip(got["layers"], want.per_layer):
            for part in ("window", "compressed", "indexer", "state"):
                assert g[part] == w[part], (cache.pos, g["layer"], part)


def test_deployed_storage_keeps_logits_close():
    model = _model()
    ids = _ids(120)
    full = model(ids)
    cache = model.new_cache(1, storage="deployed", indexer_storage="fp8")
    got = torch.cat([model(ids[:, i : i + 13], cache=cache) for i in range(0, 120, 13)], 1)
    # storage rounds entries (bf16 RoPE dims, FP8 indexer keys): small changes everywhere, and an
    # occasional discrete flip (expert choice, top-k pick) -- compare statistically
    d = (got - full).abs()
    assert d.median() < 0.02 * full.abs().max()
    assert (got.argmax(-1) == full.argmax(-1)).float().mean() > 0.8
    native = model.new_cache(1)
    same = torch.cat([model(ids[:, i : i + 13], cache=native) for i in range(0, 120, 13)], 1)
    assert (same - full).abs().max() < 1e-4  # the model's own dtype loses nothing
    assert cache.nbytes() < model.new_cache(1).nbytes() + 1  # smaller than (or equal to) fp32 entries


class _MaxNumel(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.max = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.max = max(self.max, t.numel())
        return out


def test_long_prefill_never_builds_a_sequence_squared_tensor():
    cfg = V4Config.preset("tiny", max_position_embeddings=16384)
    model = V4Model(cfg, seed=0)
    S = 8192
    ids = _ids(S, vocab=cfg.vocab_size)
    with torch.no_grad(), _MaxNumel() as probe:
        model(ids)  # one full forward, no cache
    assert probe.max < S * S // 8, probe.max  # far below [S, S/4]


def test_cache_errors():
    model = _model()
    cache = model.new_cache(1)
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long), cache=cache)
    small = V4Model(V4Config.preset("tiny", max_position_embeddings=40))
    c2 = small.new_cache(1)
    small(_ids(30), cache=c2)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        small(_ids(11), cache=c2)
    with pytest.raises(CacheError, match="batch"):
        model(_ids(4).repeat(2, 1), cache=cache)
    other = _model(seed=9)
    with pytest.raises(CacheError, match="another model"):
        other(_ids(4), cache=cache)
    # an exception in the middle of a chunk marks the cache unusable
    model(_ids(10), cache=cache)
    layer = model.layers[2].attn
    orig = layer.forward
    layer.forward = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        model(_ids(5), cache=cache)
    layer.forward = orig
    with pytest.raises(CacheError, match="unusable"):
        model(_ids(5), cache=cache)
    with pytest.raises(ValueError, match="storage"):
        model.new_cache(1, storage="int4")


def test_snapshot_restore_rolls_back_exactly():
    model = _model()
    ids = _ids(90)
    cache = model.new_cache(1)
    model(ids[:, :50], cache=cache)
    snap = cache.snapshot()
    a = model(ids[:, 50:90], cache=cache)
    model(_ids(7, seed=4), cache=cache.__class__.restore(cache, snap) or cache)
    cache.restore(snap)
    b = model(ids[:, 50:90], cache=cache)
    assert torch.equal(a, b)
