"""Safetensors without surprises: header-only reading, validation, memory-mapped tensors,
sparse synthetic files and sharded checkpoints.

A safetensors file is ``[u64 little-endian header length n][n bytes of JSON][payload]``.  The JSON
maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` with offsets relative
to the start of the payload (byte ``8 + n``); an optional ``"__metadata__"`` holds string pairs.
A sharded checkpoint adds ``model.safetensors.index.json`` with ``weight_map`` (name -> shard
file) and ``metadata.total_size``.

Everything here reads headers only unless a tensor is asked for, so inspecting a 160 GB
checkpoint reads a few megabytes.  Problems are reported with the file and the tensor name.

The header-only writer (:func:`write_header_only`) writes the JSON header and extends the file to
its full length without writing payload bytes: on file systems with sparse files (ext4, xfs,
btrfs, tmpfs, APFS) a checkpoint with the real Flash shapes takes no disk space and every payload
reads back as zeros.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, NamedTuple

import torch

__all__ = [
    "DTYPE_BITS",
    "SafetensorsError",
    "TensorInfo",
    "SafetensorsHeader",
    "ShardedCheckpoint",
    "INDEX_NAME",
    "SINGLE_NAME",
    "dtype_to_torch",
    "torch_to_dtype",
    "tensor_nbytes",
    "read_header",
    "read_tensor",
    "release_maps",
    "write_header_only",
    "write_raw_header",
    "write_safetensors",
    "shard_file_name",
    "plan_shards",
    "write_sharded_header_only",
    "write_index",
]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024          # the limit of the reference safetensors library

# bits per element of every safetensors dtype string
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

_TORCH: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8,
    "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
for _name, _attr in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"),
                     ("F8_E8M0", "float8_e8m0fnu"), ("C64", "complex64")):
    if hasattr(torch, _attr):
        _TORCH[_name] = getattr(torch, _attr)
_FROM_TORCH = {v: k for k, v in _TORCH.items()}


@contextlib.contextmanager
def _no_gc():
    """Pause the cyclic garbage collector while building many small objects (headers of
    tens of thousands of tensors): several times faster, and nothing here makes cycles."""
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
    if dtype in _TORCH:
        return _TORCH[dtype]
    if dtype == "F8_E8M0":
        return torch.uint8
    raise SafetensorsError(f"safetensors dtype {dtype!r} has no torch equivalent here")


def torch_to_dtype(dtype: torch.dtype) -> str:
    """safetensors dtype string of a torch dtype."""
    if dtype not in _FROM_TORCH:
        raise SafetensorsError(f"torch dtype {dtype} cannot be stored in safetensors")
    return _FROM_TORCH[dtype]


def _numel(shape) -> int:
    return math.prod(shape)


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
        return _numel(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the header reserves (``end - begin``)."""
        return self.end - self.begin

    @property
    def expected_nbytes(self) -> int | None:
        """Bytes ``dtype`` x ``shape`` needs (None for an unknown dtype)."""
        return tensor_nbytes(self.dtype, self.shape) if self.dtype in DTYPE_BITS else None

    @property
    def file_offset(self) -> int:
        """Absolute byte offset of the payload in the file."""
        return self.data_start + self.begin


@dataclass
class SafetensorsHeader:
    """The parsed header of one file, with everything found wrong in it."""

    path: str
    header_len: int
    file_size: int
    tensors: dict[str, TensorInfo]
    metadata: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)     # the file cannot be read as it claims
    warnings: list[str] = field(default_factory=list)   # readable, but not as the format wants

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    @property
    def payload_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def ok(self) -> bool:
        return not self.errors


def _parse_entry(path: str, name: str, entry, data_start: int) -> TensorInfo:
    # fast path for well-formed entries (a Flash checkpoint has 69,187 of them)
    if type(entry) is dict:
        dtype, shape, offs = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if (type(dtype) is str and type(shape) is list and type(offs) is list and len(offs) == 2
                and type(offs[0]) is int and type(offs[1]) is int and offs[0] >= 0 and offs[1] >= 0):
            for s in shape:
                if type(s) is not int or s < 0:
                    break
            else:
                return TensorInfo(name, dtype, tuple(shape), offs[0], offs[1], path, data_start)
    fname = os.path.basename(path)
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{fname}: tensor {name!r}: header entry is not an object")
    dtype, shape, offs = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise SafetensorsError(f"{fname}: tensor {name!r}: missing or invalid 'dtype'")
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        raise SafetensorsError(f"{fname}: tensor {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
    raise SafetensorsError(f"{fname}: tensor {name!r}: 'data_offsets' must be two non-negative integers, got {offs!r}")


def read_header(path: str | os.PathLike, validate: bool = True) -> SafetensorsHeader:
    """Read and check the header of one safetensors file without touching its payload.

    Raises :class:`SafetensorsError` when the header itself is unreadable (file shorter than its
    header, bad JSON, malformed entries).  The checks of the payload layout -- known dtype,
    ``end - begin`` equal to dtype x shape bytes, every tensor inside the file, no two tensors
    overlapping -- go to ``.errors``; with ``validate=True`` the first of them is raised.  Gaps
    between tensors and bytes after the last one go to ``.warnings``.
    """
    path = os.fspath(path)
    fname = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{fname}: {size} bytes, too short for the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise SafetensorsError(f"{fname}: header length {n} exceeds {MAX_HEADER_BYTES} bytes: not a safetensors file?")
            if 8 + n > size:
                raise SafetensorsError(
                    f"{fname}: header claims {n} bytes but the file has only {size} bytes (truncated file?)"
                )
            raw = f.read(n)
    except OSError as e:
        raise SafetensorsError(f"{fname}: cannot read: {e}") from e
    with _no_gc():
        try:
            d = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{fname}: header is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise SafetensorsError(f"{fname}: header is not a JSON object")
        meta = d.pop("__metadata__", None) or {}
        if not isinstance(meta, dict):
            raise SafetensorsError(f"{fname}: '__metadata__' is not an object")
        data_start = 8 + n
        tensors = {name: _parse_entry(path, name, e, data_start) for name, e in d.items()}
        h = SafetensorsHeader(path, n, size, tensors, meta)
        _check_layout(h)
    if validate and h.errors:
        more = f" (and {len(h.errors) - 1} more problems)" if len(h.errors) > 1 else ""
        raise SafetensorsError(h.errors[0] + more)
    return h


def _check_layout(h: SafetensorsHeader) -> None:
    fname = os.path.basename(h.path)
    payload = h.file_size - h.data_start
    spans = []
    for t in h.tensors.values():
        if t.dtype not in DTYPE_BITS:
            h.errors.append(f"{fname}: tensor {t.name!r}: unknown dtype {t.dtype!r}")
            continue
        if t.end < t.begin:
            h.errors.append(f"{fname}: tensor {t.name!r}: data_offsets [{t.begin}, {t.end}] end before they begin")
            continue
        need = tensor_nbytes(t.dtype, t.shape)
        if t.end - t.begin != need:
            h.errors.append(
                f"{fname}: tensor {t.name!r}: data_offsets [{t.begin}, {t.end}] hold {t.end - t.begin} bytes "
                f"but {t.dtype} {list(t.shape)} needs {need}"
            )
        if t.end > t.begin:
            spans.append((t.begin, t.end, t.name))
    past = sorted((t.begin, t.end, t.name) for t in h.tensors.values()
                  if t.dtype in DTYPE_BITS and t.end > payload and t.end >= t.begin)
    if past:
        b, e, name = past[0]
        more = ""
        if len(past) > 1:
            others = ", ".join(repr(p[2]) for p in past[1:4]) + (" ..." if len(past) > 4 else "")
            more = f" ({len(past) - 1} more tensor(s) after it end past the file too: {others})"
        h.errors.append(
            f"{fname}: tensor {name!r} ends at payload byte {e} but the file has only {max(payload, 0)} "
            f"payload bytes ({h.file_size} bytes in all): truncated file?{more}"
        )
    spans.sort()
    pos, prev = 0, None
    for b, e, name in spans:
        if prev is not None and b < pos:
            h.errors.append(f"{fname}: tensors {prev!r} and {name!r} overlap (payload bytes {b}..{min(pos, e)})")
        elif b > pos:
            h.warnings.append(f"{fname}: {b - pos} unused payload bytes before tensor {name!r}")
        if e > pos:
            pos, prev = e, name
    if 0 <= pos < payload and spans:
        h.warnings.append(f"{fname}: {payload - pos} bytes after the last tensor")


# ------------------------------------------------------------------------------------------------
# reading payloads
# ------------------------------------------------------------------------------------------------
_MMAPS: dict[tuple, mmap.mmap] = {}


def _mapped(path: str) -> mmap.mmap:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    m = _MMAPS.get(key)
    if m is None:
        for k in [k for k in _MMAPS if k[0] == path]:
            del _MMAPS[k]           # the file changed; tensors still using the old map keep it alive
        with open(path, "rb") as f:
            # copy-on-write private map: tensors may be written to without touching the file
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        _MMAPS[key] = m
    return m


def release_maps() -> None:
    """Forget the cached memory maps (tensors that still view one keep it alive)."""
    _MMAPS.clear()


def read_tensor(
    source: str | os.PathLike | SafetensorsHeader,
    name: str,
    *,
    use_mmap: bool = True,
    header: SafetensorsHeader | None = None,
) -> torch.Tensor:
    """One tensor of a safetensors file as a CPU tensor of its stored dtype (F8_E4M3 ->
    float8_e4m3fn, F8_E8M0 -> float8_e8m0fnu, I8 -> int8, ...).

    With ``use_mmap`` (default) the tensor is a zero-copy view of a private (copy-on-write)
    memory map of the file: only the pages that are used are read.  Otherwise the bytes are
    read into memory.
    """
    if isinstance(source, SafetensorsHeader):
        header = source
    if header is None:
        header = read_header(source, validate=False)
    fname = os.path.basename(header.path)
    if name not in header.tensors:
        raise KeyError(f"{fname}: no tensor {name!r}")
    t = header.tensors[name]
    if t.dtype not in DTYPE_BITS or t.end < t.begin or t.end - t.begin != tensor_nbytes(t.dtype, t.shape):
        raise SafetensorsError(f"{fname}: tensor {name!r}: header entry is inconsistent "
                               f"({t.dtype} {list(t.shape)} at data_offsets [{t.begin}, {t.end}])")
    if t.data_start + t.end > os.path.getsize(header.path):
        raise SafetensorsError(f"{fname}: tensor {name!r} ends past the end of the file (truncated file?)")
    if t.dtype in ("F4", "F6_E2M3", "F6_E3M2"):
        raise SafetensorsError(f"{fname}: tensor {name!r}: sub-byte dtype {t.dtype} is not supported by read_tensor")
    dt = dtype_to_torch(t.dtype)
    if t.numel == 0:
        return torch.empty(t.shape, dtype=dt)
    if use_mmap:
        buf = _mapped(header.path)
        item = torch.empty((), dtype=dt).element_size()
        if t.file_offset % item == 0:
            x = torch.frombuffer(buf, dtype=dt, count=t.numel, offset=t.file_offset)
        else:   # misaligned payload: copy
            x = torch.frombuffer(buf, dtype=torch.uint8, count=t.nbytes, offset=t.file_offset).clone().view(dt)
    else:
        data = bytearray(t.nbytes)
        with open(header.path, "rb") as f:
            f.seek(t.file_offset)
            got = f.readinto(data)
        if got != t.nbytes:
            raise SafetensorsError(f"{fname}: tensor {name!r}: read {got} of {t.nbytes} bytes (truncated file?)")
        x = torch.frombuffer(data, dtype=torch.uint8).view(dt)
    return x.reshape(t.shape)


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def _header_bytes(entries: Mapping[str, tuple[str, tuple]], metadata: Mapping[str, str] | None) -> tuple[bytes, int]:
    """JSON header for tensors laid out back to back in the given order; returns (bytes, payload size)."""
    d: dict = {}
    if metadata:
        d["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    pos = 0
    for name, (dtype, shape) in entries.items():
        n = tensor_nbytes(dtype, shape)
        d[name] = {"dtype": dtype, "shape": [int(s) for s in shape], "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(d, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)       # payload starts 8-byte aligned
    return raw, pos


def write_raw_header(path: str | os.PathLike, header: dict, file_size: int | None = None) -> int:
    """Write ``header`` (a dict, written as given, lies included) and extend the file sparsely to
    ``file_size`` bytes (default: just past the largest ``data_offsets`` end).  For tests of
    broken files.  Returns the file size."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    if file_size is None:
        ends = [e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"]
        file_size = 8 + len(raw) + max(ends, default=0)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(file_size)
    return file_size


def write_header_only(
    path: str | os.PathLike,
    tensors: Mapping[str, tuple[str, tuple]],
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Write a valid safetensors file whose payloads are never written: the header, then the
    file is extended to its full length (a sparse file, all payload bytes read as zero).

    ``tensors`` maps names to ``(dtype string, shape)``.  Returns the file size."""
    raw, payload = _header_bytes(tensors, metadata if metadata is not None else {"format": "pt"})
    size = 8 + len(raw) + payload
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(size)
    return size


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Write real tensors (any dtype :func:`torch_to_dtype` knows, FP8 and ue8m0 included).
    Returns the file size."""
    entries = {}
    for name, t in tensors.items():
        entries[name] = (torch_to_dtype(t.dtype), tuple(t.shape))
    raw, payload = _header_bytes(entries, metadata if metadata is not None else {"format": "pt"})
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, t in tensors.items():
            if t.numel() == 0:
                continue
            b = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            f.write(memoryview(b.numpy()))
    return 8 + len(raw) + payload


def shard_file_name(i: int, n: int) -> str:
    """``model-00001-of-00046.safetensors`` (1-based)."""
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def plan_shards(
    tensors: Mapping[str, tuple[str, tuple]], max_shard_bytes: int
) -> list[list[str]]:
    """Split names, in order, into consecutive groups of at most ``max_shard_bytes`` payload
    bytes (a tensor larger than the limit gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, (dtype, shape) in tensors.items():
        n = tensor_nbytes(dtype, shape)
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards


def _split_even(tensors: Mapping[str, tuple[str, tuple]], n: int, total: int) -> list[list[str]]:
    # a tensor goes to the shard in which its first byte falls when the total is cut in n equal parts
    groups: list[list[str]] = [[] for _ in range(n)]
    pos = 0
    for name, (dtype, shape) in tensors.items():
        groups[min(n - 1, pos * n // max(total, 1))].append(name)
        pos += tensor_nbytes(dtype, shape)
    return [g for g in groups if g]


def write_index(folder: str | os.PathLike, weight_map: Mapping[str, str], total_size: int, extra_metadata: dict | None = None) -> str:
    """Write ``model.safetensors.index.json``; returns its path."""
    meta = {"total_size": int(total_size)}
    if extra_metadata:
        meta.update(extra_metadata)
    path = os.path.join(os.fspath(folder), INDEX_NAME)
    with open(path, "w") as f:
        json.dump({"metadata": meta, "weight_map": dict(weight_map)}, f, indent=1)
    return path


def write_sharded_header_only(
    folder: str | os.PathLike,
    tensors: Mapping[str, tuple[str, tuple]],
    max_shard_bytes: int = 4 * 1024**3,
    n_shards: int | None = None,
) -> dict:
    """Write a sharded header-only checkpoint (sparse shards + index) into ``folder``.

    Either ``max_shard_bytes`` or ``n_shards`` (about equal payload per shard) sets the split.
    Returns the index dict."""
    with _no_gc():
        return _write_sharded_header_only(os.fspath(folder), tensors, max_shard_bytes, n_shards)


def _write_sharded_header_only(folder, tensors, max_shard_bytes, n_shards) -> dict:
    os.makedirs(folder, exist_ok=True)
    total = sum(tensor_nbytes(d, s) for d, s in tensors.values())
    if n_shards is not None:
        groups = _split_even(tensors, n_shards, total)
    else:
        groups = plan_shards(tensors, max_shard_bytes)
    weight_map = {}
    for i, names in enumerate(groups, 1):
        fname = shard_file_name(i, len(groups))
        write_header_only(os.path.join(folder, fname), {k: tensors[k] for k in names})
        weight_map.update((k, fname) for k in names)
    write_index(folder, weight_map, total)
    return {"metadata": {"total_size": total}, "weight_map": weight_map}


# ------------------------------------------------------------------------------------------------
# sharded checkpoints
# ------------------------------------------------------------------------------------------------
class ShardedCheckpoint:
    """A checkpoint folder (``model.safetensors.index.json`` + shards, or one or more
    ``*.safetensors`` files without an index) or a single ``.safetensors`` file.

    Headers are read lazily and only once; nothing reads a payload until :meth:`read` or
    :meth:`items` is called.  :meth:`problems` lists everything wrong with the index and the
    headers (each message names the file and the tensor)."""

    def __init__(self, path: str | os.PathLike):
        path = os.fspath(path)
        self.index: dict | None = None
        if os.path.isfile(path) and path.endswith(".json"):
            self.folder = os.path.dirname(path)
            index_path = path
        elif os.path.isfile(path):
            self.folder = os.path.dirname(path)
            index_path = None
            self.files = [os.path.basename(path)]
        elif os.path.isdir(path):
            self.folder = path
            index_path = os.path.join(path, INDEX_NAME)
            if not os.path.exists(index_path):
                index_path = None
                self.files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
                if not self.files:
                    raise SafetensorsError(f"{path}: no {INDEX_NAME} and no .safetensors files")
        else:
            raise FileNotFoundError(f"no checkpoint at {path}")
        self.index_errors: list[str] = []
        if index_path is not None:
            try:
                with open(index_path) as f:
                    self.index = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise SafetensorsError(f"{os.path.basename(index_path)}: cannot read the index: {e}") from e
            wm = self.index.get("weight_map") if isinstance(self.index, dict) else None
            if not isinstance(wm, dict):
                raise SafetensorsError(f"{os.path.basename(index_path)}: no 'weight_map' object")
            self.weight_map: dict[str, str] | None = wm
            seen: dict[str, None] = {}
            for fname in wm.values():
                seen.setdefault(fname, None)
            self.files = list(seen)
        else:
            self.weight_map = None
        self._headers: dict[str, SafetensorsHeader] | None = None
        self.header_errors: dict[str, str] = {}     # file -> why its header cannot be read

    # -------------------------------------------------------------- headers
    @property
    def total_size(self) -> int | None:
        """``metadata.total_size`` of the index (None without an index)."""
        if self.index is None:
            return None
        ts = (self.index.get("metadata") or {}).get("total_size")
        return int(ts) if ts is not None else None

    def headers(self) -> dict[str, SafetensorsHeader]:
        """file name -> parsed header, for every file that exists and has a readable header."""
        if self._headers is None:
            self._headers = {}
            for fname in self.files:
                p = os.path.join(self.folder, fname)
                if not os.path.exists(p):
                    self.header_errors[fname] = f"{fname}: shard listed in the index does not exist"
                    continue
                try:
                    self._headers[fname] = read_header(p, validate=False)
                except SafetensorsError as e:
                    self.header_errors[fname] = str(e)
        return self._headers

    def infos(self) -> dict[str, TensorInfo]:
        """name -> header entry, over all readable shards (the index's shard wins for duplicates)."""
        out: dict[str, TensorInfo] = {}
        for fname, h in self.headers().items():
            for name, t in h.tensors.items():
                if name in out and self.weight_map is not None and self.weight_map.get(name) != fname:
                    continue
                out[name] = t
        return out

    def names(self) -> list[str]:
        if self.weight_map is not None:
            return list(self.weight_map)
        return list(self.infos())

    def __contains__(self, name: str) -> bool:
        return name in (self.weight_map if self.weight_map is not None else self.infos())

    def __len__(self) -> int:
        return len(self.names())

    def file_of(self, name: str) -> str:
        if self.weight_map is not None:
            if name not in self.weight_map:
                raise KeyError(f"{INDEX_NAME}: no tensor {name!r} in weight_map")
            return self.weight_map[name]
        info = self.infos().get(name)
        if info is None:
            raise KeyError(f"{self.folder}: no tensor {name!r}")
        return os.path.basename(info.file)

    def unreadable_names(self) -> set[str]:
        """Names the index assigns to shards whose header cannot be read (or that are missing)."""
        self.headers()
        if self.weight_map is None or not self.header_errors:
            return set()
        bad = set(self.header_errors)
        return {n for n, f in self.weight_map.items() if f in bad}

    def problems(self) -> tuple[list[str], list[str]]:
        """(errors, warnings) about the index and every header."""
        headers = self.headers()
        errors = list(self.index_errors) + list(self.header_errors.values())
        warnings: list[str] = []
        for h in headers.values():
            errors.extend(h.errors)
            warnings.extend(h.warnings)
        wm = self.weight_map
        if wm is not None:
            absent, stray, dup, moved = [], [], [], []
            seen: dict[str, str] = {}
            for fname, h in headers.items():
                for name in h.tensors:
                    if name in seen:
                        dup.append((name, seen[name], fname))
                    else:
                        seen[name] = fname
                    target = wm.get(name)
                    if target is None:
                        stray.append((name, fname))
                    elif target != fname:
                        moved.append((name, fname, target))
            for name, fname in wm.items():
                if fname in headers and name not in headers[fname].tensors:
                    absent.append(name)
            for n in absent[:50]:
                errors.append(f"{wm[n]}: the index maps tensor {n!r} to this file but its header lacks it")
            if len(absent) > 50:
                errors.append(f"... and {len(absent) - 50} more tensors the index maps to files that lack them")
            for n, f in stray[:50]:
                warnings.append(f"{f}: tensor {n!r} is in the file but not in the index's weight_map")
            if len(stray) > 50:
                warnings.append(f"... and {len(stray) - 50} more tensors missing from the weight_map")
            for n, f, target in moved[:50]:
                other = headers.get(target)
                if other is None or n not in other.tensors:       # else: a duplicate, see below
                    warnings.append(f"{f}: tensor {n!r} is in this file but the index maps it to {target}")
            for n, f1, f2 in dup[:50]:
                errors.append(f"tensor {n!r} is stored in several files: {f1}, {f2}")
            ts = self.total_size
            if ts is not None and not self.header_errors:
                got = sum(t.end - t.begin for h in headers.values() for t in h.tensors.values() if t.name in wm)
                if got != ts:
                    warnings.append(f"{INDEX_NAME}: metadata.total_size = {ts} but the shards hold {got} payload bytes")
        return errors, warnings

    # -------------------------------------------------------------- payloads
    def header_of(self, name: str) -> SafetensorsHeader:
        fname = self.file_of(name)
        h = self.headers().get(fname)
        if h is None:
            raise SafetensorsError(self.header_errors.get(fname, f"{fname}: unreadable"))
        return h

    def read(self, name: str, use_mmap: bool = True) -> torch.Tensor:
        """One tensor (memory-mapped by default), in its stored dtype."""
        return read_tensor(self.header_of(name), name, use_mmap=use_mmap)

    def items(self, names: Iterable[str] | None = None, use_mmap: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """Stream (name, tensor) shard by shard, in file order within each shard, so that the
        files are read sequentially.  ``names`` restricts (and may reorder shards, not tensors)."""
        wanted = None if names is None else set(names)
        for fname in self.files:
            h = self.headers().get(fname)
            if h is None:
                if wanted is None or (self.weight_map and any(self.weight_map.get(n) == fname for n in wanted)):
                    raise SafetensorsError(self.header_errors.get(fname, f"{fname}: unreadable"))
                continue
            for t in sorted(h.tensors.values(), key=lambda t: t.begin):
                if self.weight_map is not None and self.weight_map.get(t.name) != fname:
                    continue
                if wanted is not None and t.name not in wanted:
                    continue
                yield t.name, read_tensor(h, t.name, use_mmap=use_mmap)
