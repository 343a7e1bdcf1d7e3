"""FP8 / FP4 codecs and QAT round trips against hand-computed values (spec 8.3, 4.2, 4.4)."""
import math

import pytest
import torch

from v4lab.quant import (
    E8M0_DTYPE,
    dequant_fp4_experts,
    dequant_fp8_block,
    fp4_e2m1_decode,
    fp4_e2m1_encode,
    fp4_pack,
    fp4_roundtrip,
    fp4_unpack,
    fp8_block_decode,
    fp8_block_encode,
    fp8_e4m3_decode,
    fp8_e4m3_encode,
    fp8_roundtrip,
    hadamard,
    hadamard_matrix,
    quant_fp4,
    quant_fp8_block,
    ue8m0_bytes,
    ue8m0_decode,
    ue8m0_encode,
    ue8m0_exponent,
)


def u8(*xs):
    return torch.tensor(xs, dtype=torch.uint8)


# ------------------------------------------------------------------------------------------------
# e4m3
# ------------------------------------------------------------------------------------------------
def test_e4m3_bytes_to_values():
    # 0x38 = 0 0111 000: 2^(7-7) = 1;  0x7E = 0 1111 110: 2^8 * 1.75 = 448 (largest finite)
    # 0x40 = 2, 0x3C = 1.5, 0x08 = 2^-6 (smallest normal), 0x01 = 2^-9 (smallest subnormal)
    # 0xB8 = -1, 0xFE = -448
    got = fp8_e4m3_decode(u8(0x38, 0x7E, 0x40, 0x3C, 0x08, 0x01, 0x00, 0xB8, 0xFE))
    assert got.tolist() == [1.0, 448.0, 2.0, 1.5, 2.0**-6, 2.0**-9, 0.0, -1.0, -448.0]
    assert math.isnan(fp8_e4m3_decode(u8(0x7F)).item())
    # int8 views decode the same bytes
    assert fp8_e4m3_decode(u8(0xB8).view(torch.int8)).item() == -1.0


def test_e4m3_encode_saturates_and_rounds_to_even():
    b = fp8_e4m3_encode(torch.tensor([1.0, 500.0, -1000.0, 0.0, 448.0])).view(torch.uint8)
    assert b.tolist() == [0x38, 0x7E, 0xFE, 0x00, 0x7E]
    # 1.0625 lies halfway between 1.0 (0x38, mantissa 000) and 1.125 (0x39): even -> 1.0;
    # 1.1875 halfway between 1.125 (0x39) and 1.25 (0x3A, mantissa 010): even -> 1.25
    b = fp8_e4m3_encode(torch.tensor([1.0625, 1.1875])).view(torch.uint8)
    assert b.tolist() == [0x38, 0x3A]


# ------------------------------------------------------------------------------------------------
# ue8m0
# ------------------------------------------------------------------------------------------------
def test_ue8m0_bytes_to_values():
    got = ue8m0_decode(u8(127, 130, 126, 0, 254))
    assert got.tolist() == [1.0, 8.0, 0.5, 2.0**-127, 2.0**127]
    with pytest.raises(ValueError, match="NaN"):
        ue8m0_decode(u8(127, 0xFF))


def test_ue8m0_encode():
    s = ue8m0_encode(torch.tensor([1.0, 8.0, 0.5, 2.0**-20]))
    assert s.dtype == E8M0_DTYPE
    assert ue8m0_bytes(s).tolist() == [127, 130, 126, 107]
    with pytest.raises(ValueError, match="power of two"):
        ue8m0_encode(torch.tensor([3.0]))
    with pytest.raises(ValueError):
        ue8m0_encode(torch.tensor([0.0]))


# ------------------------------------------------------------------------------------------------
# FP8 block weights
# ------------------------------------------------------------------------------------------------
def test_dequant_fp8_block_uses_one_scale_per_block():
    w = torch.full((4, 4), 0x38, dtype=torch.uint8)             # every element 1.0
    s = u8(127, 128, 126, 130).view(2, 2)                       # 1, 2 / 0.5, 8
    got = dequant_fp8_block(w, s, block=(2, 2))
    assert got.tolist() == [
        [1, 1, 2, 2],
        [1, 1, 2, 2],
        [0.5, 0.5, 8, 8],
        [0.5, 0.5, 8, 8],
    ]


def test_dequant_fp8_block_partial_blocks_at_the_edges():
    # [130, 257] with 128x128 blocks: scale [2, 3]; the last row block has 2 rows, the last
    # column block 1 column
    w = torch.full((130, 257), 0x40, dtype=torch.uint8)         # 2.0
    s = torch.full((2, 3), 127, dtype=torch.uint8)
    s[1, 2] = 131                                               # 16
    s[0, 1] = 125                                               # 0.25
    got = dequant_fp8_block(w.view(torch.float8_e4m3fn), s)
    assert got[129, 256].item() == 32.0 and got[128, 256].item() == 32.0
    assert got[127, 256].item() == 2.0 and got[129, 255].item() == 2.0
    assert got[0, 128].item() == 0.5 and got[0, 255].item() == 0.5 and got[0, 127].item() == 2.0
    with pytest.raises(ValueError, match="scale of shape"):
        dequant_fp8_block(w, torch.zeros(1, 3, dtype=torch.uint8))


def test_quant_fp8_block_scales():
    w = torch.zeros(256, 384)
    w[0, 0] = 448.0      # block (0,0): amax 448 -> 2^ceil(log2(1)) = 1 -> byte 127
    w[0, 128] = 449.0    # block (0,1): amax 449 -> 2 -> byte 128
    w[0, 256] = 1.0      # block (0,2): ceil(log2(1/448)) = ceil(-8.81) = -8 -> byte 119
    w[128, 0] = -3.0     # block (1,0): ceil(log2(3/448)) = ceil(-7.22) = -7 -> byte 120
    q, s = quant_fp8_block(w)                                   # block (1,1), (1,2): zero -> 127
    assert s.dtype == E8M0_DTYPE and q.dtype == torch.float8_e4m3fn
    assert ue8m0_bytes(s).tolist() == [[127, 128, 119], [120, 127, 127]]
    # 449 / 2 = 224.5 -> nearest e4m3 (spacing 16 in [128, 256)) is 224 -> 448
    deq = dequant_fp8_block(q, s)
    assert deq[0, 0].item() == 448.0 and deq[0, 128].item() == 448.0
    assert deq[0, 256].item() == 1.0 and deq[128, 0].item() == -3.0


def test_quant_fp8_block_round_trip_error_bound():
    torch.manual_seed(0)
    w = torch.randn(300, 200) * torch.logspace(-3, 1, 200)      # very different column scales
    q, s = quant_fp8_block(w)
    deq = dequant_fp8_block(q, s)
    scale = ue8m0_decode(s).repeat_interleave(128, 0)[:300].repeat_interleave(128, 1)[:, :200]
    # 3 mantissa bits: half an ulp is 2^-4 of the value; subnormals are spaced 2^-9 * scale
    bound = torch.maximum(w.abs() * 2.0**-4, scale * 2.0**-10)
    assert bool(((deq - w).abs() <= bound).all())
    # representable values are fixed points (the bytes may differ: a block whose amax rounded
    # down to a power of two gets a smaller scale the second time)
    assert torch.equal(dequant_fp8_block(*quant_fp8_block(deq)), deq)


# ------------------------------------------------------------------------------------------------
# FP4 e2m1
# ------------------------------------------------------------------------------------------------
def test_e2m1_codes():
    assert fp4_e2m1_decode(torch.arange(16)).tolist() == [
        0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6
    ]


def test_fp4_bytes_low_nibble_first():
    # 0x21: low nibble 1 (0.5) = element 0, high nibble 2 (1.0) = element 1
    # 0xF9: low 9 (-0.5), high 15 (-6);  0x70: low 0 (0), high 7 (6);  0x8C: low 12 (-2), high 8 (-0)
    packed = u8(0x21, 0xF9, 0x70, 0x8C).view(torch.int8).view(1, 4)
    vals = fp4_e2m1_decode(fp4_unpack(packed))
    assert vals.tolist() == [[0.5, 1.0, -0.5, -6.0, 0.0, 6.0, -2.0, -0.0]]
    assert fp4_pack(fp4_unpack(packed)).view(torch.uint8).tolist() == [[0x21, 0xF9, 0x70, 0x8C]]
    assert packed.view(torch.uint8)[0, 1].item() == 0xF9 and packed[0, 1].item() == -7


def test_dequant_fp4_experts_scales_per_32():
    # one row, K = 64: bytes 0..15 hold elements 0..31 (scale byte 128 = 2), bytes 16..31 hold
    # elements 32..63 (scale byte 125 = 1/4)
    packed = torch.full((1, 32), 0x21, dtype=torch.uint8).view(torch.int8)
    packed[0, 16] = u8(0xF9).view(torch.int8)[0]
    scale = u8(128, 125).view(1, 2)
    got = dequant_fp4_experts(packed, scale)
    assert got.shape == (1, 64)
    assert got[0, :4].tolist() == [1.0, 2.0, 1.0, 2.0]
    assert got[0, 30:36].tolist() == [1.0, 2.0, -0.125, -1.5, 0.125, 0.25]
    # leading expert dims broadcast
    got3 = dequant_fp4_experts(packed.expand(3, 1, 32), scale.expand(3, 1, 2))
    assert got3.shape == (3, 1, 64) and torch.equal(got3[2], got)
    with pytest.raises(ValueError, match="scale of"):
        dequant_fp4_experts(packed, u8(127).view(1, 1))


def test_fp4_encode_ties_to_even():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.3, 2.6, -5.1, 100.0, -0.1])
    vals = fp4_e2m1_decode(fp4_e2m1_encode(x))
    assert vals.tolist() == [0, 1, 1, 2, 2, 4, 4, 0.5, 3, -6, 6, 0]
    assert fp4_e2m1_encode(torch.tensor([-0.1])).item() == 0        # no negative zero


def test_quant_fp4_scales_and_packing():
    w = torch.zeros(4, 64)
    w[0, :8] = torch.tensor([0.5, 1.0, -0.5, -6.0, 0.0, 6.0, -2.0, 0.0])  # amax 6 -> scale 1 (127)
    w[1, 0] = 6.5          # ceil(log2(6.5 / 6)) = 1 -> 128
    w[2, 0] = 3.0          # ceil(log2(0.5)) = -1 -> 126
    w[3, 32] = 0.75        # second block of row 3: ceil(log2(0.125)) = -3 -> 124; first block zero -> 127
    packed, s = quant_fp4(w)
    assert packed.dtype == torch.int8 and packed.shape == (4, 32) and s.shape == (4, 2)
    assert packed.view(torch.uint8)[0, :4].tolist() == [0x21, 0xF9, 0x70, 0x0C]
    assert ue8m0_bytes(s).tolist() == [[127, 127], [128, 127], [126, 127], [127, 124]]
    deq = dequant_fp4_experts(packed, s)
    assert deq[1, 0].item() == 6.0            # 6.5 / 2 = 3.25 -> 3 -> 6
    assert deq[3, 32].item() == 0.75          # 0.75 / 0.125 = 6 exactly


def test_quant_fp4_round_trip_error_bound():
    torch.manual_seed(1)
    w = torch.randn(3, 16, 128) * torch.logspace(-2, 1, 128)
    packed, s = quant_fp4(w)
    deq = dequant_fp4_experts(packed, s)
    scale = ue8m0_decode(s).repeat_interleave(32, -1)
    # 1 mantissa bit: half an ulp is 1/4 of the value; the step below 1 is 0.5 * scale
    bound = torch.maximum(w.abs() / 4, scale / 4)
    assert bool(((deq - w).abs() <= bound + 1e-12).all())
    assert torch.equal(dequant_fp4_experts(*quant_fp4(deq)), deq)


# ------------------------------------------------------------------------------------------------
# QAT round trips
# ------------------------------------------------------------------------------------------------
def test_fp8_roundtrip_one_scale_per_64_channels():
    x = torch.zeros(2, 128)
    x[0, 0], x[0, 1] = 1.0, 1.0 + 2.0**-5   # block 0: scale 2^-8; 1 -> 256 exact, 264 -> 256
    x[0, 64] = 1000.0                        # block 1: scale 4; 250 -> 256 (spacing 16) -> 1024
    x[0, 65] = 3.0                           # 0.75 in e4m3 units: exact
    x[1, :64] = 1e-6                         # amax floored at 1e-4: scale 2^-22, 4.19 -> 4
    y = fp8_roundtrip(x)
    assert y[0, 0].item() == 1.0 and y[0, 1].item() == 1.0
    assert y[0, 64].item() == 1024.0 and y[0, 65].item() == 3.0
    assert y[1, 0].item() == 4 * 2.0**-22
    assert bool((y[1, 64:] == 0).all())


def test_fp8_roundtrip_dtype_bound_and_gradient():
    torch.manual_seed(2)
    x = torch.randn(3, 5, 448, dtype=torch.float64)
    y = fp8_roundtrip(x)
    assert y.dtype == torch.float64
    amax = x.abs().view(3, 5, 7, 64).amax(-1, keepdim=True)
    scale = torch.exp2(torch.ceil(torch.log2(amax / 448)))
    bound = torch.maximum(x.abs().view(3, 5, 7, 64) * 2.0**-4, scale * 2.0**-10).view(3, 5, 448)
    assert bool(((y - x).abs() <= bound).all())
    assert torch.equal(fp8_roundtrip(y), y)                     # idempotent
    assert fp8_roundtrip(x.to(torch.bfloat16)).dtype == torch.bfloat16
    xg = x.clone().requires_grad_(True)
    fp8_roundtrip(xg).sum().backward()
    assert bool((xg.grad == 1).all())                           # straight-through


def test_one_fp8_block_encoder_by_hand():
    # one block of 4 channels: amax 1000 -> scale 2^ceil(log2(1000/448)) = 4; 1000/4 = 250 rounds
    # to 256 (e4m3 spacing 16 above 128), 3/4 = 0.75 is exact; the second block (amax 1e-6) is
    # floored at eps 1e-4: scale 2^ceil(log2(1e-4/448)) = 2^-22, 1e-6 * 2^22 = 4.19 -> 4
    x = torch.tensor([[1000.0, 3.0, 0.0, -0.0, 1e-6, 0.0]])
    q, e = fp8_block_encode(x, 4, eps=1e-4)
    assert e.tolist() == [[2, -22]] and q.dtype == torch.float8_e4m3fn and q.shape == x.shape
    assert q.float().tolist() == [[256.0, 0.75, 0.0, 0.0, 4.0, 0.0]]
    assert fp8_block_decode(q, e, 4).tolist() == [[1024.0, 3.0, 0.0, 0.0, 4 * 2.0**-22, 0.0]]
    # 2-D tiles: one exponent per 2 x 2 tile, partial tiles at the edges
    w = torch.tensor([[448.0, 1.0, 0.5], [2.0, -896.0, 0.25], [0.0, 0.0, 7.0]])
    q, e = fp8_block_encode(w, (2, 2))
    assert e.tolist() == [[1, -9], [0, -6]] and q.is_contiguous()
    assert q.float().tolist() == [[224.0, 0.5, 256.0], [1.0, -448.0, 128.0], [0.0, 0.0, 448.0]]


def test_the_weight_codec_the_round_trip_and_the_cache_share_the_encoder():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(200, 300, generator=g) * 3
    q, s = quant_fp8_block(w)
    q2, e = fp8_block_encode(w, (128, 128))
    assert q.is_contiguous() and s.shape == e.shape == (2, 3)
    assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(ue8m0_exponent(s), e)
    x = torch.randn(3, 5, 448, generator=g) * 7
    q, e = fp8_block_encode(x, 64, eps=1e-4)
    assert torch.equal(fp8_block_decode(q, e, 64), fp8_roundtrip(x))
    from v4lab.cache import EntryStore

    store = EntryStore(3, 512, "deployed", torch.float32, "cpu", rope_dim=64)
    kv = torch.cat([x[:, :1], torch.randn(3, 1, 64, generator=g)], -1)
    store.append(kv)
    assert torch.equal(store.get()[..., :448], fp8_roundtrip(kv[..., :448]))


def test_fp4_roundtrip_real_grid():
    x = torch.zeros(1, 64)
    x[0, :4] = torch.tensor([0.3, 1.1, -7.0, 2.9])   # amax 7: scale 2^ceil(log2(7/6)) = 2
    x[0, 32:34] = torch.tensor([0.1, 0.07])          # amax 0.1: scale 2^ceil(log2(0.1/6)) = 2^-5
    y = fp4_roundtrip(x)
    # /2: 0.15 -> 0, 0.55 -> 0.5, -3.5 -> -4 (tie to even), 1.45 -> 1.5
    assert y[0, :4].tolist() == [0.0, 1.0, -8.0, 3.0]
    # *32: 3.2 -> 3, 2.24 -> 2
    assert y[0, 32:34].tolist() == [3 / 32, 2 / 32]
    z = x.clone()
    z[0, 5] = float("nan")
    assert math.isnan(fp4_roundtrip(z)[0, 5].item())
    assert torch.equal(fp4_roundtrip(y), y)


# ------------------------------------------------------------------------------------------------
# Hadamard
# ------------------------------------------------------------------------------------------------
def test_hadamard_small_values():
    assert hadamard(torch.tensor([1.0, 0, 0, 0])).tolist() == [0.5, 0.5, 0.5, 0.5]
    assert torch.allclose(hadamard(torch.tensor([1.0, 1, 1, 1])), torch.tensor([2.0, 0, 0, 0]))
    assert torch.allclose(hadamard(torch.tensor([3.0, 1.0])), torch.tensor([4.0, 2.0]) / math.sqrt(2))
    assert hadamard_matrix(4, normalized=False).tolist() == [
        [1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]
    ]


@pytest.mark.parametrize("n", [1, 2, 8, 128])
def test_hadamard_matches_matrix_orthogonal_and_self_inverse(n):
    torch.manual_seed(n)
    x = torch.randn(3, 2, n, dtype=torch.float64)
    H = hadamard_matrix(n, torch.float64)
    assert torch.allclose(hadamard(x), x @ H, atol=1e-12)
    assert torch.allclose(H @ H.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(hadamard(hadamard(x)), x, atol=1e-12)
    assert torch.allclose(hadamard(x).norm(dim=-1), x.norm(dim=-1))


def test_hadamard_dtype_and_errors():
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    assert hadamard(x).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="last dim"):
        hadamard(torch.randn(3, 0))
    # a width that is not a power of two: zero-padded to 16, first 12 outputs, scale 12^-1/2
    y = torch.randn(3, 12, dtype=torch.float64)
    want = hadamard(torch.nn.functional.pad(y, (0, 4)))[..., :12] * math.sqrt(16 / 12)
    assert torch.allclose(hadamard(y), want, atol=1e-12)
