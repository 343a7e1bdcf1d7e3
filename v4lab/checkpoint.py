"""DeepSeek-V4 checkpoints: what a config implies, header-only inspection, streamed loading.

Two layouts exist (spec section 8):

* **official** -- the shipped ``deepseek-ai/DeepSeek-V4-{Flash,Pro}`` files: reference module
  names without a ``model.`` prefix (``layers.3.attn.wq_a.weight``), FP8 e4m3 linear weights with
  a ue8m0 ``.scale`` per 128 x 128 block, routed experts as packed FP4 (int8 [N, K/2]) with a ue8m0
  scale per 32, everything else BF16/F32, ``tid2eid`` int64 (int32, as DeepSeek's reference code
  declares it, loads too), and the MTP block ``mtp.0.*``.
* **hf** -- what ``transformers`` (``DeepseekV4ForCausalLM``) saves: ``model.layers.3.self_attn.
  q_a_proj.weight`` ..., unquantised, routed experts fused per layer
  (``mlp.experts.gate_up_proj`` [E, 2I, d] with the gate rows first, ``down_proj`` [E, d, I]),
  and no MTP block.

:func:`expected_tensors` lists every tensor a :class:`~v4lab.config.V4Config` implies in either
layout; :func:`inspect_checkpoint` reads only ``config.json``, the index and the safetensors
headers and compares, and :func:`verify_checkpoint` turns what it finds into one
:class:`CheckpointError` naming files and tensors.  The model's ``state_dict()`` uses the
official names without the ``.scale`` tensors (weights dequantised), see
:func:`model_tensor_names`.

Loading and saving whole models: :func:`load_checkpoint` (either layout, FP8/FP4 dequantised on
the way, or routed experts kept packed in :class:`PackedFP4Linear`), :func:`save_checkpoint`
(official FP8/FP4 or ``transformers`` layout).  :class:`CheckpointReader` reads single tensors by
model name from memory-mapped shards; ``v4lab.streaming`` builds on it to run models larger than
memory one layer at a time, or to place them with ``accelerate``.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import V4Config
from .quant import E8M0_DTYPE, dequant_fp4_experts, dequant_fp8_block, quant_fp4, quant_fp8_block, ue8m0_bytes
from .safetensors_io import (
    INDEX_NAME,
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
    "CheckpointError",
    "checkpoint_config",
    "verify_checkpoint",
    "CheckpointReader",
    "iter_model_tensors",
    "iter_checkpoint_tensors",
    "model_state_items",
    "PackedFP4",
    "PackedFP4Linear",
    "pack_experts",
    "model_skeleton",
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


def _layer_logical(cfg: V4Config, layer: int, hash_layer: bool) -> list[tuple[str, str, tuple]]:
    """Layer ``layer``'s tensors (``num_hidden_layers`` = the MTP block)."""
    ratio, csa = cfg.compress_ratios[layer], cfg.layer_kind(layer) == "csa"
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
        coff = 2 if csa else 1
        out += [
            ("attn.compressor.wkv.weight", "model", (coff * D, d)),
            ("attn.compressor.wgate.weight", "model", (coff * D, d)),
            ("attn.compressor.ape", "f32", (ratio, coff * D)),
            ("attn.compressor.norm.weight", "norm", (D,)),
        ]
    if csa:
        HI, cI = cfg.index_n_heads, cfg.index_head_dim
        out += [
            ("attn.indexer.wq_b.weight", "fp8", (HI * cI, ql)),
            ("attn.indexer.weights_proj.weight", "model", (HI, d)),
            ("attn.indexer.compressor.wkv.weight", "model", (2 * cI, d)),
            ("attn.indexer.compressor.wgate.weight", "model", (2 * cI, d)),
            ("attn.indexer.compressor.ape", "f32", (ratio, 2 * cI)),
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
        if cfg.mlp_bias:  # transformers' mlp_bias (V4's checkpoints have none)
            out += [
                ("ffn.shared_experts.w1.bias", "model", (Is,)),
                ("ffn.shared_experts.w2.bias", "model", (d,)),
                ("ffn.shared_experts.w3.bias", "model", (Is,)),
            ]
    return out


def _logical(cfg: V4Config, mtp: bool = True) -> list[tuple[str, str, tuple]]:
    """(official name, storage class, logical shape) of every tensor, in checkpoint order."""
    d, n, V = cfg.hidden_size, cfg.hc_mult, cfg.vocab_size
    out = [("embed.weight", "model", (V, d))]
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        out += [(p + s, c, sh) for s, c, sh in _layer_logical(cfg, i, cfg.is_hash_layer(i))]
    if mtp and cfg.num_nextn_predict_layers:
        p = "mtp.0."
        out += [(p + s, c, sh) for s, c, sh in _layer_logical(cfg, cfg.num_hidden_layers, False)]
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


# the one name mapping (spec 8.4), shared with v4lab.convert.from_transformers
from .convert import _OFF_TO_HF_GLOBAL as _GLOBAL_TO_HF  # noqa: E402
from .convert import _OFF_TO_HF_LAYER as _LAYER_TO_HF  # noqa: E402

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
            # tid2eid: int64 (v4lab, transformers) or int32 (as DeepSeek's reference code declares it)
            if t.dtype != edt and not (layout == "hf" and edt in floats and t.dtype in floats) \
                    and not (edt == "I64" and t.dtype == "I32"):
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
# checking a checkpoint before reading a payload
# ------------------------------------------------------------------------------------------------
class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is.  The message lists the problems; each names
    the file (a shard, the index or ``config.json``) and the tensor at fault."""


_FLOATS = {"BF16", "F16", "F32", "F64"}
EXPERT_MODES = ("dequantize", "packed")


def checkpoint_config(source: str | os.PathLike | ShardedCheckpoint) -> V4Config:
    """The :class:`V4Config` of ``config.json`` next to the weights (either form: official keys or
    the ``transformers`` ones); :class:`CheckpointError` when it is absent or unreadable."""
    ck = source if isinstance(source, ShardedCheckpoint) else ShardedCheckpoint(source)
    cpath = os.path.join(ck.folder or ".", "config.json")
    if not os.path.exists(cpath):
        raise CheckpointError(f"{ck.folder or '.'}: no config.json next to the weights; pass cfg= explicitly")
    try:
        return V4Config.from_hf(cpath)
    except (ValueError, TypeError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"config.json: cannot be read as a DeepSeek-V4 config: {e}") from e


def _layout_hints(report: CheckpointReport, cfg: V4Config, source: str) -> list[str]:
    hints = []
    fp4_as_other = [m for m in report.wrong_dtype if m.found[0] == "I8" and ".experts." in m.name]
    other_as_fp4 = [m for m in report.wrong_dtype if m.expected[0] == "I8" and ".experts." in m.name]
    if fp4_as_other:
        hints.append(f"the routed experts are stored as packed FP4 (I8 + one ue8m0 scale per 32), but {source} "
                     f"says expert_dtype={cfg.expert_dtype!r}: set expert_dtype to 'fp4'")
    if other_as_fp4:
        hints.append(f"{source} says expert_dtype='fp4' but the routed experts are stored as "
                     f"{other_as_fp4[0].found[0]}: the config does not describe these files")
    if report.misshapen and not (fp4_as_other or other_as_fp4):
        c = cfg
        hints.append(
            f"{len(report.misshapen)} tensor(s) have other shapes than {source} implies (hidden_size={c.hidden_size}, "
            f"{c.num_hidden_layers} layers, {c.num_attention_heads} heads x {c.head_dim}, q_lora_rank={c.q_lora_rank}, "
            f"{c.n_routed_experts} experts of width {c.moe_intermediate_size}, vocab {c.vocab_size}): "
            "does the config belong to these weights?")
    return hints


def verify_checkpoint(
    path: str | os.PathLike,
    cfg: V4Config | None = None,
    strict: bool = True,
) -> CheckpointReport:
    """Check a checkpoint against its config from ``config.json``, the index and the safetensors
    headers only, and raise :class:`CheckpointError` on anything that would make loading crash or
    give a silently wrong model: unreadable or truncated shards, headers whose offsets lie
    (outside the file, overlapping, sizes that do not match dtype x shape), tensors the index
    places in files that lack them, tensors of the wrong shape (a ``config.json`` that does not
    match the weights, a ``.scale`` of the wrong shape) or of the wrong dtype (FP4 experts where
    the config says FP8, and vice versa), and -- with ``strict`` -- missing and unexpected
    tensors.  Without ``strict``, missing/unexpected tensors and float tensors stored in another
    float dtype are let through.  Returns the :class:`CheckpointReport`."""
    path = os.fspath(path)
    ck = ShardedCheckpoint(path)
    source = "config.json"
    if cfg is None:
        cfg = checkpoint_config(ck)
    elif not os.path.exists(os.path.join(ck.folder or ".", "config.json")):
        source = "the config"
    report = inspect_checkpoint(path, cfg)
    lines = list(report.errors)
    if report.layout not in ("official", "hf"):
        lines.append(f"{path}: no tensors found")
    where = INDEX_NAME if ck.index is not None else os.path.basename(os.path.normpath(ck.folder or path))
    for n in report.unreadable:
        lines.append(f"{report.file_of.get(n, '?')}: tensor {n!r} is in a file that cannot be read")
    lines += [str(m) for m in report.misshapen]
    for m in report.wrong_dtype:
        if not strict and m.found[0] in _FLOATS and m.expected[0] in _FLOATS:
            continue
        lines.append(str(m))
    if strict:
        exp = expected_tensors(cfg, report.layout) if report.layout in ("official", "hf") else {}
        for n in report.missing:
            dt, sh = exp[n]
            lines.append(f"{where}: tensor {n!r} is missing (the config implies {dt} {list(sh)})")
        for n in report.unexpected:
            lines.append(f"{report.file_of.get(n, '?')}: unexpected tensor {n!r} (not part of the {report.layout} "
                         f"layout of this config)")
    if lines:
        hints = _layout_hints(report, cfg, source)
        shown = lines[:20]
        more = [f"... and {len(lines) - 20} more"] if len(lines) > 20 else []
        raise CheckpointError(
            f"{path}: cannot load this checkpoint ({len(lines)} problem(s)):\n  - "
            + "\n  - ".join(hints + shown + more)
        )
    return report


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


def _file(ck: ShardedCheckpoint, name: str) -> str:
    try:
        return ck.file_of(name)
    except KeyError:
        return "?"


def _dequantised(ck: ShardedCheckpoint, name: str, scale_name: str, block, dtype) -> torch.Tensor:
    """Read ``name`` and its ``.scale`` and dequantise (packed FP4 for int8 weights, FP8 blocks
    otherwise); any problem becomes a :class:`CheckpointError` naming the file and the tensors."""
    w, s = ck.read(name), ck.read(scale_name)
    try:
        if w.dtype == torch.int8:
            return dequant_fp4_experts(w, s, _FP4_BLOCK, dtype)
        return dequant_fp8_block(w, s, block, dtype)
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{_file(ck, name)}: tensor {name!r} with {scale_name!r} ({_file(ck, scale_name)}): {e}") from e


def _checked_scale(ck: ShardedCheckpoint, name: str) -> torch.Tensor:
    """A ue8m0 ``.scale`` read as stored (for packed experts), refusing the NaN byte 0xFF."""
    s = ck.read(name)
    if s.element_size() == 1 and bool((s.view(torch.uint8) == 0xFF).any()):
        n = int((s.view(torch.uint8) == 0xFF).sum())
        raise CheckpointError(f"{_file(ck, name)}: tensor {name!r} holds {n} NaN byte(s) (0xFF): corrupt scales")
    return s


def iter_model_tensors(
    source: str | os.PathLike | ShardedCheckpoint,
    cfg: V4Config | None = None,
    dtype: torch.dtype = torch.float32,
    names: Iterable[str] | None = None,
    strict: bool = True,
    packed_experts: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream a checkpoint (either layout) as model tensors: ``(official name, tensor)``.

    FP8 weights (+ ``.scale``) and packed FP4 experts (+ ``.scale``) are dequantised to ``dtype``;
    the other tensors come in their stored dtype (``copy_`` into a parameter converts them).
    With ``packed_experts``, packed FP4 experts are not dequantised: their int8 ``weight`` and
    ue8m0 ``scale`` come as stored (for :class:`PackedFP4Linear`).
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
                if packed_experts and ck.header_of(name).tensors[name].dtype == "I8":
                    yield name, ck.read(name)
                    yield scale_name, _checked_scale(ck, scale_name)
                else:
                    yield name, _dequantised(ck, name, scale_name, block, dtype)
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


_MODEL_EXPERT_RE = re.compile(r"^layers\.(\d+)\.ffn\.experts\.(\d+)\.(w[123])\.(weight|scale)$")


class CheckpointReader:
    """Random access to a checkpoint's tensors under the model's names (the official names), in
    either layout, from memory maps of the shards: only the bytes of the tensors asked for are
    read.  The checkpoint is checked first (:func:`verify_checkpoint`, header only).

    ``read(name)`` dequantises FP8 weights and packed FP4 experts to ``dtype``;
    ``read(name, raw=True)`` gives the stored tensor (an int8 packed expert, its ue8m0 ``.scale``,
    a BF16 embedding ...).  In the ``transformers`` layout one routed expert is a slice of the
    layer's fused tensor."""

    def __init__(self, path: str | os.PathLike, cfg: V4Config | None = None, *, verify: bool = True,
                 strict: bool = True):
        self.path = os.fspath(path)
        self.ck = ShardedCheckpoint(self.path)
        self.cfg = cfg if cfg is not None else checkpoint_config(self.ck)
        self.report = verify_checkpoint(self.path, self.cfg, strict) if verify else None
        names = self.ck.names()
        self.layout = self.report.layout if self.report is not None else detect_layout(names)
        self._present = set(names)
        self.block = _block_of(self.cfg)

    def _stored(self, name: str) -> str:
        """The checkpoint name that holds model tensor ``name`` (the fused tensor for an expert in
        the transformers layout)."""
        if self.layout == "official":
            return name
        m = _MODEL_EXPERT_RE.match(name)
        if m is not None:
            fused = "gate_up_proj" if m.group(3) in ("w1", "w3") else "down_proj"
            return f"model.layers.{m.group(1)}.mlp.experts.{fused}"
        hf = official_to_hf_name(name)
        return hf if hf is not None else name

    def __contains__(self, name: str) -> bool:
        if self.layout == "hf" and name.endswith(".scale"):
            return False
        return self._stored(name) in self._present

    def file_of(self, name: str) -> str:
        """The file that holds model tensor ``name``."""
        return _file(self.ck, self._stored(name))

    def is_packed_fp4(self, name: str) -> bool:
        """Whether ``name`` (a ``...weight``) is stored as packed FP4 with a ``.scale``."""
        if self.layout != "official" or not name.endswith(".weight"):
            return False
        scale = name[:-7] + ".scale"
        return scale in self._present and self.ck.header_of(name).tensors[name].dtype == "I8"

    def read(self, name: str, dtype: torch.dtype = torch.float32, raw: bool = False) -> torch.Tensor:
        """Model tensor ``name`` (official name): dequantised to ``dtype`` when stored quantised
        (unless ``raw``), else as stored (a zero-copy view of the memory map)."""
        stored = self._stored(name)
        if stored not in self._present:
            raise KeyError(f"{self.path}: the checkpoint has no tensor {stored!r} (model tensor {name!r})")
        if self.layout == "official":
            scale = name[:-7] + ".scale" if name.endswith(".weight") else None
            if not raw and scale is not None and scale in self._present:
                return _dequantised(self.ck, name, scale, self.block, dtype)
            if name.endswith(".scale"):
                return _checked_scale(self.ck, name)
            return self.ck.read(name)
        t = self.ck.read(stored)
        m = _MODEL_EXPERT_RE.match(name)
        if m is not None:
            e, w = int(m.group(2)), m.group(3)
            half = t.shape[1] // 2
            return t[e, :half] if w == "w1" else (t[e, half:] if w == "w3" else t[e])
        return t


# ------------------------------------------------------------------------------------------------
# routed experts kept in packed FP4
# ------------------------------------------------------------------------------------------------
class PackedFP4(NamedTuple):
    """A packed FP4 weight as stored: int8 codes [..., N, K/2] (low nibble first) and ue8m0
    scales [..., N, K/32]."""

    weight: torch.Tensor
    scale: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequant_fp4_experts(self.weight, self.scale, _FP4_BLOCK, dtype)


class PackedFP4Linear(nn.Module):
    """A bias-free ``nn.Linear(in_features, out_features)`` whose weight stays in the packed FP4
    form of the official checkpoint: buffer ``weight`` int8 [out, in/2] (two e2m1 codes per
    byte, low nibble first) and buffer ``scale`` [out, in/32] (ue8m0 bytes, stored as uint8 so
    that ``Module.to(dtype)`` leaves it alone).  Each call dequantises the weight to
    ``compute_dtype`` (exactly the values a dequantised model holds) and applies it, so a routed
    expert takes about a quarter of its bf16 bytes (0.53 bytes per parameter) between calls.

    ``state_dict()`` names are the checkpoint's: ``...w1.weight`` (int8) and ``...w1.scale``."""

    def __init__(self, in_features: int, out_features: int, compute_dtype: torch.dtype = torch.float32,
                 device=None, block: int = _FP4_BLOCK):
        super().__init__()
        if in_features % block or block % 2:
            raise ValueError(f"PackedFP4Linear: in_features ({in_features}) must be a multiple of the block ({block})")
        self.in_features, self.out_features, self.block = in_features, out_features, block
        self.compute_dtype = compute_dtype
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.full((out_features, in_features // block), 127, dtype=torch.uint8,
                                                 device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, block: int = _FP4_BLOCK) -> "PackedFP4Linear":
        """A packed copy of ``linear``: its weight is quantised to FP4 (lossy) unless it lives on
        the meta device (a skeleton), in which case the buffers stay on meta too."""
        w = linear.weight
        m = cls(linear.in_features, linear.out_features, w.dtype, device=w.device, block=block)
        if w.device.type != "meta":
            q, s = quant_fp4(w.detach(), block)
            m.weight.copy_(q)
            m.scale.copy_(ue8m0_bytes(s))
        return m

    def dequantized(self) -> torch.Tensor:
        """The weight [out, in] in ``compute_dtype``."""
        return dequant_fp4_experts(self.weight, self.scale, self.block, torch.float32).to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, fp4 blocks of {self.block}, "
                f"compute_dtype={self.compute_dtype}")


def pack_experts(model: nn.Module) -> int:
    """Replace ``w1``/``w2``/``w3`` of every routed expert (main layers and MTP block) by
    :class:`PackedFP4Linear` (quantising real weights, keeping meta ones meta); shared experts
    stay as they are.  Returns the number of linears replaced."""
    from .moe import MoE

    n = 0
    for mod in model.modules():
        if not isinstance(mod, MoE):
            continue
        for expert in mod.experts:
            for wname in ("w1", "w2", "w3"):
                lin = getattr(expert, wname)
                if isinstance(lin, nn.Linear):
                    setattr(expert, wname, PackedFP4Linear.from_linear(lin))
                    n += 1
    return n


def model_state_items(model: nn.Module) -> Iterator[tuple[str, torch.Tensor | PackedFP4]]:
    """``model.state_dict()`` as (name, tensor) pairs, with each :class:`PackedFP4Linear` given
    once as (``...weight``, :class:`PackedFP4`) (its ``.scale`` as ue8m0)."""
    packed = {name + "." for name, m in model.named_modules() if isinstance(m, PackedFP4Linear)}
    sd = model.state_dict()
    for name, t in sd.items():
        p = name[: name.rfind(".") + 1]
        if p in packed:
            if name.endswith(".scale"):
                continue
            s = sd[p + "scale"]
            yield name, PackedFP4(t, s.view(E8M0_DTYPE) if s.dtype == torch.uint8 else s)
        else:
            yield name, t


def iter_checkpoint_tensors(
    state: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    cfg: V4Config,
    layout: str = "official",
) -> Iterator[tuple[str, torch.Tensor]]:
    """Turn model tensors (official names, as in ``V4Model.state_dict()`` or
    :func:`model_state_items`) into checkpoint tensors of ``layout``, quantising where ``cfg``
    says so (official layout: FP8 128x128 blocks for the linears of spec 8.2, packed FP4 for the
    routed experts when ``expert_dtype == "fp4"``; :class:`PackedFP4` values are written as they
    are, without a second rounding) and casting the rest to the dtypes of
    :func:`expected_tensors`.  The ``transformers`` layout fuses each layer's experts (all of
    them must come before the next layer's) and drops ``mtp.*``."""
    items = state.items() if isinstance(state, Mapping) else state
    exp = expected_tensors(cfg, layout)
    block = _block_of(cfg)
    if layout == "official":
        for name, t in items:
            if name not in exp:
                raise KeyError(f"tensor {name!r} is not part of the official layout of this config")
            dt = exp[name][0]
            if isinstance(t, PackedFP4):
                if dt == "I8":
                    yield name, t.weight.detach().cpu()
                    yield name[:-7] + ".scale", t.scale.detach().cpu()
                    continue
                t = t.dequantize()
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
        if isinstance(t, PackedFP4):
            t = t.dequantize()
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
# MODEL HOOK: the functions below use ``V4Model(cfg, ..., device="meta", init=False)``,
# ``model.state_dict()`` (official names without ``.scale``, see model_tensor_names),
# ``model.init_weights``, ``model.set_numerics`` and ``model.config``.
def _model_config(model) -> V4Config:
    for attr in ("config", "cfg"):
        c = getattr(model, attr, None)
        if isinstance(c, V4Config):
            return c
    raise AttributeError("the model has no V4Config in .config; pass cfg=")


def model_skeleton(cfg: V4Config, dtype: torch.dtype = torch.float32, numerics: str = "reference",
                   backend: str = "torch", experts: str = "dequantize") -> nn.Module:
    """A ``V4Model`` whose parameters and buffers all live on the meta device (no memory, any
    size), ready for ``to_empty`` + loading, for streaming or for ``accelerate``; with
    ``experts="packed"`` its routed experts are :class:`PackedFP4Linear` (meta buffers)."""
    from .model import V4Model

    if experts not in EXPERT_MODES:
        raise ValueError(f"experts must be one of {EXPERT_MODES}, got {experts!r}")
    model = V4Model(cfg, backend=backend, numerics=numerics, dtype=dtype, device="meta", init=False)
    if experts == "packed":
        pack_experts(model)
    return model


def _assign(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.dtype == torch.uint8 and src.dtype != torch.uint8 and src.element_size() == 1:
        src = src.view(torch.uint8)            # ue8m0 scale bytes into a PackedFP4Linear
    dst.copy_(src)


def _check_packable(report: CheckpointReport, cfg: V4Config, path: str) -> None:
    _, expert_fmt = _quant_modes(cfg)
    if report.layout != "official" or expert_fmt != "fp4":
        raise CheckpointError(
            f"{path}: experts='packed' keeps routed experts in the packed FP4 form of the official files, but this "
            f"checkpoint has the {report.layout} layout with expert_dtype={cfg.expert_dtype!r}; "
            "use experts='dequantize'")


@torch.no_grad()
def load_checkpoint(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    numerics: str | None = None,
    experts: str = "dequantize",
    model=None,
    strict: bool = True,
    *,
    cfg: V4Config | None = None,
    seed: int = 0,
):
    """Load a checkpoint -- the official FP8/FP4 files or the ``transformers`` layout, detected
    from the names -- as a ``V4Model``.

    ``path``: a checkpoint folder (index + shards, or ``*.safetensors``), an index file or one
    ``.safetensors`` file; ``config.json`` next to the weights gives the config (or ``cfg=``).
    The checkpoint is first checked from its headers (:func:`verify_checkpoint`): a truncated or
    lying shard, a missing/unexpected/misshapen/mistyped tensor or a config that does not match
    the weights raises :class:`CheckpointError` naming the file and the tensor, before any model
    memory is allocated.  The model is built on the meta device, materialised on ``device`` with
    parameters in ``dtype`` (mHC, sinks, ``ape`` and router bias stay fp32, as in ``V4Model``),
    and filled one tensor at a time from memory maps, dequantising on the way.

    ``numerics``: ``"reference"`` (default for a new model), ``"hf"`` (for parity with
    ``transformers``) or ``"deployed"`` (a bf16 model computing as DeepSeek's deployed inference
    code: see ``V4Model``).  ``experts``: ``"dequantize"`` (routed experts become ``dtype`` weights)
    or ``"packed"`` (they stay packed FP4 in :class:`PackedFP4Linear` and are dequantised per
    call: identical logits, about 0.53 bytes per expert parameter; needs the official layout with
    ``expert_dtype: fp4``).  ``model``: load into this model instead (its dtype/device are
    kept).  A ``transformers`` checkpoint has no MTP block: a new model's MTP block is freshly
    initialised (``seed``).  ``strict=False`` lets missing and unexpected tensors through (the
    missing ones keep a fresh initialisation).  Returns the model.
    """
    if experts not in EXPERT_MODES:
        raise ValueError(f"experts must be one of {EXPERT_MODES}, got {experts!r}")
    path = os.fspath(path)
    ck = ShardedCheckpoint(path)
    if cfg is None:
        has_json = os.path.exists(os.path.join(ck.folder or ".", "config.json"))
        cfg = _model_config(model) if model is not None and not has_json else checkpoint_config(ck)
    report = verify_checkpoint(path, cfg, strict=strict)
    layout = report.layout
    packed = experts == "packed"
    if packed:
        _check_packable(report, cfg, path)
    if model is None:
        model = model_skeleton(cfg, dtype, numerics or "reference", experts=experts)
        model.to_empty(device=device)
        if layout == "hf" or not strict:
            model.init_weights(seed)          # for what the files lack (a transformers checkpoint's MTP block)
            for m in model.modules():
                if isinstance(m, PackedFP4Linear):
                    m.weight.zero_()
                    m.scale.fill_(127)
    else:
        if numerics is not None:
            model.set_numerics(numerics)
        if packed:
            pack_experts(model)
    sd = model.state_dict()
    loaded: set[str] = set()
    unexpected: list[str] = []
    for name, t in iter_model_tensors(ck, cfg, dtype=torch.float32, strict=strict, packed_experts=packed):
        dst = sd.get(name)
        if dst is None:
            unexpected.append(name)
            continue
        if tuple(dst.shape) != tuple(t.shape):
            raise CheckpointError(f"{_file(ck, name)}: tensor {name!r} has shape {list(t.shape)}, the model "
                                  f"expects {list(dst.shape)}")
        _assign(dst, t)
        loaded.add(name)
    missing = [n for n in sd if n not in loaded and not (layout == "hf" and n.startswith("mtp."))]
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{path}: {len(missing)} model tensors missing from the checkpoint {missing[:5]}, "
            f"{len(unexpected)} checkpoint tensors unknown to the model {unexpected[:5]}"
        )
    return model


def save_checkpoint(
    model,
    path: str | os.PathLike,
    format: str | None = None,
    quantize: bool = True,
    max_shard_bytes: int = 4 * 1024**3,
    *,
    cfg: V4Config | None = None,
    layout: str | None = None,
) -> dict:
    """Save ``model`` as a sharded checkpoint (``model-0000i-of-0000n.safetensors`` + index, one
    shard in memory at a time) with ``config.json``.

    ``format="official"`` (default; ``layout=`` is an alias) writes the shipped format: with
    ``quantize`` the linears of spec 8.2 become FP8 e4m3 with ue8m0 128x128 block scales when
    ``cfg.quantization_config`` asks for FP8, and the routed experts packed FP4 (ue8m0 per 32)
    when ``cfg.expert_dtype == "fp4"``; configs without them (the small presets) are written
    unquantised, and ``quantize=False`` writes every weight unquantised (``config.json`` then
    says so).  Experts already packed (:class:`PackedFP4Linear`) are written as they are.
    ``format="hf"`` writes what ``transformers.DeepseekV4ForCausalLM.from_pretrained`` loads:
    ``model.*`` names, fused experts, no MTP block, no quantisation, ``config.json`` in the
    ``transformers`` form.  Returns the index dict."""
    if format is not None and layout is not None and format != layout:
        raise ValueError(f"format={format!r} and layout={layout!r} disagree")
    fmt = format or layout or "official"
    if fmt not in ("official", "hf"):
        raise ValueError(f"format must be 'official' or 'hf', got {fmt!r}")
    cfg = cfg or _model_config(model)
    if not quantize or fmt == "hf":
        cfg = cfg.replace(quantization_config=None, expert_dtype=None)
    tensors = iter_checkpoint_tensors(model_state_items(model), cfg, fmt)
    return write_checkpoint(path, tensors, cfg, fmt, max_shard_bytes)
