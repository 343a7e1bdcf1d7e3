"""v4lab.kernels: Triton kernels for DeepSeek-V4's long-context attention, with references.

Two backends with identical signatures (batch-first, fp32 compute):

=========================  ===================================================================
``compress_pool``          compressor pooling of complete blocks (CSA overlapping / HCA)
``compress_pool_decode``   pooling of the block a decode step just completed
``indexer_scores``         Lightning Indexer scores with causal validity, [B, S, N] fp32
``indexer_topk``           deterministic top-k picks, [B, S, min(topk, N)] int64, -1 = none
``sparse_attention``       attention over gathered shared-KV rows plus a per-head sink
``sparse_attention_decode`` split-K variant for small S and long index lists
``hca_attention``          dense window + compressed attention of HCA layers
``attention``              a layer's attention (window + CSA picks / HCA entries + sink), the
                           op ``v4lab.attention.Attention`` calls on either backend
=========================  ===================================================================

Usage::

    from v4lab.kernels import reference as ref          # plain PyTorch: the spec, any device
    from v4lab import kernels as K                      # Triton wrappers
    o = (K if K.triton_available() else ref).sparse_attention(q, kv, idx, sink, scale)

or ``ops = kernels.backend("auto")``.  The Triton wrappers take CUDA tensors, and CPU tensors
through the Triton interpreter (slow; for tests), whatever ``TRITON_INTERPRET`` was when this
package was imported.  Without a Triton install only the references are usable.
"""
from __future__ import annotations

import os
import types

from . import reference

__all__ = [
    "reference",
    "backend",
    "triton_available",
    "compress_pool",
    "compress_pool_decode",
    "indexer_scores",
    "indexer_topk",
    "sparse_attention",
    "sparse_attention_decode",
    "hca_attention",
    "attention",
    "resolve",
    "OPS",
]

OPS = (
    "compress_pool",
    "compress_pool_decode",
    "indexer_scores",
    "indexer_topk",
    "sparse_attention",
    "sparse_attention_decode",
    "hca_attention",
    "attention",
)

try:
    import triton  # noqa: F401
except ImportError:  # e.g. macOS or Windows: references only
    _TRITON_ERROR = "Triton is not installed; use v4lab.kernels.reference instead"

    def triton_available() -> bool:
        return False

    def _missing(name):
        def fn(*args, **kwargs):
            raise RuntimeError(f"{name}: {_TRITON_ERROR}")
        fn.__name__ = name
        return fn

    for _name in OPS:
        globals()[_name] = _missing(_name)
else:
    _TRITON_ERROR = None
    from ._common import triton_available
    from .compressor import compress_pool, compress_pool_decode
    from .hca_attention import hca_attention
    from .indexer import indexer_scores, indexer_topk
    from .layer import attention
    from .sparse_attention import sparse_attention, sparse_attention_decode


def resolve(name: str = "auto", device=None) -> str:
    """The backend a name stands for, ``"torch"`` or ``"triton"``: the one switch, used by
    :func:`backend` and by ``V4Model(backend=...)``.

    ``"auto"`` is ``V4LAB_KERNELS`` (``torch`` / ``triton``) when that is set, else Triton for a
    CUDA ``device`` (or, with ``device=None``, when a CUDA device exists) and torch elsewhere: the
    CPU interpreter (``TRITON_INTERPRET=1``) is for tests and is only used when asked for by name.
    """
    if name == "auto":
        name = os.environ.get("V4LAB_KERNELS", "auto")
    if name == "auto":
        import torch

        cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
        name = "triton" if cuda and _TRITON_ERROR is None else "torch"
    if name in ("torch", "reference"):
        return "torch"
    if name == "triton":
        if _TRITON_ERROR:
            raise RuntimeError(_TRITON_ERROR)
        return "triton"
    raise ValueError(f"unknown kernel backend {name!r}; expected 'auto', 'torch' or 'triton'")


_TRITON_OPS = None


def backend(name: str = "auto"):
    """The set of ops to call: ``"torch"`` (the references), ``"triton"`` or ``"auto"`` (see
    :func:`resolve`)."""
    global _TRITON_OPS
    if resolve(name) == "torch":
        return reference
    if _TRITON_OPS is None:
        _TRITON_OPS = types.SimpleNamespace(**{op: globals()[op] for op in OPS})
    return _TRITON_OPS
