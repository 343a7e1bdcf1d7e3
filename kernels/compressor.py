"""Triton kernel for the token-level KV compressor's pooling (architecture note 4.4).

One program owns a tile of ``BLOCK_J`` consecutive blocks x ``BLOCK_C`` channels and walks over
the rows of its blocks with an online (running-max) softmax per channel, so the ratio does not
have to be a power of two and nothing but the [BLOCK_J, BLOCK_C] accumulators stays live:

    m = max seen so far,  l = sum exp(z - m),  acc = sum exp(z - m) * a,   out = acc / l

For CSA (``overlap=True``) the same walk first visits the ratio rows of the previous block
(A-half channels, or ``prev_kv``/``prev_gate`` for the first block of the chunk) and then the
rows of the own block (B-half channels).  The pooling is memory-bound (one exp and a few FMAs
per loaded element), so the tiles are sized for coalesced channel-contiguous loads only.

The decode step (:func:`compress_pool_decode`) reuses the same kernel on one block, with the
state rows as input and no ``ape`` (the state already holds ``gate + ape``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as C

__all__ = ["compress_pool", "compress_pool_decode"]


@triton.jit(do_not_specialize=["nb", "ratio"])
def _compress_pool_kernel(
    kv_ptr, gate_ptr, ape_ptr, pkv_ptr, pgate_ptr, out_ptr,
    nb, c, ratio,
    s_kb, s_kt, s_ke,
    s_gb, s_gt, s_ge,
    s_ar, s_ae,
    s_pkb, s_pkt, s_pke,
    s_pgb, s_pgt, s_pge,
    s_ob, s_oj, s_oe,
    OVERLAP: tl.constexpr, HAS_APE: tl.constexpr, HAS_PREV: tl.constexpr,
    BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_j = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)

    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)            # block index j
    offs_e = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)            # output channel e < c
    jmask = offs_j < nb
    emask = offs_e < c
    mask = jmask[:, None] & emask[None, :]
    first_row = offs_j.to(tl.int64) * ratio                     # token row of the block start

    m_i = tl.full([BLOCK_J, BLOCK_C], -1.0e30, tl.float32)       # finite: -inf rows get weight 0
    l_i = tl.zeros([BLOCK_J, BLOCK_C], tl.float32)
    acc = tl.zeros([BLOCK_J, BLOCK_C], tl.float32)

    if OVERLAP:
        # previous block, A-half (channels e): rows (j-1)*ratio + r; for j == 0 the carried state
        pmask = mask & (offs_j > 0)[:, None]
        for r in range(0, ratio):
            t = first_row - ratio + r
            a = tl.load(kv_ptr + b * s_kb + t[:, None] * s_kt + offs_e[None, :] * s_ke,
                        mask=pmask, other=0.0).to(tl.float32)
            z = tl.load(gate_ptr + b * s_gb + t[:, None] * s_gt + offs_e[None, :] * s_ge,
                        mask=pmask, other=0.0).to(tl.float32)
            if HAS_APE:
                z += tl.load(ape_ptr + r * s_ar + offs_e * s_ae, mask=emask, other=0.0)[None, :]
            z = tl.where(pmask, z, float("-inf"))
            if HAS_PREV:
                pa = tl.load(pkv_ptr + b * s_pkb + r * s_pkt + offs_e * s_pke,
                             mask=emask, other=0.0).to(tl.float32)
                pz = tl.load(pgate_ptr + b * s_pgb + r * s_pgt + offs_e * s_pge,
                             mask=emask, other=0.0).to(tl.float32)
                is_first = (offs_j == 0)[:, None]
                a = tl.where(is_first, pa[None, :], a)
                z = tl.where(is_first, pz[None, :], z)
            m_new = tl.maximum(m_i, z)
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(z - m_new)
            l_i = l_i * alpha + p
            acc = acc * alpha + p * a
            m_i = m_new
        cur_e = offs_e + c                                       # own block, B-half
    else:
        cur_e = offs_e

    for r in range(0, ratio):
        t = first_row + r
        a = tl.load(kv_ptr + b * s_kb + t[:, None] * s_kt + cur_e[None, :] * s_ke,
                    mask=mask, other=0.0).to(tl.float32)
        z = tl.load(gate_ptr + b * s_gb + t[:, None] * s_gt + cur_e[None, :] * s_ge,
                    mask=mask, other=0.0).to(tl.float32)
        if HAS_APE:
            z += tl.load(ape_ptr + r * s_ar + cur_e * s_ae, mask=emask, other=0.0)[None, :]
        m_new = tl.maximum(m_i, z)
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(z - m_new)
        l_i = l_i * alpha + p
        acc = acc * alpha + p * a
        m_i = m_new

    out = acc / l_i
    tl.store(out_ptr + b * s_ob + offs_j[:, None] * s_oj + offs_e[None, :] * s_oe, out, mask=mask)


def _blocks(device, nb: int, c: int, ratio: int):
    if C.interpreting(device):
        # few, large programs: the interpreter pays per program and per op, not per element
        return min(C.next_pow2(max(nb, 1)), 64), min(C.next_pow2(c), 512), 4
    block_c = min(C.next_pow2(c), 128)
    block_j = 8 if ratio >= 32 else 32
    return block_j, block_c, 4


def _launch(kv, gate, ape, ratio, overlap, prev_kv, prev_gate, nb, c):
    B = kv.shape[0]
    out = C.empty(B, nb, c, device=kv.device, dtype=torch.float32)
    if nb == 0 or c == 0 or B == 0:
        return out
    block_j, block_c, warps = _blocks(kv.device, nb, c, ratio)
    grid = (C.cdiv(nb, block_j), C.cdiv(c, block_c), B)
    dummy = kv  # never read when the matching flag is off
    C.launch(
        _compress_pool_kernel, grid, kv.device,
        kv, gate, ape if ape is not None else dummy,
        prev_kv if prev_kv is not None else dummy, prev_gate if prev_gate is not None else dummy,
        out,
        nb, c, ratio,
        *C.strides(kv, 3), *C.strides(gate, 3), *C.strides(ape, 2),
        *C.strides(prev_kv, 3), *C.strides(prev_gate, 3), *C.strides(out, 3),
        OVERLAP=overlap, HAS_APE=ape is not None, HAS_PREV=prev_kv is not None,
        BLOCK_J=block_j, BLOCK_C=block_c, num_warps=warps,
    )
    return out


def compress_pool(kv, gate, ape, ratio, overlap, prev_kv=None, prev_gate=None):
    """Triton version of :func:`v4lab.kernels.reference.compress_pool` (same contract).

    kv, gate [B, T, coff*c] (any float dtype), ape [ratio, coff*c] fp32, prev_kv / prev_gate
    [B, ratio, c] or None.  ``ape=None``: already added to ``gate``.  Returns [B, T // ratio, c] fp32.
    """
    C.check_tensor("kv", kv, 3)
    C.check_tensor("gate", gate, 3)
    ratio = C.check_positive_int("ratio", ratio)
    if ape is None:
        ape = torch.zeros(ratio, kv.shape[-1], dtype=torch.float32, device=kv.device)
    C.check_tensor("ape", ape, 2)
    overlap = bool(overlap)
    C.check_shape("gate", gate, kv.shape)
    B, T, width = kv.shape
    if overlap and width % 2:
        raise ValueError(f"overlap=True needs an even last dim (2*c), got {width}")
    c = width // 2 if overlap else width
    C.check_shape("ape", ape, (ratio, width))
    if (prev_kv is None) != (prev_gate is None):
        raise ValueError("pass both prev_kv and prev_gate, or neither")
    if prev_kv is not None:
        if not overlap:
            raise ValueError("prev_kv/prev_gate only apply to overlapping (CSA) pooling")
        C.check_tensor("prev_kv", prev_kv, 3)
        C.check_tensor("prev_gate", prev_gate, 3)
        C.check_shape("prev_kv", prev_kv, (B, ratio, c))
        C.check_shape("prev_gate", prev_gate, (B, ratio, c))
    C.check_device(kv.device, gate=gate, ape=ape, prev_kv=prev_kv, prev_gate=prev_gate)
    kv, gate, ape, prev_kv, prev_gate = C.interpreter_safe(kv.device, kv, gate, ape, prev_kv,
                                                           prev_gate)
    return _launch(kv, gate, ape, ratio, overlap, prev_kv, prev_gate, T // ratio, c)


def compress_pool_decode(kv_rows, gate_rows, overlap):
    """Triton version of :func:`v4lab.kernels.reference.compress_pool_decode`.

    HCA: kv_rows, gate_rows [B, m, c]; CSA: [B, 2m, 2c] (rows 0..m-1 previous block, rows
    m..2m-1 current block).  Gate rows already include ape.  Returns [B, c] fp32.
    """
    C.check_tensor("kv_rows", kv_rows, 3)
    C.check_tensor("gate_rows", gate_rows, 3)
    C.check_shape("gate_rows", gate_rows, kv_rows.shape)
    C.check_device(kv_rows.device, gate_rows=gate_rows)
    kv_rows, gate_rows = C.interpreter_safe(kv_rows.device, kv_rows, gate_rows)
    B, rows, width = kv_rows.shape
    if not overlap:
        if rows < 1:
            raise ValueError("kv_rows needs at least one row")
        return _launch(kv_rows, gate_rows, None, rows, False, None, None, 1, width)[:, 0]
    if rows % 2 or width % 2 or rows < 2:
        raise ValueError(f"CSA decode rows must be [B, 2m, 2c], got {tuple(kv_rows.shape)}")
    m, c = rows // 2, width // 2
    # the current block is rows m..2m-1 (all 2c channels), the carried block its A-half
    return _launch(kv_rows[:, m:], gate_rows[:, m:], None, m, True,
                   kv_rows[:, :m, :c], gate_rows[:, :m, :c], 1, c)[:, 0]
