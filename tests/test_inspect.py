"""Header-only checkpoint inspection on synthetic Flash / Pro checkpoints with the real shapes
(sparse payloads: nothing is written or read but the headers), file-level error reports, the
safetensors reading/writing (the library, and what v4lab adds to it) and the streamed
checkpoint <-> model-tensor conversion."""
import json
import os

import pytest
import torch

from v4lab import checkpoint as ckpt
from v4lab import safetensors_io as sio
from v4lab.checkpoint import shards
from v4lab.checkpoint import (
    expected_tensors,
    inspect_checkpoint,
    iter_checkpoint_tensors,
    iter_model_tensors,
    model_tensor_names,
    write_checkpoint,
    write_synthetic_checkpoint,
)
from v4lab.config import FP8_QUANTIZATION, V4Config
from v4lab.quant import dequant_fp4_experts, dequant_fp8_block, quant_fp4, quant_fp8_block
from v4lab.checkpoint.shards import ShardedCheckpoint, write_sharded_header_only
from v4lab.safetensors_io import (
    SafetensorsError,
    read_header,
    read_tensor,
    write_header_only,
    write_raw_header,
    write_safetensors,
)



def near(x, target, rel=0.01):
    return abs(x - target) <= rel * target


class NoPayloads:
    """A ``safe_open`` whose files refuse to hand out a tensor."""

    def __init__(self, *a, **k):
        from safetensors import safe_open

        self._f = safe_open(*a, **k)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __getattr__(self, name):
        if name in ("get_tensor", "get_tensors"):
            raise AssertionError("inspection read a payload")
        return getattr(self._f, name)

    def get_slice(self, name):
        sl = self._f.get_slice(name)
        return type("HeaderOnly", (), {"get_dtype": sl.get_dtype, "get_shape": sl.get_shape})()


def inspect_without_payloads(folder):
    """Inspection must never read a payload: every file it opens refuses to."""
    sio.release_maps()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sio, "safe_open", NoPayloads)
        r = inspect_checkpoint(folder)
    sio.release_maps()
    return r


@pytest.fixture(scope="module")
def flash_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flash")
    write_synthetic_checkpoint(folder, V4Config.preset("flash"), n_shards=46)
    return inspect_without_payloads(folder)


@pytest.fixture(scope="module")
def pro_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pro")
    write_synthetic_checkpoint(folder, V4Config.preset("pro"), n_shards=12)
    return inspect_without_payloads(folder)


# ------------------------------------------------------------------------------------------------
# the real shapes
# ------------------------------------------------------------------------------------------------
def test_flash_tensor_counts(flash_report):
    r = flash_report
    assert r.ok, r.text()
    assert r.layout == "official"
    # spec 8.1: 46 shards, 69,187 tensors, total_size 159,609,485,896 bytes
    assert len(r.files) == 46 and r.n_tensors == 69_187
    assert r.total_bytes == 159_609_485_896 == r.index_total_size
    s = r.structure
    assert s["layers"] == 43 and s["attn_sink"] == 43
    assert s["compressors"] == 41 and s["indexers"] == 21
    assert s["routed_experts"] == 11_008 == 43 * 256
    assert s["gate_bias"] == 40 and s["gate_tid2eid"] == 3
    m = r.mtp_structure
    assert m["blocks"] == 1 and m["attn_sink"] == 1 and m["gate_bias"] == 1
    assert m["routed_experts"] == 256 and m["compressors"] == 0 and m["gate_tid2eid"] == 0
    assert r.count_by_kind["routed_experts"] == 11_008 * 6        # w1/w2/w3 + their scales
    assert r.count_by_dtype["I64"] == 3 and r.count_by_dtype["I8"] == 3 * (11_008 + 256)
    assert r.schedule == "SS" + "CH" * 20 + "C|S"


def test_flash_parameter_totals(flash_report):
    r = flash_report
    # spec 1.3: 284.3B main stack ("284B"), 6.6B MTP, 13.27B activated (13.80B with embedding)
    assert near(r.params_main, 284.3e9) and near(r.params_mtp, 6.6e9, 0.02)
    assert near(r.params_total, 290.9e9)
    assert near(r.params_activated, 13.27e9) and near(r.params_activated_with_embedding, 13.80e9)


def test_pro_tensor_counts_and_totals(pro_report):
    r = pro_report
    assert r.ok, r.text()
    s, m = r.structure, r.mtp_structure
    assert s["layers"] == 61 and s["indexers"] == 30 and s["compressors"] == 61
    assert s["gate_bias"] + m["gate_bias"] == 59 and s["gate_tid2eid"] == 3
    assert s["routed_experts"] == 61 * 384 and m["routed_experts"] == 384
    # spec 1.3: "1.6T" = 1598.8B with MTP, 1573.0B without, 48.85B activated
    assert near(r.params_total, 1598.8e9) and near(r.params_main, 1573.0e9)
    assert near(r.params_activated, 48.85e9)
    assert r.schedule == "HH" + "CH" * 29 + "C|S"


def test_report_text(flash_report):
    t = flash_report.text()
    assert "69,187 tensors" in t and "284.33B main" in t and "11,008 routed experts" in t
    assert "SSCHCH" in t and ": OK" in t and str(flash_report) == t


def test_hf_layout_flash(tmp_path):
    write_synthetic_checkpoint(tmp_path, V4Config.preset("flash"), layout="hf", n_shards=4)
    r = inspect_checkpoint(tmp_path)
    assert r.ok, r.text()
    assert r.layout == "hf" and r.n_tensors == len(expected_tensors(V4Config.preset("flash"), "hf"))
    assert r.structure["routed_experts"] == 11_008 and r.structure["indexers"] == 21
    assert r.params_mtp == 0 and near(r.params_total, 284.3e9)


def test_hf_names_and_shapes_match_transformers():
    transformers = pytest.importorskip("transformers")
    cfg = V4Config.preset("tiny")
    hf_cfg = transformers.DeepseekV4Config(**cfg.to_hf())
    with torch.device("meta"):
        model = transformers.DeepseekV4ForCausalLM(hf_cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: shape for k, (_, shape) in expected_tensors(cfg, "hf").items()}
    assert got == want


def test_official_layout_generalises_to_small_configs():
    cfg = V4Config.preset("tiny", quantization_config=FP8_QUANTIZATION, expert_dtype="fp4")
    exp = expected_tensors(cfg, "official")
    # [N, K] FP8 weights get ceil(N/128) x ceil(K/128) scales even when smaller than a block
    assert exp["layers.0.attn.wq_b.weight"] == ("F8_E4M3", (4 * 32, 32))
    assert exp["layers.0.attn.wq_b.scale"] == ("F8_E8M0", (1, 1))
    assert exp["layers.0.ffn.experts.7.w2.weight"] == ("I8", (64, 16))
    assert exp["layers.0.ffn.experts.7.w2.scale"] == ("F8_E8M0", (64, 1))
    assert exp["layers.0.ffn.gate.tid2eid"] == ("I64", (97, 2))
    assert exp["layers.2.attn.compressor.ape"] == ("F32", (8, 32))             # HCA ratio 8
    assert exp["layers.1.attn.indexer.compressor.ape"] == ("F32", (4, 32))
    assert exp["mtp.0.ffn.gate.bias"] == ("F32", (8,))
    names = model_tensor_names(cfg)
    assert not any(n.endswith(".scale") for n in names)
    assert set(names) == {n for n in exp if not n.endswith(".scale")}
    plain = expected_tensors(V4Config.preset("tiny"), "official")           # no quantisation
    assert plain["layers.0.attn.wq_b.weight"] == ("F32", (128, 32)) and len(plain) == len(names)


# ------------------------------------------------------------------------------------------------
# problems are reported with file and tensor names
# ------------------------------------------------------------------------------------------------
def small_cfg():
    return V4Config.preset("tiny", quantization_config=FP8_QUANTIZATION, expert_dtype="fp4")


def write_small(folder, tensors, n_shards=3):
    write_sharded_header_only(folder, tensors, n_shards=n_shards)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(small_cfg().to_official(), f)
    with open(os.path.join(folder, shards.INDEX_NAME)) as f:
        return json.load(f)["weight_map"]


def test_missing_extra_misshapen_and_wrong_dtype(tmp_path):
    t = dict(expected_tensors(small_cfg()))
    del t["layers.3.attn.attn_sink"]
    t["layers.0.attn.bogus.weight"] = ("BF16", (4, 4))
    t["layers.1.attn.wq_a.weight"] = ("F8_E4M3", (33, 64))
    t["layers.4.ffn.gate.bias"] = ("BF16", (8,))
    wm = write_small(tmp_path, t)
    r = inspect_checkpoint(tmp_path)
    assert not r.ok
    assert r.missing == ["layers.3.attn.attn_sink"]
    assert r.unexpected == ["layers.0.attn.bogus.weight"]
    assert [m.name for m in r.misshapen] == ["layers.1.attn.wq_a.weight"]
    assert r.misshapen[0].expected == ("F8_E4M3", (32, 64)) and r.misshapen[0].found == ("F8_E4M3", (33, 64))
    assert [m.name for m in r.wrong_dtype] == ["layers.4.ffn.gate.bias"]
    assert r.wrong_dtype[0].found[0] == "BF16" and r.wrong_dtype[0].expected[0] == "F32"
    probs = "\n".join(r.problems())
    for name in ("layers.0.attn.bogus.weight", "layers.1.attn.wq_a.weight", "layers.4.ffn.gate.bias"):
        assert f"{wm[name]}: " in probs and name in probs
    assert "layers.3.attn.attn_sink" in probs
    text = r.text()
    assert "PROBLEMS" in text and "missing (1)" in text and "wrong dtype (1)" in text


def test_header_lying_about_offsets(tmp_path):
    wm = write_small(tmp_path, dict(expected_tensors(small_cfg())))
    fname = wm["layers.2.attn.wkv.weight"]
    path = tmp_path / fname
    h = read_header(path)
    raw = {"__metadata__": {"format": "pt"}}
    for name, t in h.tensors.items():
        raw[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [t.begin, t.end]}
    e = raw["layers.2.attn.wkv.weight"]
    e["data_offsets"] = [e["data_offsets"][0], e["data_offsets"][1] - 1]       # one byte short
    victim = sorted((n for n in raw if n != "__metadata__"), key=lambda n: raw[n]["data_offsets"][0])[-2]
    last = sorted((n for n in raw if n != "__metadata__"), key=lambda n: raw[n]["data_offsets"][0])[-1]
    raw[last]["data_offsets"] = list(raw[victim]["data_offsets"])               # overlaps victim
    raw[last]["dtype"], raw[last]["shape"] = raw[victim]["dtype"], raw[victim]["shape"]
    write_raw_header(path, raw, file_size=os.path.getsize(path))
    r = inspect_checkpoint(tmp_path)
    errs = "\n".join(r.errors)
    assert not r.ok
    assert f"{fname}: tensor 'layers.2.attn.wkv.weight': data_offsets" in errs and "needs" in errs
    assert "overlap" in errs and repr(victim) in errs and repr(last) in errs
    with pytest.raises(SafetensorsError, match="layers.2.attn.wkv.weight"):
        read_header(path)


def test_truncated_shard_and_broken_header(tmp_path):
    wm = write_small(tmp_path, dict(expected_tensors(small_cfg())))
    files = sorted(set(wm.values()))
    victim = tmp_path / files[1]
    h = read_header(victim)
    last = max(h.tensors.values(), key=lambda t: t.end).name
    os.truncate(victim, os.path.getsize(victim) - 10)
    broken = tmp_path / files[2]
    os.truncate(broken, 20)                     # shorter than its own header
    r = inspect_checkpoint(tmp_path)
    errs = "\n".join(r.errors)
    assert f"{files[1]}: tensor {last!r} ends at payload byte" in errs and "truncated" in errs
    assert f"{files[2]}: header claims" in errs
    # the tensors of the unreadable shard are reported as such, not as missing
    assert set(r.unreadable) == {n for n, f in wm.items() if f == files[2]}
    assert r.missing == [] and not r.ok
    assert any(files[2] in p for p in r.problems())
    # reading the cut tensor raises instead of faulting on the memory map
    with pytest.raises(SafetensorsError, match="truncated"):
        read_tensor(victim, last)


def test_index_pointing_to_the_wrong_file(tmp_path):
    wm = write_small(tmp_path, dict(expected_tensors(small_cfg())))
    files = sorted(set(wm.values()))
    name = next(n for n, f in wm.items() if f == files[0])
    wm[name] = files[1]
    shards.write_index(tmp_path, wm, 12345)
    r = inspect_checkpoint(tmp_path)
    errs, warns = "\n".join(r.errors), "\n".join(r.warnings)
    assert f"{files[1]}: the index maps tensor {name!r} to this file but its header lacks it" in errs
    assert f"{files[0]}: tensor {name!r} is in this file but the index maps it to {files[1]}" in warns
    assert "total_size = 12345" in warns
    assert not r.ok


def test_missing_shard_and_missing_config(tmp_path):
    wm = write_small(tmp_path, dict(expected_tensors(small_cfg())))
    gone = sorted(set(wm.values()))[0]
    os.remove(tmp_path / gone)
    os.remove(tmp_path / "config.json")
    r = inspect_checkpoint(tmp_path)
    assert any(f"{gone}: shard listed in the index does not exist" in e for e in r.errors)
    assert "no config.json" in r.config_error and r.expected_count is None and not r.ok
    r2 = inspect_checkpoint(tmp_path, config=small_cfg())
    assert r2.missing == [] and set(r2.unreadable) == {n for n, f in wm.items() if f == gone}


# ------------------------------------------------------------------------------------------------
# safetensors reading / writing
# ------------------------------------------------------------------------------------------------
def sample_tensors():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 64, generator=g)
    q8, s8 = quant_fp8_block(w)
    q4, s4 = quant_fp4(w)
    return {
        "a.bf16": torch.randn(3, 7, generator=g).to(torch.bfloat16),
        "b.f32": torch.randn(2, 3, 4, generator=g),
        "c.fp8": q8,
        "c.scale": s8,
        "d.packed": q4,
        "d.scale": s4,
        "e.i64": torch.randint(0, 1 << 40, (11, 3), generator=g),
        "f.scalar": torch.tensor(2.5),
        "g.empty": torch.zeros(0, 4),
    }


def assert_same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.numel():
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def test_write_and_read_every_dtype(tmp_path):
    t = sample_tensors()
    p = tmp_path / "x.safetensors"
    size = write_safetensors(p, t)
    assert size == os.path.getsize(p)
    h = read_header(p)
    assert h.ok and not h.warnings and h.tensors["c.scale"].dtype == "F8_E8M0"
    assert h.tensors["d.packed"].dtype == "I8" and h.tensors["c.fp8"].dtype == "F8_E4M3"
    for name, x in t.items():
        assert_same(read_tensor(p, name), x)
        assert_same(read_tensor(p, name, use_mmap=False), x)
    # mapped tensors are private copies: writing to one leaves the file alone
    y = read_tensor(p, "b.f32")
    y.zero_()
    assert_same(read_tensor(p, "b.f32", use_mmap=False), t["b.f32"])


def test_the_v4_dtypes_round_trip_through_the_library(tmp_path):
    """F8_E4M3 weights, F8_E8M0 scales, packed FP4 as I8 and as F4 (float4_e2m1fn_x2): written by
    ``safetensors.torch.save_file`` (directly and through write_safetensors), read back by
    ``safe_open`` / ``load_file`` and by read_header / read_tensor, bit for bit and with the dtype
    strings of spec 8.2 in the header."""
    st = pytest.importorskip("safetensors.torch")
    from safetensors import safe_open

    if not hasattr(torch, "float8_e8m0fnu"):
        pytest.skip("this torch has no float8_e8m0fnu")
    g = torch.Generator().manual_seed(5)
    codes = torch.randint(0, 256, (6, 16), generator=g, dtype=torch.int32).to(torch.uint8)
    t = {
        "w.e4m3": (torch.randn(4, 40, generator=g) * 30).to(torch.float8_e4m3fn),
        "s.e8m0": torch.randint(100, 140, (4, 2), generator=g, dtype=torch.int32).to(torch.uint8).view(torch.float8_e8m0fnu),
        "x.i8": codes.view(torch.int8),
    }
    want = {"w.e4m3": ("F8_E4M3", (4, 40)), "s.e8m0": ("F8_E8M0", (4, 2)), "x.i8": ("I8", (6, 16))}
    if hasattr(torch, "float4_e2m1fn_x2"):
        t["x.f4"] = codes.clone().view(torch.float4_e2m1fn_x2)    # the same bytes, two e2m1 codes each
        want["x.f4"] = ("F4", (6, 32))                              # the header counts FP4 values
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    write_safetensors(ours, t)
    st.save_file(t, str(theirs))
    for path in (ours, theirs):
        h = read_header(path)
        assert {n: (i.dtype, i.shape) for n, i in h.tensors.items()} == want
        assert sum(i.nbytes for i in h.tensors.values()) == 4 * 40 + 4 * 2 + 2 * 6 * 16
        with safe_open(str(path), framework="pt") as f:
            for name, x in t.items():
                assert_same(f.get_tensor(name), x)
        back = st.load_file(str(path))
        for name, x in t.items():
            assert_same(back[name], x)
            assert_same(read_tensor(path, name), x)
            assert_same(read_tensor(path, name, use_mmap=False), x)
    # views of one storage are written as separate tensors (the library alone refuses them)
    views = tmp_path / "views.safetensors"
    write_safetensors(views, {"x": codes.view(torch.int8), "top": codes[:3]})
    assert_same(read_tensor(views, "x"), codes.view(torch.int8))
    assert_same(read_tensor(views, "top"), codes[:3])
    # the two spellings of a packed FP4 expert decode to the same weight (spec 8.3)
    if "x.f4" in t:
        scale = torch.full((6, 1), 127, dtype=torch.uint8)
        a, b = read_tensor(ours, "x.i8"), read_tensor(ours, "x.f4")
        assert torch.equal(dequant_fp4_experts(a, scale), dequant_fp4_experts(b, scale))


def test_sharded_names_stay_importable_from_safetensors_io():
    from v4lab.safetensors_io import INDEX_NAME, ShardedCheckpoint as Old, write_index

    assert Old is ShardedCheckpoint and INDEX_NAME == "model.safetensors.index.json"
    assert write_index is shards.write_index


def test_a_file_the_library_refuses_is_named_with_its_tensor(tmp_path):
    """A gap between tensors and bytes past the last one: readable JSON, refused by the library,
    reported with the file and the tensor."""
    p = tmp_path / "gap.safetensors"
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}}
    write_raw_header(p, header, file_size=None)
    h = read_header(p, validate=False)
    assert list(h.tensors) == ["a", "b"] and not h.ok
    assert any("gap.safetensors: 8 payload bytes before tensor 'b'" in e for e in h.errors), h.errors
    with pytest.raises(SafetensorsError, match="'b'"):
        read_tensor(p, "a")


def test_header_only_file_is_sparse_and_reads_zeros(tmp_path):
    p = tmp_path / "big.safetensors"
    size = write_header_only(p, {"w": ("BF16", (1 << 15, 1 << 15)), "s": ("F8_E8M0", (4, 4))})
    st = os.stat(p)
    assert st.st_size == size > 2 * (1 << 30)
    if st.st_blocks * 512 > (1 << 20):
        pytest.skip("this file system has no sparse files")
    assert int(read_tensor(p, "s").view(torch.uint8).sum()) == 0


def test_sharded_reader(tmp_path):
    t = sample_tensors()
    write_checkpoint(tmp_path, t.items(), max_shard_bytes=200)
    ck = ShardedCheckpoint(tmp_path)
    assert len(ck.files) > 1 and set(ck.names()) == set(t) and ck.problems() == ([], [])
    assert ck.total_size == sum(x.numel() * x.element_size() for x in t.values())
    for name, x in t.items():
        assert_same(ck.read(name), x)
    streamed = dict(ck.items())
    assert streamed.keys() == t.keys()
    with pytest.raises(KeyError, match="nope"):
        ck.read("nope")


# ------------------------------------------------------------------------------------------------
# streamed conversion model tensors <-> checkpoint files
# ------------------------------------------------------------------------------------------------
def random_model_tensors(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = expected_tensors(cfg.replace(quantization_config=None, expert_dtype=None), "official")
    out = {}
    for name in model_tensor_names(cfg):
        dt, shape = shapes[name]
        if dt == "I64":
            out[name] = torch.stack(
                [torch.randperm(cfg.n_routed_experts, generator=g)[: shape[1]] for _ in range(shape[0])]
            )
        else:
            out[name] = torch.randn(shape, generator=g) * 0.1
    return out


def test_official_round_trip_quantises_like_quant(tmp_path):
    cfg = small_cfg()
    model = random_model_tensors(cfg)
    write_checkpoint(tmp_path, iter_checkpoint_tensors(model, cfg), cfg, max_shard_bytes=1 << 16)
    r = inspect_checkpoint(tmp_path)
    assert r.ok, r.text()
    got = dict(iter_model_tensors(tmp_path))
    assert got.keys() == model.keys()
    for name in ("layers.1.attn.wq_b.weight", "mtp.0.e_proj.weight", "layers.0.ffn.shared_experts.w2.weight"):
        assert torch.equal(got[name], dequant_fp8_block(*quant_fp8_block(model[name])))
    for name in ("layers.2.ffn.experts.5.w1.weight", "mtp.0.ffn.experts.0.w2.weight"):
        assert torch.equal(got[name], dequant_fp4_experts(*quant_fp4(model[name])))
    assert torch.equal(got["layers.0.ffn.gate.tid2eid"], model["layers.0.ffn.gate.tid2eid"])
    assert torch.equal(got["layers.3.hc_ffn_fn"], model["layers.3.hc_ffn_fn"])
    # streaming one layer only
    one = dict(iter_model_tensors(tmp_path, names=[n for n in model if n.startswith("layers.4.")]))
    assert one.keys() == {n for n in model if n.startswith("layers.4.")}


def test_hf_round_trip_is_exact(tmp_path):
    cfg = V4Config.preset("tiny")
    model = random_model_tensors(cfg)
    write_checkpoint(tmp_path, iter_checkpoint_tensors(model, cfg, "hf"), cfg, layout="hf")
    r = inspect_checkpoint(tmp_path)
    assert r.ok and r.layout == "hf", r.text()
    ck = ShardedCheckpoint(tmp_path)
    gate_up = ck.read("model.layers.2.mlp.experts.gate_up_proj")
    assert torch.equal(gate_up[3, :32], model["layers.2.ffn.experts.3.w1.weight"])  # gate rows first
    assert torch.equal(gate_up[3, 32:], model["layers.2.ffn.experts.3.w3.weight"])
    got = dict(iter_model_tensors(tmp_path))
    assert got.keys() == {n for n in model if not n.startswith("mtp.")}
    for name, x in got.items():
        assert torch.equal(x.to(model[name].dtype), model[name]), name


def test_name_mapping_round_trip():
    cfg = V4Config.preset("tiny")
    for name in model_tensor_names(cfg):
        hf = ckpt.official_to_hf_name(name)
        if name.startswith("mtp.") or ".ffn.experts." in name:
            assert hf is None
        else:
            assert hf is not None and ckpt.hf_to_official_name(hf) == name


def test_transformers_reads_official_files_as_our_hf_mapping(tmp_path):
    """transformers' own converter of the official names agrees with official_to_hf_name and
    the expert fusion (gate rows first)."""
    transformers = pytest.importorskip("transformers")
    cfg = V4Config.preset("flash-mini")          # HCA ratio 128: a schedule transformers accepts
    model = random_model_tensors(cfg, seed=3)
    write_checkpoint(tmp_path, iter_checkpoint_tensors(model, cfg), cfg)
    hf = transformers.DeepseekV4ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    got = hf.state_dict()
    want = dict(iter_checkpoint_tensors(model, cfg, "hf"))
    assert got.keys() == want.keys()
    for name, x in want.items():
        assert torch.equal(got[name], x.to(got[name].dtype)), name
