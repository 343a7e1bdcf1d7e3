"""Decoding state of a V4 model (spec 7.1), one ``LayerCache`` per layer.

| layer  | what it keeps                                                                        |
|--------|--------------------------------------------------------------------------------------|
| all    | window ring: the last ``sliding_window`` raw KV entries (slot = position mod window)  |
| HCA    | compressor state 2 x [B, m, c] fp32 + the compressed entries so far                  |
| CSA    | compressor state 2 x [B, 8, 2c] fp32 + compressed entries, and for the Lightning      |
|        | Indexer its own compressor state 2 x [B, 8, 2c_I] fp32 + its compressed keys          |
| window | only the ring                                                                         |

Entries can be stored in the model's dtype (``storage=None``), in bf16/fp16/fp32, or in the
deployed formats of the paper (``storage="deployed"``): FP8 e4m3 nope dims with one ue8m0 scale
byte per 64 channels + BF16 RoPE dims, padded to 8 bytes (584 B per 512-d entry), and indexer
keys in FP4 (e2m1 + one scale per 32: 68 B per 128-d key) or FP8 (+ fp32 scale: 132 B).
``nbytes()`` counts the bytes the cache holds, by layer and component.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import V4Config
from .norm import f32
from .quant import (fp8_block_decode, fp8_block_encode, fp8_e4m3_encode, ue8m0_bytes, ue8m0_exponent,
                    ue8m0_from_exponent)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
DEPLOYED_SCALE_BLOCK = 64
"""Nope channels per ue8m0 scale byte of a deployed KV entry (the QAT round trip's block)."""


# ------------------------------------------------------------------------------------------------
# the byte layout of one stored entry (v4lab.costs counts the same layout)
# ------------------------------------------------------------------------------------------------
INDEXER_STORAGE = ("fp4", "fp8")
"""Storage formats of deployed indexer keys."""


def entry_layout(fmt: str, dim: int, rope_dim: int = 0,
                 dtype: torch.dtype = torch.float32) -> dict[str, tuple[int, torch.dtype]]:
    """The components of one stored entry of ``dim`` values, name -> (width, dtype):

    * ``"native"``: the ``dim`` values in ``dtype``;
    * ``"deployed"`` (a KV entry, spec 7.2): the ``dim - rope_dim`` nope dims in FP8 e4m3, the
      rope dims in BF16 and one ue8m0 scale byte per 64 nope channels, padded to a multiple of
      8 bytes (the padding is counted with the scale bytes): 448 + 128 + 7 + 1 = 584 B at 512 / 64;
    * ``"fp8"`` (an indexer key): ``dim`` e4m3 values and one fp32 scale: 132 B at 128;
    * ``"fp4"`` (an indexer key): packed e2m1, two per byte, and one ue8m0 byte per 32: 68 B at 128."""
    if fmt == "native":
        return {"x": (dim, dtype)}
    if fmt == "deployed":
        nope = dim - rope_dim
        raw = nope + 2 * rope_dim + math.ceil(nope / DEPLOYED_SCALE_BLOCK)
        total = -(-raw // 8) * 8
        return {"nope": (nope, torch.float8_e4m3fn), "rope": (rope_dim, torch.bfloat16),
                "scale": (total - nope - 2 * rope_dim, torch.uint8)}
    if fmt == "fp8":
        return {"q": (dim, torch.float8_e4m3fn), "scale": (1, torch.float32)}
    if fmt == "fp4":
        return {"q": (math.ceil(dim / 2), torch.uint8), "scale": (math.ceil(dim / 32), torch.uint8)}
    raise ValueError(f"unknown entry storage format {fmt!r}")


def entry_bytes(fmt: str, dim: int, rope_dim: int = 0, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one stored entry (:func:`entry_layout`)."""
    return sum(w * dt.itemsize for w, dt in entry_layout(fmt, dim, rope_dim, dtype).values())


def deployed_entry_bytes(head_dim: int, rope_dim: int) -> int:
    """FP8 nope dims + BF16 rope dims + one ue8m0 byte per 64 nope channels, padded to 8 bytes."""
    return entry_bytes("deployed", head_dim, rope_dim)


def deployed_indexer_bytes(index_head_dim: int, indexer_storage: str) -> int:
    """MXFP4 key: c_I/2 bytes + one ue8m0 byte per 32 channels; FP8 key: c_I bytes + fp32 scale."""
    if indexer_storage not in INDEXER_STORAGE:
        raise ValueError(f"unknown indexer_storage {indexer_storage!r}; choose one of {list(INDEXER_STORAGE)}")
    return entry_bytes(indexer_storage, index_head_dim)


class EntryStore:
    """A growing list of [B, N, dim] entries in one storage format (capacity doubles; ``nbytes``
    counts the entries held, ``allocated_bytes`` the buffers)."""

    def __init__(self, batch: int, dim: int, fmt: str, dtype: torch.dtype, device, rope_dim: int = 0, capacity: int = 0):
        self.B, self.dim, self.fmt, self.dtype, self.device, self.rope_dim = batch, dim, fmt, dtype, device, rope_dim
        self.n = 0
        self._bufs: dict[str, torch.Tensor] = {}
        self._alloc(max(capacity, 0))

    # per-format component layout: name -> (width, dtype)
    def _layout(self):
        return entry_layout(self.fmt, self.dim, self.rope_dim, self.dtype)

    def _alloc(self, cap: int):
        new = {}
        for name, (w, dt) in self._layout().items():
            t = torch.zeros(self.B, cap, w, dtype=dt, device=self.device)
            if name in self._bufs and self.n:
                t[:, : self.n] = self._bufs[name][:, : self.n]
            new[name] = t
        self._bufs, self.cap = new, cap

    def __len__(self):
        return self.n

    def encode(self, x: torch.Tensor) -> dict:
        if self.fmt == "native":
            return {"x": x.to(self.dtype)}
        if self.fmt == "deployed":
            r = self.rope_dim
            q, e = fp8_block_encode(f32(x[..., : self.dim - r]), DEPLOYED_SCALE_BLOCK, eps=1e-4)
            scale = torch.zeros(*x.shape[:-1], self._layout()["scale"][0], dtype=torch.uint8, device=x.device)
            scale[..., : e.shape[-1]] = ue8m0_bytes(ue8m0_from_exponent(e))
            return {"nope": q, "rope": x[..., self.dim - r :].to(torch.bfloat16), "scale": scale}
        if self.fmt == "fp8":
            amax = x.float().abs().amax(-1, keepdim=True).clamp(min=1e-4)
            scale = amax / 448.0
            return {"q": fp8_e4m3_encode(x.float() / scale), "scale": scale}
        if self.fmt == "fp4":
            from .quant import quant_fp4

            lead = x.shape[:-1]
            packed, scale = quant_fp4(x.float().reshape(-1, self.dim), block=min(32, self.dim))
            return {"q": packed.view(torch.uint8).reshape(*lead, -1), "scale": scale.view(torch.uint8).reshape(*lead, -1)}
        raise ValueError(self.fmt)

    def decode(self, parts: dict) -> torch.Tensor:
        if self.fmt == "native":
            return parts["x"]
        if self.fmt == "deployed":
            nb = math.ceil((self.dim - self.rope_dim) / DEPLOYED_SCALE_BLOCK)
            nope = fp8_block_decode(parts["nope"], ue8m0_exponent(parts["scale"][..., :nb]), DEPLOYED_SCALE_BLOCK)
            return torch.cat([nope, parts["rope"].float()], dim=-1).to(self.dtype)
        if self.fmt == "fp8":
            return (parts["q"].float() * parts["scale"]).to(self.dtype)
        if self.fmt == "fp4":
            from .quant import dequant_fp4_experts

            lead = parts["q"].shape[:-1]
            out = dequant_fp4_experts(parts["q"].reshape(-1, parts["q"].shape[-1]).view(torch.int8),
                                      parts["scale"].reshape(-1, parts["scale"].shape[-1]), block=min(32, self.dim))
            return out.reshape(*lead, self.dim).to(self.dtype)
        raise ValueError(self.fmt)

    def append(self, x: torch.Tensor) -> None:
        """x [B, k, dim]."""
        k = x.shape[1]
        if k == 0:
            return
        if self.n + k > self.cap:
            self._alloc(max(2 * self.cap, self.n + k, 16))
        for name, t in self.encode(x.detach()).items():
            self._bufs[name][:, self.n : self.n + k] = t
        self.n += k

    def write(self, slots: torch.Tensor, x: torch.Tensor) -> None:
        """Overwrite entries at ``slots`` (ring use)."""
        for name, t in self.encode(x.detach()).items():
            self._bufs[name][:, slots] = t

    def get(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        stop = self.n if stop is None else stop
        return self.decode({k: v[:, start:stop] for k, v in self._bufs.items()})

    def gather(self, slots: torch.Tensor) -> torch.Tensor:
        return self.decode({k: v[:, slots] for k, v in self._bufs.items()})

    def truncate(self, n: int) -> None:
        self.n = min(self.n, n)

    def entry_bytes(self) -> int:
        return entry_bytes(self.fmt, self.dim, self.rope_dim, self.dtype)

    def nbytes(self) -> int:
        return self.B * self.n * self.entry_bytes()

    def allocated_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._bufs.values())


@dataclass
class CompressorState:
    kv_state: torch.Tensor  # fp32, see compressor.py
    score_state: torch.Tensor

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.kv_state, self.score_state))

    def snapshot(self):
        return (self.kv_state.clone(), self.score_state.clone())

    def restore(self, snap):
        self.kv_state.copy_(snap[0])
        self.score_state.copy_(snap[1])


class LayerCache:
    """State of one attention layer.  The ring holds ``window`` slots (all allocated up front)."""

    def __init__(self, cfg: V4Config, ratio: int, batch: int = 1, dtype=torch.float32, device="cpu",
                 storage: str = "native", indexer_storage: str = "fp4", kind: str | None = None):
        """An empty state for one layer of rate ``ratio`` (e.g. ``LayerCache(cfg, 4)`` for a CSA
        layer on its own, as the notebooks build one; a model's layers get theirs from
        ``model.new_cache()``, a lone ``Attention`` from ``attn.new_cache()``)."""
        # kind: the layer's type where its rate does not say it (cfg.layer_kind); default: 4 = CSA
        self.kind = kind or cfg.kind_of_ratio(ratio)
        self.ratio, self.window = ratio, cfg.sliding_window
        D, r, cI = cfg.head_dim, cfg.qk_rope_head_dim, cfg.index_head_dim
        fmt = "deployed" if storage == "deployed" else "native"
        self.ring = EntryStore(batch, D, fmt, dtype, device, r, capacity=self.window)
        self.ring.n = self.window  # slots exist from the start; validity comes from the position
        self.comp = self.pool = self.idx_comp = self.idx_pool = None
        sdt = torch.float64 if dtype == torch.float64 else torch.float32  # compressor state: fp32 (fp64 in fp64 runs)
        if ratio:
            rows, coff = (2 * ratio, 2) if self.kind == "csa" else (ratio, 1)  # CSA blocks overlap
            z = lambda w: torch.zeros(batch, rows, coff * w, dtype=sdt, device=device)  # noqa: E731
            self.comp = CompressorState(z(D), z(D))
            self.pool = EntryStore(batch, D, fmt, dtype, device, r)
        if self.kind == "csa":  # the indexer's own overlapping compressor, same rate
            self.idx_comp = CompressorState(
                torch.zeros(batch, 2 * ratio, 2 * cI, dtype=sdt, device=device),
                torch.zeros(batch, 2 * ratio, 2 * cI, dtype=sdt, device=device),
            )
            self.idx_pool = EntryStore(batch, cI, indexer_storage if storage == "deployed" else "native", dtype, device, 0)

    def nbytes(self) -> dict:
        out = {"window": self.ring.nbytes(), "compressed": 0, "indexer": 0, "state": 0}
        if self.pool is not None:
            out["compressed"] = self.pool.nbytes()
            out["state"] += self.comp.nbytes()
        if self.idx_pool is not None:
            out["indexer"] = self.idx_pool.nbytes()
            out["state"] += self.idx_comp.nbytes()
        out["total"] = sum(out.values())
        return out


class CacheError(RuntimeError):
    pass


class V4Cache:
    """All layers' state plus the position reached.  Make one with ``model.new_cache()``."""

    def __init__(self, cfg: V4Config, batch_size: int, dtype, device, storage=None, indexer_storage="fp4", owner=None):
        if storage not in (None, "deployed", *_DTYPES):
            raise ValueError(f"storage must be None (model dtype), 'deployed' or one of {sorted(_DTYPES)}; got {storage!r}")
        deployed_indexer_bytes(cfg.index_head_dim, indexer_storage)  # validates the name
        self.cfg, self.batch_size, self.storage, self.indexer_storage = cfg, batch_size, storage, indexer_storage
        self.dtype = _DTYPES.get(storage, dtype) if storage != "deployed" else dtype
        self.device = torch.device(device)
        self.owner = owner  # id of the model this cache belongs to
        self.pos = 0
        self.broken: str | None = None
        self.layers = [
            LayerCache(cfg, cfg.compress_ratios[i], batch_size, self.dtype, device, storage or "native",
                       indexer_storage, kind=cfg.layer_kind(i))
            for i in range(cfg.num_hidden_layers)
        ]

    def check(self, model, batch: int, n_new: int) -> None:
        if self.broken:
            raise CacheError(f"this cache is unusable: {self.broken}; make a new one with model.new_cache()")
        if self.owner is not None and self.owner != model.fingerprint():
            raise CacheError("this cache was made for another model (config or weights object differ)")
        if batch != self.batch_size:
            raise CacheError(f"cache batch size is {self.batch_size} but input_ids has batch {batch}")

    def nbytes(self, by_layer: bool = False):
        """Total bytes held; with by_layer=True a list of per-layer dicts (window, compressed,
        indexer, state, total) plus a 'total' entry."""
        rows = []
        for i, lc in enumerate(self.layers):
            rows.append({"layer": i, "kind": lc.kind, **lc.nbytes()})
        total = sum(r["total"] for r in rows)
        if not by_layer:
            return total
        return {"layers": rows, "total": total,
                **{k: sum(r[k] for r in rows) for k in ("window", "compressed", "indexer", "state")}}

    def snapshot(self):
        """Everything needed to roll back: position, ring contents, compressor states, pool sizes."""
        snap = {"pos": self.pos, "layers": []}
        for lc in self.layers:
            s = {"ring": {k: v.clone() for k, v in lc.ring._bufs.items()}}
            if lc.comp is not None:
                s["comp"], s["pool"] = lc.comp.snapshot(), len(lc.pool)
            if lc.idx_comp is not None:
                s["idx_comp"], s["idx_pool"] = lc.idx_comp.snapshot(), len(lc.idx_pool)
            snap["layers"].append(s)
        return snap

    def restore(self, snap) -> None:
        self.pos = snap["pos"]
        for lc, s in zip(self.layers, snap["layers"]):
            for k, v in s["ring"].items():
                lc.ring._bufs[k].copy_(v)
            if lc.comp is not None:
                lc.comp.restore(s["comp"])
                lc.pool.truncate(s["pool"])
            if lc.idx_comp is not None:
                lc.idx_comp.restore(s["idx_comp"])
                lc.idx_pool.truncate(s["idx_pool"])
        self.broken = None
