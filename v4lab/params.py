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


def count_parameters(cfg_or_model) -> ParamCount:
    from .model import V4Model

    if isinstance(cfg_or_model, V4Model):
        model = cfg_or_model
    else:
        model = V4Model(cfg_or_model, device="meta", init=False)
    cfg: V4Config = model.config
    total = embedding = mtp = routed = 0
    for name, p in model.named_parameters():
        n = p.numel()
        total += n
        if name.startswith("embed."):
            embedding += n
        if name.startswith("mtp."):
            mtp += n
        if ".ffn.experts." in name:
            routed += n
    frac = cfg.num_experts_per_tok / cfg.n_routed_experts
    routed_mtp = sum(p.numel() for n_, p in model.named_parameters() if n_.startswith("mtp.") and ".ffn.experts." in n_)
    routed_main = routed - routed_mtp
    total_wo_mtp = total - mtp
    act_main = total_wo_mtp - embedding - routed_main + round(routed_main * frac)
    act_mtp = mtp - routed_mtp + round(routed_mtp * frac)
    return ParamCount(
        total=total,
        total_without_mtp=total_wo_mtp,
        embedding=embedding,
        mtp=mtp,
        activated=act_main,
        activated_with_embedding=act_main + embedding,
        activated_with_mtp=act_main + act_mtp,
        routed_experts=routed,
    )


def model_size_bytes(cfg: V4Config, dtype=torch.bfloat16) -> int:
    return count_parameters(cfg).total * torch.empty(0, dtype=dtype).element_size()
