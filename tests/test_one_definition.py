"""Each op is defined once: the model's torch path and the kernels' PyTorch references run through
the same functions (counted here), so a second copy of the math cannot come back unnoticed."""
import torch

from v4lab import V4Config, V4Model
from v4lab import compressor as comp_mod
from v4lab import indexer as idx_mod


def _count(monkeypatch, module, name, calls):
    real = getattr(module, name)

    def counted(*a, **k):
        calls[name] = calls.get(name, 0) + 1
        return real(*a, **k)

    monkeypatch.setattr(module, name, counted)


def test_the_model_and_the_references_share_pooling_scoring_and_top_k(monkeypatch):
    calls = {}
    for module, name in ((comp_mod, "pool_blocks"), (idx_mod, "index_scores"), (idx_mod, "topk_lowest_index")):
        _count(monkeypatch, module, name, calls)
    cfg = V4Config.preset("tiny")
    model = V4Model(cfg, seed=0).eval()
    with torch.no_grad():
        model(torch.randint(0, cfg.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0)))
    n_compressors = sum(1 for k in cfg.layer_types if k != "window") + cfg.layer_types.count("csa")
    assert calls["pool_blocks"] == n_compressors  # every compressor (attention and indexer) once
    assert calls["index_scores"] >= cfg.layer_types.count("csa") and calls["topk_lowest_index"] >= 2
    # the kernels' references are those same functions, not copies
    from v4lab.kernels import reference as ref

    calls.clear()
    g = torch.Generator().manual_seed(1)
    kv, gate = torch.randn(1, 16, 8, generator=g), torch.randn(1, 16, 8, generator=g)
    ref.compress_pool(kv, gate, torch.zeros(4, 8), 4, True)
    ref.compress_pool_decode(kv[:, :8], gate[:, :8], True)
    q, w, k = torch.randn(1, 3, 2, 4, generator=g), torch.randn(1, 3, 2, generator=g), torch.randn(1, 5, 4, generator=g)
    ref.indexer_topk(q, w, k, torch.arange(17, 20), 4, 2)
    assert calls == {"pool_blocks": 2, "index_scores": 1, "topk_lowest_index": 1}


def test_reference_pooling_keeps_fp64():
    from v4lab.kernels import reference as ref

    kv = torch.randn(1, 8, 6, dtype=torch.float64)
    out = ref.compress_pool(kv, kv, torch.zeros(4, 6, dtype=torch.float64), 4, False)
    assert out.dtype == torch.float64 and out.shape == (1, 2, 6)
