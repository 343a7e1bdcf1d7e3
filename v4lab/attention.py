"""One V4 attention layer: window + compressed entries + sink in one softmax (spec 4).

All three layer types share this skeleton and differ only in which compressed entries are added
to the 128-token sliding window:

* window-only (ratio 0): none;
* **CSA** (ratio m = 4 in V4): the Lightning Indexer's top-k of the overlapping m-token entries;
* **HCA** (ratio m = 128 in V4): every complete m-token entry (dense over the compressed sequence).

The layer's kind comes from the config (``cfg.layer_kind(layer)``), never from its rate.

Per token t (x_t = normalised block input):

    cq_t  = q_norm(wq_a x_t)                           query latent (also feeds the indexer)
    q_t,h = RMS0(wq_b cq_t)_h, RoPE on the last dims    [H, D]
    kv_t  = RoPE(kv_norm(wkv x_t))                      one vector, both key and value (MQA)
    o_t,h = sum_s softmax_s(q_t,h . v_s / sqrt(D) ; sink_h) v_s   over window + compressed entries
    out_t = wo_b [ wo_a[g] (inverse-RoPE(o_t))_group g ]_g         grouped output projection

The sink is a per-head logit of a virtual key whose value is zero: it only enlarges the softmax
denominator.  Window entries are the raw kv of positions t-window+1 .. t (the current token is
included); compressed entry j (ratio m) is visible only once its block is complete:
(j+1)*m <= t+1.

The one softmax is :func:`attend`; :func:`attention` runs it over blocks of queries, so no
[S, S] or [S, S/4] tensor is ever built: a query block reads the window keys it needs (a band)
and the compressed entries (all complete ones for HCA, its top-k for CSA).  Both are the PyTorch
references of ``v4lab.kernels`` (``reference.attention``, and ``reference.sparse_attention`` /
``hca_attention`` are :func:`attend` over gathered rows); the Triton backend is a drop-in with
the same signature.  ``Attention.forward`` only strings the equations together: the cache
bookkeeping, the indexer's training signal and the recording for plots are the methods after it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn
from einops import rearrange

from .compressor import Compressor
from .config import V4Config
from .indexer import Indexer
from .norm import RMSNorm, f32, rms0
from .quant import deployed_weight  # the weight itself unless numerics="deployed"
from .rope import Rope

NEG_INF = float("-inf")


@dataclass
class ForwardContext:
    """Switches and outputs of one forward pass (training signals, pictures)."""

    dense_csa: bool = False  # CSA attends every complete entry (indexer warm-up)
    indexer_loss: bool = False  # compute the indexer KL loss (training)
    record: bool = False  # keep indexer picks and attention mass per layer
    query_block: int = 256
    losses: list = field(default_factory=list)
    records: dict = field(default_factory=dict)

    @property
    def observing(self) -> bool:
        """Whether the attention probabilities are needed (only the torch path has them)."""
        return self.dense_csa or self.indexer_loss or self.record


def fp8_nope(x: torch.Tensor, rope_dim: int) -> torch.Tensor:
    """QAT of stored KV: FP8 e4m3 round trip of the nope dims (64-channel blocks), RoPE dims kept."""
    from .quant import fp8_roundtrip

    return torch.cat([fp8_roundtrip(x[..., :-rope_dim], block=64), x[..., -rope_dim:]], dim=-1)


# ----------------------------------------------------------------------------------------------
# the core: one softmax over key sets plus the sink, run over blocks of queries
# ----------------------------------------------------------------------------------------------
class Keys(NamedTuple):
    """One set of key (= value) rows for a block of Q queries."""

    kv: torch.Tensor  # [B, K, D] shared by the block's queries, or [B, Q, K, D] with per_query
    visible: torch.Tensor  # bool [B or 1, Q, K]: which query sees which row
    per_query: bool = False


def attend(q: torch.Tensor, key_sets, sink: torch.Tensor, scale: float):
    """o_q,h = sum_s softmax_s(scale q_q,h . k_s ; sink_h) k_s over every row s of every key set,
    one softmax (the sink a zero-valued virtual key).  q [B, Q, H, D], sink [H].

    Returns (o [B, Q, H, D] in the rows' dtype, probs [B, H, Q, K_1 + ... + K_n + 1] fp32, the
    sink's column last).  A query that sees no row gets o = 0."""
    B, Q, H, _ = q.shape
    logits = []
    for ks in key_sets:
        s = torch.einsum("bqhd,bqkd->bhqk" if ks.per_query else "bqhd,bkd->bhqk", f32(q), f32(ks.kv)) * scale
        logits.append(s.masked_fill(~ks.visible[:, None], NEG_INF))
    probs = torch.cat([*logits, f32(sink)[None, :, None, None].expand(B, H, Q, 1)], dim=-1).softmax(dim=-1)
    o, k0 = None, 0
    for ks, s in zip(key_sets, logits):
        p = probs[..., k0 : k0 + s.shape[-1]].to(ks.kv.dtype)
        term = torch.einsum("bhqk,bqkd->bqhd" if ks.per_query else "bhqk,bkd->bqhd", p, ks.kv)
        o, k0 = term if o is None else o + term, k0 + s.shape[-1]
    return o, probs


def window_keys(win_kv, win_start: int, q0: int, q1: int, window: int) -> Keys:
    """The band of ``win_kv`` (raw entries at positions win_start, win_start+1, ...) that queries
    at positions q0 .. q1-1 see: p - window < t <= p."""
    lo, hi = max(q0 - window + 1 - win_start, 0), q1 - win_start
    kpos = torch.arange(win_start + lo, win_start + hi, device=win_kv.device)
    qpos = torch.arange(q0, q1, device=win_kv.device)[:, None]
    return Keys(win_kv[:, lo:hi], ((kpos <= qpos) & (kpos > qpos - window))[None])


def complete_keys(comp, q0: int, q1: int, ratio: int) -> Keys:
    """Every compressed entry j complete for queries at q0 .. q1-1: (j+1)*ratio <= p+1 (HCA)."""
    n = min(comp.shape[1], q1 // ratio)  # entries any query of the block may see
    j = torch.arange(n, device=comp.device)
    qpos = torch.arange(q0, q1, device=comp.device)[:, None]
    return Keys(comp[:, :n], ((j + 1) * ratio <= qpos + 1)[None])


def picked_keys(comp, sel) -> Keys:
    """The entries ``sel`` [B, Q, k] (-1 = none) of ``comp`` [B, N, D], one set per query (CSA)."""
    B, Q, k = sel.shape
    rows = torch.gather(comp, 1, sel.clamp(min=0).reshape(B, Q * k, 1).expand(-1, -1, comp.shape[-1]))
    return Keys(rearrange(rows, "b (q k) d -> b q k d", q=Q), sel >= 0, per_query=True)


def attention(q, q_start: int, win_kv, win_start: int, window: int, comp, ratio: int, sel, sink, scale: float,
              *, query_block: int = 256, observe=None):
    """A layer's attention for queries q [B, S, H, D] at positions q_start .. q_start+S-1.

    win_kv [B, Nw, D]: raw entries at positions win_start .. (those the queries' windows need);
    comp [B, N, D] compressed entries (None: window-only) of rate ``ratio``; sel [B, S, k] CSA picks
    into comp (-1 = none), or None: every complete entry (HCA).  Returns o [B, S, H, D].
    ``observe(b0, b1, probs, n_window)`` sees each query block's probabilities (training signal,
    recording)."""
    outs = []
    for b0 in range(0, q.shape[1], query_block):
        b1 = min(q.shape[1], b0 + query_block)
        q0, q1 = q_start + b0, q_start + b1
        sets = [window_keys(win_kv, win_start, q0, q1, window)]
        if comp is not None:
            sets.append(complete_keys(comp, q0, q1, ratio) if sel is None else picked_keys(comp, sel[:, b0:b1]))
        o, probs = attend(q[:, b0:b1], sets, sink, scale)
        if observe is not None:
            observe(b0, b1, probs, sets[0].kv.shape[1])
        outs.append(o)
    return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


def _entries(store, first: int, new: torch.Tensor) -> torch.Tensor:
    """All entries of ``store`` after ``new`` (entries first..) was appended to it, [B, N, dim].

    A store in the model's own format and dtype is read in place (a view of its buffer: no copy
    of anything that grows with the context); ``new`` itself is used where it carries gradients
    or nothing came before it.  Other formats (deployed FP8/FP4, another dtype) decode the old
    entries and put this chunk's unrounded ones after them, as before."""
    if first == 0:
        return new
    if new.requires_grad or store.fmt != "native" or store.dtype != new.dtype:
        return torch.cat([store.get(0, first).to(new.dtype), new], dim=1)
    return store.get(0, first + new.shape[1])


# ----------------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, cfg: V4Config, ratio: int, dtype=None, kind: str | None = None):
        """One layer of compression rate ``ratio``; ``kind`` ('window' / 'csa' / 'hca') where the
        rate does not say it (``cfg.layer_kind(i)``; by default 0 = window, 4 = CSA, other = HCA)."""
        super().__init__()
        d, H, D = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
        kind = kind or cfg.kind_of_ratio(ratio)
        if (kind == "window") != (ratio == 0) or kind not in ("window", "csa", "hca"):
            raise ValueError(f"Attention: kind {kind!r} does not fit ratio {ratio} (0 = window-only, >= 1 = CSA or HCA)")
        self.cfg, self.ratio, self.kind = cfg, ratio, kind
        csa = self.kind == "csa"
        self.n_heads, self.head_dim, self.window = H, D, cfg.sliding_window
        self.rope_dim, self.groups, self.eps = cfg.qk_rope_head_dim, cfg.o_groups, cfg.rms_norm_eps
        self.wq_a = nn.Linear(d, cfg.q_lora_rank, bias=False, dtype=dtype)
        self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps, dtype=dtype)
        self.wq_b = nn.Linear(cfg.q_lora_rank, H * D, bias=False, dtype=dtype)
        self.wkv = nn.Linear(d, D, bias=False, dtype=dtype)
        self.kv_norm = RMSNorm(D, cfg.rms_norm_eps, dtype=dtype)
        self.wo_a = nn.Linear(H * D // cfg.o_groups, cfg.o_groups * cfg.o_lora_rank, bias=False, dtype=dtype)
        self.wo_b = nn.Linear(cfg.o_groups * cfg.o_lora_rank, d, bias=False, dtype=dtype)
        self.attn_sink = nn.Parameter(torch.zeros(H, dtype=torch.float32))
        self.compressor = Compressor(d, D, ratio, cfg.rms_norm_eps, dtype=dtype, overlap=csa) if ratio else None
        self.indexer = Indexer(cfg, ratio, dtype=dtype) if csa else None
        self.rope = Rope(cfg, compressed=bool(ratio))
        self.qat = True
        self.backend = "torch"  # set by V4Model.set_backend; the ops are v4lab.kernels.backend(it)

    def new_cache(self, batch: int = 1):
        """An empty ``LayerCache`` for this layer on its own (its rate, kind, dtype and device)."""
        from .cache import LayerCache

        p = self.wkv.weight
        return LayerCache(self.cfg, self.ratio, batch, p.dtype, p.device, kind=self.kind)

    # ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, start_pos: int, lc, ctx: ForwardContext, layer_id: int = 0) -> torch.Tensor:
        pos = torch.arange(start_pos, start_pos + x.shape[1], device=x.device)
        cq = self.q_norm(self.wq_a(x))  # query latent [B, S, q_lora]
        q = rearrange(self.wq_b(cq), "b s (h d) -> b s h d", h=self.n_heads)
        q = self.rope.rotate(rms0(q, self.eps), pos)  # per-head RMS (no weight), RoPE
        kv = self.rope.rotate(self.kv_norm(self.wkv(x)), pos)  # [B, S, D], key and value
        if self.qat:
            kv = fp8_nope(kv, self.rope_dim)
        win_kv, win_start = self._window(lc, kv, start_pos)
        comp = self._compressed(lc, x, start_pos) if self.ratio else None
        sel = observe = None
        ops = self._ops(ctx, x)  # the torch references, or the Triton kernels
        if self.indexer is not None:
            qI, wI, keys = self._indexer_inputs(lc, x, cq, start_pos, pos, ctx)
            sel = None if ctx.dense_csa else self._select(ops, qI, wI, keys, pos, ctx)
            observe = self._observer(ctx, layer_id, start_pos, pos, sel, qI, wI, keys)
        elif ctx.record:
            observe = self._observer(ctx, layer_id, start_pos, pos, None)
        o = ops.attention(q, start_pos, win_kv, win_start, self.window, comp, self.ratio, sel,
                          self.attn_sink, self.head_dim**-0.5, query_block=ctx.query_block, observe=observe)
        return self._output(o, pos, x)

    def _output(self, o, pos, x):
        """Inverse RoPE and the grouped output projection."""
        o = rearrange(self.rope.rotate(o.to(x.dtype), pos, inverse=True), "b s (g h) d -> b s g (h d)", g=self.groups)
        wo_a = rearrange(deployed_weight(self.wo_a).to(o.dtype), "(g r) i -> g r i", g=self.groups)
        u = torch.einsum("bsgi,gri->bsgr", o, wo_a).flatten(2)  # [B, S, g * o_lora]
        return self.wo_b(u)

    # --- cache bookkeeping ----------------------------------------------------------------------
    def _window(self, lc, kv, start_pos: int):
        """Window keys for this chunk: up to window-1 earlier entries from the ring, then the
        chunk's own; the ring keeps the last ``window``.  Returns (win_kv, position of its first)."""
        S, w = kv.shape[1], self.window
        n_prev = min(start_pos, w - 1)
        prev = torch.arange(start_pos - n_prev, start_pos, device=kv.device)
        win_kv = torch.cat([lc.ring.gather(prev % w).to(kv.dtype), kv], dim=1)  # [B, n_prev + S, D]
        keep = min(S, w)
        lc.ring.write(torch.arange(start_pos + S - keep, start_pos + S, device=kv.device) % w, kv[:, S - keep :])
        return win_kv, start_pos - n_prev

    def _compressed(self, lc, x, start_pos: int):
        """This chunk's completed entries appended to the pool; returns every entry so far."""
        new, first = self.compressor(x, start_pos, lc.comp, self.rope)
        if self.qat and new.shape[1]:
            new = fp8_nope(new, self.rope_dim)
        lc.pool.truncate(first)
        lc.pool.append(new)
        return _entries(lc.pool, first, new)  # [B, Nc, D]

    def _indexer_inputs(self, lc, x, cq, start_pos: int, pos, ctx):
        """The indexer's queries, weights and its keys so far (its gradient stops at its inputs when
        it is trained by its own loss)."""
        xi, cqi = (x.detach(), cq.detach()) if ctx.indexer_loss else (x, cq)
        knew, kfirst = self.indexer.new_keys(xi, start_pos, lc.idx_comp, self.rope)
        lc.idx_pool.truncate(kfirst)
        lc.idx_pool.append(knew)
        qI, wI = self.indexer.queries(xi, cqi, pos, self.rope)
        return qI, wI, _entries(lc.idx_pool, kfirst, knew)  # keys [B, Nc, c_I]

    def _select(self, ops, qI, wI, keys, pos, ctx):
        """The indexer's top-k per query [B, S, k] (-1 = none), on this layer's backend."""
        if self.indexer.ties == "torch":  # transformers' tie order (numerics="hf")
            return self.indexer.select(qI, wI, keys, pos, rows=ctx.query_block)
        return ops.indexer_topk(qI, wI, keys, pos, self.ratio, self.indexer.topk, chunk_size=ctx.query_block)

    def _ops(self, ctx, x):
        """The ops of this layer's backend; the torch references where probabilities or gradients
        are needed (the Triton kernels have neither)."""
        from . import kernels

        if self.backend == "triton" and not (ctx.observing or (torch.is_grad_enabled() and (
                x.requires_grad or any(p.requires_grad for p in self.parameters())))):
            return kernels.backend("triton")
        return kernels.reference

    # --- what a forward pass can observe: the indexer's training signal, records for plots -----
    def _observer(self, ctx, layer_id, start_pos, pos, sel, qI=None, wI=None, keys=None):
        if not (ctx.indexer_loss or ctx.record):
            return None

        def observe(b0, b1, probs, n_win):
            s = None if sel is None else sel[:, b0:b1]
            if ctx.indexer_loss:
                n_vis = min(keys.shape[1], (start_pos + b1) // self.ratio)
                iscore = self.indexer.scores(qI[:, b0:b1], wI[:, b0:b1], keys[:, :n_vis], pos[b0:b1], self.ratio)
                ctx.losses.append(self._indexer_kl(probs[..., n_win:-1], iscore, s))
            if ctx.record:
                self._record(ctx, layer_id, probs, n_win, s, pos[b0:b1])

        return observe

    @staticmethod
    def _indexer_kl(p_c, iscore, sel):
        """KL(main attention over compressed entries || indexer distribution) for one query block.
        p_c [B, H, Q, K] (detached target, summed over heads), iscore [B, Q, N] indexer scores;
        with ``sel`` the distribution is over the selected entries, else over all of them."""
        target = p_c.detach().sum(1)  # [B, Q, K]
        logits = iscore if sel is None else torch.gather(iscore, -1, sel.clamp(min=0)).masked_fill(sel < 0, NEG_INF)
        has = torch.isfinite(logits).any(-1)  # queries with at least one entry
        if not has.any():
            return iscore.sum() * 0.0
        target = target[has]
        target = target / target.sum(-1, keepdim=True).clamp(min=1e-12)
        logq = torch.log_softmax(logits[has], dim=-1)
        kl = (target * (torch.log(target.clamp(min=1e-12)) - logq.clamp(min=-1e4))).sum(-1)
        return kl.mean()

    def _record(self, ctx, layer_id, probs, n_win, sel, pb):
        rec = ctx.records.setdefault(layer_id, {"kind": self.kind, "ratio": self.ratio, "mass": [], "sel": [], "pos": []})
        mass_w = probs[..., :n_win].sum(-1)
        mass_s = probs[..., -1]
        mass_c = 1 - mass_w - mass_s
        rec["mass"].append(torch.stack([mass_w, mass_c, mass_s], -1).mean(1).detach())  # [B, Q, 3] head-averaged
        rec["pos"].append(pb.detach())
        if sel is not None:
            rec["sel"].append(sel.detach())
        if pb.numel() == 1 and probs.shape[-1] > n_win + 1:  # a decode step: keep the mass per entry
            p_c = probs[..., n_win:-1].mean(1).detach()  # [B, 1, K] head-averaged
            idx = sel if sel is not None else torch.arange(p_c.shape[-1], device=p_c.device).expand_as(p_c)
            rec.setdefault("entry_mass", []).append((idx.detach(), p_c))
