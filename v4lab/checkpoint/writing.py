"""Writing checkpoints: model tensors -> checkpoint tensors of either layout
(:func:`iter_checkpoint_tensors`: FP8 blocks and packed FP4 experts for the official files, names
and fused experts for ``transformers``), sharded files written one shard at a time with the
``safetensors`` library (:func:`write_checkpoint`), and header-only checkpoints with every tensor
a config implies (:func:`write_synthetic_checkpoint`)."""
from __future__ import annotations

import json
import os
from typing import Iterable, Iterator, Mapping

import torch
import torch.nn as nn

from ..config import V4Config
from ..packed_experts import PackedFP4, PackedFP4Linear
from ..quant import E8M0_DTYPE, FP4_BLOCK, quant_fp4, quant_fp8_block
from ..safetensors_io import dtype_to_torch, write_safetensors
from .schema import EXPERT_NAME_RE, LAYER_NAME_RE, expected_tensors, fp8_block_of, official_to_hf_name
from .shards import shard_file_name, write_index, write_sharded_header_only

__all__ = ["model_state_items", "iter_checkpoint_tensors", "write_checkpoint", "write_synthetic_checkpoint"]


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
    block = fp8_block_of(cfg)
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
                q, s = quant_fp4(t, FP4_BLOCK)
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
        m = LAYER_NAME_RE.match(name)
        em = EXPERT_NAME_RE.match(m.group(3)) if m else None
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
