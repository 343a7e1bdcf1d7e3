"""FLOPs of one decoded token and of a whole prefill, per named term (spec 10): the parameter
matmuls (twice the activated parameters of :func:`v4lab.cost_models.activated_params`), the
indexer's scoring, the core attention, the compressor pooling and the mHC mixing, for V4 configs,
DeepSeek-V3.2 and the dense GQA baseline, under a plain or an FP8-equivalent weighting.
``v4lab.costs`` re-exports everything here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import V4Config
from .cost_models import DenseGQA, V32Config, activated_params, check_len, model_name, resolve_model

__all__ = ["WEIGHTINGS", "POOL_FLOPS_PER_VALUE", "check_weighting", "Flops", "decode_flops", "prefill_flops"]

# Multiplier per precision class of a FLOP term, for each weighting (see decode_flops).
WEIGHTINGS = {
    "plain": {"linear": 1.0, "fp8": 1.0, "fp4": 1.0, "bf16": 1.0, "vector": 1.0},
    "fp8-equivalent": {"linear": 1.0, "fp8": 1.0, "fp4": 0.5, "bf16": 2.0, "vector": 1.0},
}

# FLOPs per pooled value in the compressor (max, exp, sum, divide, multiply-add of the
# per-channel softmax pooling); an order-of-magnitude term.
POOL_FLOPS_PER_VALUE = 5


def check_weighting(weighting: str) -> dict:
    """The multipliers of ``weighting``, or a ValueError naming the known ones."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {list(WEIGHTINGS)}")
    return WEIGHTINGS[weighting]



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
    model = resolve_model(model)
    L = check_len(context_len, 1)
    check_weighting(weighting)
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
