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
    activated_params(cfg) -> dict                                    # per component, from the modules
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

The pieces: :mod:`v4lab.cost_models` (the priced models, presets, activated parameters),
:mod:`v4lab.flops` (FLOPs), the byte layout of a stored entry in :mod:`v4lab.cache` (the one the
cache allocates), and here the KV cache and the comparison; every name is importable from here.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from .cache import INDEXER_STORAGE, deployed_entry_bytes, deployed_indexer_bytes
from .config import V4Config
from .cost_models import (COMPONENTS, PRESET_NAMES, DenseGQA, V32Config, activated_params, check_len, model_name,
                          preset, resolve_model)
from .flops import POOL_FLOPS_PER_VALUE, WEIGHTINGS, Flops, check_weighting, decode_flops, prefill_flops

__all__ = [
    "GB", "GIB", "REPORT_KV_RATIO", "REPORT_FLOPS_RATIO", "STORAGE_MODES", "INDEXER_STORAGE", "STATE_BYTES",
    "PARTS", "COMPARED", "V32Config", "DenseGQA", "PRESET_NAMES", "preset", "model_name", "resolve_model",
    "check_len", "COMPONENTS", "activated_params", "deployed_entry_bytes", "deployed_indexer_bytes", "KVBytes",
    "format_bytes", "storage_label", "kv_cache_bytes", "WEIGHTINGS", "POOL_FLOPS_PER_VALUE", "check_weighting",
    "Flops", "decode_flops", "prefill_flops", "compare", "format_table",
]

GB = 1e9
GIB = 2**30

# The DeepSeek-V4 report's Figure 1 annotations at 1M tokens (x smaller / x fewer than V3.2).
REPORT_KV_RATIO = {"pro": 9.5, "flash": 13.7}
REPORT_FLOPS_RATIO = {"pro": 3.7, "flash": 9.8}

_VALUE_BYTES = {
    "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2,
    "fp32": 4, "float32": 4, "fp64": 8, "float64": 8,
}
STORAGE_MODES = ("deployed",) + tuple(_VALUE_BYTES)
STATE_BYTES = 4  # compressor state is fp32


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
    model = resolve_model(model)
    L = check_len(context_len, 0)
    B = check_len(batch_size, 1, "batch_size")
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
    context_lens = [check_len(L, 1) for L in context_lens]
    check_weighting(weighting)
    ref = preset("v3.2")
    models = [resolve_model(m) for m in models]
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
