"""Manifold-constrained hyper-connections (mHC), spec section 3.

The residual is ``n = hc_mult`` parallel streams H [B, S, n, d].  Around every sub-block
(attention, FFN) a small fp32 projection of the flattened streams gives, per token:

* ``pre``  (n):   how the streams are collapsed into the sub-block input,   x = sum_i pre_i H_i
* ``post`` (n):   how the sub-block output is written back to each stream
* ``comb`` (n x n): a (nearly) doubly-stochastic stream mixing matrix (Sinkhorn projection)

and the update is  H'_j = post_j * f + sum_i comb[i, j] H_i   (comb is applied transposed).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import einsum

from .config import V4Config
from .norm import f32


def sinkhorn(logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """Project [..., n, n] logits to a doubly-stochastic matrix, in the shipped kernel's order:
    row softmax (+eps), column normalisation, then (iters-1) x [row, column] normalisations.
    The last step is a column normalisation, so columns sum to 1 (rows approximately)."""
    if torch.is_grad_enabled() and logits.requires_grad:  # autograd needs every intermediate
        m = logits.softmax(dim=-1) + eps
        m = m / (m.sum(dim=-2, keepdim=True) + eps)
        for _ in range(iters - 1):
            m = m / (m.sum(dim=-1, keepdim=True) + eps)
            m = m / (m.sum(dim=-2, keepdim=True) + eps)
        return m
    # the same arithmetic in place (fewer allocations: this runs twice per layer per decode step)
    m = logits.softmax(dim=-1).add_(eps)
    m.div_(m.sum(dim=-2, keepdim=True).add_(eps))
    for _ in range(iters - 1):
        m.div_(m.sum(dim=-1, keepdim=True).add_(eps))
        m.div_(m.sum(dim=-2, keepdim=True).add_(eps))
    return m


def _rms_fold(h: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / sqrt(mean(h^2) + eps) of the flattened streams, [B, S, 1] (weight-less RMSNorm)."""
    return torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps)


def hc_params(module: nn.Module, prefix: str, cfg: V4Config, rows: int) -> None:
    """Register ``{prefix}_fn`` [rows, n d], ``{prefix}_base`` [rows], ``{prefix}_scale`` on a module
    (fp32, checkpoint names).  rows = (2+n) n for a sub-block, n for the head collapse."""
    n, d = cfg.hc_mult, cfg.hidden_size
    setattr(module, f"{prefix}_fn", nn.Parameter(torch.zeros(rows, n * d, dtype=torch.float32)))
    setattr(module, f"{prefix}_base", nn.Parameter(torch.zeros(rows, dtype=torch.float32)))
    n_scale = 3 if rows != n else 1
    setattr(module, f"{prefix}_scale", nn.Parameter(torch.ones(n_scale, dtype=torch.float32)))


def hc_weights(H, fn, base, scale, cfg: V4Config):
    """Mixing weights of one sub-block.  H [B, S, n, d] ->
    pre [B,S,n], post [B,S,n], comb [B,S,n,n], all fp32."""
    n = cfg.hc_mult
    h = f32(H.flatten(-2))  # [B, S, n*d] stream-major
    mu = F.linear(h, fn) * _rms_fold(h, cfg.rms_norm_eps)  # [B, S, (2+n)n]
    pre = torch.sigmoid(scale[0] * mu[..., :n] + base[:n]) + cfg.hc_eps
    post = 2 * torch.sigmoid(scale[1] * mu[..., n : 2 * n] + base[n : 2 * n])
    res = (scale[2] * mu[..., 2 * n :] + base[2 * n :]).unflatten(-1, (n, n))  # M[i][j] = entry 2n + n i + j
    comb = sinkhorn(res, cfg.hc_sinkhorn_iters, cfg.hc_eps)
    return pre, post, comb


def hc_collapse(H: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """x = sum_i pre_i H_i  -> [B, S, d] in H's dtype (weighted sum in fp32)."""
    return einsum(pre, f32(H), "b s n, b s n d -> b s d").to(H.dtype)


def hc_expand(f: torch.Tensor, H: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """H'_j = post_j f + sum_i comb[i, j] H_i  (mixing in fp32, result in H's dtype).
    The sum runs over the first index of comb: comb is applied transposed."""
    mixed = einsum(comb, f32(H), "b s i j, b s i d -> b s j d")  # streams i in, j out
    return (post[..., None] * f32(f)[:, :, None, :] + mixed).to(H.dtype)


def hc_head(H, fn, base, scale, cfg: V4Config) -> torch.Tensor:
    """Final collapse before the norm and the LM head: pre = sigmoid(mu * scale + base) + eps,
    y = sum_i pre_i H_i (no Sinkhorn, no post)."""
    h = f32(H.flatten(-2))
    mu = F.linear(h, fn) * _rms_fold(h, cfg.rms_norm_eps)  # [B, S, n]
    pre = torch.sigmoid(mu * scale + base) + cfg.hc_eps
    return hc_collapse(H, pre)
