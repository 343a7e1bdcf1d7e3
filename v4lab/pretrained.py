"""The shipped flash-mini weights (``data/flash-mini/``), trained on a 2-core CPU.

``load_flash_mini()`` checks the sha256 recorded in ``data/flash-mini/SHA256SUMS`` and returns
the model in eval mode.  See ``data/flash-mini/README.md`` for the command, log and figures.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from .data import data_dir

WEIGHTS_SUBDIR = "flash-mini"


def weights_dir() -> Path:
    return data_dir() / WEIGHTS_SUBDIR


def verify_weights(path: Path | None = None) -> dict:
    """Compare every file listed in SHA256SUMS with its sha256; raise on a mismatch."""
    path = Path(path or weights_dir())
    sums = path / "SHA256SUMS"
    if not sums.exists():
        raise FileNotFoundError(f"{sums} is missing: the shipped flash-mini weights are not in this checkout")
    out = {}
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        name = name.lstrip("*")
        h = hashlib.sha256((path / name).read_bytes()).hexdigest()
        if h != digest:
            raise ValueError(f"{path / name}: sha256 {h} does not match the recorded {digest}")
        out[name] = h
    return out


def load_flash_mini(numerics: str = "reference", dtype=torch.float32, verify: bool = True, threads: int | None = None):
    """The trained flash-mini model (eval mode, no gradients needed)."""
    from .checkpoint import load_checkpoint

    path = weights_dir()
    if verify:
        verify_weights(path)
    if threads:
        torch.set_num_threads(threads)
    model = load_checkpoint(str(path), dtype=dtype, numerics=numerics)
    return model.eval().requires_grad_(False)


def has_weights() -> bool:
    return (weights_dir() / "SHA256SUMS").exists() and not os.environ.get("V4LAB_NO_WEIGHTS")
