"""Kernel tests: every Triton kernel against its PyTorch reference, on odd shapes, and the
references themselves against independent formulas written out here.

Where the kernels run
---------------------
* Default (no GPU needed): CPU tensors through the Triton interpreter, in fp32 and fp16 (bf16
  arithmetic is wrong in the interpreter).  Shapes and grids are kept small: the interpreter
  costs per program and per op.
* ``V4LAB_KERNEL_DEVICE=cuda`` (``scripts/gpu_check.sh``): the same tests on the GPU, in the
  dtypes listed by ``V4LAB_KERNEL_DTYPES`` (default ``bfloat16``).

Interpreter set-up in one pytest process
----------------------------------------
``TRITON_INTERPRET=1`` is set below before ``v4lab.kernels`` (and hence ``triton``) is imported,
as Triton wants, and restored right after the imports so that test modules collected later do
not see it (``kernels.triton_available()`` would otherwise tell them to run the slow
interpreted path).  Import order does not matter for correctness: the kernel launcher picks the
interpreted or compiled flavour from the tensors' device at call time, even if another module
imported ``triton`` first (see ``kernels/_common.py``; checked in a subprocess below).

Tolerances (max abs error, also relative to the reference's max magnitude where noted):
fp32 <= 1e-4; fp16 5e-3 on attention outputs (fp16 output rounding and fp16 probabilities in
P @ V); bf16 (GPU) 3e-2.  Outputs that stay fp32 (pooling, scores) use 1e-4 relative.
"""
from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
import textwrap

DEVICE = os.environ.get("V4LAB_KERNEL_DEVICE", "cpu")
_PREV_INTERPRET = os.environ.get("TRITON_INTERPRET")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from v4lab import kernels as tk  # noqa: E402
from v4lab.kernels import _common as C  # noqa: E402
from v4lab.kernels import reference as ref  # noqa: E402

if _PREV_INTERPRET is None:
    os.environ.pop("TRITON_INTERPRET", None)
else:
    os.environ["TRITON_INTERPRET"] = _PREV_INTERPRET

if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("V4LAB_KERNEL_DEVICE=cuda but no CUDA device", allow_module_level=True)

if DEVICE == "cpu":
    DTYPES = [torch.float32, torch.float16]
else:
    DTYPES = [getattr(torch, n.strip())
              for n in os.environ.get("V4LAB_KERNEL_DTYPES", "bfloat16").split(",") if n.strip()]

ATTN_TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True)
def _poison_and_interpret(monkeypatch):
    """Kernel-written buffers start as NaN (floats) or -7777 (ints): unwritten tiles fail.
    The interpreter flag is set again while a test runs, as the kernels' users would set it."""
    monkeypatch.setattr(C, "POISON", True)
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rand(g, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)


def assert_close(out, expected, tol, what="", rel=False):
    assert out.shape == expected.shape, f"{what}: shape {tuple(out.shape)} != {tuple(expected.shape)}"
    o, e = out.float(), expected.float()
    assert not torch.isnan(o).any(), f"{what}: NaN in output (unwritten tile?)"
    assert torch.equal(torch.isinf(o), torch.isinf(e)), f"{what}: -inf pattern differs"
    fin = torch.isfinite(e)
    if not fin.any():
        return
    err = (o[fin] - e[fin]).abs().max().item()
    bound = tol * (max(1.0, e[fin].abs().max().item()) if rel else 1.0)
    assert err <= bound, f"{what}: max abs error {err:.3g} > {bound:.3g}"


# ============================================================================================
# compressor pooling
# ============================================================================================

def _loop_pool(kv, gate, ape, ratio, overlap, prev_kv=None, prev_gate=None):
    """Independent, loop-by-loop version of the pooling formula (spec 4.4)."""
    B, T, width = kv.shape
    c = width // 2 if overlap else width
    out = torch.zeros(B, T // ratio, c, dtype=torch.float64)
    kv, gate, ape = kv.double().cpu(), gate.double().cpu(), ape.double().cpu()
    for b in range(B):
        for j in range(T // ratio):
            rows_a, rows_z = [], []
            if overlap:
                for r in range(ratio):
                    if j > 0:
                        t = (j - 1) * ratio + r
                        rows_a.append(kv[b, t, :c])
                        rows_z.append(gate[b, t, :c] + ape[r, :c])
                    elif prev_kv is not None:
                        rows_a.append(prev_kv[b, r].double().cpu())
                        rows_z.append(prev_gate[b, r].double().cpu())
            for r in range(ratio):
                t = j * ratio + r
                rows_a.append(kv[b, t, c:] if overlap else kv[b, t])
                rows_z.append((gate[b, t, c:] + ape[r, c:]) if overlap else gate[b, t] + ape[r])
            a, z = torch.stack(rows_a), torch.stack(rows_z)
            out[b, j] = (a * torch.softmax(z, dim=0)).sum(0)
    return out


@pytest.mark.parametrize("overlap,ratio", [(False, 4), (True, 4), (True, 3), (False, 128)])
def test_compress_reference_matches_loops(overlap, ratio):
    g = gen(1)
    B, T, c = 2, 2 * ratio + 3, 5
    w = 2 * c if overlap else c
    kv, gate, ape = rand(g, B, T, w), rand(g, B, T, w), rand(g, ratio, w)
    prev = (rand(g, B, ratio, c), rand(g, B, ratio, c)) if overlap else (None, None)
    for pk, pg in ((None, None), prev):
        got = ref.compress_pool(kv, gate, ape, ratio, overlap, pk, pg)
        want = _loop_pool(kv, gate, ape, ratio, overlap, pk, pg)
        assert_close(got.cpu().double(), want, 1e-5, "reference vs loops")


COMPRESS_CASES = [
    # (T, ratio, overlap, c)
    (1, 4, True, 24), (3, 4, True, 24), (63, 4, True, 24), (129, 4, True, 24),
    (257, 4, False, 24), (1031, 4, True, 24), (129, 3, True, 20), (63, 4, False, 17),
    (257, 128, False, 40), (1031, 128, False, 40), (129, 4, True, 512),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,ratio,overlap,c", COMPRESS_CASES)
def test_compress_pool(T, ratio, overlap, c, dtype):
    g = gen(T + ratio)
    B = 2
    w = 2 * c if overlap else c
    kv, gate = rand(g, B, T, w, dtype=dtype), rand(g, B, T, w, dtype=dtype, scale=2.0)
    ape = rand(g, ratio, w)
    variants = [(None, None)]
    if overlap:
        variants.append((rand(g, B, ratio, c), rand(g, B, ratio, c)))
    for pk, pg in variants:
        got = tk.compress_pool(kv, gate, ape, ratio, overlap, pk, pg)
        want = ref.compress_pool(kv, gate, ape, ratio, overlap, pk, pg)
        assert got.dtype == torch.float32 and got.shape == (B, T // ratio, c)
        assert_close(got, want, 1e-4, f"compress T={T} prev={pk is not None}", rel=True)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_compress_chunked_equals_whole(impl):
    """Prefill in chunks, carrying the last block's A-half (gate + ape), equals one pass."""
    ops = ref if impl == "reference" else tk
    g = gen(7)
    B, T, c, m = 1, 48, 8, 4
    kv, gate, ape = rand(g, B, T, 2 * c), rand(g, B, T, 2 * c), rand(g, m, 2 * c)
    whole = ops.compress_pool(kv, gate, ape, m, True)
    first = ops.compress_pool(kv[:, :20], gate[:, :20], ape, m, True)
    pk = kv[:, 16:20, :c]
    pg = gate[:, 16:20, :c] + ape[:, :c]
    second = ops.compress_pool(kv[:, 20:], gate[:, 20:], ape, m, True, pk, pg)
    assert_close(torch.cat([first, second], 1), whole, 1e-5, "chunked vs whole")


@pytest.mark.parametrize("overlap,m,c", [(False, 128, 64), (True, 4, 128), (False, 4, 24)])
def test_compress_pool_decode(overlap, m, c):
    g = gen(m)
    B = 3
    rows, width = (2 * m, 2 * c) if overlap else (m, c)
    kr, gr = rand(g, B, rows, width), rand(g, B, rows, width, scale=2.0)
    got = tk.compress_pool_decode(kr, gr, overlap)
    want = ref.compress_pool_decode(kr, gr, overlap)
    assert_close(got, want, 1e-4, "decode pool", rel=True)
    # the decode pooling of the last block equals the prefill pooling of that block
    T = 2 * m
    ape = torch.zeros(m, width, device=DEVICE)
    if overlap:
        kv, gate = kr.clone(), gr.clone()      # rows 0..m-1 = block 0, rows m..2m-1 = block 1
    else:
        kv, gate = torch.cat([kr, kr], 1), torch.cat([gr, gr], 1)
    prefill = ref.compress_pool(kv[:, :T], gate[:, :T], ape, m, overlap)[:, -1]
    assert_close(want, prefill, 1e-5, "decode vs prefill")


# ============================================================================================
# indexer
# ============================================================================================

def _loop_scores(q, w, k, q_pos, ratio):
    B, S, H, _ = q.shape
    N = k.shape[1]
    out = torch.full((B, S, N), float("-inf"), dtype=torch.float64)
    q, w, k = q.double().cpu(), w.double().cpu(), k.double().cpu()
    for s in range(S):
        for j in range(N):
            if (j + 1) * ratio <= int(q_pos[s]) + 1:
                out[:, s, j] = (w[:, s] * torch.relu(torch.einsum("bhd,bd->bh", q[:, s], k[:, j]))).sum(-1)
    return out


def test_indexer_reference_matches_loops():
    g = gen(3)
    q, w, k = rand(g, 2, 5, 3, 8), rand(g, 2, 5, 3), rand(g, 2, 6, 8)
    q_pos = torch.tensor([0, 3, 4, 11, 30], device=DEVICE)
    got = ref.indexer_scores(q, w, k, q_pos, 4)
    assert_close(got.cpu().double(), _loop_scores(q, w, k, q_pos, 4), 1e-5, "scores vs loops")


INDEXER_CASES = [
    # (S, H, CI, T): queries are the last S positions of a T-token prefix
    (1, 16, 128, 1), (3, 3, 32, 3), (63, 1, 64, 63), (129, 16, 128, 129), (257, 3, 32, 1031),
    (1, 16, 64, 4100), (40, 16, 128, 1030),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S,H,CI,T", INDEXER_CASES)
def test_indexer_scores(S, H, CI, T, dtype):
    g = gen(S * 7 + H)
    B, ratio = 2, 4
    N = T // ratio
    q, w, k = rand(g, B, S, H, CI, dtype=dtype), rand(g, B, S, H), rand(g, B, N, CI, dtype=dtype)
    q_pos = torch.arange(T - S, T, device=DEVICE)
    got = tk.indexer_scores(q, w, k, q_pos, ratio)
    want = ref.indexer_scores(q, w, k, q_pos, ratio)
    assert got.dtype == torch.float32
    assert_close(got, want, 1e-4, "indexer scores", rel=True)


def test_indexer_scores_arbitrary_positions_and_strides():
    g = gen(5)
    B, S, H, CI, N, ratio = 2, 9, 3, 32, 40, 4
    qbig = rand(g, B, S, H, 2 * CI)
    q = qbig[..., ::2]                                          # non-contiguous
    w = rand(g, B, H, S).transpose(1, 2)                        # non-contiguous
    k = rand(g, B, N, CI)
    q_pos = torch.tensor([159, 0, 2, 3, 7, 100, 5, 1, 64], device=DEVICE)   # unsorted
    assert_close(tk.indexer_scores(q, w, k, q_pos, ratio), ref.indexer_scores(q, w, k, q_pos, ratio),
                 1e-4, "scores", rel=True)


def _brute_topk(scores, topk):
    """Python sort by (score desc, index asc) over valid entries, -1 padded."""
    B, S, N = scores.shape
    out = torch.full((B, S, min(topk, N)), -1, dtype=torch.int64)
    sc = scores.cpu()
    for b in range(B):
        for s in range(S):
            valid = [(-float(sc[b, s, j]), j) for j in range(N) if sc[b, s, j] != float("-inf")]
            picks = [j for _, j in sorted(valid)[:topk]]
            out[b, s, :len(picks)] = torch.tensor(picks, dtype=torch.int64)
    return out


def test_topk_keys_order():
    """Keys sort like (score desc, index asc); -0.0 == +0.0; NaN and -inf are invalid."""
    sc = torch.tensor([[1.5, -0.0, 0.0, float("nan"), -2.0, float("-inf"), 1.5, 3e38, -3e38]])
    keys = ref.topk_keys(sc)
    assert torch.equal(ref.topk_from_keys(keys, 9)[0],
                       torch.tensor([7, 0, 6, 1, 2, 4, 8, -1, -1]))
    assert keys.unique().numel() == keys.numel()


def _integer_inputs(g, B, S, H, CI, N, dtype):
    """Small integers: every score is exact in any summation order, and ties are frequent."""
    q = torch.randint(-2, 3, (B, S, H, CI), generator=g).to(DEVICE, dtype)
    w = torch.randint(-1, 3, (B, S, H), generator=g).to(DEVICE, torch.float32)
    k = torch.randint(-1, 2, (B, N, CI), generator=g).to(DEVICE, dtype)
    return q, w, k


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S,T,topk", [(1, 3, 4), (3, 7, 8), (63, 63, 5), (129, 129, 40),
                                      (20, 1031, 16)])
def test_indexer_topk_exact_with_ties(S, T, topk, dtype):
    g = gen(S + T)
    B, H, CI, ratio = 2, 3, 16, 4
    N = T // ratio
    q, w, k = _integer_inputs(g, B, S, H, CI, N, dtype)
    q_pos = torch.arange(T - S, T, device=DEVICE)
    scores = ref.indexer_scores(q, w, k, q_pos, ratio)
    want = _brute_topk(scores, topk)
    assert torch.equal(ref.indexer_topk(q, w, k, q_pos, ratio, topk).cpu(), want)
    got = tk.indexer_topk(q, w, k, q_pos, ratio, topk, chunk_size=7)
    assert got.dtype == torch.int64 and got.shape == (B, S, min(topk, N))
    assert torch.equal(got.cpu(), want)


def test_indexer_topk_no_valid_entries_and_large_topk():
    g = gen(11)
    B, S, H, CI, N, ratio = 1, 4, 3, 32, 3, 4
    q, w, k = rand(g, B, S, H, CI), rand(g, B, S, H), rand(g, B, N, CI)
    q_pos = torch.tensor([0, 1, 2, 3], device=DEVICE)            # only the last sees entry 0
    got = tk.indexer_topk(q, w, k, q_pos, ratio, 512)
    assert got.shape == (B, S, N)
    assert (got[0, :3] == -1).all()
    assert got[0, 3].tolist() == [0, -1, -1]
    empty = tk.indexer_topk(q, w, k[:, :0], q_pos, ratio, 8)
    assert empty.shape == (B, S, 0)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_indexer_topk_ignores_entries_beyond_valid(impl):
    """More (future) blocks in k change nothing but the width of the padding."""
    ops = ref if impl == "reference" else tk
    g = gen(13)
    B, S, H, CI, ratio, topk = 1, 6, 3, 16, 4, 8
    q, w, k = _integer_inputs(g, B, S, H, CI, 30, torch.float32)
    q_pos = torch.tensor([3, 10, 17, 25, 30, 41], device=DEVICE)    # at most 10 valid entries
    short = ops.indexer_topk(q, w, k[:, :10], q_pos, ratio, topk)
    long = ops.indexer_topk(q, w, k, q_pos, ratio, topk)
    assert torch.equal(short, long)


# ============================================================================================
# sparse attention
# ============================================================================================

def _dense_sink_attention(q, keys, visible, sink, scale):
    """Plain masked softmax attention with a sink column, float64 (independent formula).

    q [B, S, H, D]; keys [B, N, D]; visible [B, S, N] bool (repeated entries are allowed by the
    sparse formula, so `visible` may be a count: each count is one copy of the key)."""
    qd, kd = q.double().cpu(), keys.double().cpu()
    cnt = visible.double().cpu()
    logits = torch.einsum("bshd,bnd->bshn", qd, kd) * scale
    mx = torch.maximum(logits.masked_fill(cnt[:, :, None] == 0, float("-inf")).amax(-1),
                       sink.double().cpu()[None, None])
    e = torch.exp(logits - mx[..., None]) * cnt[:, :, None]
    den = e.sum(-1) + torch.exp(sink.double().cpu()[None, None] - mx)
    return torch.einsum("bshn,bnd->bshd", e, kd) / den[..., None]


def test_sparse_reference_matches_dense_formula():
    g = gen(17)
    B, S, H, D, N = 2, 6, 3, 16, 9
    q, kv, sink = rand(g, B, S, H, D), rand(g, B, N, D), rand(g, H)
    # causal: query s sees keys 0..s+2, listed in a shuffled order with -1 padding
    idx = torch.full((B, S, N + 2), -1, dtype=torch.int64)
    vis = torch.zeros(B, S, N)
    for s in range(S):
        keys = torch.randperm(min(N, s + 3), generator=g)
        idx[:, s, :len(keys)] = keys
        vis[:, s, :len(keys)] = 1
    idx[1, 2, :] = -1                     # a query with nothing to see: output 0
    vis[1, 2] = 0
    got = ref.sparse_attention(q, kv, idx.to(DEVICE), sink, D ** -0.5)
    want = _dense_sink_attention(q, kv, vis, sink, D ** -0.5)
    assert_close(got.cpu().double(), want, 1e-5, "sparse ref vs dense")
    assert (got[1, 2] == 0).all()


SPARSE_CASES = [
    # (S, H, D, N, K)
    (1, 1, 32, 10, 1), (3, 3, 64, 50, 3), (2, 16, 64, 300, 63), (3, 3, 512, 200, 129),
    (1, 16, 32, 600, 257), (2, 1, 512, 90, 1030), (1, 3, 48, 40, 70),
]


def _sparse_inputs(g, B, S, H, D, N, K, dtype):
    q, kv, sink = rand(g, B, S, H, D, dtype=dtype), rand(g, B, N, D, dtype=dtype), rand(g, H)
    idx = torch.randint(-1, N + 3, (B, S, K), generator=g)    # -1 and out-of-range = skip
    idx[0, 0] = -1                                             # a query with nothing valid
    if K >= 3:
        idx[-1, -1, :3] = idx[-1, -1, 2]                       # repeated entries count twice
    return q, kv, idx.to(DEVICE), sink


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S,H,D,N,K", SPARSE_CASES)
def test_sparse_attention(S, H, D, N, K, dtype):
    g = gen(S * 31 + K)
    B = 2
    q, kv, idx, sink = _sparse_inputs(g, B, S, H, D, N, K, dtype)
    want = ref.sparse_attention(q, kv, idx, sink, D ** -0.5)
    got = tk.sparse_attention(q, kv, idx, sink, D ** -0.5)
    assert got.dtype == dtype
    assert_close(got, want, ATTN_TOL[dtype], f"sparse S={S} H={H} D={D} K={K}")
    assert (got[0, 0] == 0).all()
    for splits in (None, 3):
        dec = tk.sparse_attention_decode(q, kv, idx.to(torch.int32), sink, D ** -0.5,
                                        num_splits=splits)
        assert_close(dec, want, ATTN_TOL[dtype], f"sparse decode splits={splits}")


def test_sparse_attention_strided_inputs():
    g = gen(23)
    B, S, H, D, N, K = 2, 3, 3, 32, 20, 9
    q = rand(g, B, H, S, D).transpose(1, 2)              # [B, S, H, D], non-contiguous
    kv = rand(g, B, N, 2 * D)[..., :D]                   # row stride 2D
    idx = torch.randint(0, N, (B, K, S), generator=g).to(DEVICE).transpose(1, 2)
    sink = rand(g, 2 * H)[::2]
    assert_close(tk.sparse_attention(q, kv, idx, sink, 0.3), ref.sparse_attention(q, kv, idx, sink, 0.3),
                 1e-4, "strided")


# ============================================================================================
# HCA dense attention
# ============================================================================================

def _hca_as_sparse(q, kv_win, win_pos, comp, q_pos, ratio, window, sink, scale):
    """The HCA set written as an explicit index list into concat(kv_win, comp)."""
    B, S = q.shape[:2]
    Nw, Nc = kv_win.shape[1], comp.shape[1]
    rows = []
    for s in range(S):
        p = int(q_pos[s])
        ids = [i for i in range(Nw) if p - window < int(win_pos[i]) <= p]
        ids += [Nw + j for j in range(Nc) if (j + 1) * ratio <= p + 1]
        rows.append(ids)
    width = max(1, max(len(r) for r in rows))
    idx = torch.full((B, S, width), -1, dtype=torch.int64)
    for s, r in enumerate(rows):
        idx[:, s, :len(r)] = torch.tensor(r, dtype=torch.int64)
    kv = torch.cat([kv_win, comp], 1)
    return ref.sparse_attention(q, kv, idx.to(q.device), sink, scale)


def test_hca_reference_matches_sparse_reference():
    g = gen(29)
    B, H, D, T, ratio, window = 2, 3, 16, 37, 4, 6
    q, sink = rand(g, B, 7, H, D), rand(g, H)
    kv_win, comp = rand(g, B, T, D), rand(g, B, T // ratio, D)
    win_pos = torch.arange(T, device=DEVICE)
    q_pos = torch.tensor([0, 2, 3, 9, 20, 35, 36], device=DEVICE)
    args = (q, kv_win, win_pos, comp, q_pos, ratio, window, sink, D ** -0.5)
    assert_close(ref.hca_attention(*args), _hca_as_sparse(*args), 1e-5, "hca ref vs sparse ref")


HCA_CASES = [
    # (T, S, H, D, ratio, window)
    (1, 1, 1, 32, 4, 4), (3, 3, 3, 64, 4, 2), (63, 5, 16, 64, 8, 16), (129, 4, 3, 512, 4, 128),
    (257, 6, 16, 32, 128, 128), (1031, 4, 3, 64, 16, 128), (1031, 3, 1, 512, 128, 128),
]


def _hca_inputs(g, T, S, H, D, ratio, dtype, B=2):
    q, sink = rand(g, B, S, H, D, dtype=dtype), rand(g, H)
    kv_win, comp = rand(g, B, T, D, dtype=dtype), rand(g, B, T // ratio, D, dtype=dtype)
    win_pos = torch.arange(T, device=DEVICE)
    # the last query plus spread positions, including some before the first complete block
    pos = sorted(set([T - 1] + torch.randint(0, T, (S - 1,), generator=g).tolist()))
    q_pos = torch.tensor((pos * S)[:S], device=DEVICE)
    return q, kv_win, win_pos, comp, q_pos, sink


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,S,H,D,ratio,window", HCA_CASES)
def test_hca_attention_prefill(T, S, H, D, ratio, window, dtype):
    g = gen(T + S)
    q, kv_win, win_pos, comp, q_pos, sink = _hca_inputs(g, T, S, H, D, ratio, dtype)
    args = (q, kv_win, win_pos, comp, q_pos, ratio, window, sink, D ** -0.5)
    want = ref.hca_attention(*args)
    for splits in (None, 2):
        got = tk.hca_attention(*args, num_splits=splits)
        assert got.dtype == dtype
        assert_close(got, want, ATTN_TOL[dtype], f"hca T={T} splits={splits}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,H,D,ratio", [(1031, 3, 512, 128), (700, 16, 64, 4), (5, 1, 32, 4)])
def test_hca_attention_decode_ring(T, H, D, ratio, dtype):
    """Decode: one query at T-1, the window a ring buffer (unsorted positions)."""
    g = gen(T)
    B, window = 2, 128
    Nw = min(window, T)
    q, sink = rand(g, B, 1, H, D, dtype=dtype), rand(g, H)
    ring_pos = torch.arange(T - Nw, T)
    win_pos = ring_pos[torch.randperm(Nw, generator=g)].to(DEVICE)
    kv_win, comp = rand(g, B, Nw, D, dtype=dtype), rand(g, B, T // ratio, D, dtype=dtype)
    q_pos = torch.tensor([T - 1], device=DEVICE)
    args = (q, kv_win, win_pos, comp, q_pos, ratio, window, sink, D ** -0.5)
    want = ref.hca_attention(*args)
    for splits in (1, 4):
        assert_close(tk.hca_attention(*args, num_splits=splits), want, ATTN_TOL[dtype],
                     f"hca decode splits={splits}")


# ============================================================================================
# API: validation, backends, import order
# ============================================================================================

def test_validation_errors():
    q = torch.zeros(1, 2, 3, 32, device=DEVICE)
    kv = torch.zeros(1, 5, 32, device=DEVICE)
    idx = torch.zeros(1, 2, 4, dtype=torch.int64, device=DEVICE)
    sink = torch.zeros(3, device=DEVICE)
    with pytest.raises(ValueError, match="kv must have shape"):
        tk.sparse_attention(q, kv[..., :16], idx, sink, 1.0)
    with pytest.raises(TypeError, match="idx"):
        tk.sparse_attention(q, kv, idx.float(), sink, 1.0)
    with pytest.raises(TypeError, match="share a dtype"):
        tk.sparse_attention(q, kv.half(), idx, sink, 1.0)
    with pytest.raises(ValueError, match="sink"):
        tk.sparse_attention(q, kv, idx, sink[:2], 1.0)
    with pytest.raises(ValueError, match="4 dimensions"):
        tk.sparse_attention(q[0], kv, idx, sink, 1.0)
    with pytest.raises(ValueError, match="ape"):
        tk.compress_pool(torch.zeros(1, 8, 6), torch.zeros(1, 8, 6), torch.zeros(3, 6), 4, True)
    with pytest.raises(ValueError, match="prev_kv"):
        tk.compress_pool(torch.zeros(1, 8, 6), torch.zeros(1, 8, 6), torch.zeros(4, 6), 4, False,
                        torch.zeros(1, 4, 6), torch.zeros(1, 4, 6))
    with pytest.raises(ValueError, match="ratio"):
        tk.indexer_scores(q, sink.expand(1, 2, 3), kv, torch.arange(2), 0)
    with pytest.raises(ValueError, match="q_pos"):
        tk.hca_attention(q, kv, torch.arange(5), kv, torch.arange(3), 4, 8, sink, 1.0)
    if DEVICE == "cuda":
        with pytest.raises(ValueError, match="is on cpu"):
            tk.sparse_attention(q, kv.cpu(), idx, sink, 1.0)


def test_backends_and_exports():
    for op in tk.OPS:
        assert callable(getattr(tk, op)) and callable(getattr(ref, op))
    assert tk.backend("torch") is ref
    assert tk.backend("triton").sparse_attention is tk.sparse_attention
    with pytest.raises(ValueError):
        tk.backend("cuda")
    assert tk.triton_available() is True   # interpreter flag set (CPU) or a GPU present


def test_empty_inputs():
    q = torch.zeros(1, 0, 3, 32, device=DEVICE)
    out = tk.sparse_attention(q, torch.zeros(1, 5, 32, device=DEVICE),
                             torch.zeros(1, 0, 4, dtype=torch.int64, device=DEVICE),
                             torch.zeros(3, device=DEVICE), 1.0)
    assert out.shape == (1, 0, 3, 32)
    nb0 = tk.compress_pool(torch.zeros(1, 3, 8, device=DEVICE), torch.zeros(1, 3, 8, device=DEVICE),
                          torch.zeros(4, 8, device=DEVICE), 4, True)
    assert nb0.shape == (1, 0, 4)


@pytest.mark.skipif(DEVICE != "cpu", reason="interpreter import-order check")
@pytest.mark.parametrize("env", ["unset", "set"])
def test_import_order_does_not_matter(env, tmp_path):
    """triton imported before or after TRITON_INTERPRET: CPU calls still interpret, and the
    same process can then still compile for sm_90 (needs ptxas, which the Triton wheel ships;
    see tests/test_kernels_aot.py)."""
    code = textwrap.dedent("""
        import torch, triton
        from v4lab.kernels import reference as ref, sparse_attention, _common as C
        from v4lab.kernels.compressor import _compress_pool_kernel
        q, kv, s = torch.randn(1, 2, 3, 32), torch.randn(1, 9, 32), torch.randn(3)
        idx = torch.randint(-1, 9, (1, 2, 5))
        d = (sparse_attention(q, kv, idx, s, 0.2) - ref.sparse_attention(q, kv, idx, s, 0.2))
        assert d.abs().max() < 1e-5, d
        # then compile for sm_90 in the same process
        a = dict(kv_ptr="*bf16", gate_ptr="*bf16", ape_ptr="*fp32", pkv_ptr="*bf16",
                 pgate_ptr="*bf16", out_ptr="*fp32", nb=64, c=512, ratio=4)
        a.update({n: 16 for n in _compress_pool_kernel.arg_names if n.startswith("s_")})
        a.update(OVERLAP=True, HAS_APE=True, HAS_PREV=True, BLOCK_J=("constexpr", 32),
                 BLOCK_C=("constexpr", 128))
        C.aot_compile(_compress_pool_kernel, a, num_warps=4)
        print("ok")
    """)
    env_vars = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path))   # no cached binaries
    env_vars.pop("TRITON_INTERPRET", None)
    if env == "set":
        env_vars["TRITON_INTERPRET"] = "1"
    res = subprocess.run([sys.executable, "-c", code], env=env_vars, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_kernel_modules_importable():
    for name in ("compressor", "indexer", "sparse_attention", "hca_attention", "reference"):
        importlib.import_module(f"v4lab.kernels.{name}")
    assert math.isclose(C.LOG2E, 1 / math.log(2))
