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
