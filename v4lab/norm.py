"""RMSNorm (computed in fp32, result cast back), as in every V4 sub-block."""
from __future__ import annotations

import torch
import torch.nn as nn


def f32(x: torch.Tensor) -> torch.Tensor:
    """At least fp32: fp64 stays fp64 (for exact tests), everything else becomes fp32."""
    return x if x.dtype == torch.float64 else x.float()


def rms0(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weight-less RMSNorm over the last dim (fp32 inside, x's dtype out)."""
    xf = f32(x)
    return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = f32(x)
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps) * f32(self.weight)
        return y.to(x.dtype)
