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

The computation runs over blocks of queries, so no [S, S] or [S, S/4] tensor is ever built: a
query block reads the window keys it needs (a band), and the compressed entries (all of them for
HCA, its top-k for CSA).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

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


def fp8_nope(x: torch.Tensor, rope_dim: int) -> torch.Tensor:
    """QAT of stored KV: FP8 e4m3 round trip of the nope dims (64-channel blocks), RoPE dims kept."""
    from .quant import fp8_roundtrip

    return torch.cat([fp8_roundtrip(x[..., :-rope_dim], block=64), x[..., -rope_dim:]], dim=-1)


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
        self.backend = "torch"

    def new_cache(self, batch: int = 1):
        """An empty ``LayerCache`` for this layer on its own (its rate, kind, dtype and device)."""
        from .cache import LayerCache

        p = self.wkv.weight
        return LayerCache(self.cfg, self.ratio, batch, p.dtype, p.device, kind=self.kind)

    # ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, start_pos: int, lc, ctx: ForwardContext, layer_id: int = 0) -> torch.Tensor:
        B, S, _ = x.shape
        H, D, w, m = self.n_heads, self.head_dim, self.window, self.ratio
        csa = self.indexer is not None
        pos = torch.arange(start_pos, start_pos + S, device=x.device)

        # --- query and the window KV of this chunk ------------------------------------------------
        cq = self.q_norm(self.wq_a(x))  # [B, S, q_lora]
        q = rms0(self.wq_b(cq).view(B, S, H, D), self.eps)  # per-head RMS, no weight
        q = self.rope.rotate(q, pos)  # [B, S, H, D]
        kv = self.rope.rotate(self.kv_norm(self.wkv(x)), pos)  # [B, S, D]
        if self.qat:
            kv = fp8_nope(kv, self.rope_dim)

        # window keys: up to w-1 earlier tokens from the ring, then this chunk
        n_prev = min(start_pos, w - 1)
        prev_pos = torch.arange(start_pos - n_prev, start_pos, device=x.device)
        win_kv = torch.cat([lc.ring.gather(prev_pos % w).to(kv.dtype), kv], dim=1)  # [B, n_prev + S, D]
        win_start = start_pos - n_prev
        keep = min(S, w)
        lc.ring.write(pos[S - keep :] % w, kv[:, S - keep :])

        # --- compressed entries (HCA / CSA) and the indexer's keys -------------------------------
        comp = keys = None
        if m:
            new, first = self.compressor(x, start_pos, lc.comp, self.rope)
            if self.qat and new.shape[1]:
                new = fp8_nope(new, self.rope_dim)
            lc.pool.truncate(first)
            lc.pool.append(new)
            comp = _entries(lc.pool, first, new)  # [B, Nc, D]
        qI = wI = None
        if csa:
            xi, cqi = (x.detach(), cq.detach()) if ctx.indexer_loss else (x, cq)
            knew, kfirst = self.indexer.new_keys(xi, start_pos, lc.idx_comp, self.rope)
            lc.idx_pool.truncate(kfirst)
            lc.idx_pool.append(knew)
            keys = _entries(lc.idx_pool, kfirst, knew)  # [B, Nc, c_I]
            qI, wI = self.indexer.queries(xi, cqi, pos, self.rope)

        scale = D**-0.5
        if self.backend == "triton" and not (ctx.dense_csa or ctx.indexer_loss or ctx.record or (
                torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())))):
            o = self._core_triton(q, pos, win_kv, win_start, comp, qI, wI, keys, scale)
            return self._output(o, pos, x)

        # --- core attention, one block of queries at a time --------------------------------------
        outs = []
        for b0 in range(0, S, ctx.query_block):
            b1 = min(S, b0 + ctx.query_block)
            qb, pb = q[:, b0:b1], pos[b0:b1]  # [B, Q, H, D], [Q]
            # window band: positions pb[0]-w+1 .. pb[-1]
            lo = max(start_pos + b0 - w + 1 - win_start, 0)  # pb[0] = start_pos + b0, no sync
            hi = start_pos + b1 - win_start
            kw = win_kv[:, lo:hi]  # [B, Kw, D]
            kpos = torch.arange(win_start + lo, win_start + hi, device=x.device)
            wmask = (kpos[None, :] <= pb[:, None]) & (kpos[None, :] > pb[:, None] - w)  # [Q, Kw]
            s_win = torch.einsum("bqhd,bkd->bhqk", f32(qb), f32(kw)) * scale
            s_win = s_win.masked_fill(~wmask, NEG_INF)
            parts = [s_win]
            kc = sel = None
            if m:
                n_vis = (start_pos + b1) // m  # entries any query of the block may see
                if csa and not ctx.dense_csa:
                    iscore = self.indexer.scores(qI[:, b0:b1], wI[:, b0:b1], keys[:, :n_vis], pb, m)  # [B, Q, n_vis]
                    sel = self.indexer.pick(iscore, comp.shape[1])  # [B, Q, k], -1 invalid
                    kc = torch.gather(comp, 1, sel.clamp(min=0).flatten(1)[..., None].expand(-1, -1, D))
                    kc = kc.view(B, b1 - b0, -1, D)  # [B, Q, k, D]
                    s_c = torch.einsum("bqhd,bqkd->bhqk", f32(qb), f32(kc)) * scale
                    s_c = s_c.masked_fill((sel < 0)[:, None], NEG_INF)
                else:  # dense over the complete entries
                    kc = comp[:, :n_vis]  # [B, Nc, D]
                    cmask = (torch.arange(n_vis, device=x.device)[None, :] + 1) * m <= pb[:, None] + 1
                    s_c = torch.einsum("bqhd,bkd->bhqk", f32(qb), f32(kc)) * scale
                    s_c = s_c.masked_fill(~cmask, NEG_INF)
                    if csa:
                        iscore = self.indexer.scores(qI[:, b0:b1], wI[:, b0:b1], keys[:, :n_vis], pb, m)
                parts.append(s_c)
            sink = f32(self.attn_sink)[None, :, None, None].expand(B, H, b1 - b0, 1)
            logits = torch.cat(parts + [sink], dim=-1)  # one softmax over window + compressed + sink
            probs = logits.softmax(dim=-1)
            p_win = probs[..., : s_win.shape[-1]].to(kv.dtype)
            o = torch.einsum("bhqk,bkd->bqhd", p_win, kw)
            if m:
                p_c = probs[..., s_win.shape[-1] : -1]
                if sel is not None:  # per-query picks [B, Q, k, D]
                    o = o + torch.einsum("bhqk,bqkd->bqhd", p_c.to(kc.dtype), kc)
                else:  # entries shared by the block [B, N, D]
                    o = o + torch.einsum("bhqk,bkd->bqhd", p_c.to(kc.dtype), kc)
                if csa and ctx.indexer_loss:
                    ctx.losses.append(self._indexer_kl(p_c, iscore, sel))
            if ctx.record:
                self._record(ctx, layer_id, probs, s_win.shape[-1], sel, pb)
            outs.append(o)
        o = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]  # [B, S, H, D]
        return self._output(o, pos, x)

    def _output(self, o, pos, x):
        """Inverse RoPE and the grouped output projection."""
        B, S, H, D = o.shape
        o = self.rope.rotate(o.to(x.dtype), pos, inverse=True)
        g = self.groups
        o = o.reshape(B, S, g, H * D // g)
        wo_a = deployed_weight(self.wo_a).to(o.dtype).view(g, -1, H * D // g)  # [g, o_lora, H*D/g]
        u = torch.einsum("bsgi,gri->bsgr", o, wo_a).flatten(2)  # [B, S, g*o_lora]
        return self.wo_b(u)

    # ------------------------------------------------------------------------------------------
    def _core_triton(self, q, pos, win_kv, win_start, comp, qI, wI, keys, scale):
        """The same attention through the Triton kernels of ``v4lab.kernels`` (index-based)."""
        from . import kernels as K

        B, S = q.shape[:2]
        w, m = self.window, self.ratio
        sink = self.attn_sink.float()
        if m and qI is None:  # HCA: dense over the compressed entries, no gather
            win_pos = torch.arange(win_start, win_start + win_kv.shape[1], device=q.device)
            return K.hca_attention(q, win_kv, win_pos, comp, pos, m, w, sink, scale)
        # window entries as indices into win_kv: positions t-w+1 .. t
        offs = torch.arange(-w + 1, 1, device=q.device)
        widx = pos[:, None] + offs[None, :] - win_start  # [S, w]
        widx = torch.where(pos[:, None] + offs[None, :] >= 0, widx, torch.full_like(widx, -1))
        idx = widx[None].expand(B, S, w)
        pool = win_kv
        if qI is not None and self.indexer.topk:  # CSA (index_topk = 0: the window and sink only)
            sel = K.indexer_topk(qI, wI, keys, pos, m, self.indexer.topk)  # [B, S, k], -1 invalid
            sel = torch.where(sel >= 0, sel + win_kv.shape[1], sel)
            idx = torch.cat([idx, sel], dim=-1)
            pool = torch.cat([win_kv, comp.to(win_kv.dtype)], dim=1)
        return K.sparse_attention(q, pool.contiguous(), idx.contiguous(), sink, scale)

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
