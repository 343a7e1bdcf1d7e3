"""Every kernel of ``v4lab.kernels`` against its PyTorch reference, on small, deliberately odd
shapes: ``check_all()`` is what notebook 07 shows and what a GPU engineer runs after a change.

The shapes cover partial blocks, a carried compressor state, ``-1`` and out-of-range indices,
repeated indices, unsorted window positions, a query with nothing to attend to and top-k ties
(small-integer scores).  Tolerances are those of ``tests/test_kernels.py``: max abs error 1e-4
in fp32 (relative to the largest magnitude for the fp32 outputs of pooling and scores), 5e-3 for
fp16 attention outputs; top-k picks must be identical.  Under ``TRITON_INTERPRET=1`` it runs on
CPU tensors (fp32 and fp16 only: the interpreter gets bf16 wrong).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

ATTN_TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


class Check(NamedTuple):
    op: str
    shapes: str
    dtype: str
    error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance


def max_err(out: torch.Tensor, want: torch.Tensor, rel: bool = False) -> float:
    """Max abs error over the finite entries of ``want`` (relative to its largest magnitude, at
    least 1, with ``rel``); the -inf patterns of the two must agree."""
    o, w = out.float(), want.float()
    if not torch.equal(torch.isinf(o), torch.isinf(w)):
        raise AssertionError("-inf pattern differs")
    fin = torch.isfinite(w)
    err = (o[fin] - w[fin]).abs().max().item() if fin.any() else 0.0
    return err / max(1.0, w[fin].abs().max().item()) if rel else err


def cases(dtype: torch.dtype, device="cpu", seed: int = 0):
    """(op, shape note, kernel output, reference output, tolerance, relative?) for one dtype."""
    import importlib

    from . import reference as ref

    K = importlib.import_module(__package__)  # v4lab.kernels: the Triton ops

    g = torch.Generator().manual_seed(seed)

    def rand(*shape, dt=dtype, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dt).to(device)

    atol = ATTN_TOL[dtype]
    out = []
    # compressor: CSA (overlap, carried state of the previous chunk) and HCA
    B, T, c = 2, 67, 128
    kv, gate, ape = rand(B, T, 2 * c), rand(B, T, 2 * c, scale=2), rand(4, 2 * c, dt=torch.float32)
    prev = (rand(B, 4, c, dt=torch.float32), rand(B, 4, c, dt=torch.float32))
    out.append(("compress_pool", "CSA T=67 c=128 +prev", K.compress_pool(kv, gate, ape, 4, True, *prev),
                ref.compress_pool(kv, gate, ape, 4, True, *prev), 1e-4, True))
    kv, gate, ape = rand(B, 257, 64), rand(B, 257, 64), rand(128, 64, dt=torch.float32)
    out.append(("compress_pool", "HCA T=257 m=128", K.compress_pool(kv, gate, ape, 128, False),
                ref.compress_pool(kv, gate, ape, 128, False), 1e-4, True))
    rows, grows = rand(B, 8, 2 * c), rand(B, 8, 2 * c)
    out.append(("compress_pool_decode", "CSA 2m=8 rows", K.compress_pool_decode(rows, grows, True),
                ref.compress_pool_decode(rows, grows, True), 1e-4, True))
    # Lightning Indexer: the last S queries of a T-token prefix
    S, H, CI, T = 9, 8, 32, 130
    q, w, k = rand(B, S, H, CI), rand(B, S, H, dt=torch.float32), rand(B, T // 4, CI)
    q_pos = torch.arange(T - S, T, device=device)
    out.append(("indexer_scores", f"S={S} H={H} c_I={CI} N={T // 4}", K.indexer_scores(q, w, k, q_pos, 4),
                ref.indexer_scores(q, w, k, q_pos, 4), 1e-4, True))
    qi = torch.randint(-2, 3, (B, S, H, CI), generator=g).to(dtype).to(device)  # small integers: exact, many ties
    wi = torch.randint(-1, 3, (B, S, H), generator=g).float().to(device)
    ki = torch.randint(-1, 2, (B, T // 4, CI), generator=g).to(dtype).to(device)
    picks = K.indexer_topk(qi, wi, ki, q_pos, 4, 16, chunk_size=4)
    out.append(("indexer_topk", "top-16 with ties", picks.float(), ref.indexer_topk(qi, wi, ki, q_pos, 4, 16).float(),
                0.0, False))
    # sparse attention over gathered rows, -1 / out-of-range indices skipped
    S, H, D, N, Kn = 5, 16, 128, 90, 40
    q, kvt, sink = rand(B, S, H, D), rand(B, N, D), rand(H, dt=torch.float32)
    idx = torch.randint(-1, N + 3, (B, S, Kn), generator=g).to(device)
    idx[0, 0] = -1                       # a query with nothing valid: output 0
    idx[-1, -1, :3] = idx[-1, -1, 2]     # a repeated entry counts twice
    out.append(("sparse_attention", f"S={S} H={H} D={D} K={Kn}", K.sparse_attention(q, kvt, idx, sink, D**-0.5),
                ref.sparse_attention(q, kvt, idx, sink, D**-0.5), atol, False))
    q1, idx1 = q[:, :1], torch.randint(-1, N, (B, 1, 300), generator=g).to(device)
    out.append(("sparse_attention_decode", "S=1 K=300 3 splits",
                K.sparse_attention_decode(q1, kvt, idx1, sink, D**-0.5, num_splits=3),
                ref.sparse_attention(q1, kvt, idx1, sink, D**-0.5), atol, False))
    # HCA attention: window ring (unsorted positions) + every complete compressed entry
    T, S, H, D, ratio, window = 200, 6, 8, 64, 16, 32
    q, sink = rand(B, S, H, D), rand(H, dt=torch.float32)
    win_pos = torch.arange(T - window, T)[torch.randperm(window, generator=g)].to(device)
    kv_win, comp = rand(B, window, D), rand(B, T // ratio, D)
    q_pos = torch.arange(T - S, T, device=device)
    args = (q, kv_win, win_pos, comp, q_pos, ratio, window, sink, D**-0.5)
    out.append(("hca_attention", f"T={T} m={ratio} w={window}", K.hca_attention(*args, num_splits=2),
                ref.hca_attention(*args), atol, False))
    # a layer's attention: window band + CSA picks (some -1) / every complete HCA entry / none
    S, H, D, window, q_start = 7, 4, 64, 16, 57
    win_start = q_start - (window - 1)
    q, sink, win_kv = rand(B, S, H, D), rand(H, dt=torch.float32), rand(B, window - 1 + S, D)
    comp4, comp8 = rand(B, (q_start + S) // 4, D), rand(B, (q_start + S) // 8, D)
    sel = torch.randint(-1, q_start // 4, (B, S, 6), generator=g).to(device)
    for note, comp, ratio, picks in (("CSA m=4 top-6", comp4, 4, sel), ("HCA m=8", comp8, 8, None),
                                     ("window only", None, 0, None)):
        args = (q, q_start, win_kv, win_start, window, comp, ratio, picks, sink, D**-0.5)
        out.append(("attention", note, K.attention(*args), ref.attention(*args, query_block=3), atol, False))
    return out


def check_all(dtypes=(torch.float32, torch.float16), device="cpu", seed: int = 0) -> list[Check]:
    """Run every case in every dtype; raises AssertionError on a shape mismatch, a NaN or an
    error above its tolerance, else returns one ``Check`` per case."""
    results = []
    for dtype in dtypes:
        for op, note, got, want, tol, rel in cases(dtype, device, seed):
            if got.shape != want.shape or torch.isnan(got).any():
                raise AssertionError(f"{op} ({note}, {dtype}): shape {tuple(got.shape)} vs {tuple(want.shape)} or NaN")
            err = max_err(got, want, rel)
            if err > tol:
                raise AssertionError(f"{op} ({note}, {dtype}): max error {err:.3g} above {tol:g}")
            results.append(Check(op, note, str(dtype).replace("torch.", ""), err, tol))
    return results
