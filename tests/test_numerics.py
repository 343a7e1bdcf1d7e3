"""The three numerics modes against an independent implementation of DeepSeek's arithmetic.

Every rounding is written here from its bit definition, in a few lines of float64 torch, without
calling ``v4lab.quant``:

* e4m3: 1 sign, 4 exponent bits (bias 7), 3 mantissa bits; normal exponents -6..8, subnormal
  spacing 2**-9, largest value 448; round to nearest, ties to even.
* e2m1: 1 sign, 2 exponent bits (bias 1), 1 mantissa bit; values 0, 0.5, 1, 1.5, 2, 3, 4, 6.
* ue8m0 scales: ``2 ** ceil(log2(max(amax, floor) / qmax))`` per block (floor 1e-4 for FP8,
  6 * 2**-126 for FP4, as in DeepSeek's kernels).

The whole-model tests then rebuild "reference" from "hf" and "deployed" from a bf16
"reference" by applying exactly those roundings through this file's own hooks.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from v4lab import quant
from v4lab.config import V4Config
from v4lab.indexer import Indexer
from v4lab.model import V4Model

FP8_FLOOR, FP4_FLOOR = 1e-4, 6 * 2.0**-126


# ------------------------------------------------------------------------------------------------
# the oracle: roundings from the bit definitions
# ------------------------------------------------------------------------------------------------
def e4m3(v: torch.Tensor) -> torch.Tensor:
    """Nearest e4m3 value (ties to even), saturating at +-448; float64."""
    v = v.double().clamp(-448, 448)
    e = torch.floor(torch.log2(v.abs().clamp_min(2.0**-6))).clamp(-6, 8)  # binade (subnormals: -6)
    step = 2.0 ** (e - 3)  # 3 mantissa bits
    return torch.round(v / step) * step  # torch.round: half to even


def e2m1(v: torch.Tensor) -> torch.Tensor:
    """Nearest e2m1 value (ties to even), saturating at +-6; float64."""
    v = v.double().clamp(-6, 6)
    e = torch.floor(torch.log2(v.abs().clamp_min(1.0))).clamp(0, 2)
    step = 2.0 ** (e - 1)  # 1 mantissa bit
    return torch.round(v / step) * step


def pow2_scale(amax: torch.Tensor, qmax: float, floor: float) -> torch.Tensor:
    return 2.0 ** torch.ceil(torch.log2(amax.double().clamp_min(floor) / qmax))


def blockwise(x: torch.Tensor, block: int, fmt, qmax: float, floor: float) -> torch.Tensor:
    """Round trip of x along its last dim, one power-of-two scale per ``block`` (shorter last block)."""
    out = torch.empty(x.shape, dtype=torch.float64)
    xd = x.double()
    for c0 in range(0, x.shape[-1], block):
        b = xd[..., c0 : c0 + block]
        s = pow2_scale(b.abs().amax(-1, keepdim=True), qmax, floor)
        out[..., c0 : c0 + block] = fmt(b / s) * s
    return out


def fp8_rt(x, block):
    return blockwise(x, block, e4m3, 448.0, FP8_FLOOR)


def fp4_rt(x, block=32):
    return blockwise(x, block, e2m1, 6.0, FP4_FLOOR)


def sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.kron(torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64), h)
    return h / math.sqrt(n)


def weight_rt(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """A weight as the release checkpoint stores it: FP8 128 x 128 blocks or FP4 1 x 32."""
    wd = w.double()
    if fmt == "fp4":
        return blockwise(wd, 32, e2m1, 6.0, 0.0 + 1e-300)
    out = torch.empty_like(wd)
    for r0 in range(0, wd.shape[0], 128):
        for c0 in range(0, wd.shape[1], 128):
            b = wd[r0 : r0 + 128, c0 : c0 + 128]
            amax = b.abs().max()
            s = pow2_scale(amax, 448.0, 1e-300) if amax > 0 else torch.tensor(1.0, dtype=torch.float64)
            out[r0 : r0 + 128, c0 : c0 + 128] = e4m3(b / s) * s
    return out


def spread(*shape, seed=0):
    """Values over many binades, with exact e4m3 / e2m1 ties and zeros mixed in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * torch.exp2(torch.randint(-12, 12, shape, generator=g).float())
    return x


# ------------------------------------------------------------------------------------------------
# each rounding alone against the formula
# ------------------------------------------------------------------------------------------------
def test_oracle_formulas_hit_the_format_grids():
    # the e2m1 grid and its ties (0.25 -> 0, 0.75 -> 1, ..., 5 -> 4), straight from the definition
    v = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.3, -5.1])
    assert e2m1(v).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -0.5, -6.0]
    # e4m3: 448 is the largest value, 2**-9 the smallest subnormal, 17 -> 16 (tie to even), 19 -> 20
    v = torch.tensor([500.0, 2.0**-9, 2.0**-10 * 1.01, 17.0, 19.0, 1.0625])
    assert e4m3(v).tolist() == [448.0, 2.0**-9, 2.0**-9, 16.0, 20.0, 1.0]


def test_fp8_roundtrip_of_stored_kv_matches_the_formula():
    x = spread(3, 7, 448, seed=1)
    x[0, 0, :64] = 0.0  # an all-zero block
    x[0, 1, 64:128] *= 1e-9  # a block below the 1e-4 amax floor
    x[1, 2, 5] = 448.0 * 2.0**-3 * (1 + 1 / 16)  # an exact tie between two e4m3 values
    # a block of exact ties between neighbouring e4m3 values (scale 1: amax 448)
    x[2, 0, :64] = torch.tensor([448.0] + [(2.0**e) * (1 + (2 * m + 1) / 16) for e in range(-6, 8) for m in (0, 3)]
                                + [2.0**-10, 3 * 2.0**-10] * 17 + [-(2.0**-10) * 5])
    got = quant.fp8_roundtrip(x, block=64)
    assert torch.equal(got.double(), fp8_rt(x, 64).float().double())
    assert not torch.equal(got, x)


def test_fp4_roundtrip_after_hadamard_matches_the_formula():
    x = spread(5, 4, 32, seed=2)
    x[0, 0] = 0.0
    x[0, 1] *= 1e-30  # below the FP8 floor: the FP4 kernel's floor (6 * 2**-126) applies
    rot = quant.hadamard(x)
    err = (rot.double() - x.double() @ sylvester(32)).abs().amax(-1)
    assert (err <= 1e-6 * x.double().abs().amax(-1)).all()
    got = quant.fp4_roundtrip(rot, block=32)
    want = fp4_rt(rot)
    assert torch.equal(got.double(), want.float().double())
    assert len(torch.unique(got[0, 1])) > 2  # the tiny block keeps its shape (its own scale)
    # exact ties between neighbouring e2m1 values, at scale 1 (amax 6) and at scale 2**-3
    ties = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0] * 4)
    for t in (ties, -ties * 2.0**-3):
        assert torch.equal(quant.fp4_roundtrip(t[None]).double(), fp4_rt(t[None]))


def test_deployed_activation_quantisation_matches_the_formula():
    x = spread(6, 200, seed=3).bfloat16()  # 200 = one 128-block and a shorter 72-block
    got = quant.act_quant(x)
    assert got.dtype == torch.float32
    assert torch.equal(got.double(), fp8_rt(x.float(), 128).float().double())
    # scales are powers of two: every quantised block divided by its scale is on the e4m3 grid
    s = pow2_scale(x[:, :128].float().abs().amax(-1, keepdim=True), 448.0, FP8_FLOOR)
    assert torch.equal(e4m3(got[:, :128] / s), got[:, :128].double() / s)


@pytest.mark.parametrize("fmt", ["fp8", "fp4"])
def test_checkpoint_weight_formats_match_the_formula(fmt):
    w = torch.randn(200, 160, generator=torch.Generator().manual_seed(4)) * 0.05
    w[:128, :128] *= 30  # blocks of different magnitude get different scales
    got = quant.checkpoint_weight(w, fmt)
    assert torch.equal(got.double(), weight_rt(w, fmt))
    assert torch.equal(quant.checkpoint_weight(got, fmt), got)  # checkpoint values come back unchanged


def test_deployed_linear_is_fp8_activation_times_checkpoint_weight_in_fp32_to_bf16():
    lin = torch.nn.Linear(160, 96, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(96, 160, generator=torch.Generator().manual_seed(5)) * 0.1)
    lin.weight_format = "fp8"
    x = spread(9, 160, seed=6).bfloat16()
    got = quant.deployed_linear(x, lin)
    want = (fp8_rt(x.float(), 128) @ weight_rt(lin.weight, "fp8").T).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16
    # the fp32 sum of the kernel may land on the other side of a bf16 rounding boundary
    ulp = torch.exp2(torch.floor(torch.log2(want.float().abs().clamp_min(1e-30))) - 7)
    assert ((got.float() - want.float()).abs() <= ulp).all()
    assert (got == want).float().mean() > 0.95


def test_deployed_linear_shares_one_scale_per_128_inputs():
    """Inputs 0..63 2**16 times larger than 64..127, and a weight that reads only 64..159: with
    one scale per 128 inputs the small ones fall among e4m3's subnormals (a power-of-two scale
    keeps e4m3's relative precision for every value within its 2**15 range; the block size only
    matters beyond it).  The result must follow that formula and be many bf16 ulps away from both
    a 64-input block and no rounding."""
    g = torch.Generator().manual_seed(8)
    lin = torch.nn.Linear(160, 32, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[:, 64:] = torch.randn(32, 96, generator=g) * 0.1
    lin.weight_format = "fp8"
    x = torch.randn(8, 160, generator=g)
    x[:, :64] *= 2.0**16
    x = x.bfloat16()
    got = quant.deployed_linear(x, lin).double()
    w = weight_rt(lin.weight, "fp8")

    def out(xq):
        return (xq @ w.T).float().to(torch.bfloat16).double()

    want, per64, exact = out(fp8_rt(x.float(), 128)), out(fp8_rt(x.float(), 64)), out(x.double())
    size = want.abs().amax()
    assert (got - want).abs().amax() <= 2.0**-7 * size
    assert (per64 - want).abs().amax() > 2.0**-5 * size and (exact - want).abs().amax() > 2.0**-5 * size


def test_bf16_index_scores_follow_the_deployed_bf16_ops():
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 6, 4, 16, generator=g).bfloat16()
    k = torch.randn(2, 5, 16, generator=g).bfloat16()
    w = (torch.randn(2, 6, 4, generator=g) * 0.3).bfloat16()
    pos = torch.arange(14, 20)
    got = Indexer.scores(q, w, k, pos)
    # the deployed code: bf16 einsum, bf16 ReLU * weights, bf16 sum over heads
    dots = torch.einsum("bshd,btd->bsht", q, k)
    want = (dots.relu() * w[..., None]).sum(dim=2).float()
    valid = (torch.arange(5)[None, :] + 1) * 4 <= pos[:, None] + 1  # entry j complete at (j+1)*4 <= t+1
    assert torch.equal(got, want.masked_fill(~valid, float("-inf")))
    fp32 = Indexer.scores(q.float(), w.float(), k.float(), pos)
    assert not torch.equal(got, fp32)


# ------------------------------------------------------------------------------------------------
# whole model: reference == hf + this file's roundings
# ------------------------------------------------------------------------------------------------
CFG = V4Config.preset("tiny")


def _ids(n, seed=0):
    return torch.randint(0, CFG.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))


def _hook_kv(model):
    """FP8 round trip of the nope dims of window KV (kv_norm output; RoPE leaves nope dims alone)
    and of compressed entries (compressor norm output)."""
    r = CFG.qk_rope_head_dim

    def hook(mod, args, out):
        return torch.cat([fp8_rt(out[..., :-r], 64).to(out.dtype), out[..., -r:]], dim=-1)

    for blk in model.layers:
        blk.attn.kv_norm.register_forward_hook(hook)
        if blk.attn.compressor is not None:
            blk.attn.compressor.norm.register_forward_hook(hook)


def _hook_indexer(model):
    """Hadamard + FP4 round trip of the indexer's rotated queries and its new keys."""
    n = CFG.index_head_dim

    def qat(t):
        return fp4_rt(t.double() @ sylvester(n)).to(t.dtype)

    def key_hook(mod, args, out):
        k, first = out
        return (qat(k) if k.shape[1] else k), first

    for blk in model.layers:
        ix = blk.attn.indexer
        if ix is None:
            continue
        ix.compressor.register_forward_hook(key_hook)
        plain = ix.queries

        def queries(*a, _plain=plain, **kw):
            q, w = _plain(*a, **kw)
            return qat(q), w

        ix.queries = queries


def _pair(**switches):
    """(v4lab model with the given QAT switches, hf-numerics twin with identical weights)."""
    ours = V4Model(CFG, seed=0)
    for blk in ours.layers:
        blk.attn.qat = switches.get("kv", True)
        if blk.attn.indexer is not None:
            blk.attn.indexer.qat = switches.get("indexer", True)
        blk.ffn.weight_before_w2 = switches.get("before_w2", True)
    twin = copy.deepcopy(ours).set_numerics("hf")
    return ours, twin


@pytest.mark.parametrize("which", ["kv", "indexer", "all"])
def test_reference_equals_hf_plus_the_roundings(which):
    ids = _ids(64)
    if which == "all":
        ours, twin = V4Model(CFG, seed=0), None
        twin = copy.deepcopy(ours).set_numerics("hf")
        assert ours.numerics == "reference"
    else:
        ours, twin = _pair(kv=which == "kv", indexer=which == "indexer", before_w2=False)
    with torch.no_grad():
        plain = twin(ids)
        if which in ("kv", "all"):
            _hook_kv(twin)
        if which in ("indexer", "all"):
            _hook_indexer(twin)
        a, b = ours(ids), twin(ids)
    scale = b.abs().max().item()
    # the roundings matter (the comparison is not vacuous) ...
    assert (plain - b).abs().max().item() > 1e-2 * scale
    # ... and with them applied, v4lab's reference numerics are hf's: bit for bit when one
    # rounding is switched on alone, to fp32 round-off with all of them (the routing weight
    # before w2 is w2 (w h) = w (w2 h), linear, so it only moves round-off)
    if which == "all":
        assert (a - b).abs().max().item() < 2e-5 * scale
    else:
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# whole model: deployed == bf16 reference + FP8 activations, checkpoint weights, bf16 index scores
# ------------------------------------------------------------------------------------------------
def _bf16_models(cfg=CFG, seed=0):
    m32 = V4Model(cfg, seed=seed)
    m16 = V4Model(cfg, seed=seed, dtype=torch.bfloat16)
    m16.load_state_dict({k: v.to(m16.state_dict()[k].dtype) for k, v in m32.state_dict().items()})
    return m32, m16


def _oracle_deployed(m16):
    """The bf16 reference model with this file's deployed arithmetic: weights rounded to the
    checkpoint format, FP8 activations before each FP8 / FP4 linear (fp32 accumulation -> bf16),
    bf16 weights_proj and index scores."""
    o = copy.deepcopy(m16)
    with torch.no_grad():
        for blk in o.layers:
            a = blk.attn
            lins = [a.wq_a, a.wq_b, a.wkv, a.wo_b] + ([a.indexer.wq_b] if a.indexer is not None else [])
            for e in [*blk.ffn.experts, *([blk.ffn.shared_experts] if blk.ffn.shared_experts is not None else [])]:
                lins += [e.w1, e.w2, e.w3]
            for lin in lins + [a.wo_a]:
                lin.weight.copy_(weight_rt(lin.weight.float(), "fp8").to(lin.weight.dtype))
            for lin in lins:
                lin.forward = lambda x, _l=lin: (fp8_rt(x.float(), 128) @ _l.weight.double().T).float().to(torch.bfloat16)
            if a.indexer is not None:
                ix = a.indexer

                def queries(x, cq, positions, rope, _ix=ix, _plain=ix.queries):
                    q, _ = _plain(x, cq, positions, rope)
                    w = F.linear(x.bfloat16(), _ix.weights_proj.weight.bfloat16())
                    return q, w * (_ix.head_dim**-0.5 * _ix.n_heads**-0.5)

                ix.queries = queries
    return o


def _deployed_scores(q, w, keys, positions, ratio=4, budget=0):
    dots = torch.einsum("bshd,btd->bsht", q.bfloat16(), keys.bfloat16())
    s = (dots.relu() * w.bfloat16()[..., None]).sum(dim=2).float()
    valid = (torch.arange(keys.shape[1])[None, :] + 1) * ratio <= positions[:, None] + 1
    return s.masked_fill(~valid, float("-inf"))


def test_deployed_equals_bf16_reference_plus_the_deployed_roundings(monkeypatch):
    _, m16 = _bf16_models()
    oracle = _oracle_deployed(m16)
    ids = _ids(64, seed=1)
    with torch.no_grad():
        ref16 = m16(ids)
        dep = copy.deepcopy(m16).set_numerics("deployed")(ids)
        monkeypatch.setattr(Indexer, "scores", staticmethod(_deployed_scores))
        want = oracle(ids)
    scale = want.abs().max().item()
    assert (ref16 - want).abs().max().item() > 1e-2 * scale  # the deployed roundings matter
    # equal up to the order of fp32 sums (bit for bit on the machine this was written on; a
    # different summation order may move an occasional bf16 rounding by one ulp)
    assert (dep - want).abs().max().item() < 1e-3 * scale
    assert (dep.argmax(-1) == want.argmax(-1)).all()


def test_deployed_is_close_to_reference_within_the_fp8_to_bf16_error_ratio():
    """e4m3 keeps 3 mantissa bits, bf16 7: a deployed rounding is up to 16x coarser than a bf16
    one.  So on the same model, the deployed numerics may move the logits away from the bf16
    reference by more than bf16 moves them away from fp32, but by no more than ~16x that (x2
    margin for the extra roundings of weights and activations); not identical either."""
    for seed in range(2):
        m32, m16 = _bf16_models(seed=seed)
        ids = _ids(48, seed=seed)
        with torch.no_grad():
            ref32, ref16 = m32(ids), m16(ids)
            dep = m16.set_numerics("deployed")(ids)

        def rel(a, b):
            return ((a - b).norm(dim=-1) / b.norm(dim=-1)).median().item()

        e16, e8 = rel(ref16, ref32), rel(dep, ref16)
        assert not torch.equal(dep, ref16)
        assert e16 < e8 < 32 * e16, (e16, e8)


def test_deployed_needs_bf16_and_switches_cleanly():
    m32, m16 = _bf16_models()
    with pytest.raises(ValueError, match="bfloat16"):
        m32.set_numerics("deployed")
    ids = _ids(24)
    with torch.no_grad():
        before = m16(ids)
        m16.set_numerics("deployed")
        assert m16.layers[0].attn.wq_a.weight_format == "fp8"
        d = m16(ids)
        after = m16.set_numerics("reference")(ids)
    assert not torch.equal(before, d)
    assert torch.equal(before, after)  # no weight was changed in place, no override left behind
    assert "forward" not in m16.layers[0].attn.wq_a.__dict__
    fp4 = V4Config.preset("tiny", expert_dtype="fp4", moe_intermediate_size=48)
    with pytest.raises(ValueError, match="multiples of 32"):
        V4Model(fp4, dtype=torch.bfloat16, numerics="deployed")


def test_bf16_reference_keeps_fp32_parameters_and_bf16_streams():
    _, m16 = _bf16_models()
    fp32_names = [n for n, p in m16.named_parameters() if p.dtype == torch.float32]
    assert fp32_names and all(n.rsplit(".", 1)[-1] in ("attn_sink", "ape", "bias") or "hc_" in n for n in fp32_names)
    with torch.no_grad():
        logits, H = m16(_ids(16), return_hidden=True)
    assert H.dtype == torch.bfloat16 and logits.dtype == torch.float32


# ------------------------------------------------------------------------------------------------
# the trained model: each mode's distance from the reference it was trained with
# ------------------------------------------------------------------------------------------------
def test_flash_mini_modes_stay_close_to_reference():
    """On the trained flash-mini (smooth, unlike the random tiny model), leaving out the QAT
    roundings or computing in bf16 changes the logits by well under 1%, the deployed FP8
    arithmetic by a few percent, and the loss by under 1%."""
    from v4lab.data import BOS_ID, encode_text, long_document
    from v4lab.pretrained import has_weights, load_flash_mini

    if not has_weights():
        pytest.skip("flash-mini weights not available")
    ref = load_flash_mini()
    ids = torch.tensor([[BOS_ID] + encode_text(long_document(200_000).text[150_000:150_511])])
    with torch.no_grad():
        out = {"reference": ref(ids)[0], "hf": copy.deepcopy(ref).set_numerics("hf")(ids)[0],
               "bf16": load_flash_mini(dtype=torch.bfloat16)(ids)[0],
               "deployed": load_flash_mini(numerics="deployed", dtype=torch.bfloat16)(ids)[0]}
    r = out["reference"]

    def rel(x):
        return ((x - r).norm(dim=-1) / r.norm(dim=-1)).median().item()

    def loss(x):
        return F.cross_entropy(x[:-1], ids[0, 1:]).item()

    assert 0 < rel(out["hf"]) < 0.01 and 0 < rel(out["bf16"]) < 0.01
    assert rel(out["bf16"]) < rel(out["deployed"]) < 0.03
    assert abs(loss(out["deployed"]) / loss(r) - 1) < 0.01
    assert (out["deployed"].argmax(-1) == r.argmax(-1)).float().mean() > 0.95
