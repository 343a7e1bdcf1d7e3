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


def test_the_attention_softmax_is_one_function_for_the_model_and_the_references(monkeypatch):
    """The model's layers reach their attention through the backend's ``attention`` op, the torch
    op is ``v4lab.attention.attention``, and it, ``reference.sparse_attention`` and
    ``reference.hca_attention`` all take their softmax from ``attend``."""
    from v4lab import attention as attn_mod
    from v4lab.kernels import reference as ref

    calls = {}
    for module, name in ((attn_mod, "attend"), (attn_mod, "attention"), (ref, "attention"), (ref, "indexer_topk")):
        real = getattr(module, name)

        def counted(*a, _real=real, _key=f"{module.__name__.split('.')[-1]}.{name}", **k):
            calls[_key] = calls.get(_key, 0) + 1
            return _real(*a, **k)

        monkeypatch.setattr(module, name, counted)
    cfg = V4Config.preset("tiny")
    model = V4Model(cfg, seed=0, backend="torch").eval()
    n_layers, n_csa = cfg.num_hidden_layers, cfg.layer_types.count("csa")
    with torch.no_grad():
        model(torch.randint(0, cfg.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0)))
    assert calls["reference.attention"] == n_layers  # the MTP block does not run in a plain forward
    assert calls["attention.attention"] == calls["reference.attention"]
    assert calls["attention.attend"] >= n_layers  # one softmax per query block and layer
    assert calls["reference.indexer_topk"] == n_csa
    calls.clear()
    g = torch.Generator().manual_seed(2)
    q, kv = torch.randn(1, 3, 2, 8, generator=g), torch.randn(1, 6, 8, generator=g)
    ref.sparse_attention(q, kv, torch.tensor([[[0, 2, -1], [1, 5, 3], [4, -1, -1]]]), torch.zeros(2), 0.3)
    ref.hca_attention(q, kv, torch.arange(6), kv[:, :2], torch.arange(5, 8), 4, 4, torch.zeros(2), 0.3)
    assert calls == {"attention.attend": 2}


def _dense_layer_attention(q, q_start, win_kv, win_start, window, comp, ratio, sel, sink, scale):
    """One query at a time, every key written out: window rows by position, compressed rows by
    the picks (CSA) or by completeness (HCA), one softmax with the sink column."""
    B, S, H, D = q.shape
    out = torch.zeros(B, S, H, D, dtype=torch.float64)
    for b in range(B):
        for s in range(S):
            p = q_start + s
            rows = [win_kv[b, t - win_start] for t in range(max(win_start, p - window + 1), p + 1)]
            if comp is not None:
                js = [int(j) for j in sel[b, s] if j >= 0] if sel is not None else [
                    j for j in range(comp.shape[1]) if (j + 1) * ratio <= p + 1]
                rows += [comp[b, j] for j in js]
            k = torch.stack(rows).double()  # [K, D]
            logits = torch.cat([q[b, s].double() @ k.T * scale, sink.double()[:, None]], dim=1)  # [H, K + 1]
            out[b, s] = logits.softmax(-1)[:, :-1] @ k
    return out


def test_the_layer_attention_op_equals_dense_attention_written_out():
    from v4lab.kernels import reference as ref

    g = torch.Generator().manual_seed(3)
    B, S, H, D, window, q_start = 2, 9, 3, 8, 5, 30
    win_start = q_start - (window - 1)
    q, win_kv = torch.randn(B, S, H, D, generator=g), torch.randn(B, window - 1 + S, D, generator=g)
    sink = torch.randn(H, generator=g)
    sel = torch.randint(-1, q_start // 4, (B, S, 4), generator=g)
    for comp, ratio, picks in ((torch.randn(B, 9, D, generator=g), 4, sel),
                               (torch.randn(B, 4, D, generator=g), 8, None), (None, 0, None)):
        args = (q, q_start, win_kv, win_start, window, comp, ratio, picks, sink, 0.35)
        want = _dense_layer_attention(*args)
        for block in (2, 256):  # query blocks must not change the answer
            got = ref.attention(*args, query_block=block)
            assert (got.double() - want).abs().max() < 1e-5
