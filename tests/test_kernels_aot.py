"""Ahead-of-time compilation of every kernel for Hopper (sm_90) in bf16: no GPU needed.

The interpreter (tests/test_kernels.py) checks the numbers; this checks that the bf16 kernels
at the tile sizes the wrappers pick on a GPU get through the real compiler (TTIR -> TTGIR ->
LLVM -> PTX -> cubin with ptxas), that the attention tiles use Hopper's wgmma, and, where
``cuobjdump`` is available, that the Flash-size tiles (64 heads x 512 dims) do not spill
registers.  Needs Triton's CUDA backend and ``ptxas``; the Linux Triton wheels ship both
(``triton/backends/nvidia/bin``), so the skip below only triggers on unusual installs.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import torch

triton = pytest.importorskip("triton")

from v4lab.kernels import _common as C  # noqa: E402
from v4lab.kernels.compressor import _blocks as compress_blocks  # noqa: E402
from v4lab.kernels.compressor import _compress_pool_kernel  # noqa: E402
from v4lab.kernels.hca_attention import _hca_attn_kernel, hca_blocks  # noqa: E402
from v4lab.kernels.indexer import _blocks as indexer_blocks  # noqa: E402
from v4lab.kernels.indexer import _indexer_kernel  # noqa: E402
from v4lab.kernels.sparse_attention import (  # noqa: E402
    _combine_kernel,
    _sparse_attn_kernel,
    attn_blocks,
)

GPU = torch.device("cuda")  # only used to pick the GPU tile sizes; nothing is allocated


def _nvidia_bin(name):
    import triton.backends.nvidia as nv

    env = os.environ.get(f"TRITON_{name.upper()}_PATH")
    for cand in (env, os.path.join(os.path.dirname(nv.__file__), "bin", name), shutil.which(name)):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def _cuda_backend_available():
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


PTXAS = _nvidia_bin("ptxas") if _cuda_backend_available() else None
CUOBJDUMP = _nvidia_bin("cuobjdump") if PTXAS else None

pytestmark = pytest.mark.skipif(
    PTXAS is None, reason="this Triton install lacks the CUDA backend or ptxas (AOT needs both)")


def resources(compiled):
    """(registers, spill stack bytes) from cuobjdump, or None without cuobjdump."""
    if CUOBJDUMP is None:
        return None
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", out)
    stack = re.search(r"STACK:(\d+)", out)
    if not regs:
        return None
    return int(regs.group(1)), int(stack.group(1)) if stack else 0


def _check(compiled, dot=False, no_spill=False):
    assert compiled.asm["cubin"], "no cubin produced"
    if dot:
        assert "wgmma" in compiled.asm["ptx"] or "mma" in compiled.asm["ptx"]
    res = resources(compiled)
    if no_spill and res is not None:
        regs, stack = res
        assert stack == 0, f"register spills: {regs} registers, {stack} bytes of stack"
    # 227 KiB of shared memory per block is the sm_90 limit
    assert compiled.metadata.shared <= 227 * 1024, compiled.metadata.shared


def ce(v):
    return ("constexpr", v)


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Flash sizes: 64 heads, head dim 512, index 64 x 128, 1M context -> 262144 CSA entries
H, D, S, N = 64, 512, 4096, 1 << 18


@pytest.mark.parametrize("overlap,ratio,prev", [(True, 4, True), (True, 4, False), (False, 128, False)])
def test_aot_compress(overlap, ratio, prev):
    c = 512
    bj, bc, warps = compress_blocks(GPU, 4096, c, ratio)
    a = dict(kv_ptr="*bf16", gate_ptr="*bf16", ape_ptr="*fp32", pkv_ptr="*bf16", pgate_ptr="*bf16",
             out_ptr="*fp32", nb=4096, c=c, ratio=ratio,
             s_kb=1 << 22, s_kt=2 * c, s_ke=1, s_gb=1 << 22, s_gt=2 * c, s_ge=1, s_ar=2 * c, s_ae=1,
             s_pkb=ratio * 2 * c, s_pkt=2 * c, s_pke=1, s_pgb=ratio * 2 * c, s_pgt=2 * c, s_pge=1,
             s_ob=4096 * c, s_oj=c, s_oe=1,
             OVERLAP=ce(overlap), HAS_APE=ce(True), HAS_PREV=ce(prev), BLOCK_J=ce(bj), BLOCK_C=ce(bc))
    _check(C.aot_compile(_compress_pool_kernel, a, num_warps=warps), no_spill=True)


@pytest.mark.parametrize("keys,queries,dt", [(False, S, "bf16"), (True, S, "bf16"), (True, 1, "bf16"),
                                            (True, S, "fp32")])
def test_aot_indexer(keys, queries, dt):
    HI, CI = 64, 128
    bs, bn, bh, bd, warps = indexer_blocks(GPU, queries, N, HI, CI, DTYPES[dt])
    a = dict(q_ptr="*" + dt, w_ptr="*fp32", k_ptr="*" + dt, pos_ptr="*i64",
             out_ptr="*i64" if keys else "*fp32", S=S, N=N, H=HI, CI=CI, ratio=4,
             s_qb=S * HI * CI, s_qs=HI * CI, s_qh=CI, s_qd=1, s_wb=S * HI, s_ws=HI, s_wh=1,
             s_kb=N * CI, s_kn=CI, s_kd=1, s_ob=S * N, s_os=N, s_on=1,
             BLOCK_S=ce(bs), BLOCK_N=ce(bn), BLOCK_H=ce(bh), BLOCK_D=ce(bd), EMIT_KEYS=ce(keys),
             IEEE=ce(dt == "fp32"))
    compiled = C.aot_compile(_indexer_kernel, a, num_warps=warps)
    _check(compiled, dot=dt != "fp32", no_spill=True)
    if dt != "fp32":
        assert "wgmma" in compiled.asm["ptx"], "the indexer tile (64 heads) should use wgmma"


def _attn_common(heads, dim, split, dt):
    return dict(S=S, H=heads, D=dim, qk_scale=0.0637,
                s_qb=S * heads * dim, s_qs=heads * dim, s_qh=dim, s_qd=1,
                s_ob=S * heads * dim, s_os=heads * dim, s_oh=dim, s_od=1, SPLIT=ce(split),
                IEEE=ce(dt == "fp32"))


@pytest.mark.parametrize("heads,dim,dt", [(64, 512, "bf16"), (64, 128, "bf16"), (16, 64, "bf16"),
                                          (3, 32, "bf16"), (64, 512, "fp16"), (64, 512, "fp32"),
                                          (64, 128, "fp32")])
@pytest.mark.parametrize("split", [False, True])
def test_aot_sparse_attention(heads, dim, dt, split):
    K = 640
    bh, bk, bd, warps, stages = attn_blocks(GPU, heads, dim, K, DTYPES[dt])
    a = dict(q_ptr="*" + dt, kv_ptr="*" + dt, idx_ptr="*i32", sink_ptr="*fp32", o_ptr="*" + dt,
             m_ptr="*fp32", l_ptr="*fp32", acc_ptr="*fp32", N=N, K=K, k_per_split=K,
             s_kvb=N * dim, s_kvn=dim, s_kvd=1, s_ib=S * K, s_is=K, s_ik=1,
             BLOCK_H=ce(bh), BLOCK_K=ce(bk), BLOCK_D=ce(bd), **_attn_common(heads, dim, split, dt))
    compiled = C.aot_compile(_sparse_attn_kernel, a, num_warps=warps, num_stages=stages)
    _check(compiled, dot=dt != "fp32", no_spill=dim >= 128)   # fp32: exact FMA products
    if heads >= 64 and dt != "fp32":
        assert "wgmma" in compiled.asm["ptx"]


@pytest.mark.parametrize("dt", ["bf16", "fp32"])
@pytest.mark.parametrize("split", [False, True])
def test_aot_hca_attention(dt, split):
    Nc = (1 << 20) // 128
    bh, bk, bd, warps, stages = hca_blocks(GPU, H, D, 128 + Nc, DTYPES[dt])
    a = dict(q_ptr="*" + dt, win_ptr="*" + dt, wpos_ptr="*i64", comp_ptr="*" + dt,
             qpos_ptr="*i64", lo_ptr="*i32", hi_ptr="*i32", nc_ptr="*i32", sink_ptr="*fp32",
             o_ptr="*" + dt, m_ptr="*fp32", l_ptr="*fp32", acc_ptr="*fp32", window=128,
             comp_per_split=Nc, s_wb=128 * D, s_wn=D, s_wd=1, s_cb=Nc * D, s_cn=D, s_cd=1,
             BLOCK_H=ce(bh), BLOCK_K=ce(bk), BLOCK_D=ce(bd), **_attn_common(H, D, split, dt))
    compiled = C.aot_compile(_hca_attn_kernel, a, num_warps=warps, num_stages=stages)
    _check(compiled, dot=dt != "fp32", no_spill=True)
    if dt != "fp32":
        assert "wgmma" in compiled.asm["ptx"]


def test_aot_combine():
    a = dict(m_ptr="*fp32", l_ptr="*fp32", acc_ptr="*fp32", sink_ptr="*fp32", o_ptr="*bf16",
             S=1, H=H, D=D, NSPLIT=8, s_ob=H * D, s_os=H * D, s_oh=D, s_od=1,
             BLOCK_SPLIT=ce(8), BLOCK_D=ce(D))
    _check(C.aot_compile(_combine_kernel, a, num_warps=4), no_spill=True)


def test_aot_reports_missing_arguments():
    with pytest.raises(ValueError, match="no example"):
        C.aot_compile(_combine_kernel, {"m_ptr": "*fp32"})
