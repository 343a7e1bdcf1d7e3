"""The Lightning Indexer of CSA layers (spec 4.5).

It keeps its own small compressed keys k_j (c_I = ``index_head_dim`` channels, the layer's rate m,
4 in V4; the overlapping compressor of ``compressor.py``) and scores every complete entry for
every query:

    I[t, j] = sum_h w[t, h] * ReLU(q[t, h] . k_j)         (no softmax)
    q[t]    = (wq_b cq_t).view(H_I, c_I), RoPE on the last dims; cq_t is the query latent
    w[t]    = weights_proj x_t * (c_I^-1/2 * H_I^-1/2)

Entry j is valid for query t iff (j+1)*m <= t+1 (its block is complete).  The attention then
reads the top-k valid entries.  Ties are broken by the lowest entry index, so the picks never
depend on how many entries (or invalid ones) follow.  ``numerics="hf"`` instead picks what
``transformers`` picks (``ties = "torch"``: ``torch.topk`` over a row of every entry so far, the
invalid ones at -inf); among exactly equal scores (common with few index heads: ReLU makes whole
rows of zeros) that choice depends on the row's length, so there, as in ``transformers``, a chunked
or cached run can pick other entries than the full forward.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .compressor import Compressor
from .norm import f32

NEG_INF = float("-inf")


def topk_lowest_index(scores: torch.Tensor, k: int, spare: int | None = None) -> torch.Tensor:
    """Top-k indices along the last dim in a canonical order (value descending, then index
    ascending), ties broken by the lowest index; -1 where fewer than k finite scores exist.
    scores [..., N] fp32 with -inf for invalid entries -> [..., min(k, N)].

    One ``torch.topk`` takes ``k + spare`` candidates (``spare`` defaults to k); ordering them by
    (value, index) settles every row whose tie at the k-th value ends inside the candidates (ties
    are common: ReLU makes scores exactly 0, repeated text makes keys equal).  Only a row whose
    tie runs past all the candidates is sorted whole.  The result equals a stable descending sort
    of each row cut to k, without sorting rows of N scores."""
    N = scores.shape[-1]
    k = min(k, N)
    if k == 0:
        return scores.new_empty(*scores.shape[:-1], 0, dtype=torch.long)
    k2 = min(N, k + (k if spare is None else spare))
    vals, idx = torch.topk(scores, k2, dim=-1)  # values descending
    kth, last = vals[..., k - 1], vals[..., -1]
    # canonical order of the candidates: by index, then (stably) by value descending
    o = idx.sort(dim=-1).indices
    vals, idx = vals.gather(-1, o), idx.gather(-1, o)
    o = torch.sort(vals, dim=-1, descending=True, stable=True).indices[..., :k]
    vals, idx = vals.gather(-1, o), idx.gather(-1, o)
    if k2 < N:
        # the tie at the k-th value may go on past the candidates, to entries of lower index
        spill = (kth > NEG_INF) & (last == kth)
        if spill.any():
            # such a row keeps its candidates above the k-th value (all of them are candidates)
            # and fills the rest with the lowest-index entries equal to it: one more top-k, on
            # -index where the score ties and -inf elsewhere (exact in fp32 below 2^24 entries)
            rows, kt, ci = scores[spill], kth[spill][..., None], idx[spill]
            neg_index = -torch.arange(N, device=scores.device, dtype=torch.float32)
            lowest = torch.topk(torch.where(rows == kt, neg_index, NEG_INF), k, dim=-1).indices
            n_above = (vals[spill] > kt).sum(-1, keepdim=True)
            j = torch.arange(k, device=scores.device)
            fill = lowest.gather(-1, (j - n_above).clamp(min=0))
            idx, vals = idx.clone(), vals.clone()
            idx[spill] = torch.where(j >= n_above, fill, ci)
            vals[spill] = torch.where(j >= n_above, kt, vals[spill])
    return torch.where(vals > NEG_INF, idx, torch.full_like(idx, -1))


def topk_torch_order(scores: torch.Tensor, k: int, n_all: int) -> torch.Tensor:
    """What ``transformers`` picks: ``torch.topk`` of each row padded with -inf to ``n_all``
    entries (every compressed entry so far), k = min(k, n_all); -1 where the pick is invalid.
    scores [..., N] with N <= n_all -> [..., min(k, n_all)]."""
    N = scores.shape[-1]
    k = min(k, n_all)
    if k == 0:
        return scores.new_empty(*scores.shape[:-1], 0, dtype=torch.long)
    if N < n_all:
        scores = torch.cat([scores, scores.new_full((*scores.shape[:-1], n_all - N), NEG_INF)], dim=-1)
    vals, idx = torch.topk(scores, k, dim=-1)
    return torch.where(vals > NEG_INF, idx, torch.full_like(idx, -1))


def index_scores(q, w, keys, positions, ratio: int = 4, budget: int = 1 << 20):
    """The Lightning Indexer's scores, the one definition (``Indexer.scores`` and
    ``v4lab.kernels.reference.indexer_scores`` call it).

    q [B, S, H_I, c_I], w [B, S, H_I] (scaled), keys [B, N, c_I], positions [S] ->
    I [B, S, N] fp32 (fp64 for fp64 inputs): sum_h w * ReLU(q . k), -inf where (j+1)*ratio > t+1.
    The per-head products are made for a few queries at a time (at most ``budget`` values: 2^20,
    4 MiB of fp32, measured fastest on the project's 2-core CPU: the products stay in cache
    between the matmul, the ReLU and the head sum).
    A bfloat16 ``w`` (deployed numerics) rounds q . k, w * ReLU(q . k) and the head sum to
    bf16, as the deployed code's bf16 einsum / multiply / sum do."""
    def r(t):
        return t.to(torch.bfloat16).float()

    B, S, H, c = q.shape
    N = keys.shape[1]
    kT = f32(keys).transpose(1, 2)  # [B, c, N]
    out = q.new_empty(B, S, N, dtype=f32(w).dtype)
    step = max(1, budget // max(1, H * N * B))
    pos = positions.tolist()
    for s0 in range(0, S, step):
        s1 = min(S, s0 + step)
        blk = pos[s0:s1]
        n = min(N, (max(blk) + 1) // ratio)  # no query of this block sees entries >= n
        out[:, s0:s1, n:] = NEG_INF
        if n == 0:
            continue
        dots = torch.matmul(f32(q[:, s0:s1]).reshape(B, (s1 - s0) * H, c), kT[..., :n])  # [B, s*H, n]
        if w.dtype == torch.bfloat16:
            prod = r(F.relu(r(dots)).view(B, s1 - s0, H, n) * f32(w[:, s0:s1])[..., None])
            out[:, s0:s1, :n] = r(prod.sum(2))
        else:  # the head sum as one batched matrix-vector product, ReLU in place
            dots = dots.relu_().view(B * (s1 - s0), H, n)
            out[:, s0:s1, :n] = torch.bmm(f32(w[:, s0:s1]).reshape(B * (s1 - s0), 1, H), dots).view(B, s1 - s0, n)
        # only the trailing entries can be invalid for some queries of the block
        lo = min(n, (min(blk) + 1) // ratio)
        if lo < n:
            cols = torch.arange(lo, n, device=q.device)
            bad = (cols[None, :] + 1) * ratio > positions[s0:s1, None] + 1
            out[:, s0:s1, lo:n].masked_fill_(bad, NEG_INF)
    return out


def select_topk(q, w, keys, positions, ratio: int, topk: int, rows: int = 256, ties: str = "lowest"):
    """The indexer's top-k valid entries per query, [B, S, min(topk, N)] int64, -1 = none: the
    scores of ``rows`` queries at a time (:func:`index_scores` over the entries they can see),
    then the top-k in the lowest-index order (:func:`topk_lowest_index`) or, with
    ``ties="torch"``, as ``torch.topk`` over every entry (:func:`topk_torch_order`).  The one
    definition: ``Indexer.select`` and ``v4lab.kernels.reference.indexer_topk`` call it."""
    B, S = q.shape[:2]
    N = keys.shape[1]
    out = torch.full((B, S, min(topk, N)), -1, dtype=torch.long, device=q.device)
    if N == 0 or S == 0 or topk == 0:
        return out
    pos = positions.tolist()
    for s0 in range(0, S, rows):
        s1 = min(S, s0 + rows)
        n = min(N, (max(pos[s0:s1]) + 1) // ratio)  # entries any query of the block can see
        if n == 0:
            continue
        scores = index_scores(q[:, s0:s1], w[:, s0:s1], keys[:, :n], positions[s0:s1], ratio)
        picks = topk_torch_order(scores, topk, N) if ties == "torch" else topk_lowest_index(scores, topk)
        out[:, s0:s1, : picks.shape[-1]] = picks
    return out


class Indexer(nn.Module):
    """Parameters (checkpoint names): ``wq_b`` [H_I c_I, q_lora], ``weights_proj`` [H_I, d] and its
    own ``compressor`` (c = c_I, ratio 4)."""

    def __init__(self, cfg, ratio: int = 4, dtype=None):
        super().__init__()
        self.ratio = ratio
        self.n_heads, self.head_dim, self.topk = cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk
        self.wq_b = nn.Linear(cfg.q_lora_rank, self.n_heads * self.head_dim, bias=False, dtype=dtype)
        self.weights_proj = nn.Linear(cfg.hidden_size, self.n_heads, bias=False, dtype=dtype)
        self.compressor = Compressor(cfg.hidden_size, self.head_dim, ratio, cfg.rms_norm_eps, dtype=dtype, overlap=True)
        self.qat = True  # Hadamard + FP4 round trip of q and k (reference numerics)
        self.bf16_scores = False  # deployed numerics: bf16 weights_proj and index scores
        self.ties = "lowest"  # "torch" (numerics="hf"): break exact ties as transformers does

    def select(self, q, w, keys, positions, rows: int = 256) -> torch.Tensor:
        """The top-k entries per query [B, S, k] (-1 = none) in this indexer's tie order
        (:func:`select_topk`)."""
        return select_topk(q, w, keys, positions, self.ratio, self.topk, rows, self.ties)

    def _qat(self, t: torch.Tensor) -> torch.Tensor:
        if not self.qat:
            return t
        from .quant import fp4_roundtrip, hadamard

        return fp4_roundtrip(hadamard(t), block=32).to(t.dtype)  # rotated in t's dtype, as deployed

    def new_keys(self, x, start_pos, state, rope):
        """Compress this chunk's tokens; returns (new keys [B, nb, c_I], first index)."""
        k, first = self.compressor(x, start_pos, state, rope)
        if k.shape[1]:
            k = self._qat(k)
        return k, first

    def queries(self, x, cq, positions, rope):
        """q [B, S, H_I, c_I] (rotated, QAT) and weights w [B, S, H_I] fp32."""
        q = rearrange(self.wq_b(cq), "b s (h c) -> b s h c", h=self.n_heads)
        q = self._qat(rope.rotate(q, positions))
        scale = self.head_dim**-0.5 * self.n_heads**-0.5
        if self.bf16_scores:  # a bf16 w tells scores() to round as the deployed code does
            return q, F.linear(x.bfloat16(), self.weights_proj.weight.bfloat16()) * scale
        w = F.linear(f32(x), f32(self.weights_proj.weight)) * scale
        return q, w

    @staticmethod
    def scores(q, w, keys, positions, ratio: int = 4, budget: int = 1 << 20):
        """I [B, S, N] fp32 (see :func:`index_scores`, the one definition)."""
        return index_scores(q, w, keys, positions, ratio, budget)
