"""Parameter accounting from a config, without allocating memory (meta device).

``count_parameters(cfg)`` returns total and activated-per-token counts, with and without the MTP
block and the embedding table.  "Activated" counts every parameter a token's forward pass reads:
all attention/compressor/indexer/mHC/norm/router parameters of every layer, the shared expert,
``num_experts_per_tok`` routed experts, the LM head, and (in the "incl. embedding" figures) the
full embedding table.  The report's "284B total" is the main stack without MTP (spec 1.3:
284.3B); "1.6T" is Pro with MTP (1598.8B); "13B / 49B activated" are the activated counts without
MTP and without the embedding table (13.27B / 48.85B).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import V4Config


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


def _tally(named_parameters, prefix: str = "") -> tuple[int, int]:
    """(all parameters, routed-expert parameters) of ``named_parameters``."""
    total = routed = 0
    for name, p in named_parameters:
        total += p.numel()
        if ".ffn.experts." in prefix + name:
            routed += p.numel()
    return total, routed


def count_parameters(cfg_or_model) -> ParamCount:
    """Counts of a config (or of a built ``V4Model``).

    For a config, every distinct kind of block (compression ratio, hash or learned routing) is
    built once on the meta device and counted, then multiplied by how often the schedule uses it:
    a Flash-sized model has tens of thousands of expert modules, and building each of them only
    to count it took most of a minute."""
    from .mhc import hc_params
    from .model import Block, MTPBlock, V4Model
    from .norm import RMSNorm

    if isinstance(cfg_or_model, V4Model):
        model = cfg_or_model
        cfg: V4Config = model.config
        main = _tally(((n, p) for n, p in model.named_parameters() if not n.startswith("mtp.")), ".")
        mtp = _tally(((n, p) for n, p in model.named_parameters() if n.startswith("mtp.")), ".")
        embedding = model.embed.weight.numel()
    else:
        cfg = cfg_or_model
        kinds: dict[tuple, tuple[int, int]] = {}
        blocks = [0, 0]
        with torch.device("meta"):
            for i in range(cfg.num_hidden_layers):
                key = (cfg.layer_kind(i), cfg.compress_ratios[i], cfg.is_hash_layer(i))
                if key not in kinds:
                    kinds[key] = _tally(Block(cfg, i, *key[1:]).named_parameters(), ".")
                blocks = [a + b for a, b in zip(blocks, kinds[key])]
            top = torch.nn.Module()  # what V4Model holds outside its blocks
            top.embed = torch.nn.Embedding(cfg.vocab_size, cfg.hidden_size)
            top.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            top.head = torch.nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
            hc_params(top, "hc_head", cfg, cfg.hc_mult)
            outer = _tally(top.named_parameters())
            mtp = _tally(MTPBlock(cfg).named_parameters(), ".") if cfg.num_nextn_predict_layers else (0, 0)
        main = (blocks[0] + outer[0], blocks[1])
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
