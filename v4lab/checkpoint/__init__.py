"""DeepSeek-V4 checkpoints: what a config implies, header-only inspection, streamed loading.

Two layouts exist (spec section 8):

* **official** -- the shipped ``deepseek-ai/DeepSeek-V4-{Flash,Pro}`` files: reference module
  names without a ``model.`` prefix (``layers.3.attn.wq_a.weight``), FP8 e4m3 linear weights with
  a ue8m0 ``.scale`` per 128 x 128 block, routed experts as packed FP4 (int8 [N, K/2]) with a ue8m0
  scale per 32, everything else BF16/F32, ``tid2eid`` int64 (int32, as DeepSeek's reference code
  declares it, loads too), and the MTP block ``mtp.0.*``.
* **hf** -- what ``transformers`` (``DeepseekV4ForCausalLM``) saves: ``model.layers.3.self_attn.
  q_a_proj.weight`` ..., unquantised, routed experts fused per layer
  (``mlp.experts.gate_up_proj`` [E, 2I, d] with the gate rows first, ``down_proj`` [E, d, I]),
  and no MTP block.

:func:`expected_tensors` lists every tensor a :class:`~v4lab.config.V4Config` implies in either
layout; :func:`inspect_checkpoint` reads only ``config.json``, the index and the safetensors
headers and compares, and :func:`verify_checkpoint` turns what it finds into one
:class:`CheckpointError` naming files and tensors.  The model's ``state_dict()`` uses the
official names without the ``.scale`` tensors (weights dequantised), see
:func:`model_tensor_names`.

Loading and saving whole models: :func:`load_checkpoint` (either layout, FP8/FP4 dequantised on
the way, or routed experts kept packed in :class:`PackedFP4Linear`), :func:`save_checkpoint`
(official FP8/FP4 or ``transformers`` layout).  :class:`CheckpointReader` reads single tensors by
model name from memory-mapped shards; ``v4lab.streaming`` builds on it to run models larger than
memory one layer at a time, or to place them with ``accelerate``.

The package, by what a reader looks for:

* :mod:`~v4lab.checkpoint.schema` -- what a config implies: the storage format of every tensor
  (the tensors themselves come from the model, :mod:`v4lab.params`), the official and
  ``transformers`` names, tensor kinds, layouts;
* :mod:`~v4lab.checkpoint.shards` -- a folder of shards and its index;
* :mod:`~v4lab.checkpoint.report` / :mod:`~v4lab.checkpoint.inspection` -- the header-only report
  and the checks before loading;
* :mod:`~v4lab.checkpoint.reading` / :mod:`~v4lab.checkpoint.writing` -- tensors in and out;
* :mod:`~v4lab.checkpoint.models` -- whole models: skeleton, load, save.

Packed FP4 experts (:class:`PackedFP4`, :class:`PackedFP4Linear`, :func:`pack_experts`) live beside
the other codecs in :mod:`v4lab.packed_experts` and are importable from here too.
"""
from __future__ import annotations

from ..packed_experts import PackedFP4, PackedFP4Linear, pack_experts
from .inspection import checkpoint_config, inspect_checkpoint, verify_checkpoint
from .models import EXPERT_MODES, check_packable, load_checkpoint, model_skeleton, save_checkpoint
from .reading import CheckpointReader, iter_model_tensors
from .report import CheckpointError, CheckpointReport, TensorMismatch
from .schema import (
    KINDS,
    checkpoint_schema,
    detect_layout,
    expected_tensors,
    hf_to_official_name,
    layer_schema,
    model_tensor_names,
    official_to_hf_name,
    tensor_kind,
)
from .writing import iter_checkpoint_tensors, model_state_items, write_checkpoint, write_synthetic_checkpoint

__all__ = [
    "KINDS",
    "expected_tensors",
    "model_tensor_names",
    "checkpoint_schema",
    "layer_schema",
    "official_to_hf_name",
    "hf_to_official_name",
    "tensor_kind",
    "detect_layout",
    "TensorMismatch",
    "CheckpointReport",
    "inspect_checkpoint",
    "CheckpointError",
    "checkpoint_config",
    "verify_checkpoint",
    "CheckpointReader",
    "iter_model_tensors",
    "iter_checkpoint_tensors",
    "model_state_items",
    "PackedFP4",
    "PackedFP4Linear",
    "pack_experts",
    "EXPERT_MODES",
    "check_packable",
    "model_skeleton",
    "write_checkpoint",
    "write_synthetic_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]
