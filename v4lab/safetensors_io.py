"""What v4lab adds to the ``safetensors`` library: header reports that name the file and the
tensor, sharded checkpoints, and header-only files for tests.

Reading and writing are the library's: ``safetensors.safe_open(path, framework="pt")`` parses and
checks a header without touching the payload (names, dtypes, shapes, metadata; ``offset_keys``
gives the storage order), ``get_tensor`` returns a zero-copy view of a private (copy-on-write)
memory map of the file, and ``safetensors.torch.save_file`` writes (FP8 e4m3, ue8m0, packed FP4
included).  Kept here is only what the library lacks:

* :func:`read_header` gives every tensor's dtype, shape and byte range (:class:`TensorInfo`), and
  when the library refuses a file -- its error names no tensor -- reads the JSON header itself to
  say which tensor is at fault: a byte range that does not match dtype x shape, a tensor past the
  end of a truncated file, two tensors over the same bytes, bytes no tensor covers;
* :func:`write_header_only`: a file with the real names, shapes and dtypes whose payload is never
  written (the library always writes the payload).  On file systems with sparse files (ext4, xfs,
  btrfs, tmpfs, APFS) a Flash-sized checkpoint of such files takes no disk space and reads back as
  zeros.  :func:`write_raw_header` writes any header, lies included, for tests of broken files.

Sharded checkpoints (``model.safetensors.index.json`` and its shards) are
:mod:`v4lab.checkpoint.shards`; their names are importable from here too.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

__all__ = [
    "DTYPE_BITS", "SafetensorsError", "TensorInfo", "SafetensorsHeader", "dtype_to_torch", "tensor_nbytes",
    "paused_gc", "read_header", "read_tensor", "release_maps", "write_header_only", "write_raw_header",
    "write_safetensors",
]
_SHARDED = ("ShardedCheckpoint", "INDEX_NAME", "SINGLE_NAME", "shard_file_name", "plan_shards",
            "write_index", "write_sharded_header_only")


def __getattr__(name):
    # the sharded-checkpoint names, where they were before they moved (the notebooks import them here)
    if name in _SHARDED:
        from .checkpoint import shards

        return getattr(shards, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

MAX_HEADER_BYTES = 100 * 1024 * 1024          # the library's limit

DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
"""Bits per element of the safetensors dtypes (sub-byte dtypes are packed)."""

_TORCH = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "F16": "float16", "BF16": "bfloat16",
    "F32": "float32", "F64": "float64", "C64": "complex64", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu", "F4": "float4_e2m1fn_x2",
}


@contextlib.contextmanager
def paused_gc():
    """Pause the cyclic garbage collector while building many small objects (the headers of
    tens of thousands of tensors): several times faster, and nothing built here makes cycles."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class SafetensorsError(ValueError):
    """A safetensors file or index that cannot be read as it claims; the message names the file
    (and the tensor, where one is at fault)."""


def dtype_to_torch(dtype: str) -> torch.dtype:
    """torch dtype of a safetensors dtype string (F8_E8M0 -> uint8 on torch builds without
    ``float8_e8m0fnu``)."""
    dt = getattr(torch, _TORCH.get(dtype, "?"), None)
    if dt is None and dtype == "F8_E8M0":
        return torch.uint8
    if dt is None:
        raise SafetensorsError(f"safetensors dtype {dtype!r} has no torch equivalent here")
    return dt


def tensor_nbytes(dtype: str, shape) -> int:
    """Payload bytes of a tensor (sub-byte dtypes are packed, rounded up to whole bytes)."""
    bits = DTYPE_BITS.get(dtype)
    if bits is None:
        raise SafetensorsError(f"unknown safetensors dtype {dtype!r}")
    n = math.prod(shape)
    return n * (bits >> 3) if not bits & 7 else -(-n * bits // 8)


# ------------------------------------------------------------------------------------------------
# headers
# ------------------------------------------------------------------------------------------------
class TensorInfo(NamedTuple):
    """One header entry.  ``begin``/``end`` are relative to the payload start ``data_start``;
    ``file`` is the path of the file that holds it."""

    name: str
    dtype: str
    shape: tuple
    begin: int
    end: int
    file: str
    data_start: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the header reserves (``end - begin``)."""
        return self.end - self.begin

    @property
    def file_offset(self) -> int:
        """Absolute byte offset of the payload in the file."""
        return self.data_start + self.begin


@dataclass
class SafetensorsHeader:
    """The header of one file: its tensors in storage order, and -- for a file the library
    refuses -- what is wrong with it (``errors``; such a file cannot be read)."""

    path: str
    header_len: int
    file_size: int
    tensors: dict[str, TensorInfo]
    metadata: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    @property
    def payload_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def ok(self) -> bool:
        return not self.errors


_HANDLES: OrderedDict = OrderedDict()      # (path, size, mtime) -> (safe_open handle, its names)
_MAX_HANDLES = 256


def _handle(path: str):
    """The library's torch handle of ``path`` (one per file version, kept open: its memory map
    backs every tensor read from it) and the set of its names."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    hit = _HANDLES.get(key)
    if hit is None:
        f = safe_open(path, framework="pt")
        hit = _HANDLES[key] = (f, frozenset(f.keys()))
        if len(_HANDLES) > _MAX_HANDLES:
            _HANDLES.popitem(last=False)
    else:
        _HANDLES.move_to_end(key)
    return hit


def release_maps() -> None:
    """Forget the open files (tensors read from one keep its memory map alive)."""
    _HANDLES.clear()


def read_header(path: str | os.PathLike, validate: bool = True) -> SafetensorsHeader:
    """The header of one safetensors file, without touching its payload.

    The library opens and checks the file; the byte ranges follow from its storage order
    (``offset_keys``), since the library accepts only tensors packed back to back from byte 0 to
    the end of the file.  A file the library refuses is diagnosed from its JSON header
    (``.errors``, each naming the file and the tensor; with ``validate=True`` the first is
    raised).  :class:`SafetensorsError` when not even the header can be read."""
    path = os.fspath(path)
    try:
        # the numpy handle parses and checks the header without creating a torch storage of the
        # whole file (a private map that counts against memory: too much for a 72 GB shard)
        f = safe_open(path, framework="numpy")
    except SafetensorError as e:
        h = _diagnose(path, str(e))
        if validate:
            more = f" (and {len(h.errors) - 1} more problems)" if len(h.errors) > 1 else ""
            raise SafetensorsError(h.errors[0] + more) from e
        return h
    except OSError as e:
        raise SafetensorsError(f"{os.path.basename(path)}: cannot read: {e}") from e
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
    data_start, pos, tensors = 8 + n, 0, {}
    with f, paused_gc():
        for name in f.offset_keys():
            s = f.get_slice(name)
            dtype, shape = s.get_dtype(), tuple(s.get_shape())
            end = pos + tensor_nbytes(dtype, shape)
            tensors[name] = TensorInfo(name, dtype, shape, pos, end, path, data_start)
            pos = end
        metadata = dict(f.metadata() or {})
    return SafetensorsHeader(path, n, os.path.getsize(path), tensors, metadata)


def read_tensor(source: str | os.PathLike | SafetensorsHeader, name: str, *, use_mmap: bool = True,
                header: SafetensorsHeader | None = None) -> torch.Tensor:
    """One tensor of a safetensors file as a CPU tensor of its stored dtype (F8_E4M3 ->
    float8_e4m3fn, F8_E8M0 -> float8_e8m0fnu, I8 -> int8, ...), read by the library.

    With ``use_mmap`` (default) the tensor is a zero-copy view of a private (copy-on-write)
    memory map of the file: only the pages that are used are read, and writing to it leaves the
    file alone.  Otherwise it is a copy in memory, read afresh from the file."""
    if isinstance(source, SafetensorsHeader):
        header = source
    path = header.path if header is not None else os.fspath(source)
    fname = os.path.basename(path)
    try:
        f, names = _handle(path)
    except SafetensorError as e:
        raise SafetensorsError("; ".join(_diagnose(path, str(e)).errors)) from e
    if name not in names:
        raise KeyError(f"{fname}: no tensor {name!r}")
    if use_mmap:
        return f.get_tensor(name)
    with safe_open(path, framework="pt") as fresh:      # not the shared map: it may have been written to
        return fresh.get_tensor(name).clone()


# ------------------------------------------------------------------------------------------------
# why the library refuses a file
# ------------------------------------------------------------------------------------------------
def _diagnose(path: str, reason: str) -> SafetensorsHeader:
    """Read the JSON header of a file the library refuses and name what is wrong in it."""
    fname = os.path.basename(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{fname}: {size} bytes, too short for the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise SafetensorsError(f"{fname}: header length {n} exceeds {MAX_HEADER_BYTES} bytes: not a safetensors file?")
        if 8 + n > size:
            raise SafetensorsError(f"{fname}: header claims {n} bytes but the file has only {size} bytes (truncated file?)")
        raw = f.read(n)
    try:
        d = json.loads(raw)
        meta = d.pop("__metadata__", None) or {}
        entries = {k: (e["dtype"], tuple(e["shape"]), *e["data_offsets"]) for k, e in d.items()}
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise SafetensorsError(f"{fname}: header cannot be read ({reason}): {e}") from e
    tensors = {k: TensorInfo(k, dt, sh, b, e, path, 8 + n) for k, (dt, sh, b, e) in entries.items()}
    h = SafetensorsHeader(path, n, size, tensors, meta if isinstance(meta, dict) else {})
    payload = size - h.data_start
    spans, past = [], []
    for t in tensors.values():
        if t.dtype not in DTYPE_BITS:
            h.errors.append(f"{fname}: tensor {t.name!r}: unknown dtype {t.dtype!r}")
            continue
        need = tensor_nbytes(t.dtype, t.shape)
        if t.end - t.begin != need:
            h.errors.append(f"{fname}: tensor {t.name!r}: data_offsets [{t.begin}, {t.end}] hold "
                            f"{t.end - t.begin} bytes but {t.dtype} {list(t.shape)} needs {need}")
        if t.end > payload:
            past.append((t.begin, t.end, t.name))
        if t.end > t.begin:
            spans.append((t.begin, t.end, t.name))
    if past:
        past.sort()
        others = ", ".join(repr(p[2]) for p in past[1:4]) + (" ..." if len(past) > 4 else "")
        more = f" ({len(past) - 1} more tensor(s) after it end past the file too: {others})" if len(past) > 1 else ""
        h.errors.append(f"{fname}: tensor {past[0][2]!r} ends at payload byte {past[0][1]} but the file has only "
                        f"{max(payload, 0)} payload bytes ({size} bytes in all): truncated file?{more}")
    pos, prev = 0, None
    for b, e, name in sorted(spans):
        if prev is not None and b < pos:
            h.errors.append(f"{fname}: tensors {prev!r} and {name!r} overlap (payload bytes {b}..{min(pos, e)})")
        elif b > pos:
            h.errors.append(f"{fname}: {b - pos} payload bytes before tensor {name!r} belong to no tensor")
        if e > pos:
            pos, prev = e, name
    if 0 <= pos < payload and not past:
        h.errors.append(f"{fname}: {payload - pos} bytes after the last tensor belong to no tensor")
    if not h.errors:
        h.errors.append(f"{fname}: the safetensors library cannot read it: {reason}")
    return h


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str] | None = None) -> int:
    """Write real tensors with ``safetensors.torch.save_file`` (CPU copies where needed; views of
    one storage are written as separate tensors).  Returns the file size."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.numel() and key in seen:
            t = t.clone()
        seen.add(key)
        out[name] = t
    save_file(out, os.fspath(path), metadata=dict(metadata) if metadata is not None else {"format": "pt"})
    return os.path.getsize(path)


def write_raw_header(path: str | os.PathLike, header: dict, file_size: int | None = None) -> int:
    """Write ``header`` (a dict, written as given, lies included) and extend the file sparsely to
    ``file_size`` bytes (default: just past the largest ``data_offsets`` end).  Returns the file
    size."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)       # payload starts 8-byte aligned
    if file_size is None:
        ends = [e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"]
        file_size = 8 + len(raw) + max(ends, default=0)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(file_size)
    return file_size


def write_header_only(path: str | os.PathLike, tensors: Mapping[str, tuple[str, tuple]],
                      metadata: Mapping[str, str] | None = None) -> int:
    """Write a valid safetensors file whose payloads are never written: the header (tensors back
    to back in the given order), then the file is extended to its full length (a sparse file,
    every payload byte reads as zero).  ``tensors`` maps names to ``(dtype string, shape)``.
    Returns the file size."""
    meta = {"format": "pt"} if metadata is None else metadata
    header: dict = {"__metadata__": {str(k): str(v) for k, v in meta.items()}} if meta else {}
    pos = 0
    for name, (dtype, shape) in tensors.items():
        n = tensor_nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": [int(s) for s in shape], "data_offsets": [pos, pos + n]}
        pos += n
    raw_len = len(json.dumps(header, separators=(",", ":")).encode())
    return write_raw_header(path, header, 8 + raw_len + (-raw_len % 8) + pos)
