"""Running DeepSeek-V4 checkpoints that do not fit in memory.

Two ways:

* :class:`StreamedModel` -- one layer at a time.  The model is a skeleton on the meta device (no
  memory); the shards are memory-mapped.  A forward pass materialises the embedding rows of the
  input tokens, then for each layer its tensors (read from the maps, dequantised), runs it on
  the residual streams, frees it, and goes on; the routed experts are materialised only when
  the router picks them, one at a time; the head comes last, in row chunks if it does not fit.
  The logits are those of the in-memory model, bit for bit (same modules, same weights).
  ``max_memory_bytes`` caps the parameter bytes materialised at any moment (activations and the
  KV cache are not counted); ``peak_bytes`` reports what was reached.

* :func:`dispatch` -- placement across devices by ``accelerate`` (``infer_auto_device_map`` +
  ``dispatch_model``): whole blocks (``Block``/``MTPBlock`` are never split) go to GPUs, CPU
  RAM or a disk offload folder, and ``accelerate``'s hooks move each offloaded block in for its
  forward.  The result is the ordinary ``V4Model``, so ``generate`` and the cache work as usual.

:func:`layer_nbytes` gives the memory of one layer from the config alone (no allocation).
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from functools import partial

import torch
import torch.nn as nn

from .attention import ForwardContext
from .cache import V4Cache
from .checkpoint import (
    EXPERT_MODES,
    CheckpointReader,
    PackedFP4Linear,
    check_packable as _check_packable,
    layer_schema,
    model_skeleton,
)
from .config import V4Config
from .model import WeightHook

__all__ = ["StreamedModel", "dispatch", "layer_nbytes", "BLOCK_CLASSES"]

BLOCK_CLASSES = ("Block", "MTPBlock")
"""Module classes that are placed whole (their forward reads sub-module weights directly)."""


# ------------------------------------------------------------------------------------------------
# memory of one layer, from the config
# ------------------------------------------------------------------------------------------------
def layer_nbytes(cfg: V4Config, layer: int, experts: str = "dequantize",
                 dtype: torch.dtype = torch.bfloat16) -> dict[str, int]:
    """Bytes the tensors of main layer ``layer`` take in a model of ``dtype``, computed from
    shapes only.  Weights and norms take ``dtype``; mHC, sinks, ``ape`` and the router bias fp32
    (fp64 in a float64 model); ``tid2eid`` int64.  ``experts="dequantize"``: routed experts in
    ``dtype``; ``"packed"``: 0.5 byte per parameter + one ue8m0 byte per 32.

    Returns ``{"total", "routed_experts", "one_expert", "other"}`` (``other`` = everything but
    the routed experts: what :class:`StreamedModel` holds besides one expert at a time)."""
    if experts not in EXPERT_MODES:
        raise ValueError(f"experts must be one of {EXPERT_MODES}, got {experts!r}")
    el = torch.empty((), dtype=dtype).element_size()
    f32_el = 8 if dtype == torch.float64 else 4
    routed = other = one = 0
    for name, storage, shape in layer_schema(cfg, layer):
        n = 1
        for s in shape:
            n *= s
        if storage == "expert":
            if experts == "packed":
                N, K = shape
                b = N * K // 2 + N * -(-K // 32)
            else:
                b = n * el
            routed += b
            if name.startswith("ffn.experts.0."):
                one += b
        elif storage == "f32":
            other += n * f32_el
        elif storage == "i64":
            other += n * 8
        else:
            other += n * el
    return {"total": routed + other, "routed_experts": routed, "one_expert": one, "other": other}


# ------------------------------------------------------------------------------------------------
# helpers to swap single tensors of a module
# ------------------------------------------------------------------------------------------------
def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    for p in path:
        module = getattr(module, p)
    return module, leaf


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, leaf = _owner(module, name)
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[leaf] = value


def _get_tensor(module: nn.Module, name: str) -> torch.Tensor:
    owner, leaf = _owner(module, name)
    return owner._parameters[leaf] if leaf in owner._parameters else owner._buffers[leaf]


def _tensor_names(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_parameters()] + [n for n, _ in module.named_buffers()]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# ------------------------------------------------------------------------------------------------
# layer-by-layer execution
# ------------------------------------------------------------------------------------------------
class StreamedModel(WeightHook):
    """Run a checkpoint one layer at a time, for models larger than memory.

    ``path``: a checkpoint folder (either layout; checked from its headers first, see
    :func:`~v4lab.checkpoint.verify_checkpoint`).  ``dtype``/``numerics``/``experts`` as in
    :func:`~v4lab.checkpoint.load_checkpoint`; ``device``: where layers are materialised and run.
    ``max_memory_bytes``: the most parameter bytes materialised at once (None: no cap); a layer
    whose non-expert tensors plus its largest expert exceed it raises ``MemoryError`` before
    anything is read.

    ``model(input_ids, cache=None)`` returns fp32 logits [B, S, vocab] equal to
    ``load_checkpoint(path, ...)(input_ids)``; a cache from :meth:`new_cache` continues a
    sequence (each call streams the whole model once).  The MTP block is not run.  What runs is
    ``V4Model``'s own forward on the skeleton ``model.model`` (same input checks, errors and
    head), with this object as its :class:`~v4lab.model.WeightHook`: each block's tensors are
    materialised before it runs and freed after it, the embedding rows of the input are read
    from the memory map, and the output head comes in row chunks when it does not fit.
    ``generate`` and ``v4lab.eval.answer`` take it like a ``V4Model``.

    ``peak_bytes`` / ``current_bytes``: materialised parameter bytes (peak since the last
    :meth:`reset_peak`); ``bytes_read`` counts the materialised bytes over all calls."""

    def __init__(self, path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                 max_memory_bytes: int | None = None, numerics: str = "reference",
                 device: str | torch.device = "cpu", experts: str = "dequantize", cfg: V4Config | None = None):
        self.reader = CheckpointReader(path, cfg)
        self.cfg = self.reader.cfg
        if experts == "packed":
            _check_packable(self.reader.report, self.cfg, self.reader.path)
        self.model = model_skeleton(self.cfg, dtype, numerics, experts=experts)
        self.dtype = dtype
        self.device = torch.empty(0, device=device).device      # with its index (cuda:0), as tensors report it
        self.numerics, self.experts = numerics, experts
        self.max_memory_bytes = max_memory_bytes
        self.current_bytes = self.peak_bytes = self.bytes_read = 0
        self._live: dict[int, tuple[nn.Module, list[str], int]] = {}   # id -> (module, names, bytes)
        for i, layer in enumerate(self.model.layers):
            for e, expert in enumerate(layer.ffn.experts):
                expert.register_forward_pre_hook(partial(self._expert_in, f"layers.{i}.ffn.experts.{e}."))
                expert.register_forward_hook(self._expert_out)
        skip = ("layers.", "mtp.", "embed.", "head.")
        self._top_names = [n for n in _tensor_names(self.model) if not n.startswith(skip)]  # final norm, mHC head
        self._check_fits()
        self.model.weight_hook = self

    # ---------------------------------------------------------------- memory accounting
    def _planned(self, module: nn.Module, names) -> int:
        return sum(_nbytes(_get_tensor(module, n)) for n in names)   # meta tensors know their size

    def _check_fits(self) -> None:
        cap = self.max_memory_bytes
        if cap is None:
            return
        for i, layer in enumerate(self.model.layers):
            names = [n for n in _tensor_names(layer) if not n.startswith("ffn.experts.")]
            need = self._planned(layer, names)
            need += max((self._planned(x, _tensor_names(x)) for x in layer.ffn.experts), default=0)
            if need > cap:
                raise MemoryError(f"layer {i} needs {need:,} bytes materialised (its tensors without the routed "
                                  f"experts, plus one expert) but max_memory_bytes = {cap:,}")
        need = self._planned(self.model, self._top_names) + self.cfg.hidden_size * self.model.head.weight.element_size()
        if need > cap:
            raise MemoryError(f"the final norm, mHC head and one row of the output head need {need:,} bytes "
                              f"but max_memory_bytes = {cap:,}")

    def _reserve(self, nbytes: int, what: str) -> None:
        cap = self.max_memory_bytes
        if cap is not None and self.current_bytes + nbytes > cap:
            raise MemoryError(f"materialising {what} ({nbytes:,} bytes) on top of {self.current_bytes:,} would "
                              f"exceed max_memory_bytes = {cap:,}")
        self.current_bytes += nbytes
        self.bytes_read += nbytes
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)

    def reset_peak(self) -> None:
        self.peak_bytes = self.current_bytes

    # ---------------------------------------------------------------- materialise / free
    def _materialise(self, module: nn.Module, prefix: str, names: list[str]) -> None:
        planned = self._planned(module, names)
        self._reserve(planned, prefix.rstrip(".") or "the model's top-level tensors")
        done = []
        try:
            for n in names:
                old = _get_tensor(module, n)
                owner, _ = _owner(module, n)
                raw = isinstance(owner, PackedFP4Linear)
                t = self.reader.read(prefix + n, dtype=torch.float32, raw=raw)
                if raw and old.dtype == torch.uint8:
                    t = t.view(torch.uint8)           # ue8m0 scale bytes
                if tuple(t.shape) != tuple(old.shape):
                    raise ValueError(f"{self.reader.file_of(prefix + n)}: tensor {prefix + n!r} has shape "
                                     f"{list(t.shape)}, the model expects {list(old.shape)}")
                # a fresh copy, not a view of the memory map: the same memory layout as in a loaded
                # model, so the same kernels and bit-identical results
                _set_tensor(module, n, t.to(device=self.device, dtype=old.dtype, copy=True))
                done.append(n)
        except BaseException:
            self._to_meta(module, done)
            self.current_bytes -= planned
            raise
        if id(module) in self._live:                  # more tensors of a module already in
            _, names0, planned0 = self._live[id(module)]
            names, planned = names0 + list(names), planned0 + planned
        self._live[id(module)] = (module, list(names), planned)

    @staticmethod
    def _to_meta(module: nn.Module, names) -> None:
        for n in names:
            t = _get_tensor(module, n)
            _set_tensor(module, n, torch.empty(t.shape, dtype=t.dtype, device="meta"))

    def _free(self, module: nn.Module) -> None:
        entry = self._live.pop(id(module), None)
        if entry is not None:
            _, names, planned = entry
            self._to_meta(module, names)
            self.current_bytes -= planned

    def _free_all(self) -> None:
        for mod, _, _ in list(self._live.values()):
            self._free(mod)

    def _expert_in(self, prefix: str, module: nn.Module, args) -> None:
        self._materialise(module, prefix, _tensor_names(module))

    def _expert_out(self, module: nn.Module, args, output) -> None:
        self._free(module)

    # ---------------------------------------------------------------- hooks of V4Model's forward
    def embed(self, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """The embedding rows of ``ids``, read from the memory map (only these rows)."""
        table = self.reader.read("embed.weight", raw=True)
        weight = model.embed.weight
        rows = ids.reshape(-1).cpu()
        nbytes = rows.numel() * weight.shape[1] * weight.element_size()
        self._reserve(nbytes, "the embedding rows")
        try:
            h = table[rows].to(device=self.device, dtype=weight.dtype)
        finally:
            self.current_bytes -= nbytes
        return h.view(*ids.shape, -1)

    @contextlib.contextmanager
    def block(self, model: nn.Module, index: int, block: nn.Module):
        """Block ``index``'s tensors but the routed experts (those come when the router picks
        them), materialised while the block runs."""
        names = [n for n in _tensor_names(block) if not n.startswith("ffn.experts.")]
        self._materialise(block, f"layers.{index}.", names)
        try:
            yield
        finally:
            self._free_all()

    @contextlib.contextmanager
    def head(self, model: nn.Module):
        """The final norm and mHC head, and the output head whole if it fits in what is left of
        ``max_memory_bytes``, else in row chunks that do."""
        self._materialise(model, "", self._top_names)
        rows = None
        try:
            cap = self.max_memory_bytes
            if cap is None or self.current_bytes + _nbytes(model.head.weight) <= cap:
                self._materialise(model, "", ["head.weight"])
                yield None
            else:
                rows = self._head_rows(model.head.weight, cap)
                yield rows
        finally:
            if rows is not None:
                rows.close()
            self._free_all()

    def _head_rows(self, head: torch.Tensor, cap: int):
        V, d = head.shape
        row = d * head.element_size()
        step = max(1, (cap - self.current_bytes) // row)
        table = self.reader.read("head.weight", raw=True)
        for r0 in range(0, V, step):
            r1 = min(V, r0 + step)
            self._reserve((r1 - r0) * row, f"head rows {r0}..{r1 - 1}")
            try:
                yield r0, r1, table[r0:r1].to(device=self.device, dtype=head.dtype, copy=True)
            finally:
                self.current_bytes -= (r1 - r0) * row

    # ---------------------------------------------------------------- the model's forward
    @property
    def config(self) -> V4Config:
        return self.cfg

    def fingerprint(self):
        return self.model.fingerprint()

    def new_cache(self, batch_size: int = 1, storage: str | None = None, indexer_storage: str = "fp4") -> V4Cache:
        """An empty decoding state on ``device`` (``V4Model.new_cache``)."""
        return self.model.new_cache(batch_size, storage, indexer_storage)

    @torch.no_grad()
    def hidden_states(self, input_ids: torch.Tensor, cache: V4Cache | None = None,
                      ctx: ForwardContext | None = None, attention_mask=None) -> torch.Tensor:
        """Final residual streams H [B, S, n, d]: ``V4Model.hidden_states``, streamed."""
        return self.model.hidden_states(input_ids, cache, ctx, attention_mask)

    @torch.no_grad()
    def logits_from_hidden(self, H: torch.Tensor) -> torch.Tensor:
        """fp32 logits of the final streams: ``V4Model.logits_from_hidden``, streamed."""
        return self.model.logits_from_hidden(H)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, cache: V4Cache | None = None,
                ctx: ForwardContext | None = None, attention_mask=None, return_hidden: bool = False):
        """Logits [B, S, vocab] (fp32) of this chunk, streaming every layer once: ``V4Model.forward``."""
        return self.model(input_ids, cache, attention_mask, ctx, return_hidden)

    __call__ = forward

    def __repr__(self) -> str:
        cap = "no cap" if self.max_memory_bytes is None else f"max_memory_bytes={self.max_memory_bytes:,}"
        return (f"StreamedModel({self.reader.path!r}, {self.reader.layout} layout, {self.cfg.num_hidden_layers} layers, "
                f"dtype={self.dtype}, numerics={self.numerics!r}, experts={self.experts!r}, {cap})")


# ------------------------------------------------------------------------------------------------
# placement with accelerate
# ------------------------------------------------------------------------------------------------
def _lookup(device_map: dict, name: str):
    """Device of module ``name`` in an accelerate device map (longest enclosing key)."""
    best = None
    for k in device_map:
        if k == "" or name == k or name.startswith(k + "."):
            if best is None or len(k) > len(best):
                best = k
    if best is not None:
        return device_map[best]
    inside = {v for k, v in device_map.items() if k.startswith(name + ".")}
    if len(inside) == 1:
        return inside.pop()
    raise ValueError(f"accelerate split module {name!r} across devices {sorted(map(str, inside))}; "
                     f"it must stay whole (no_split_module_classes)")


def _main_device(device_map: dict):
    others = [d for d in device_map.values() if d not in ("cpu", "disk")]
    return others[0] if others else "cpu"


def _block_map(model: nn.Module, device_map: dict, main) -> dict:
    """One entry per block (``layers.i``, ``mtp.j``) with accelerate's choice; everything
    outside the blocks (embedding, final norm, mHC head, output head) on the main device: the
    model's forward reads those weights directly."""
    out = {}
    for name, _ in model.named_children():
        if name not in ("layers", "mtp"):
            out[name] = main
    for name, _ in model.named_parameters(recurse=False):
        out[name] = main
    for i in range(len(model.layers)):
        out[f"layers.{i}"] = _lookup(device_map, f"layers.{i}")
    for i in range(len(model.mtp)):
        out[f"mtp.{i}"] = _lookup(device_map, f"mtp.{i}")
    return out


@torch.no_grad()
def dispatch(
    model_or_path,
    max_memory: dict,
    offload_folder: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    numerics: str = "reference",
    no_split_module_classes=BLOCK_CLASSES,
    cfg: V4Config | None = None,
):
    """Place a model across devices with ``accelerate`` and return it ready to run.

    ``model_or_path``: a ``V4Model`` or a checkpoint folder (either layout; read tensor by tensor
    from the memory-mapped shards, dequantised, straight to the device of its block, so the
    whole model is never in memory; ``dtype``, ``numerics`` and ``cfg`` apply to this case).
    ``max_memory``: accelerate's budget per device, e.g. ``{0: "70GiB", "cpu": "100GiB"}`` or
    ``{"cpu": 2_000_000}``; blocks that do not fit go to ``"disk"``: written to
    ``offload_folder`` (dequantised, in the model dtype; its ``index.json`` is rewritten).
    ``accelerate.infer_auto_device_map`` chooses the devices with ``no_split_module_classes``
    (whole ``Block``/``MTPBlock``), ``accelerate.dispatch_model`` installs the hooks that load an
    offloaded block for its forward (``preload_module_classes``: the blocks read their
    sub-modules' weights directly).  The embedding, final norm, mHC head and output head stay on
    the main device (the first GPU in the map, else the CPU).  ``model.hf_device_map`` holds the
    map.  With several GPUs, pass a cache whose layers live on their blocks' devices (the default
    cache lives on the main device).
    """
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import offload_weight

    reader = None
    if isinstance(model_or_path, (str, os.PathLike)):
        reader = CheckpointReader(model_or_path, cfg)
        model = model_skeleton(reader.cfg, dtype, numerics)
        if reader.layout == "hf":
            model.mtp = nn.ModuleList()            # transformers files have no MTP block
    else:
        model = model_or_path
    auto = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=list(no_split_module_classes))
    # accelerate names top-level parameters (hc_head_*) in its maps but warns about them later
    main = _main_device(auto)
    device_map = _block_map(model, auto, main)
    disk = [k for k, v in device_map.items() if v == "disk"]
    if disk and offload_folder is None:
        raise ValueError(f"blocks {disk[:4]}{' ...' if len(disk) > 4 else ''} do not fit in max_memory and go to "
                         "disk: pass offload_folder")
    index: dict = {}
    if offload_folder is not None:
        os.makedirs(offload_folder, exist_ok=True)
    param_names = {n for n, _ in model.named_parameters()}
    for name in [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]:
        dev = device_map[name] if name in device_map else _lookup(device_map, name)
        offloaded = dev == "disk" and name in param_names
        old = _get_tensor(model, name)
        if reader is None:                          # accelerate moves in-memory tensors itself
            if offloaded:
                offload_weight(old.detach().cpu(), name, os.fspath(offload_folder), index)
            continue
        t = reader.read(name, dtype=torch.float32).to(old.dtype, copy=True)
        if offloaded:
            offload_weight(t, name, os.fspath(offload_folder), index)      # the model keeps a meta tensor
        else:                                       # buffers of offloaded blocks live on the main device
            _set_tensor(model, name, t.to(main if dev == "disk" else dev))
    if disk:
        with open(os.path.join(os.fspath(offload_folder), "index.json"), "w") as f:
            json.dump(index, f, indent=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The following device_map keys do not match any submodules")
        model = dispatch_model(model, device_map, main_device=main,
                               offload_dir=os.fspath(offload_folder) if disk else None,
                               preload_module_classes=list(no_split_module_classes))
    model.hf_device_map = device_map
    return model
