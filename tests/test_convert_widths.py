"""Configs that transformers accepts but whose widths are not powers of two.

DeepSeek's indexer rotates q and k with ``fast_hadamard_transform.hadamard_transform(x,
scale=n ** -0.5)``, which zero-pads a width n that is not a power of two to the next one and keeps
the first n outputs.  ``numerics="hf"`` has no rotation at all, so any width must load and match
transformers; ``numerics="reference"`` follows the padded transform.
"""
import math

import pytest
import torch

from hf_oracle import tiny_hf_model
from v4lab import V4Config
from v4lab.convert import from_transformers
from v4lab.quant import hadamard, hadamard_matrix


def _sylvester_entry_matrix(N: int) -> torch.Tensor:
    # H_N[i, j] = (-1) ** popcount(i & j): the Sylvester matrix written entry by entry
    i = torch.arange(N)
    bits = (i[:, None] & i[None, :])
    pop = torch.zeros_like(bits)
    while bits.any():
        pop += bits & 1
        bits >>= 1
    return (1 - 2 * (pop % 2)).double()


@pytest.mark.parametrize("n", [1, 3, 5, 6, 12, 24, 40, 96, 100])
def test_hadamard_pads_a_width_that_is_not_a_power_of_two(n):
    N = 1 << math.ceil(math.log2(n)) if n > 1 else 1
    x = torch.randn(3, 2, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    padded = torch.nn.functional.pad(x, (0, N - n))
    want = (padded @ _sylvester_entry_matrix(N))[..., :n] * n**-0.5
    got = hadamard(x)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(x @ hadamard_matrix(n, torch.float64), want, atol=1e-12)
    assert torch.allclose(hadamard_matrix(n, torch.float64, normalized=False), _sylvester_entry_matrix(N)[:n, :n])
    # bf16 in, bf16 out, computed in fp32
    xb = x.to(torch.bfloat16)
    assert hadamard(xb).dtype == torch.bfloat16
    assert torch.allclose(hadamard(xb).double(), want, atol=0.05 * want.abs().max().item())


@pytest.mark.parametrize("n", [2, 16, 128])
def test_hadamard_of_a_power_of_two_is_unchanged_and_orthogonal(n):
    x = torch.randn(4, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = x @ _sylvester_entry_matrix(n) / math.sqrt(n)
    assert torch.allclose(hadamard(x), want, atol=1e-12)
    assert torch.allclose(hadamard(hadamard(x)), x, atol=1e-12)


def test_hadamard_refuses_an_empty_width():
    with pytest.raises(ValueError, match="last dim"):
        hadamard(torch.zeros(2, 0))
    with pytest.raises(ValueError, match="positive integer"):
        hadamard_matrix(0)


def test_config_accepts_any_indexer_width():
    assert V4Config.preset("tiny", index_head_dim=24).index_head_dim == 24
    assert V4Config.preset("tiny").replace(index_head_dim=96).index_head_dim == 96


WIDTHS = {  # index_head_dim (>= qk_rope_head_dim = 8 of the tiny preset)
    "idx24": dict(index_head_dim=24),
    "idx12-CSA-every-layer": dict(index_head_dim=12, num_hidden_layers=3, compress_ratios=[4, 4, 4, 0]),
    "idx40-head48": dict(index_head_dim=40, head_dim=48),
}


@pytest.mark.parametrize("name", list(WIDTHS))
def test_from_transformers_loads_and_matches_on_widths_that_are_not_powers_of_two(name):
    cfg = V4Config.preset("tiny", **WIDTHS[name])
    hf = tiny_hf_model(cfg, seed=2)
    assert hf.config.index_head_dim == cfg.index_head_dim
    ours = from_transformers(hf)
    assert ours.config.index_head_dim == cfg.index_head_dim
    ref_model = from_transformers(hf, numerics="reference")
    for i, n in enumerate([33, 70]):
        ids = torch.randint(0, cfg.vocab_size, (1, n), generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            ref = hf(ids).logits
            got = ours(ids)
            qat = ref_model(ids)
        assert ref.abs().max() > 0.5
        diff = (ref - got).abs().max().item()
        assert diff <= 1e-4, f"{name} L={n}: max |diff| {diff}"
        # the reference numerics (padded Hadamard + FP4 on the indexer, FP8 KV) compute too
        assert torch.isfinite(qat).all() and (qat - got).abs().max() > 1e-4


IGNORED_BY_THE_PORT = {  # transformers accepts these; its modules compute the same whatever they say
    "kv-heads-2": dict(num_key_value_heads=2),
    "shared-experts-0": dict(n_shared_experts=0),
    "shared-experts-2": dict(n_shared_experts=2),
    "nextn-2": dict(num_nextn_predict_layers=2),
}


@pytest.mark.parametrize("name", list(IGNORED_BY_THE_PORT))
def test_from_transformers_accepts_fields_the_port_does_not_compute_with(name):
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

    from hf_oracle import hf_config, randomize

    base = V4Config.preset("tiny")
    d = hf_config(base).to_dict()
    d.update(IGNORED_BY_THE_PORT[name])
    for k in ("model_type", "architectures", "transformers_version"):
        d.pop(k, None)
    torch.manual_seed(0)
    hf = randomize(DeepseekV4ForCausalLM(DeepseekV4Config(**d)).float().eval(), 3, base.n_routed_experts)
    ours = from_transformers(hf)
    assert ours.config.num_key_value_heads == 1 and ours.config.n_shared_experts == 1
    ids = torch.randint(0, base.vocab_size, (1, 45), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref, got = hf(ids).logits, ours(ids)
    assert ref.abs().max() > 0.5
    assert (ref - got).abs().max().item() <= 1e-4


def test_triton_backend_on_an_indexer_width_that_is_not_a_power_of_two(monkeypatch):
    """The kernels pad head widths to a power of two themselves; reference numerics also run the
    padded Hadamard (an expensive test under the interpreter, so one numerics only)."""
    pytest.importorskip("triton")
    from v4lab.model import V4Model

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cfg = V4Config.preset("tiny", index_head_dim=24, index_topk=3)
    ref = V4Model(cfg, seed=4, numerics="reference")
    tri = V4Model(cfg, seed=4, numerics="reference", backend="triton")
    tri.load_state_dict(ref.state_dict())
    ids = torch.randint(0, cfg.vocab_size, (1, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ref(ids), tri(ids)
    assert a.abs().max() > 0.1 and (a - b).abs().max() <= 1e-4
