"""The token-level KV compressor shared by CSA, HCA and the CSA indexer (spec 4.4).

Every token t gets two projections (fp32):   a_t = wkv x_t,   z_t = wgate x_t + ape[t mod m].
A block of m tokens is pooled **per channel** with a softmax over its tokens:

    c_j[e] = sum_r softmax_r(z_{jm+r}[e]) * a_{jm+r}[e]

CSA (m = 4) uses overlapping windows: the projections are 2c wide and split in halves A | B;
entry j pools the A-halves of block j-1 together with the B-halves of block j (8 rows), so each
token is "recorded twice".  The pooled vector is RMS-normed and rotated (RoPE on the last dims)
at the block's **first** position j*m.  An entry exists only once its block is complete.

State between chunks (spec 7.1): ``kv_state`` / ``score_state`` fp32 hold the projections of the
current partial block (HCA: [B, m, c]; CSA: [B, 2m, 2c] where rows 0..m-1 are the previous
complete block and rows m..2m-1 the current one).  ``score_state`` already includes ``ape``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .norm import RMSNorm, f32


def pool_blocks(kv, z, m: int, overlap: bool, prev_kv=None, prev_z=None):
    """Per-channel gated pooling of complete blocks.

    kv, z: [B, T, coff*c] fp32 (z includes ape), first row at a block start; the trailing partial
    block is ignored.  For the overlapping variant, prev_kv/prev_z [B, m, c] are the A-halves of
    the block before the first one (None: no previous block, weight 0).  Returns [B, nb, c].
    """
    B, T, C = kv.shape
    nb = T // m
    if nb == 0:
        return kv.new_zeros(B, 0, C // 2 if overlap else C)
    kv = rearrange(kv[:, : nb * m], "b (n r) e -> b n r e", r=m)  # block n, row r of the block
    z = rearrange(z[:, : nb * m], "b (n r) e -> b n r e", r=m)
    if overlap:
        c = C // 2
        if prev_kv is None:
            prev_kv = kv.new_zeros(B, 1, m, c)
            prev_z = z.new_full((B, 1, m, c), float("-inf"))
        else:
            prev_kv, prev_z = prev_kv[:, None], prev_z[:, None]
        a_prev = torch.cat([prev_kv, kv[:, :-1, :, :c]], dim=1)  # A-half of block j-1   [B, nb, m, c]
        z_prev = torch.cat([prev_z, z[:, :-1, :, :c]], dim=1)
        kv = torch.cat([a_prev, kv[..., c:]], dim=2)  # 8 rows: previous A-half, own B-half  [B, nb, 2m, c]
        z = torch.cat([z_prev, z[..., c:]], dim=2)
    return (kv * z.softmax(dim=2)).sum(dim=2)  # softmax over the rows, separately per channel


class Compressor(nn.Module):
    """Parameters (checkpoint names): ``wkv``, ``wgate`` [coff*c, d], ``ape`` [m, coff*c] fp32,
    ``norm`` [c].  ``forward`` consumes one chunk and returns the entries completed by it."""

    def __init__(self, d: int, c: int, ratio: int, eps: float, dtype=None, overlap: bool | None = None):
        super().__init__()
        self.ratio, self.c = ratio, c
        # CSA's overlapping blocks (2 * ratio rows, stride ratio); default: the rate says it (4)
        self.overlap = ratio == 4 if overlap is None else bool(overlap)
        coff = 2 if self.overlap else 1
        self.wkv = nn.Linear(d, coff * c, bias=False, dtype=dtype)
        self.wgate = nn.Linear(d, coff * c, bias=False, dtype=dtype)
        self.ape = nn.Parameter(torch.zeros(ratio, coff * c, dtype=torch.float32))
        self.norm = RMSNorm(c, eps, dtype=dtype)
        self.backend = "torch"

    def state_shape(self, batch: int):
        m, coff = self.ratio, (2 if self.overlap else 1)
        rows = 2 * m if self.overlap else m
        return (batch, rows, coff * self.c)

    def forward(self, x, start_pos: int, state, rope) -> tuple[torch.Tensor, int]:
        """x [B, S, d] (normalised block input) at positions start_pos.. ; ``state`` has
        ``kv_state`` / ``score_state`` tensors (updated in place).  Returns (entries [B, nb, c] in
        x's dtype, normed and rotated, index of the first new entry)."""
        B, S, _ = x.shape
        m = self.ratio
        pos = torch.arange(start_pos, start_pos + S, device=x.device)
        a = F.linear(f32(x), f32(self.wkv.weight))  # [B, S, coff*c]
        z = F.linear(f32(x), f32(self.wgate.weight)) + self.ape[pos % m]
        r0 = start_pos % m  # rows of the current partial block already in the state
        cur = slice(m, m + r0) if self.overlap else slice(0, r0)
        rows_kv = torch.cat([state.kv_state[:, cur], a], dim=1)  # first row at a block start
        rows_z = torch.cat([state.score_state[:, cur], z], dim=1)
        nb = rows_kv.shape[1] // m
        first = (start_pos - r0) // m  # index of the block the rows start with
        prev_kv = prev_z = None
        if self.overlap and first > 0:
            c = self.c
            prev_kv, prev_z = state.kv_state[:, :m, :c], state.score_state[:, :m, :c]
        from . import kernels  # the layer's backend: the reference is pool_blocks; Triton has no backward

        ops = kernels.backend("torch" if torch.is_grad_enabled() else self.backend)
        out = ops.compress_pool(rows_kv, rows_z, None, m, self.overlap, prev_kv, prev_z)  # [B, nb, c]; ape is in rows_z

        # --- new state: the previous complete block (CSA) and the rows of the new partial block
        rest = rows_kv.shape[1] - nb * m
        with torch.no_grad():
            if self.overlap and nb > 0:
                state.kv_state[:, :m] = rows_kv[:, (nb - 1) * m : nb * m].detach()
                state.score_state[:, :m] = rows_z[:, (nb - 1) * m : nb * m].detach()
            off = m if self.overlap else 0
            state.kv_state[:, off : off + rest] = rows_kv[:, nb * m :].detach()
            state.score_state[:, off : off + rest] = rows_z[:, nb * m :].detach()

        if nb == 0:
            return out.to(x.dtype), first
        out = self.norm(out.to(x.dtype))
        out = rope.rotate(out, torch.arange(first, first + nb, device=x.device) * m)  # block's first position
        return out, first
