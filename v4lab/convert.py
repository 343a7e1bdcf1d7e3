"""Name mapping between the official checkpoint layout and the ``transformers`` port (spec 8.4).

Our module names *are* the official names, so converting a ``transformers`` model is: rename its
tensors, split the fused expert tensors, and load.  The checkpoint loader uses the same mapping.
"""
from __future__ import annotations

import re

import torch

from .config import V4Config

__all__ = [
    "LAYER_RENAMES", "GLOBAL_RENAMES", "OFF_TO_HF_LAYER", "HF_TO_OFF_LAYER", "OFF_TO_HF_GLOBAL", "HF_TO_OFF_GLOBAL",
    "hf_to_official", "official_to_hf", "from_transformers", "load_official_state",
]

# official suffix (after "layers.N.") <- transformers suffix (after "model.layers.N.")
LAYER_RENAMES = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("hc_attn_fn", "attn_hc.fn"),
    ("hc_attn_base", "attn_hc.base"),
    ("hc_attn_scale", "attn_hc.scale"),
    ("hc_ffn_fn", "ffn_hc.fn"),
    ("hc_ffn_base", "ffn_hc.base"),
    ("hc_ffn_scale", "ffn_hc.scale"),
    ("attn.wq_a.weight", "self_attn.q_a_proj.weight"),
    ("attn.q_norm.weight", "self_attn.q_a_norm.weight"),
    ("attn.wq_b.weight", "self_attn.q_b_proj.weight"),
    ("attn.wkv.weight", "self_attn.kv_proj.weight"),
    ("attn.kv_norm.weight", "self_attn.kv_norm.weight"),
    ("attn.wo_a.weight", "self_attn.o_a_proj.weight"),
    ("attn.wo_b.weight", "self_attn.o_b_proj.weight"),
    ("attn.attn_sink", "self_attn.sinks"),
    ("attn.compressor.wkv.weight", "self_attn.compressor.kv_proj.weight"),
    ("attn.compressor.wgate.weight", "self_attn.compressor.gate_proj.weight"),
    ("attn.compressor.ape", "self_attn.compressor.position_bias"),
    ("attn.compressor.norm.weight", "self_attn.compressor.kv_norm.weight"),
    ("attn.indexer.wq_b.weight", "self_attn.compressor.indexer.q_b_proj.weight"),
    ("attn.indexer.weights_proj.weight", "self_attn.compressor.indexer.scorer.weights_proj.weight"),
    ("attn.indexer.compressor.wkv.weight", "self_attn.compressor.indexer.kv_proj.weight"),
    ("attn.indexer.compressor.wgate.weight", "self_attn.compressor.indexer.gate_proj.weight"),
    ("attn.indexer.compressor.ape", "self_attn.compressor.indexer.position_bias"),
    ("attn.indexer.compressor.norm.weight", "self_attn.compressor.indexer.kv_norm.weight"),
    ("ffn.gate.weight", "mlp.gate.weight"),
    ("ffn.gate.bias", "mlp.gate.e_score_correction_bias"),
    ("ffn.gate.tid2eid", "mlp.gate.tid2eid"),
    ("ffn.shared_experts.w1.weight", "mlp.shared_experts.gate_proj.weight"),
    ("ffn.shared_experts.w3.weight", "mlp.shared_experts.up_proj.weight"),
    ("ffn.shared_experts.w2.weight", "mlp.shared_experts.down_proj.weight"),
    ("ffn.shared_experts.w1.bias", "mlp.shared_experts.gate_proj.bias"),  # mlp_bias=True only
    ("ffn.shared_experts.w3.bias", "mlp.shared_experts.up_proj.bias"),
    ("ffn.shared_experts.w2.bias", "mlp.shared_experts.down_proj.bias"),
]
GLOBAL_RENAMES = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("head.weight", "lm_head.weight"),
    ("norm.weight", "model.norm.weight"),
    ("hc_head_fn", "model.hc_head.hc_fn"),
    ("hc_head_base", "model.hc_head.hc_base"),
    ("hc_head_scale", "model.hc_head.hc_scale"),
]
# the one name mapping (spec 8.4), used by the checkpoint loader too
HF_TO_OFF_LAYER = {hf: off for off, hf in LAYER_RENAMES}
OFF_TO_HF_LAYER = {off: hf for off, hf in LAYER_RENAMES}
HF_TO_OFF_GLOBAL = {hf: off for off, hf in GLOBAL_RENAMES}
OFF_TO_HF_GLOBAL = {off: hf for off, hf in GLOBAL_RENAMES}
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_OFF_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_OFF_EXPERT = re.compile(r"^ffn\.experts\.(\d+)\.(w[123])\.weight$")


def hf_to_official(sd: dict, cfg: V4Config | None = None) -> dict:
    """``transformers`` state dict -> official names (fused experts split into w1/w3/w2)."""
    out = {}
    for name, t in sd.items():
        if name in HF_TO_OFF_GLOBAL:
            out[HF_TO_OFF_GLOBAL[name]] = t
            continue
        m = _HF_LAYER.match(name)
        if not m:
            raise KeyError(f"unexpected tensor in a transformers DeepseekV4 state dict: {name!r}")
        i, rest = m.groups()
        if rest == "mlp.experts.gate_up_proj":  # [E, 2I, d], gate rows first
            inter = t.shape[1] // 2
            for e in range(t.shape[0]):
                out[f"layers.{i}.ffn.experts.{e}.w1.weight"] = t[e, :inter]
                out[f"layers.{i}.ffn.experts.{e}.w3.weight"] = t[e, inter:]
        elif rest == "mlp.experts.down_proj":  # [E, d, I]
            for e in range(t.shape[0]):
                out[f"layers.{i}.ffn.experts.{e}.w2.weight"] = t[e]
        elif rest in HF_TO_OFF_LAYER:
            out[f"layers.{i}.{HF_TO_OFF_LAYER[rest]}"] = t
        else:
            raise KeyError(f"unexpected tensor in a transformers DeepseekV4 state dict: {name!r}")
    return out


def official_to_hf(sd: dict, cfg: V4Config) -> dict:
    """Official names -> ``transformers`` names (experts fused; ``mtp.*`` dropped, HF has no MTP)."""
    out, experts = {}, {}
    for name, t in sd.items():
        if name.startswith("mtp."):
            continue
        if name in OFF_TO_HF_GLOBAL:
            out[OFF_TO_HF_GLOBAL[name]] = t
            continue
        m = _OFF_LAYER.match(name)
        if not m:
            raise KeyError(f"unexpected tensor name {name!r}")
        i, rest = m.groups()
        e = _OFF_EXPERT.match(rest)
        if e:
            experts.setdefault(int(i), {})[(int(e.group(1)), e.group(2))] = t
        elif rest in OFF_TO_HF_LAYER:
            out[f"model.layers.{i}.{OFF_TO_HF_LAYER[rest]}"] = t
        else:
            raise KeyError(f"unexpected tensor name {name!r}")
    for i, ex in experts.items():
        E = cfg.n_routed_experts
        out[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([ex[(e, "w1")], ex[(e, "w3")]], 0) for e in range(E)])
        out[f"model.layers.{i}.mlp.experts.down_proj"] = torch.stack([ex[(e, "w2")] for e in range(E)])
    return out


def from_transformers(hf_model, numerics: str = "hf", backend: str = "torch"):
    """Build a ``V4Model`` from a ``transformers`` ``DeepseekV4ForCausalLM`` (config and weights),
    through the same name mapping as real checkpoints.  Uses ``numerics="hf"`` unless told
    otherwise.  The HF port has no MTP block: ours keeps its freshly initialised one."""
    from .model import V4Model

    hc = hf_model.config
    d = hc.to_dict()
    if hasattr(hc, "qk_rope_head_dim"):  # runtime-only attribute of the HF config
        d["qk_rope_head_dim"] = hc.qk_rope_head_dim
    # fields the transformers port reads but does not compute with: its attention always has one
    # shared K=V head, its MoE block always one shared expert of moe_intermediate_size, and it has
    # no MTP block (ours keeps one, freshly initialised); the config says what it computes
    d.update(num_key_value_heads=1, n_shared_experts=1,
             num_nextn_predict_layers=min(1, int(d.get("num_nextn_predict_layers", 1))))
    cfg = V4Config.from_hf(d)
    sd = hf_to_official(hf_model.state_dict(), cfg)
    dtype = next(hf_model.parameters()).dtype
    model = V4Model(cfg, numerics=numerics, backend=backend, dtype=dtype, device=next(hf_model.parameters()).device)
    load_official_state(model, sd, strict_mtp=False)
    return model


def load_official_state(model, sd: dict, strict_mtp: bool = True) -> None:
    """Copy an official-name state dict into ``model``, checking names and shapes with clear
    errors.  With strict_mtp=False a missing ``mtp.*`` group is allowed."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and (strict_mtp or not k.startswith("mtp."))]
    extra = [k for k in sd if k not in own]
    bad = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or extra or bad:
        lines = []
        if missing:
            lines.append(f"missing tensors ({len(missing)}): {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if extra:
            lines.append(f"unexpected tensors ({len(extra)}): {extra[:8]}{' ...' if len(extra) > 8 else ''}")
        for k, got, want in bad[:8]:
            lines.append(f"tensor {k!r} has shape {got}, the config implies {want}")
        raise ValueError("state dict does not match the model config:\n  " + "\n  ".join(lines))
    with torch.no_grad():
        for k, t in sd.items():
            own[k].copy_(t.to(own[k].dtype))
