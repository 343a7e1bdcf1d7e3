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


KINDS = ["window", "csa", "hca", "csa", "hca", "window"]
NAMED_TYPES = {  # transformers names each layer's type, so a rate alone does not say the kind
    "csa8-hca16": dict(compress_ratios=[0, 8, 16, 8, 16, 0], attention_kinds=KINDS),
    "csa2-hca8": dict(compress_ratios=[0, 2, 8, 2, 8, 0], attention_kinds=KINDS),
    "hca4": dict(compress_ratios=[0, 4, 4, 4, 4, 0], attention_kinds=KINDS),  # HCA at the CSA rate
    "csa12-hca4": dict(compress_ratios=[0, 12, 4, 12, 4, 0], attention_kinds=KINDS),
}


@pytest.mark.parametrize("name", list(NAMED_TYPES))
def test_from_transformers_matches_when_the_rate_does_not_say_the_layer_type(name):
    cfg = V4Config.preset("tiny", **NAMED_TYPES[name])
    assert cfg.layer_types == KINDS[:5] and cfg.schedule_string() == "SCHCH|S"
    hf = tiny_hf_model(cfg, seed=6)
    csa, hca = cfg.compress_ratios[1], cfg.compress_ratios[2]
    assert hf.config.compress_rates == {"compressed_sparse_attention": csa, "heavily_compressed_attention": hca}
    ours = from_transformers(hf)
    assert ours.config.layer_types == KINDS[:5] and ours.config.compress_ratios == cfg.compress_ratios
    # the CSA layers carry an indexer and overlapping compressors, the HCA layers neither
    a1, a2 = ours.layers[1].attn, ours.layers[2].attn
    assert a1.indexer is not None and a1.compressor.overlap and a1.compressor.ape.shape == (csa, 2 * cfg.head_dim)
    assert a2.indexer is None and not a2.compressor.overlap and a2.compressor.ape.shape == (hca, cfg.head_dim)
    ids = torch.randint(0, cfg.vocab_size, (1, 61), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
        qat = from_transformers(hf, numerics="reference")(ids)
    assert ref.abs().max() > 0.5
    diff = (ref - got).abs().max().item()
    assert diff <= 1e-4, f"{name}: max |diff| {diff}"
    assert torch.isfinite(qat).all()
    cache = ours.new_cache(1)
    with torch.no_grad():
        parts = [ours(ids[:, :17], cache=cache)] + [ours(ids[:, t : t + 1], cache=cache) for t in range(17, 40)]
        full = ours(ids[:, :40])
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-4
    # the cache holds what the cost model prices for these rates
    from v4lab.costs import kv_cache_bytes

    assert cache.nbytes() == kv_cache_bytes(cfg, 40, storage="fp32").total


def test_config_names_a_kind_that_contradicts_its_rate():
    with pytest.raises(ValueError, match="attention_kinds"):
        V4Config.preset("tiny", attention_kinds=["csa", "csa", "hca", "csa", "hca", "window"])
    with pytest.raises(ValueError, match="attention_kinds"):
        V4Config.preset("tiny", attention_kinds=["window", "dense", "hca", "csa", "hca", "window"])
    # kinds the rates already imply are not stored twice
    assert V4Config.preset("tiny", attention_kinds=KINDS).attention_kinds is None


def test_triton_backend_on_a_csa_rate_of_8_and_on_no_picks(monkeypatch):
    pytest.importorskip("triton")
    from v4lab.model import V4Model

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for kw in (dict(NAMED_TYPES["csa8-hca16"], index_topk=3), dict(index_topk=0)):
        cfg = V4Config.preset("tiny", **kw)
        ref = V4Model(cfg, seed=4, numerics="hf")
        tri = V4Model(cfg, seed=4, numerics="hf", backend="triton")
        tri.load_state_dict(ref.state_dict())
        ids = torch.randint(0, cfg.vocab_size, (1, 41), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            a, b = ref(ids), tri(ids)
        assert a.abs().max() > 0.1 and (a - b).abs().max() <= 1e-4, kw


def test_a_checkpoint_keeps_the_layer_types_its_rates_do_not_say(tmp_path):
    from v4lab.checkpoint import load_checkpoint, save_checkpoint
    from v4lab.model import V4Model

    cfg = V4Config.preset("tiny", **NAMED_TYPES["hca4"])
    model = V4Model(cfg, seed=2)
    save_checkpoint(model, tmp_path / "ck")
    back = load_checkpoint(tmp_path / "ck")
    assert back.config.layer_types == KINDS[:5] and back.config == cfg
    ids = torch.randint(0, cfg.vocab_size, (1, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(ids), back(ids))
    assert V4Config.from_hf(tmp_path / "ck").layer_types == KINDS[:5]
