"""Triton kernel for the dense attention of HCA layers (architecture note 4.6, 4.8).

An HCA query at position p attends to the sliding window (raw entries at positions
p - window < t <= p) and to *every* complete compressed entry (j+1)*ratio <= p+1, one softmax
over both plus the sink.  The set is dense, so no index list is built or gathered: each program
(one query, a tile of ``BLOCK_H`` heads) streams two contiguous ranges of rows,

    window rows   [lo, hi)  of kv_win     lo/hi found per query by binary search when
                                          win_pos is sorted (prefill), else the whole buffer
                                          (a decode ring, unsorted); positions still masked
    compressed    [0, n_c)  of comp       n_c = min(floor((p+1)/ratio), Nc)

with the same tile step as :mod:`.sparse_attention` (shared rows, tl.dot over heads, base-2
online softmax started at the sink).  For decode the compressed range is split over
``num_splits`` programs (split 0 also takes the window) and merged with the sink by the
combine kernel of :mod:`.sparse_attention`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as C
from .sparse_attention import attn_blocks, auto_splits, combine

__all__ = ["hca_attention"]


@triton.jit(do_not_specialize=["S", "window", "comp_per_split"])
def _hca_attn_kernel(
    q_ptr, win_ptr, wpos_ptr, comp_ptr, qpos_ptr, lo_ptr, hi_ptr, nc_ptr, sink_ptr,
    o_ptr, m_ptr, l_ptr, acc_ptr,
    S, H, D, window, comp_per_split, qk_scale,
    s_qb, s_qs, s_qh, s_qd,
    s_wb, s_wn, s_wd,
    s_cb, s_cn, s_cd,
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
    pos = tl.load(qpos_ptr + s).to(tl.int64)

    if SPLIT:
        m_i = tl.full([BLOCK_H], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_H], tl.float32)
    else:
        m_i = tl.load(sink_ptr + offs_h, mask=hmask, other=0.0).to(tl.float32) * 1.4426950408889634
        l_i = tl.full([BLOCK_H], 1.0, tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)

    # One loop over a virtual list: the window tiles [lo, hi) (split 0 only) followed by the
    # compressed tiles [c_start, c_end) of this split.  A single loop body (instead of two
    # loops) keeps the register footprint of the sparse kernel at D = 512.
    hi = tl.load(hi_ptr + s)
    lo = tl.where(split == 0, tl.load(lo_ptr + s), hi)
    n_c = tl.load(nc_ptr + s)
    c_start = split * comp_per_split
    c_end = tl.minimum(n_c, c_start + comp_per_split)
    n_wt = tl.cdiv(hi - lo, BLOCK_K)
    n_ct = tl.cdiv(tl.maximum(c_end - c_start, 0), BLOCK_K)
    win_base = win_ptr + b * s_wb
    comp_base = comp_ptr + b * s_cb
    for it in range(0, n_wt + n_ct):
        is_win = it < n_wt
        offs_t = lo + it * BLOCK_K + tl.arange(0, BLOCK_K)              # window rows
        offs_j = c_start + (it - n_wt) * BLOCK_K + tl.arange(0, BLOCK_K)  # compressed rows
        in_w = is_win & (offs_t < hi)
        tpos = tl.load(wpos_ptr + offs_t, mask=in_w, other=0)
        vis_w = in_w & (tpos > pos - window) & (tpos <= pos)
        vis_c = (it >= n_wt) & (offs_j < c_end)
        vis = vis_w | vis_c
        row_ptr = tl.where(is_win, win_base + offs_t.to(tl.int64) * s_wn,
                           comp_base + offs_j.to(tl.int64) * s_cn)
        s_d = tl.where(is_win, s_wd, s_cd)
        rows = tl.load(row_ptr[:, None] + offs_d[None, :] * s_d,
                       mask=vis[:, None] & dmask[None, :], other=0.0)
        if IEEE:
            qk = tl.dot(q, tl.trans(rows), input_precision="ieee")
        else:
            qk = tl.dot(q, tl.trans(rows))
        qk = tl.where(vis[None, :], qk * qk_scale, float("-inf"))
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


def _check(q, kv_win, win_pos, comp, q_pos, ratio, window, sink, scale):
    C.check_tensor("q", q, 4)
    C.check_tensor("kv_win", kv_win, 3)
    C.check_tensor("win_pos", win_pos, 1, dtypes=C.INDEX_DTYPES)
    C.check_tensor("comp", comp, 3)
    C.check_tensor("q_pos", q_pos, 1, dtypes=C.INDEX_DTYPES)
    C.check_tensor("sink", sink, 1)
    ratio = C.check_positive_int("ratio", ratio)
    window = C.check_positive_int("window", window)
    B, S, H, D = q.shape
    for name, t in (("kv_win", kv_win), ("comp", comp)):
        if t.shape[0] != B or t.shape[2] != D:
            raise ValueError(f"{name} must have shape [B={B}, N, D={D}], got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"q ({q.dtype}) and {name} ({t.dtype}) must share a dtype")
    C.check_shape("win_pos", win_pos, (kv_win.shape[1],))
    C.check_shape("q_pos", q_pos, (S,))
    C.check_shape("sink", sink, (H,))
    if D < 1 or D > 1024:
        raise ValueError(f"head dim must be in 1..1024, got {D}")
    C.check_device(q.device, kv_win=kv_win, win_pos=win_pos, comp=comp, q_pos=q_pos, sink=sink)
    return ratio, window, C.check_scale(scale)


def window_ranges(win_pos, q_pos, window):
    """Per-query [lo, hi) row range of the window buffer that can hold visible entries.

    Sorted positions (prefill: every raw token) -> binary search; unsorted (a decode ring
    buffer) -> the whole buffer.  Decided on the device, without a host sync.
    """
    Nw = win_pos.shape[0]
    wp = win_pos.to(torch.int64)
    qp = q_pos.to(torch.int64)
    full_lo = torch.zeros_like(qp)
    full_hi = torch.full_like(qp, Nw)
    if Nw <= 1:
        return full_lo.to(torch.int32), full_hi.to(torch.int32)
    is_sorted = (wp[1:] >= wp[:-1]).all()
    lo = torch.searchsorted(wp, qp - window, right=True)
    hi = torch.searchsorted(wp, qp, right=True)
    lo = torch.where(is_sorted, lo, full_lo)
    hi = torch.where(is_sorted, hi, full_hi)
    return lo.to(torch.int32), hi.to(torch.int32)


def hca_blocks(device, H: int, D: int, n: int, dtype=torch.bfloat16):
    """Tile sizes as :func:`.sparse_attention.attn_blocks`, but a single pipeline stage at
    D >= 512: the window/compressed pointer select costs a few registers, and two stages
    would spill (checked by the sm_90 AOT test)."""
    block_h, block_k, block_d, warps, stages = attn_blocks(device, H, D, n, dtype)
    if block_d >= 512:
        stages = 1
    return block_h, block_k, block_d, warps, stages


def hca_attention(q, kv_win, win_pos, comp, q_pos, ratio, window, sink, scale, *,
                  num_splits=None):
    """Triton version of :func:`v4lab.kernels.reference.hca_attention` (same contract).

    q [B, S, H, D] at positions q_pos [S]; kv_win [B, Nw, D] at positions win_pos [Nw] (any
    order); comp [B, Nc, D]; sink [H].  Returns [B, S, H, D] in q.dtype.  ``num_splits``
    splits the compressed range (default: automatic on GPU when the grid is small, 1 on CPU).
    """
    ratio, window, scale = _check(q, kv_win, win_pos, comp, q_pos, ratio, window, sink, scale)
    B, S, H, D = q.shape
    Nw, Nc = kv_win.shape[1], comp.shape[1]
    out_dtype = q.dtype
    if B * S * H == 0:
        return C.empty(q.shape, device=q.device, dtype=out_dtype)
    q, kv_win, comp = C.interpreter_safe(q.device, q, kv_win, comp)
    sink = sink.float().contiguous()     # tiny vectors, indexed directly by the kernel
    q_pos, win_pos = q_pos.contiguous(), win_pos.contiguous()
    out = C.empty(q.shape, device=q.device, dtype=q.dtype)
    lo, hi = window_ranges(win_pos, q_pos, window)
    nc = ((q_pos.to(torch.int64) + 1).clamp(min=0) // ratio).clamp(max=Nc).to(torch.int32)

    block_h, block_k, block_d, warps, stages = hca_blocks(q.device, H, D, Nw + Nc, q.dtype)
    programs = B * S * C.cdiv(H, block_h)
    if num_splits is None:
        small = not C.interpreting(q.device) and programs < C.num_sms(q.device)
        num_splits = auto_splits(q.device, programs, Nc, block_k) if small else 1
    num_splits = max(1, min(int(num_splits), max(1, C.cdiv(Nc, block_k))))
    comp_per_split = C.cdiv(C.cdiv(max(Nc, 1), num_splits), block_k) * block_k
    num_splits = C.cdiv(max(Nc, 1), comp_per_split)
    split = num_splits > 1
    f32 = dict(device=q.device, dtype=torch.float32)
    if split:
        m = C.empty(B * S, num_splits, H, **f32)
        l = C.empty(B * S, num_splits, H, **f32)
        acc = C.empty(B * S, num_splits, H, D, **f32)
    else:
        m = l = acc = out
    win_pos_arg = win_pos if Nw > 0 else lo   # never read when the window is empty
    kv_win_arg = kv_win if Nw > 0 else q
    comp_arg = comp if Nc > 0 else q
    C.launch(
        _hca_attn_kernel, (B * S, C.cdiv(H, block_h), num_splits), q.device,
        q, kv_win_arg, win_pos_arg, comp_arg, q_pos, lo, hi, nc, sink,
        out, m, l, acc,
        S, H, D, window, comp_per_split, scale * C.LOG2E,
        *C.strides(q, 4), *C.strides(kv_win, 3), *C.strides(comp, 3), *C.strides(out, 4),
        BLOCK_H=block_h, BLOCK_K=block_k, BLOCK_D=block_d, SPLIT=split,
        IEEE=q.dtype == torch.float32, num_warps=warps, num_stages=stages,
    )
    if split:
        combine(m, l, acc, sink, out)
    return out.to(out_dtype)
