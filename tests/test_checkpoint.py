"""Loading, saving, streaming and placing whole models from checkpoints (official FP8/FP4 files
and the transformers layout), checked against transformers, against the in-memory model and
against broken files.  Tiny configs only; the synthetic official checkpoint is written with the
`safetensors` library and decoded here from the spec (8.3), independently of v4lab.quant."""
import copy
import json
import os
import shutil
import struct

import pytest
import torch

from hf_oracle import hf_config, randomize
from v4lab import V4Config
from v4lab.config import FP8_QUANTIZATION
from v4lab import safetensors_io as sio
from v4lab.checkpoint import (
    CheckpointError,
    PackedFP4Linear,
    expected_tensors,
    inspect_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from v4lab.convert import official_to_hf
from v4lab.model import V4Model
from v4lab.quant import dequant_fp4_experts, dequant_fp8_block, quant_fp4, quant_fp8_block
from v4lab.streaming import StreamedModel, dispatch, layer_nbytes

safetensors_torch = pytest.importorskip("safetensors.torch")

# dims below one 128 block: every FP8 scale is [1, 1] (partial blocks, ceil-div)
TINY_Q = V4Config.preset("tiny", quantization_config=FP8_QUANTIZATION, expert_dtype="fp4")
# dims that are multiples of 128 in places: several full FP8 blocks per weight, plus partial ones
BLOCKY = V4Config.preset(
    "tiny", hidden_size=256, q_lora_rank=256, num_attention_heads=4, head_dim=64, qk_rope_head_dim=16,
    o_groups=2, o_lora_rank=128, moe_intermediate_size=128, index_n_heads=16, index_head_dim=16,
    num_hidden_layers=3, compress_ratios=[4, 8, 0, 0], num_hash_layers=1, torch_dtype="bfloat16",
    quantization_config=FP8_QUANTIZATION, expert_dtype="fp4")

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
LUT = torch.cat([E2M1, -E2M1])


def ids_for(cfg, n=40, batch=1, seed=0):
    return torch.randint(0, cfg.vocab_size, (batch, n), generator=torch.Generator().manual_seed(seed))


def logits(model, ids, cache=None):
    with torch.no_grad():
        return model(ids, cache)


# ------------------------------------------------------------------------------------------------
# a synthetic checkpoint in the exact official layout
# ------------------------------------------------------------------------------------------------
def decode_fp8(w, s):
    """spec 8.3: W[n, k] = e4m3(w[n, k]) * 2^(s[n // 128, k // 128] - 127)"""
    n, k = w.shape
    exp = s.view(torch.uint8).to(torch.float32) - 127
    scale = torch.exp2(exp).repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    return w.to(torch.float32) * scale


def decode_fp4(w, s):
    """spec 8.3: two e2m1 codes per byte, low nibble first; one ue8m0 scale per 32 along K."""
    b = w.view(torch.uint8).to(torch.int64)
    codes = torch.stack([b & 15, b >> 4], dim=-1).reshape(w.shape[0], 2 * w.shape[1])
    scale = torch.exp2(s.view(torch.uint8).to(torch.float32) - 127).repeat_interleave(32, 1)
    return LUT[codes] * scale


def synthetic_official(folder, cfg, seed=0, n_shards=3):
    """Random tensors with the official names, dtypes and shapes (FP8 e4m3 + ue8m0 128x128 scales,
    packed FP4 + ue8m0 per-32 scales, I64 tid2eid, BF16/F32 others), written as shards + index +
    config.json with the `safetensors` library.  Returns the dequantised values (model names)."""
    g = torch.Generator().manual_seed(seed)
    layout = expected_tensors(cfg, "official")
    # spot checks of the layout against spec 8.2 / 8.3
    d, I, ql = cfg.hidden_size, cfg.moe_intermediate_size, cfg.q_lora_rank
    assert layout["layers.1.ffn.experts.0.w1.weight"] == ("I8", (I, d // 2))
    assert layout["layers.1.ffn.experts.0.w1.scale"] == ("F8_E8M0", (I, d // 32))
    assert layout["layers.0.attn.wq_a.weight"] == ("F8_E4M3", (ql, d))
    assert layout["layers.0.attn.wq_a.scale"] == ("F8_E8M0", (-(-ql // 128), -(-d // 128)))
    assert layout["layers.0.ffn.gate.tid2eid"] == ("I64", (cfg.vocab_size, cfg.num_experts_per_tok))
    assert layout["layers.0.hc_attn_fn"][0] == "F32" and layout["embed.weight"][0] == "BF16"

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    stored, values = {}, {}
    for name, (dt, shape) in layout.items():
        if name.endswith(".scale"):
            continue
        base = name[: -len("weight")]
        if dt == "F8_E4M3":
            n, k = shape
            q = (rnd(n, k) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
            e0 = round(torch.log2(torch.tensor(k ** -0.5 / 64)).item())
            nb = (-(-n // 128), -(-k // 128))
            e = e0 + torch.randint(-1, 2, nb, generator=g)
            s = (e + 127).to(torch.uint8).view(torch.float8_e8m0fnu)
            stored[name], stored[base + "scale"] = q, s
            values[name] = decode_fp8(q, s)
        elif dt == "I8":
            n, k2 = shape
            q = torch.randint(0, 256, (n, k2), generator=g, dtype=torch.int32).to(torch.uint8).view(torch.int8)
            e0 = round(torch.log2(torch.tensor((2 * k2) ** -0.5 / 2.93)).item())
            e = e0 + torch.randint(-1, 2, (n, 2 * k2 // 32), generator=g)
            s = (e + 127).to(torch.uint8).view(torch.float8_e8m0fnu)
            stored[name], stored[base + "scale"] = q, s
            values[name] = decode_fp4(q, s)
        elif dt == "I64":
            E = cfg.n_routed_experts
            t = torch.stack([torch.randperm(E, generator=g)[: shape[1]] for _ in range(shape[0])])
            stored[name], values[name] = t, t
        else:
            if "norm" in name or name.endswith("_scale"):
                t = 1.0 + 0.2 * rnd(*shape)
            elif name.endswith("_fn"):
                t = 0.05 * rnd(*shape)
            elif name == "embed.weight":
                t = rnd(*shape)
            elif len(shape) >= 2:
                t = rnd(*shape) * shape[-1] ** -0.5
            else:
                t = 0.5 * rnd(*shape)
            t = t.to(sio.dtype_to_torch(dt))
            stored[name], values[name] = t, t.to(torch.float32)
    names = list(stored)
    per = -(-len(names) // n_shards)
    weight_map, total = {}, 0
    for i in range(n_shards):
        part = {k: stored[k].contiguous() for k in names[i * per:(i + 1) * per]}
        fname = sio.shard_file_name(i + 1, n_shards)
        safetensors_torch.save_file(part, os.path.join(folder, fname), metadata={"format": "pt"})
        weight_map.update((k, fname) for k in part)
        total += sum(t.numel() * t.element_size() for t in part.values())
    sio.write_index(folder, weight_map, total)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg.to_official(), f)
    return values


@pytest.mark.parametrize("cfg", [TINY_Q.replace(torch_dtype="bfloat16"), BLOCKY], ids=["partial-blocks", "128-multiples"])
def test_official_files_match_transformers(tmp_path, cfg):
    from transformers import DeepseekV4ForCausalLM

    values = synthetic_official(tmp_path, cfg, seed=3)
    r = inspect_checkpoint(tmp_path)
    assert r.ok and r.layout == "official" and r.scale_tensors > 0, r.text()
    ours = load_checkpoint(tmp_path, numerics="hf")
    # every tensor is the spec's dequantisation of the stored bytes
    sd = ours.state_dict()
    assert sd.keys() == values.keys()
    for name, v in values.items():
        assert torch.equal(sd[name], v.to(sd[name].dtype)), name
    hf = DeepseekV4ForCausalLM(hf_config(cfg.replace(quantization_config=None, expert_dtype=None))).eval()
    hf.load_state_dict(official_to_hf(values, cfg), strict=True)
    ids = ids_for(cfg, 40)
    with torch.no_grad():
        ref = hf(ids).logits
    got = logits(ours, ids)
    assert ref.abs().max() > 0.5
    assert (ref - got).abs().max().item() <= 1e-4


# ------------------------------------------------------------------------------------------------
# save -> load
# ------------------------------------------------------------------------------------------------
def random_model(cfg, seed=1, numerics="reference"):
    return randomize(V4Model(cfg, numerics=numerics), seed, cfg.n_routed_experts)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random tiny model saved in the official layout with FP8 linears and FP4 experts, in shards."""
    folder = tmp_path_factory.mktemp("official_q")
    model = random_model(TINY_Q)
    save_checkpoint(model, folder, max_shard_bytes=150_000)
    return model, folder


def quant_round_trip(model, cfg):
    """A copy of the model whose quantised weights are replaced by their quantise-dequantise trip."""
    out = copy.deepcopy(model)
    layout = expected_tensors(cfg, "official")
    with torch.no_grad():
        for name, p in out.state_dict().items():
            dt = layout[name][0]
            if dt == "F8_E4M3":
                p.copy_(dequant_fp8_block(*quant_fp8_block(p)))
            elif dt == "I8":
                p.copy_(dequant_fp4_experts(*quant_fp4(p)))
    return out


def test_save_official_quantised_then_load(saved):
    model, folder = saved
    r = inspect_checkpoint(folder)
    assert r.ok and len(r.files) > 3, r.text()
    assert {"F8_E4M3", "F8_E8M0", "I8", "I64", "F32"} <= set(r.count_by_dtype)
    loaded = load_checkpoint(folder)
    ids = ids_for(TINY_Q, 40, batch=2)
    got, orig = logits(loaded, ids), logits(model, ids)
    # exactly the model whose weights went through the FP8 / FP4 round trip
    assert torch.equal(got, logits(quant_round_trip(model, TINY_Q), ids))
    # the quantisation error, measured: per weight, then on the logits
    layout = expected_tensors(TINY_Q, "official")
    sd, sl = model.state_dict(), loaded.state_dict()
    rel = {"F8_E4M3": 0.0, "I8": 0.0}
    for name, (dt, _) in layout.items():
        if dt in rel:
            rel[dt] = max(rel[dt], ((sl[name] - sd[name]).norm() / sd[name].norm()).item())
    assert 0 < rel["F8_E4M3"] < 2 ** -4             # 3 mantissa bits
    assert 0 < rel["I8"] < 0.2                      # e2m1 with a power-of-two scale per 32
    dist = ((got - orig).norm() / orig.norm()).item()
    assert 0 < dist < 0.5, dist


def test_packed_experts_equal_dequantised(saved):
    _, folder = saved
    ids = ids_for(TINY_Q, 37, batch=2, seed=5)
    for numerics in ("reference", "hf"):
        deq = load_checkpoint(folder, numerics=numerics)
        packed = load_checkpoint(folder, numerics=numerics, experts="packed")
        w1 = packed.layers[2].ffn.experts[3].w1
        assert isinstance(w1, PackedFP4Linear) and w1.weight.dtype == torch.int8
        assert isinstance(packed.layers[2].ffn.shared_experts.w1, torch.nn.Linear)
        assert torch.equal(w1.dequantized(), deq.layers[2].ffn.experts[3].w1.weight)
        assert torch.equal(logits(packed, ids), logits(deq, ids))
    # packed experts are written back as they are (no second rounding)
    out = folder.parent / "repacked"
    save_checkpoint(packed, out, max_shard_bytes=150_000)
    a, b = sio.ShardedCheckpoint(folder), sio.ShardedCheckpoint(out)
    for name in ("layers.1.ffn.experts.5.w2.weight", "layers.1.ffn.experts.5.w2.scale", "mtp.0.ffn.experts.0.w3.scale"):
        assert torch.equal(a.read(name).view(torch.uint8), b.read(name).view(torch.uint8)), name
    assert torch.equal(logits(load_checkpoint(out, numerics="hf", experts="packed"), ids), logits(deq, ids))


def test_layer_bytes_packed_and_dequantised(saved):
    _, folder = saved
    for experts in ("dequantize", "packed"):
        m = load_checkpoint(folder, experts=experts)
        for i, layer in enumerate(m.layers):
            got = sum(t.numel() * t.element_size() for t in layer.state_dict().values())
            assert layer_nbytes(TINY_Q, i, experts, torch.float32)["total"] == got
    flash = V4Config.preset("flash")
    p, d = layer_nbytes(flash, 2, "packed"), layer_nbytes(flash, 2, "dequantize")   # a CSA layer, bf16
    assert p["routed_experts"] == 256 * 3 * (2048 * 4096 // 2 + 2048 * 4096 // 32)
    assert d["routed_experts"] == 256 * 3 * 2048 * 4096 * 2
    assert p["other"] == d["other"] and p["total"] < 0.3 * d["total"]


def test_packed_needs_fp4_experts(tmp_path):
    save_checkpoint(random_model(V4Config.preset("tiny")), tmp_path)
    with pytest.raises(CheckpointError, match="experts='packed'"):
        load_checkpoint(tmp_path, experts="packed")


def test_save_hf_loads_in_transformers(tmp_path):
    from transformers import DeepseekV4ForCausalLM

    model = random_model(TINY_Q, seed=2, numerics="hf")
    save_checkpoint(model, tmp_path, format="hf", max_shard_bytes=400_000)
    r = inspect_checkpoint(tmp_path)
    assert r.ok and r.layout == "hf" and len(r.files) > 1, r.text()
    with open(tmp_path / "config.json") as f:
        assert json.load(f).get("quantization_config") is None       # the hf layout is unquantised
    hf = DeepseekV4ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = ids_for(TINY_Q, 45, seed=4)
    with torch.no_grad():
        ref = hf(ids).logits
    got = logits(model, ids)
    assert ref.abs().max() > 0.5
    assert (ref - got).abs().max().item() <= 1e-4
    # and back: the transformers layout loads exactly (the MTP block is not in it)
    back = load_checkpoint(tmp_path, numerics="hf")
    assert torch.equal(logits(back, ids), got)
    with pytest.raises(ValueError, match="disagree"):
        save_checkpoint(model, tmp_path / "x", format="hf", layout="official")


# ------------------------------------------------------------------------------------------------
# streamed execution and accelerate placement
# ------------------------------------------------------------------------------------------------
def materialised_bytes(model):
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())
               if t.device.type != "meta")


def test_streamed_equals_in_memory(saved):
    _, folder = saved
    ref_model = load_checkpoint(folder)
    total = materialised_bytes(ref_model)
    ids = ids_for(TINY_Q, 40, batch=2, seed=6)
    want = logits(ref_model, ids)
    cap = 300_000
    sm = StreamedModel(folder, max_memory_bytes=cap)
    # an independent instrument: what is really materialised in the skeleton when blocks and
    # experts run (the hooks run after the loader's own)
    seen = []

    def probe(mod, args):
        seen.append(materialised_bytes(sm.model))

    for layer in sm.model.layers:
        layer.register_forward_pre_hook(probe)
        for e in layer.ffn.experts:
            e.register_forward_pre_hook(probe)
    got = sm(ids)
    assert torch.equal(got, want)
    assert cap < total / 5 and 0 < max(seen) <= sm.peak_bytes <= cap
    assert sm.current_bytes == 0 and materialised_bytes(sm.model) == 0
    assert len(seen) > len(sm.model.layers)                     # experts came one at a time
    # a sequence in two chunks through a cache: as the in-memory model does it
    c1, c2 = ref_model.new_cache(2), sm.new_cache(2)
    a = torch.cat([logits(ref_model, ids[:, :23], c1), logits(ref_model, ids[:, 23:], c1)], 1)
    b = torch.cat([sm(ids[:, :23], c2), sm(ids[:, 23:], c2)], 1)
    assert torch.equal(a, b)
    # packed experts streamed: same logits, fewer bytes
    sp = StreamedModel(folder, max_memory_bytes=cap, experts="packed")
    assert torch.equal(sp(ids), want) and sp.peak_bytes < sm.peak_bytes
    # an output head larger than what is left is applied in row chunks
    H = ref_model.hidden_states(ids)
    sm.max_memory_bytes = 12_000
    torch.testing.assert_close(sm.logits_from_hidden(H), want, rtol=1e-6, atol=1e-6)
    assert sm.peak_bytes <= cap
    with pytest.raises(MemoryError, match=r"layer \d needs"):
        StreamedModel(folder, max_memory_bytes=150_000)


def test_streamed_hf_layout(tmp_path):
    model = random_model(V4Config.preset("tiny"), seed=4, numerics="hf")
    save_checkpoint(model, tmp_path, format="hf", max_shard_bytes=300_000)
    ids = ids_for(model.config, 30, seed=2)
    sm = StreamedModel(tmp_path, numerics="hf", max_memory_bytes=400_000)
    assert torch.equal(sm(ids), logits(load_checkpoint(tmp_path, numerics="hf"), ids))


def test_dispatch_with_disk_offload(saved, tmp_path):
    _, folder = saved
    ref_model = load_checkpoint(folder)
    ids = ids_for(TINY_Q, 33, batch=2, seed=7)
    want = logits(ref_model, ids)
    m = dispatch(folder, max_memory={"cpu": 900_000}, offload_folder=tmp_path / "off1")
    devices = set(m.hf_device_map.values())
    assert devices == {"cpu", "disk"}
    assert all(m.hf_device_map[k] == "cpu" for k in ("embed", "head", "norm", "hc_head_fn"))
    assert m.layers[4].attn.wq_a.weight.device.type == "meta"           # on disk until its forward
    assert torch.equal(logits(m, ids), want)
    # an in-memory model placed the same way
    m2 = dispatch(load_checkpoint(folder), max_memory={"cpu": 900_000}, offload_folder=tmp_path / "off2")
    assert torch.equal(logits(m2, ids), want)
    with pytest.raises(ValueError, match="offload_folder"):
        dispatch(folder, max_memory={"cpu": 900_000})


# ------------------------------------------------------------------------------------------------
# bad input: an error naming the file and the tensor, never a crash or a wrong model
# ------------------------------------------------------------------------------------------------
def shard_of(folder, name):
    with open(os.path.join(folder, sio.INDEX_NAME)) as f:
        return json.load(f)["weight_map"][name]


def edit_header(path, fn):
    """Rewrite a shard's JSON header (fn edits the dict), keeping its payload bytes."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        payload = f.read()
    fn(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + payload)


def edit_shard(folder, name, fn):
    """Load the shard holding `name` with the safetensors library, let fn edit the dict, save it
    back and update the index."""
    fname = shard_of(folder, name)
    path = os.path.join(folder, fname)
    tensors = safetensors_torch.load_file(path)
    fn(tensors)
    safetensors_torch.save_file(tensors, path, metadata={"format": "pt"})
    with open(os.path.join(folder, sio.INDEX_NAME)) as f:
        index = json.load(f)
    wm = {k: v for k, v in index["weight_map"].items() if v != fname or k in tensors}
    wm.update((k, fname) for k in tensors)
    sio.write_index(folder, wm, index["metadata"]["total_size"])
    return fname


def edit_config(folder, **changes):
    with open(os.path.join(folder, "config.json")) as f:
        c = json.load(f)
    c.update(changes)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(c, f)
    return "config.json"


def truncate(folder):
    fname = shard_of(folder, "layers.2.attn.wq_b.weight")
    path = os.path.join(folder, fname)
    last = max(sio.read_header(path).tensors.values(), key=lambda t: t.end).name
    os.truncate(path, os.path.getsize(path) - 100)      # cuts the last tensor, or the last two
    return fname, last


def lying_offsets(folder):
    name = "layers.3.attn.wkv.weight"
    fname = shard_of(folder, name)

    def shift(h):
        b, e = h[name]["data_offsets"]
        h[name]["data_offsets"] = [b + 8, e + 8]          # the right size, but over its neighbour
    edit_header(os.path.join(folder, fname), shift)
    return fname, name


def retyped(folder, name, dtype):
    fname = shard_of(folder, name)

    def f(h):
        h[name]["dtype"] = dtype                          # same bytes per element, other meaning
    edit_header(os.path.join(folder, fname), f)
    return fname, name


def missing(folder):
    name = "layers.2.attn.attn_sink"
    edit_shard(folder, name, lambda t: t.pop(name))
    return sio.INDEX_NAME, name


def extra(folder):
    name = "layers.2.attn.extra_proj.weight"
    fname = edit_shard(folder, "layers.2.attn.attn_sink", lambda t: t.__setitem__(name, torch.zeros(4, 4)))
    return fname, name


def bad_scale_shape(folder):
    name = "layers.1.attn.wq_b.scale"
    fname = edit_shard(folder, name, lambda t: t.__setitem__(name, torch.cat([t[name], t[name]])))
    return fname, name


def nan_byte(folder, name, offset):
    """Overwrite byte ``offset`` of tensor ``name``'s payload with 0xff (a ue8m0 NaN scale): only
    the payload can tell."""
    fname = shard_of(folder, name)
    t = sio.read_header(os.path.join(folder, fname)).tensors[name]
    with open(os.path.join(folder, fname), "r+b") as f:
        f.seek(t.file_offset + offset)
        f.write(b"\xff")
    return fname, name


def nan_scale(folder):
    return nan_byte(folder, "layers.3.attn.wo_b.scale", 0)


def nan_expert_scale(folder):
    return nan_byte(folder, "layers.1.ffn.experts.2.w3.scale", 5)


CORRUPTIONS = {
    "truncated shard": truncate,
    "header lies about offsets": lying_offsets,
    "wrong dtype (F32 as I32)": lambda f: retyped(f, "layers.0.hc_attn_fn", "I32"),
    "wrong dtype (e4m3 as e5m2)": lambda f: retyped(f, "layers.2.attn.wq_a.weight", "F8_E5M2"),
    "missing tensor": missing,
    "extra tensor": extra,
    "scale of the wrong shape": bad_scale_shape,
    "config does not match the weights": lambda f: (edit_config(f, hidden_size=80), "embed.weight"),
    "FP4 experts read as FP8": lambda f: (edit_config(f, expert_dtype="fp8"), "ffn.experts.0.w1.weight"),
    "NaN scale byte": nan_scale,
    "NaN expert scale byte": nan_expert_scale,
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_bad_input_names_file_and_tensor(saved, tmp_path, case):
    _, folder = saved
    broken = tmp_path / "ck"
    shutil.copytree(folder, broken)
    fname, tensor = CORRUPTIONS[case](broken)
    openers = [load_checkpoint, lambda p: load_checkpoint(p, experts="packed")]
    if "NaN" in case:                     # only the payload can tell: found when the tensor is read
        openers.append(lambda p: StreamedModel(p, experts="packed")(ids_for(TINY_Q, 8)))
    else:                                 # header-level problems are found before anything is read
        openers.append(StreamedModel)
    for open_ in openers:
        with pytest.raises(CheckpointError) as e:
            open_(broken)
        msg = str(e.value)
        assert fname in msg and tensor in msg, msg
    if case == "config does not match the weights":
        assert "hidden_size=80" in msg
    if case == "FP4 experts read as FP8":
        assert "packed FP4" in msg and "expert_dtype='fp8'" in msg


def test_fp8_experts_read_as_fp4(tmp_path):
    cfg = TINY_Q.replace(expert_dtype="fp8")
    save_checkpoint(random_model(cfg), tmp_path)
    assert inspect_checkpoint(tmp_path).count_by_dtype.get("I8") is None
    edit_config(tmp_path, expert_dtype="fp4")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path)
    msg = str(e.value)
    assert "expert_dtype='fp4'" in msg and "layers.0.ffn.experts.0.w1.weight" in msg
    assert "model-00001-of-00001.safetensors" in msg


# ------------------------------------------------------------------------------------------------
# tid2eid: int64 (v4lab, transformers) or int32 (as DeepSeek's reference code declares it)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["official", "hf"])
def test_int32_tid2eid_loads_like_int64(tmp_path, layout):
    cfg = V4Config.preset("tiny")
    model = random_model(cfg)
    folder = tmp_path / "ck"
    save_checkpoint(model, folder, layout=layout, max_shard_bytes=60_000)
    names = [n for n in sio.ShardedCheckpoint(folder).weight_map if n.endswith("tid2eid")]
    assert len(names) == cfg.num_hash_layers
    for name in names:
        edit_shard(folder, name, lambda t, n=name: t.__setitem__(n, t[n].to(torch.int32)))
    r = inspect_checkpoint(folder)
    assert r.count_by_dtype.get("I32") == cfg.num_hash_layers and "I64" not in r.count_by_dtype
    assert r.ok, r.text()
    ids = ids_for(cfg, 37, batch=2)
    want = logits(model, ids)
    loaded = load_checkpoint(folder, numerics="reference")
    assert torch.equal(loaded.layers[0].ffn.gate.tid2eid, model.layers[0].ffn.gate.tid2eid)
    assert torch.equal(logits(loaded, ids), want)
    assert torch.equal(logits(StreamedModel(folder, numerics="reference"), ids), want)
    # an int32 table placed into the model as it is routes the same tokens to the same experts
    for blk in model.layers[: cfg.num_hash_layers]:
        blk.ffn.gate.tid2eid = blk.ffn.gate.tid2eid.to(torch.int32)
    assert torch.equal(logits(model, ids), want)
