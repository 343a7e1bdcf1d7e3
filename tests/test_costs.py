"""Cost model (v4lab.costs): exact cache bytes on small configs, the report's 1M-token figures,
the FLOP closed forms against a token-by-token sum, bad inputs and the figures."""
import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from matplotlib.container import BarContainer

from v4lab import costs
from v4lab.config import V4Config
from v4lab.plots import costs as plots

M1 = 2**20
GIB = 2**30


@pytest.fixture(scope="module")
def tiny():
    return V4Config.preset("tiny")  # S C H C H | S; window 8, head_dim 32 (rope 8), c_I 16, HCA 8


@pytest.fixture(scope="module")
def mini():
    return V4Config.preset("flash-mini")  # S S C H C H | S; window 128, head_dim 64 (rope 16), c_I 32, HCA 128


def _layers(kv):
    return [(r["window"], r["compressed"], r["indexer"], r["state"], r["total"]) for r in kv.per_layer]


# ------------------------------------------------------------------ exact bytes, by hand -------
# tiny, bf16: window ring 8 x 32 x 2 = 512 B in every layer
#   CSA: entry 32 x 2 = 64 B, indexer key 16 x 2 = 32 B, state 2*8*64*4 + 2*8*32*4 = 4096 + 2048
#   HCA (m = 8): state 2*8*32*4 = 2048
TINY_BF16 = {
    0: {"window": (512, 0, 0, 0, 512), "csa": (512, 0, 0, 6144, 6656), "hca": (512, 0, 0, 2048, 2560)},
    3: {"window": (512, 0, 0, 0, 512), "csa": (512, 0, 0, 6144, 6656), "hca": (512, 0, 0, 2048, 2560)},
    4: {"window": (512, 0, 0, 0, 512), "csa": (512, 64, 32, 6144, 6752), "hca": (512, 0, 0, 2048, 2560)},
    # 130 tokens: 32 CSA entries, 16 HCA entries
    130: {"window": (512, 0, 0, 0, 512), "csa": (512, 2048, 1024, 6144, 9728), "hca": (512, 1024, 0, 2048, 3584)},
}

# flash-mini, deployed, FP4 indexer: entry 48 fp8 + 16*2 bf16 rope + 1 scale = 81 -> 88 B;
#   indexer key 32/2 + 1 = 17 B; ring 128 x 88 = 11264 B
#   CSA state 2*8*128*4 + 2*8*64*4 = 8192 + 4096 = 12288; HCA (m = 128) state 2*128*64*4 = 65536
MINI_DEPLOYED = {
    0: {"window": (11264, 0, 0, 0, 11264), "csa": (11264, 0, 0, 12288, 23552), "hca": (11264, 0, 0, 65536, 76800)},
    3: {"window": (11264, 0, 0, 0, 11264), "csa": (11264, 0, 0, 12288, 23552), "hca": (11264, 0, 0, 65536, 76800)},
    4: {"window": (11264, 0, 0, 0, 11264), "csa": (11264, 88, 17, 12288, 23657), "hca": (11264, 0, 0, 65536, 76800)},
    130: {"window": (11264, 0, 0, 0, 11264), "csa": (11264, 2816, 544, 12288, 26912), "hca": (11264, 88, 0, 65536, 76888)},
}


@pytest.mark.parametrize("L", [0, 3, 4, 130])
def test_tiny_bf16_bytes_by_hand(tiny, L):
    kv = costs.kv_cache_bytes(tiny, L, storage="bf16")
    assert [r["kind"] for r in kv.per_layer] == ["window", "csa", "hca", "csa", "hca"]
    assert _layers(kv) == [TINY_BF16[L][k] for k in tiny.layer_types]
    assert kv.total == sum(r[-1] for r in _layers(kv))
    assert kv.constant == 512 * 5 + 2 * 6144 + 2 * 2048
    assert kv.per_token == 2 * (64 + 32) / 4 + 2 * 64 / 8


@pytest.mark.parametrize("L", [0, 3, 4, 130])
def test_mini_deployed_bytes_by_hand(mini, L):
    kv = costs.kv_cache_bytes(mini, L, storage="deployed", indexer_storage="fp4")
    assert _layers(kv) == [MINI_DEPLOYED[L][k] for k in mini.layer_types]
    assert kv.constant == 6 * 11264 + 2 * 12288 + 2 * 65536


def test_storage_modes_by_hand(mini):
    # fp32 (string or torch dtype), CSA layer 2 at L = 130: ring 128*64*4, 32 entries of 256 B, 32 keys of 128 B
    for storage in ("fp32", "float32", torch.float32):
        row = costs.kv_cache_bytes(mini, 130, storage=storage).per_layer[2]
        assert (row["window"], row["compressed"], row["indexer"], row["state"]) == (32768, 8192, 4096, 12288)
    # torch bf16 == "bf16"; deployed FP8 indexer keys: 32 + 4 = 36 B
    assert costs.kv_cache_bytes(mini, 130, torch.bfloat16).total == costs.kv_cache_bytes(mini, 130, "bf16").total
    assert costs.kv_cache_bytes(mini, 130, "deployed", indexer_storage="fp8").per_layer[2]["indexer"] == 32 * 36
    # indexer_storage only matters for the deployed format
    assert costs.kv_cache_bytes(mini, 130, "bf16", "fp8").total == costs.kv_cache_bytes(mini, 130, "bf16", "fp4").total


def test_batch_multiplies_everything(tiny):
    one, three = costs.kv_cache_bytes(tiny, 130), costs.kv_cache_bytes(tiny, 130, batch_size=3)
    assert (three.total, three.constant, three.per_token) == (3 * one.total, 3 * one.constant, 3 * one.per_token)
    for a, b in zip(one.per_layer, three.per_layer):
        assert all(b[k] == 3 * a[k] for k in costs.PARTS + ("total",))


def test_deployed_formats():
    assert costs.deployed_entry_bytes(512, 64) == 584  # 448 + 128 + 7 scales + 1 pad
    assert costs.deployed_indexer_bytes(128, "fp4") == 68
    assert costs.deployed_indexer_bytes(128, "fp8") == 132
    assert costs.deployed_entry_bytes(100, 8) == 112   # 92 + 16 + 2 scales = 110, padded to 8
    with pytest.raises(ValueError, match="indexer_storage"):
        costs.deployed_indexer_bytes(128, "bf16")


def test_the_cost_model_counts_the_layout_the_cache_allocates():
    from v4lab.cache import EntryStore, entry_layout

    layout = entry_layout("deployed", 512, 64)
    assert {k: w for k, (w, _) in layout.items()} == {"nope": 448, "rope": 64, "scale": 8}
    for fmt, dim, rope, want in (("deployed", 512, 64, costs.deployed_entry_bytes(512, 64)),
                                 ("deployed", 100, 8, costs.deployed_entry_bytes(100, 8)),
                                 ("fp4", 128, 0, costs.deployed_indexer_bytes(128, "fp4")),
                                 ("fp8", 128, 0, costs.deployed_indexer_bytes(128, "fp8"))):
        store = EntryStore(2, dim, fmt, torch.float32, "cpu", rope, capacity=3)
        assert store.entry_bytes() == want and store.allocated_bytes() == 2 * 3 * want


def test_v32_and_dense_bytes_by_hand():
    assert costs.kv_cache_bytes("v3.2", 1000, "deployed").total == 61 * 1000 * (656 + 132)
    assert costs.kv_cache_bytes("v3.2", 1000, "bf16").total == 61 * 1000 * (1152 + 256)
    assert costs.kv_cache_bytes("v3.2", 0, "deployed").total == 0
    # K and V, 8 heads x 128, BF16, 61 layers (also under "deployed")
    assert costs.kv_cache_bytes("dense", 1000, "deployed").total == 61 * 1000 * 2 * 8 * 128 * 2
    assert costs.kv_cache_bytes("dense", 1000, "fp32").total == 61 * 1000 * 2 * 8 * 128 * 4


def test_table_text(tiny):
    text = costs.kv_cache_bytes(tiny, 130).table()
    assert "27,136" in text and "csa" in text and "hca" in text


# ------------------------------------------------------------------ the report at 1M -----------
def test_kv_ratios_at_1m_deployed():
    v32 = costs.kv_cache_bytes("v3.2", M1, "deployed").total
    pro = costs.kv_cache_bytes("pro", M1, "deployed", "fp4").total
    flash = costs.kv_cache_bytes("flash", M1, "deployed", "fp4").total
    assert v32 / 1e9 == pytest.approx(50.40, abs=0.01)
    assert 0.095 <= pro / v32 <= 0.115
    assert 0.065 <= flash / v32 <= 0.080
    # the FP8-indexer variant is the top of both ranges (spec 10.2: 11.5 % / 8.0 %)
    pro8 = costs.kv_cache_bytes("pro", M1, "deployed", "fp8").total
    flash8 = costs.kv_cache_bytes("flash", M1, "deployed", "fp8").total
    assert 0.095 <= pro8 / v32 <= 0.116 and 0.065 <= flash8 / v32 <= 0.081
    # ~2 % of a BF16 GQA-8 baseline with Pro's 61 layers (244 GiB)
    dense = costs.kv_cache_bytes("dense", M1, "deployed").total
    assert dense == 244 * GIB
    assert 0.015 <= pro / dense <= 0.025


def test_pro_bf16_per_1m_sequence():
    kv = costs.kv_cache_bytes("pro", M1, "bf16")
    assert kv.total / GIB == pytest.approx(9.62, rel=0.02)
    assert kv.per_token == 30 * (1024 + 256) / 4 + 31 * 1024 / 128


def test_activated_params():
    flash = costs.activated_params(V4Config.preset("flash"))
    pro = costs.activated_params(V4Config.preset("pro"))
    assert flash["total"] == pytest.approx(13.27e9, rel=0.01)
    assert pro["total"] == pytest.approx(48.85e9, rel=0.01)
    assert flash["total"] == sum(v for k, v in flash.items() if k != "total")


def test_decode_flops_ratios_at_1m():
    f = {m: costs.decode_flops(m, M1, "fp8-equivalent").total for m in ("v3.2", "pro", "flash")}
    assert 0.26 <= f["pro"] / f["v3.2"] <= 0.28
    assert 0.09 <= f["flash"] / f["v3.2"] <= 0.11
    # spec 10.2 buckets: V3.2 1192.5 G; Pro lin 97.7 + idx 64.4 + attn 153.3
    assert f["v3.2"] / 1e9 == pytest.approx(1192.5, rel=0.002)
    g = costs.decode_flops("pro", M1, "fp8-equivalent").groups()
    assert g["linear"] / 1e9 == pytest.approx(97.7, rel=0.01)
    assert g["indexer"] / 1e9 == pytest.approx(64.4, rel=0.002)
    assert g["attention"] / 1e9 == pytest.approx(153.3, rel=0.002)
    # plain counting does not reproduce Flash's 9.8x (spec 10.2: 8.25x)
    plain = costs.decode_flops("flash", M1).total / costs.decode_flops("v3.2", M1).total
    assert plain == pytest.approx(0.121, abs=0.002)


def test_compare_rows():
    rows = costs.compare([4096, M1])
    assert [r["model"] for r in rows[:4]] == ["DeepSeek-V3.2", "DeepSeek-V4-Pro", "DeepSeek-V4-Flash", "dense GQA-8"]
    last = {r["model"]: r for r in rows if r["context_len"] == M1}
    assert last["DeepSeek-V4-Pro"]["kv_x_smaller"] == pytest.approx(9.5, abs=0.2)
    assert last["DeepSeek-V4-Flash"]["kv_x_smaller"] == pytest.approx(13.7, abs=0.3)
    assert last["DeepSeek-V4-Pro"]["flops_x_fewer"] == pytest.approx(3.7, abs=0.15)
    assert last["DeepSeek-V4-Flash"]["flops_x_fewer"] == pytest.approx(9.8, abs=0.4)
    text = costs.format_table(rows)
    assert "DeepSeek-V4-Flash" in text and "1,048,576" in text


# ------------------------------------------------------------------ FLOPs: small cases ---------
def test_tiny_decode_flops_by_hand(tiny):
    fl = costs.decode_flops(tiny, 130)
    # entries seen: S 8; C 8 + min(4, 32); H 8 + 16  -> 8 + 12 + 24 + 12 + 24 = 80, x 2 n_h (2c)
    assert fl.terms["core_attention"] == 2 * 4 * 80 * 64
    # two CSA layers, 32 indexer keys each, 16 heads x 16 dims
    assert fl.terms["indexer_qk"] == 2 * (2 * 16 * 16 * 32)
    p = costs.activated_params(tiny)
    assert fl.groups()["linear"] == 2 * p["total"]
    w = costs.decode_flops(tiny, 130, "fp8-equivalent")
    assert w.terms == fl.terms
    assert w.total - fl.total == pytest.approx(fl.terms["core_attention"] - 0.5 * fl.terms["indexer_qk"])


@pytest.mark.parametrize("name,L", [("tiny", 70), ("flash-mini", 300), ("v3.2", 2100), ("dense", 50)])
def test_prefill_is_the_sum_of_decodes(name, L):
    # closed forms against a token-by-token sum; the prompt is long enough to pass every cap
    # (tiny: window 8, top-4 x 4; flash-mini: window 128, top-16 x 4; V3.2: top-2048)
    model = costs.preset(name)
    pre = costs.prefill_flops(model, L, all_logits=True).terms
    summed = {}
    for n in range(1, L + 1):
        for k, v in costs.decode_flops(model, n).terms.items():
            summed[k] = summed.get(k, 0.0) + v
    for k in pre:
        if k != "compressor_pool":  # decode amortises the pooling, prefill pools each block once
            assert pre[k] == pytest.approx(summed[k], rel=1e-12), k
    head_once = costs.prefill_flops(model, L).terms["head"]
    assert head_once == pytest.approx(pre["head"] / L)


# ------------------------------------------------------------------ bad input ------------------
@pytest.mark.parametrize("L", [-1, 2.5, 1024.0, True, "1024", None])
def test_bad_length_raises(tiny, L):
    with pytest.raises(ValueError, match="context_len"):
        costs.kv_cache_bytes(tiny, L)
    with pytest.raises(ValueError, match="context_len"):
        costs.decode_flops(tiny, L)


def test_bad_inputs_raise(tiny):
    with pytest.raises(ValueError, match="context_len = 0"):
        costs.decode_flops(tiny, 0)
    with pytest.raises(ValueError, match="context_len = 0"):
        costs.prefill_flops(tiny, 0)
    with pytest.raises(ValueError, match="context_len"):
        costs.compare([0])
    with pytest.raises(ValueError, match="unknown storage"):
        costs.kv_cache_bytes(tiny, 10, storage="int8")
    with pytest.raises(ValueError, match="not a floating-point"):
        costs.kv_cache_bytes(tiny, 10, storage=torch.int8)
    with pytest.raises(ValueError, match="indexer_storage"):
        costs.kv_cache_bytes(tiny, 10, storage="deployed", indexer_storage="fp2")
    with pytest.raises(ValueError, match="unknown weighting"):
        costs.decode_flops(tiny, 10, weighting="fp16")
    with pytest.raises(ValueError, match="unknown weighting"):
        costs.compare([10], weighting="bf16")
    with pytest.raises(ValueError, match="batch_size"):
        costs.kv_cache_bytes(tiny, 10, batch_size=0)
    with pytest.raises(ValueError, match="preset"):
        costs.kv_cache_bytes("v4", 10)


# ------------------------------------------------------------------ figures --------------------
def _lens():
    return [2**k for k in range(10, 21, 2)]


def test_plot_kv_cache():
    fig = plots.plot_kv_cache(_lens())
    ax = fig.axes[0]
    assert [l.get_label() for l in ax.get_lines()] == ["DeepSeek-V3.2", "DeepSeek-V4-Pro", "DeepSeek-V4-Flash", "dense GQA-8"]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert list(ax.get_lines()[1].get_xdata()) == _lens()
    pro_end = ax.get_lines()[1].get_ydata()[-1]
    assert pro_end == pytest.approx(costs.kv_cache_bytes("pro", M1, "deployed").total / 1e9)
    notes = " ".join(t.get_text() for t in ax.texts)
    assert "report: 9.5x" in notes and "report: 13.7x" in notes and "9.51x" in notes


def test_plot_decode_flops_into_given_axes():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    assert plots.plot_decode_flops(_lens(), ax=ax) is fig
    assert len(ax.get_lines()) == 4
    notes = " ".join(t.get_text() for t in ax.texts)
    assert "report: 3.7x" in notes and "report: 9.8x" in notes


def test_plot_layer_breakdown(mini):
    fig = plots.plot_layer_breakdown(mini, 130, storage="bf16")
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == list(costs.PARTS)
    assert all(len(b) == mini.num_hidden_layers for b in bars)
    kv = costs.kv_cache_bytes(mini, 130, storage="bf16")
    unit = 2**10  # largest layer is tens of KiB
    assert ax.get_ylabel() == "bytes (KiB)"
    for part, b in zip(costs.PARTS, bars):
        assert [r.get_height() for r in b] == pytest.approx([row[part] / unit for row in kv.per_layer])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0 S", "1 S", "2 C", "3 H", "4 C", "5 H"]
