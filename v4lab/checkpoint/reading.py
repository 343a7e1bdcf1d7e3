"""Reading checkpoints tensor by tensor, under the model's names: :func:`iter_model_tensors`
streams a checkpoint (either layout) in storage order, :class:`CheckpointReader` reads single
tensors on demand; both from the memory maps of the ``safetensors`` library, dequantising FP8
blocks and packed FP4 experts on the way (or keeping the experts packed)."""
from __future__ import annotations

import os
import re
from typing import Iterable, Iterator

import torch

from ..config import V4Config
from ..quant import FP4_BLOCK, dequant_fp4_experts, dequant_fp8_block
from ..safetensors_io import SafetensorsError
from .inspection import checkpoint_config, verify_checkpoint
from .report import CheckpointError
from .schema import LAYER_NAME_RE, detect_layout, fp8_block_of, hf_to_official_name, official_to_hf_name
from .shards import ShardedCheckpoint

__all__ = ["iter_model_tensors", "CheckpointReader", "tensor_file"]


def _ordered_names(ck: ShardedCheckpoint) -> list[str]:
    """Names in storage order (file by file, by offset), so that streaming reads sequentially."""
    out = []
    wm = ck.weight_map
    for fname in ck.files:
        h = ck.headers().get(fname)
        if h is None:
            raise SafetensorsError(ck.header_errors.get(fname, f"{fname}: unreadable"))
        out += [name for name in h.tensors if wm is None or wm.get(name) == fname]
    return out


def tensor_file(ck: ShardedCheckpoint, name: str) -> str:
    """The file that holds ``name`` ("?" when neither the index nor a header knows it)."""
    try:
        return ck.file_of(name)
    except KeyError:
        return "?"


def _dequantised(ck: ShardedCheckpoint, name: str, scale_name: str, block, dtype) -> torch.Tensor:
    """Read ``name`` and its ``.scale`` and dequantise (packed FP4 for int8 weights, FP8 blocks
    otherwise); any problem becomes a :class:`CheckpointError` naming the file and the tensors."""
    w, s = ck.read(name), ck.read(scale_name)
    try:
        if w.dtype == torch.int8:
            return dequant_fp4_experts(w, s, FP4_BLOCK, dtype)
        return dequant_fp8_block(w, s, block, dtype)
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{tensor_file(ck, name)}: tensor {name!r} with {scale_name!r} ({tensor_file(ck, scale_name)}): {e}") from e


def _checked_scale(ck: ShardedCheckpoint, name: str) -> torch.Tensor:
    """A ue8m0 ``.scale`` read as stored (for packed experts), refusing the NaN byte 0xFF."""
    s = ck.read(name)
    if s.element_size() == 1 and bool((s.view(torch.uint8) == 0xFF).any()):
        n = int((s.view(torch.uint8) == 0xFF).sum())
        raise CheckpointError(f"{tensor_file(ck, name)}: tensor {name!r} holds {n} NaN byte(s) (0xFF): corrupt scales")
    return s


def iter_model_tensors(
    source: str | os.PathLike | ShardedCheckpoint,
    cfg: V4Config | None = None,
    dtype: torch.dtype = torch.float32,
    names: Iterable[str] | None = None,
    strict: bool = True,
    packed_experts: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream a checkpoint (either layout) as model tensors: ``(official name, tensor)``.

    FP8 weights (+ ``.scale``) and packed FP4 experts (+ ``.scale``) are dequantised to ``dtype``;
    the other tensors come in their stored dtype (``copy_`` into a parameter converts them).
    With ``packed_experts``, packed FP4 experts are not dequantised: their int8 ``weight`` and
    ue8m0 ``scale`` come as stored (for :class:`PackedFP4Linear`).
    ``transformers`` names are mapped back to the official ones and the fused experts split into
    ``ffn.experts.E.{w1,w3,w2}.weight``.  ``names`` restricts the output to those official names
    (for example one layer).  With ``strict``, names that belong to neither layout raise.
    Tensors are read from memory maps, one at a time, in storage order.
    """
    ck = source if isinstance(source, ShardedCheckpoint) else ShardedCheckpoint(source)
    if cfg is None and ck.folder and os.path.exists(os.path.join(ck.folder, "config.json")):
        cfg = V4Config.from_hf(os.path.join(ck.folder, "config.json"))
    block = fp8_block_of(cfg)
    order = _ordered_names(ck)
    present = set(order)
    wanted = None if names is None else set(names)
    layout = detect_layout(order)

    def want(n: str) -> bool:
        return wanted is None or n in wanted

    for name in order:
        if layout == "official":
            if name.endswith(".scale") and name[:-6] + ".weight" in present:
                continue                                    # read together with its weight
            if not want(name):
                continue
            scale_name = name[:-7] + ".scale" if name.endswith(".weight") else None
            if scale_name is not None and scale_name in present:
                if packed_experts and ck.header_of(name).tensors[name].dtype == "I8":
                    yield name, ck.read(name)
                    yield scale_name, _checked_scale(ck, scale_name)
                else:
                    yield name, _dequantised(ck, name, scale_name, block, dtype)
            else:
                yield name, ck.read(name)
            continue
        # transformers layout
        m = LAYER_NAME_RE.match(name)
        if m is not None and m.group(3) in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
            layer = m.group(2)
            t = ck.read(name)
            if m.group(3) == "mlp.experts.gate_up_proj":
                half = t.shape[1] // 2
                for e in range(t.shape[0]):
                    for wname, part in (("w1", t[e, :half]), ("w3", t[e, half:])):
                        off = f"layers.{layer}.ffn.experts.{e}.{wname}.weight"
                        if want(off):
                            yield off, part
            else:
                for e in range(t.shape[0]):
                    off = f"layers.{layer}.ffn.experts.{e}.w2.weight"
                    if want(off):
                        yield off, t[e]
            continue
        off = hf_to_official_name(name)
        if off is None:
            if strict:
                raise KeyError(f"{ck.file_of(name)}: tensor {name!r} has no DeepSeek-V4 meaning")
            continue
        if want(off):
            yield off, ck.read(name)


_MODEL_EXPERT_RE = re.compile(r"^layers\.(\d+)\.ffn\.experts\.(\d+)\.(w[123])\.(weight|scale)$")


class CheckpointReader:
    """Random access to a checkpoint's tensors under the model's names (the official names), in
    either layout, from memory maps of the shards: only the bytes of the tensors asked for are
    read.  The checkpoint is checked first (:func:`verify_checkpoint`, header only).

    ``read(name)`` dequantises FP8 weights and packed FP4 experts to ``dtype``;
    ``read(name, raw=True)`` gives the stored tensor (an int8 packed expert, its ue8m0 ``.scale``,
    a BF16 embedding ...).  In the ``transformers`` layout one routed expert is a slice of the
    layer's fused tensor."""

    def __init__(self, path: str | os.PathLike, cfg: V4Config | None = None, *, verify: bool = True,
                 strict: bool = True):
        self.path = os.fspath(path)
        self.ck = ShardedCheckpoint(self.path)
        self.cfg = cfg if cfg is not None else checkpoint_config(self.ck)
        self.report = verify_checkpoint(self.path, self.cfg, strict) if verify else None
        names = self.ck.names()
        self.layout = self.report.layout if self.report is not None else detect_layout(names)
        self._present = set(names)
        self.block = fp8_block_of(self.cfg)

    def _stored(self, name: str) -> str:
        """The checkpoint name that holds model tensor ``name`` (the fused tensor for an expert in
        the transformers layout)."""
        if self.layout == "official":
            return name
        m = _MODEL_EXPERT_RE.match(name)
        if m is not None:
            fused = "gate_up_proj" if m.group(3) in ("w1", "w3") else "down_proj"
            return f"model.layers.{m.group(1)}.mlp.experts.{fused}"
        hf = official_to_hf_name(name)
        return hf if hf is not None else name

    def __contains__(self, name: str) -> bool:
        if self.layout == "hf" and name.endswith(".scale"):
            return False
        return self._stored(name) in self._present

    def file_of(self, name: str) -> str:
        """The file that holds model tensor ``name``."""
        return tensor_file(self.ck, self._stored(name))

    def is_packed_fp4(self, name: str) -> bool:
        """Whether ``name`` (a ``...weight``) is stored as packed FP4 with a ``.scale``."""
        if self.layout != "official" or not name.endswith(".weight"):
            return False
        scale = name[:-7] + ".scale"
        return scale in self._present and self.ck.header_of(name).tensors[name].dtype == "I8"

    def read(self, name: str, dtype: torch.dtype = torch.float32, raw: bool = False) -> torch.Tensor:
        """Model tensor ``name`` (official name): dequantised to ``dtype`` when stored quantised
        (unless ``raw``), else as stored (a zero-copy view of the memory map)."""
        stored = self._stored(name)
        if stored not in self._present:
            raise KeyError(f"{self.path}: the checkpoint has no tensor {stored!r} (model tensor {name!r})")
        if self.layout == "official":
            scale = name[:-7] + ".scale" if name.endswith(".weight") else None
            if not raw and scale is not None and scale in self._present:
                return _dequantised(self.ck, name, scale, self.block, dtype)
            if name.endswith(".scale"):
                return _checked_scale(self.ck, name)
            return self.ck.read(name)
        t = self.ck.read(stored)
        m = _MODEL_EXPERT_RE.match(name)
        if m is not None:
            e, w = int(m.group(2)), m.group(3)
            half = t.shape[1] // 2
            return t[e, :half] if w == "w1" else (t[e, half:] if w == "w3" else t[e])
        return t
