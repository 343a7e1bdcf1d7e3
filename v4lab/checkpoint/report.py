"""What an inspection finds: :class:`CheckpointReport` (counts, parameters, structure and every
problem, rendered as text), :class:`TensorMismatch` (a tensor of the wrong dtype or shape) and
:class:`CheckpointError` (a checkpoint that cannot be loaded as it is)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..config import V4Config
from .schema import KINDS, tensor_kind

__all__ = ["CheckpointError", "TensorMismatch", "CheckpointReport"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is.  The message lists the problems; each names
    the file (a shard, the index or ``config.json``) and the tensor at fault."""


@dataclass(frozen=True)
class TensorMismatch:
    """A tensor whose dtype or shape differs from what the config implies."""

    name: str
    file: str
    expected: tuple          # (dtype, shape)
    found: tuple             # (dtype, shape)

    def __str__(self) -> str:
        (ed, es), (fd, fs) = self.expected, self.found
        return f"{self.file}: tensor {self.name!r} is {fd} {list(fs)}, the config implies {ed} {list(es)}"


def _fmt_count(x: float | int | None) -> str:
    if x is None:
        return "-"
    for unit, v in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= v:
            return f"{x / v:.2f}{unit}"
    return f"{int(x)}"


def _fmt_bytes(x: int) -> str:
    for unit, v in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= v:
            return f"{x / v:.2f} {unit}"
    return f"{x} B"


@dataclass
class CheckpointReport:
    """What :func:`inspect_checkpoint` found.  ``text()`` (also ``str()``) renders it."""

    path: str
    layout: str
    config: V4Config | None
    config_error: str | None
    schedule: str | None
    files: list[str]
    n_tensors: int
    total_bytes: int
    index_total_size: int | None
    count_by_kind: dict[str, int]
    params_by_kind: dict[str, int]
    bytes_by_kind: dict[str, int]
    count_by_dtype: dict[str, int]
    bytes_by_dtype: dict[str, int]
    params_total: int
    params_mtp: int
    params_activated: int | None
    params_activated_with_embedding: int | None
    scale_tensors: int
    scale_bytes: int
    buffer_tensors: int
    structure: dict[str, int]
    mtp_structure: dict[str, int]
    expected_count: int | None
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    misshapen: list[TensorMismatch] = field(default_factory=list)
    wrong_dtype: list[TensorMismatch] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    file_of: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def params_main(self) -> int:
        """Parameters without the MTP block."""
        return self.params_total - self.params_mtp

    @property
    def ok(self) -> bool:
        """No file errors and every tensor present with the dtype and shape the config implies."""
        return not (self.errors or self.missing or self.unexpected or self.misshapen
                    or self.wrong_dtype or self.unreadable or self.config_error)

    def problems(self) -> list[str]:
        """Every problem as one line naming the file (where there is one) and the tensor."""
        out = list(self.errors)
        if self.config_error:
            out.append(self.config_error)
        out += [f"tensor {n!r} ({tensor_kind(n)}) is missing" for n in self.missing]
        out += [f"{self.file_of.get(n, '?')}: unexpected tensor {n!r}" for n in self.unexpected]
        out += [str(m) for m in self.misshapen]
        out += [str(m) for m in self.wrong_dtype]
        out += [f"{self.file_of.get(n, '?')}: tensor {n!r} is in a file that cannot be read" for n in self.unreadable]
        return out

    # ---------------------------------------------------------------- rendering
    def text(self, max_items: int = 8) -> str:
        L = []
        cfg = self.config
        quant = "FP8/FP4 weights + ue8m0 scales" if self.scale_tensors else "unquantised"
        layout = {"official": f"official (reference names; {quant})",
                  "hf": "transformers (model.* names, fused experts)"}.get(self.layout, self.layout)
        L.append(f"DeepSeek-V4 checkpoint: {self.path}")
        size = f"{_fmt_bytes(self.total_bytes)} of tensors"
        if self.index_total_size is not None:
            same = "matches" if self.index_total_size == self.total_bytes else "DIFFERS"
            size += f" (index total_size {self.index_total_size:,}: {same})"
        L.append(f"  layout   {layout}")
        L.append(f"  files    {len(self.files)} file(s), {self.n_tensors:,} tensors, {size}")
        if cfg is not None:
            L.append(
                f"  config   d={cfg.hidden_size}, {cfg.num_hidden_layers} layers"
                f"{' + 1 MTP block' if cfg.num_nextn_predict_layers else ''}, {cfg.num_attention_heads} heads x "
                f"{cfg.head_dim}, q_lora {cfg.q_lora_rank}, {cfg.n_routed_experts} experts "
                f"({cfg.num_experts_per_tok} active, width {cfg.moe_intermediate_size}), vocab {cfg.vocab_size:,}, "
                f"experts {cfg.expert_dtype or 'unquantised'}"
            )
            kinds = Counter(cfg.layer_types)
            L.append(
                f"  schedule {self.schedule}   ({kinds['window']} window-only, {kinds['csa']} CSA, {kinds['hca']} HCA;"
                f" S = window, C = CSA, H = HCA, after | the MTP block)"
            )
        elif self.config_error:
            L.append(f"  config   {self.config_error}")
        act = ""
        if self.params_activated is not None:
            act = (f"; activated per token {_fmt_count(self.params_activated)} "
                   f"({_fmt_count(self.params_activated_with_embedding)} with the embedding)")
        L.append(
            f"  params   {_fmt_count(self.params_total)} in all = {_fmt_count(self.params_main)} main + "
            f"{_fmt_count(self.params_mtp)} MTP{act}"
        )
        L.append("           (packed FP4 counts 2 parameters per byte; .scale tensors and tid2eid are not parameters)")
        s = self.structure
        L.append(
            f"  main     {s.get('layers', 0)} layers, {s.get('attn_sink', 0)} attn_sink, "
            f"{s.get('compressors', 0)} compressors, {s.get('indexers', 0)} indexers, "
            f"{s.get('routed_experts', 0):,} routed experts, {s.get('shared_experts', 0)} shared experts, "
            f"{s.get('gate_bias', 0)} gate.bias, {s.get('gate_tid2eid', 0)} gate.tid2eid"
        )
        if self.mtp_structure.get("blocks"):
            m = self.mtp_structure
            L.append(
                f"  MTP      {m['blocks']} block(s): {m.get('attn_sink', 0)} attn_sink, {m.get('compressors', 0)} compressors, "
                f"{m.get('routed_experts', 0):,} routed experts, {m.get('gate_bias', 0)} gate.bias"
            )
        L.append("  by kind                 tensors      params       bytes")
        for k in KINDS:
            if self.count_by_kind.get(k):
                L.append(f"    {k:<18} {self.count_by_kind[k]:>10,} {_fmt_count(self.params_by_kind.get(k, 0)):>11} "
                         f"{_fmt_bytes(self.bytes_by_kind.get(k, 0)):>11}")
        L.append("  by dtype                tensors       bytes")
        for dt in sorted(self.count_by_dtype, key=lambda d: -self.bytes_by_dtype.get(d, 0)):
            L.append(f"    {dt:<18} {self.count_by_dtype[dt]:>10,} {_fmt_bytes(self.bytes_by_dtype.get(dt, 0)):>11}")
        if self.scale_tensors:
            L.append(f"  scales   {self.scale_tensors:,} ue8m0 .scale tensors, {_fmt_bytes(self.scale_bytes)}")
        if self.expected_count is not None:
            verdict = "OK" if self.ok else "PROBLEMS"
            L.append(f"  check    {self.expected_count:,} tensors expected from the config: {verdict}")
        groups = [
            ("file errors", self.errors),
            ("missing", [f"{n}  ({tensor_kind(n)})" for n in self.missing]),
            ("unexpected", [f"{self.file_of.get(n, '?')}: {n}" for n in self.unexpected]),
            ("wrong shape", [str(m) for m in self.misshapen]),
            ("wrong dtype", [str(m) for m in self.wrong_dtype]),
            ("in unreadable files", self.unreadable),
            ("warnings", self.warnings),
        ]
        for title, items in groups:
            if not items:
                continue
            L.append(f"  {title} ({len(items):,}):")
            for it in items[:max_items]:
                L.append(f"    - {it}")
            if len(items) > max_items:
                L.append(f"    ... and {len(items) - max_items:,} more")
        return "\n".join(L)

    def __str__(self) -> str:
        return self.text()

    def _repr_pretty_(self, p, cycle):  # IPython / notebooks show the text form
        p.text(self.text())
