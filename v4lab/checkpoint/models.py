"""Whole models from and to checkpoints: :func:`model_skeleton` (a ``V4Model`` on the meta
device), :func:`load_checkpoint` (either layout, checked from its headers first, filled one
tensor at a time) and :func:`save_checkpoint` (the official FP8/FP4 files or the ``transformers``
layout)."""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from ..config import V4Config
from ..packed_experts import PackedFP4Linear, pack_experts
from .inspection import checkpoint_config, verify_checkpoint
from .reading import iter_model_tensors, tensor_file
from .report import CheckpointError, CheckpointReport
from .schema import quant_modes
from .shards import ShardedCheckpoint
from .writing import iter_checkpoint_tensors, model_state_items, write_checkpoint

__all__ = ["EXPERT_MODES", "model_skeleton", "check_packable", "load_checkpoint", "save_checkpoint"]

EXPERT_MODES = ("dequantize", "packed")
"""How a loaded model holds its routed experts: dequantised weights or packed FP4."""


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
    from ..model import V4Model

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


def check_packable(report: CheckpointReport, cfg: V4Config, path: str) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint of ``report`` keeps its routed experts
    in packed FP4 (the official layout with ``expert_dtype: fp4``), as ``experts="packed"`` needs."""
    _, expert_fmt = quant_modes(cfg)
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
        check_packable(report, cfg, path)
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
            raise CheckpointError(f"{tensor_file(ck, name)}: tensor {name!r} has shape {list(t.shape)}, the model "
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
