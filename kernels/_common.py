"""Shared plumbing for the Triton kernels: launching on CPU or GPU, validation, allocation.

Running on a CPU.  Triton decides at *decoration* time whether ``@triton.jit`` builds a GPU
kernel (``JITFunction``) or an interpreted one (``InterpretedFunction``), by reading
``TRITON_INTERPRET``; this holds for triton.language's own helpers too (``tl.zeros``,
``tl.sum``, ...), which are decorated when ``triton`` is first imported.  A process that imported
``triton`` before setting the variable could therefore not interpret kernels, and one that set
it could not compile them.  :func:`launch` removes the ordering trap: every wrapper launches
through it, and it picks the flavour from the tensors' device at *call* time (interpreted for
CPU tensors, compiled for CUDA tensors), converting our kernel and, for the duration of the
launch, triton.language's helpers when the import-time flavour does not fit.  Kernels in this
package call no ``@triton.jit`` functions of their own besides the kernel itself and use the
free-function forms (``tl.sum(x, 1)``, not ``x.sum(1)``), which is what makes this safe.

bf16 under the interpreter is silently wrong (numpy has no bf16; arithmetic runs on raw bits),
so wrappers upcast bf16 inputs to fp32 when they interpret (:func:`interpreter_safe`).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import types

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

LOG2E = 1.4426950408889634

_INTERPRETED: dict = {}
_COMPILED: dict = {}


def interpreting(device: torch.device) -> bool:
    """True when tensors on ``device`` must run through the Triton interpreter."""
    return torch.device(device).type == "cpu"


def _flavoured(obj, interpret: bool):
    """``obj`` converted to the wanted flavour, or None when it is not a Triton function or
    already has that flavour.  Conversions are cached per Python function."""
    if interpret and isinstance(obj, JITFunction):
        if obj.fn not in _INTERPRETED:
            _INTERPRETED[obj.fn] = InterpretedFunction(obj.fn)
        return _INTERPRETED[obj.fn]
    if not interpret and isinstance(obj, InterpretedFunction):
        if obj.fn not in _COMPILED:   # keep do_not_specialize & co. of the decorator
            _COMPILED[obj.fn] = JITFunction(obj.fn, **getattr(obj, "kwargs", {}))
        return _COMPILED[obj.fn]
    return None


def _stdlib_is(interpret: bool) -> bool:
    """Whether triton.language's own @jit helpers (tl.zeros, tl.sum, ...) already have the
    flavour wanted (they were decorated when triton was first imported)."""
    import triton.language.standard as std
    return isinstance(std.zeros, InterpretedFunction) == interpret


@contextlib.contextmanager
def triton_flavour(interpret: bool):
    """Temporarily give triton.language's own @jit helpers the wanted flavour.

    Needed when ``triton`` was imported with the other setting of ``TRITON_INTERPRET``: the
    interpreter cannot call compiled helpers and the compiler cannot inline interpreted ones.
    A no-op (one isinstance check) in the usual case.
    """
    if _stdlib_is(interpret):
        yield
        return
    saved = []
    env = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"  # knobs read it lazily
    for name, mod in list(sys.modules.items()):
        if not name.startswith("triton.language") or not isinstance(mod, types.ModuleType):
            continue
        for attr, val in list(vars(mod).items()):
            new = _flavoured(val, interpret)
            if new is not None:
                saved.append((mod, attr, val))
                setattr(mod, attr, new)
    try:
        yield
    finally:
        for mod, attr, val in reversed(saved):
            setattr(mod, attr, val)
        if env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = env


_MISSING = object()


@contextlib.contextmanager
def _keep_language_intact():
    """Undo whatever an interpreted launch leaves patched in triton.language.

    The interpreter patches triton.language (builtins, tensor methods, ``range``...) while a
    kernel runs; it restores them for the kernel itself but not after calls to interpreted
    helpers such as ``tl.zeros``.  In a process that only interprets this is harmless; here it
    would break a later GPU or ahead-of-time compile in the same process, so every
    interpreted launch restores the namespaces it may touch."""
    import triton.language as tl

    owners = [tl, tl.core, tl.math, tl.tensor, tl.dtype,
              getattr(tl.core, "tensor_descriptor_base", None)]
    snaps = [(o, dict(vars(o))) for o in owners if o is not None]
    try:
        yield
    finally:
        for owner, snap in snaps:
            current = vars(owner)
            for name in [n for n in current if n not in snap]:
                delattr(owner, name)
            for name, value in snap.items():
                if current.get(name, _MISSING) is not value:
                    setattr(owner, name, value)


def launch(kernel, grid, device: torch.device, *args, **kwargs) -> None:
    """Launch ``kernel[grid](*args, **kwargs)`` in the flavour that fits ``device``: through
    the interpreter for CPU tensors, compiled for CUDA tensors, whatever ``TRITON_INTERPRET``
    said at import time (see the module docstring)."""
    interpret = interpreting(device)
    fn = _flavoured(kernel, interpret) or kernel
    if interpret:
        with triton_flavour(True), _keep_language_intact():
            fn[grid](*args, **kwargs)
    else:
        with triton_flavour(False):
            fn[grid](*args, **kwargs)


def jit_function(kernel) -> JITFunction:
    """The compiled (GPU) flavour of ``kernel``, whatever ``TRITON_INTERPRET`` said at import."""
    return _flavoured(kernel, False) or kernel


def aot_compile(kernel, args: dict, arch: int = 90, **options):
    """Compile ``kernel`` ahead of time for ``sm_<arch>`` (no GPU needed; needs ptxas).

    ``args`` maps every kernel argument, in order, to an example of what a launch would pass:
    a pointer type string such as ``"*bf16"`` (assumed 16-byte aligned), a Python int (a stride
    or size: 1 becomes a constant and multiples of 16 get the divisibility hint, as the JIT
    does, except for arguments marked ``do_not_specialize``), a float (``fp32``), or
    ``("constexpr", value)``.  Returns the CompiledKernel.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = jit_function(kernel)
    missing = [n for n in fn.arg_names if n not in args]
    if missing:
        raise ValueError(f"aot_compile({fn.__name__}): no example for {missing}")
    sig, constexprs, attrs = {}, {}, {}
    frozen = {p.name for p in fn.params if getattr(p, "do_not_specialize", False)}
    for i, name in enumerate(fn.arg_names):
        v = args[name]
        if name in frozen and isinstance(v, int) and not isinstance(v, bool):
            sig[name] = "i32" if -2**31 <= v < 2**31 else "i64"   # as the JIT: no hints
            continue
        if isinstance(v, tuple) and v[0] == "constexpr":
            sig[name], constexprs[name] = "constexpr", v[1]
        elif isinstance(v, str):
            sig[name] = v
            if v.startswith("*"):
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool):
            sig[name], constexprs[name] = "constexpr", v
        elif isinstance(v, int):
            if v == 1:
                sig[name], constexprs[name] = "constexpr", 1
            else:
                sig[name] = "i32" if -2**31 <= v < 2**31 else "i64"
                if v % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"aot_compile: cannot describe argument {name}={v!r}")
    with triton_flavour(False):
        src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
        return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def triton_available() -> bool:
    """Whether the Triton kernels should be used here: a CUDA device, or ``TRITON_INTERPRET=1``.

    (The wrappers run CPU tensors through the interpreter in any case, but that is 400-2000x
    slower than PyTorch, so callers pick the reference path on CPU unless asked otherwise.)
    """
    if torch.cuda.is_available():
        return True
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def num_sms(device: torch.device) -> int:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: a few programs are plenty


# --------------------------------------------------------------------------------------------
# validation helpers: clear errors instead of Triton crashes
# --------------------------------------------------------------------------------------------

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_tensor(name: str, t, ndim: int, dtypes=FLOATS) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {t.dtype}; expected one of {[str(d) for d in dtypes]}")


def check_shape(name: str, t: torch.Tensor, shape) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_device(device: torch.device, **tensors) -> None:
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"Triton kernels run on CUDA tensors (or CPU tensors through the "
                         f"interpreter), got device {device}")
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")


def check_positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def check_scale(scale) -> float:
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


def interpreter_safe(device: torch.device, *tensors):
    """Upcast bf16 tensors to fp32 when interpreting (the interpreter gets bf16 wrong)."""
    if not interpreting(device):
        return tensors
    return tuple(t.float() if (t is not None and t.dtype == torch.bfloat16) else t for t in tensors)


def strides(t: torch.Tensor | None, ndim: int):
    """Strides of ``t`` (zeros for a missing optional tensor) as a flat tuple."""
    if t is None:
        return (0,) * ndim
    return tuple(t.stride())


# --------------------------------------------------------------------------------------------
# output allocation (poisonable, so tests catch tiles a kernel forgot to write)
# --------------------------------------------------------------------------------------------

POISON = False  # tests switch this on: kernel-written buffers then start as NaN / -7777


def empty(*shape, device, dtype) -> torch.Tensor:
    """``torch.empty`` for every buffer a kernel writes; NaN/-7777-filled when ``POISON``."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    if not POISON:
        return torch.empty(shape, device=device, dtype=dtype)
    fill = float("nan") if dtype.is_floating_point else -7777
    return torch.full(shape, fill, device=device, dtype=dtype)
