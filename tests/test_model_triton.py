"""backend="triton" equals backend="torch" on the tiny config (Triton interpreter on CPU)."""
import pytest
import torch

from v4lab import V4Config
from v4lab.model import V4Model

pytest.importorskip("triton")


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("numerics", ["hf", "reference"])
def test_triton_backend_equals_torch_prefill_and_decode(interpret, numerics):
    cfg = V4Config.preset("tiny", index_topk=3)
    ref = V4Model(cfg, seed=2, numerics=numerics)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.dim() == 1 and not name.endswith("norm.weight"):
                p.normal_(0, 0.3)
    tri = V4Model(cfg, seed=2, numerics=numerics, backend="triton")
    tri.load_state_dict(ref.state_dict())
    assert tri.backend == "triton" and ref.backend == "torch"
    ids = torch.randint(0, cfg.vocab_size, (1, 43), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = ref(ids)
        b = tri(ids)
        assert (a - b).abs().max() <= 1e-4
        # chunked prefill then decode through the kernels
        cache = tri.new_cache(1)
        parts = [tri(ids[:, :21], cache=cache)] + [tri(ids[:, t : t + 1], cache=cache) for t in range(21, 43)]
        assert (torch.cat(parts, 1) - a).abs().max() <= 1e-4


def test_triton_backend_needs_a_gpu_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="CUDA"):
        V4Model(V4Config.preset("tiny"), backend="triton")
    assert V4Model(V4Config.preset("tiny")).backend == "torch"  # auto on CPU


def test_one_backend_switch_for_the_model_and_the_kernels(monkeypatch):
    """``V4LAB_KERNELS`` steers ``backend="auto"`` of the model and of ``v4lab.kernels`` alike; the
    interpreter is never picked by "auto" on CPU, only by name."""
    from v4lab import kernels

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("V4LAB_KERNELS", raising=False)
    assert kernels.resolve("auto", "cpu") == "torch" and V4Model(V4Config.preset("tiny")).backend == "torch"
    monkeypatch.setenv("V4LAB_KERNELS", "triton")
    model = V4Model(V4Config.preset("tiny"))
    assert model.backend == "triton" and kernels.backend("auto") is kernels.backend("triton")
    assert all(a.backend == "triton" for a in model.modules() if type(a).__name__ == "Attention")
    monkeypatch.setenv("V4LAB_KERNELS", "torch")
    assert V4Model(V4Config.preset("tiny"), backend="auto").backend == "torch"
    assert kernels.backend("auto") is kernels.reference
    monkeypatch.setenv("V4LAB_KERNELS", "gpu")
    with pytest.raises(ValueError, match="gpu"):
        V4Model(V4Config.preset("tiny"))


@pytest.mark.parametrize("numerics", ["hf", "reference"])
def test_triton_backend_trains_like_torch(interpret, numerics):
    """The kernels have no backward: with gradients needed the torch path runs, so every
    parameter gets the same gradient as with backend="torch"; without, the kernels run."""
    cfg = V4Config.preset("tiny", index_topk=3)
    ref = V4Model(cfg, seed=3, numerics=numerics)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.dim() == 1 and not name.endswith("norm.weight"):
                p.normal_(0, 0.3)
    tri = V4Model(cfg, seed=3, numerics=numerics, backend="triton")
    tri.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (2, 29), generator=g)
    target = torch.randint(0, cfg.vocab_size, (2, 29), generator=g)
    grads = []
    for m in (ref, tri):
        m.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(m(ids).flatten(0, 1), target.flatten())
        loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    a, b = grads
    main = [n for n in a if not n.startswith("mtp.")]  # the MTP block is not in this loss
    missing = [n for n in main if a[n] is not None and b[n] is None]
    assert not missing, f"{len(missing)} parameters got no gradient with backend='triton': {missing[:6]}"
    assert [n for n in main if a[n] is None] == [n for n in main if b[n] is None]
    assert sum(a[n] is not None for n in main) > 200  # attention, compressors, mHC, experts, head
    for n in main:
        if a[n] is not None:
            assert torch.allclose(a[n], b[n], rtol=1e-4, atol=1e-6), n
    # frozen parameters and an input without grad: nothing needs a gradient, the kernels may run
    calls = []
    from v4lab.kernels import layer as K  # the Triton backend's layer attention calls its kernels here

    orig = K.sparse_attention

    def spy(*args, **kw):
        calls.append(1)
        return orig(*args, **kw)

    K.sparse_attention = spy
    try:
        for p in tri.parameters():
            p.requires_grad_(False)
        with torch.enable_grad():
            tri(ids[:, :9])
        assert calls, "the Triton kernels should run when no gradient is needed"
        calls.clear()
        with torch.no_grad():
            tri(ids[:, :9])
        assert calls
    finally:
        K.sparse_attention = orig
