"""The parameter table (read off the modules, v4lab.params), the checkpoint schema built on it and
the cost model's counts, checked against things that do not come from the table: whole
``V4Model``s built for small configs (every preset, and configs only transformers can express),
and the published parameter figures of spec 1.3 for Flash and Pro."""
import pytest
import torch

from v4lab import V4Config, costs
from v4lab.checkpoint import expected_tensors, layer_schema, model_tensor_names
from v4lab.config import FP8_QUANTIZATION
from v4lab.model import V4Model
from v4lab.params import count_parameters, param_table

KINDS = ["window", "csa", "hca", "csa", "hca", "window"]
CONFIGS = {
    "tiny": V4Config.preset("tiny"),
    "flash-mini": V4Config.preset("flash-mini"),
    "tiny-mlp-bias": V4Config.preset("tiny", mlp_bias=True),
    "tiny-csa8-hca4": V4Config.preset("tiny", compress_ratios=[0, 8, 4, 8, 4, 0], attention_kinds=KINDS),
    "tiny-no-shared-no-mtp": V4Config.preset("tiny", n_shared_experts=0, num_nextn_predict_layers=0),
}


def built(cfg, dtype=torch.bfloat16):
    with torch.device("meta"):
        return V4Model(cfg, dtype=dtype, init=False)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_table_and_schema_list_exactly_the_modules_tensors(name):
    cfg = CONFIGS[name]
    model = built(cfg)
    own = {n: (tuple(t.shape), t.dtype) for n, t in model.state_dict(keep_vars=True).items()}
    table = {e.name: (e.shape, e.precision, e.buffer) for e in param_table(cfg)}
    assert table.keys() == own.keys()
    precision = {torch.bfloat16: "model", torch.float32: "fp32", torch.int64: "int64"}
    buffers = {n for n, _ in model.named_buffers()}
    for n, (shape, dtype) in own.items():
        assert table[n] == (shape, precision[dtype], n in buffers), n
    # the checkpoint schema: the same names, and the unquantised layout has the same shapes
    names = model_tensor_names(cfg)
    assert sorted(names) == sorted(own) and len(names) == len(set(names))
    plain = expected_tensors(cfg, "official")
    assert {n: sh for n, (_, sh) in plain.items()} == {n: s for n, (s, _) in own.items()}


@pytest.mark.parametrize("name", ["tiny", "tiny-mlp-bias", "tiny-csa8-hca4"])
def test_storage_formats_agree_with_what_the_modules_hold(name):
    """F32 in the official files exactly where a bfloat16 model keeps float32, I64 where it keeps
    int64; FP8 / FP4 only for linear weights."""
    cfg = CONFIGS[name].replace(torch_dtype="bfloat16", quantization_config=FP8_QUANTIZATION, expert_dtype="fp4")
    own = {n: t for n, t in built(cfg).state_dict(keep_vars=True).items()}
    exp = expected_tensors(cfg, "official")
    kind = {"F32": torch.float32, "I64": torch.int64, "BF16": torch.bfloat16, "F8_E4M3": torch.bfloat16,
            "I8": torch.bfloat16}
    for n, t in own.items():
        assert kind[exp[n][0]] == t.dtype, n
        if exp[n][0] in ("F8_E4M3", "I8"):
            assert n.endswith(".weight") and t.dim() == 2 and n[:-6] + "scale" in exp, n
    assert {n for n in exp if n.endswith(".scale")} == {n[:-6] + "scale" for n in own if exp[n][0] in ("F8_E4M3", "I8")}


def test_official_order_is_the_files_order():
    """Embedding, then the layers (norms, mHC, attention, compressor, indexer, router, routed and
    shared experts), the MTP block, and last the final norm, mHC head and output head."""
    cfg = V4Config.preset("flash")
    names = model_tensor_names(cfg)
    assert names[0] == "embed.weight"
    assert names[-5:] == ["norm.weight", "hc_head_fn", "hc_head_base", "hc_head_scale", "head.weight"]
    first_mtp = next(i for i, n in enumerate(names) if n.startswith("mtp."))
    assert names[first_mtp - 1].startswith("layers.42.") and names[first_mtp] == "mtp.0.attn_norm.weight"
    layer2 = [n for n, _, _ in layer_schema(cfg, 2)]               # a CSA layer with hash routing
    assert layer2[:2] == ["attn_norm.weight", "ffn_norm.weight"] and layer2[2] == "hc_attn_fn"
    sink = layer2.index("attn.attn_sink")
    assert layer2[sink - 1] == "attn.wo_b.weight" and layer2[sink + 1] == "attn.compressor.wkv.weight"
    gate = layer2.index("ffn.gate.tid2eid")
    assert layer2[gate + 1: gate + 4] == ["ffn.experts.0.w1.weight", "ffn.experts.0.w2.weight", "ffn.experts.0.w3.weight"]
    assert layer2[-3:] == ["ffn.shared_experts.w1.weight", "ffn.shared_experts.w2.weight", "ffn.shared_experts.w3.weight"]
    mtp = [n for n, _, _ in layer_schema(cfg, cfg.num_hidden_layers)]
    assert mtp[-8:] == ["e_proj.weight", "h_proj.weight", "enorm.weight", "hnorm.weight", "norm.weight",
                        "hc_head_fn", "hc_head_base", "hc_head_scale"]


def activated_by_hand(model):
    """Activated parameters per token from a built model: every main-stack parameter but the
    embedding, with the routed experts scaled by k / E."""
    cfg = model.config
    total = routed = 0
    for n, p in model.named_parameters():
        if n.startswith("mtp.") or n == "embed.weight":
            continue
        total += p.numel()
        if ".ffn.experts." in n:
            routed += p.numel()
    return total - routed + routed * cfg.num_experts_per_tok // cfg.n_routed_experts


@pytest.mark.parametrize("name", list(CONFIGS))
def test_counts_equal_the_built_model(name):
    cfg = CONFIGS[name]
    model = built(cfg)
    assert count_parameters(cfg) == count_parameters(model)
    assert count_parameters(cfg).total == sum(p.numel() for p in model.parameters())
    act = costs.activated_params(cfg)
    assert act["total"] == activated_by_hand(model) == count_parameters(cfg).activated
    assert act["total"] == sum(v for k, v in act.items() if k != "total")
    d, V = cfg.hidden_size, cfg.vocab_size
    assert act["head"] == V * d + d                                  # output head + final norm
    per_layer = sum(p.numel() for n, p in model.layers[0].named_parameters() if n.startswith("ffn.shared_experts."))
    assert act["experts"] == cfg.num_hidden_layers * (
        per_layer + cfg.num_experts_per_tok * 3 * d * cfg.moe_intermediate_size)


# spec 1.3: "284B" = Flash without MTP (284.3B, 290.9B with it), 13.27B activated (13.80B with
# the embedding); "1.6T" = Pro with MTP (1598.8B, 1573.0B without), 48.85B activated (49.78B)
PUBLISHED = {
    "flash": dict(total=290.9e9, total_without_mtp=284.3e9, activated=13.27e9, activated_with_embedding=13.80e9),
    "pro": dict(total=1598.8e9, total_without_mtp=1573.0e9, activated=48.85e9, activated_with_embedding=49.78e9),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_counts_match_the_published_figures(name):
    cfg = V4Config.preset(name)
    got = count_parameters(cfg)
    for field, figure in PUBLISHED[name].items():
        digits = 0.05e9 if field.startswith("total") else 0.005e9      # the figures' last digit
        assert abs(getattr(got, field) - figure) <= digits, (field, getattr(got, field), figure)
    assert abs(costs.activated_params(cfg)["total"] - PUBLISHED[name]["activated"]) <= 0.005e9
    assert round(got.total_without_mtp / 1e9) == {"flash": 284, "pro": 1573}[name]
