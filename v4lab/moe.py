"""Mixture-of-experts FFN, spec section 5.

Router: s = sqrt(softplus(x W^T)) in fp32 (``scoring_func``; any element-wise function of
``activations.py``).  Learned layers pick the top-k of s + bias (the bias
steers selection only); hash layers (the first ``num_hash_layers``) look the experts up in a fixed
table ``tid2eid[token_id]``.  Weights are the picked s, renormalised, times
``routed_scaling_factor``.  Every expert, routed and shared, is a SwiGLU with the gate clamped from
above and the up projection clamped on both sides at ``swiglu_limit`` (the gate's function is
``hidden_act``: SiLU in V4).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .activations import activation
from .config import V4Config
from .norm import f32


class Expert(nn.Module):
    """SwiGLU expert: w2(silu(min(w1 x, L)) * clamp(w3 x, -L, L))."""

    def __init__(self, d: int, inter: int, limit: float | None, dtype=None, act: str = "silu", bias: bool = False):
        super().__init__()
        self.act = activation(act)
        self.w1 = nn.Linear(d, inter, bias=bias, dtype=dtype)
        self.w2 = nn.Linear(inter, d, bias=bias, dtype=dtype)
        self.w3 = nn.Linear(d, inter, bias=bias, dtype=dtype)
        self.limit = limit
        # reference / deployed numerics: the gate, clamp, SiLU, product and routing weight in fp32,
        # rounded once to the model dtype before w2 (DeepSeek's Expert); hf: in the model dtype
        self.fp32_swiglu = True

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """silu(min(w1 x, L)) * clamp(w3 x, -L, L), fp32 when ``fp32_swiglu`` else x's dtype."""
        g, u = self.w1(x), self.w3(x)
        if self.fp32_swiglu:
            g, u = f32(g), f32(u)
        if self.limit is not None:
            g = g.clamp(max=self.limit)
            u = u.clamp(-self.limit, self.limit)
        return self.act(g) * u

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None, weight_before_w2: bool = True):
        h = self.hidden(x)
        if weight is None:
            return self.w2(h.to(x.dtype))
        if weight_before_w2:  # the reference: scale the hidden state, then project
            return self.w2((f32(h) * weight[:, None]).to(x.dtype))
        return f32(self.w2(h.to(x.dtype))) * weight[:, None]  # transformers: project, then scale


class Gate(nn.Module):
    """Router.  ``weight`` [E, d]; ``bias`` [E] (learned layers) or ``tid2eid`` [vocab, k] (hash)."""

    def __init__(self, cfg: V4Config, hash_routing: bool, dtype=None):
        super().__init__()
        E = cfg.n_routed_experts
        self.k, self.scale, self.hash = cfg.num_experts_per_tok, cfg.routed_scaling_factor, hash_routing
        self.score = activation(cfg.scoring_func)
        self.weight = nn.Parameter(torch.empty(E, cfg.hidden_size, dtype=dtype))
        if hash_routing:
            self.register_buffer("tid2eid", torch.zeros(cfg.vocab_size, self.k, dtype=torch.int64))
            self.bias = None
        else:
            self.bias = nn.Parameter(torch.zeros(E, dtype=torch.float32))

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None):
        """x [T, d] -> (expert ids [T, k], weights [T, k] fp32, scores [T, E] fp32)."""
        s = self.score(F.linear(f32(x), f32(self.weight)))  # [T, E]
        if self.hash:
            if token_ids is None:
                raise ValueError("hash-routed MoE layers need the input token ids")
            idx = self.tid2eid[token_ids].long()  # the table may be int32 (DeepSeek's reference) or int64
        else:
            idx = torch.topk(s.detach() + self.bias.detach(), self.k, dim=-1).indices
        w = s.gather(-1, idx)
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20) * self.scale
        return idx, w, s


class MoE(nn.Module):
    def __init__(self, cfg: V4Config, layer: int, hash_routing: bool, dtype=None):
        super().__init__()
        d, inter, lim = cfg.hidden_size, cfg.moe_intermediate_size, cfg.swiglu_limit
        self.gate = Gate(cfg, hash_routing, dtype)
        act = cfg.hidden_act
        self.experts = nn.ModuleList(Expert(d, inter, lim, dtype, act) for _ in range(cfg.n_routed_experts))
        self.shared_experts = (Expert(d, inter * cfg.n_shared_experts, lim, dtype, act, bias=cfg.mlp_bias)
                               if cfg.n_shared_experts else None)
        self.weight_before_w2 = True  # set by the model's numerics
        self.last_load: torch.Tensor | None = None  # tokens per expert of the last call (for plots / bias updates)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None) -> torch.Tensor:
        B, S, d = x.shape
        flat = x.reshape(-1, d)  # [T, d]
        ids = token_ids.reshape(-1) if token_ids is not None else None
        idx, w, _ = self.gate(flat, ids)  # [T, k]
        y = torch.zeros(flat.shape, dtype=f32(x).dtype, device=x.device)
        counts = torch.bincount(idx.flatten(), minlength=len(self.experts))
        self.last_load = counts.detach()
        for e in torch.nonzero(counts).flatten().tolist():
            tok, slot = torch.nonzero(idx == e, as_tuple=True)
            out = self.experts[e](flat[tok], w[tok, slot], self.weight_before_w2)
            y.index_add_(0, tok, out.to(y.dtype))
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat).to(y.dtype)
        return y.to(x.dtype).view(B, S, d)
