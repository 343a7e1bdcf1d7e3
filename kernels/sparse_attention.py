"""Triton kernels for sparse attention over gathered shared-KV rows (architecture note 4.8).

Every head of a query reads the same rows (one 512-d vector per entry is both key and value),
so one program takes a query and a tile of ``BLOCK_H`` heads (all 64 heads of Flash) and walks
over its index list ``BLOCK_K`` entries at a time:

    rows [BLOCK_K, D]       = kv[idx[k0 : k0 + BLOCK_K]]        gathered once, used twice
    l    [BLOCK_H, BLOCK_K] = q [BLOCK_H, D] @ rows^T * scale   (tl.dot, fp32 accumulate)
    online softmax in base 2 (running max m, sum l), starting from the sink: m = sink, l = 1
    acc  [BLOCK_H, D]      += p.to(kv dtype) @ rows             (probabilities cast like the
                                                                 reference kernel does)
    o = acc / l

Starting the running max at the sink keeps every row finite, so indices of -1 (or out of
range) need no special casing and a query without valid entries gets o = 0.

Decode (:func:`sparse_attention_decode`): with S = 1 there are only B * H / BLOCK_H programs,
too few to stream a long index list at full bandwidth.  The list is split into ``num_splits``
ranges (split-K); each program writes its partial (m, l, acc) in fp32 without the sink, and a
second kernel merges the splits and the sink:
    M = max(sink, max_s m_s);  o = sum_s acc_s 2^(m_s - M) / (2^(sink - M) + sum_s l_s 2^(m_s - M)).
:func:`sparse_attention` switches to it automatically when the grid would be too small.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as C

__all__ = ["sparse_attention", "sparse_attention_decode"]


@triton.jit(do_not_specialize=["S", "N", "K", "k_per_split"])
def _sparse_attn_kernel(
    q_ptr, kv_ptr, idx_ptr, sink_ptr, o_ptr, m_ptr, l_ptr, acc_ptr,
    S, H, D, N, K, k_per_split, qk_scale,
    s_qb, s_qs, s_qh, s_qd,
    s_kvb, s_kvn, s_kvd,
    s_ib, s_is, s_ik,
    s_ob, s_os, s_oh, s_od,
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    SPLIT: tl.constexpr, IEEE: tl.constexpr,
):
    pid_q = tl.program_id(0)                  # b * S + s
    pid_h = tl.program_id(1)
    split = tl.program_id(2)
    b = (pid_q // S).to(tl.int64)
    s = (pid_q % S).to(tl.int64)

    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    hmask = offs_h < H
    dmask = offs_d < D
    q = tl.load(q_ptr + b * s_qb + s * s_qs + offs_h[:, None] * s_qh + offs_d[None, :] * s_qd,
                mask=hmask[:, None] & dmask[None, :], other=0.0)

    if SPLIT:
        m_i = tl.full([BLOCK_H], -1.0e30, tl.float32)      # no sink in a partial
        l_i = tl.zeros([BLOCK_H], tl.float32)
    else:
        m_i = tl.load(sink_ptr + offs_h, mask=hmask, other=0.0).to(tl.float32) * 1.4426950408889634
        l_i = tl.full([BLOCK_H], 1.0, tl.float32)           # exp2(sink - m) with m = sink
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)

    k_start = split * k_per_split
    k_end = tl.minimum(K, k_start + k_per_split)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        ids = tl.load(idx_ptr + b * s_ib + s * s_is + offs_k * s_ik,
                      mask=offs_k < k_end, other=-1).to(tl.int64)
        valid = (ids >= 0) & (ids < N)
        rows = tl.load(kv_ptr + b * s_kvb + ids[:, None] * s_kvn + offs_d[None, :] * s_kvd,
                       mask=valid[:, None] & dmask[None, :], other=0.0)
        if IEEE:
            qk = tl.dot(q, tl.trans(rows), input_precision="ieee")
        else:
            qk = tl.dot(q, tl.trans(rows))
        qk = tl.where(valid[None, :], qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, rows, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(rows.dtype), rows)
        m_i = m_new

    if SPLIT:
        # partials: m, l [B*S, NSPLIT, H]; acc [B*S, NSPLIT, H, D] (fp32, contiguous)
        nsplit = tl.num_programs(2)
        row = (pid_q.to(tl.int64) * nsplit + split) * H + offs_h
        tl.store(m_ptr + row, m_i, mask=hmask)
        tl.store(l_ptr + row, l_i, mask=hmask)
        tl.store(acc_ptr + row[:, None] * D + offs_d[None, :], acc,
                 mask=hmask[:, None] & dmask[None, :])
    else:
        o = acc / l_i[:, None]
        tl.store(o_ptr + b * s_ob + s * s_os + offs_h[:, None] * s_oh + offs_d[None, :] * s_od,
                 o.to(o_ptr.dtype.element_ty), mask=hmask[:, None] & dmask[None, :])


@triton.jit(do_not_specialize=["S", "NSPLIT"])
def _combine_kernel(
    m_ptr, l_ptr, acc_ptr, sink_ptr, o_ptr,
    S, H, D, NSPLIT,
    s_ob, s_os, s_oh, s_od,
    BLOCK_SPLIT: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Merge split-K partials of one (query, head) with the sink; see the module docstring."""
    pid_q = tl.program_id(0)
    h = tl.program_id(1)
    b = (pid_q // S).to(tl.int64)
    s = (pid_q % S).to(tl.int64)
    offs_p = tl.arange(0, BLOCK_SPLIT)
    offs_d = tl.arange(0, BLOCK_D)
    pmask = offs_p < NSPLIT
    dmask = offs_d < D
    row = (pid_q.to(tl.int64) * NSPLIT + offs_p) * H + h
    m = tl.load(m_ptr + row, mask=pmask, other=-1.0e30)
    l = tl.load(l_ptr + row, mask=pmask, other=0.0)
    sink = tl.load(sink_ptr + h).to(tl.float32) * 1.4426950408889634
    m_all = tl.maximum(tl.max(m, axis=0), sink)
    wgt = tl.exp2(m - m_all)
    denom = tl.sum(l * wgt, axis=0) + tl.exp2(sink - m_all)
    acc = tl.load(acc_ptr + row[:, None] * D + offs_d[None, :],
                  mask=pmask[:, None] & dmask[None, :], other=0.0)
    o = tl.sum(acc * wgt[:, None], axis=0) / denom
    tl.store(o_ptr + b * s_ob + s * s_os + h * s_oh + offs_d * s_od,
             o.to(o_ptr.dtype.element_ty), mask=dmask)


def _check(q, kv, idx, sink, scale):
    C.check_tensor("q", q, 4)
    C.check_tensor("kv", kv, 3)
    C.check_tensor("idx", idx, 3, dtypes=C.INDEX_DTYPES)
    C.check_tensor("sink", sink, 1)
    B, S, H, D = q.shape
    if kv.shape[0] != B or kv.shape[2] != D:
        raise ValueError(f"kv must have shape [B={B}, N, D={D}], got {tuple(kv.shape)}")
    if idx.shape[0] != B or idx.shape[1] != S:
        raise ValueError(f"idx must have shape [B={B}, S={S}, K], got {tuple(idx.shape)}")
    C.check_shape("sink", sink, (H,))
    if kv.dtype != q.dtype:
        raise TypeError(f"q ({q.dtype}) and kv ({kv.dtype}) must share a dtype")
    if D < 1 or D > 1024:
        raise ValueError(f"head dim must be in 1..1024, got {D}")
    C.check_device(q.device, kv=kv, idx=idx, sink=sink)
    return C.check_scale(scale)


def attn_blocks(device, H: int, D: int, K: int, dtype=torch.bfloat16):
    """Tile sizes (BLOCK_H, BLOCK_K, BLOCK_D, num_warps, num_stages) for the attention kernels.

    GPU, bf16/fp16: all heads of a query in one tile, up to 64 (they share the gathered rows,
    and M = 64 is what Hopper's wgmma wants); the row tile shrinks as D grows so that q, two
    stages of rows and the [BLOCK_H, D] fp32 accumulator fit (D = 512: 249 registers per
    thread, no spills, 128 KiB shared memory).  fp32 inputs use exact fp32 products (no tensor
    cores) and need smaller tiles.  All choices are checked for spills by the sm_90 AOT test.
    Interpreter: one row tile size; its cost is per op, not per element.
    """
    block_d = max(16, C.next_pow2(D))
    block_h = min(64, max(16, C.next_pow2(H)))
    if C.interpreting(device):
        return block_h, 32, block_d, 4, 1
    if dtype == torch.float32:
        return min(block_h, 32 if block_d < 1024 else 16), 16, block_d, 8, 1
    if block_d >= 1024:
        return 16, 32, block_d, 8, 1
    if block_d >= 256:
        return block_h, 32, block_d, 8, 2
    return block_h, 64, block_d, 4, 2


def _alloc_out(q):
    return C.empty(q.shape, device=q.device, dtype=q.dtype)


def _run_plain(q, kv, idx, sink, scale, out):
    B, S, H, D = q.shape
    N, K = kv.shape[1], idx.shape[2]
    block_h, block_k, block_d, warps, stages = attn_blocks(q.device, H, D, K, q.dtype)
    grid = (B * S, C.cdiv(H, block_h), 1)
    C.launch(
        _sparse_attn_kernel, grid, q.device,
        q, kv, idx, sink, out, out, out, out,
        S, H, D, N, K, max(K, 1), scale * C.LOG2E,
        *C.strides(q, 4), *C.strides(kv, 3), *C.strides(idx, 3), *C.strides(out, 4),
        BLOCK_H=block_h, BLOCK_K=block_k, BLOCK_D=block_d, SPLIT=False,
        IEEE=q.dtype == torch.float32, num_warps=warps, num_stages=stages,
    )
    return out


def auto_splits(device, programs: int, K: int, block_k: int) -> int:
    """How many split-K ranges keep the GPU busy: about 2 waves, at least 2 tiles per split."""
    if programs <= 0 or K <= 0:
        return 1
    want = C.cdiv(2 * C.num_sms(device), programs)
    return max(1, min(want, C.cdiv(K, 2 * block_k), 64))


def _run_split(q, kv, idx, sink, scale, out, num_splits):
    B, S, H, D = q.shape
    N, K = kv.shape[1], idx.shape[2]
    block_h, block_k, block_d, warps, stages = attn_blocks(q.device, H, D, K, q.dtype)
    if num_splits is None:
        num_splits = auto_splits(q.device, B * S * C.cdiv(H, block_h), K, block_k)
    num_splits = max(1, min(int(num_splits), max(1, C.cdiv(K, block_k))))
    k_per_split = C.cdiv(C.cdiv(max(K, 1), num_splits), block_k) * block_k
    num_splits = C.cdiv(max(K, 1), k_per_split)
    f32 = dict(device=q.device, dtype=torch.float32)
    m = C.empty(B * S, num_splits, H, **f32)
    l = C.empty(B * S, num_splits, H, **f32)
    acc = C.empty(B * S, num_splits, H, D, **f32)
    C.launch(
        _sparse_attn_kernel, (B * S, C.cdiv(H, block_h), num_splits), q.device,
        q, kv, idx, sink, out, m, l, acc,
        S, H, D, N, K, k_per_split, scale * C.LOG2E,
        *C.strides(q, 4), *C.strides(kv, 3), *C.strides(idx, 3), *C.strides(out, 4),
        BLOCK_H=block_h, BLOCK_K=block_k, BLOCK_D=block_d, SPLIT=True,
        IEEE=q.dtype == torch.float32, num_warps=warps, num_stages=stages,
    )
    combine(m, l, acc, sink, out)
    return out


def combine(m, l, acc, sink, out):
    """Merge split-K partials m, l [B*S, NSPLIT, H], acc [B*S, NSPLIT, H, D] into out."""
    B, S, H, D = out.shape
    nsplit = m.shape[1]
    block_d = max(16, C.next_pow2(D))
    C.launch(
        _combine_kernel, (B * S, H), out.device,
        m, l, acc, sink, out,
        S, H, D, nsplit, *C.strides(out, 4),
        BLOCK_SPLIT=max(2, C.next_pow2(nsplit)), BLOCK_D=block_d,
        num_warps=4 if block_d >= 256 else 2,
    )


def _prepare(q, kv, idx, sink, scale):
    scale = _check(q, kv, idx, sink, scale)
    out = _alloc_out(q)
    B, S, H, D = q.shape
    if B * S * H == 0:
        return None, None, scale
    if D == 0 or idx.shape[2] == 0 or kv.shape[1] == 0:
        return out.zero_(), None, scale
    sink = sink.float().contiguous()     # tiny; lets the kernels index it directly
    q_in, kv_in, sink_in = C.interpreter_safe(q.device, q, kv, sink)
    if q_in is not q:  # interpreting a bf16 call: compute in fp32, cast back at the end
        return None, (q_in, kv_in, sink_in, C.empty(q.shape, device=q.device,
                                                        dtype=torch.float32)), scale
    return None, (q, kv, sink, out), scale


def sparse_attention(q, kv, idx, sink, scale):
    """Triton version of :func:`v4lab.kernels.reference.sparse_attention` (same contract).

    q [B, S, H, D]; kv [B, N, D] (same dtype); idx [B, S, K] int32/int64 (-1 or out of range =
    skip); sink [H].  Returns [B, S, H, D] in q.dtype.  Switches to the split-K decode variant
    when B * S * head-tiles is too small to fill the GPU.
    """
    done, args, scale = _prepare(q, kv, idx, sink, scale)
    if args is None:
        return done if done is not None else _alloc_out(q)
    qq, kk, ss, out = args
    B, S, H, D = q.shape
    block_h, block_k, _, _, _ = attn_blocks(q.device, H, D, idx.shape[2], qq.dtype)
    programs = B * S * C.cdiv(H, block_h)
    use_split = (not C.interpreting(q.device) and programs < C.num_sms(q.device)
                 and idx.shape[2] >= 4 * block_k)
    if use_split:
        _run_split(qq, kk, idx, ss, scale, out, None)
    else:
        _run_plain(qq, kk, idx, ss, scale, out)
    return out.to(q.dtype)


def sparse_attention_decode(q, kv, idx, sink, scale, *, num_splits=None):
    """Split-K variant of :func:`sparse_attention` for small S and long index lists.

    Same contract; ``num_splits`` ranges of the index list are processed in parallel (default:
    enough for about two waves of programs) and merged with the sink by a second kernel.
    """
    done, args, scale = _prepare(q, kv, idx, sink, scale)
    if args is None:
        return done if done is not None else _alloc_out(q)
    qq, kk, ss, out = args
    _run_split(qq, kk, idx, ss, scale, out, num_splits)
    return out.to(q.dtype)
