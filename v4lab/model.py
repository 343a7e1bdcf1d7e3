"""The whole DeepSeek-V4 model: embeddings -> mHC streams -> blocks -> head (spec 2), plus MTP (6).

    e = embed[tokens]                       [B, S, d]
    H = [e, e, e, e]                        [B, S, n, d]   n = hc_mult residual streams
    for each block:
        x, post, comb = hc_pre(H);  H = hc_post(attention(attn_norm(x)), H, post, comb)
        x, post, comb = hc_pre(H);  H = hc_post(moe(ffn_norm(x)), H, post, comb)
    logits = head(norm(hc_head(H)))

Parameter names equal the official checkpoint names (spec 8.2), so ``state_dict()`` is the
checkpoint with every FP8/FP4 tensor dequantised.

``numerics`` (``"reference"``, ``"deployed"``, ``"hf"``): see :class:`V4Model`.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import Attention, ForwardContext
from .cache import CacheError, V4Cache
from .compressor import Compressor
from .config import V4Config
from .mhc import hc_collapse, hc_expand, hc_head, hc_params, hc_weights
from .moe import MoE
from .norm import RMSNorm, f32
from .quant import deployed_linear


def _deployed_forward(self, x):
    """forward of an FP8 / FP4 linear under numerics="deployed" (bound to the module)."""
    return deployed_linear(x, self)

NUMERICS = ("reference", "deployed", "hf")
BACKENDS = ("torch", "triton")
_DT = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


class Block(nn.Module):
    """mHC + attention + mHC + MoE.  Names: attn_norm, ffn_norm, hc_attn_*, hc_ffn_*, attn, ffn."""

    def __init__(self, cfg: V4Config, layer: int, ratio: int, hash_routing: bool, dtype=None):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        n = cfg.hc_mult
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)
        hc_params(self, "hc_attn", cfg, (2 + n) * n)
        hc_params(self, "hc_ffn", cfg, (2 + n) * n)
        self.attn = Attention(cfg, ratio, dtype=dtype, kind=cfg.layer_kind(layer))
        self.ffn = MoE(cfg, layer, hash_routing, dtype=dtype)

    def forward(self, H, token_ids, start_pos, lc, ctx):
        cfg = self.cfg
        pre, post, comb = hc_weights(H, self.hc_attn_fn, self.hc_attn_base, self.hc_attn_scale, cfg)
        a = self.attn(self.attn_norm(hc_collapse(H, pre)), start_pos, lc, ctx, self.layer)
        H = hc_expand(a, H, post, comb)
        pre, post, comb = hc_weights(H, self.hc_ffn_fn, self.hc_ffn_base, self.hc_ffn_scale, cfg)
        f = self.ffn(self.ffn_norm(hc_collapse(H, pre)), token_ids)
        return hc_expand(f, H, post, comb)


class MTPBlock(Block):
    """The multi-token-prediction block: a window-only, learned-routing block that reads the main
    model's final streams and the embedding of the next token, and predicts the token after it."""

    def __init__(self, cfg: V4Config, dtype=None):
        super().__init__(cfg, cfg.num_hidden_layers, cfg.mtp_ratio, hash_routing=False, dtype=dtype)
        d, n = cfg.hidden_size, cfg.hc_mult
        self.e_proj = nn.Linear(d, d, bias=False, dtype=dtype)
        self.h_proj = nn.Linear(d, d, bias=False, dtype=dtype)
        self.enorm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype)
        self.hnorm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype)
        self.norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype)
        hc_params(self, "hc_head", cfg, n)


class WeightHook:
    """Hook points of :class:`V4Model`'s own forward, for weights that are not resident.

    Set ``model.weight_hook`` to one (``None``, the default, costs one attribute check per
    forward pass).  :class:`v4lab.streaming.StreamedModel` is one: it runs the model's forward on
    a meta-device skeleton and materialises each part's weights just before that part runs.

    * ``device``: where the forward runs (``model.device`` reports it; the skeleton is on meta);
    * ``embed(model, ids)``: the embedding rows of ``ids`` [B, S] -> [B, S, d];
    * ``block(model, i, block)``: a context manager around the forward of main block ``i``;
    * ``head(model)``: a context manager around the final norm, mHC head and output head; it
      yields ``None`` when ``model.head.weight`` is resident, else an iterable of
      ``(r0, r1, rows)``: the head's vocabulary rows ``r0:r1``, each needed only while used.

    The defaults here do nothing beyond what the model does without a hook."""

    device: torch.device

    def embed(self, model: "V4Model", ids: torch.Tensor) -> torch.Tensor:
        return model.embed(ids)

    def block(self, model: "V4Model", index: int, block: Block):
        return contextlib.nullcontext()

    def head(self, model: "V4Model"):
        return contextlib.nullcontext()


class V4Model(nn.Module):
    """DeepSeek-V4 (any preset or config), with three arithmetic modes, ``numerics``:

    * ``"reference"`` (default; the arithmetic the shipped flash-mini was trained and evaluated
      with): the QAT arithmetic of DeepSeek's public inference code, ``inference/model.py`` of
      ``deepseek-ai/DeepSeek-V4-Flash`` in its current revision (the one that clamps the shared
      expert's SwiGLU too and rounds stored KV to FP8 in place; kernels as in ``kernel.py`` at
      commit 60d8d707): the nope dims of every stored KV entry (window and compressed) go through
      an FP8 e4m3 round trip with one power-of-two (ue8m0) scale per 64 channels; indexer queries
      and keys are Hadamard-rotated and go through an FP4 e2m1 round trip (one ue8m0 scale per 32);
      the routing weight scales the expert's hidden state before ``w2``; SwiGLU, router,
      compressor, RoPE, mHC mixing, attention scores and the head in fp32.  Linears run in the
      model dtype with the weights as they are (no FP8 activations).
    * ``"deployed"`` (bfloat16 models only): what that same code computes when deployed on the
      release checkpoints: everything of ``"reference"``, plus every FP8 / FP4 linear of the
      checkpoint format (``wq_a``, ``wq_b``, ``wkv``, ``wo_b``, indexer ``wq_b``, the experts'
      ``w1``/``w2``/``w3``, MTP ``e_proj``/``h_proj``) quantises its input to FP8 e4m3 (one ue8m0
      scale per 128 inputs, amax floored at 1e-4), multiplies with the weight's checkpoint-format
      values (FP8 128 x 128 blocks, routed experts FP4 1 x 32 when ``expert_dtype == "fp4"``;
      ``wo_a`` too, applied in bf16) in fp32 and rounds the result to bf16; the residual streams,
      attention probabilities (before P.V), ``weights_proj`` and the index scores are bf16.  Weights
      of a model loaded from an FP8 / FP4 checkpoint already are such values; other weights are
      rounded on the fly (cached), never changed in place.  The attention always runs on the torch
      path.  Known remaining differences from DeepSeek's kernels: the per-head query RMS is computed
      in fp32 (the deployed code squares and averages in bf16), probabilities are rounded to bf16
      after normalisation (the kernel rounds the unnormalised exponentials), fp32 sums run in a
      different order, equal index scores are broken by the lowest index, and widths that are not
      multiples of 128 (small lab configs) get a shorter last activation block.
    * ``"hf"``: what ``transformers`` 5.23 (``models/deepseek_v4/modeling_deepseek_v4.py``)
      computes: no QAT round trips, the routing weight after the down projection, SwiGLU in the
      model dtype, and the indexer's top-k taken as ``torch.topk`` takes it (so exactly equal
      index scores, common with few index heads, are broken as ``transformers`` breaks them; that
      choice depends on how many entries exist, so with such ties a cached run can differ from the
      full forward, as in ``transformers``; the Triton top-k keeps the lowest-index rule); for exact
      parity tests.  The other modes break equal
      index scores by the lowest entry index, which never depends on what follows.

    ``backend`` (``"torch"``, ``"triton"``, ``"auto"`` = Triton on a CUDA device): the Triton
    attention kernels have no backward, so whenever a gradient is needed (grad mode on and an input
    or a parameter of the layer requires grad) the attention runs on the torch path, with the same
    result; the kernels run under ``torch.no_grad()`` / ``inference_mode()`` or with frozen weights.

    ``weight_hook``: None, or a :class:`WeightHook` that supplies weights which are not resident
    (layer-by-layer streaming); the forward, its input checks and its head are the same either way.
    """

    weight_hook: WeightHook | None = None

    def __init__(self, config: V4Config, backend: str = "auto", numerics: str = "reference",
                 dtype: torch.dtype | str | None = torch.float32, device=None, init: bool = True, seed: int = 0):
        super().__init__()
        if not isinstance(config, V4Config):
            raise TypeError(f"V4Model needs a V4Config, got {type(config).__name__}")
        if isinstance(dtype, str):
            if dtype not in _DT:
                raise ValueError(f"dtype must be one of {sorted(_DT)}, got {dtype!r}")
            dtype = _DT[dtype]
        dtype = dtype or torch.float32
        self.config = cfg = config
        d, V = cfg.hidden_size, cfg.vocab_size
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.embed = nn.Embedding(V, d, dtype=dtype)
            self.layers = nn.ModuleList(
                Block(cfg, i, cfg.compress_ratios[i], cfg.is_hash_layer(i), dtype=dtype)
                for i in range(cfg.num_hidden_layers)
            )
            self.norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype)
            self.head = nn.Linear(d, V, bias=False, dtype=dtype)
            hc_params(self, "hc_head", cfg, cfg.hc_mult)
            self.mtp = nn.ModuleList([MTPBlock(cfg, dtype=dtype)] if cfg.num_nextn_predict_layers else [])
        if dtype == torch.float64:  # fully fp64 (for exact tests): the fp32 parameters too
            self.double()
        self.set_numerics(numerics)
        self.set_backend(backend)
        if init and (device is None or str(device) != "meta"):
            self.init_weights(seed)

    # ------------------------------------------------------------------ settings ---------------
    def set_numerics(self, numerics: str) -> "V4Model":
        if numerics not in NUMERICS:
            raise ValueError(f"numerics must be one of {NUMERICS}, got {numerics!r}")
        dep = numerics == "deployed"
        if dep and self.dtype != torch.bfloat16:
            raise ValueError(f"numerics='deployed' computes in bfloat16 like DeepSeek's deployed code; this model is "
                             f"{self.dtype}: build it with dtype=torch.bfloat16 (or load the checkpoint with dtype=torch.bfloat16)")
        ed = (self.config.expert_dtype or "").lower()
        if dep and ed == "fp4":
            d, inter = self.config.hidden_size, self.config.moe_intermediate_size
            if d % 32 or inter % 32:
                raise ValueError(f"numerics='deployed' with FP4 experts needs hidden_size ({d}) and "
                                 f"moe_intermediate_size ({inter}) to be multiples of 32 (one FP4 scale per 32)")
        self.numerics = numerics
        ref = numerics != "hf"
        for mod in self.modules():
            if isinstance(mod, Attention):
                mod.qat = ref
                if mod.indexer is not None:
                    mod.indexer.qat = ref
                    mod.indexer.ties = "lowest" if ref else "torch"
                    mod.indexer.bf16_scores = dep
            if isinstance(mod, MoE):
                mod.weight_before_w2 = ref
                for e in [*mod.experts, *([mod.shared_experts] if mod.shared_experts is not None else [])]:
                    e.fp32_swiglu = ref
        read_only = {id(b.attn.wo_a) for b in [*self.layers, *self.mtp]}  # used as a weight, never called
        for lin, fmt in self._checkpoint_linears():
            lin.__dict__.pop("_deployed_weight", None)
            if dep:
                lin.weight_format = fmt
                if id(lin) not in read_only:
                    lin.forward = _deployed_forward.__get__(lin)
            else:
                lin.__dict__.pop("weight_format", None)
                lin.__dict__.pop("forward", None)
        if hasattr(self, "backend"):
            self._apply_backend()
        return self

    def _checkpoint_linears(self):
        """(linear, "fp8" | "fp4") for every linear stored as FP8 / FP4 in the release checkpoints
        (spec 8.2): the attention's wq_a, wq_b, wkv, wo_a, wo_b, the indexer's wq_b, the experts,
        MTP e_proj / h_proj.  wo_a is only ever read as a weight (its forward is not called)."""
        routed = "fp4" if (self.config.expert_dtype or "").lower() == "fp4" else "fp8"
        for blk in [*self.layers, *self.mtp]:
            a = blk.attn
            for lin in (a.wq_a, a.wq_b, a.wkv, a.wo_a, a.wo_b):
                yield lin, "fp8"
            if a.indexer is not None:
                yield a.indexer.wq_b, "fp8"
            for e in blk.ffn.experts:
                for lin in (e.w1, e.w2, e.w3):
                    yield lin, routed
            if blk.ffn.shared_experts is not None:
                e = blk.ffn.shared_experts
                for lin in (e.w1, e.w2, e.w3):
                    yield lin, "fp8"
            if isinstance(blk, MTPBlock):
                yield blk.e_proj, "fp8"
                yield blk.h_proj, "fp8"

    def set_backend(self, backend: str) -> "V4Model":
        """'torch' (readable PyTorch: the references of v4lab.kernels), 'triton' (its kernels), or
        'auto' (``v4lab.kernels.resolve``: ``V4LAB_KERNELS`` if set, else Triton on a CUDA device,
        PyTorch elsewhere).  Where a gradient is needed the attention
        uses the torch path (the kernels have no backward)."""
        from . import kernels

        if backend not in (*BACKENDS, "auto"):
            raise ValueError(f"backend must be one of {BACKENDS} or 'auto', got {backend!r}")
        backend = kernels.resolve(backend, self.device)  # the one switch (V4LAB_KERNELS included)
        if backend == "triton":
            if not kernels.triton_available():
                raise RuntimeError("backend='triton' needs a CUDA GPU (or TRITON_INTERPRET=1 for CPU testing)")
        self.backend = backend
        self._apply_backend()
        return self

    def _apply_backend(self):
        # deployed numerics round index scores and probabilities as DeepSeek's code does, which
        # only the torch path implements
        use = "torch" if self.numerics == "deployed" else self.backend
        for mod in self.modules():
            if isinstance(mod, (Attention, Compressor)):
                mod.backend = use

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        hook = self.weight_hook
        return self.embed.weight.device if hook is None else hook.device

    def fingerprint(self):
        return (id(self), self.config.schedule_string(), self.config.hidden_size)

    # ------------------------------------------------------------------ init -------------------
    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """A trainable start: small normal linears, unit norms, mHC close to plain residual
        streams (comb near identity, pre = 1/n), zero sinks, distinct hash experts per token."""
        g = torch.Generator().manual_seed(seed)
        cfg = self.config
        n = cfg.hc_mult
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif leaf.endswith("_fn"):
                p.copy_(torch.randn(p.shape, generator=g) * 1e-3)
            elif leaf.endswith("_base"):
                if p.numel() == (2 + n) * n:
                    base = torch.zeros((2 + n) * n)
                    base[:n] = -torch.log(torch.tensor(float(n - 1)))  # sigmoid -> 1/n: x = mean of streams
                    base[2 * n :] = (torch.eye(n) * 4.0).flatten()  # comb close to identity
                    p.copy_(base)
                else:
                    p.fill_(-float(torch.log(torch.tensor(float(max(n - 1, 1))))))
            elif leaf.endswith("_scale"):
                p.fill_(1.0)
            elif leaf in ("attn_sink", "ape", "bias"):
                p.zero_()
            elif p.dim() >= 2:
                std = 0.02 if "embed" in name else p.shape[-1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
        for name, b in self.named_buffers():
            if name.endswith("tid2eid"):
                E, k = cfg.n_routed_experts, cfg.num_experts_per_tok
                b.copy_(torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(b.shape[0])]))

    # ------------------------------------------------------------------ cache ------------------
    def new_cache(self, batch_size: int = 1, storage: str | None = None, indexer_storage: str = "fp4") -> V4Cache:
        """An empty decoding state.  ``storage``: None (model dtype), 'bf16'/'fp16'/'fp32', or
        'deployed' (FP8 nope + BF16 RoPE entries, FP4/FP8 indexer keys)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return V4Cache(self.config, batch_size, self.dtype, self.device, storage, indexer_storage, owner=self.fingerprint())

    # ------------------------------------------------------------------ forward ----------------
    def _check_input(self, input_ids, attention_mask, start_pos):
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.device != self.device:
            raise ValueError(f"input_ids is on {input_ids.device} but the model is on {self.device}")
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids is empty: give at least one token")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}]")
        if attention_mask is not None and not bool(torch.all(attention_mask != 0)):
            raise ValueError("padding is not supported: V4's compressor blocks would count pad tokens "
                             "(attention_mask has zeros); run sequences of different lengths separately")
        end = start_pos + input_ids.shape[1]
        if end > self.config.max_position_embeddings:
            raise ValueError(f"positions {start_pos}..{end - 1} run past max_position_embeddings "
                             f"({self.config.max_position_embeddings})")
        return input_ids.long()

    def hidden_states(self, input_ids, cache: V4Cache | None = None, ctx: ForwardContext | None = None,
                      attention_mask=None) -> torch.Tensor:
        """Final residual streams H [B, S, n, d] (before the head collapse)."""
        start = cache.pos if cache is not None else 0
        ids = self._check_input(input_ids, attention_mask, start)
        B, S = ids.shape
        ctx = ctx or ForwardContext()
        if cache is None:
            cache = self.new_cache(B)
        else:
            cache.check(self, B, S)
        hook = self.weight_hook
        try:
            h = self.embed(ids) if hook is None else hook.embed(self, ids)  # [B, S, d]
            H = h[:, :, None, :].expand(B, S, self.config.hc_mult, h.shape[-1]).contiguous()  # [B, S, n, d]
            for i, (layer, lc) in enumerate(zip(self.layers, cache.layers)):
                if hook is None:
                    H = layer(H, ids, start, lc, ctx)
                else:
                    with hook.block(self, i, layer):
                        H = layer(H, ids, start, lc, ctx)
        except BaseException as e:  # a half-updated cache must not be reused silently
            cache.broken = f"a forward pass failed mid-chunk ({type(e).__name__}: {e})"
            raise
        cache.pos = start + S
        return H

    def logits_from_hidden(self, H: torch.Tensor) -> torch.Tensor:
        """fp32 logits [..., vocab] of final streams H [..., n, d] (fp64 in a float64 model)."""
        hook = self.weight_hook
        if hook is None:
            return self._logits(H, None)
        with hook.head(self) as rows:
            return self._logits(H, rows)

    def _logits(self, H: torch.Tensor, rows) -> torch.Tensor:
        """The head; ``rows``: None (the resident ``head.weight``) or ``(r0, r1, weight rows)`` chunks."""
        y = self.norm(hc_head(H, self.hc_head_fn, self.hc_head_base, self.hc_head_scale, self.config))
        if rows is None:
            return self._head_logits(y, self.head.weight)
        out = None
        for r0, r1, w in rows:
            part = self._head_logits(y, w)
            del w  # free these rows before the next ones are read
            if out is None:
                out = part.new_empty(*part.shape[:-1], self.config.vocab_size)
            out[..., r0:r1] = part
        return out

    def _head_logits(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.numerics != "hf":
            return F.linear(f32(y), f32(weight))  # fp32 head
        return f32(F.linear(y, weight))

    def forward(self, input_ids, cache: V4Cache | None = None, attention_mask=None,
                ctx: ForwardContext | None = None, return_hidden: bool = False):
        """Logits [B, S, vocab] (fp32) of this chunk; with a cache, positions continue from
        ``cache.pos`` and the cache is updated."""
        H = self.hidden_states(input_ids, cache, ctx, attention_mask)
        logits = self.logits_from_hidden(H)
        return (logits, H) if return_hidden else logits

    # ------------------------------------------------------------------ MTP --------------------
    def mtp_logits(self, H_prev: torch.Tensor, next_ids: torch.Tensor, start_pos: int = 0, lc=None,
                   ctx: ForwardContext | None = None) -> torch.Tensor:
        """MTP head: logits for token t+2 from the final streams at t and the token t+1.
        H_prev [B, S, n, d], next_ids [B, S] (token t+1 for position t)."""
        if not len(self.mtp):
            raise ValueError("this config has no MTP block (num_nextn_predict_layers = 0)")
        blk = self.mtp[0]
        cfg = self.config
        e = blk.enorm(self.embed(next_ids))  # [B, S, d]
        h = blk.hnorm(H_prev)  # each stream
        X = blk.e_proj(e)[:, :, None, :] + blk.h_proj(h)  # [B, S, n, d]
        if lc is None:
            from .cache import LayerCache

            lc = LayerCache(cfg, cfg.mtp_ratio, X.shape[0], self.dtype, self.device, "native", "fp4",
                            kind=cfg.layer_kind(cfg.num_hidden_layers))
        X = blk(X, next_ids, start_pos, lc, ctx or ForwardContext())
        y = blk.norm(hc_head(X, blk.hc_head_fn, blk.hc_head_base, blk.hc_head_scale, cfg))
        return F.linear(f32(y), f32(self.head.weight))


__all__ = ["V4Model", "WeightHook", "ForwardContext", "CacheError"]
