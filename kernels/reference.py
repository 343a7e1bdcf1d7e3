"""The PyTorch ops of v4lab: the model's torch path, and the references the Triton kernels match.

Every Triton wrapper in this package has a twin here with the same name and signature, so a
caller swaps backends with one switch (``v4lab.kernels.backend(name)``, which the model's
``backend=`` goes through too).  The functions compute in fp32 (fp64 inputs stay fp64), run on
any device, and process queries in chunks so that their memory stays bounded (about ``_BUDGET``
fp32 elements of intermediates) even at long contexts.

Each op is defined once.  The attention core is ``attention`` here (the one softmax with the
sink is ``v4lab.attention.attend``), which ``Attention.forward`` calls; compressor pooling is
``v4lab.compressor.pool_blocks``, indexer scoring ``v4lab.indexer.index_scores`` and top-k
``v4lab.indexer.select_topk``, and the functions here only adapt the kernel signature, so a
kernel is checked against exactly what the model computes (``tests/test_one_definition.py``
counts the calls).

Shapes are batch-first.  Notation follows the architecture note (sections 4.4-4.9):
``ratio`` = m (4 for CSA, 128 for HCA), ``c`` = compressed width, ``H`` = heads, ``D`` = head dim.
"""
from __future__ import annotations

import torch

__all__ = [
    "compress_pool",
    "compress_pool_decode",
    "indexer_scores",
    "indexer_topk",
    "sparse_attention",
    "sparse_attention_decode",
    "hca_attention",
    "attention",
    "topk_keys",
    "topk_from_keys",
    "INVALID_KEY_LIMIT",
]

_BUDGET = 1 << 25  # fp32 elements of intermediates per chunk (128 MiB)


def _chunk_rows(total: int, per_row: int, budget: int = _BUDGET) -> int:
    """How many query rows fit in the budget (at least one)."""
    return max(1, min(max(total, 1), budget // max(per_row, 1)))


# --------------------------------------------------------------------------------------------
# 4.4 token-level compressor: per-channel softmax pooling
# --------------------------------------------------------------------------------------------

def compress_pool(kv, gate, ape, ratio, overlap, prev_kv=None, prev_gate=None):
    """Pool complete blocks of ``ratio`` tokens into compressed entries (before norm and RoPE).

    kv, gate: [B, T, coff*c] projections of T tokens; the first token sits at a block start.
    ape: [ratio, coff*c] fp32, added to gate row r of every block (None: already added).
    coff = 2 if overlap else 1.  Returns [B, T // ratio, c] fp32; a trailing partial block is
    ignored.

    overlap=False (HCA):  out[j, e] = sum_r softmax_r(gate[jm+r, e] + ape[r, e]) * kv[jm+r, e].
    overlap=True (CSA):   entry j pools 2*ratio rows with one per-channel softmax: the A-half
    (channels [:c]) of block j-1 and the B-half (channels [c:]) of block j.  For j = 0 the
    previous block is (prev_kv, prev_gate) [B, ratio, c] (ape already added to prev_gate) or,
    when None, absent (kv 0, gate -inf: weight 0).  The pooling is ``pool_blocks``.
    """
    from ..compressor import pool_blocks
    from ..norm import f32

    B, T, width = kv.shape
    nb = T // ratio
    z = f32(gate[:, : nb * ratio])
    if ape is not None:
        z = (z.reshape(B, nb, ratio, width) + f32(ape)).reshape(B, nb * ratio, width)
    prev = (None, None) if prev_kv is None else (f32(prev_kv), f32(prev_gate))
    return pool_blocks(f32(kv[:, : nb * ratio]), z, ratio, overlap, *prev)


def compress_pool_decode(kv_rows, gate_rows, overlap):
    """Pool the block that the decode step just completed.  Returns [B, c] fp32.

    HCA (overlap=False): kv_rows, gate_rows [B, m, c], gate rows already include ape.
    CSA (overlap=True):  [B, 2m, 2c]; rows 0..m-1 = previous block, rows m..2m-1 = current
    block; pools the A-half of rows 0..m-1 with the B-half of rows m..2m-1.
    """
    if not overlap:
        return compress_pool(kv_rows, gate_rows, None, kv_rows.shape[1], False)[:, 0]
    m, c = kv_rows.shape[1] // 2, kv_rows.shape[2] // 2
    return compress_pool(kv_rows[:, m:], gate_rows[:, m:], None, m, True,
                         kv_rows[:, :m, :c], gate_rows[:, :m, :c])[:, 0]


# --------------------------------------------------------------------------------------------
# 4.5 Lightning Indexer
# --------------------------------------------------------------------------------------------

def indexer_scores(q, w, k, q_pos, ratio):
    """Indexer scores with causal validity.  Returns [B, S, N] fp32.

    q [B, S, H_I, c_I], w [B, S, H_I] (per-head weights, already scaled), k [B, N, c_I]
    (entry j covers block j), q_pos [S] int64 absolute positions.
    score[b,s,j] = sum_h w[b,s,h] * relu(q[b,s,h] . k[b,j])  if (j+1)*ratio <= q_pos[s]+1
                   -inf                                      otherwise.
    The model's ``v4lab.indexer.index_scores``.
    """
    from ..indexer import index_scores

    return index_scores(q, w, k, q_pos.to(q.device), ratio, budget=_BUDGET // 4)


# Deterministic top-k.  torch.topk does not promise an order among equal values, so the
# selection runs on unique int64 keys that sort exactly like (score descending, index
# ascending):  key = order_preserving_int32(score) * 2**32 + (2**31 - 1 - j).
# -0.0 is folded into +0.0 and NaN into -inf first, so equal scores give equal high words.
# Invalid entries (-inf) keep the lowest high word and are turned into -1 after selection,
# so the picks never depend on how many invalid entries (or future blocks) follow.
_NEG_INF_KEY32 = -2139095041                   # order_preserving_int32(-inf)
INVALID_KEY_LIMIT = (_NEG_INF_KEY32 + 1) << 32  # keys below this are invalid picks


def topk_keys(scores):
    """Unique int64 sort keys for fp32 ``scores`` [..., N] (last dim = entry index)."""
    inf = float("inf")
    s = torch.nan_to_num(scores.float(), nan=-inf, posinf=inf, neginf=-inf)  # a fresh copy
    s.add_(0.0)                                                  # -0.0 -> +0.0
    bits = s.view(torch.int32)
    k32 = (bits >> 31).bitwise_and_(0x7FFFFFFF).bitwise_xor_(bits)  # negatives: flip magnitude
    keys = k32.to(torch.int64).bitwise_left_shift_(32)
    j = torch.arange(s.shape[-1], device=s.device, dtype=torch.int64)
    return keys.add_((1 << 31) - 1).sub_(j)                      # low word: 2**31 - 1 - j


def topk_from_keys(keys, topk):
    """Indices of the ``min(topk, N)`` largest keys, best first; -1 for invalid picks."""
    kk = min(topk, keys.shape[-1])
    vals, pos = keys.topk(kk, dim=-1, largest=True, sorted=True)
    return torch.where(vals >= INVALID_KEY_LIMIT, pos, torch.full_like(pos, -1))


def indexer_topk(q, w, k, q_pos, ratio, topk, chunk_size=None):
    """Top-k valid compressed entries per query.  Returns [B, S, min(topk, N)] int64.

    Picks are ordered by score (descending), ties broken by the lowest entry index; slots beyond
    the number of valid entries hold -1.  Queries are processed ``chunk_size`` at a time (default:
    as many as fit a fixed budget) so memory stays O(chunk * N).  The model's
    ``v4lab.indexer.select_topk``.
    """
    from ..indexer import select_topk

    B, S = q.shape[:2]
    return select_topk(q, w, k, q_pos.to(q.device), ratio, topk, rows=chunk_size or _chunk_rows(S, B * k.shape[1] * 4))


# --------------------------------------------------------------------------------------------
# 4.8 core attention with a sink, over an index list or a dense (window + compressed) set
# --------------------------------------------------------------------------------------------

def sparse_attention(q, kv, idx, sink, scale):
    """Attention over gathered rows of a shared key/value table.  Returns [B, S, H, D], q.dtype.

    q [B, S, H, D]; kv [B, N, D] (each row is both key and value, shared by all heads);
    idx [B, S, K] int entry indices (-1 or out of range = skip); sink [H] fp32.
    l_i = scale * q . kv[idx_i];  o = sum_i exp(l_i - M) kv[idx_i] / (sum_i exp(l_i - M) +
    exp(sink_h - M)).  A query with no valid index gets o = 0.  The softmax is the model's
    ``v4lab.attention.attend``.
    """
    from ..attention import Keys, attend
    from ..norm import f32

    B, S, H, D = q.shape
    N, K = kv.shape[1], idx.shape[-1]
    out = torch.zeros(B, S, H, D, dtype=f32(q).dtype, device=q.device)
    if N == 0 or K == 0 or S == 0:
        return out.to(q.dtype)
    kvf = f32(kv)
    step = _chunk_rows(S, B * K * (D + 2 * H))
    for s0 in range(0, S, step):
        s1 = min(S, s0 + step)
        ids = idx[:, s0:s1].long()                                         # [B, s, K]
        valid = (ids >= 0) & (ids < N)
        rows = torch.gather(kvf, 1, ids.clamp(0, N - 1).reshape(B, -1, 1).expand(-1, -1, D))
        rows = rows.view(B, s1 - s0, K, D)                                 # [B, s, K, D]
        out[:, s0:s1] = attend(q[:, s0:s1], [Keys(rows, valid, per_query=True)], sink, scale)[0]
    return out.to(q.dtype)


def sparse_attention_decode(q, kv, idx, sink, scale, *, num_splits=None):
    """Decode-shaped sparse attention (small S, long K); same math as :func:`sparse_attention`.

    ``num_splits`` only steers the Triton split-K variant and is ignored here.
    """
    return sparse_attention(q, kv, idx, sink, scale)


def hca_attention(q, kv_win, win_pos, comp, q_pos, ratio, window, sink, scale, *,
                  num_splits=None):
    """Dense attention of an HCA layer: sliding window + every complete compressed entry.

    q [B, S, H, D] at absolute positions q_pos [S]; kv_win [B, Nw, D] raw window entries at
    positions win_pos [Nw] (any order, e.g. a ring buffer); comp [B, Nc, D] compressed entries.
    A query at position p sees window entry t iff p - window < t <= p and compressed entry j iff
    (j+1)*ratio <= p+1; one softmax over both plus the sink (``v4lab.attention.attend``).
    Returns [B, S, H, D], q.dtype.  ``num_splits`` only steers the Triton split-K variant and is
    ignored here.
    """
    from ..attention import Keys, attend
    from ..norm import f32

    B, S, H, D = q.shape
    Nw, Nc = kv_win.shape[1], comp.shape[1]
    wp = win_pos.to(q.device)
    j = torch.arange(Nc, device=q.device)
    out = torch.zeros(B, S, H, D, dtype=f32(q).dtype, device=q.device)
    if Nw + Nc == 0 or S == 0:
        return out.to(q.dtype)
    compf = f32(comp)
    step = _chunk_rows(S, B * H * (2 * window + Nc) * 2)
    for s0 in range(0, S, step):
        s1 = min(S, s0 + step)
        p = q_pos[s0:s1].to(q.device)[:, None]                            # [s, 1]
        vis_w = (wp[None, :] > p - window) & (wp[None, :] <= p)            # [s, Nw]
        # only the window rows some query of the chunk can see (keeps prefill O(S * window))
        rows = vis_w.any(0).nonzero().flatten()
        sets = [Keys(f32(kv_win[:, rows]), vis_w[:, rows][None]), Keys(compf, ((j[None, :] + 1) * ratio <= p + 1)[None])]
        out[:, s0:s1] = attend(q[:, s0:s1], sets, sink, scale)[0]
    return out.to(q.dtype)


def attention(q, q_start, win_kv, win_start, window, comp, ratio, sel, sink, scale, *, query_block=256,
              observe=None):
    """A layer's attention (window + compressed entries + sink): the model's own
    ``v4lab.attention.attention``, which the Triton backend replaces with the same signature.

    q [B, S, H, D] at positions q_start ..; win_kv [B, Nw, D] raw entries from position win_start;
    comp [B, N, D] (None: window-only); sel [B, S, k] CSA picks (-1 = none) or None (HCA: every
    complete entry).  Returns [B, S, H, D]."""
    from ..attention import attention as layer_attention

    return layer_attention(q, q_start, win_kv, win_start, window, comp, ratio, sel, sink, scale,
                           query_block=query_block, observe=observe)
