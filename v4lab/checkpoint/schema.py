"""The checkpoint schema: which tensors a config implies, under which names, in which format.

The tensors and their shapes come from the model itself (:func:`v4lab.params.block_tensors`, the
blocks built once per kind on the meta device); this module adds only what the files say and the
modules cannot: how the official checkpoint stores each tensor (:data:`LAYER_FORMATS`,
:data:`MTP_FORMATS`, :data:`TOP_FORMATS`, spec 8.2) and the order its files list them in, and the
``transformers`` names (spec 8.4, the maps of :mod:`v4lab.convert`).

Storage formats:

* ``fp8``    -- a linear stored in FP8 e4m3 with one ue8m0 ``.scale`` per 128 x 128 block;
* ``expert`` -- a routed-expert linear (``expert_dtype``: packed FP4, FP8 blocks, or the model dtype);
* ``model``  -- a weight in the model dtype (BF16 in the shipped files);
* ``norm``   -- an RMSNorm weight (the model dtype in the official files, F32 in ``transformers``);
* ``f32``    -- always F32 (mHC, sinks, ``ape``, router bias);
* ``i64``    -- the hash-routing table ``tid2eid``.
"""
from __future__ import annotations

import re
from typing import Iterable

from ..config import V4Config
from ..convert import OFF_TO_HF_GLOBAL, OFF_TO_HF_LAYER
from ..params import block_tensors, top_tensors
from ..quant import FP4_BLOCK

__all__ = [
    "KINDS", "LAYER_FORMATS", "MTP_FORMATS", "TOP_FORMATS", "LAYER_NAME_RE", "EXPERT_NAME_RE", "quant_modes",
    "fp8_block_of", "layer_schema", "checkpoint_schema", "expected_tensors", "model_tensor_names",
    "official_to_hf_name", "hf_to_official_name", "layer_part_kind", "tensor_kind", "detect_layout",
]

KINDS = (
    "embed/head", "attention", "compressor", "indexer", "router", "routed_experts",
    "shared_experts", "mhc", "norms", "mtp", "other",
)
"""Tensor kinds of the inspection report, in display order."""

# storage format of every tensor of a block, by name after "layers.N.", in the order the official
# files list them ("ffn.experts.*": every routed expert's w1, w2, w3, expert by expert)
LAYER_FORMATS = {
    "attn_norm.weight": "norm", "ffn_norm.weight": "norm",
    "hc_attn_fn": "f32", "hc_attn_base": "f32", "hc_attn_scale": "f32",
    "hc_ffn_fn": "f32", "hc_ffn_base": "f32", "hc_ffn_scale": "f32",
    "attn.wq_a.weight": "fp8", "attn.q_norm.weight": "norm", "attn.wq_b.weight": "fp8",
    "attn.wkv.weight": "fp8", "attn.kv_norm.weight": "norm",
    "attn.wo_a.weight": "fp8", "attn.wo_b.weight": "fp8", "attn.attn_sink": "f32",
    # compressor (CSA and HCA layers)
    "attn.compressor.wkv.weight": "model", "attn.compressor.wgate.weight": "model",
    "attn.compressor.ape": "f32", "attn.compressor.norm.weight": "norm",
    # Lightning Indexer (CSA layers)
    "attn.indexer.wq_b.weight": "fp8", "attn.indexer.weights_proj.weight": "model",
    "attn.indexer.compressor.wkv.weight": "model", "attn.indexer.compressor.wgate.weight": "model",
    "attn.indexer.compressor.ape": "f32", "attn.indexer.compressor.norm.weight": "norm",
    # router: a hash table in the first num_hash_layers, a bias elsewhere
    "ffn.gate.weight": "model", "ffn.gate.tid2eid": "i64", "ffn.gate.bias": "f32",
    "ffn.experts.*": "expert",
    "ffn.shared_experts.w1.weight": "fp8", "ffn.shared_experts.w2.weight": "fp8", "ffn.shared_experts.w3.weight": "fp8",
    # transformers' mlp_bias (V4's checkpoints have none)
    "ffn.shared_experts.w1.bias": "model", "ffn.shared_experts.w2.bias": "model", "ffn.shared_experts.w3.bias": "model",
}
MTP_FORMATS = {
    "e_proj.weight": "fp8", "h_proj.weight": "fp8",
    "enorm.weight": "norm", "hnorm.weight": "norm", "norm.weight": "norm",
    "hc_head_fn": "f32", "hc_head_base": "f32", "hc_head_scale": "f32",
}
"""The MTP block's own tensors (``mtp.0.``), after its block tensors."""
TOP_FORMATS = {
    "embed.weight": "model",       # first; the layers and the MTP block follow it
    "norm.weight": "norm", "hc_head_fn": "f32", "hc_head_base": "f32", "hc_head_scale": "f32",
    "head.weight": "model",
}
_PRECISION = {"f32": "fp32", "i64": "int64"}      # what the module holds for these formats

LAYER_NAME_RE = re.compile(r"^(?:model\.)?(layers|mtp)\.(\d+)\.(.+)$")
EXPERT_NAME_RE = re.compile(r"^ffn\.experts\.(\d+)\.(w[123])\.(weight|scale)$")
_MODEL_DTYPE = {"bfloat16": "BF16", "float32": "F32", "float16": "F16", "float64": "F64"}
_HF_F32 = ("f32", "norm")      # transformers keeps these in float32
_LAYER_FROM_HF = {v: k for k, v in OFF_TO_HF_LAYER.items()}
_GLOBAL_FROM_HF = {v: k for k, v in OFF_TO_HF_GLOBAL.items()}


# ------------------------------------------------------------------------------------------------
# what a config implies
# ------------------------------------------------------------------------------------------------
def _in_file_order(entries, formats: dict, where: str) -> list[tuple[str, str, tuple]]:
    """(name, storage, shape) of the table entries, sorted as the official files list them."""
    rank = {k: i for i, k in enumerate(formats)}
    out = []
    for e in entries:
        key = "ffn.experts.*" if e.name.startswith("ffn.experts.") else e.name
        storage = formats.get(key)
        if storage is None:
            raise KeyError(f"{where}{e.name}: the model has this tensor but the checkpoint schema gives it no format")
        if _PRECISION.get(storage, "model") != e.precision:
            raise TypeError(f"{where}{e.name}: the schema says {storage}, the module holds a {e.precision} tensor")
        out.append((rank[key], e.name, storage, e.shape))
    out.sort(key=lambda r: r[0])           # stable: the routed experts keep their module order
    return [r[1:] for r in out]


_ORDERED: dict[int, tuple] = {}            # id(block table) -> (block table, its entries in file order)


def layer_schema(cfg: V4Config, layer: int) -> list[tuple[str, str, tuple]]:
    """(name after ``layers.N.`` / ``mtp.0.``, storage format, shape) of every tensor of block
    ``layer`` in file order; ``layer == cfg.num_hidden_layers`` is the MTP block (its block
    tensors, then its own)."""
    table = block_tensors(cfg, layer)
    hit = _ORDERED.get(id(table))
    if hit is None or hit[0] is not table:
        formats = LAYER_FORMATS if layer < cfg.num_hidden_layers else {**LAYER_FORMATS, **MTP_FORMATS}
        where = f"layers.{layer}." if layer < cfg.num_hidden_layers else "mtp.0."
        if len(_ORDERED) > 256:
            _ORDERED.clear()
        hit = _ORDERED[id(table)] = (table, _in_file_order(table, formats, where))
    return hit[1]


def checkpoint_schema(cfg: V4Config, mtp: bool = True) -> list[tuple[str, str, tuple]]:
    """(official name, storage format, shape) of every tensor, in checkpoint order: the
    embedding, the layers, the MTP block (``mtp`` and a config with one), the final norm, the mHC
    head and the output head (none with ``tie_word_embeddings``)."""
    top = _in_file_order(top_tensors(cfg), TOP_FORMATS, "")
    if cfg.tie_word_embeddings:
        top = [t for t in top if t[0] != "head.weight"]
    out = top[:1]
    blocks = [(f"layers.{i}.", i) for i in range(cfg.num_hidden_layers)]
    if mtp and cfg.num_nextn_predict_layers:
        blocks.append(("mtp.0.", cfg.num_hidden_layers))
    for prefix, i in blocks:
        out += [(prefix + n, s, sh) for n, s, sh in layer_schema(cfg, i)]
    return out + top[1:]


def quant_modes(cfg: V4Config) -> tuple[tuple[int, int] | None, str | None]:
    """(FP8 block size or None, expert format 'fp4' | 'fp8' | None) from the config."""
    qc = cfg.quantization_config or {}
    block = None
    if qc and str(qc.get("quant_method", "fp8")).lower() == "fp8":
        bs = qc.get("weight_block_size") or [128, 128]
        block = (int(bs[0]), int(bs[1]))
    ed = (cfg.expert_dtype or "").lower() or None
    if ed not in (None, "fp4", "fp8"):
        ed = None           # "bf16" and friends: stored in the model dtype
    if ed == "fp8" and block is None:
        block = (128, 128)
    return block, ed


def fp8_block_of(cfg: V4Config | None) -> tuple[int, int]:
    """The FP8 block size of ``cfg`` (128 x 128 without a config or an FP8 quantisation)."""
    block = quant_modes(cfg)[0] if cfg is not None else None
    return block or (128, 128)


def _blocks(n: int, b: int) -> int:
    return -(-n // b)


def _official_entries(name, storage, shape, md, block, expert_fmt):
    if storage == "fp8" or (storage == "expert" and expert_fmt == "fp8"):
        if block is None:
            return [(name, md, shape)]
        scale = (_blocks(shape[0], block[0]), _blocks(shape[1], block[1]))
        return [(name, "F8_E4M3", shape), (name[:-len("weight")] + "scale", "F8_E8M0", scale)]
    if storage == "expert" and expert_fmt == "fp4":
        N, K = shape
        return [(name, "I8", (N, K // 2)), (name[:-len("weight")] + "scale", "F8_E8M0", (N, _blocks(K, FP4_BLOCK)))]
    if storage in ("model", "norm", "expert"):
        return [(name, md, shape)]
    return [(name, {"f32": "F32", "i64": "I64"}[storage], shape)]


def expected_tensors(cfg: V4Config, layout: str = "official") -> dict[str, tuple[str, tuple]]:
    """Every tensor ``cfg`` implies: name -> (safetensors dtype string, shape).

    ``layout="official"``: the shipped format.  Non-expert linears listed in spec 8.2 are
    F8_E4M3 + an F8_E8M0 ``.scale`` [ceil(N/128), ceil(K/128)] when ``cfg.quantization_config``
    asks for FP8; routed experts follow ``cfg.expert_dtype`` (``"fp4"``: I8 [N, K/2] + F8_E8M0
    scale [N, K/32]; ``"fp8"``: like the other linears; None: unquantised); the remaining weights
    and norms use the model dtype (``cfg.torch_dtype``; BF16 for Flash/Pro); mHC, sinks, ``ape``
    and ``gate.bias`` are F32; ``gate.tid2eid`` is I64.  Includes ``mtp.0.*`` when
    ``num_nextn_predict_layers == 1``.

    ``layout="hf"``: the ``transformers`` names (spec 8.4) with the ``model.`` prefix, fused
    experts ``mlp.experts.gate_up_proj`` [E, 2I, d] and ``down_proj`` [E, d, I], no MTP, no
    quantisation; the mHC parameters, sinks, ``position_bias``, ``e_score_correction_bias`` and
    all norms are F32 (transformers keeps them in float32), the other weights use the model dtype.
    """
    md = _MODEL_DTYPE[cfg.torch_dtype]
    if layout == "official":
        block, expert_fmt = quant_modes(cfg)
        out: dict[str, tuple[str, tuple]] = {}
        for name, storage, shape in checkpoint_schema(cfg):
            for k, dt, sh in _official_entries(name, storage, shape, md, block, expert_fmt):
                out[k] = (dt, tuple(sh))
        return out
    if layout == "hf":
        out = {}
        E, I, d = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.hidden_size
        for name, storage, shape in checkpoint_schema(cfg, mtp=False):
            if storage == "expert":
                m = LAYER_NAME_RE.match(name)
                if m.group(3) == "ffn.experts.0.w1.weight":
                    p = f"model.layers.{m.group(2)}.mlp.experts."
                    out[p + "gate_up_proj"] = (md, (E, 2 * I, d))
                    out[p + "down_proj"] = (md, (E, d, I))
                continue
            hf = official_to_hf_name(name)
            if hf is None:
                raise AssertionError(f"no transformers name for {name}")
            dt = "I64" if storage == "i64" else ("F32" if storage in _HF_F32 else md)
            out[hf] = (dt, tuple(shape))
        return out
    raise ValueError(f"layout must be 'official' or 'hf', got {layout!r}")


def model_tensor_names(cfg: V4Config) -> list[str]:
    """The ``state_dict()`` keys of ``V4Model(cfg)``: the official names without ``.scale``."""
    return [name for name, _, _ in checkpoint_schema(cfg)]


# ------------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------------
def official_to_hf_name(name: str) -> str | None:
    """The ``transformers`` name of an official tensor name; None for names transformers does
    not have (``mtp.*``, ``.scale`` tensors, single routed experts -- those are fused)."""
    if name in OFF_TO_HF_GLOBAL:
        return OFF_TO_HF_GLOBAL[name]
    m = LAYER_NAME_RE.match(name)
    if m and m.group(1) == "layers" and not name.startswith("model."):
        hf = OFF_TO_HF_LAYER.get(m.group(3))
        if hf is not None:
            return f"model.layers.{m.group(2)}.{hf}"
    return None


def hf_to_official_name(name: str) -> str | None:
    """The official name of a ``transformers`` tensor name; None for the fused experts
    (``mlp.experts.gate_up_proj`` / ``down_proj``) and unknown names."""
    if name in _GLOBAL_FROM_HF:
        return _GLOBAL_FROM_HF[name]
    if name.startswith("model.layers."):
        m = LAYER_NAME_RE.match(name)
        if m:
            off = _LAYER_FROM_HF.get(m.group(3))
            if off is not None:
                return f"layers.{m.group(2)}.{off}"
    return None


def layer_part_kind(rest: str) -> str:
    """The kind (:data:`KINDS`) of a tensor of a block, by its name after ``layers.N.``
    (official or ``transformers``)."""
    if rest.startswith(("ffn.experts.", "mlp.experts.")):       # most tensors: test first
        return "routed_experts"
    if rest.startswith(("attn.indexer.", "self_attn.compressor.indexer.")):
        return "indexer"
    if rest.startswith(("attn.compressor.", "self_attn.compressor.")):
        return "compressor"
    if rest.startswith(("attn.", "self_attn.")):
        return "attention"
    if rest.startswith(("ffn.gate.", "mlp.gate.")):
        return "router"
    if rest.startswith(("ffn.shared_experts.", "mlp.shared_experts.")):
        return "shared_experts"
    if rest.startswith(("hc_", "attn_hc.", "ffn_hc.")):
        return "mhc"
    if rest in ("attn_norm.weight", "ffn_norm.weight", "input_layernorm.weight", "post_attention_layernorm.weight"):
        return "norms"
    return "other"


def tensor_kind(name: str) -> str:
    """One of :data:`KINDS` for an official or ``transformers`` tensor name."""
    if name.startswith("mtp."):
        return "mtp"
    m = LAYER_NAME_RE.match(name)
    if m:
        return layer_part_kind(m.group(3))
    if name in ("embed.weight", "head.weight", "model.embed_tokens.weight", "lm_head.weight"):
        return "embed/head"
    if name in ("norm.weight", "model.norm.weight"):
        return "norms"
    if name.startswith(("hc_head_", "model.hc_head.")):
        return "mhc"
    return "other"


def detect_layout(names: Iterable[str]) -> str:
    """'hf' when most names carry the transformers prefixes (``model.`` / ``lm_head.``),
    'official' otherwise ('unknown' for no names)."""
    hf = off = 0
    for n in names:
        if n.startswith(("model.", "lm_head.")):
            hf += 1
        else:
            off += 1
    if hf == off == 0:
        return "unknown"
    return "hf" if hf > off else "official"
