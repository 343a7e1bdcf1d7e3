"""Routed experts kept in the packed FP4 form of the official checkpoint (spec 8.3): two e2m1
codes per int8 byte (low nibble first) and one ue8m0 scale per 32 along K, dequantised per call
with the codecs of :mod:`v4lab.quant`.

:class:`PackedFP4` is one such weight as stored; :class:`PackedFP4Linear` a bias-free linear
holding one; :func:`pack_experts` swaps a model's routed experts for them (about 0.53 bytes per
expert parameter instead of 2 in bf16, identical logits).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .quant import FP4_BLOCK, dequant_fp4_experts, quant_fp4, ue8m0_bytes

__all__ = ["PackedFP4", "PackedFP4Linear", "pack_experts"]


class PackedFP4(NamedTuple):
    """A packed FP4 weight as stored: int8 codes [..., N, K/2] (low nibble first) and ue8m0
    scales [..., N, K/32]."""

    weight: torch.Tensor
    scale: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequant_fp4_experts(self.weight, self.scale, FP4_BLOCK, dtype)


class PackedFP4Linear(nn.Module):
    """A bias-free ``nn.Linear(in_features, out_features)`` whose weight stays in the packed FP4
    form of the official checkpoint: buffer ``weight`` int8 [out, in/2] (two e2m1 codes per
    byte, low nibble first) and buffer ``scale`` [out, in/32] (ue8m0 bytes, stored as uint8 so
    that ``Module.to(dtype)`` leaves it alone).  Each call dequantises the weight to
    ``compute_dtype`` (exactly the values a dequantised model holds) and applies it, so a routed
    expert takes about a quarter of its bf16 bytes (0.53 bytes per parameter) between calls.

    ``state_dict()`` names are the checkpoint's: ``...w1.weight`` (int8) and ``...w1.scale``."""

    def __init__(self, in_features: int, out_features: int, compute_dtype: torch.dtype = torch.float32,
                 device=None, block: int = FP4_BLOCK):
        super().__init__()
        if in_features % block or block % 2:
            raise ValueError(f"PackedFP4Linear: in_features ({in_features}) must be a multiple of the block ({block})")
        self.in_features, self.out_features, self.block = in_features, out_features, block
        self.compute_dtype = compute_dtype
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.full((out_features, in_features // block), 127, dtype=torch.uint8,
                                                 device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, block: int = FP4_BLOCK) -> "PackedFP4Linear":
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
