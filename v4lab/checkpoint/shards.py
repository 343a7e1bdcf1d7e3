"""Sharded checkpoints: a folder of safetensors shards and ``model.safetensors.index.json``.

:class:`ShardedCheckpoint` reads the index and the shards' headers (through
:func:`v4lab.safetensors_io.read_header`, i.e. the ``safetensors`` library) lazily and checks
them against each other: tensors the index places in files that lack them, tensors missing from
the index, tensors stored twice, ``metadata.total_size``.  :func:`write_index` and
:func:`write_sharded_header_only` write an index and a header-only checkpoint (sparse shards with
the real names, shapes and dtypes, for tests and for inspecting a layout without the download).
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Iterator, Mapping

import torch

from ..safetensors_io import (
    SafetensorsError,
    SafetensorsHeader,
    TensorInfo,
    paused_gc,
    read_header,
    read_tensor,
    tensor_nbytes,
    write_header_only,
)

__all__ = ["INDEX_NAME", "SINGLE_NAME", "ShardedCheckpoint", "shard_file_name", "plan_shards", "write_index",
           "write_sharded_header_only"]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def shard_file_name(i: int, n: int) -> str:
    """``model-00001-of-00046.safetensors`` (1-based)."""
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def plan_shards(tensors: Mapping[str, tuple[str, tuple]], max_shard_bytes: int) -> list[list[str]]:
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


def write_index(folder: str | os.PathLike, weight_map: Mapping[str, str], total_size: int,
                extra_metadata: dict | None = None) -> str:
    """Write ``model.safetensors.index.json``; returns its path."""
    meta = {"total_size": int(total_size), **(extra_metadata or {})}
    path = os.path.join(os.fspath(folder), INDEX_NAME)
    with open(path, "w") as f:
        json.dump({"metadata": meta, "weight_map": dict(weight_map)}, f, indent=1)
    return path


def write_sharded_header_only(folder: str | os.PathLike, tensors: Mapping[str, tuple[str, tuple]],
                              max_shard_bytes: int = 4 * 1024**3, n_shards: int | None = None) -> dict:
    """Write a sharded header-only checkpoint (sparse shards + index) into ``folder``.  Either
    ``max_shard_bytes`` or ``n_shards`` (about equal payload per shard) sets the split.  Returns
    the index dict."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    with paused_gc():
        total = sum(tensor_nbytes(d, s) for d, s in tensors.values())
        groups = _split_even(tensors, n_shards, total) if n_shards is not None else plan_shards(tensors, max_shard_bytes)
        weight_map = {}
        for i, names in enumerate(groups, 1):
            fname = shard_file_name(i, len(groups))
            write_header_only(os.path.join(folder, fname), {k: tensors[k] for k in names})
            weight_map.update((k, fname) for k in names)
    write_index(folder, weight_map, total)
    return {"metadata": {"total_size": total}, "weight_map": weight_map}


class ShardedCheckpoint:
    """A checkpoint folder (``model.safetensors.index.json`` + shards, or one or more
    ``*.safetensors`` files without an index) or a single ``.safetensors`` file.

    Headers are read lazily and only once; nothing reads a payload until :meth:`read` or
    :meth:`items` is called.  :meth:`problems` lists everything wrong with the index and the
    headers (each message names the file and the tensor)."""

    def __init__(self, path: str | os.PathLike):
        path = os.fspath(path)
        self.index: dict | None = None
        index_path = None
        if os.path.isfile(path) and path.endswith(".json"):
            self.folder, index_path = os.path.dirname(path), path
        elif os.path.isfile(path):
            self.folder, self.files = os.path.dirname(path), [os.path.basename(path)]
        elif os.path.isdir(path):
            self.folder = path
            if os.path.exists(os.path.join(path, INDEX_NAME)):
                index_path = os.path.join(path, INDEX_NAME)
            else:
                self.files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
                if not self.files:
                    raise SafetensorsError(f"{path}: no {INDEX_NAME} and no .safetensors files")
        else:
            raise FileNotFoundError(f"no checkpoint at {path}")
        self.weight_map: dict[str, str] | None = None
        if index_path is not None:
            try:
                with open(index_path) as f:
                    self.index = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise SafetensorsError(f"{os.path.basename(index_path)}: cannot read the index: {e}") from e
            wm = self.index.get("weight_map") if isinstance(self.index, dict) else None
            if not isinstance(wm, dict):
                raise SafetensorsError(f"{os.path.basename(index_path)}: no 'weight_map' object")
            self.weight_map = wm
            self.files = list(dict.fromkeys(wm.values()))
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
        """file name -> header, for every file that exists and has a readable header."""
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
        return list(self.weight_map) if self.weight_map is not None else list(self.infos())

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
        return {n for n, f in self.weight_map.items() if f in self.header_errors}

    def problems(self) -> tuple[list[str], list[str]]:
        """(errors, warnings) about the index and every header."""
        headers = self.headers()
        errors = list(self.header_errors.values())
        warnings: list[str] = []
        for h in headers.values():
            errors.extend(h.errors)
            warnings.extend(h.warnings)
        wm = self.weight_map
        if wm is None:
            return errors, warnings
        stray, dup, moved, seen = [], [], [], {}
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
        absent = [n for n, f in wm.items() if f in headers and n not in headers[f].tensors]
        errors += [f"{wm[n]}: the index maps tensor {n!r} to this file but its header lacks it" for n in absent[:50]]
        if len(absent) > 50:
            errors.append(f"... and {len(absent) - 50} more tensors the index maps to files that lack them")
        warnings += [f"{f}: tensor {n!r} is in the file but not in the index's weight_map" for n, f in stray[:50]]
        if len(stray) > 50:
            warnings.append(f"... and {len(stray) - 50} more tensors missing from the weight_map")
        for n, f, target in moved[:50]:
            other = headers.get(target)
            if other is None or n not in other.tensors:       # else: a duplicate, see below
                warnings.append(f"{f}: tensor {n!r} is in this file but the index maps it to {target}")
        errors += [f"tensor {n!r} is stored in several files: {f1}, {f2}" for n, f1, f2 in dup[:50]]
        ts = self.total_size
        if ts is not None and not self.header_errors:
            got = sum(t.nbytes for h in headers.values() for t in h.tensors.values() if t.name in wm)
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
        """Stream (name, tensor) shard by shard, in storage order within each shard, so that the
        files are read sequentially.  ``names`` restricts (and may reorder shards, not tensors)."""
        wanted = None if names is None else set(names)
        for fname in self.files:
            h = self.headers().get(fname)
            if h is None:
                if wanted is None or (self.weight_map and any(self.weight_map.get(n) == fname for n in wanted)):
                    raise SafetensorsError(self.header_errors.get(fname, f"{fname}: unreadable"))
                continue
            for t in h.tensors.values():
                if self.weight_map is not None and self.weight_map.get(t.name) != fname:
                    continue
                if wanted is None or t.name in wanted:
                    yield t.name, read_tensor(h, t.name, use_mmap=use_mmap)
