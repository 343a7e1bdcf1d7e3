"""The model against an implementation nobody here wrote (transformers), and against the spec."""
import math

import pytest
import torch

from hf_oracle import tiny_hf_model
from v4lab import V4Config
from v4lab.attention import Attention, ForwardContext
from v4lab.cache import LayerCache
from v4lab.convert import from_transformers, hf_to_official, official_to_hf
from v4lab.model import V4Model

# Four tiny configurations mixing window-only, CSA and HCA layers, hash and learned routing,
# 2 and 4 streams, different windows, top-k, HCA rates, head groupings and YaRN settings.
CONFIGS = {
    "SCHCH-hc4-w8": V4Config.preset("tiny"),
    "HHCC-hc2-w16": V4Config.preset(
        "tiny", num_hidden_layers=4, compress_ratios=[16, 16, 4, 4, 0], hc_mult=2, sliding_window=16,
        index_topk=3, num_hash_layers=1, rope_scaling={"type": "yarn", "factor": 8, "original_max_position_embeddings": 16,
                                                       "beta_fast": 32, "beta_slow": 1}),
    "CSHS-noyarn-learned": V4Config.preset(
        "tiny", num_hidden_layers=4, compress_ratios=[4, 0, 32, 0, 0], rope_scaling=None, num_hash_layers=0,
        index_topk=8, num_experts_per_tok=3),
    "CCHS-8heads-4groups": V4Config.preset(
        "tiny", num_hidden_layers=4, compress_ratios=[4, 4, 8, 0, 0], hc_mult=2, sliding_window=12,
        num_attention_heads=8, o_groups=4, index_topk=2, num_hash_layers=3, n_routed_experts=6),
}
LENGTHS = [33, 50, 67, 100]  # 1, 2, 3, 0 mod 4; not multiples of the HCA rates; >= 4 windows


def _ids(n, vocab, seed):
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_with_transformers(name):
    cfg = CONFIGS[name]
    hf = tiny_hf_model(cfg, seed=1)
    ours = from_transformers(hf)
    assert ours.numerics == "hf"
    for i, n in enumerate(LENGTHS):
        ids = _ids(n, cfg.vocab_size, i)
        with torch.no_grad():
            ref = hf(ids).logits
            got = ours(ids)
        assert ref.abs().max() > 0.5  # the oracle produces non-trivial logits
        diff = (ref - got).abs().max().item()
        assert diff <= 1e-4, f"{name} L={n}: max |diff| {diff}"


def test_oracle_detects_a_one_point_change():
    """The parity test has teeth: un-transposing the mHC mixing moves the logits a lot."""
    import v4lab.model as vm

    cfg = CONFIGS["SCHCH-hc4-w8"]
    hf = tiny_hf_model(cfg, seed=1)
    ours = from_transformers(hf)
    ids = _ids(40, cfg.vocab_size, 0)
    good = ours(ids)
    orig = vm.hc_expand
    vm.hc_expand = lambda f, H, post, comb: orig(f, H, post, comb.transpose(-1, -2))
    try:
        bad = ours(ids)
    finally:
        vm.hc_expand = orig
    with torch.no_grad():
        ref = hf(ids).logits
    assert (ref - good).abs().max() < 1e-4
    assert (ref - bad).abs().max() > 0.1


def test_state_dict_names_are_the_official_names():
    cfg = CONFIGS["SCHCH-hc4-w8"]
    hf = tiny_hf_model(cfg)
    sd = hf_to_official(hf.state_dict(), cfg)
    ours = V4Model(cfg)
    assert set(sd) == {k for k in ours.state_dict() if not k.startswith("mtp.")}
    back = official_to_hf(sd, cfg)
    assert set(back) == set(hf.state_dict())
    for k, v in hf.state_dict().items():
        assert torch.equal(back[k], v), k


@pytest.mark.parametrize("layer_kind", ["window", "csa", "hca"])
def test_causality_every_layer_type(layer_kind):
    ratio = {"window": 0, "csa": 4, "hca": 8}[layer_kind]
    # one layer of the kind under test; top-k smaller than the number of available entries
    cfg = V4Config.preset("tiny", num_hidden_layers=2, compress_ratios=[ratio, ratio, 0], index_topk=3)
    model = V4Model(cfg, seed=3)
    with torch.no_grad():
        for p in model.parameters():  # make attention matter: non-zero sinks/ape
            if p.dim() == 1 and p.abs().sum() == 0:
                p.normal_(0, 0.5)
    ids = _ids(70, cfg.vocab_size, 0)
    base = model(ids)
    for t in [0, 3, 4, 15, 31, 40, 68]:
        changed = ids.clone()
        changed[0, t + 1 :] = (changed[0, t + 1 :] + 7) % cfg.vocab_size
        out = model(changed)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1]), f"{layer_kind}: position <= {t} changed"
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])


# --- CSA with a top-k that covers everything equals naive dense masked attention ---------------
def _naive_compress(x, wkv, wgate, ape, m, overlap, gamma, eps):
    T = x.shape[0]
    a, z = x @ wkv.T, x @ wgate.T
    c = a.shape[1] // (2 if overlap else 1)
    out = []
    for j in range(T // m):
        rows_a, rows_z = [], []
        for r in range(m):
            t = j * m + r
            if overlap:
                if j > 0:
                    tp = (j - 1) * m + r
                    rows_a.append(a[tp, :c]); rows_z.append(z[tp, :c] + ape[r, :c])
                rows_a.append(a[t, c:]); rows_z.append(z[t, c:] + ape[r, c:])
            else:
                rows_a.append(a[t]); rows_z.append(z[t] + ape[r])
        A, Z = torch.stack(rows_a), torch.stack(rows_z)
        pooled = (A * torch.softmax(Z, 0)).sum(0)
        out.append(pooled / torch.sqrt(pooled.pow(2).mean() + eps) * gamma)
    return torch.stack(out) if out else x.new_zeros(0, c)


def _rope_tail(v, pos, inv_freq):
    r = inv_freq.numel() * 2
    ang = pos * inv_freq
    tail = v[..., -r:].reshape(*v.shape[:-1], r // 2, 2)
    a, b = tail[..., 0], tail[..., 1]
    rot = torch.stack([a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()], -1).reshape(*v.shape[:-1], r)
    return torch.cat([v[..., :-r], rot], -1)


@pytest.mark.parametrize("ratio", [4, 8])
def test_compressed_attention_equals_naive_dense(ratio):
    cfg = V4Config.preset("tiny", index_topk=1000)
    torch.manual_seed(0)
    att = Attention(cfg, ratio).eval()
    att.qat = False
    if att.indexer is not None:
        att.indexer.qat = False
    with torch.no_grad():
        for p in att.parameters():
            p.normal_(0, 0.3) if p.dim() == 1 else p.normal_(0, p.shape[-1] ** -0.5)
    T, d, H, D, w, eps = 45, cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.sliding_window, cfg.rms_norm_eps
    x = torch.randn(1, T, d)
    lc = LayerCache(cfg, ratio, 1, torch.float32, "cpu", "native", "fp4")
    got = att(x, 0, lc, ForwardContext())[0]

    # naive: every quantity for every token, one masked softmax per (t, h)
    X = x[0]
    inv = att.rope.inv_freq
    cq = att.q_norm(X @ att.wq_a.weight.T)
    q = (cq @ att.wq_b.weight.T).view(T, H, D)
    q = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + eps)
    pos = torch.arange(T, dtype=torch.float32)[:, None]
    q = _rope_tail(q, pos[:, :, None], inv)
    kv = att.kv_norm(X @ att.wkv.weight.T)
    kv = _rope_tail(kv, pos, inv)
    c = att.compressor
    comp = _naive_compress(X, c.wkv.weight, c.wgate.weight, c.ape, ratio, ratio == 4, c.norm.weight, eps)
    comp = _rope_tail(comp, (torch.arange(comp.shape[0], dtype=torch.float32) * ratio)[:, None], inv)
    keys = torch.cat([kv, comp])  # [T + Nc, D]
    out = torch.zeros(T, H, D)
    for t in range(T):
        vis = [s for s in range(T) if t - w < s <= t] + [T + j for j in range(comp.shape[0]) if (j + 1) * ratio <= t + 1]
        K = keys[vis]
        logits = torch.cat([(q[t] @ K.T) / math.sqrt(D), att.attn_sink[:, None]], 1)  # [H, n+1]
        p = torch.softmax(logits, -1)[:, :-1]
        out[t] = p @ K
    out = _rope_tail(out, -pos[:, :, None], inv)
    g = cfg.o_groups
    u = torch.einsum("tgi,gri->tgr", out.reshape(T, g, -1), att.wo_a.weight.view(g, cfg.o_lora_rank, -1)).flatten(1)
    ref = u @ att.wo_b.weight.T
    assert (got - ref).abs().max() < 1e-4


def test_parameter_counts_match_the_report():
    from v4lab.params import count_parameters

    flash = count_parameters(V4Config.preset("flash"))
    assert abs(flash.total_without_mtp / 284.3e9 - 1) < 0.01  # "284B total" (spec 1.3: 284.3B without MTP)
    assert abs(flash.activated / 13.27e9 - 1) < 0.01  # "13B activated" (13.27B, no embedding lookup)
    pro = count_parameters(V4Config.preset("pro"))
    assert abs(pro.total / 1598.8e9 - 1) < 0.01  # "1.6T" (with MTP)
    assert abs(pro.activated / 48.85e9 - 1) < 0.01  # "49B activated"
    tiny = count_parameters(V4Config.preset("tiny"))
    assert tiny.total == sum(p.numel() for p in V4Model(V4Config.preset("tiny")).parameters())


def test_numerics_reference_is_close_to_hf_but_not_identical():
    cfg = V4Config.preset("tiny")
    m = V4Model(cfg, seed=0)
    ids = _ids(60, cfg.vocab_size, 0)
    ref = m(ids)
    hf = m.set_numerics("hf")(ids)
    d = (ref - hf).abs().max().item()
    assert 0 < d < 0.5 * ref.abs().max().item()


def test_bfloat16_forward_runs_and_tracks_fp32():
    cfg = V4Config.preset("tiny")
    m32 = V4Model(cfg, seed=0)
    m16 = V4Model(cfg, seed=0, dtype=torch.bfloat16)
    m16.load_state_dict({k: v.to(m16.state_dict()[k].dtype) for k, v in m32.state_dict().items()})
    ids = _ids(40, cfg.vocab_size, 0)
    a, b = m32(ids), m16(ids)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.99


def test_bad_inputs_raise_clear_errors():
    cfg = V4Config.preset("tiny", max_position_embeddings=64)
    m = V4Model(cfg)
    with pytest.raises(ValueError, match="empty"):
        m(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        m(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        m(torch.full((1, 3), cfg.vocab_size))
    with pytest.raises(TypeError, match="integer"):
        m(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="padding"):
        m(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1]]))
    with pytest.raises(ValueError, match="numerics"):
        V4Model(cfg, numerics="fast")
    with pytest.raises(ValueError, match="backend"):
        V4Model(cfg, backend="cuda")


def test_sinkhorn_in_place_path_equals_the_autograd_path():
    from v4lab.mhc import sinkhorn

    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = sinkhorn(x, 20, 1e-6)
    slow = sinkhorn(x.clone().requires_grad_(True), 20, 1e-6)
    assert torch.equal(fast, slow.detach())
    slow.sum().backward()  # the autograd path still differentiates
