"""transformers accepts any HCA compression rate (``compress_rates["heavily_compressed_attention"]``),
not only the powers of two the shipped models use: from_transformers loads such configs and
matches transformers at <= 1e-4 (fp32, numerics="hf"); the reference numerics compute too, and
chunked decoding through the cache equals the full forward."""
import pytest
import torch

from hf_oracle import tiny_hf_model
from v4lab import V4Config
from v4lab.convert import from_transformers

RATES = {
    "hca12": dict(compress_ratios=[0, 4, 12, 4, 12, 0]),
    "hca3-hc2": dict(num_hidden_layers=3, compress_ratios=[3, 4, 3, 0], hc_mult=2, num_hash_layers=1),
    "hca6-idx24": dict(num_hidden_layers=3, compress_ratios=[4, 6, 6, 0], index_head_dim=24),
}


@pytest.mark.parametrize("name", list(RATES))
def test_from_transformers_matches_on_hca_rates_that_are_not_powers_of_two(name):
    cfg = V4Config.preset("tiny", **RATES[name])
    hf = tiny_hf_model(cfg, seed=4)
    hca = {m for m in cfg.compress_ratios if m not in (0, 4)}
    assert len(hca) == 1 and hf.config.compress_rates["heavily_compressed_attention"] == hca.pop()
    ours = from_transformers(hf)
    assert ours.config.compress_ratios == cfg.compress_ratios
    ref_model = from_transformers(hf, numerics="reference")
    for i, n in enumerate([31, 58]):
        ids = torch.randint(0, cfg.vocab_size, (1, n), generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            ref = hf(ids).logits
            got = ours(ids)
            qat = ref_model(ids)
        assert ref.abs().max() > 0.5
        diff = (ref - got).abs().max().item()
        assert diff <= 1e-4, f"{name} L={n}: max |diff| {diff}"
        assert torch.isfinite(qat).all()
    # chunked prefill and decoding through the cache equal the full forward
    cache = ours.new_cache(1)
    with torch.no_grad():
        parts = [ours(ids[:, :13], cache=cache)] + [ours(ids[:, t : t + 1], cache=cache) for t in range(13, 25)]
        full = ours(ids[:, :25])
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-4


def test_a_rate_v4lab_cannot_hold_is_refused_by_name():
    # V4Config marks a layer's kind by its rate (4 = CSA), so a CSA rate other than 4 is refused
    from v4lab.config import V4Config as C

    d = V4Config.preset("tiny").to_hf()
    d["compress_rates"] = {"compressed_sparse_attention": 8, "heavily_compressed_attention": 16}
    with pytest.raises(ValueError, match="CSA rate 8"):
        C.from_hf(d)
