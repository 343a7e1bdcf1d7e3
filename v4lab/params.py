"""The parameter table of a config, read off the modules on the meta device (no memory), and the
parameter counts derived from it.

:func:`param_table` lists every tensor ``V4Model(cfg)`` holds -- name, shape, whether it follows
the model dtype or stays float32 / int64, whether it is a buffer -- by building each distinct kind
of block once on the meta device (a Flash-sized model has tens of thousands of expert modules;
building each of them only to list it took most of a minute) and naming its tensors for every
layer that uses it.  The checkpoint schema (``v4lab.checkpoint``), the memory of a layer
(``v4lab.streaming.layer_nbytes``) and the cost model's activated parameters
(``v4lab.costs.activated_params``) all read this table, so none of them can drift from the model.

``count_parameters(cfg)`` returns total and activated-per-token counts, with and without the MTP
block and the embedding table.  "Activated" counts every parameter a token's forward pass reads:
all attention/compressor/indexer/mHC/norm/router parameters of every layer, the shared expert,
``num_experts_per_tok`` routed experts, the LM head, and (in the "incl. embedding" figures) the
full embedding table.  The report's "284B total" is the main stack without MTP (spec 1.3:
284.3B); "1.6T" is Pro with MTP (1598.8B); "13B / 49B activated" are the activated counts without
MTP and without the embedding table (13.27B / 48.85B).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .config import V4Config

__all__ = ["TensorEntry", "block_tensors", "top_tensors", "param_table", "ParamCount", "count_parameters",
           "model_size_bytes"]


class TensorEntry(NamedTuple):
    """One tensor of the model.  ``precision``: ``"model"`` (the model's dtype), ``"fp32"`` (float32
    whatever the model dtype: mHC, sinks, ``ape``, router bias) or ``"int64"`` (the hash table)."""

    name: str
    shape: tuple
    precision: str
    buffer: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


_PRECISION = {torch.bfloat16: "model", torch.float32: "fp32", torch.int64: "int64"}
_CACHE: OrderedDict = OrderedDict()          # (config, block kind) -> tuple of TensorEntry
_CACHE_SIZE = 64


def _entries(module: torch.nn.Module) -> tuple[TensorEntry, ...]:
    """The state_dict tensors of a module built in bfloat16, in module order."""
    buffers = {n for n, _ in module.named_buffers()}
    out = []
    for name, t in module.state_dict(keep_vars=True).items():
        if t.dtype not in _PRECISION:
            raise TypeError(f"{name}: a {t.dtype} tensor in a bfloat16 model; the parameter table knows "
                            f"{sorted(map(str, _PRECISION))}")
        out.append(TensorEntry(name, tuple(t.shape), _PRECISION[t.dtype], name in buffers))
    return tuple(out)


def _cached(cfg: V4Config, key: tuple, build) -> tuple[TensorEntry, ...]:
    k = (repr(cfg), key)
    hit = _CACHE.get(k)
    if hit is None:
        with torch.device("meta"):
            hit = _entries(build())
        _CACHE[k] = hit
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(k)
    return hit


def block_tensors(cfg: V4Config, layer: int) -> tuple[TensorEntry, ...]:
    """The tensors of block ``layer`` (names relative to ``layers.{layer}.``), in module order;
    ``layer == cfg.num_hidden_layers`` is the MTP block (relative to ``mtp.0.``), with its own
    projections, norms and head collapse."""
    from .model import Block, MTPBlock

    if layer == cfg.num_hidden_layers:
        return _cached(cfg, ("mtp",), lambda: MTPBlock(cfg, dtype=torch.bfloat16))
    if not 0 <= layer < cfg.num_hidden_layers:
        raise IndexError(f"layer {layer} out of range: the config has {cfg.num_hidden_layers} layers (+ MTP)")
    key = (cfg.layer_kind(layer), cfg.compress_ratios[layer], cfg.is_hash_layer(layer))
    return _cached(cfg, key, lambda: Block(cfg, layer, key[1], key[2], dtype=torch.bfloat16))


def top_tensors(cfg: V4Config) -> tuple[TensorEntry, ...]:
    """What ``V4Model`` holds outside its blocks: the embedding, the final norm, the mHC head
    collapse and the output head."""
    from .mhc import hc_params
    from .norm import RMSNorm

    def build():
        top = torch.nn.Module()
        top.embed = torch.nn.Embedding(cfg.vocab_size, cfg.hidden_size, dtype=torch.bfloat16)
        top.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=torch.bfloat16)
        top.head = torch.nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=torch.bfloat16)
        hc_params(top, "hc_head", cfg, cfg.hc_mult)
        return top

    return _cached(cfg, ("top",), build)


def param_table(cfg: V4Config, mtp: bool = True) -> list[TensorEntry]:
    """Every tensor of ``V4Model(cfg)`` with its full (official) name: the embedding, the blocks
    ``layers.N.*``, the MTP block ``mtp.0.*`` (with ``mtp``, when the config has one), then the
    final norm, mHC head and output head."""
    top = top_tensors(cfg)
    out = [e for e in top if e.name.startswith("embed.")]
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        out += [e._replace(name=p + e.name) for e in block_tensors(cfg, i)]
    if mtp and cfg.num_nextn_predict_layers:
        out += [e._replace(name="mtp.0." + e.name) for e in block_tensors(cfg, cfg.num_hidden_layers)]
    return out + [e for e in top if not e.name.startswith("embed.")]


# ------------------------------------------------------------------------------------------------
# counts
# ------------------------------------------------------------------------------------------------
@dataclass
class ParamCount:
    total: int  # every parameter incl. MTP and embedding
    total_without_mtp: int
    embedding: int
    mtp: int
    activated: int  # per token, main stack, without embedding (the report's "activated")
    activated_with_embedding: int
    activated_with_mtp: int
    routed_experts: int

    def __str__(self):
        def f(n):
            return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"

        return (f"total {f(self.total)} (without MTP {f(self.total_without_mtp)}), "
                f"activated/token {f(self.activated)} (incl. embedding {f(self.activated_with_embedding)}, "
                f"incl. MTP {f(self.activated_with_mtp)})")


def _tally(named_sizes) -> tuple[int, int]:
    """(all parameters, routed-expert parameters) of (name, numel) pairs."""
    total = routed = 0
    for name, n in named_sizes:
        total += n
        if ".ffn.experts." in "." + name:
            routed += n
    return total, routed


def _block_tally(entries) -> tuple[int, int]:
    return _tally((e.name, e.numel) for e in entries if not e.buffer)


def count_parameters(cfg_or_model) -> ParamCount:
    """Counts of a config (from the parameter table, buffers left out) or of a built ``V4Model``
    (from its ``named_parameters``)."""
    from .model import V4Model

    if isinstance(cfg_or_model, V4Model):
        model = cfg_or_model
        cfg: V4Config = model.config
        main = _tally((n, p.numel()) for n, p in model.named_parameters() if not n.startswith("mtp."))
        mtp = _tally((n, p.numel()) for n, p in model.named_parameters() if n.startswith("mtp."))
        embedding = model.embed.weight.numel()
    else:
        cfg = cfg_or_model
        main = _block_tally(top_tensors(cfg))
        for i in range(cfg.num_hidden_layers):
            main = tuple(a + b for a, b in zip(main, _block_tally(block_tensors(cfg, i))))
        mtp = _block_tally(block_tensors(cfg, cfg.num_hidden_layers)) if cfg.num_nextn_predict_layers else (0, 0)
        embedding = cfg.vocab_size * cfg.hidden_size
    (main_total, routed_main), (mtp_total, routed_mtp) = main, mtp
    frac = cfg.num_experts_per_tok / cfg.n_routed_experts
    act_main = main_total - embedding - routed_main + round(routed_main * frac)
    act_mtp = mtp_total - routed_mtp + round(routed_mtp * frac)
    return ParamCount(
        total=main_total + mtp_total,
        total_without_mtp=main_total,
        embedding=embedding,
        mtp=mtp_total,
        activated=act_main,
        activated_with_embedding=act_main + embedding,
        activated_with_mtp=act_main + act_mtp,
        routed_experts=routed_main + routed_mtp,
    )


def model_size_bytes(cfg: V4Config, dtype=torch.bfloat16) -> int:
    return count_parameters(cfg).total * torch.empty(0, dtype=dtype).element_size()
