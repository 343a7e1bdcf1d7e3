"""FP8 / FP4 codecs of the DeepSeek-V4 checkpoints, and the QAT round trips the model uses.

Formats (spec section 8.3):

* **FP8 e4m3** (``torch.float8_e4m3fn``): 1 sign, 4 exponent (bias 7), 3 mantissa bits, no
  infinities, largest finite value 448, ``0x7F``/``0xFF`` = NaN.  The non-expert linear layers
  store ``weight`` [N, K] in e4m3 and ``scale`` [ceil(N/128), ceil(K/128)] in ue8m0, one scale
  per 128 x 128 block:  ``W[n, k] = e4m3(weight[n, k]) * scale[n // 128, k // 128]``.
* **ue8m0** (``torch.float8_e8m0fnu``): an unsigned 8-bit exponent, value ``2 ** (byte - 127)``,
  byte ``0xFF`` = NaN.  Every scale in the checkpoints is a power of two.
* **FP4 e2m1**: 1 sign, 2 exponent, 1 mantissa bit; codes 0..7 are
  ``0, 0.5, 1, 1.5, 2, 3, 4, 6`` and codes 8..15 the same values negated.  The routed experts
  store two codes per byte in an int8 tensor [N, K/2]: the **low nibble is element 2i, the high
  nibble element 2i+1** along K, with one ue8m0 scale per 32 consecutive K ([N, K/32]).

Scales are chosen as ``2 ** ceil(log2(amax / qmax))`` (qmax = 448 for e4m3, 6 for e2m1), so that
the largest magnitude of a block lands in ``(qmax/2, qmax]`` and nothing overflows.

The QAT helpers (:func:`fp8_roundtrip`, :func:`fp4_roundtrip`, :func:`hadamard`) simulate the
precision the trained model sees on its KV entries and indexer queries/keys (spec 4.2, 4.4, 4.5).
The deployed helpers (:func:`act_quant`, :func:`checkpoint_weight`, :func:`deployed_linear`) give
the arithmetic of ``numerics="deployed"``: FP8 activations (one ue8m0 scale per 128 inputs) times
FP8 / FP4 checkpoint-format weights, fp32 accumulation, bf16 results.

Scale tensors are returned as ``torch.float8_e8m0fnu`` where this torch build has it and as
``torch.uint8`` bytes otherwise; every function here accepts either (and int8 views).
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "E4M3_MAX",
    "E2M1_MAX",
    "E2M1_VALUES",
    "FP4_BLOCK",
    "FP8_DTYPE",
    "E8M0_DTYPE",
    "HAS_E8M0",
    "ceil_log2",
    "pow2_scale_exponent",
    "fp8_e4m3_encode",
    "fp8_e4m3_decode",
    "ue8m0_decode",
    "ue8m0_exponent",
    "ue8m0_encode",
    "ue8m0_from_exponent",
    "ue8m0_bytes",
    "dequant_fp8_block",
    "quant_fp8_block",
    "fp8_block_encode",
    "fp8_block_decode",
    "fp4_e2m1_decode",
    "fp4_e2m1_encode",
    "fp4_pack",
    "fp4_unpack",
    "dequant_fp4_experts",
    "quant_fp4",
    "fp8_roundtrip",
    "fp4_roundtrip",
    "FP4_AMAX_FLOOR",
    "ACT_BLOCK",
    "act_quant",
    "checkpoint_weight",
    "deployed_weight",
    "deployed_linear",
    "round_bf16",
    "hadamard",
    "hadamard_matrix",
]

E4M3_MAX = 448.0
"""Largest finite FP8 e4m3 value."""
E2M1_MAX = 6.0
"""Largest FP4 e2m1 value."""
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
"""e2m1 magnitudes of codes 0..7; codes 8..15 are the same magnitudes with the sign bit set."""
FP4_BLOCK = 32
"""Consecutive K values per ue8m0 scale of the packed FP4 routed experts."""

FP8_DTYPE = torch.float8_e4m3fn
HAS_E8M0 = hasattr(torch, "float8_e8m0fnu")
E8M0_DTYPE = torch.float8_e8m0fnu if HAS_E8M0 else torch.uint8
"""dtype of the scale tensors this module returns."""

_E8M0_BIAS = 127
_E8M0_NAN = 0xFF
_EXP_MIN, _EXP_MAX = -127, 127          # the exponents ue8m0 can hold (bytes 0..254)

# midpoints between consecutive e2m1 magnitudes; used for round-to-nearest
_E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def _bytes_view(t: torch.Tensor, what: str) -> torch.Tensor:
    """The raw bytes of a one-byte-per-element tensor as uint8."""
    if t.dtype == torch.uint8:
        return t
    if t.element_size() != 1:
        raise TypeError(f"{what}: expected a 1-byte dtype (uint8, int8, float8), got {t.dtype}")
    return t.view(torch.uint8)


def _lut(device) -> torch.Tensor:
    mags = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=device)
    return torch.cat([mags, -mags])


def ceil_log2(x: torch.Tensor) -> torch.Tensor:
    """Exact ``ceil(log2(x))`` for positive finite ``x`` as an int32 tensor (via ``frexp``, so
    exact powers of two are not pushed up by rounding)."""
    mant, exp = torch.frexp(x)
    # x = mant * 2**exp with mant in [0.5, 1); x is a power of two exactly when mant == 0.5
    return torch.where(mant == 0.5, exp - 1, exp).to(torch.int32)


def pow2_scale_exponent(amax: torch.Tensor, qmax: float, eps: float | None = None) -> torch.Tensor:
    """Exponent e (int32) of the power-of-two scale ``2**e = 2**ceil(log2(amax / qmax))``.

    ``eps`` floors ``amax`` first (the activation round trips use 1e-4).  Without ``eps``, an
    all-zero block gets e = 0 (scale 1; any scale decodes zeros to zero).  The result is clamped
    to the ue8m0 range [-127, 127].
    """
    a = amax if amax.dtype == torch.float64 else amax.float()
    if eps is not None:
        a = a.clamp_min(eps)
    zero = a == 0
    e = ceil_log2(torch.where(zero, torch.ones_like(a), a) / qmax)
    e = torch.where(zero, torch.zeros_like(e), e)
    return e.clamp(_EXP_MIN, _EXP_MAX)


# ------------------------------------------------------------------------------------------------
# e4m3 and ue8m0
# ------------------------------------------------------------------------------------------------
def fp8_e4m3_encode(x: torch.Tensor) -> torch.Tensor:
    """Round ``x`` to FP8 e4m3 (round to nearest even), saturating at +-448 instead of NaN."""
    xf = x if x.dtype == torch.float64 else x.float()
    return xf.clamp(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)


def fp8_e4m3_decode(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Values of e4m3 data given as ``float8_e4m3fn`` or as its raw bytes (uint8 / int8)."""
    if x.dtype != FP8_DTYPE:
        x = _bytes_view(x, "fp8_e4m3_decode").view(FP8_DTYPE)
    return x.to(dtype)


def ue8m0_bytes(scale: torch.Tensor) -> torch.Tensor:
    """The bytes (uint8) of a ue8m0 scale tensor (``float8_e8m0fnu``, uint8 or int8)."""
    return _bytes_view(scale, "ue8m0 scale")


def ue8m0_exponent(scale: torch.Tensor) -> torch.Tensor:
    """The exponents ``byte - 127`` (int32) of a ue8m0 scale tensor; raises ``ValueError`` on the
    NaN byte 0xFF."""
    b = ue8m0_bytes(scale)
    if bool((b == _E8M0_NAN).any()):
        n = int((b == _E8M0_NAN).sum())
        raise ValueError(f"ue8m0 scale holds {n} NaN byte(s) (0xFF): corrupt or uninitialised scales")
    return b.to(torch.int32) - _E8M0_BIAS


def ue8m0_decode(scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``2 ** (byte - 127)`` for every ue8m0 byte; raises ``ValueError`` on the NaN byte 0xFF."""
    e = ue8m0_exponent(scale)
    one = torch.ones(e.shape, dtype=torch.float32, device=e.device)
    return torch.ldexp(one, e).to(dtype)


def ue8m0_from_exponent(exponent: torch.Tensor) -> torch.Tensor:
    """ue8m0 tensor (see :data:`E8M0_DTYPE`) holding ``2 ** exponent``; exponent in [-127, 127]."""
    e = exponent.to(torch.int32)
    if bool(((e < _EXP_MIN) | (e > _EXP_MAX)).any()):
        raise ValueError(f"ue8m0 holds exponents {_EXP_MIN}..{_EXP_MAX} only, got {int(e.min())}..{int(e.max())}")
    b = (e + _E8M0_BIAS).to(torch.uint8)
    return b.view(E8M0_DTYPE) if HAS_E8M0 else b


def ue8m0_encode(scale: torch.Tensor) -> torch.Tensor:
    """ue8m0 tensor for scales that are exact powers of two (``ValueError`` otherwise)."""
    s = scale.float()
    if bool((~torch.isfinite(s) | (s <= 0)).any()):
        raise ValueError("ue8m0_encode: scales must be positive and finite")
    mant, exp = torch.frexp(s)
    if bool((mant != 0.5).any()):
        raise ValueError("ue8m0_encode: every scale must be a power of two (ue8m0 has no mantissa)")
    return ue8m0_from_exponent(exp - 1)


# ------------------------------------------------------------------------------------------------
# FP8 128 x 128 block weights
# ------------------------------------------------------------------------------------------------
def _blocks(n: int, b: int) -> int:
    return -(-n // b)


def dequant_fp8_block(
    weight_fp8: torch.Tensor,
    scale_e8m0: torch.Tensor,
    block: tuple[int, int] = (128, 128),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dequantise an FP8 e4m3 weight [N, K] with ue8m0 block scales [ceil(N/bn), ceil(K/bk)].

    ``W[n, k] = e4m3(weight[n, k]) * 2 ** (scale_byte[n // bn, k // bk] - 127)``; exact in float32.
    """
    if weight_fp8.dim() != 2:
        raise ValueError(f"dequant_fp8_block: weight must be 2-D [N, K], got shape {tuple(weight_fp8.shape)}")
    bn, bk = block
    n, k = weight_fp8.shape
    want = (_blocks(n, bn), _blocks(k, bk))
    if tuple(scale_e8m0.shape) != want:
        raise ValueError(
            f"dequant_fp8_block: weight {tuple(weight_fp8.shape)} with {bn}x{bk} blocks needs a scale of "
            f"shape {want}, got {tuple(scale_e8m0.shape)}"
        )
    w = fp8_e4m3_decode(weight_fp8, torch.float32)
    s = ue8m0_decode(scale_e8m0, torch.float32)
    s = s.repeat_interleave(bn, dim=0)[:n].repeat_interleave(bk, dim=1)[:, :k]
    return (w * s).to(dtype)


def quant_fp8_block(w: torch.Tensor, block: tuple[int, int] = (128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise a 2-D weight to (e4m3 weight [N, K], ue8m0 scale [ceil(N/bn), ceil(K/bk)]).

    Each block's scale is ``2 ** ceil(log2(amax / 448))`` (1 for an all-zero block); the block is
    divided by it (exactly: a power of two) and rounded to nearest-even e4m3
    (:func:`fp8_block_encode` with 2-D blocks).
    """
    if w.dim() != 2:
        raise ValueError(f"quant_fp8_block: weight must be 2-D [N, K], got shape {tuple(w.shape)}")
    wf = w.float()
    if not bool(torch.isfinite(wf).all()):
        raise ValueError("quant_fp8_block: weight holds NaN or infinite values")
    q, e = fp8_block_encode(wf, tuple(block))
    return q, ue8m0_from_exponent(e)


def fp8_block_encode(x: torch.Tensor, block, eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The one FP8 block encoder: ``x`` cut into blocks, one power-of-two scale ``2 ** e`` per
    block with ``e = ceil(log2(max(amax, eps) / 448))`` (:func:`pow2_scale_exponent`), each
    block divided by its scale (exact) and rounded to e4m3 (nearest even, saturating).

    ``block``: an int (blocks of that many channels along the last dim: KV entries,
    activations) or a pair ``(bn, bk)`` (bn x bk tiles of the last two dims: the checkpoints'
    weights).  Edges are zero-padded, so the last block may be shorter.  Computes in float32
    (float64 for float64 input).  Returns (e4m3 codes shaped like ``x``, int32 exponents
    [..., ceil(K/bk)] or [..., ceil(N/bn), ceil(K/bk)])."""
    sizes = (block,) if isinstance(block, int) else tuple(block)
    nd = len(sizes)
    xf = x if x.dtype == torch.float64 else x.float()
    dims = xf.shape[-nd:]
    counts = [_blocks(n, b) for n, b in zip(dims, sizes)]
    pad = [p for n, c, b in reversed(list(zip(dims, counts, sizes))) for p in (0, c * b - n)]
    if any(pad):
        xf = torch.nn.functional.pad(xf, pad)
    tiles = xf.reshape(*xf.shape[:-nd], *[v for c, b in zip(counts, sizes) for v in (c, b)])
    within = tuple(range(-1, -2 * nd, -2))                     # the dims inside a block
    e = pow2_scale_exponent(tiles.abs().amax(dim=within, keepdim=True), E4M3_MAX, eps=eps)
    q = fp8_e4m3_encode(torch.ldexp(tiles, -e)).reshape(xf.shape)
    for i, n in enumerate(dims):
        q = q.narrow(q.dim() - nd + i, 0, n)
    for d in reversed(within):                 # the outer block dim first: the other index stays valid
        e = e.squeeze(d)
    return q.contiguous(), e


def fp8_block_decode(q: torch.Tensor, exponent: torch.Tensor, block: int,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Values ``e4m3(q) * 2 ** exponent`` of :func:`fp8_block_encode` output with blocks of
    ``block`` channels along the last dim (exact in float32)."""
    n, nb = q.shape[-1], exponent.shape[-1]
    v = fp8_e4m3_decode(q, dtype)
    if nb * block != n:
        v = torch.nn.functional.pad(v, (0, nb * block - n))
    v = torch.ldexp(v.unflatten(-1, (nb, block)), exponent.unsqueeze(-1))
    return v.flatten(-2)[..., :n]


# ------------------------------------------------------------------------------------------------
# FP4 e2m1
# ------------------------------------------------------------------------------------------------
def fp4_e2m1_decode(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Values of e2m1 codes 0..15 (any integer tensor)."""
    c = codes.to(torch.long)
    if bool(((c < 0) | (c > 15)).any()):
        raise ValueError("fp4_e2m1_decode: codes must lie in 0..15")
    return _lut(codes.device)[c].to(dtype)


def fp4_e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """e2m1 codes (uint8, 0..15) of the values nearest to ``x`` (saturating at +-6).

    Ties go to the even code (mantissa bit 0), as IEEE round-to-nearest-even and hardware
    conversions do; the values of the seven midpoints round as
    0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4.
    Zero and values that round to zero get code 0 (never the negative zero 8).
    """
    xf = x if x.dtype == torch.float64 else x.float()
    if bool(torch.isnan(xf).any()):
        raise ValueError("fp4_e2m1_encode: input holds NaN")
    a = xf.abs().clamp(max=E2M1_MAX)
    mids = torch.tensor(_E2M1_MIDPOINTS, dtype=xf.dtype, device=x.device)
    lower = torch.bucketize(a, mids, right=False)      # number of midpoints < a
    upper = torch.bucketize(a, mids, right=True)       # number of midpoints <= a
    code = torch.where((lower != upper) & (lower % 2 == 1), upper, lower)
    neg = (xf < 0) & (code != 0)
    return (code + 8 * neg.to(code.dtype)).to(torch.uint8)


def fp4_pack(codes: torch.Tensor) -> torch.Tensor:
    """Pack e2m1 codes [..., K] (K even) into int8 [..., K/2]: low nibble = element 2i,
    high nibble = element 2i+1."""
    if codes.shape[-1] % 2:
        raise ValueError(f"fp4_pack: the last dim must be even, got {codes.shape[-1]}")
    c = codes.to(torch.uint8)
    lo, hi = c[..., 0::2], c[..., 1::2]
    return (lo | (hi << 4)).view(torch.int8)


def fp4_unpack(packed: torch.Tensor) -> torch.Tensor:
    """e2m1 codes (uint8) [..., 2*K2] of packed bytes [..., K2] (int8, uint8 or
    ``float4_e2m1fn_x2``); the low nibble comes first."""
    b = _bytes_view(packed, "fp4_unpack")
    lo, hi = b & 0x0F, b >> 4
    return torch.stack([lo, hi], dim=-1).reshape(*b.shape[:-1], 2 * b.shape[-1])


def dequant_fp4_experts(
    packed_int8: torch.Tensor,
    scale: torch.Tensor,
    block: int = FP4_BLOCK,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dequantise packed FP4 expert weights [..., N, K/2] with ue8m0 scales [..., N, K/32] to
    [..., N, K]: ``W[n, k] = e2m1(code[n, k]) * 2 ** (scale_byte[n, k // 32] - 127)``."""
    k = 2 * packed_int8.shape[-1]
    want = (*packed_int8.shape[:-1], _blocks(k, block))
    if tuple(scale.shape) != want:
        raise ValueError(
            f"dequant_fp4_experts: packed weight {tuple(packed_int8.shape)} (K = {k}) needs a scale of "
            f"shape {want} (one per {block} along K), got {tuple(scale.shape)}"
        )
    vals = _lut(packed_int8.device)[fp4_unpack(packed_int8).long()]
    s = ue8m0_decode(scale, torch.float32).repeat_interleave(block, dim=-1)[..., :k]
    return (vals * s).to(dtype)


def quant_fp4(w: torch.Tensor, block: int = FP4_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise weights [..., N, K] (K a multiple of ``block``) to packed FP4
    (int8 [..., N, K/2], ue8m0 scale [..., N, K/block]).

    Scale per block: ``2 ** ceil(log2(amax / 6))`` (1 for an all-zero block); values are rounded
    to the nearest e2m1 value with ties to even (see :func:`fp4_e2m1_encode`).
    """
    wf = w.float()
    k = wf.shape[-1]
    if k % block or block % 2:
        raise ValueError(f"quant_fp4: the last dim ({k}) must be a multiple of the (even) block {block}")
    if not bool(torch.isfinite(wf).all()):
        raise ValueError("quant_fp4: weight holds NaN or infinite values")
    g = wf.reshape(*wf.shape[:-1], k // block, block)
    e = pow2_scale_exponent(g.abs().amax(dim=-1), E2M1_MAX)                 # [..., K/block]
    codes = fp4_e2m1_encode(torch.ldexp(g, -e.unsqueeze(-1))).reshape(wf.shape)
    return fp4_pack(codes), ue8m0_from_exponent(e)


# ------------------------------------------------------------------------------------------------
# QAT round trips of activations / KV entries
# ------------------------------------------------------------------------------------------------
def _blockwise(x: torch.Tensor, block: int):
    """float32 (float64 for float64 input) view [..., C/block, block] of x, zero-padded along
    the last dim."""
    c = x.shape[-1]
    nb = _blocks(c, block)
    xf = x if x.dtype == torch.float64 else x.float()
    if nb * block != c:
        xf = torch.nn.functional.pad(xf, (0, nb * block - c))
    return xf.reshape(*x.shape[:-1], nb, block), c


def _straight_through(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    # forward value q, gradient of the identity (only when a gradient is being recorded, so that
    # inference results are exactly the rounded values)
    if torch.is_grad_enabled() and x.requires_grad:
        return x + (q - x).detach()
    return q


def fp8_roundtrip(x: torch.Tensor, block: int = 64, eps: float = 1e-4) -> torch.Tensor:
    """Round ``x`` through FP8 e4m3 with one power-of-two scale per ``block`` channels of the last
    dim: ``scale = 2 ** ceil(log2(max(amax, eps) / 448))``.  Returns ``x.dtype``; the gradient is
    passed straight through.  (A last dim that is not a multiple of ``block`` gets a shorter last
    block.)"""
    q, e = fp8_block_encode(x, block, eps=eps)
    q = fp8_block_decode(q, e, block, torch.float64 if x.dtype == torch.float64 else torch.float32)
    q = torch.where(torch.isnan(x), x.to(q.dtype), q).to(x.dtype)
    return _straight_through(x, q)


FP4_AMAX_FLOOR = 6.0 * 2.0**-126
"""amax floor of DeepSeek's FP4 quantisation kernel (the smallest normal fp32 times 6), so that an
all-zero block gets the scale 2**-126 instead of a division by zero."""


def fp4_roundtrip(x: torch.Tensor, block: int = 32, eps: float = FP4_AMAX_FLOOR) -> torch.Tensor:
    """Round ``x`` through FP4 e2m1 (the real grid, ties to even) with one ue8m0 scale per
    ``block`` channels of the last dim: ``scale = 2 ** ceil(log2(max(amax, eps) / 6))``.
    ``eps`` defaults to DeepSeek's kernel floor :data:`FP4_AMAX_FLOOR` (it only matters for
    blocks whose largest magnitude is below it).
    Returns ``x.dtype``; the gradient is passed straight through; NaN stays NaN."""
    g, c = _blockwise(x, block)
    nan = torch.isnan(g)
    g = torch.where(nan, torch.zeros_like(g), g)
    e = pow2_scale_exponent(g.abs().amax(dim=-1, keepdim=True), E2M1_MAX, eps=eps)
    codes = fp4_e2m1_encode(torch.ldexp(g, -e))
    q = torch.ldexp(_lut(x.device).to(g.dtype)[codes.long()], e)
    q = torch.where(nan, torch.full_like(q, float("nan")), q)
    q = q.reshape(*x.shape[:-1], -1)[..., :c].to(x.dtype)
    return _straight_through(x, q)


# ------------------------------------------------------------------------------------------------
# deployed arithmetic: FP8 activations x FP8 / FP4 weights (numerics="deployed")
# ------------------------------------------------------------------------------------------------
ACT_BLOCK = 128
"""Activation quantisation block of the deployed FP8 / FP4 matmuls (one scale per 128 inputs)."""


def act_quant(x: torch.Tensor, block: int = ACT_BLOCK, eps: float = 1e-4) -> torch.Tensor:
    """The deployed code's activation quantisation before an FP8 / FP4 matmul, as values: every
    row is cut into ``block``-channel blocks along the input dim, each gets the power-of-two
    (ue8m0) scale ``2 ** ceil(log2(max(amax, 1e-4) / 448))`` and is rounded to e4m3 (nearest
    even).  Returns float32 (float64 for float64 input) holding ``e4m3 * scale`` exactly; no
    gradient (inference arithmetic).  A width that is not a multiple of ``block`` gets a shorter
    last block (DeepSeek's kernel requires multiples of 128; small lab configs are narrower)."""
    xf = x.detach()
    xf = xf if xf.dtype == torch.float64 else xf.float()
    return fp8_roundtrip(xf, block=block, eps=eps)


def checkpoint_weight(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """The values a weight [N, K] holds once stored in the release checkpoint format, as float32:
    ``"fp8"``: e4m3 with one ue8m0 scale per 128 x 128 block; ``"fp4"``: e2m1 with one ue8m0
    scale per 32 along K (routed experts).  Weights that already are such values (a model loaded
    from an FP8 / FP4 checkpoint) come back unchanged."""
    wf = w.detach().float()
    if fmt == "fp8":
        return dequant_fp8_block(*quant_fp8_block(wf))
    if fmt == "fp4":
        return dequant_fp4_experts(*quant_fp4(wf))
    raise ValueError(f"checkpoint_weight: fmt must be 'fp8' or 'fp4', got {fmt!r}")


def deployed_weight(linear: torch.nn.Module) -> torch.Tensor:
    """``linear.weight`` as the deployed code holds it: its checkpoint-format values (see
    :func:`checkpoint_weight`) when the module carries a ``weight_format`` ("fp8" / "fp4", set
    by ``V4Model.set_numerics("deployed")``), else the weight itself.  The rounded copy is cached
    on the module and remade whenever the weight changes."""
    fmt = getattr(linear, "weight_format", None)
    w = linear.weight
    if fmt is None:
        return w
    key = (fmt, w.data_ptr(), w._version, w.dtype, w.device)
    cached = linear.__dict__.get("_deployed_weight")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, checkpoint_weight(w, fmt))
        linear.__dict__["_deployed_weight"] = cached
    return cached[1]


def deployed_linear(x: torch.Tensor, linear: torch.nn.Module) -> torch.Tensor:
    """One FP8 / FP4 matmul as deployed: ``act_quant(x) @ W^T`` with ``W`` the checkpoint-format
    weight, float32 accumulation, result rounded to bfloat16 (the output dtype of DeepSeek's
    ``fp8_gemm`` / ``fp4_gemm``)."""
    w = deployed_weight(linear)
    b = None if linear.bias is None else linear.bias.to(torch.float32)  # mlp_bias configs only
    return torch.nn.functional.linear(act_quant(x), w.to(torch.float32), b).to(torch.bfloat16)


def round_bf16(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to bfloat16 (nearest even) and held in float32: the value a bf16 tensor of
    the deployed code would hold."""
    return x.to(torch.bfloat16).to(torch.float32)


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """Normalised Walsh-Hadamard transform over the last dim (size n):
    ``x @ H_n / sqrt(n)`` with the Sylvester matrix ``H_2n = [[H_n, H_n], [H_n, -H_n]]``.

    A width n that is not a power of two is handled as DeepSeek's ``rotate_activation`` does it
    (``fast_hadamard_transform.hadamard_transform(x, scale=n ** -0.5)``): x is zero-padded to the
    next power of two N, transformed with H_N, and the first n outputs are kept, still scaled by
    ``n ** -0.5``.  That map is ``x @ H_N[:n, :n] / sqrt(n)``; it is orthogonal (and its own
    inverse) only when n is a power of two.

    O(N log N) butterfly.  bf16/fp16 inputs are transformed in float32 and cast back; the result
    has ``x.dtype`` and is differentiable."""
    n = x.shape[-1]
    if n < 1:
        raise ValueError(f"hadamard: the last dim must be >= 1, got {n}")
    N = 1 << (n - 1).bit_length()
    compute = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    y = x.to(compute)
    if N != n:
        y = torch.nn.functional.pad(y, (0, N - n))
    lead = y.shape[:-1]
    h = 1
    while h < N:
        y = y.reshape(*lead, N // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack([a + b, a - b], dim=-2)
        h *= 2
    return (y.reshape(*lead, N)[..., :n] * (1.0 / math.sqrt(n))).to(x.dtype)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, normalized: bool = True) -> torch.Tensor:
    """The n x n matrix of :func:`hadamard` (``hadamard(x) == x @ hadamard_matrix(n)``): the
    Sylvester Hadamard matrix for a power of two n, else the leading n x n block of the one of
    the next power of two; scaled by n^-1/2 when ``normalized``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"hadamard_matrix: n must be a positive integer, got {n!r}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    h = h[:n, :n]
    if normalized:
        h = h / math.sqrt(n)
    return h.to(dtype)
