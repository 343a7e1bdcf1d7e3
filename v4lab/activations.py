"""The element-wise functions a config may name: ``hidden_act`` (the gate of every SwiGLU-style
expert, ``w2(act(min(w1 x, L)) * clamp(w3 x, -L, L))``) and ``scoring_func`` (the router's score
``s = f(x W^T)``, whose top-k picks the experts and whose values, renormalised, weight them).

V4 itself uses ``silu`` and ``sqrtsoftplus``.  The other names are those ``transformers`` accepts
for the same fields (its ``ACT2FN`` table), each written here from its formula, so that every
config ``transformers`` can build, v4lab can build too.  ``prelu`` and ``xielu`` are refused by
name: they carry learned parameters that no V4 checkpoint holds.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_C = math.sqrt(2.0 / math.pi)


def _tanh_gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(_C * (x + 0.044715 * x.pow(3))))


ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_python": F.gelu,
    "gelu_10": lambda x: F.gelu(x).clamp(-10.0, 10.0),
    "gelu_new": _tanh_gelu,
    "gelu_accurate": _tanh_gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_python_tanh": _tanh_gelu,
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,
    "hardswish": F.hardswish,
    "mish": F.mish,
    "laplace": lambda x: 0.5 * (1.0 + torch.erf((x - 0.707107) / (0.282095 * math.sqrt(2.0)))),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "linear": lambda x: x,
    "sqrtsoftplus": lambda x: F.softplus(x).sqrt(),
}

# the router takes any element-wise score; V4 uses sqrt(softplus)
SCORE_FUNCTIONS = ACTIVATIONS

WITH_PARAMETERS = ("prelu", "xielu")


def activation(name: str):
    """The function called ``name`` (a KeyError naming the known ones otherwise)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        extra = " (it has learned parameters, which no V4 checkpoint holds)" if name in WITH_PARAMETERS else ""
        raise KeyError(f"unknown activation {name!r}{extra}; known: {sorted(ACTIVATIONS)}") from None
