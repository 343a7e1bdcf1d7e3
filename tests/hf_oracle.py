"""Helpers to build tiny random `transformers` DeepSeek-V4 models as an independent oracle.

The HF port zero-initialises sinks, position biases, mHC bases, router biases and tid2eid; every
parameter and buffer is randomised here (tid2eid rows with distinct experts) so that a parity test
exercises all of them.  Configs are always built explicitly (layer_types, compress_rates, YaRN).
"""
from __future__ import annotations

import torch

from v4lab import V4Config


def hf_config(cfg: V4Config):
    from transformers import DeepseekV4Config

    d = cfg.to_hf()
    for k in ("model_type", "architectures"):
        d.pop(k)
    return DeepseekV4Config(**d)


@torch.no_grad()
def randomize(model, seed: int = 0, n_experts: int | None = None):
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name or name.endswith(("scale", "hc_scale")):
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        elif name.endswith(("fn", "hc_fn")):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        elif p.dim() >= 2 and "embed" in name:
            p.copy_(torch.randn(p.shape, generator=g))
        elif p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
        else:
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    for name, b in model.named_buffers():
        if name.endswith("tid2eid"):
            E = n_experts or int(b.max()) + 1
            b.copy_(torch.stack([torch.randperm(E, generator=g)[: b.shape[1]] for _ in range(b.shape[0])]))
    return model


def tiny_hf_model(cfg: V4Config, seed: int = 0, dtype=torch.float32):
    from transformers import DeepseekV4ForCausalLM

    torch.manual_seed(seed)
    m = DeepseekV4ForCausalLM(hf_config(cfg)).to(dtype).eval()
    randomize(m, seed, cfg.n_routed_experts)
    return m
