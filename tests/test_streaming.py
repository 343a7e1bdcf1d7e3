"""Layer-by-layer streaming runs ``V4Model``'s own forward through its weight hooks: the logits of
a small checkpoint (written by ``save_checkpoint``) equal the in-memory model's bit for bit, bad
input raises what ``V4Model`` raises (type and message), the memory cap holds, routed experts
come only when picked, and ``generate`` / ``eval.answer`` take a streamed model as they take the
in-memory one.  Oracle: ``load_checkpoint`` of the same folder."""
import pytest
import torch

from hf_oracle import randomize
from v4lab import V4Config, generate
from v4lab.cache import CacheError
from v4lab.checkpoint import load_checkpoint, save_checkpoint
from v4lab.config import FP8_QUANTIZATION
from v4lab.eval import answer
from v4lab.model import V4Model, WeightHook
from v4lab.streaming import StreamedModel

pytest.importorskip("safetensors.torch")

# FP8 linears, FP4 experts, and a short position limit to run past
CFG = V4Config.preset("tiny", quantization_config=FP8_QUANTIZATION, expert_dtype="fp4", max_position_embeddings=48)


def _ids(n, batch=1, seed=0):
    return torch.randint(0, CFG.vocab_size, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("streamed")
    save_checkpoint(randomize(V4Model(CFG), 3, CFG.n_routed_experts), path, max_shard_bytes=150_000)
    return path


@pytest.fixture(scope="module")
def loaded(folder):
    return load_checkpoint(folder)


def _held(sm):
    """Bytes really materialised in the skeleton (an instrument independent of the accounting)."""
    m = sm.model
    return sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()] if t.device.type != "meta")


def test_streamed_runs_the_models_own_forward_bit_for_bit(folder, loaded, monkeypatch):
    calls = {"check": 0, "hidden": 0, "head": 0}
    for name, key in (("_check_input", "check"), ("hidden_states", "hidden"), ("logits_from_hidden", "head")):
        real = getattr(V4Model, name)

        def counted(self, *a, _real=real, _key=key, **k):
            calls[_key] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(V4Model, name, counted)
    ids = _ids(40, batch=2, seed=1)
    with torch.no_grad():
        want = loaded(ids)
        want_H = loaded.hidden_states(ids)
    calls.update(check=0, hidden=0, head=0)
    cap = 300_000
    sm = StreamedModel(folder, max_memory_bytes=cap)
    assert sm.model.weight_hook is sm and sm.model.device == sm.device == torch.device("cpu")
    got = sm(ids)
    assert torch.equal(got, want) and got.dtype == torch.float32
    assert calls == {"check": 1, "hidden": 1, "head": 1}         # V4Model's forward ran, not a copy
    assert torch.equal(sm.hidden_states(ids), want_H)
    assert 0 < sm.peak_bytes <= cap and sm.current_bytes == 0 and _held(sm) == 0
    # a sequence in chunks through a cache, then decode steps, as the in-memory model does it
    c_mem, c_str = loaded.new_cache(2), sm.new_cache(2)
    with torch.no_grad():
        a = [loaded(ids[:, s:e], c_mem) for s, e in ((0, 17), (17, 38), (38, 39), (39, 40))]
    b = [sm(ids[:, s:e], c_str) for s, e in ((0, 17), (17, 38), (38, 39), (39, 40))]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and c_str.pos == c_mem.pos == 40
    # return_hidden as V4Model.forward gives it
    logits, H = sm(ids, return_hidden=True)
    assert torch.equal(logits, want) and torch.equal(H, want_H)
    # packed FP4 experts: the same logits from fewer bytes
    sp = StreamedModel(folder, max_memory_bytes=cap, experts="packed")
    assert torch.equal(sp(ids), want) and sp.peak_bytes < sm.peak_bytes


def test_routed_experts_come_only_when_the_router_picks_them(folder, loaded):
    sm = StreamedModel(folder)
    ids = _ids(3, seed=2)
    picked, held = [], []
    for i, layer in enumerate(sm.model.layers):
        layer.ffn.register_forward_pre_hook(lambda mod, args: held.append(_held(sm)))
        for e, expert in enumerate(layer.ffn.experts):
            # runs after the streamed model's own pre-hook has materialised the expert
            expert.register_forward_pre_hook(lambda mod, args, i=i, e=e: picked.append((i, e, _held(sm))))
    assert torch.equal(sm(ids), loaded(ids))
    per_layer = {}
    for i, e, _ in picked:
        per_layer.setdefault(i, set()).add(e)
    # 3 tokens x top-k cannot reach every expert of a layer: the others were never read
    assert all(len(v) < CFG.n_routed_experts for v in per_layer.values()) and len(per_layer) == CFG.num_hidden_layers
    one_expert = sum(t.numel() * t.element_size() for t in [*loaded.layers[0].ffn.experts[0].parameters()])
    assert all(h_exp == held[i] + one_expert for i, _, h_exp in picked)   # one expert at a time, on top of its block


BAD_INPUTS = {
    "not a tensor": lambda: [[1, 2, 3]],
    "float ids": lambda: torch.zeros(1, 3),
    "bool ids": lambda: torch.zeros(1, 3, dtype=torch.bool),
    "3-D ids": lambda: torch.zeros(1, 2, 3, dtype=torch.long),
    "empty": lambda: torch.zeros(1, 0, dtype=torch.long),
    "out of vocab": lambda: torch.tensor([[1, CFG.vocab_size]]),
    "negative id": lambda: torch.tensor([[-1, 2]]),
    "on another device": lambda: torch.zeros(1, 3, dtype=torch.long, device="meta"),
    "past max positions": lambda: _ids(CFG.max_position_embeddings + 1),
}


def _error(fn):
    with pytest.raises(Exception) as e:
        fn()
    return type(e.value), str(e.value)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_what_the_model_raises(folder, loaded, case):
    sm = StreamedModel(folder, max_memory_bytes=300_000)
    bad = BAD_INPUTS[case]()
    want = _error(lambda: loaded(bad))
    assert want[0] in (TypeError, ValueError)
    assert _error(lambda: sm(bad)) == want
    assert _error(lambda: sm.hidden_states(bad)) == want
    assert sm.current_bytes == 0 and sm.bytes_read == 0           # refused before anything was read


def test_cache_errors_are_the_models(folder, loaded):
    sm = StreamedModel(folder)
    ids = _ids(30, seed=4)
    cases = []
    for model in (loaded, sm):
        cache = model.new_cache(1)
        model(ids, cache)
        got = [_error(lambda: model(_ids(30, seed=5), cache)),                    # 60 > 48 positions
               _error(lambda: model(_ids(2, batch=2), cache)),                    # batch 2 into a cache of 1
               _error(lambda: model(ids[:, :2], cache, attention_mask=torch.tensor([[1, 0]])))]
        cases.append(got)
        assert cache.pos == 30 and cache.broken is None
    assert cases[0] == cases[1]
    assert cases[0][0][0] is ValueError and "max_position_embeddings (48)" in cases[0][0][1]
    assert cases[0][1][0] is CacheError and cases[0][2][0] is ValueError
    # a cache of one model is refused by another
    with pytest.raises(CacheError, match="another model"):
        sm(ids[:, :1], loaded.new_cache(1))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        sm.new_cache(0)


def test_a_failure_mid_forward_frees_everything_and_breaks_the_cache(folder):
    sm = StreamedModel(folder, max_memory_bytes=300_000)
    cache = sm.new_cache(1)
    sm.max_memory_bytes = 20_000            # too small for the first block (checked at construction only)
    with pytest.raises(MemoryError, match="layers.0"):
        sm(_ids(5), cache)
    assert sm.current_bytes == 0 and _held(sm) == 0
    assert cache.broken.startswith("a forward pass failed mid-chunk (MemoryError")   # V4Model's wording
    with pytest.raises(CacheError, match="unusable"):
        sm(_ids(1), cache)


def test_the_output_head_in_row_chunks_keeps_the_cap(folder, loaded):
    sm = StreamedModel(folder)
    H = loaded.hidden_states(_ids(21, batch=2, seed=6))
    with torch.no_grad():
        want = loaded.logits_from_hidden(H)
    assert torch.equal(sm.logits_from_hidden(H), want)           # no cap: the whole head, the same bits
    head = loaded.head.weight
    cap = 12_000
    assert cap < head.numel() * head.element_size()
    sm.max_memory_bytes = cap
    sm.reset_peak()
    got = sm.logits_from_hidden(H)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # row blocks of the same matrix product
    assert got.shape == want.shape and got.dtype == want.dtype
    assert 0 < sm.peak_bytes <= cap and sm.current_bytes == 0 and _held(sm) == 0


def test_the_default_hook_is_the_resident_model(loaded):
    """A ``WeightHook`` whose points do nothing leaves the model's forward as it is."""
    m = randomize(V4Model(CFG.replace(quantization_config=None, expert_dtype=None)), 5)
    ids = _ids(33, seed=7)
    with torch.no_grad():
        want = m(ids)
        hook = WeightHook()
        hook.device = m.embed.weight.device
        m.weight_hook = hook
        try:
            got = m(ids)
        finally:
            m.weight_hook = None
    assert torch.equal(got, want)


def test_generate_and_answer_take_a_streamed_model(folder, loaded):
    sm = StreamedModel(folder)
    prompt = _ids(20, seed=8)
    want = generate(loaded, prompt, 6, keep_logits=True)
    got = generate(sm, prompt, 6, keep_logits=True)
    assert got.tokens == want.tokens and got.cache.pos == 26
    assert all(torch.equal(a, b) for a, b in zip(got.logits, want.logits))
    assert answer(sm, prompt[0].tolist(), 6)[0] == answer(loaded, prompt[0].tolist(), 6)[0] == want.tokens
    assert sm.current_bytes == 0
