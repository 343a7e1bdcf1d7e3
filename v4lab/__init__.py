"""v4lab: build, see and run DeepSeek-V4's long-context attention.

The heavy pieces are imported lazily so that ``import v4lab`` stays fast.
"""
from .config import V4Config

__version__ = "0.1.0"

_LAZY = {
    "V4Model": "v4lab.model",
    "from_transformers": "v4lab.convert",
    "count_parameters": "v4lab.params",
    "generate": "v4lab.generation",
    "inspect_checkpoint": "v4lab.checkpoint",
    "load_checkpoint": "v4lab.checkpoint",
    "save_checkpoint": "v4lab.checkpoint",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'v4lab' has no attribute {name!r}")


__all__ = ["V4Config", *_LAZY]
