"""V4Config: every hyper-parameter of DeepSeek-V4, validated on construction.

Field names follow the shipped ``config.json`` (spec section 1.1).  The layer schedule is
``compress_ratios``: one entry per layer plus one for the MTP block, where

* ``0``   = window-only attention (SWA),
* ``4``   = CSA, compressed sparse attention (overlapping blocks of 4 + Lightning Indexer),
* other   = HCA, heavily compressed attention (blocks of that many tokens, dense); the
            shipped models use 128, small test configs 8..64; any rate >= 1 works (as in
            ``transformers``).

That is the official code's convention (a rate of 4 *is* CSA).  ``transformers`` names each
layer's type instead (``layer_types`` + ``compress_rates``), so it can also express a CSA rate
other than 4 or an HCA rate of exactly 4; such a config keeps its types in ``attention_kinds``
(one of "window" / "csa" / "hca" per entry of ``compress_ratios``), which stays ``None`` whenever
the convention already says the same.  Code asks ``cfg.layer_kind(i)``, never the rate.

Presets: ``V4Config.preset("flash" | "pro" | "tiny" | "flash-mini")``.

A config is frozen: ``cfg.index_topk = 8`` raises, and so does changing its lists and dicts in
place; ``cfg.replace(index_topk=8)`` (or ``dataclasses.replace``) makes a new, validated config.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

CSA_RATIO = 4
HCA_RATIOS = (8, 16, 32, 64, 128, 256)  # the rates of the shipped models and the lab presets
ALLOWED_RATIOS = (0, CSA_RATIO) + HCA_RATIOS  # common rates; any other integer >= 1 is an HCA rate too

# the names transformers uses for the three layer types
HF_LAYER_TYPES = {
    "window": "sliding_attention",
    "csa": "compressed_sparse_attention",
    "hca": "heavily_compressed_attention",
}
_FROM_HF_LAYER_TYPE = {v: k for k, v in HF_LAYER_TYPES.items()}

# the shipped checkpoints' quantization_config: FP8 e4m3 weights with ue8m0 scales per 128x128 block
FP8_QUANTIZATION = {
    "quant_method": "fp8",
    "fmt": "e4m3",
    "scale_fmt": "ue8m0",
    "weight_block_size": [128, 128],
    "activation_scheme": "dynamic",
}

_YARN = {
    "type": "yarn",
    "factor": 16,
    "original_max_position_embeddings": 65536,
    "beta_fast": 32,
    "beta_slow": 1,
}


def _flash_schedule() -> list[int]:
    # layers 0-1 window-only, then CSA/HCA alternating (CSA on even layers 2..42), MTP window-only
    return [0, 0] + [4, 128] * 20 + [4] + [0]


def _pro_schedule() -> list[int]:
    # layers 0-1 HCA, then CSA/HCA alternating (CSA on even layers 2..60), MTP window-only
    return [128, 128] + [4, 128] * 29 + [4] + [0]


class _FrozenList(list):
    """A list that refuses to change (the lists of a frozen ``V4Config``); compares, copies and
    serialises as a list."""

    def _frozen(self, *a, **k):
        raise TypeError("this list belongs to a frozen V4Config: make a new config with "
                        "cfg.replace(field=new_value) instead of changing it in place")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _frozen
    append = extend = insert = pop = remove = clear = sort = reverse = _frozen

    def __reduce__(self):
        return (_FrozenList, (list(self),))


class _FrozenDict(dict):
    """A dict that refuses to change (the dicts of a frozen ``V4Config``)."""

    def _frozen(self, *a, **k):
        raise TypeError("this dict belongs to a frozen V4Config: make a new config with "
                        "cfg.replace(field=new_value) instead of changing it in place")

    __setitem__ = __delitem__ = __ior__ = _frozen
    update = pop = popitem = clear = setdefault = _frozen

    def __reduce__(self):
        return (_FrozenDict, (dict(self),))


def _freeze(v):
    if isinstance(v, dict):
        return _FrozenDict({k: _freeze(x) for k, x in v.items()})
    if isinstance(v, list):
        return _FrozenList(_freeze(x) for x in v)
    return v


def _thaw(v):
    if isinstance(v, dict):
        return {k: _thaw(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)) and not isinstance(v, str):
        return [_thaw(x) for x in v] if isinstance(v, list) else tuple(_thaw(x) for x in v)
    return v


@dataclass
class V4Config:
    # --- sizes -----------------------------------------------------------------------------
    vocab_size: int = 129280
    hidden_size: int = 4096
    num_hidden_layers: int = 43
    num_nextn_predict_layers: int = 1
    # --- attention -------------------------------------------------------------------------
    num_attention_heads: int = 64
    num_key_value_heads: int = 1
    head_dim: int = 512
    qk_rope_head_dim: int = 64
    q_lora_rank: int = 1024
    o_groups: int = 8
    o_lora_rank: int = 1024
    sliding_window: int = 128
    compress_ratios: list = field(default_factory=_flash_schedule)
    attention_kinds: list | None = None  # None: the kinds follow from the rates (0 / 4 / other)
    compress_rope_theta: float = 160000.0
    rope_theta: float = 10000.0
    rope_scaling: dict | None = field(default_factory=lambda: dict(_YARN))
    max_position_embeddings: int = 1048576
    # --- Lightning Indexer (CSA layers) -------------------------------------------------------
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 512
    # --- MoE -------------------------------------------------------------------------------
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 6
    moe_intermediate_size: int = 2048
    scoring_func: str = "sqrtsoftplus"
    topk_method: str = "noaux_tc"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.5
    num_hash_layers: int = 3
    swiglu_limit: float = 10.0
    hidden_act: str = "silu"
    mlp_bias: bool = False  # transformers' field: biases on the shared expert's three linears (V4: none)
    # --- mHC residual streams --------------------------------------------------------------
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    # --- misc --------------------------------------------------------------------------------
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    bos_token_id: int = 0
    eos_token_id: int = 1
    torch_dtype: str = "bfloat16"
    expert_dtype: str | None = "fp4"
    quantization_config: dict | None = field(default_factory=lambda: copy.deepcopy(FP8_QUANTIZATION))
    attention_bias: bool = False

    # ------------------------------------------------------------------------------------------
    def __post_init__(self):
        self.compress_ratios = [int(r) for r in self.compress_ratios]
        if self.rope_scaling is not None:
            self.rope_scaling = dict(self.rope_scaling)
        if self.attention_kinds is not None:
            self.attention_kinds = list(self.attention_kinds)
        self.validate()
        if self.attention_kinds == [self.kind_of_ratio(m) for m in self.compress_ratios]:
            self.attention_kinds = None  # the rates already say it: one spelling per config
        for f in dataclasses.fields(self):  # the config owns its lists and dicts, read-only
            object.__setattr__(self, f.name, _freeze(copy.deepcopy(getattr(self, f.name))))
        object.__setattr__(self, "_frozen", True)

    def __setattr__(self, name, value):
        if self.__dict__.get("_frozen"):
            raise dataclasses.FrozenInstanceError(
                f"V4Config is frozen: cannot set {name!r}; make a new, validated config with "
                f"cfg.replace({name}=...)")
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        raise dataclasses.FrozenInstanceError(f"V4Config is frozen: cannot delete {name!r}")

    # ------------------------------------------------------------------ validation -----------
    def validate(self) -> None:
        """Raise ValueError naming the field and the rule it breaks."""

        def bad(name, rule):
            raise ValueError(f"V4Config.{name} = {getattr(self, name)!r}: {rule}")

        positive = [
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim",
            "q_lora_rank", "o_groups", "o_lora_rank", "sliding_window", "max_position_embeddings",
            "index_n_heads", "index_head_dim", "n_routed_experts", "num_experts_per_tok",
            "moe_intermediate_size", "hc_mult", "hc_sinkhorn_iters",
        ]
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "must be a positive integer")
        for name in ["num_nextn_predict_layers", "n_shared_experts", "num_hash_layers"]:
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                bad(name, "must be a non-negative integer")
        if self.num_nextn_predict_layers > 1:
            bad("num_nextn_predict_layers", "V4 ships one MTP block; only 0 or 1 is supported")
        if self.num_key_value_heads != 1:
            bad("num_key_value_heads", "V4 attention has one shared K=V head (MQA); must be 1")
        if self.num_attention_heads % self.o_groups:
            bad("num_attention_heads", f"must be divisible by o_groups ({self.o_groups})")
        r = self.qk_rope_head_dim
        if not isinstance(r, int) or r < 2 or r % 2:
            bad("qk_rope_head_dim", "must be a positive even integer (RoPE rotates channel pairs)")
        if r > self.head_dim:
            bad("qk_rope_head_dim", f"must be <= head_dim ({self.head_dim})")
        if r > self.index_head_dim:
            bad("qk_rope_head_dim", f"must be <= index_head_dim ({self.index_head_dim})")
        if not isinstance(self.index_topk, int) or isinstance(self.index_topk, bool) or self.index_topk < 0:
            bad("index_topk", "must be an integer >= 0 (0: CSA layers read no compressed entry)")
        if self.num_experts_per_tok > self.n_routed_experts:
            bad("num_experts_per_tok", f"must be <= n_routed_experts ({self.n_routed_experts})")
        if self.num_hash_layers > self.num_hidden_layers:
            bad("num_hash_layers", f"must be <= num_hidden_layers ({self.num_hidden_layers})")
        if not isinstance(self.compress_ratios, list) or len(self.compress_ratios) != self.num_hidden_layers + 1:
            raise ValueError(
                f"V4Config.compress_ratios has {len(self.compress_ratios)} entries: the schedule must have "
                f"num_hidden_layers + 1 = {self.num_hidden_layers + 1} entries (the last one is the MTP block)"
            )
        for i, m in enumerate(self.compress_ratios):
            if not isinstance(m, int) or isinstance(m, bool) or m < 0:
                raise ValueError(
                    f"V4Config.compress_ratios[{i}] = {m}: compress ratio must be an integer >= 0, e.g. one "
                    f"of {ALLOWED_RATIOS} (0 = window-only, 4 = CSA, any other = HCA over blocks of that many tokens)"
                )
        if self.compress_ratios[-1] != 0:
            bad("compress_ratios", "the last entry (MTP block) must be 0: the MTP block is window-only")
        if self.attention_kinds is not None:
            k = self.attention_kinds
            if len(k) != len(self.compress_ratios):
                bad("attention_kinds", f"needs one entry per entry of compress_ratios ({len(self.compress_ratios)})")
            for i, (t, m) in enumerate(zip(k, self.compress_ratios)):
                if t not in HF_LAYER_TYPES:
                    bad("attention_kinds", f"entry {i} is {t!r}; each must be one of {sorted(HF_LAYER_TYPES)}")
                if (t == "window") != (m == 0):
                    bad("attention_kinds", f"entry {i} is {t!r} but compress_ratios[{i}] = {m}: rate 0 is "
                                           "exactly the window-only layers")
        from .activations import ACTIVATIONS, SCORE_FUNCTIONS

        if self.scoring_func not in SCORE_FUNCTIONS:
            bad("scoring_func", f"unknown router score function; known: {sorted(SCORE_FUNCTIONS)}")
        if self.hidden_act not in ACTIVATIONS:
            bad("hidden_act", f"unknown activation; known: {sorted(ACTIVATIONS)}")
        if self.swiglu_limit is not None and self.swiglu_limit <= 0:
            bad("swiglu_limit", "must be > 0 (or None for no clamp)")
        if self.routed_scaling_factor <= 0:
            bad("routed_scaling_factor", "must be > 0")
        if self.hc_eps < 0 or self.rms_norm_eps <= 0:
            bad("rms_norm_eps" if self.rms_norm_eps <= 0 else "hc_eps", "must be positive")
        if self.rope_theta <= 0:
            bad("rope_theta", "must be > 0")
        if self.compress_rope_theta <= 0:
            bad("compress_rope_theta", "must be > 0")
        if self.rope_scaling is not None:
            t = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
            if t != "yarn":
                bad("rope_scaling", "only YaRN ({'type': 'yarn', ...}) or None is supported")
            for key in ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow"):
                if key not in self.rope_scaling:
                    bad("rope_scaling", f"YaRN needs the key {key!r}")
            if self.rope_scaling["factor"] < 1:
                bad("rope_scaling", "YaRN factor must be >= 1")
        if self.torch_dtype not in ("float32", "bfloat16", "float16", "float64"):
            bad("torch_dtype", "must be one of float32, bfloat16, float16, float64")
        if self.bos_token_id >= self.vocab_size or self.eos_token_id >= self.vocab_size:
            bad("vocab_size", "must exceed bos_token_id and eos_token_id")

    # ------------------------------------------------------------------ schedule helpers --------
    @property
    def layer_types(self) -> list[str]:
        """'window' | 'csa' | 'hca' for each main layer (MTP excluded)."""
        return [self.layer_kind(i) for i in range(self.num_hidden_layers)]

    def layer_kind(self, layer: int) -> str:
        """'window' | 'csa' | 'hca' of layer ``layer`` (``num_hidden_layers`` = the MTP block)."""
        if self.attention_kinds is not None:
            return self.attention_kinds[layer]
        return self.kind_of_ratio(self.compress_ratios[layer])

    @staticmethod
    def kind_of_ratio(m: int) -> str:
        """The official code's convention: 0 = window-only, 4 = CSA, any other rate = HCA."""
        return "window" if m == 0 else ("csa" if m == CSA_RATIO else "hca")

    def rate_of(self, kind: str) -> int | None:
        """The compression rate of the ``kind`` layers ('csa' or 'hca'), None if there are none;
        raises if the schedule uses several (``transformers`` has one rate per kind)."""
        rates = sorted({m for i, m in enumerate(self.compress_ratios) if self.layer_kind(i) == kind})
        if len(rates) > 1:
            raise ValueError(f"compress_ratios: transformers supports one {kind.upper()} rate per model, got {rates}")
        return rates[0] if rates else None

    @property
    def mtp_ratio(self) -> int:
        return self.compress_ratios[self.num_hidden_layers]

    def schedule_string(self) -> str:
        """One letter per layer: S = window-only, C = CSA, H = HCA; '|' then the MTP block."""
        letter = {"window": "S", "csa": "C", "hca": "H"}
        main = "".join(letter[t] for t in self.layer_types)
        return main + "|" + letter[self.layer_kind(self.num_hidden_layers)]

    def is_hash_layer(self, layer: int) -> bool:
        """Hash routing (tid2eid) in the first num_hash_layers main layers; never in MTP."""
        return layer < self.num_hash_layers

    # ------------------------------------------------------------------ presets ----------------
    @classmethod
    def preset(cls, name: str, **overrides) -> "V4Config":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        kw = copy.deepcopy(PRESETS[name])
        kw.update(copy.deepcopy(overrides))    # the config never shares a caller's dict or list
        return cls(**kw)

    def replace(self, **changes) -> "V4Config":
        """A new config with ``changes`` applied, validated (the config itself never changes)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Every field, as plain (mutable, the caller's own) lists and dicts."""
        return {f.name: _thaw(getattr(self, f.name)) for f in dataclasses.fields(self)}

    # ------------------------------------------------------------------ HF round trip ----------
    @classmethod
    def from_hf(cls, source: Any) -> "V4Config":
        """Read a shipped ``config.json`` (path to the file or its folder, a dict, or a
        ``transformers`` ``DeepseekV4Config``), in either the official form (``compress_ratios``,
        ``num_hash_layers``, ``rope_scaling``) or the ``transformers`` form (``layer_types``,
        ``compress_rates``, ``mlp_layer_types``, ``rope_parameters``)."""
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            with open(path) as f:
                d = json.load(f)
        elif isinstance(source, dict):
            d = copy.deepcopy(source)
        elif hasattr(source, "to_dict"):
            d = source.to_dict()
            # runtime-only attribute of the HF config
            if hasattr(source, "qk_rope_head_dim"):
                d["qk_rope_head_dim"] = source.qk_rope_head_dim
        else:
            raise TypeError(f"V4Config.from_hf: cannot read a config from {type(source).__name__}")

        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        n = d.get("num_hidden_layers", cls.num_hidden_layers)

        if "compress_ratios" not in d and "layer_types" in d:
            rates = d.get("compress_rates") or {}
            csa = rates.get("compressed_sparse_attention", CSA_RATIO)
            hca = rates.get("heavily_compressed_attention", 128)
            for name, r in (("compressed_sparse_attention", csa), ("heavily_compressed_attention", hca)):
                if not isinstance(r, int) or isinstance(r, bool) or r < 1:
                    raise ValueError(f"compress_rates[{name!r}] = {r!r}: a compression rate must be an integer >= 1")
            ratio = {"window": 0, "csa": csa, "hca": hca}
            kinds = []
            for t in d["layer_types"]:
                if t not in _FROM_HF_LAYER_TYPE:
                    raise ValueError(f"layer_types: unknown layer type {t!r}; known: {sorted(_FROM_HF_LAYER_TYPE)}")
                kinds.append(_FROM_HF_LAYER_TYPE[t])
            kinds = kinds[:n] + ["window"]  # MTP block is window-only
            kw["compress_ratios"] = [ratio[t] for t in kinds]
            kw["attention_kinds"] = kinds  # None again if the rates say the same
        if "num_hash_layers" not in d and "mlp_layer_types" in d:
            mlp = list(d["mlp_layer_types"])
            k = 0
            while k < len(mlp) and mlp[k] == "hash_moe":
                k += 1
            if any(t != "moe" for t in mlp[k:]):
                raise ValueError(f"mlp_layer_types: hash_moe layers must come first, got {mlp}")
            kw["num_hash_layers"] = k
        if "qk_rope_head_dim" not in d and d.get("partial_rotary_factor"):
            kw["qk_rope_head_dim"] = int(round(d["partial_rotary_factor"] * d.get("head_dim", cls.head_dim)))
        if "rope_scaling" not in d or d.get("rope_scaling") is None:
            rp = d.get("rope_parameters") or {}
            comp = rp.get("compress") if isinstance(rp, dict) else None
            if isinstance(comp, dict):
                if comp.get("rope_type", comp.get("type")) == "yarn":
                    kw["rope_scaling"] = {
                        "type": "yarn",
                        "factor": comp["factor"],
                        "original_max_position_embeddings": comp["original_max_position_embeddings"],
                        "beta_fast": comp.get("beta_fast", 32),
                        "beta_slow": comp.get("beta_slow", 1),
                    }
                else:
                    kw["rope_scaling"] = None
                if "rope_theta" in comp:
                    kw["compress_rope_theta"] = comp["rope_theta"]
                main = rp.get("main") or {}
                if "rope_theta" in main:
                    kw["rope_theta"] = main["rope_theta"]
            elif "rope_parameters" in d or "layer_types" in d:
                kw["rope_scaling"] = None
        elif isinstance(d.get("rope_scaling"), dict):
            rs = dict(d["rope_scaling"])
            rs.setdefault("type", rs.pop("rope_type", "yarn"))
            rs.pop("rope_type", None)
            kw["rope_scaling"] = {k: rs[k] for k in ("type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow") if k in rs}
        qc = kw.get("quantization_config")
        if isinstance(qc, dict) and "expert_dtype" in qc:
            # transformers folds expert_dtype into quantization_config; keep it a top-level field
            qc = dict(qc)
            kw.setdefault("expert_dtype", qc.pop("expert_dtype"))
            kw["quantization_config"] = qc
        if isinstance(kw.get("eos_token_id"), list):
            kw["eos_token_id"] = kw["eos_token_id"][0]
        if kw.get("torch_dtype") is None:
            kw.pop("torch_dtype", None)
        if "dtype" in d and "torch_dtype" not in d and isinstance(d["dtype"], str):
            kw["torch_dtype"] = d["dtype"]
        return cls(**kw)

    def to_hf(self) -> dict:
        """The ``transformers`` form (``DeepseekV4Config(**cfg.to_hf())``).  The official keys
        (``compress_ratios``, ``num_hash_layers``, ...) are written too, so that the dict is also a
        valid shipped ``config.json``."""
        csa, hca = self.rate_of("csa"), self.rate_of("hca")
        n = self.num_hidden_layers
        d = self.to_dict()
        d.pop("compress_ratios")
        d.pop("attention_kinds")
        d.pop("num_hash_layers")
        d.pop("qk_rope_head_dim")
        d.pop("rope_scaling")
        d.pop("torch_dtype")
        d.update(
            model_type="deepseek_v4",
            architectures=["DeepseekV4ForCausalLM"],
            layer_types=[HF_LAYER_TYPES[t] for t in self.layer_types],
            compress_rates={
                "compressed_sparse_attention": csa or CSA_RATIO,
                "heavily_compressed_attention": hca or 128,
            },
            mlp_layer_types=["hash_moe" if self.is_hash_layer(i) else "moe" for i in range(n)],
            partial_rotary_factor=self.qk_rope_head_dim / self.head_dim,
            rope_parameters=self._hf_rope_parameters(),
            dtype=self.torch_dtype,
        )
        return d

    def _hf_rope_parameters(self) -> dict:
        prf = self.qk_rope_head_dim / self.head_dim
        main = {"rope_type": "default", "rope_theta": self.rope_theta, "partial_rotary_factor": prf}
        comp = {"rope_type": "default", "rope_theta": self.compress_rope_theta, "partial_rotary_factor": prf}
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            comp.update(
                rope_type="yarn",
                factor=rs["factor"],
                original_max_position_embeddings=rs["original_max_position_embeddings"],
                beta_fast=rs["beta_fast"],
                beta_slow=rs["beta_slow"],
                attention_factor=1.0,
            )
        return {"main": main, "compress": comp}

    def to_official(self) -> dict:
        """The shipped ``config.json`` form (official keys)."""
        d = self.to_dict()
        d.update(model_type="deepseek_v4", architectures=["DeepseekV4ForCausalLM"])
        return d


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------
PRESETS: dict[str, dict] = {
    "flash": dict(),
    "pro": dict(
        hidden_size=7168,
        num_hidden_layers=61,
        num_attention_heads=128,
        q_lora_rank=1536,
        o_groups=16,
        compress_ratios=_pro_schedule(),
        index_topk=1024,
        n_routed_experts=384,
        moe_intermediate_size=3072,
        routed_scaling_factor=2.5,
    ),
    # A seconds-fast test config that mixes every layer type: S C H C H | S, hash routing in
    # the first two layers, 4 streams, HCA ratio 8 so that short sequences span several blocks.
    # 16 index heads keep exact-zero ReLU ties in the indexer rare.
    "tiny": dict(
        vocab_size=97,
        hidden_size=64,
        num_hidden_layers=5,
        num_attention_heads=4,
        head_dim=32,
        qk_rope_head_dim=8,
        q_lora_rank=32,
        o_groups=2,
        o_lora_rank=16,
        sliding_window=8,
        compress_ratios=[0, 4, 8, 4, 8, 0],
        rope_scaling={**_YARN, "factor": 4, "original_max_position_embeddings": 32},
        max_position_embeddings=4096,
        index_n_heads=16,
        index_head_dim=16,
        index_topk=4,
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        num_hash_layers=2,
        swiglu_limit=1.5,
        torch_dtype="float32",
        expert_dtype=None,
        quantization_config=None,
    ),
    # Flash's schedule shape scaled to a 2-core CPU (see README "flash-mini"):
    #   S S C H C H | S  -- two window-only layers, then alternating CSA (ratio 4) / HCA (ratio 128),
    #   window 128 and HCA ratio 128 exactly as in Flash, so attention pictures read like the real
    #   model's.  d = 128 and 6 layers keep one training step at 2K tokens x 8 sequences around a
    #   second on 2 cores (about 3 M tokens in 50 minutes), and a 128K-token prefill in minutes.
    #   A byte-level vocabulary (256 bytes + 32 special tokens + padding) needs no tokenizer file.
    "flash-mini": dict(
        vocab_size=320,
        hidden_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        head_dim=64,
        qk_rope_head_dim=16,
        q_lora_rank=64,
        o_groups=2,
        o_lora_rank=64,
        sliding_window=128,
        compress_ratios=[0, 0, 4, 128, 4, 128, 0],
        # v2: YaRN from the last training length (8K) to 1M tokens, 8192 x 128 = 1,048,576
        rope_scaling={**_YARN, "factor": 128, "original_max_position_embeddings": 8192},
        max_position_embeddings=1048576,
        index_n_heads=4,
        index_head_dim=32,
        index_topk=16,
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=128,
        num_hash_layers=2,
        torch_dtype="float32",
        expert_dtype=None,
        quantization_config=None,
    ),
}
