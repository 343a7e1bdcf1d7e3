"""Partial, interleaved RoPE with the two V4 regimes (spec 4.3).

* Only the **last** ``qk_rope_head_dim`` channels of a vector rotate.
* Channel pairs are adjacent: (2i, 2i+1) is rotated as the complex number x_2i + i x_2i+1.
* Window-only layers: base ``rope_theta`` (10000), no YaRN.
  CSA/HCA layers (and their compressor and indexer): base ``compress_rope_theta`` (160000) with
  YaRN frequency interpolation and **no** magnitude (mscale) factor.
* The attention output is rotated back by -t (inverse RoPE) before the output projection.
"""
from __future__ import annotations

import math

import torch

from .config import V4Config
from .norm import f32


def yarn_inv_freq(rope_dim: int, base: float, scaling: dict | None) -> torch.Tensor:
    """Per-pair angular frequencies omega_i, i = 0 .. rope_dim/2 - 1 (fp32)."""
    i = torch.arange(0, rope_dim, 2, dtype=torch.float32, device="cpu")  # CPU even under a meta device
    inv_freq = 1.0 / (base ** (i / rope_dim))  # omega_i = base^(-2i/r)
    if scaling is None:
        return inv_freq
    s = float(scaling["factor"])
    L0 = float(scaling["original_max_position_embeddings"])

    def corr(n_rot: float) -> float:  # the pair index whose wavelength fits n_rot times into L0
        return rope_dim * math.log(L0 / (2 * math.pi * n_rot)) / (2 * math.log(base))

    low = max(math.floor(corr(scaling["beta_fast"])), 0)
    high = min(math.ceil(corr(scaling["beta_slow"])), rope_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(rope_dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    # ramp 0 (high frequencies): keep omega; ramp 1 (low frequencies): omega / s
    return inv_freq / s * ramp + inv_freq * (1 - ramp)


class Rope:
    """The rotation table of one layer type; angles are made on the fly for any positions."""

    def __init__(self, cfg: V4Config, compressed: bool):
        self.dim = cfg.qk_rope_head_dim
        base = cfg.compress_rope_theta if compressed else cfg.rope_theta
        scaling = cfg.rope_scaling if compressed else None
        self.inv_freq = yarn_inv_freq(self.dim, base, scaling)  # [r/2] fp32

    def cos_sin(self, positions: torch.Tensor):
        """positions: [S] int -> cos, sin: [S, r/2] fp32 (angles in fp32, as in the reference)."""
        ang = torch.outer(positions.to(torch.float32), self.inv_freq.to(positions.device))
        return ang.cos(), ang.sin()

    def rotate(self, x: torch.Tensor, positions: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Rotate the last ``dim`` channels of x at ``positions``.

        x: [B, S, C] or [B, S, H, C] (a heads axis after the sequence axis); positions: [S].
        Returns a new tensor in x's dtype; the rotation itself is computed in fp32.
        """
        r = self.dim
        cos, sin = self.cos_sin(positions)  # [S, r/2]
        if inverse:
            sin = -sin
        if x.dim() == 4:  # [B, S, H, C]: broadcast over heads
            cos, sin = cos[:, None, :], sin[:, None, :]
        pairs = f32(x[..., -r:]).unflatten(-1, (r // 2, 2))  # [..., r/2, 2] adjacent pairs
        a, b = pairs[..., 0], pairs[..., 1]
        rot = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
        return torch.cat((x[..., :-r], rot.to(x.dtype)), dim=-1)
