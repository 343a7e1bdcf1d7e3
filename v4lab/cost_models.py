"""The models the cost model prices (:mod:`v4lab.costs`): any :class:`~v4lab.config.V4Config`,
DeepSeek-V3.2 (:class:`V32Config`) and a dense GQA baseline (:class:`DenseGQA`), their presets and
display names, and the activated parameters of a V4 config, summed from its parameter table
(:func:`v4lab.params.block_tensors`: the modules themselves, not a formula).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

from .config import V4Config
from .params import block_tensors, top_tensors

__all__ = ["V32Config", "DenseGQA", "PRESET_NAMES", "preset", "model_name", "resolve_model", "check_len",
           "COMPONENTS", "activated_params"]


# ----------------------------------------------------------------------------------------------
# The other models
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class V32Config:
    """DeepSeek-V3.2 as the cost model sees it (spec 10.1): MLA (absorbed) + DSA indexer."""

    name: str = "DeepSeek-V3.2"
    num_hidden_layers: int = 61
    hidden_size: int = 7168
    vocab_size: int = 129280
    num_attention_heads: int = 128
    kv_lora_rank: int = 512  # MLA latent; with the rope key, 576 values per cached entry
    qk_rope_head_dim: int = 64
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 2048
    activated_params: float = 37.48e9  # per token, incl. the output head
    deployed_entry_bytes: int = 656  # FlashMLA FP8: 512 fp8 + 4 fp32 scales + 64 bf16 rope
    deployed_indexer_bytes: int = 132  # FP8 key + fp32 scale

    @property
    def entry_dim(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def head_params(self) -> int:
        return self.vocab_size * self.hidden_size


@dataclass(frozen=True)
class DenseGQA:
    """A dense full-attention GQA baseline: every layer caches K and V of every token.

    Its linear layers are taken to be those of the V4 model it mirrors (``activated_params`` and
    ``head_params``), so that a comparison isolates attention.
    """

    name: str = "dense GQA-8"
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    num_key_value_heads: int = 8
    head_dim: int = 128
    activated_params: float = 0.0  # excluding the head
    head_params: int = 0

    @classmethod
    def like(cls, cfg: V4Config, num_key_value_heads: int = 8, head_dim: int = 128) -> "DenseGQA":
        p = activated_params(cfg)
        return cls(
            name=f"dense GQA-{num_key_value_heads}",
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=num_key_value_heads,
            head_dim=head_dim,
            activated_params=float(p["total"] - p["head"]),
            head_params=p["head"],
        )


_V4_NAMES = {"flash": "DeepSeek-V4-Flash", "pro": "DeepSeek-V4-Pro", "tiny": "V4 tiny", "flash-mini": "V4 flash-mini"}
PRESET_NAMES = tuple(_V4_NAMES) + ("v3.2", "dense")


def preset(name: str):
    """A model of the cost model by name: "flash", "pro", "tiny", "flash-mini" (V4Config),
    "v3.2" (V32Config) or "dense" (DenseGQA shaped like V4-Pro: 61 layers, 128 query heads)."""
    if name in _V4_NAMES:
        return V4Config.preset(name)
    if name == "v3.2":
        return V32Config()
    if name == "dense":
        return DenseGQA.like(V4Config.preset("pro"))
    raise ValueError(f"unknown cost-model preset {name!r}; choose one of {list(PRESET_NAMES)}")


def model_name(model) -> str:
    """Display name: "DeepSeek-V4-Pro" for the Pro preset, "V4 (custom, N layers)" otherwise."""
    model = resolve_model(model)
    if isinstance(model, (V32Config, DenseGQA)):
        return model.name
    for key, name in _V4_NAMES.items():
        if model == V4Config.preset(key):
            return name
    return f"V4 (custom, {model.num_hidden_layers} layers)"


def resolve_model(model):
    """``model`` itself, or the preset of that name; ValueError for anything else."""
    if isinstance(model, str):
        return preset(model)
    if isinstance(model, (V4Config, V32Config, DenseGQA)):
        return model
    raise ValueError(
        f"cannot price a {type(model).__name__}: pass a V4Config, V32Config, DenseGQA or one of {list(PRESET_NAMES)}"
    )


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------
def check_len(context_len, minimum: int, what: str = "context_len") -> int:
    """``context_len`` as an int, or a ValueError saying why it is not a token count >= ``minimum``."""
    if isinstance(context_len, bool) or not isinstance(context_len, numbers.Integral):
        raise ValueError(f"{what} must be an integer number of tokens, got {context_len!r}")
    if context_len < minimum:
        rule = "must be >= 0 (0 = empty cache)" if minimum == 0 else f"must be >= {minimum}"
        raise ValueError(f"{what} = {context_len}: {rule}")
    return int(context_len)



# ----------------------------------------------------------------------------------------------
# Activated parameters
# ----------------------------------------------------------------------------------------------
COMPONENTS = ("attn_proj", "compressor", "indexer", "mhc", "router", "experts", "head")
_ACTIVATED: dict[str, dict] = {}


def _component(rest: str) -> str:
    """The :data:`COMPONENTS` entry of a block tensor (its name after ``layers.N.``)."""
    if rest.startswith("attn.compressor."):
        return "compressor"
    if rest.startswith("attn.indexer."):
        return "indexer"
    if rest.startswith("attn.") or rest in ("attn_norm.weight", "ffn_norm.weight"):
        return "attn_proj"
    if rest.startswith("hc_"):
        return "mhc"
    if rest.startswith("ffn.gate."):
        return "router"
    if rest.startswith(("ffn.experts.", "ffn.shared_experts.")):
        return "experts"
    raise KeyError(f"activated_params: no component for the block tensor {rest!r}")


def activated_params(cfg: V4Config) -> dict:
    """Parameters touched by one token in the main layers + head, excluding the embedding lookup
    and the MTP block, summed over the model's parameter table. Keys:

    * "attn_proj": wq_a, q_norm, wq_b, wkv, kv_norm, wo_a, wo_b, attn_sink, attn_norm, ffn_norm
    * "compressor": main compressors (wkv, wgate, ape, norm) of CSA/HCA layers
    * "indexer": indexer wq_b, weights_proj and its compressor (CSA layers)
    * "mhc": hc_{attn,ffn}_{fn,base,scale} of every layer + hc_head_{fn,base,scale}
    * "router": gate.weight (+ gate.bias in learned-routing layers; the hash table is a lookup)
    * "experts": num_experts_per_tok routed experts + the shared experts (w1, w2, w3, biases)
    * "head": final norm + output head
    * "total": the sum (Flash 13.27e9, Pro 48.85e9, spec 1.3)
    """
    if not isinstance(cfg, V4Config):
        raise ValueError(f"activated_params needs a V4Config, got {type(cfg).__name__}")
    key = repr(cfg)
    if key not in _ACTIVATED:
        p = dict.fromkeys(COMPONENTS, 0)
        for i in range(cfg.num_hidden_layers):
            for e in block_tensors(cfg, i):
                if e.buffer:
                    continue
                if e.name.startswith("ffn.experts."):       # k of the equally shaped routed experts
                    if e.name.startswith("ffn.experts.0."):
                        p["experts"] += cfg.num_experts_per_tok * e.numel
                    continue
                p[_component(e.name)] += e.numel
        for e in top_tensors(cfg):
            if e.name != "embed.weight":
                p["mhc" if e.name.startswith("hc_head") else "head"] += e.numel
        p["total"] = sum(p.values())
        if len(_ACTIVATED) > 64:
            _ACTIVATED.clear()
        _ACTIVATED[key] = p
    return dict(_ACTIVATED[key])
