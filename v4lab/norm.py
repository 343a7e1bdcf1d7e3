"""RMSNorm (computed in fp32, result cast back), as in every V4 sub-block."""
from __future__ import annotations

import torch
import torch.nn as nn


def rms0(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weight-less RMSNorm over the last dim (fp32 inside, x's dtype out)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight.float()
        return y.to(x.dtype)
