"""Configs that ``transformers`` accepts beyond V4's own: other activations and router scores, no
compressed picks (``index_topk=0``) and indexers with so few heads that exact score ties decide the
picks.  from_transformers builds each one, and numerics="hf" matches transformers at <= 1e-4."""
import pytest
import torch

from hf_oracle import tiny_hf_model
from v4lab import V4Config
from v4lab.activations import ACTIVATIONS, activation
from v4lab.convert import from_transformers
from v4lab.indexer import Indexer, topk_lowest_index, topk_torch_order


def _ids(cfg, n, seed):
    return torch.randint(0, cfg.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))


def _parity(cfg, seed=0, n=70):
    hf = tiny_hf_model(cfg, seed=seed)
    ours = from_transformers(hf)
    ids = _ids(cfg, n, seed)
    with torch.no_grad():
        ref, got = hf(ids).logits, ours(ids)
    assert ref.abs().max() > 0.5
    return hf, ours, ids, (ref - got).abs().max().item()


FUNCTIONS = {  # transformers builds these from ACT2FN; so does v4lab, from the formulas
    "gelu": dict(hidden_act="gelu"),
    "gelu-tanh": dict(hidden_act="gelu_pytorch_tanh"),
    "relu2": dict(hidden_act="relu2"),
    "quick-gelu+sigmoid-router": dict(hidden_act="quick_gelu", scoring_func="sigmoid"),
    "mish+relu-router": dict(hidden_act="mish", scoring_func="relu"),
}


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_other_activations_and_router_scores_match_transformers(name):
    cfg = V4Config.preset("tiny", **FUNCTIONS[name])
    _, ours, ids, diff = _parity(cfg, seed=1)
    assert diff <= 1e-4, f"{name}: max |diff| {diff}"
    # the function is really used: V4's own (silu / sqrtsoftplus) gives other logits
    v4 = from_transformers(tiny_hf_model(V4Config.preset("tiny"), seed=1))
    with torch.no_grad():
        assert (v4(ids) - ours(ids)).abs().max() > 1e-3


def test_each_activation_is_its_formula():
    import math

    x = torch.linspace(-6, 6, 241, dtype=torch.float64)
    want = {
        "silu": x / (1 + torch.exp(-x)),
        "gelu": 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
        "relu2": torch.clamp(x, min=0) ** 2,
        "quick_gelu": x / (1 + torch.exp(-1.702 * x)),
        "sqrtsoftplus": torch.log1p(torch.exp(x)).sqrt(),
        "mish": x * torch.tanh(torch.log1p(torch.exp(x))),
        "relu6": x.clamp(0, 6),
        "linear": x,
    }
    for name, w in want.items():
        assert torch.allclose(ACTIVATIONS[name](x), w, atol=1e-12), name
    # the tanh approximations stay within their known 1e-3 of the exact GELU
    for name in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_accurate"):
        assert (activation(name)(x) - want["gelu"]).abs().max() < 1e-3, name
    with pytest.raises(KeyError, match="learned parameters"):
        activation("prelu")


def test_unknown_functions_are_refused_by_name():
    with pytest.raises(ValueError, match="hidden_act.*known"):
        V4Config.preset("tiny", hidden_act="swiglu-ish")
    with pytest.raises(ValueError, match="scoring_func.*known"):
        V4Config.preset("tiny", scoring_func="softmax")


def test_index_topk_zero_reads_no_compressed_entry():
    cfg = V4Config.preset("tiny", index_topk=0)
    hf, ours, ids, diff = _parity(cfg, seed=2)
    assert diff <= 1e-4
    # CSA then attends its window and sink only: equal to a model whose CSA picks are all masked
    cache = ours.new_cache(1)
    with torch.no_grad():
        parts = [ours(ids[:, :30], cache=cache)] + [ours(ids[:, t : t + 1], cache=cache) for t in range(30, 45)]
        full = ours(ids[:, :45])
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-4


@pytest.mark.parametrize("heads", [1, 2, 3])
def test_few_index_heads_break_ties_as_transformers_does(heads):
    """With 1-3 index heads ReLU zeroes whole scores, so several entries tie at the k-th score and
    the tie-breaking decides what the attention reads (the lowest-index rule moves the logits by
    more than 0.1 here); numerics="hf" takes torch.topk's choice, as transformers does."""
    cfg = V4Config.preset("tiny", index_n_heads=heads)
    hf, ours, ids, diff = _parity(cfg, seed=heads, n=90)
    assert diff <= 1e-4, f"{heads} heads: max |diff| {diff}"
    lowest = from_transformers(hf)
    for m in lowest.modules():
        if isinstance(m, Indexer):
            m.ties = "lowest"
    with torch.no_grad():
        assert (lowest(ids) - ours(ids)).abs().max() > 0.1
    # transformers' chunked decoding (its cache) is matched chunk for chunk too
    from transformers import DynamicCache

    hcache, cache = DynamicCache(config=hf.config), ours.new_cache(1)
    with torch.no_grad():
        for a, b in [(0, 37), (37, 38), (38, 52), (52, 53), (53, 54)]:
            r = hf(ids[:, a:b], past_key_values=hcache, use_cache=True).logits
            g = ours(ids[:, a:b], cache=cache)
            assert (r - g).abs().max() <= 1e-4, f"chunk {a}:{b}"


def test_the_two_tie_orders_agree_wherever_no_tie_crosses_the_kth_score():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, 40, generator=g)
    s[..., 30:] = float("-inf")
    a, b = topk_lowest_index(s, 6), topk_torch_order(s, 6, n_all=55)
    assert torch.equal(a.sort(-1).values, b.sort(-1).values)
    # on a row of equal scores the lowest-index rule takes the first k; -1 marks invalid picks
    z = torch.zeros(1, 1, 10)
    z[..., 7:] = float("-inf")
    assert topk_lowest_index(z, 4).tolist() == [[[0, 1, 2, 3]]]
    assert topk_torch_order(z[..., :3], 5, n_all=4).sort(-1).values.tolist() == [[[-1, 0, 1, 2]]]


def test_mlp_bias_gives_the_shared_expert_biases_as_in_transformers(tmp_path):
    from v4lab.checkpoint import load_checkpoint, save_checkpoint
    from v4lab.costs import activated_params
    from v4lab.params import count_parameters

    cfg = V4Config.preset("tiny", mlp_bias=True)
    hf, ours, ids, diff = _parity(cfg, seed=4)
    assert diff <= 1e-4
    b = ours.layers[0].ffn.shared_experts.w1.bias
    assert b is not None and b.abs().max() > 0  # loaded from transformers' randomised bias
    with torch.no_grad():
        for blk in ours.layers:
            blk.ffn.shared_experts.w2.bias.zero_()
        assert (ours(ids) - hf(ids).logits).abs().max() > 1e-3  # the biases are used
    # the parameter count of a config knows them, and a checkpoint keeps them
    plain = count_parameters(V4Config.preset("tiny")).total
    per_layer = 2 * cfg.moe_intermediate_size + cfg.hidden_size
    n_blocks = cfg.num_hidden_layers + cfg.num_nextn_predict_layers
    assert count_parameters(cfg).total == plain + n_blocks * per_layer == sum(p.numel() for p in ours.parameters())
    assert activated_params(cfg)["experts"] - activated_params(V4Config.preset("tiny"))["experts"] == (
        cfg.num_hidden_layers * per_layer)
    save_checkpoint(ours, tmp_path / "ck")
    back = load_checkpoint(tmp_path / "ck", numerics="hf")
    with torch.no_grad():
        assert torch.equal(back(ids), ours(ids))


SHAPES = {  # edges of the schedule, streams, groups, windows and routing that transformers builds
    "one-stream": dict(hc_mult=1), "two-streams": dict(hc_mult=2), "one-group": dict(o_groups=1),
    "window-1": dict(sliding_window=1), "window-3": dict(sliding_window=3), "no-hash": dict(num_hash_layers=0),
    "all-hash": dict(num_hash_layers=5), "window-only": dict(compress_ratios=[0] * 6),
    "all-csa": dict(compress_ratios=[4] * 5 + [0]), "all-hca": dict(compress_ratios=[8] * 5 + [0]),
    "every-expert": dict(num_experts_per_tok=8), "one-expert": dict(num_experts_per_tok=1),
    "no-yarn": dict(rope_scaling=None), "rope-everywhere": dict(qk_rope_head_dim=32, index_head_dim=32),
    "tied-embeddings": dict(tie_word_embeddings=True), "k-past-all-entries": dict(index_topk=1000),
    "one-layer": dict(num_hidden_layers=1, compress_ratios=[4, 0], num_hash_layers=1),
    "one-sinkhorn-step": dict(hc_sinkhorn_iters=1),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_config_edges_match_transformers(name):
    cfg = V4Config.preset("tiny", **SHAPES[name])
    _, _, _, diff = _parity(cfg, seed=1, n=50)
    assert diff <= 1e-4, f"{name}: max |diff| {diff}"
