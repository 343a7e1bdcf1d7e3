"""V4Config: presets, validation messages, both config.json forms, packaging."""
import json
import subprocess
import sys
import zipfile

import pytest

from v4lab import V4Config
from v4lab.config import PRESETS


def test_flash_and_pro_schedules():
    f = V4Config.preset("flash")
    assert len(f.compress_ratios) == 44 and f.compress_ratios[:4] == [0, 0, 4, 128] and f.compress_ratios[-2:] == [4, 0]
    assert f.layer_types.count("csa") == 21 and f.layer_types.count("hca") == 20 and f.layer_types.count("window") == 2
    p = V4Config.preset("pro")
    assert len(p.compress_ratios) == 62 and p.compress_ratios[:3] == [128, 128, 4]
    assert p.layer_types.count("csa") == 30 and p.layer_types.count("hca") == 31
    assert (f.hidden_size, f.q_lora_rank, f.o_groups, f.index_topk, f.routed_scaling_factor) == (4096, 1024, 8, 512, 1.5)
    assert (p.hidden_size, p.q_lora_rank, p.o_groups, p.index_topk, p.routed_scaling_factor) == (7168, 1536, 16, 1024, 2.5)
    assert f.rope_scaling == {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536, "beta_fast": 32, "beta_slow": 1}
    assert f.compress_rope_theta == 160000 and f.rope_theta == 10000


def test_mini_presets_mix_every_layer_type():
    t = V4Config.preset("tiny")
    assert set(t.layer_types) == {"window", "csa", "hca"} and t.num_hash_layers > 0
    m = V4Config.preset("flash-mini")
    assert m.schedule_string() == "SSCHCH|S"
    assert m.sliding_window == 128 and m.hc_mult == 4 and m.n_shared_experts == 1 and m.vocab_size == 320


# (field, bad value, words the message must contain)
BAD = [
    ("num_attention_heads", 6, "o_groups"),
    ("qk_rope_head_dim", 7, "even"),
    ("qk_rope_head_dim", 1024, "head_dim"),
    ("compress_ratios", [0, 0, 4, 128, 4, 128, 4, -3] + [4, 128] * 17 + [4, 0], "compress ratio must be an integer >= 0"),
    ("compress_ratios", [0, 0, 4], "num_hidden_layers + 1"),
    ("compress_ratios", [0, 0] + [4, 128] * 20 + [4, 4], "MTP"),
    ("index_topk", -1, ">= 0"),
    ("num_key_value_heads", 2, "MQA"),
    ("hidden_size", 0, "positive integer"),
    ("num_experts_per_tok", 300, "n_routed_experts"),
    ("num_hash_layers", 50, "num_hidden_layers"),
    ("scoring_func", "softmax", "sqrtsoftplus"),  # the message lists the known functions
    ("hidden_act", "swiglu", "silu"),
    ("rope_scaling", {"type": "linear", "factor": 2}, "YaRN"),
    ("rope_scaling", {"type": "yarn", "factor": 16}, "original_max_position_embeddings"),
    ("rope_theta", -1.0, "> 0"),
    ("swiglu_limit", -1.0, "> 0"),
    ("routed_scaling_factor", 0.0, "> 0"),
    ("num_nextn_predict_layers", 2, "MTP"),
    ("torch_dtype", "int8", "float32"),
]


@pytest.mark.parametrize("field,value,words", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_every_rule_names_the_field(field, value, words):
    with pytest.raises(ValueError) as e:
        V4Config.preset("flash", **{field: value})
    msg = str(e.value)
    assert field in msg and words in msg, msg


def test_unknown_layer_type_in_hf_form():
    d = V4Config.preset("tiny").to_hf()
    d["layer_types"][1] = "linear_attention"
    with pytest.raises(ValueError, match="unknown layer type 'linear_attention'"):
        V4Config.from_hf(d)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        V4Config.preset("ultra")


@pytest.mark.parametrize("name", list(PRESETS))
def test_round_trip_through_both_config_forms(name, tmp_path):
    from transformers import DeepseekV4Config

    cfg = V4Config.preset(name)
    assert V4Config.from_hf(cfg.to_official()) == cfg  # shipped config.json keys
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_official()))
    assert V4Config.from_hf(tmp_path) == cfg  # from a folder
    hf_dict = {k: v for k, v in cfg.to_hf().items() if k not in ("model_type", "architectures")}
    hf = DeepseekV4Config(**hf_dict)
    back = V4Config.from_hf(hf)  # the transformers form: layer_types, compress_rates, mlp_layer_types
    assert back == cfg
    assert hf.layer_types[: 3] == [
        {"window": "sliding_attention", "csa": "compressed_sparse_attention", "hca": "heavily_compressed_attention"}[t]
        for t in cfg.layer_types[:3]
    ]


def test_shipped_flash_config_json_keys():
    """The official config.json form (compress_ratios, num_hash_layers, rope_scaling) as shipped."""
    shipped = {
        "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4", "vocab_size": 129280,
        "hidden_size": 4096, "num_hidden_layers": 43, "num_attention_heads": 64, "num_key_value_heads": 1,
        "head_dim": 512, "qk_rope_head_dim": 64, "q_lora_rank": 1024, "o_groups": 8, "o_lora_rank": 1024,
        "sliding_window": 128, "compress_ratios": [0, 0] + [4, 128] * 20 + [4, 0], "compress_rope_theta": 160000,
        "rope_theta": 10000, "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536,
                                              "beta_fast": 32, "beta_slow": 1},
        "max_position_embeddings": 1048576, "index_n_heads": 64, "index_head_dim": 128, "index_topk": 512,
        "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 6, "moe_intermediate_size": 2048,
        "scoring_func": "sqrtsoftplus", "topk_method": "noaux_tc", "norm_topk_prob": True, "routed_scaling_factor": 1.5,
        "num_hash_layers": 3, "swiglu_limit": 10.0, "hidden_act": "silu", "hc_mult": 4, "hc_sinkhorn_iters": 20,
        "hc_eps": 1e-6, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1,
        "torch_dtype": "bfloat16", "expert_dtype": "fp4", "num_nextn_predict_layers": 1,
        "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0",
                                "weight_block_size": [128, 128], "activation_scheme": "dynamic"},
    }
    assert V4Config.from_hf(shipped) == V4Config.preset("flash")


def test_kernels_ship_inside_the_package_in_a_regular_install(tmp_path):
    """The top-level kernels/ folder is the subpackage v4lab.kernels in a built wheel too."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), root],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("v4lab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("v4lab/kernels/__init__.py", "v4lab/kernels/reference.py", "v4lab/kernels/sparse_attention.py",
              "v4lab/model.py", "v4lab/plots/attention.py"):
        assert f in names, f
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = "import v4lab.kernels, v4lab.kernels.reference as r; print(v4lab.kernels.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
                         check=True, capture_output=True, text=True).stdout
    assert str(target) in out


# ------------------------------------------------------------------------------------------------
# a config is frozen: a changed value is a new, validated config
# ------------------------------------------------------------------------------------------------
def test_config_is_frozen_and_replace_revalidates():
    import dataclasses
    import pickle

    cfg = V4Config.preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError, match=r"index_topk.*replace\(index_topk="):
        cfg.index_topk = 0
    with pytest.raises(dataclasses.FrozenInstanceError, match="frozen"):
        del cfg.hidden_size
    with pytest.raises(dataclasses.FrozenInstanceError, match="frozen"):
        cfg.new_attribute = 1
    # the lists and dicts inside are frozen too
    with pytest.raises(TypeError, match="frozen"):
        cfg.compress_ratios[1] = 0
    with pytest.raises(TypeError, match="frozen"):
        cfg.compress_ratios.append(0)
    with pytest.raises(TypeError, match="frozen"):
        cfg.compress_ratios += [0]
    with pytest.raises(TypeError, match="frozen"):
        cfg.rope_scaling["factor"] = 2
    with pytest.raises(TypeError, match="frozen"):
        cfg.rope_scaling.update(factor=2)
    assert cfg.index_topk == 4 and cfg.compress_ratios == [0, 4, 8, 4, 8, 0]
    # a changed value: a new config, validated like any other
    new = cfg.replace(index_topk=8)
    assert new.index_topk == 8 and cfg.index_topk == 4 and new != cfg
    assert dataclasses.replace(cfg, index_topk=8) == new
    with pytest.raises(ValueError, match="index_topk"):
        cfg.replace(index_topk=-1)
    with pytest.raises(ValueError, match="index_topk"):
        dataclasses.replace(cfg, index_topk=-1)
    # copies, pickles and dicts behave as before (plain lists and dicts come out)
    import copy

    for c in (copy.copy(cfg), copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):
        assert c == cfg
        with pytest.raises(dataclasses.FrozenInstanceError):
            c.index_topk = 1
    d = cfg.to_dict()
    assert type(d["compress_ratios"]) is list and type(d["rope_scaling"]) is dict
    d["compress_ratios"][0] = 4  # the dict is the caller's own
    assert cfg.compress_ratios[0] == 0 and V4Config(**cfg.to_dict()) == cfg
    assert cfg.compress_ratios + [1] == [0, 4, 8, 4, 8, 0, 1]
    assert json.loads(json.dumps(cfg.to_hf()))["compress_rates"]
