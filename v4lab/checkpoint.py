"""DeepSeek-V4 checkpoints: what a config implies, header-only inspection, streamed loading.

Two layouts exist (spec section 8):

* **official** -- the shipped ``deepseek-ai/DeepSeek-V4-{Flash,Pro}`` files: reference module
  names without a ``model.`` prefix (``layers.3.attn.wq_a.weight``), FP8 e4m3 linear weights with
  a ue8m0 ``.scale`` per 128 x 128 block, routed experts as packed FP4 (int8 [N, K/2]) with a ue8m0
  scale per 32, everything else BF16/F32, ``tid2eid`` int64, and the MTP block ``mtp.0.*``.
* **hf** -- what ``transformers`` (``DeepseekV4ForCausalLM``) saves: ``model.layers.3.self_attn.
  q_a_proj.weight`` ..., unquantised, routed experts fused per layer
  (``mlp.experts.gate_up_proj`` [E, 2I, d] with the gate rows first, ``down_proj`` [E, d, I]),
  and no MTP block.

:func:`expected_tensors` lists every tensor a :class:`~v4lab.config.V4Config` implies in either
layout; :func:`inspect_checkpoint` reads only ``config.json``, the index and the safetensors
headers and compares.  The model's ``state_dict()`` uses the official names without the
``.scale`` tensors (weights dequantised), see :func:`model_tensor_names`.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

import torch

from .config import CSA_RATIO, V4Config
from .quant import dequant_fp4_experts, dequant_fp8_block, quant_fp4, quant_fp8_block
from .safetensors_io import (
    SafetensorsError,
    ShardedCheckpoint,
    dtype_to_torch,
    _no_gc,
    shard_file_name,
    write_index,
    write_safetensors,
    write_sharded_header_only,
)

__all__ = [
    "KINDS",
    "expected_tensors",
    "model_tensor_names",
    "official_to_hf_name",
    "hf_to_official_name",
    "tensor_kind",
    "detect_layout",
    "TensorMismatch",
    "CheckpointReport",
    "inspect_checkpoint",
    "iter_model_tensors",
    "iter_checkpoint_tensors",
    "write_checkpoint",
    "write_synthetic_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

KINDS = (
    "embed/head", "attention", "compressor", "indexer", "router", "routed_experts",
    "shared_experts", "mhc", "norms", "mtp", "other",
)
"""Tensor kinds of the inspection report, in display order."""

_MODEL_DTYPE = {"bfloat16": "BF16", "float32": "F32", "float16": "F16", "float64": "F64"}
_FP4_BLOCK = 32

# ------------------------------------------------------------------------------------------------
# what a config implies
# ------------------------------------------------------------------------------------------------
# "storage" classes of the logical tensors:
#   fp8    -- a linear that the official checkpoint stores in FP8 with 128x128 ue8m0 scales
#   expert -- a routed-expert linear (expert_dtype: fp4 packed, fp8 blocks, or the model dtype)
#   model  -- a weight stored in the model dtype (BF16 in the shipped files)
#   norm   -- an RMSNorm weight (model dtype in the official files, F32 in transformers)
#   f32    -- always F32 (mHC, sinks, ape, router bias)
#   i64    -- the hash-routing table


def _layer_logical(cfg: V4Config, ratio: int, hash_layer: bool) -> list[tuple[str, str, tuple]]:
    d, n = cfg.hidden_size, cfg.hc_mult
    H, D, ql = cfg.num_attention_heads, cfg.head_dim, cfg.q_lora_rank
    og, ol = cfg.o_groups, cfg.o_lora_rank
    mix = (2 + n) * n
    out = [
        ("attn_norm.weight", "norm", (d,)),
        ("ffn_norm.weight", "norm", (d,)),
    ]
    for part in ("attn", "ffn"):
        out += [
            (f"hc_{part}_fn", "f32", (mix, n * d)),
            (f"hc_{part}_base", "f32", (mix,)),
            (f"hc_{part}_scale", "f32", (3,)),
        ]
    out += [
        ("attn.wq_a.weight", "fp8", (ql, d)),
        ("attn.q_norm.weight", "norm", (ql,)),
        ("attn.wq_b.weight", "fp8", (H * D, ql)),
        ("attn.wkv.weight", "fp8", (D, d)),
        ("attn.kv_norm.weight", "norm", (D,)),
        ("attn.wo_a.weight", "fp8", (og * ol, H * D // og)),
        ("attn.wo_b.weight", "fp8", (d, og * ol)),
        ("attn.attn_sink", "f32", (H,)),
    ]
    if ratio:
        coff = 2 if ratio == CSA_RATIO else 1
        out += [
            ("attn.compressor.wkv.weight", "model", (coff * D, d)),
            ("attn.compressor.wgate.weight", "model", (coff * D, d)),
            ("attn.compressor.ape", "f32", (ratio, coff * D)),
            ("attn.compressor.norm.weight", "norm", (D,)),
        ]
    if ratio == CSA_RATIO:
        HI, cI = cfg.index_n_heads, cfg.index_head_dim
        out += [
            ("attn.indexer.wq_b.weight", "fp8", (HI * cI, ql)),
            ("attn.indexer.weights_proj.weight", "model", (HI, d)),
            ("attn.indexer.compressor.wkv.weight", "model", (2 * cI, d)),
            ("attn.indexer.compressor.wgate.weight", "model", (2 * cI, d)),
            ("attn.indexer.compressor.ape", "f32", (CSA_RATIO, 2 * cI)),
            ("attn.indexer.compressor.norm.weight", "norm", (cI,)),
        ]
    E, I = cfg.n_routed_experts, cfg.moe_intermediate_size
    out.append(("ffn.gate.weight", "model", (E, d)))
    if hash_layer:
        out.append(("ffn.gate.tid2eid", "i64", (cfg.vocab_size, cfg.num_experts_per_tok)))
    else:
        out.append(("ffn.gate.bias", "f32", (E,)))
    for e in range(E):
        out += [
            (f"ffn.experts.{e}.w1.weight", "expert", (I, d)),
            (f"ffn.experts.{e}.w2.weight", "expert", (d, I)),
            (f"ffn.experts.{e}.w3.weight", "expert", (I, d)),
        ]
    if cfg.n_shared_experts:
        Is = I * cfg.n_shared_experts
        out += [
            ("ffn.shared_experts.w1.weight", "fp8", (Is, d)),
            ("ffn.shared_experts.w2.weight", "fp8", (d, Is)),
            ("ffn.shared_experts.w3.weight", "fp8", (Is, d)),
        ]
    return out


def _logical(cfg: V4Config, mtp: bool = True) -> list[tuple[str, str, tuple]]:
    """(official name, storage class, logical shape) of every tensor, in checkpoint order."""
    d, n, V = cfg.hidden_size, cfg.hc_mult, cfg.vocab_size
    out = [("embed.weight", "model", (V, d))]
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        out += [(p + s, c, sh) for s, c, sh in _layer_logical(cfg, cfg.compress_ratios[i], cfg.is_hash_layer(i))]
    if mtp and cfg.num_nextn_predict_layers:
        p = "mtp.0."
        out += [(p + s, c, sh) for s, c, sh in _layer_logical(cfg, cfg.mtp_ratio, False)]
        out += [
            (p + "e_proj.weight", "fp8", (d, d)),
            (p + "h_proj.weight", "fp8", (d, d)),
            (p + "enorm.weight", "norm", (d,)),
            (p + "hnorm.weight", "norm", (d,)),
            (p + "norm.weight", "norm", (d,)),
            (p + "hc_head_fn", "f32", (n, n * d)),
            (p + "hc_head_base", "f32", (n,)),
            (p + "hc_head_scale", "f32", (1,)),
        ]
    out += [
        ("norm.weight", "norm", (d,)),
        ("hc_head_fn", "f32", (n, n * d)),
        ("hc_head_base", "f32", (n,)),
        ("hc_head_scale", "f32", (1,)),
    ]
    if not cfg.tie_word_embeddings:
        out.append(("head.weight", "model", (V, d)))
    return out


def _quant_modes(cfg: V4Config) -> tuple[tuple[int, int] | None, str | None]:
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
        return [(name, "I8", (N, K // 2)), (name[:-len("weight")] + "scale", "F8_E8M0", (N, _blocks(K, _FP4_BLOCK)))]
    if storage in ("model", "norm", "expert"):
        return [(name, md, shape)]
    if storage == "f32":
        return [(name, "F32", shape)]
    if storage == "i64":
        return [(name, "I64", shape)]
    raise AssertionError(storage)


# official per-layer suffix -> transformers suffix (experts are fused separately)
_LAYER_TO_HF = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "hc_attn_fn": "attn_hc.fn", "hc_attn_base": "attn_hc.base", "hc_attn_scale": "attn_hc.scale",
    "hc_ffn_fn": "ffn_hc.fn", "hc_ffn_base": "ffn_hc.base", "hc_ffn_scale": "ffn_hc.scale",
    "attn.wq_a.weight": "self_attn.q_a_proj.weight",
    "attn.q_norm.weight": "self_attn.q_a_norm.weight",
    "attn.wq_b.weight": "self_attn.q_b_proj.weight",
    "attn.wkv.weight": "self_attn.kv_proj.weight",
    "attn.kv_norm.weight": "self_attn.kv_norm.weight",
    "attn.wo_a.weight": "self_attn.o_a_proj.weight",
    "attn.wo_b.weight": "self_attn.o_b_proj.weight",
    "attn.attn_sink": "self_attn.sinks",
    "attn.compressor.wkv.weight": "self_attn.compressor.kv_proj.weight",
    "attn.compressor.wgate.weight": "self_attn.compressor.gate_proj.weight",
    "attn.compressor.ape": "self_attn.compressor.position_bias",
    "attn.compressor.norm.weight": "self_attn.compressor.kv_norm.weight",
    "attn.indexer.wq_b.weight": "self_attn.compressor.indexer.q_b_proj.weight",
    "attn.indexer.weights_proj.weight": "self_attn.compressor.indexer.scorer.weights_proj.weight",
    "attn.indexer.compressor.wkv.weight": "self_attn.compressor.indexer.kv_proj.weight",
    "attn.indexer.compressor.wgate.weight": "self_attn.compressor.indexer.gate_proj.weight",
    "attn.indexer.compressor.ape": "self_attn.compressor.indexer.position_bias",
    "attn.indexer.compressor.norm.weight": "self_attn.compressor.indexer.kv_norm.weight",
    "ffn.gate.weight": "mlp.gate.weight",
    "ffn.gate.bias": "mlp.gate.e_score_correction_bias",
    "ffn.gate.tid2eid": "mlp.gate.tid2eid",
    "ffn.shared_experts.w1.weight": "mlp.shared_experts.gate_proj.weight",
    "ffn.shared_experts.w3.weight": "mlp.shared_experts.up_proj.weight",
    "ffn.shared_experts.w2.weight": "mlp.shared_experts.down_proj.weight",
}
_GLOBAL_TO_HF = {
    "embed.weight": "model.embed_tokens.weight",
    "head.weight": "lm_head.weight",
    "norm.weight": "model.norm.weight",
    "hc_head_fn": "model.hc_head.hc_fn",
    "hc_head_base": "model.hc_head.hc_base",
    "hc_head_scale": "model.hc_head.hc_scale",
}
_LAYER_FROM_HF = {v: k for k, v in _LAYER_TO_HF.items()}
_GLOBAL_FROM_HF = {v: k for k, v in _GLOBAL_TO_HF.items()}
_LAYER_RE = re.compile(r"^(?:model\.)?(layers|mtp)\.(\d+)\.(.+)$")
_EXPERT_RE = re.compile(r"^ffn\.experts\.(\d+)\.(w[123])\.(weight|scale)$")


def official_to_hf_name(name: str) -> str | None:
    """The ``transformers`` name of an official tensor name; None for names transformers does
    not have (``mtp.*``, ``.scale`` tensors, single routed experts -- those are fused)."""
    if name in _GLOBAL_TO_HF:
        return _GLOBAL_TO_HF[name]
    m = _LAYER_RE.match(name)
    if m and m.group(1) == "layers" and not name.startswith("model."):
        hf = _LAYER_TO_HF.get(m.group(3))
        if hf is not None:
            return f"model.layers.{m.group(2)}.{hf}"
    return None


def hf_to_official_name(name: str) -> str | None:
    """The official name of a ``transformers`` tensor name; None for the fused experts
    (``mlp.experts.gate_up_proj`` / ``down_proj``) and unknown names."""
    if name in _GLOBAL_FROM_HF:
        return _GLOBAL_FROM_HF[name]
    if name.startswith("model.layers."):
        m = _LAYER_RE.match(name)
        if m:
            off = _LAYER_FROM_HF.get(m.group(3))
            if off is not None:
                return f"layers.{m.group(2)}.{off}"
    return None


_HF_F32 = ("f32", "norm")      # transformers keeps these in float32


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
        block, expert_fmt = _quant_modes(cfg)
        out: dict[str, tuple[str, tuple]] = {}
        for name, storage, shape in _logical(cfg):
            for k, dt, sh in _official_entries(name, storage, shape, md, block, expert_fmt):
                out[k] = (dt, tuple(sh))
        return out
    if layout == "hf":
        out = {}
        E, I, d = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.hidden_size
        for name, storage, shape in _logical(cfg, mtp=False):
            if storage == "expert":
                m = _LAYER_RE.match(name)
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
    return [name for name, _, _ in _logical(cfg)]


# ------------------------------------------------------------------------------------------------
# classification
# ------------------------------------------------------------------------------------------------
def _kind_of_layer_part(rest: str) -> str:
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
    m = _LAYER_RE.match(name)
    if m:
        return _kind_of_layer_part(m.group(3))
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


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorMismatch:
    """A tensor whose dtype or shape differs from what the config implies."""

    name: str
    file: str
    expected: tuple          # (dtype, shape)
    found: tuple             # (dtype, shape)

    def __str__(self) -> str:
        (ed, es), (fd, fs) = self.expected, self.found
        return f"{self.file}: tensor {self.name!r} is {fd} {list(fs)}, the config implies {ed} {list(es)}"


def _fmt_count(x: float | int | None) -> str:
    if x is None:
        return "-"
    for unit, v in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= v:
            return f"{x / v:.2f}{unit}"
    return f"{int(x)}"


def _fmt_bytes(x: int) -> str:
    for unit, v in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= v:
            return f"{x / v:.2f} {unit}"
    return f"{x} B"


@dataclass
class CheckpointReport:
    """What :func:`inspect_checkpoint` found.  ``text()`` (also ``str()``) renders it."""

    path: str
    layout: str
    config: V4Config | None
    config_error: str | None
    schedule: str | None
    files: list[str]
    n_tensors: int
    total_bytes: int
    index_total_size: int | None
    count_by_kind: dict[str, int]
    params_by_kind: dict[str, int]
    bytes_by_kind: dict[str, int]
    count_by_dtype: dict[str, int]
    bytes_by_dtype: dict[str, int]
    params_total: int
    params_mtp: int
    params_activated: int | None
    params_activated_with_embedding: int | None
    scale_tensors: int
    scale_bytes: int
    buffer_tensors: int
    structure: dict[str, int]
    mtp_structure: dict[str, int]
    expected_count: int | None
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    misshapen: list[TensorMismatch] = field(default_factory=list)
    wrong_dtype: list[TensorMismatch] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    file_of: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def params_main(self) -> int:
        """Parameters without the MTP block."""
        return self.params_total - self.params_mtp

    @property
    def ok(self) -> bool:
        """No file errors and every tensor present with the dtype and shape the config implies."""
        return not (self.errors or self.missing or self.unexpected or self.misshapen
                    or self.wrong_dtype or self.unreadable or self.config_error)

    def problems(self) -> list[str]:
        """Every problem as one line naming the file (where there is one) and the tensor."""
        out = list(self.errors)
        if self.config_error:
            out.append(self.config_error)
        out += [f"tensor {n!r} ({tensor_kind(n)}) is missing" for n in self.missing]
        out += [f"{self.file_of.get(n, '?')}: unexpected tensor {n!r}" for n in self.unexpected]
        out += [str(m) for m in self.misshapen]
        out += [str(m) for m in self.wrong_dtype]
        out += [f"{self.file_of.get(n, '?')}: tensor {n!r} is in a file that cannot be read" for n in self.unreadable]
        return out

    # ---------------------------------------------------------------- rendering
    def text(self, max_items: int = 8) -> str:
        L = []
        cfg = self.config
        quant = "FP8/FP4 weights + ue8m0 scales" if self.scale_tensors else "unquantised"
        layout = {"official": f"official (reference names; {quant})",
                  "hf": "transformers (model.* names, fused experts)"}.get(self.layout, self.layout)
        L.append(f"DeepSeek-V4 checkpoint: {self.path}")
        size = f"{_fmt_bytes(self.total_bytes)} of tensors"
        if self.index_total_size is not None:
            same = "matches" if self.index_total_size == self.total_bytes else "DIFFERS"
            size += f" (index total_size {self.index_total_size:,}: {same})"
        L.append(f"  layout   {layout}")
        L.append(f"  files    {len(self.files)} file(s), {self.n_tensors:,} tensors, {size}")
        if cfg is not None:
            L.append(
                f"  config   d={cfg.hidden_size}, {cfg.num_hidden_layers} layers"
                f"{' + 1 MTP block' if cfg.num_nextn_predict_layers else ''}, {cfg.num_attention_heads} heads x "
                f"{cfg.head_dim}, q_lora {cfg.q_lora_rank}, {cfg.n_routed_experts} experts "
                f"({cfg.num_experts_per_tok} active, width {cfg.moe_intermediate_size}), vocab {cfg.vocab_size:,}, "
                f"experts {cfg.expert_dtype or 'unquantised'}"
            )
            kinds = Counter(cfg.layer_types)
            L.append(
                f"  schedule {self.schedule}   ({kinds['window']} window-only, {kinds['csa']} CSA, {kinds['hca']} HCA;"
                f" S = window, C = CSA, H = HCA, after | the MTP block)"
            )
        elif self.config_error:
            L.append(f"  config   {self.config_error}")
        act = ""
        if self.params_activated is not None:
            act = (f"; activated per token {_fmt_count(self.params_activated)} "
                   f"({_fmt_count(self.params_activated_with_embedding)} with the embedding)")
        L.append(
            f"  params   {_fmt_count(self.params_total)} in all = {_fmt_count(self.params_main)} main + "
            f"{_fmt_count(self.params_mtp)} MTP{act}"
        )
        L.append("           (packed FP4 counts 2 parameters per byte; .scale tensors and tid2eid are not parameters)")
        s = self.structure
        L.append(
            f"  main     {s.get('layers', 0)} layers, {s.get('attn_sink', 0)} attn_sink, "
            f"{s.get('compressors', 0)} compressors, {s.get('indexers', 0)} indexers, "
            f"{s.get('routed_experts', 0):,} routed experts, {s.get('shared_experts', 0)} shared experts, "
            f"{s.get('gate_bias', 0)} gate.bias, {s.get('gate_tid2eid', 0)} gate.tid2eid"
        )
        if self.mtp_structure.get("blocks"):
            m = self.mtp_structure
            L.append(
                f"  MTP      {m['blocks']} block(s): {m.get('attn_sink', 0)} attn_sink, {m.get('compressors', 0)} compressors, "
                f"{m.get('routed_experts', 0):,} routed experts, {m.get('gate_bias', 0)} gate.bias"
            )
        L.append("  by kind                 tensors      params       bytes")
        for k in KINDS:
            if self.count_by_kind.get(k):
                L.append(f"    {k:<18} {self.count_by_kind[k]:>10,} {_fmt_count(self.params_by_kind.get(k, 0)):>11} "
                         f"{_fmt_bytes(self.bytes_by_kind.get(k, 0)):>11}")
        L.append("  by dtype                tensors       bytes")
        for dt in sorted(self.count_by_dtype, key=lambda d: -self.bytes_by_dtype.get(d, 0)):
            L.append(f"    {dt:<18} {self.count_by_dtype[dt]:>10,} {_fmt_bytes(self.bytes_by_dtype.get(dt, 0)):>11}")
        if self.scale_tensors:
            L.append(f"  scales   {self.scale_tensors:,} ue8m0 .scale tensors, {_fmt_bytes(self.scale_bytes)}")
        if self.expected_count is not None:
            verdict = "OK" if self.ok else "PROBLEMS"
            L.append(f"  check    {self.expected_count:,} tensors expected from the config: {verdict}")
        groups = [
            ("file errors", self.errors),
            ("missing", [f"{n}  ({tensor_kind(n)})" for n in self.missing]),
            ("unexpected", [f"{self.file_of.get(n, '?')}: {n}" for n in self.unexpected]),
            ("wrong shape", [str(m) for m in self.misshapen]),
            ("wrong dtype", [str(m) for m in self.wrong_dtype]),
            ("in unreadable files", self.unreadable),
            ("warnings", self.warnings),
        ]
        for title, items in groups:
            if not items:
                continue
            L.append(f"  {title} ({len(items):,}):")
            for it in items[:max_items]:
                L.append(f"    - {it}")
            if len(items) > max_items:
                L.append(f"    ... and {len(items) - max_items:,} more")
        return "\n".join(L)

    def __str__(self) -> str:
        return self.text()

    def _repr_pretty_(self, p, cycle):  # IPython / notebooks show the text form
        p.text(self.text())


def _params_of(dtype: str, shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return 2 * n if dtype == "I8" else n


class _Structure:
    """Counts of the structural units (sinks, compressors, indexers, experts, ...) of the main
    layers and of the MTP block."""

    def __init__(self):
        self.sets = ({}, {})        # (main, mtp): key -> set of layer ids / (layer, expert) pairs
        self.counts = ({}, {})      # (main, mtp): key -> count

    def add(self, is_mtp: bool, layer: int, rest: str, kind: str, shape) -> None:
        sets, counts = self.sets[is_mtp], self.counts[is_mtp]
        sets.setdefault("layers", set()).add(layer)
        if kind == "routed_experts":
            if rest.startswith("ffn.experts."):
                e = rest.split(".", 3)[2]
                sets.setdefault("routed_experts", set()).add((layer, e))
            elif rest == "mlp.experts.gate_up_proj" and shape:
                counts["fused_experts"] = counts.get("fused_experts", 0) + shape[0]
        elif kind in ("compressor", "indexer", "shared_experts"):
            sets.setdefault(kind + "s" if kind != "shared_experts" else kind, set()).add(layer)
        elif rest in ("attn.attn_sink", "self_attn.sinks"):
            counts["attn_sink"] = counts.get("attn_sink", 0) + 1
        elif rest in ("ffn.gate.bias", "mlp.gate.e_score_correction_bias"):
            counts["gate_bias"] = counts.get("gate_bias", 0) + 1
        elif rest in ("ffn.gate.tid2eid", "mlp.gate.tid2eid"):
            counts["gate_tid2eid"] = counts.get("gate_tid2eid", 0) + 1

    def result(self, is_mtp: bool) -> dict[str, int]:
        out = {k: len(v) for k, v in self.sets[is_mtp].items()}
        out.update(self.counts[is_mtp])
        if "fused_experts" in out:
            out["routed_experts"] = out.get("routed_experts", 0) + out.pop("fused_experts")
        for k in ("layers", "attn_sink", "compressors", "indexers", "routed_experts", "shared_experts",
                  "gate_bias", "gate_tid2eid"):
            out.setdefault(k, 0)
        if is_mtp:
            out["blocks"] = out.pop("layers")
        return out


def inspect_checkpoint(
    path: str | os.PathLike,
    config: V4Config | dict | None = None,
    layout: str | None = None,
) -> CheckpointReport:
    """Inspect a checkpoint from its ``config.json``, index and safetensors headers only.

    ``path``: a checkpoint folder (index + shards, or ``model.safetensors``), an index file or a
    single ``.safetensors`` file.  ``config``: a :class:`V4Config` (or config dict) to check
    against; default: ``config.json`` next to the weights.  ``layout``: 'official' | 'hf'
    (default: detected from the names).

    Reports the layout, tensor counts / bytes / parameters by kind and dtype, the parameter totals
    (all, without MTP, activated per token), the layer structure (attention sinks, compressors,
    indexers, routed experts, router biases / hash tables), and every file error (unreadable
    header, offsets outside the file or overlapping, sizes that do not match dtype x shape,
    truncated shards, index entries pointing at the wrong file) and every missing, unexpected,
    misshapen or wrongly typed tensor.  No payload byte is read.
    """
    with _no_gc():
        return _inspect(path, config, layout)


def _inspect(path, config, layout) -> CheckpointReport:
    ck = ShardedCheckpoint(path)
    folder = ck.folder or "."
    cfg: V4Config | None = None
    config_error = None
    if isinstance(config, V4Config):
        cfg = config
    elif isinstance(config, dict):
        cfg = V4Config.from_hf(config)
    else:
        cpath = os.path.join(folder, "config.json")
        if os.path.exists(cpath):
            try:
                cfg = V4Config.from_hf(cpath)
            except (ValueError, TypeError, KeyError, json.JSONDecodeError) as e:
                config_error = f"config.json: cannot be read as a V4 config: {e}"
        else:
            config_error = f"no config.json in {folder}: tensors not checked against a config"

    infos = ck.infos()
    errors, warnings = ck.problems()
    unreadable = sorted(ck.unreadable_names())
    names = list(infos)
    if layout is None:
        layout = detect_layout(names if names else (ck.weight_map or {}))

    # ---------------------------------------------------------------- counts
    count_k: Counter = Counter()
    params_k: Counter = Counter()
    bytes_k: Counter = Counter()
    count_d: Counter = Counter()
    bytes_d: Counter = Counter()
    scale_n = scale_b = buffers = 0
    params_total = params_mtp = routed_main = embed = 0
    file_of: dict[str, str] = {}
    st = _Structure()
    int_dtypes = ("I64", "I32", "I16", "U64", "U32", "U16", "U8", "BOOL")
    for name, t in infos.items():
        m = _LAYER_RE.match(name)
        if m is not None:
            rest = m.group(3)
            is_mtp = m.group(1) == "mtp"
            kind = _kind_of_layer_part(rest)
            st.add(is_mtp, int(m.group(2)), rest, kind, t.shape)
            if is_mtp:
                kind = "mtp"
        else:
            kind = tensor_kind(name)
        nb = t.end - t.begin
        count_k[kind] += 1
        bytes_k[kind] += nb
        count_d[t.dtype] += 1
        bytes_d[t.dtype] += nb
        if name.endswith(".scale") and (name[:-6] + ".weight") in infos:
            scale_n += 1
            scale_b += nb
            continue
        if t.dtype in int_dtypes:
            buffers += 1
            continue
        p = _params_of(t.dtype, t.shape)
        params_k[kind] += p
        params_total += p
        if kind == "mtp":
            params_mtp += p
        elif kind == "routed_experts":
            routed_main += p
        elif name in ("embed.weight", "model.embed_tokens.weight"):
            embed += p
    base = {}
    for name, t in infos.items():
        f = base.get(t.file)
        if f is None:
            f = base[t.file] = os.path.basename(t.file)
        file_of[name] = f
    for fname in ck.header_errors:
        file_of.setdefault(fname, fname)
    if ck.weight_map is not None:
        for n in unreadable:
            file_of[n] = ck.weight_map[n]

    activated = activated_e = None
    if cfg is not None:
        main = params_total - params_mtp
        act_routed = routed_main * cfg.num_experts_per_tok / cfg.n_routed_experts
        activated_e = int(round(main - routed_main + act_routed))
        activated = activated_e - embed


    # ---------------------------------------------------------------- compare with the config
    missing: list[str] = []
    unexpected: list[str] = []
    misshapen: list[TensorMismatch] = []
    wrong_dtype: list[TensorMismatch] = []
    expected_count = None
    if cfg is not None and layout in ("official", "hf"):
        exp = expected_tensors(cfg, layout)
        expected_count = len(exp)
        skip = set(unreadable)
        missing = [n for n in exp if n not in infos and n not in skip]
        unexpected = [n for n in infos if n not in exp]
        floats = {"BF16", "F16", "F32", "F64"}
        for n, (edt, eshape) in exp.items():
            t = infos.get(n)
            if t is None:
                continue
            if t.shape != eshape:
                misshapen.append(TensorMismatch(n, file_of[n], (edt, tuple(eshape)), (t.dtype, tuple(t.shape))))
            if t.dtype != edt and not (layout == "hf" and edt in floats and t.dtype in floats):
                wrong_dtype.append(TensorMismatch(n, file_of[n], (edt, tuple(eshape)), (t.dtype, tuple(t.shape))))

    return CheckpointReport(
        path=os.fspath(path),
        layout=layout,
        config=cfg,
        config_error=config_error,
        schedule=cfg.schedule_string() if cfg else None,
        files=list(ck.files),
        n_tensors=len(infos),
        total_bytes=sum(t.nbytes for t in infos.values()),
        index_total_size=ck.total_size,
        count_by_kind={k: count_k[k] for k in KINDS if count_k[k]},
        params_by_kind={k: params_k[k] for k in KINDS if count_k[k]},
        bytes_by_kind={k: bytes_k[k] for k in KINDS if count_k[k]},
        count_by_dtype=dict(count_d),
        bytes_by_dtype=dict(bytes_d),
        params_total=params_total,
        params_mtp=params_mtp,
        params_activated=activated,
        params_activated_with_embedding=activated_e,
        scale_tensors=scale_n,
        scale_bytes=scale_b,
        buffer_tensors=buffers,
        structure=st.result(False),
        mtp_structure=st.result(True),
        expected_count=expected_count,
        missing=missing,
        unexpected=unexpected,
        misshapen=misshapen,
        wrong_dtype=wrong_dtype,
        unreadable=unreadable,
        errors=errors,
        warnings=warnings,
        file_of=file_of,
    )


# ------------------------------------------------------------------------------------------------
# streaming conversion: checkpoint files <-> model tensors (official names, dequantised)
# ------------------------------------------------------------------------------------------------
def _block_of(cfg: V4Config | None) -> tuple[int, int]:
    if cfg is not None:
        block, _ = _quant_modes(cfg)
        if block is not None:
            return block
    return (128, 128)


def _ordered_names(ck: ShardedCheckpoint) -> list[str]:
    """Names in storage order (file by file, by offset), so that streaming reads sequentially."""
    out = []
    wm = ck.weight_map
    for fname in ck.files:
        h = ck.headers().get(fname)
        if h is None:
            raise SafetensorsError(ck.header_errors.get(fname, f"{fname}: unreadable"))
        for t in sorted(h.tensors.values(), key=lambda t: t.begin):
            if wm is None or wm.get(t.name) == fname:
                out.append(t.name)
    return out


def iter_model_tensors(
    source: str | os.PathLike | ShardedCheckpoint,
    cfg: V4Config | None = None,
    dtype: torch.dtype = torch.float32,
    names: Iterable[str] | None = None,
    strict: bool = True,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream a checkpoint (either layout) as model tensors: ``(official name, tensor)``.

    FP8 weights (+ ``.scale``) and packed FP4 experts (+ ``.scale``) are dequantised to ``dtype``;
    the other tensors come in their stored dtype (``copy_`` into a parameter converts them).
    ``transformers`` names are mapped back to the official ones and the fused experts split into
    ``ffn.experts.E.{w1,w3,w2}.weight``.  ``names`` restricts the output to those official names
    (for example one layer).  With ``strict``, names that belong to neither layout raise.
    Tensors are read from memory maps, one at a time, in storage order.
    """
    ck = source if isinstance(source, ShardedCheckpoint) else ShardedCheckpoint(source)
    if cfg is None and ck.folder and os.path.exists(os.path.join(ck.folder, "config.json")):
        cfg = V4Config.from_hf(os.path.join(ck.folder, "config.json"))
    block = _block_of(cfg)
    order = _ordered_names(ck)
    present = set(order)
    wanted = None if names is None else set(names)
    layout = detect_layout(order)

    def want(n: str) -> bool:
        return wanted is None or n in wanted

    for name in order:
        if layout == "official":
            if name.endswith(".scale") and name[:-6] + ".weight" in present:
                continue                                    # read together with its weight
            if not want(name):
                continue
            scale_name = name[:-7] + ".scale" if name.endswith(".weight") else None
            if scale_name is not None and scale_name in present:
                w, s = ck.read(name), ck.read(scale_name)
                if w.dtype == torch.int8:
                    yield name, dequant_fp4_experts(w, s, _FP4_BLOCK, dtype)
                else:
                    yield name, dequant_fp8_block(w, s, block, dtype)
            else:
                yield name, ck.read(name)
            continue
        # transformers layout
        m = _LAYER_RE.match(name)
        if m is not None and m.group(3) in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
            layer = m.group(2)
            t = ck.read(name)
            if m.group(3) == "mlp.experts.gate_up_proj":
                half = t.shape[1] // 2
                for e in range(t.shape[0]):
                    for wname, part in (("w1", t[e, :half]), ("w3", t[e, half:])):
                        off = f"layers.{layer}.ffn.experts.{e}.{wname}.weight"
                        if want(off):
                            yield off, part
            else:
                for e in range(t.shape[0]):
                    off = f"layers.{layer}.ffn.experts.{e}.w2.weight"
                    if want(off):
                        yield off, t[e]
            continue
        off = hf_to_official_name(name)
        if off is None:
            if strict:
                raise KeyError(f"{ck.file_of(name)}: tensor {name!r} has no DeepSeek-V4 meaning")
            continue
        if want(off):
            yield off, ck.read(name)


def iter_checkpoint_tensors(
    state: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    cfg: V4Config,
    layout: str = "official",
) -> Iterator[tuple[str, torch.Tensor]]:
    """Turn model tensors (official names, as in ``V4Model.state_dict()``) into checkpoint
    tensors of ``layout``, quantising where ``cfg`` says so (official layout: FP8 128x128 blocks
    for the linears of spec 8.2, packed FP4 for the routed experts when ``expert_dtype == "fp4"``)
    and casting the rest to the dtypes of :func:`expected_tensors`.  The ``transformers`` layout
    fuses each layer's experts (all of them must come before the next layer's) and drops
    ``mtp.*``."""
    items = state.items() if isinstance(state, Mapping) else state
    exp = expected_tensors(cfg, layout)
    block = _block_of(cfg)
    if layout == "official":
        for name, t in items:
            if name not in exp:
                raise KeyError(f"tensor {name!r} is not part of the official layout of this config")
            dt = exp[name][0]
            t = t.detach().cpu()
            if dt == "F8_E4M3":
                q, s = quant_fp8_block(t, block)
                yield name, q
                yield name[:-7] + ".scale", s
            elif dt == "I8":
                q, s = quant_fp4(t, _FP4_BLOCK)
                yield name, q
                yield name[:-7] + ".scale", s
            else:
                yield name, t.to(dtype_to_torch(dt))
        return
    if layout != "hf":
        raise ValueError(f"layout must be 'official' or 'hf', got {layout!r}")
    E = cfg.n_routed_experts
    pending: dict[str, dict] = {}
    for name, t in items:
        if name.startswith("mtp."):
            continue
        t = t.detach().cpu()
        m = _LAYER_RE.match(name)
        em = _EXPERT_RE.match(m.group(3)) if m else None
        if em is not None:
            layer = m.group(2)
            p = pending.setdefault(layer, {})
            p[(int(em.group(1)), em.group(2))] = t
            if len(p) == 3 * E:
                dt = dtype_to_torch(exp[f"model.layers.{layer}.mlp.experts.gate_up_proj"][0])
                gate_up = torch.stack([torch.cat([p[(e, "w1")], p[(e, "w3")]], 0) for e in range(E)]).to(dt)
                down = torch.stack([p[(e, "w2")] for e in range(E)]).to(dt)
                del pending[layer]
                yield f"model.layers.{layer}.mlp.experts.gate_up_proj", gate_up
                yield f"model.layers.{layer}.mlp.experts.down_proj", down
            continue
        hf = official_to_hf_name(name)
        if hf is None or hf not in exp:
            raise KeyError(f"tensor {name!r} has no transformers counterpart for this config")
        yield hf, t.to(dtype_to_torch(exp[hf][0]))
    if pending:
        layer = next(iter(pending))
        raise ValueError(f"layer {layer}: only {len(pending[layer])} of the {3 * E} routed expert weights were given")


def write_checkpoint(
    folder: str | os.PathLike,
    tensors: Iterable[tuple[str, torch.Tensor]],
    cfg: V4Config | None = None,
    layout: str = "official",
    max_shard_bytes: int = 4 * 1024**3,
) -> dict:
    """Write ``(name, tensor)`` pairs as a sharded safetensors checkpoint (shards of at most
    ``max_shard_bytes`` payload, ``model-0000i-of-0000n.safetensors`` + index), holding one shard
    in memory at a time; with ``cfg``, also ``config.json`` (official keys for the official
    layout, the ``transformers`` form otherwise).  Returns the index dict."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    tmp_names: list[str] = []
    weight_map_tmp: dict[str, int] = {}
    total = 0
    shard: dict[str, torch.Tensor] = {}
    size = 0

    def flush():
        nonlocal shard, size
        if not shard:
            return
        tmp = os.path.join(folder, f".partial-{len(tmp_names):05d}.safetensors")
        write_safetensors(tmp, shard)
        for k in shard:
            weight_map_tmp[k] = len(tmp_names)
        tmp_names.append(tmp)
        shard, size = {}, 0

    for name, t in tensors:
        if name in weight_map_tmp or name in shard:
            raise ValueError(f"tensor {name!r} given twice")
        n = t.numel() * t.element_size()
        if shard and size + n > max_shard_bytes:
            flush()
        shard[name] = t
        size += n
        total += n
    flush()
    n_files = len(tmp_names)
    final = [shard_file_name(i + 1, n_files) for i in range(n_files)]
    for tmp, fname in zip(tmp_names, final):
        os.replace(tmp, os.path.join(folder, fname))
    weight_map = {k: final[i] for k, i in weight_map_tmp.items()}
    write_index(folder, weight_map, total)
    if cfg is not None:
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(cfg.to_official() if layout == "official" else cfg.to_hf(), f, indent=2)
    return {"metadata": {"total_size": total}, "weight_map": weight_map}


def write_synthetic_checkpoint(
    folder: str | os.PathLike,
    cfg: V4Config,
    layout: str = "official",
    n_shards: int | None = None,
    max_shard_bytes: int = 4 * 1024**3,
) -> dict:
    """Write a header-only checkpoint with every tensor ``cfg`` implies, real shapes and dtypes,
    and sparse payloads (all zeros, no disk space on file systems with sparse files), plus the
    index and ``config.json``.  A Flash-shaped one (``V4Config.preset("flash")``, 46 shards) is
    what :func:`inspect_checkpoint` sees on the real 160 GB download.  Returns the index dict."""
    folder = os.fspath(folder)
    index = write_sharded_header_only(folder, expected_tensors(cfg, layout), max_shard_bytes, n_shards)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg.to_official() if layout == "official" else cfg.to_hf(), f, indent=2)
    return index


# ------------------------------------------------------------------------------------------------
# model-level load / save
# ------------------------------------------------------------------------------------------------
# MODEL HOOK: the two functions below only use ``V4Model(cfg)``, ``model.state_dict()`` (official
# names without ``.scale``, see model_tensor_names) and ``model.config``; adjust here if the model
# class names them differently.
def _model_config(model) -> V4Config:
    for attr in ("config", "cfg"):
        c = getattr(model, attr, None)
        if isinstance(c, V4Config):
            return c
    raise AttributeError("save_checkpoint: the model has no V4Config in .config; pass cfg=")


@torch.no_grad()
def load_checkpoint(
    path: str | os.PathLike,
    model=None,
    *,
    cfg: V4Config | None = None,
    strict: bool = True,
):
    """Load a checkpoint (official FP8/FP4 files or the ``transformers`` layout) into ``model``
    (default: a new ``V4Model`` built from the checkpoint's ``config.json``), streaming one tensor
    at a time and dequantising on the way.  A ``transformers`` checkpoint has no MTP block, so
    ``mtp.*`` parameters are left as they are.  With ``strict``, missing, unexpected or
    misshapen tensors raise ``KeyError``/``ValueError``.  Returns the model."""
    ck = ShardedCheckpoint(path)
    if cfg is None:
        cpath = os.path.join(ck.folder, "config.json")
        if model is not None and not os.path.exists(cpath):
            cfg = _model_config(model)
        else:
            cfg = V4Config.from_hf(cpath)
    if model is None:
        from .model import V4Model  # MODEL HOOK

        model = V4Model(cfg)
    sd = model.state_dict()
    loaded: set[str] = set()
    unexpected: list[str] = []
    for name, t in iter_model_tensors(ck, cfg, dtype=torch.float32, strict=strict):
        dst = sd.get(name)
        if dst is None:
            unexpected.append(name)
            continue
        if tuple(dst.shape) != tuple(t.shape):
            raise ValueError(f"{ck.file_of(name) if name in ck else path}: tensor {name!r} has shape "
                             f"{list(t.shape)}, the model expects {list(dst.shape)}")
        dst.copy_(t)
        loaded.add(name)
    layout = detect_layout(ck.names())
    missing = [n for n in sd if n not in loaded and not (layout == "hf" and n.startswith("mtp."))]
    if strict and (missing or unexpected):
        raise KeyError(
            f"{path}: {len(missing)} model tensors missing from the checkpoint {missing[:5]}, "
            f"{len(unexpected)} checkpoint tensors unknown to the model {unexpected[:5]}"
        )
    return model


def save_checkpoint(
    model,
    path: str | os.PathLike,
    *,
    cfg: V4Config | None = None,
    layout: str = "official",
    quantize: bool = True,
    max_shard_bytes: int = 4 * 1024**3,
) -> dict:
    """Save ``model`` as a sharded checkpoint with ``config.json``.

    ``layout="official"`` writes the shipped format; with ``quantize`` the linears become FP8 and
    the experts packed FP4 as ``cfg.quantization_config`` / ``cfg.expert_dtype`` say (configs
    without them, like the small presets, are written unquantised).  ``quantize=False`` writes
    every weight in the model dtype.  ``layout="hf"`` writes what ``transformers`` loads (no MTP).
    Returns the index dict."""
    cfg = cfg or _model_config(model)
    if not quantize:
        cfg = cfg.replace(quantization_config=None, expert_dtype=None)
    tensors = iter_checkpoint_tensors(model.state_dict(), cfg, layout)
    return write_checkpoint(path, tensors, cfg, layout, max_shard_bytes)
