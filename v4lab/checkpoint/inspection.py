"""Header-only inspection of a checkpoint: :func:`inspect_checkpoint` reads ``config.json``, the
index and the safetensors headers (no payload byte) and compares every tensor with what the config
implies; :func:`verify_checkpoint` turns what it finds into one :class:`CheckpointError` naming
files and tensors, before a loader allocates anything."""
from __future__ import annotations

import json
import os
from collections import Counter

from ..config import V4Config
from ..safetensors_io import paused_gc
from .report import CheckpointError, CheckpointReport, TensorMismatch
from .schema import KINDS, LAYER_NAME_RE, detect_layout, expected_tensors, layer_part_kind, tensor_kind
from .shards import INDEX_NAME, ShardedCheckpoint

__all__ = ["inspect_checkpoint", "checkpoint_config", "verify_checkpoint"]


def _params_of(dtype: str, shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return 2 * n if dtype == "I8" else n


class _Structure:
    """Counts of the structural units (sinks, compressors, indexers, experts, ...) of the main
    layers and of the MTP block."""

    def __init__(self):
        self.sets = ({}, {})        # (main, mtp): key -> set of layer ids / (layer, expert) pairs
        self.counts = ({}, {})      # (main, mtp): key -> count

    def add(self, is_mtp: bool, layer: int, rest: str, kind: str, shape) -> None:
        sets, counts = self.sets[is_mtp], self.counts[is_mtp]
        sets.setdefault("layers", set()).add(layer)
        if kind == "routed_experts":
            if rest.startswith("ffn.experts."):
                e = rest.split(".", 3)[2]
                sets.setdefault("routed_experts", set()).add((layer, e))
            elif rest == "mlp.experts.gate_up_proj" and shape:
                counts["fused_experts"] = counts.get("fused_experts", 0) + shape[0]
        elif kind in ("compressor", "indexer", "shared_experts"):
            sets.setdefault(kind + "s" if kind != "shared_experts" else kind, set()).add(layer)
        elif rest in ("attn.attn_sink", "self_attn.sinks"):
            counts["attn_sink"] = counts.get("attn_sink", 0) + 1
        elif rest in ("ffn.gate.bias", "mlp.gate.e_score_correction_bias"):
            counts["gate_bias"] = counts.get("gate_bias", 0) + 1
        elif rest in ("ffn.gate.tid2eid", "mlp.gate.tid2eid"):
            counts["gate_tid2eid"] = counts.get("gate_tid2eid", 0) + 1

    def result(self, is_mtp: bool) -> dict[str, int]:
        out = {k: len(v) for k, v in self.sets[is_mtp].items()}
        out.update(self.counts[is_mtp])
        if "fused_experts" in out:
            out["routed_experts"] = out.get("routed_experts", 0) + out.pop("fused_experts")
        for k in ("layers", "attn_sink", "compressors", "indexers", "routed_experts", "shared_experts",
                  "gate_bias", "gate_tid2eid"):
            out.setdefault(k, 0)
        if is_mtp:
            out["blocks"] = out.pop("layers")
        return out


def inspect_checkpoint(
    path: str | os.PathLike,
    config: V4Config | dict | None = None,
    layout: str | None = None,
) -> CheckpointReport:
    """Inspect a checkpoint from its ``config.json``, index and safetensors headers only.

    ``path``: a checkpoint folder (index + shards, or ``model.safetensors``), an index file or a
    single ``.safetensors`` file.  ``config``: a :class:`V4Config` (or config dict) to check
    against; default: ``config.json`` next to the weights.  ``layout``: 'official' | 'hf'
    (default: detected from the names).

    Reports the layout, tensor counts / bytes / parameters by kind and dtype, the parameter totals
    (all, without MTP, activated per token), the layer structure (attention sinks, compressors,
    indexers, routed experts, router biases / hash tables), and every file error (unreadable
    header, offsets outside the file or overlapping, sizes that do not match dtype x shape,
    truncated shards, index entries pointing at the wrong file) and every missing, unexpected,
    misshapen or wrongly typed tensor.  No payload byte is read.
    """
    with paused_gc():
        return _inspect(path, config, layout)


def _inspect(path, config, layout) -> CheckpointReport:
    ck = ShardedCheckpoint(path)
    folder = ck.folder or "."
    cfg: V4Config | None = None
    config_error = None
    if isinstance(config, V4Config):
        cfg = config
    elif isinstance(config, dict):
        cfg = V4Config.from_hf(config)
    else:
        cpath = os.path.join(folder, "config.json")
        if os.path.exists(cpath):
            try:
                cfg = V4Config.from_hf(cpath)
            except (ValueError, TypeError, KeyError, json.JSONDecodeError) as e:
                config_error = f"config.json: cannot be read as a V4 config: {e}"
        else:
            config_error = f"no config.json in {folder}: tensors not checked against a config"

    infos = ck.infos()
    errors, warnings = ck.problems()
    unreadable = sorted(ck.unreadable_names())
    names = list(infos)
    if layout is None:
        layout = detect_layout(names if names else (ck.weight_map or {}))

    # ---------------------------------------------------------------- counts
    count_k: Counter = Counter()
    params_k: Counter = Counter()
    bytes_k: Counter = Counter()
    count_d: Counter = Counter()
    bytes_d: Counter = Counter()
    scale_n = scale_b = buffers = 0
    params_total = params_mtp = routed_main = embed = 0
    file_of: dict[str, str] = {}
    st = _Structure()
    int_dtypes = ("I64", "I32", "I16", "U64", "U32", "U16", "U8", "BOOL")
    for name, t in infos.items():
        m = LAYER_NAME_RE.match(name)
        if m is not None:
            rest = m.group(3)
            is_mtp = m.group(1) == "mtp"
            kind = layer_part_kind(rest)
            st.add(is_mtp, int(m.group(2)), rest, kind, t.shape)
            if is_mtp:
                kind = "mtp"
        else:
            kind = tensor_kind(name)
        nb = t.end - t.begin
        count_k[kind] += 1
        bytes_k[kind] += nb
        count_d[t.dtype] += 1
        bytes_d[t.dtype] += nb
        if name.endswith(".scale") and (name[:-6] + ".weight") in infos:
            scale_n += 1
            scale_b += nb
            continue
        if t.dtype in int_dtypes:
            buffers += 1
            continue
        p = _params_of(t.dtype, t.shape)
        params_k[kind] += p
        params_total += p
        if kind == "mtp":
            params_mtp += p
        elif kind == "routed_experts":
            routed_main += p
        elif name in ("embed.weight", "model.embed_tokens.weight"):
            embed += p
    base = {}
    for name, t in infos.items():
        f = base.get(t.file)
        if f is None:
            f = base[t.file] = os.path.basename(t.file)
        file_of[name] = f
    for fname in ck.header_errors:
        file_of.setdefault(fname, fname)
    if ck.weight_map is not None:
        for n in unreadable:
            file_of[n] = ck.weight_map[n]

    activated = activated_e = None
    if cfg is not None:
        main = params_total - params_mtp
        act_routed = routed_main * cfg.num_experts_per_tok / cfg.n_routed_experts
        activated_e = int(round(main - routed_main + act_routed))
        activated = activated_e - embed


    # ---------------------------------------------------------------- compare with the config
    missing: list[str] = []
    unexpected: list[str] = []
    misshapen: list[TensorMismatch] = []
    wrong_dtype: list[TensorMismatch] = []
    expected_count = None
    if cfg is not None and layout in ("official", "hf"):
        exp = expected_tensors(cfg, layout)
        expected_count = len(exp)
        skip = set(unreadable)
        missing = [n for n in exp if n not in infos and n not in skip]
        unexpected = [n for n in infos if n not in exp]
        floats = {"BF16", "F16", "F32", "F64"}
        for n, (edt, eshape) in exp.items():
            t = infos.get(n)
            if t is None:
                continue
            if t.shape != eshape:
                misshapen.append(TensorMismatch(n, file_of[n], (edt, tuple(eshape)), (t.dtype, tuple(t.shape))))
            # tid2eid: int64 (v4lab, transformers) or int32 (as DeepSeek's reference code declares it)
            if t.dtype != edt and not (layout == "hf" and edt in floats and t.dtype in floats) \
                    and not (edt == "I64" and t.dtype == "I32"):
                wrong_dtype.append(TensorMismatch(n, file_of[n], (edt, tuple(eshape)), (t.dtype, tuple(t.shape))))

    return CheckpointReport(
        path=os.fspath(path),
        layout=layout,
        config=cfg,
        config_error=config_error,
        schedule=cfg.schedule_string() if cfg else None,
        files=list(ck.files),
        n_tensors=len(infos),
        total_bytes=sum(t.nbytes for t in infos.values()),
        index_total_size=ck.total_size,
        count_by_kind={k: count_k[k] for k in KINDS if count_k[k]},
        params_by_kind={k: params_k[k] for k in KINDS if count_k[k]},
        bytes_by_kind={k: bytes_k[k] for k in KINDS if count_k[k]},
        count_by_dtype=dict(count_d),
        bytes_by_dtype=dict(bytes_d),
        params_total=params_total,
        params_mtp=params_mtp,
        params_activated=activated,
        params_activated_with_embedding=activated_e,
        scale_tensors=scale_n,
        scale_bytes=scale_b,
        buffer_tensors=buffers,
        structure=st.result(False),
        mtp_structure=st.result(True),
        expected_count=expected_count,
        missing=missing,
        unexpected=unexpected,
        misshapen=misshapen,
        wrong_dtype=wrong_dtype,
        unreadable=unreadable,
        errors=errors,
        warnings=warnings,
        file_of=file_of,
    )


_FLOATS = {"BF16", "F16", "F32", "F64"}


def checkpoint_config(source: str | os.PathLike | ShardedCheckpoint) -> V4Config:
    """The :class:`V4Config` of ``config.json`` next to the weights (either form: official keys or
    the ``transformers`` ones); :class:`CheckpointError` when it is absent or unreadable."""
    ck = source if isinstance(source, ShardedCheckpoint) else ShardedCheckpoint(source)
    cpath = os.path.join(ck.folder or ".", "config.json")
    if not os.path.exists(cpath):
        raise CheckpointError(f"{ck.folder or '.'}: no config.json next to the weights; pass cfg= explicitly")
    try:
        return V4Config.from_hf(cpath)
    except (ValueError, TypeError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"config.json: cannot be read as a DeepSeek-V4 config: {e}") from e


def _layout_hints(report: CheckpointReport, cfg: V4Config, source: str) -> list[str]:
    hints = []
    fp4_as_other = [m for m in report.wrong_dtype if m.found[0] == "I8" and ".experts." in m.name]
    other_as_fp4 = [m for m in report.wrong_dtype if m.expected[0] == "I8" and ".experts." in m.name]
    if fp4_as_other:
        hints.append(f"the routed experts are stored as packed FP4 (I8 + one ue8m0 scale per 32), but {source} "
                     f"says expert_dtype={cfg.expert_dtype!r}: set expert_dtype to 'fp4'")
    if other_as_fp4:
        hints.append(f"{source} says expert_dtype='fp4' but the routed experts are stored as "
                     f"{other_as_fp4[0].found[0]}: the config does not describe these files")
    if report.misshapen and not (fp4_as_other or other_as_fp4):
        c = cfg
        hints.append(
            f"{len(report.misshapen)} tensor(s) have other shapes than {source} implies (hidden_size={c.hidden_size}, "
            f"{c.num_hidden_layers} layers, {c.num_attention_heads} heads x {c.head_dim}, q_lora_rank={c.q_lora_rank}, "
            f"{c.n_routed_experts} experts of width {c.moe_intermediate_size}, vocab {c.vocab_size}): "
            "does the config belong to these weights?")
    return hints


def verify_checkpoint(
    path: str | os.PathLike,
    cfg: V4Config | None = None,
    strict: bool = True,
) -> CheckpointReport:
    """Check a checkpoint against its config from ``config.json``, the index and the safetensors
    headers only, and raise :class:`CheckpointError` on anything that would make loading crash or
    give a silently wrong model: unreadable or truncated shards, headers whose offsets lie
    (outside the file, overlapping, sizes that do not match dtype x shape), tensors the index
    places in files that lack them, tensors of the wrong shape (a ``config.json`` that does not
    match the weights, a ``.scale`` of the wrong shape) or of the wrong dtype (FP4 experts where
    the config says FP8, and vice versa), and -- with ``strict`` -- missing and unexpected
    tensors.  Without ``strict``, missing/unexpected tensors and float tensors stored in another
    float dtype are let through.  Returns the :class:`CheckpointReport`."""
    path = os.fspath(path)
    ck = ShardedCheckpoint(path)
    source = "config.json"
    if cfg is None:
        cfg = checkpoint_config(ck)
    elif not os.path.exists(os.path.join(ck.folder or ".", "config.json")):
        source = "the config"
    report = inspect_checkpoint(path, cfg)
    lines = list(report.errors)
    if report.layout not in ("official", "hf"):
        lines.append(f"{path}: no tensors found")
    where = INDEX_NAME if ck.index is not None else os.path.basename(os.path.normpath(ck.folder or path))
    for n in report.unreadable:
        lines.append(f"{report.file_of.get(n, '?')}: tensor {n!r} is in a file that cannot be read")
    lines += [str(m) for m in report.misshapen]
    for m in report.wrong_dtype:
        if not strict and m.found[0] in _FLOATS and m.expected[0] in _FLOATS:
            continue
        lines.append(str(m))
    if strict:
        exp = expected_tensors(cfg, report.layout) if report.layout in ("official", "hf") else {}
        for n in report.missing:
            dt, sh = exp[n]
            lines.append(f"{where}: tensor {n!r} is missing (the config implies {dt} {list(sh)})")
        for n in report.unexpected:
            lines.append(f"{report.file_of.get(n, '?')}: unexpected tensor {n!r} (not part of the {report.layout} "
                         f"layout of this config)")
    if lines:
        hints = _layout_hints(report, cfg, source)
        shown = lines[:20]
        more = [f"... and {len(lines) - 20} more"] if len(lines) > 20 else []
        raise CheckpointError(
            f"{path}: cannot load this checkpoint ({len(lines)} problem(s)):\n  - "
            + "\n  - ".join(hints + shown + more)
        )
    return report
