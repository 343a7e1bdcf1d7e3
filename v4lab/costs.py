"""Cost model: KV-cache bytes and FLOPs of DeepSeek-V4 up to 1M tokens (spec sections 7 and 10).

Three kinds of model are priced:

* any :class:`~v4lab.config.V4Config` (presets "flash", "pro", "tiny", "flash-mini"); the MTP
  block (last entry of ``compress_ratios``) is excluded everywhere;
* DeepSeek-V3.2 (:class:`V32Config`, preset ``preset("v3.2")``): 61 MLA layers with the DSA
  Lightning Indexer scanning every raw token, top-2048 sparse attention;
* a dense GQA baseline (:class:`DenseGQA`, preset ``preset("dense")``): GQA-8, head_dim 128,
  BF16, full attention, with the layer count and query heads of the V4 config it is compared with.

Functions::

    kv_cache_bytes(model, context_len, storage="bf16", indexer_storage="fp4", batch_size=1) -> KVBytes
    decode_flops(model, context_len, weighting="plain") -> Flops     # one token at context L
    prefill_flops(model, context_len, weighting="plain") -> Flops    # a whole L-token prompt
    activated_params(cfg) -> dict                                    # per component, from shapes
    compare(context_lens, storage="deployed", weighting="fp8-equivalent") -> list[dict]
    format_table(rows) -> str

``model`` is a V4Config, a V32Config, a DenseGQA or a preset name ("flash", "pro", "tiny",
"flash-mini", "v3.2", "dense").

KV-cache layout (the one :mod:`v4lab.cache` allocates, counted byte for byte), per main layer of a V4 model with
window w = ``sliding_window``, entry width c = ``head_dim``, indexer width c_I = ``index_head_dim``:

=========== ========================================================================================
window-only a ring of w entries of c values, allocated up front (constant)
CSA (m = 4) ring + floor(L/4) compressed entries (c values) + floor(L/4) indexer keys (c_I values)
            + compressor state 2 x [8, 2c] fp32 + indexer compressor state 2 x [8, 2 c_I] fp32
HCA (m)     ring + floor(L/m) compressed entries + compressor state 2 x [m, c] fp32
=========== ========================================================================================

Storage modes (``storage``):

* ``"deployed"``: the production formats of spec 7.2. A V4 entry (ring or compressed) holds the
  (c - rope) "nope" dims in FP8 e4m3 (1 byte), the rope dims in BF16 (2 bytes) and one ue8m0 scale
  byte per 64 nope channels (rounded up), padded to a multiple of 8 bytes: 448 + 128 + 7 + 1 pad =
  584 B at c = 512, rope 64. Indexer keys: ``indexer_storage="fp4"`` (MXFP4, c_I/2 data bytes + one
  ue8m0 byte per 32 channels = 68 B at c_I = 128) or ``"fp8"`` (c_I bytes + a 4-byte fp32 scale =
  132 B). V3.2 always uses its FlashMLA FP8 entry (656 B) and FP8 indexer keys (132 B), whatever
  ``indexer_storage`` says; the dense baseline stays BF16.
* ``"bf16"``/``"fp16"`` (2 bytes per value), ``"fp32"`` (4), ``"fp64"`` (8), the ``torch_dtype``
  spellings ``"bfloat16"``/``"float16"``/``"float32"``/``"float64"``, or a floating ``torch.dtype``:
  every cached value (ring, compressed entries, indexer keys, V3.2 latents, dense K/V) in that format.

Compressor state is fp32 in every mode.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from .config import V4Config

GB = 1e9
GIB = 2**30

# The DeepSeek-V4 report's Figure 1 annotations at 1M tokens (x smaller / x fewer than V3.2).
REPORT_KV_RATIO = {"pro": 9.5, "flash": 13.7}
REPORT_FLOPS_RATIO = {"pro": 3.7, "flash": 9.8}

# Multiplier per precision class of a FLOP term, for each weighting (see decode_flops).
WEIGHTINGS = {
    "plain": {"linear": 1.0, "fp8": 1.0, "fp4": 1.0, "bf16": 1.0, "vector": 1.0},
    "fp8-equivalent": {"linear": 1.0, "fp8": 1.0, "fp4": 0.5, "bf16": 2.0, "vector": 1.0},
}

_VALUE_BYTES = {
    "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2,
    "fp32": 4, "float32": 4, "fp64": 8, "float64": 8,
}
STORAGE_MODES = ("deployed",) + tuple(_VALUE_BYTES)
INDEXER_STORAGE = ("fp4", "fp8")
STATE_BYTES = 4  # compressor state is fp32

# FLOPs per pooled value in the compressor (max, exp, sum, divide, multiply-add of the
# per-channel softmax pooling); an order-of-magnitude term.
POOL_FLOPS_PER_VALUE = 5


# ----------------------------------------------------------------------------------------------
# The other models
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class V32Config:
    """DeepSeek-V3.2 as the cost model sees it (spec 10.1): MLA (absorbed) + DSA indexer."""

    name: str = "DeepSeek-V3.2"
    num_hidden_layers: int = 61
    hidden_size: int = 7168
    vocab_size: int = 129280
    num_attention_heads: int = 128
    kv_lora_rank: int = 512  # MLA latent; with the rope key, 576 values per cached entry
    qk_rope_head_dim: int = 64
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 2048
    activated_params: float = 37.48e9  # per token, incl. the output head
    deployed_entry_bytes: int = 656  # FlashMLA FP8: 512 fp8 + 4 fp32 scales + 64 bf16 rope
    deployed_indexer_bytes: int = 132  # FP8 key + fp32 scale

    @property
    def entry_dim(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def head_params(self) -> int:
        return self.vocab_size * self.hidden_size


@dataclass(frozen=True)
class DenseGQA:
    """A dense full-attention GQA baseline: every layer caches K and V of every token.

    Its linear layers are taken to be those of the V4 model it mirrors (``activated_params`` and
    ``head_params``), so that a comparison isolates attention.
    """

    name: str = "dense GQA-8"
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    num_key_value_heads: int = 8
    head_dim: int = 128
    activated_params: float = 0.0  # excluding the head
    head_params: int = 0

    @classmethod
    def like(cls, cfg: V4Config, num_key_value_heads: int = 8, head_dim: int = 128) -> "DenseGQA":
        p = activated_params(cfg)
        return cls(
            name=f"dense GQA-{num_key_value_heads}",
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=num_key_value_heads,
            head_dim=head_dim,
            activated_params=float(p["total"] - p["head"]),
            head_params=p["head"],
        )


_V4_NAMES = {"flash": "DeepSeek-V4-Flash", "pro": "DeepSeek-V4-Pro", "tiny": "V4 tiny", "flash-mini": "V4 flash-mini"}
PRESET_NAMES = tuple(_V4_NAMES) + ("v3.2", "dense")


def preset(name: str):
    """A model of the cost model by name: "flash", "pro", "tiny", "flash-mini" (V4Config),
    "v3.2" (V32Config) or "dense" (DenseGQA shaped like V4-Pro: 61 layers, 128 query heads)."""
    if name in _V4_NAMES:
        return V4Config.preset(name)
    if name == "v3.2":
        return V32Config()
    if name == "dense":
        return DenseGQA.like(V4Config.preset("pro"))
    raise ValueError(f"unknown cost-model preset {name!r}; choose one of {list(PRESET_NAMES)}")


def model_name(model) -> str:
    """Display name: "DeepSeek-V4-Pro" for the Pro preset, "V4 (custom, N layers)" otherwise."""
    model = _resolve(model)
    if isinstance(model, (V32Config, DenseGQA)):
        return model.name
    for key, name in _V4_NAMES.items():
        if model == V4Config.preset(key):
            return name
    return f"V4 (custom, {model.num_hidden_layers} layers)"


def _resolve(model):
    if isinstance(model, str):
        return preset(model)
    if isinstance(model, (V4Config, V32Config, DenseGQA)):
        return model
    raise ValueError(
        f"cannot price a {type(model).__name__}: pass a V4Config, V32Config, DenseGQA or one of {list(PRESET_NAMES)}"
    )


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------
def _check_len(context_len, minimum: int, what: str = "context_len") -> int:
    if isinstance(context_len, bool) or not isinstance(context_len, numbers.Integral):
        raise ValueError(f"{what} must be an integer number of tokens, got {context_len!r}")
    if context_len < minimum:
        rule = "must be >= 0 (0 = empty cache)" if minimum == 0 else f"must be >= {minimum}"
        raise ValueError(f"{what} = {context_len}: {rule}")
    return int(context_len)


def _value_bytes(storage) -> int | None:
    """Bytes per cached value, or None for the "deployed" formats."""
    if isinstance(storage, str):
        if storage == "deployed":
            return None
        if storage in _VALUE_BYTES:
            return _VALUE_BYTES[storage]
        raise ValueError(f"unknown storage {storage!r}; choose one of {list(STORAGE_MODES)} or a torch dtype")
    import torch

    if isinstance(storage, torch.dtype):
        if not storage.is_floating_point:
            raise ValueError(f"storage dtype {storage} is not a floating-point type")
        return storage.itemsize
    raise ValueError(f"unknown storage {storage!r}; choose one of {list(STORAGE_MODES)} or a torch dtype")


def _check_weighting(weighting: str) -> dict:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {list(WEIGHTINGS)}")
    return WEIGHTINGS[weighting]


def deployed_entry_bytes(head_dim: int, rope_dim: int) -> int:
    """FP8 nope dims + BF16 rope dims + one ue8m0 byte per 64 nope channels, padded to 8 bytes."""
    nope = head_dim - rope_dim
    raw = nope + 2 * rope_dim + math.ceil(nope / 64)
    return -(-raw // 8) * 8


def deployed_indexer_bytes(index_head_dim: int, indexer_storage: str) -> int:
    """MXFP4 key: c_I/2 bytes + one ue8m0 byte per 32 channels; FP8 key: c_I bytes + fp32 scale."""
    if indexer_storage == "fp4":
        return math.ceil(index_head_dim / 2) + math.ceil(index_head_dim / 32)
    if indexer_storage == "fp8":
        return index_head_dim + 4
    raise ValueError(f"unknown indexer_storage {indexer_storage!r}; choose one of {list(INDEXER_STORAGE)}")


# ----------------------------------------------------------------------------------------------
# KV cache
# ----------------------------------------------------------------------------------------------
PARTS = ("window", "compressed", "indexer", "state")


@dataclass
class KVBytes:
    """Decode-state bytes of one model at one context length.

    ``total`` = ``constant`` (window rings + compressor state, allocated up front) + the entries
    that grow with the context. ``per_token`` is the asymptotic growth in bytes per token of context
    (a float: e.g. (584 + 68)/4 per CSA layer). ``per_layer`` has one dict per main layer with the
    integer byte counts {"layer", "kind", "window", "compressed", "indexer", "state", "total"}; for
    V3.2 and the dense baseline every token has its own entry (ratio 1), counted under
    "compressed". All numbers are multiplied by ``batch_size``.
    """

    model: str
    context_len: int
    storage: str
    batch_size: int
    total: int
    constant: int
    per_token: float
    per_layer: list = field(default_factory=list)

    def part(self, name: str) -> int:
        """Sum over layers of one of "window", "compressed", "indexer", "state"."""
        if name not in PARTS:
            raise ValueError(f"unknown part {name!r}; choose one of {list(PARTS)}")
        return sum(row[name] for row in self.per_layer)

    @property
    def gb(self) -> float:
        return self.total / GB

    @property
    def gib(self) -> float:
        return self.total / GIB

    def table(self) -> str:
        head = f"{'layer':>5} {'kind':<6} " + " ".join(f"{p:>14}" for p in PARTS) + f" {'total':>14}"
        lines = [
            f"{self.model}: KV cache at L = {self.context_len:,} tokens, storage {self.storage}, "
            f"batch {self.batch_size}",
            head,
        ]
        for row in self.per_layer:
            cells = " ".join(f"{row[p]:>14,}" for p in PARTS)
            lines.append(f"{row['layer']:>5} {row['kind']:<6} {cells} {row['total']:>14,}")
        cells = " ".join(f"{self.part(p):>14,}" for p in PARTS)
        lines.append(f"{'all':>5} {'':<6} {cells} {self.total:>14,}")
        lines.append(
            f"total {self.total:,} B ({format_bytes(self.total)}); constant {self.constant:,} B; "
            f"{self.per_token:,.2f} B per token of context"
        )
        return "\n".join(lines)


def format_bytes(n: float) -> str:
    """1536 -> "1.50 KiB"; 10353082368 -> "9.64 GiB (10.35 GB)"."""
    if n >= GIB:
        return f"{n / GIB:.2f} GiB ({n / GB:.2f} GB)"
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:g} B"


def storage_label(storage, indexer_storage) -> str:
    if storage == "deployed":
        return f"deployed (indexer {indexer_storage})"
    return str(storage).replace("torch.", "")


def kv_cache_bytes(model, context_len, storage="bf16", indexer_storage="fp4", batch_size=1) -> KVBytes:
    """Bytes of decode state after ``context_len`` tokens (L = 0: the empty, freshly allocated cache).

    See the module docstring for the layout and the storage modes. V4 models count their main
    layers only (not the MTP block); V3.2 caches one MLA entry (576 values) and one indexer key
    (128 values) per token and layer; the dense baseline caches K and V (``num_key_value_heads`` x
    ``head_dim`` each) per token and layer, in BF16 under "deployed".
    """
    model = _resolve(model)
    L = _check_len(context_len, 0)
    B = _check_len(batch_size, 1, "batch_size")
    vb = _value_bytes(storage)
    if indexer_storage not in INDEXER_STORAGE:
        raise ValueError(f"unknown indexer_storage {indexer_storage!r}; choose one of {list(INDEXER_STORAGE)}")

    rows = []
    per_token = 0.0
    if isinstance(model, V4Config):
        c, ci = model.head_dim, model.index_head_dim
        b_e = deployed_entry_bytes(c, model.qk_rope_head_dim) if vb is None else c * vb
        b_i = deployed_indexer_bytes(ci, indexer_storage) if vb is None else ci * vb
        for i, kind in enumerate(model.layer_types):
            m = model.compress_ratios[i]
            row = {"layer": i, "kind": kind, "window": model.sliding_window * b_e, "compressed": 0, "indexer": 0, "state": 0}
            if m:
                coff = 2 if kind == "csa" else 1
                n = L // m
                row["compressed"] = n * b_e
                row["state"] = 2 * (coff * m) * (coff * c) * STATE_BYTES
                per_token += b_e / m
                if kind == "csa":
                    row["indexer"] = n * b_i
                    row["state"] += 2 * (coff * m) * (coff * ci) * STATE_BYTES
                    per_token += b_i / m
            rows.append(row)
    elif isinstance(model, V32Config):
        b_e = model.deployed_entry_bytes if vb is None else model.entry_dim * vb
        b_i = model.deployed_indexer_bytes if vb is None else model.index_head_dim * vb
        for i in range(model.num_hidden_layers):
            rows.append({"layer": i, "kind": "mla", "window": 0, "compressed": L * b_e, "indexer": L * b_i, "state": 0})
            per_token += b_e + b_i
    else:  # DenseGQA
        b_kv = 2 * model.num_key_value_heads * model.head_dim * (2 if vb is None else vb)
        for i in range(model.num_hidden_layers):
            rows.append({"layer": i, "kind": "dense", "window": 0, "compressed": L * b_kv, "indexer": 0, "state": 0})
            per_token += b_kv

    for row in rows:
        for p in PARTS:
            row[p] *= B
        row["total"] = sum(row[p] for p in PARTS)
    return KVBytes(
        model=model_name(model),
        context_len=L,
        storage=storage_label(storage, indexer_storage),
        batch_size=B,
        total=sum(r["total"] for r in rows),
        constant=sum(r["window"] + r["state"] for r in rows),
        per_token=per_token * B,
        per_layer=rows,
    )


# ----------------------------------------------------------------------------------------------
# Activated parameters
# ----------------------------------------------------------------------------------------------
def activated_params(cfg: V4Config) -> dict:
    """Parameters touched by one token in the main layers + head, excluding the embedding lookup
    and the MTP block, counted from the shapes of spec 8.2. Keys:

    * "attn_proj": wq_a, q_norm, wq_b, wkv, kv_norm, wo_a, wo_b, attn_sink, attn_norm, ffn_norm
    * "compressor": main compressors (wkv, wgate, ape, norm) of CSA/HCA layers
    * "indexer": indexer wq_b, weights_proj and its compressor (CSA layers)
    * "mhc": hc_{attn,ffn}_{fn,base,scale} of every layer + hc_head_{fn,base,scale}
    * "router": gate.weight (+ gate.bias in learned-routing layers; the hash table is a lookup)
    * "experts": num_experts_per_tok routed experts + the shared experts (w1, w2, w3)
    * "head": final norm + output head
    * "total": the sum (Flash 13.27e9, Pro 48.85e9, spec 1.3)
    """
    if not isinstance(cfg, V4Config):
        raise ValueError(f"activated_params needs a V4Config, got {type(cfg).__name__}")
    d, c, nh, ci, nhc = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.index_head_dim, cfg.hc_mult
    n_mix = (2 + nhc) * nhc
    p = dict.fromkeys(["attn_proj", "compressor", "indexer", "mhc", "router", "experts", "head"], 0)
    for i in range(cfg.num_hidden_layers):
        m = cfg.compress_ratios[i]
        p["attn_proj"] += (
            d * cfg.q_lora_rank + cfg.q_lora_rank  # wq_a, q_norm
            + cfg.q_lora_rank * nh * c  # wq_b
            + d * c + c  # wkv, kv_norm
            + cfg.o_lora_rank * nh * c  # wo_a: [g * o_lora, (nh/g) * c]
            + d * cfg.o_groups * cfg.o_lora_rank  # wo_b
            + nh  # attn_sink
            + 2 * d  # attn_norm, ffn_norm
        )
        csa = cfg.layer_kind(i) == "csa"
        if m:
            coff = 2 if csa else 1
            p["compressor"] += 2 * coff * c * d + m * coff * c + c
        if csa:
            p["indexer"] += (
                cfg.q_lora_rank * cfg.index_n_heads * ci  # wq_b
                + d * cfg.index_n_heads  # weights_proj
                + 2 * 2 * ci * d + m * 2 * ci + ci  # compressor wkv, wgate, ape, norm
            )
        p["mhc"] += 2 * (n_mix * nhc * d + n_mix + 3)
        p["router"] += cfg.n_routed_experts * d + (0 if cfg.is_hash_layer(i) else cfg.n_routed_experts)
        p["experts"] += (cfg.num_experts_per_tok + cfg.n_shared_experts) * 3 * d * cfg.moe_intermediate_size
        if cfg.mlp_bias and cfg.n_shared_experts:  # the shared expert's biases
            p["experts"] += 2 * cfg.n_shared_experts * cfg.moe_intermediate_size + d
    p["mhc"] += nhc * nhc * d + nhc + 1  # hc_head
    p["head"] = d + cfg.vocab_size * d
    p["total"] = sum(p.values())
    return p


# ----------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------
@dataclass
class Flops:
    """FLOPs of one model, either for one decoded token or for a whole prompt.

    ``terms`` maps each named term to its plain FLOP count (a multiply-add = 2 FLOPs);
    ``precision`` maps it to its precision class ("linear", "fp8", "fp4", "bf16", "vector") and
    ``weights`` to the multiplier the chosen ``weighting`` applies to that class. ``total`` is the
    weighted sum, ``plain`` the unweighted one.
    """

    model: str
    context_len: int
    kind: str  # "decode" or "prefill"
    weighting: str
    terms: dict
    precision: dict

    @property
    def weights(self) -> dict:
        w = WEIGHTINGS[self.weighting]
        return {k: w[self.precision[k]] for k in self.terms}

    @property
    def weighted(self) -> dict:
        w = self.weights
        return {k: v * w[k] for k, v in self.terms.items()}

    @property
    def total(self) -> float:
        return sum(self.weighted.values())

    @property
    def plain(self) -> float:
        return sum(self.terms.values())

    def groups(self) -> dict:
        """Weighted FLOPs in the report's three buckets + the rest: "linear" (every parameter
        matmul), "indexer" (indexer QK), "attention" (core attention), "other"."""
        out = {"linear": 0.0, "indexer": 0.0, "attention": 0.0, "other": 0.0}
        for k, v in self.weighted.items():
            if self.precision[k] == "linear":
                out["linear"] += v
            elif k == "indexer_qk":
                out["indexer"] += v
            elif k == "core_attention":
                out["attention"] += v
            else:
                out["other"] += v
        return out

    def table(self) -> str:
        w = self.weights
        what = "per decoded token" if self.kind == "decode" else "for the whole prompt"
        lines = [
            f"{self.model}: {self.kind} FLOPs {what} at L = {self.context_len:,}, weighting {self.weighting}",
            f"{'term':<16} {'class':<7} {'plain GFLOP':>14} {'x':>4} {'weighted GFLOP':>15}",
        ]
        for k, v in self.terms.items():
            lines.append(f"{k:<16} {self.precision[k]:<7} {v / 1e9:>14.4f} {w[k]:>4g} {v * w[k] / 1e9:>15.4f}")
        lines.append(f"{'total':<16} {'':<7} {self.plain / 1e9:>14.4f} {'':>4} {self.total / 1e9:>15.4f}")
        return "\n".join(lines)


def _sum_min(L: int, cap: int) -> int:
    """sum_{n=1..L} min(cap, n)."""
    if L <= cap:
        return L * (L + 1) // 2
    return cap * (cap + 1) // 2 + (L - cap) * cap


def _sum_floor(L: int, m: int) -> int:
    """sum_{n=1..L} floor(n / m)."""
    q, r = divmod(L, m)
    return m * q * (q - 1) // 2 + q * (r + 1)


def _sum_min_floor(L: int, m: int, k: int) -> int:
    """sum_{n=1..L} min(k, floor(n / m)); floor(n/m) >= k exactly from n = k*m on."""
    if L < k * m:
        return _sum_floor(L, m)
    return _sum_floor(k * m - 1, m) + k * (L - k * m + 1)


def _mhc_mix_flops(cfg: V4Config) -> int:
    """Non-parameter mHC work per token: per sub-block the RMS of the 4d streams, the pre collapse,
    the post expand (post * f + comb^T H) and the Sinkhorn iterations; plus the head collapse."""
    n, d = cfg.hc_mult, cfg.hidden_size
    sub = 2 * n * d + 2 * n * d + 2 * n * d + 2 * n * n * d + cfg.hc_sinkhorn_iters * 4 * n * n + 3 * n * n
    return cfg.num_hidden_layers * 2 * sub + 2 * n * d + 2 * n * d


def _v4_flops(cfg: V4Config, L: int, prefill: bool, all_logits: bool) -> tuple[dict, dict]:
    p = activated_params(cfg)
    w, c, nh = cfg.sliding_window, cfg.head_dim, cfg.num_attention_heads
    tokens = L if prefill else 1
    # entries a token sees, summed over the tokens that are priced (n = t + 1 tokens in context)
    window = _sum_min(L, w) if prefill else min(w, L)
    idx_qk = attn = pool = 0.0
    for i in range(cfg.num_hidden_layers):
        m = cfg.compress_ratios[i]
        seen = window
        if m:
            csa = cfg.layer_kind(i) == "csa"
            coff = 2 if csa else 1
            per_entry = POOL_FLOPS_PER_VALUE * coff * m * c
            if csa:
                per_entry += POOL_FLOPS_PER_VALUE * coff * m * cfg.index_head_dim
                entries = _sum_floor(L, m) if prefill else L // m
                idx_qk += 2 * cfg.index_n_heads * cfg.index_head_dim * entries
                seen += _sum_min_floor(L, m, cfg.index_topk) if prefill else min(cfg.index_topk, L // m)
            else:
                seen += _sum_floor(L, m) if prefill else L // m
            # prefill pools every complete block once; a decoded token pays 1/m of a pooling
            pool += (L // m) * per_entry if prefill else per_entry / m
        attn += 2 * nh * seen * (c + c)  # q.k over c dims + p.v over c dims, shared K = V
    head_tokens = tokens if (all_logits or not prefill) else 1
    terms = {
        "attn_proj": 2 * p["attn_proj"] * tokens,
        "compressor_proj": 2 * p["compressor"] * tokens,
        "indexer_proj": 2 * p["indexer"] * tokens,
        "mhc_proj": 2 * p["mhc"] * tokens,
        "router": 2 * p["router"] * tokens,
        "experts": 2 * p["experts"] * tokens,
        "head": 2 * p["head"] * head_tokens,
        "indexer_qk": idx_qk,
        "core_attention": attn,
        "compressor_pool": pool,
        "mhc_mix": _mhc_mix_flops(cfg) * tokens,
    }
    precision = dict.fromkeys(terms, "linear")
    precision.update(indexer_qk="fp4", core_attention="bf16", compressor_pool="vector", mhc_mix="vector")
    return terms, precision


def _v32_flops(cfg: V32Config, L: int, prefill: bool, all_logits: bool) -> tuple[dict, dict]:
    tokens = L if prefill else 1
    head_tokens = tokens if (all_logits or not prefill) else 1
    raw = L * (L + 1) // 2 if prefill else L  # the indexer scans every raw token
    topk = _sum_min(L, cfg.index_topk) if prefill else min(cfg.index_topk, L)
    n = cfg.num_hidden_layers
    terms = {
        "linear": 2 * (cfg.activated_params - cfg.head_params) * tokens,
        "head": 2 * cfg.head_params * head_tokens,
        "indexer_qk": 2 * cfg.index_n_heads * cfg.index_head_dim * raw * n,
        "core_attention": 2 * cfg.num_attention_heads * topk * (cfg.entry_dim + cfg.kv_lora_rank) * n,
    }
    precision = {"linear": "linear", "head": "linear", "indexer_qk": "fp8", "core_attention": "bf16"}
    return terms, precision


def _dense_flops(cfg: DenseGQA, L: int, prefill: bool, all_logits: bool) -> tuple[dict, dict]:
    tokens = L if prefill else 1
    head_tokens = tokens if (all_logits or not prefill) else 1
    seen = L * (L + 1) // 2 if prefill else L
    terms = {
        "linear": 2 * cfg.activated_params * tokens,
        "head": 2 * cfg.head_params * head_tokens,
        "core_attention": 2 * cfg.num_attention_heads * seen * 2 * cfg.head_dim * cfg.num_hidden_layers,
    }
    precision = {"linear": "linear", "head": "linear", "core_attention": "bf16"}
    return terms, precision


def _flops(model, context_len, weighting, prefill, all_logits) -> Flops:
    model = _resolve(model)
    L = _check_len(context_len, 1)
    _check_weighting(weighting)
    fn = _v4_flops if isinstance(model, V4Config) else _v32_flops if isinstance(model, V32Config) else _dense_flops
    terms, precision = fn(model, L, prefill, all_logits)
    return Flops(
        model=model_name(model),
        context_len=L,
        kind="prefill" if prefill else "decode",
        weighting=weighting,
        terms={k: float(v) for k, v in terms.items()},
        precision=precision,
    )


_FLOPS_DOC = """

    Terms (V4): ``attn_proj``, ``compressor_proj``, ``indexer_proj``, ``mhc_proj``, ``router``,
    ``experts``, ``head`` = 2 x the activated parameters of each component (:func:`activated_params`;
    norms, biases and ``ape`` included, the embedding lookup and the MTP block excluded);
    ``indexer_qk`` = 2 n_I c_I per visible indexer key of every CSA layer; ``core_attention`` =
    2 n_h (2c) per attended entry (q.k and p.v over c = head_dim, window entries + top-k CSA entries
    or all HCA entries); ``compressor_pool`` = 5 FLOPs per pooled value of the per-channel softmax
    pooling; ``mhc_mix`` = the non-parameter mHC work (stream RMS, collapse, expand, Sinkhorn).
    V3.2 (spec 10.1): ``linear`` + ``head`` = 2 x 37.48e9, ``indexer_qk`` = 2 * 64 * 128 per raw
    token per layer, ``core_attention`` = 2 * 128 * (576 + 512) per selected token (top-2048) per
    layer. Dense GQA: the V4 model's linear terms + ``core_attention`` = 2 n_h (2 head_dim) per token.
    Not counted anywhere: softmax exponentials of the core attention, the indexer's ReLU and head
    weighting, top-k selection, RMSNorm/RoPE arithmetic.

    Weightings:

    * ``"plain"``: every FLOP counts 1.
    * ``"fp8-equivalent"`` (spec 10.2; the only weighting that reproduces the report's 3.7x / 9.8x):
      FLOPs expressed in FP8 tensor-core FLOPs. Every parameter matmul counts x1 whatever its
      actual format (FP8 attention/shared-expert weights, FP4 routed experts, BF16 compressors,
      router and head); the core attention runs in BF16 and counts x2; the V4 indexer QK runs in
      FP4 and counts x0.5; the V3.2 indexer QK runs in FP8 and counts x1; the small vector terms
      (``compressor_pool``, ``mhc_mix``) count x1.
    """


def decode_flops(model, context_len, weighting="plain") -> Flops:
    """FLOPs to decode one token when the context holds ``context_len`` tokens, the new one
    included (it is at position L - 1): it attends to min(w, L) window entries and to the
    floor(L/m) complete compressed entries of each CSA/HCA layer (CSA: the top min(k, floor(L/4))
    of them, after the indexer has scored all floor(L/4)). The compressor pooling is amortised:
    1/m of one block's pooling per token."""
    return _flops(model, context_len, weighting, prefill=False, all_logits=False)


def prefill_flops(model, context_len, weighting="plain", all_logits=False) -> Flops:
    """FLOPs of a causal prefill of a ``context_len``-token prompt from position 0: the sum over
    positions t of what token t costs with t + 1 tokens in context (closed forms, no loop over
    tokens), with every complete block pooled once. The output head runs for the last position only
    (the next-token logits), or for every position with ``all_logits=True``."""
    return _flops(model, context_len, weighting, prefill=True, all_logits=all_logits)


if decode_flops.__doc__ is not None:  # docstrings are stripped under python -OO
    decode_flops.__doc__ += _FLOPS_DOC
    prefill_flops.__doc__ += _FLOPS_DOC


# ----------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------
COMPARED = ("v3.2", "pro", "flash", "dense")


def compare(context_lens, storage="deployed", weighting="fp8-equivalent", indexer_storage="fp4",
            models=COMPARED) -> list[dict]:
    """One row per (context length, model) for V3.2, V4-Pro, V4-Flash and the dense GQA-8 baseline
    (shaped like V4-Pro), each with its KV cache and per-token decode FLOPs and their ratio to V3.2:

    {"model", "context_len", "kv_bytes", "kv_gb", "kv_gib", "kv_vs_v32", "kv_x_smaller",
     "decode_flops", "decode_gflops", "flops_vs_v32", "flops_x_fewer", "storage", "weighting"}.

    ``models`` may list other preset names or model objects; "v3.2" is always priced as the
    reference of the ratios.
    """
    if isinstance(context_lens, numbers.Integral) and not isinstance(context_lens, bool):
        context_lens = [context_lens]
    context_lens = [_check_len(L, 1) for L in context_lens]
    _check_weighting(weighting)
    ref = preset("v3.2")
    models = [_resolve(m) for m in models]
    rows = []
    for L in context_lens:
        ref_kv = kv_cache_bytes(ref, L, storage, indexer_storage).total
        ref_fl = decode_flops(ref, L, weighting).total
        for m in models:
            kv = kv_cache_bytes(m, L, storage, indexer_storage)
            fl = decode_flops(m, L, weighting)
            rows.append({
                "model": kv.model,
                "context_len": L,
                "kv_bytes": kv.total,
                "kv_gb": kv.gb,
                "kv_gib": kv.gib,
                "kv_vs_v32": kv.total / ref_kv,
                "kv_x_smaller": ref_kv / kv.total,
                "decode_flops": fl.total,
                "decode_gflops": fl.total / 1e9,
                "flops_vs_v32": fl.total / ref_fl,
                "flops_x_fewer": ref_fl / fl.total,
                "storage": kv.storage,
                "weighting": weighting,
            })
    return rows


def format_table(rows: list[dict]) -> str:
    """Plain-text table of :func:`compare` rows."""
    if not rows:
        return "(no rows)"
    lines = [
        f"KV storage: {rows[0]['storage']}; FLOPs weighting: {rows[0]['weighting']}",
        f"{'model':<20} {'context':>9} {'KV GB':>9} {'KV GiB':>8} {'vs V3.2':>8} {'x less':>7} "
        f"{'GFLOP/tok':>10} {'vs V3.2':>8} {'x less':>7}",
    ]
    for r in rows:
        lines.append(
            f"{r['model']:<20} {r['context_len']:>9,} {r['kv_gb']:>9.3f} {r['kv_gib']:>8.3f} "
            f"{100 * r['kv_vs_v32']:>7.1f}% {r['kv_x_smaller']:>7.2f} {r['decode_gflops']:>10.1f} "
            f"{100 * r['flops_vs_v32']:>7.1f}% {r['flops_x_fewer']:>7.2f}"
        )
    return "\n".join(lines)
