"""Triton kernel for the Lightning Indexer (architecture note 4.5): scores and top-k.

Scores.  One program owns ``BLOCK_N`` compressed index keys of one batch row and loads them once
([c_I, BLOCK_N], transposed in registers); it then walks over ``BLOCK_S`` queries.  For each
query the matrix product puts the heads on the M side of the tensor-core tile,

    logits [H, BLOCK_N] = q_s [H, c_I] @ k^T [c_I, BLOCK_N]      (tl.dot, fp32 accumulate)
    score  [BLOCK_N]    = sum_h w[s, h] * relu(logits[h, :])

so a single decode query (S = 1) still fills the tile (H_I = 64), and prefill reuses each key
tile for ``BLOCK_S`` queries.  Causal validity ((j+1)*ratio <= pos+1) is fused: invalid entries
get -inf, and a key tile with no valid entry for a query skips the product.

Top-k: kernel scores + ``torch.topk``, not a kernel-side top-k.  Reasons:

* Writing the scores is nearly free.  Each (query, entry) score costs 2*H_I*c_I = 16384 FLOP
  (Flash) and writes 8 bytes, about 2000 FLOP per byte, far above the H200's ~200 FLOP/byte
  balance: the prefill score pass stays compute-bound with materialised scores.
* A kernel-side top-512 out of up to 262144 entries (1M context) needs a multi-pass radix
  select with per-query histograms; ``tl.topk``/``tl.sort`` only sort a register tile and are
  very slow under the interpreter.  ``torch.topk`` already is a tuned radix select on GPU.
* Determinism is easy to get on top: the kernel writes unique int64 sort keys (order-preserving
  bits of the fp32 score in the high word, ``2**31-1-j`` in the low word; -0.0 folded into +0.0,
  NaN into -inf), so ``torch.topk`` on the keys returns the same picks in the same order as
  "score descending, then lowest index", on every device and with any algorithm.  Invalid
  entries sort below every valid one and are mapped to -1, so the result never depends on
  entries beyond the valid ones (more future blocks in ``k`` change nothing).

Memory stays O(chunk * N): :func:`indexer_topk` processes ``chunk_size`` queries at a time.

Measured on CPU (PyTorch reference path, 1 thread, Flash index sizes 64 x 128, top-512):
decode at 1M context (N = 262144 entries) -- scores 116 ms, keyed top-k 1.0 ms (<1%); a
64-query prefill chunk at 128K (N = 32768) -- scores 708 ms, keyed top-k 29 ms (4%; plain
fp32 ``torch.topk`` alone 15 ms).  So selecting over materialised scores is cheap next to
computing them.  To be measured on a GPU (``v4lab.bench_kernels`` reports it): the time of
``torch.topk`` on [chunk, N] int64 keys against the score kernel at decode (S = 1, N up to
262144), where the score pass is memory-bound (~67 MB of bf16 keys at 1M context, ~15 us at
H200 bandwidth) and the top-k launch may dominate; if it does, a fused two-pass radix select
is the next step.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as C
from .reference import topk_from_keys

__all__ = ["indexer_scores", "indexer_topk"]


@triton.jit(do_not_specialize=["S", "N", "ratio"])
def _indexer_kernel(
    q_ptr, w_ptr, k_ptr, pos_ptr, out_ptr,
    S, N, H, CI, ratio,
    s_qb, s_qs, s_qh, s_qd,
    s_wb, s_ws, s_wh,
    s_kb, s_kn, s_kd,
    s_ob, s_os, s_on,
    BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    EMIT_KEYS: tl.constexpr, IEEE: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    nmask = offs_n < N
    hmask = offs_h < H
    dmask = offs_d < CI
    n64 = offs_n.to(tl.int64)

    # this tile of keys, transposed: [BLOCK_D, BLOCK_N]
    kt = tl.load(k_ptr + b * s_kb + n64[None, :] * s_kn + offs_d[:, None] * s_kd,
                 mask=dmask[:, None] & nmask[None, :], other=0.0)

    n_here = tl.minimum(BLOCK_S, S - pid_s * BLOCK_S)          # queries of this tile
    for i in range(0, n_here):
        s = (pid_s * BLOCK_S + i).to(tl.int64)
        pos = tl.load(pos_ptr + s)
        valid = nmask & ((n64 + 1) * ratio <= pos + 1)
        score = tl.full([BLOCK_N], float("-inf"), tl.float32)
        if (pid_n * BLOCK_N + 1) * ratio <= pos + 1:        # any valid entry in this tile?
            qh = tl.load(q_ptr + b * s_qb + s * s_qs + offs_h[:, None] * s_qh
                         + offs_d[None, :] * s_qd,
                         mask=hmask[:, None] & dmask[None, :], other=0.0)
            wv = tl.load(w_ptr + b * s_wb + s * s_ws + offs_h * s_wh,
                         mask=hmask, other=0.0).to(tl.float32)
            if IEEE:
                logits = tl.dot(qh, kt, input_precision="ieee")
            else:
                logits = tl.dot(qh, kt)
            part = tl.sum(tl.maximum(logits, 0.0) * wv[:, None], axis=0)
            score = tl.where(valid, part, score)
        if EMIT_KEYS:
            # unique int64 key, sorts like (score desc, index asc); see the module docstring
            score = tl.where(score == score, score, float("-inf"))     # NaN -> -inf
            score = tl.where(score == 0.0, 0.0, score)                 # -0.0 -> +0.0
            bits = score.to(tl.int32, bitcast=True)
            k32 = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
            key = (k32.to(tl.int64) << 32) + (2147483647 - n64)
            tl.store(out_ptr + b * s_ob + s * s_os + n64 * s_on, key, mask=nmask)
        else:
            tl.store(out_ptr + b * s_ob + s * s_os + n64 * s_on, score, mask=nmask)


def _check(q, w, k, q_pos, ratio):
    C.check_tensor("q", q, 4)
    C.check_tensor("w", w, 3)
    C.check_tensor("k", k, 3)
    C.check_tensor("q_pos", q_pos, 1, dtypes=C.INDEX_DTYPES)
    ratio = C.check_positive_int("ratio", ratio)
    B, S, H, CI = q.shape
    C.check_shape("w", w, (B, S, H))
    if k.shape[0] != B or k.shape[2] != CI:
        raise ValueError(f"k must have shape [B={B}, N, c_I={CI}], got {tuple(k.shape)}")
    C.check_shape("q_pos", q_pos, (S,))
    if k.dtype != q.dtype:
        raise TypeError(f"q ({q.dtype}) and k ({k.dtype}) must share a dtype")
    if CI < 1 or CI > 1024:
        raise ValueError(f"index head dim must be in 1..1024, got {CI}")
    if H > 256:
        raise ValueError(f"at most 256 index heads are supported, got {H}")
    C.check_device(q.device, w=w, k=k, q_pos=q_pos)
    return ratio


def _blocks(device, S, N, H, CI, dtype=torch.bfloat16):
    """(BLOCK_S, BLOCK_N, BLOCK_H, BLOCK_D, num_warps); checked for spills by the AOT test."""
    block_h = max(16, C.next_pow2(H))
    block_d = max(16, C.next_pow2(CI))
    if C.interpreting(device):
        return min(64, C.next_pow2(max(S, 1))), max(16, min(256, C.next_pow2(max(N, 1)))), \
            block_h, block_d, 4
    # decode (S = 1) gets one query per program: the score pass is then memory-bound
    block_s = min(16, C.next_pow2(max(S, 1)))
    if dtype == torch.float32:          # exact fp32 products: no tensor cores, smaller tile
        return block_s, 32, block_h, block_d, 8
    return block_s, 64, block_h, block_d, 4


def _scores(q, w, k, q_pos, ratio, emit_keys):
    B, S, H, CI = q.shape
    N = k.shape[1]
    dtype = torch.int64 if emit_keys else torch.float32
    out = C.empty(B, S, N, device=q.device, dtype=dtype)
    if B == 0 or S == 0 or N == 0:
        return out
    q, w, k = C.interpreter_safe(q.device, q, w, k)
    q_pos = q_pos.contiguous()
    block_s, block_n, block_h, block_d, warps = _blocks(q.device, S, N, H, CI, q.dtype)
    grid = (C.cdiv(N, block_n), C.cdiv(S, block_s), B)
    C.launch(
        _indexer_kernel, grid, q.device,
        q, w, k, q_pos, out,
        S, N, H, CI, ratio,
        *C.strides(q, 4), *C.strides(w, 3), *C.strides(k, 3), *C.strides(out, 3),
        BLOCK_S=block_s, BLOCK_N=block_n, BLOCK_H=block_h, BLOCK_D=block_d,
        EMIT_KEYS=emit_keys, IEEE=q.dtype == torch.float32, num_warps=warps,
    )
    return out


def indexer_scores(q, w, k, q_pos, ratio):
    """Triton version of :func:`v4lab.kernels.reference.indexer_scores` (same contract).

    q [B, S, H_I, c_I], w [B, S, H_I], k [B, N, c_I], q_pos [S] int64 -> [B, S, N] fp32 with
    -inf where (j+1)*ratio > q_pos[s]+1.
    """
    ratio = _check(q, w, k, q_pos, ratio)
    return _scores(q, w, k, q_pos, ratio, emit_keys=False)


def indexer_topk(q, w, k, q_pos, ratio, topk, chunk_size=None):
    """Triton version of :func:`v4lab.kernels.reference.indexer_topk` (same contract).

    Returns [B, S, min(topk, N)] int64 entry indices, best first, ties to the lowest index,
    -1 where a query has fewer valid entries than ``topk``.  ``chunk_size`` queries are scored
    at a time (default: as many as keep the int64 keys under ~256 MiB).
    """
    ratio = _check(q, w, k, q_pos, ratio)
    topk = C.check_positive_int("topk", topk)
    B, S = q.shape[:2]
    N = k.shape[1]
    out = torch.full((B, S, min(topk, N)), -1, dtype=torch.int64, device=q.device)
    if B == 0 or S == 0 or N == 0:
        return out
    if chunk_size is None:
        chunk_size = max(1, (1 << 25) // max(B * N, 1))
    chunk_size = C.check_positive_int("chunk_size", chunk_size)
    for s0 in range(0, S, chunk_size):
        s1 = min(S, s0 + chunk_size)
        keys = _scores(q[:, s0:s1], w[:, s0:s1], k, q_pos[s0:s1], ratio, emit_keys=True)
        out[:, s0:s1] = topk_from_keys(keys, topk)
    return out
