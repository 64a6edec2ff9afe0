"""Check a (pruned) module against onnxruntime, and export/benchmark it as ONNX.

Export prefers the legacy TorchScript exporter (``dynamo=False``, fast) and falls
back to the dynamo exporter (``dynamo=True``) if the legacy one raises. Every
failure to export, load or run the model surfaces as ``ValidationError``.

An exported model serves: its inputs and outputs are named (inputs after the
model's forward arguments, i.e. a GraphModule's placeholders; outputs ``output`` or
``output_0``, ``output_1`` ...), and by default dim 0 of every input and output that
follows the batch size is a dynamic ``batch`` axis. A dynamic export is kept only if
onnxruntime agrees with torch at the example batch size and at one more; otherwise
(a batch size baked into the model, an exporter that cannot express it) the model is
exported with fixed shapes and ``ValidationReport.note`` says why.

Outputs that are not finite (NaN/inf) are never agreement: torch producing them on
the example inputs is a ``NonFiniteOutputError``, onnxruntime producing them where
torch does not is a mismatch.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write, check_output_path
from .errors import InputError, NonFiniteOutputError, ValidationError
from .onnx_export import EXPORTERS, Exported, ExportSpec, describe, export, io_names
from .tensors import module_device
from .report import _as_tuple, eval_mode

__all__ = ["NonFiniteOutputError", "ValidationReport", "batch_variant", "non_finite", "ort_latency",
           "restate_non_finite", "save_onnx", "validate"]

_TINY = 1e-12
_INF = float("inf")


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of :func:`validate` (errors and timings; ``onnx_bytes`` only on request).

    ``batch_sizes`` are the batch sizes onnxruntime was checked at (two when the export has
    a dynamic batch axis, ``dynamic_batch``); ``note`` says why a dynamic batch was asked for
    but the export has fixed shapes.
    """

    ok: bool
    max_abs: float
    max_rel: float
    tolerance: float
    exporter: str
    export_seconds: float
    run_seconds: float
    opset: int = 0
    onnx_bytes: bytes | None = field(default=None, repr=False)
    dynamic_batch: bool = False
    batch_sizes: tuple[int, ...] = ()
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    note: str = ""

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "MISMATCH"
        sizes = ", ".join(map(str, self.batch_sizes))
        batch = f"dynamic (checked at {sizes})" if self.dynamic_batch else f"fixed ({sizes})" if sizes else "fixed"
        note = f" [{self.note}]" if self.note else ""
        return (
            f"onnx {verdict}: max_abs={self.max_abs:.3g} max_rel={self.max_rel:.3g} "
            f"tol={self.tolerance:.3g} exporter={self.exporter} opset={self.opset} batch={batch} "
            f"export={self.export_seconds:.2f}s run={self.run_seconds * 1e3:.1f}ms{note}"
        )


@dataclass(frozen=True)
class _Case:
    """Inputs and the torch outputs they give."""

    args: tuple
    refs: list[torch.Tensor]

    @property
    def batch(self) -> int:
        return next((int(a.shape[0]) for a in self.args if isinstance(a, torch.Tensor) and a.dim()), 0)


@dataclass(frozen=True)
class _Checked:
    """One export run in onnxruntime on every case: worst errors, output scale, first run time."""

    exported: Exported
    errors: list[tuple[float, float, float]]  # (max_abs, max_rel, scale) per case
    run_seconds: float

    def worst(self) -> tuple[float, float, float]:
        return tuple(max(e[k] for e in self.errors) for k in range(3))  # type: ignore[return-value]


# --------------------------------------------------------------------------- torch side and batch sizes


def _reference(module: torch.nn.Module, args: tuple) -> list[torch.Tensor]:
    """The module's output tensors on ``args`` (eval mode, no grad), flattened."""
    with eval_mode(module), torch.no_grad():
        return flatten_outputs(module(*args))


def non_finite(outputs: Sequence[torch.Tensor]) -> str:
    """Where ``outputs`` hold NaN/inf, in words ("" when every value is finite)."""
    for i, out in enumerate(outputs):
        bad = ~torch.isfinite(out.detach()) if out.is_floating_point() or out.is_complex() else None
        if bad is not None and bool(bad.any()):
            return f"output {i}: {int(bad.sum())} of {out.numel()} values are NaN/inf"
    return ""


def _require_finite(refs: list[torch.Tensor]) -> None:
    """``NonFiniteOutputError`` when torch's outputs on the example inputs hold NaN/inf."""
    where = non_finite(refs)
    if where:
        raise NonFiniteOutputError(f"the model produces NaN/inf on the example inputs ({where}); NaN/inf are never "
                                   f"agreement: check the model's weights and the inputs", where)


def restate_non_finite(error: NonFiniteOutputError, original: torch.nn.Module | None,
                       example_inputs: tuple) -> NonFiniteOutputError:
    """``error`` (raised for a pruned model) restated after running ``original``, the model before
    pruning, on the same inputs: "the model already produces NaN/inf ..." when it does too, else
    that pruning introduced them. ``error`` itself when there is no original to run."""
    if original is None:
        return error
    try:
        before = non_finite(_reference(original, _as_tuple(example_inputs)))
    except Exception:  # noqa: BLE001 - the original cannot tell us more
        return error
    if before:
        return NonFiniteOutputError(f"the model already produces NaN/inf on the example inputs, before pruning "
                                    f"({before}); check its weights and the inputs", before)
    return NonFiniteOutputError(f"the pruned model produces NaN/inf on the example inputs ({error.where}) although "
                                f"the model before pruning does not; please report this fxprune bug", error.where)


def _batch_inputs(args: tuple) -> tuple[tuple[int, ...], int]:
    """Positions of the inputs whose dim 0 is the batch size (that of the first tensor input with a dim), and it."""
    batch = _Case(args, []).batch
    if not batch:
        return (), 0
    return tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == batch), batch


def batch_variant(args: tuple, positions: Sequence[int], size: int, seed: int = 0) -> tuple:
    """``args`` with the inputs at ``positions`` resized to ``size`` along dim 0: floating inputs get
    seeded uniform values in the range the example spans, other inputs repeat its rows."""
    gen = torch.Generator().manual_seed(seed)
    out = list(args)
    for i in positions:
        x = args[i]
        rows = x[torch.arange(size, device=x.device) % x.shape[0]]
        lo, hi = (x.min(), x.max()) if x.is_floating_point() and x.numel() else (None, None)
        if lo is not None and bool(torch.isfinite(lo) & torch.isfinite(hi)):
            noise = torch.rand(tuple(rows.shape), generator=gen).to(device=x.device, dtype=x.dtype)
            rows = lo + (hi - lo) * noise
        out[i] = rows
    return tuple(out)


def _on_device(args: tuple, device: torch.device) -> tuple:
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def _on_cpu(module: torch.nn.Module, cases: list[_Case]) -> tuple[torch.nn.Module, list[_Case]]:
    """``module`` and the cases' inputs on the CPU (a copy when the module is elsewhere; never moved in place)."""
    if module_device(module).type == "cpu":
        return module, cases
    try:
        cpu_module = copy.deepcopy(module).cpu()
    except Exception as exc:  # noqa: BLE001 - a model that cannot be copied
        raise ValidationError(f"cannot copy the model to the CPU for ONNX export: {describe(exc)}") from exc
    return cpu_module, [_Case(_on_device(c.args, torch.device("cpu")), c.refs) for c in cases]


def _plan(module: torch.nn.Module, first: _Case, dynamic_batch: bool) -> tuple[ExportSpec, list[_Case], str]:
    """The export spec and the cases to check: the example batch, plus one more batch size when the
    batch axis can be dynamic; else a fixed-shape spec and why (empty when none was asked for)."""
    spec = ExportSpec(*io_names(module, len(first.args), len(first.refs)))
    if not dynamic_batch:
        return spec, [first], ""
    positions, batch = _batch_inputs(first.args)
    if not positions:
        return spec, [first], "fixed shapes: no input has a batch dimension"
    size = batch + 1
    args = batch_variant(first.args, positions, size)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # fx prints the failing line before raising
            second = _Case(args, _reference(module, args))
    except Exception as exc:  # noqa: BLE001 - the model itself fixes its batch size
        return spec, [first], f"fixed shapes: the model does not run at batch {size} in torch ({describe(exc)})"
    if len(second.refs) != len(first.refs) or non_finite(second.refs):
        return spec, [first], f"fixed shapes: the model's outputs at batch {size} are not comparable (count or NaN/inf)"
    outputs = tuple(i for i, (a, b) in enumerate(zip(first.refs, second.refs))
                    if a.dim() and b.dim() and a.shape[0] == batch and b.shape[0] == size)
    return ExportSpec(spec.input_names, spec.output_names, positions, outputs), [first, second], ""


# --------------------------------------------------------------------------- onnxruntime


def _session(onnx_bytes: bytes) -> Any:
    """A CPU onnxruntime session for a serialized model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False  # a check runs a few batches: memory matters more than speed
    options.enable_mem_pattern = False
    try:
        return ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise ValidationError(f"onnxruntime could not load the model: {describe(exc)}") from exc


def _feeds(session: Any, args: tuple, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Map the session's inputs to numpy arrays: by name when ``names`` (the export's input names, in
    argument order) knows it (an unused input may have been dropped), else by position."""
    index = {name: i for i, name in enumerate(names or ())}
    feeds: dict[str, np.ndarray] = {}
    for pos, meta in enumerate(session.get_inputs()):
        i = index.get(meta.name, pos)
        value = args[i] if i < len(args) else None
        if not isinstance(value, torch.Tensor):
            raise ValidationError(f"cannot feed ONNX input {meta.name!r} from the example inputs")
        feeds[meta.name] = value.detach().cpu().numpy()
    return feeds


def _run(session: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One onnxruntime run; errors become ``ValidationError``."""
    try:
        return session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001
        raise ValidationError(f"onnxruntime could not run the model: {describe(exc)}") from exc


def _check(module: torch.nn.Module, spec: ExportSpec, cases: list[_Case], exporters: Sequence = EXPORTERS) -> _Checked:
    """Export ``module`` as ``spec`` says and compare onnxruntime with torch on every case."""
    exported = export(module, cases[0].args, spec, exporters)
    session = _session(exported.onnx_bytes)
    errors, first_run = [], 0.0
    for case in cases:
        feeds = _feeds(session, case.args, spec.input_names)
        start = time.perf_counter()
        outs = _run(session, feeds)
        first_run = first_run or time.perf_counter() - start
        errors.append(_compare(case.refs, outs))
    return _Checked(exported, errors, first_run)


# --------------------------------------------------------------------------- comparison


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """Tensors of a (nested tuple/list/dict) output, in export order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in flatten_outputs(v)]
    return []


def _compare(refs: list[torch.Tensor], outs: list[np.ndarray]) -> tuple[float, float, float]:
    """(max_abs, max_rel, max |ref|) across all outputs; torch's are finite, so NaN/inf from onnxruntime is inf."""
    if len(refs) != len(outs):
        raise ValidationError(f"onnxruntime returned {len(outs)} outputs, torch returned {len(refs)}")
    max_abs = max_rel = scale = 0.0
    for i, (ref, out) in enumerate(zip(refs, outs)):
        got = torch.from_numpy(np.asarray(out))
        if tuple(got.shape) != tuple(ref.shape):
            raise ValidationError(
                f"output {i}: onnxruntime shape {tuple(got.shape)} != torch shape {tuple(ref.shape)}"
            )
        if ref.numel() == 0:
            continue
        ref = ref.detach().cpu().double()
        diff = torch.nan_to_num((ref - got.double()).abs(), nan=_INF, posinf=_INF)
        max_abs = max(max_abs, diff.max().item())
        max_rel = max(max_rel, (diff / (ref.abs() + _TINY)).max().item())
        scale = max(scale, ref.abs().max().item())
    return max_abs, max_rel, scale


def _tolerance(scale: float, rtol: float, atol: float | None) -> float:
    """``atol`` if given, else ``rtol`` relative to the output scale (at least 1)."""
    return atol if atol is not None else rtol * max(1.0, scale)


# --------------------------------------------------------------------------- public API


def validate(
    gm: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    rtol: float = 1e-4,
    atol: float | None = None,
    keep_onnx: bool = False,
    raise_on_mismatch: bool = True,
    dynamic_batch: bool = True,
) -> ValidationReport:
    """Export ``gm`` to ONNX, run it in onnxruntime (CPU) and compare with eager torch.

    Both sides run in eval mode (the caller's train/eval flags are restored);
    torch runs under ``torch.no_grad()``. All output tensors (nested tuples/lists
    flattened) are compared. The error is judged relative to the output scale:
    the check passes iff ``max_abs <= atol_eff`` where
    ``atol_eff = atol`` if given, else ``rtol * max(1.0, max |torch output|)``.
    ``max_rel`` (``|diff| / (|ref| + 1e-12)``) is reported only.

    With ``dynamic_batch`` (default) the export gets a dynamic batch axis, checked at
    the example batch size and at one more (inputs from ``batch_variant``); where that
    does not hold the export has fixed shapes and ``report.note`` says why.

    Raises ``NonFiniteOutputError`` when torch's outputs hold NaN/inf, ``ValidationError``
    when torch fails on the example inputs, on disagreement (unless ``raise_on_mismatch=False``, which returns a report with
    ``ok=False``), and when neither exporter works or onnxruntime cannot load/run the
    model. ``keep_onnx`` keeps the model bytes.
    """
    args = _on_device(_as_tuple(example_inputs), module_device(gm))  # torch runs where the model is
    try:
        first = _Case(args, _reference(gm, args))
    except Exception as exc:  # noqa: BLE001 - any failure of the model itself
        raise ValidationError(f"the model fails in torch on the example inputs: {describe(exc)}") from exc
    _require_finite(first.refs)
    spec, cases, note = _plan(gm, first, dynamic_batch)
    export_gm, cases = _on_cpu(gm, cases)  # ONNX is exported from a CPU copy; refs stay as torch computed them
    checked = None
    if spec.dynamic:
        checked, note = _check_dynamic(export_gm, spec, cases, rtol, atol)
    if checked is None:
        spec, cases = spec.fixed(), cases[:1]
        checked = _check(export_gm, spec, cases)
    max_abs, max_rel, scale = checked.worst()
    tolerance = _tolerance(scale, rtol, atol)
    report = ValidationReport(
        ok=max_abs <= tolerance, max_abs=max_abs, max_rel=max_rel, tolerance=tolerance,
        exporter=checked.exported.exporter, export_seconds=checked.exported.seconds,
        run_seconds=checked.run_seconds, opset=checked.exported.opset,
        onnx_bytes=checked.exported.onnx_bytes if keep_onnx else None, dynamic_batch=spec.dynamic,
        batch_sizes=tuple(c.batch for c in cases if c.batch), input_names=spec.input_names,
        output_names=spec.output_names, note=note,
    )
    if not report.ok and raise_on_mismatch:
        raise ValidationError(_mismatch_message(report), max_abs=max_abs, max_rel=max_rel)
    return report


def _check_dynamic(gm: torch.nn.Module, spec: ExportSpec, cases: list[_Case], rtol: float,
                   atol: float | None) -> tuple[_Checked | None, str]:
    """The first exporter whose dynamic-batch export agrees with torch at both batch sizes; else
    None and why, and the fixed-shape export is used. A dynamic export that disagrees at the example
    batch size already is returned: that is a real mismatch, not a batch problem."""
    size, failures = cases[-1].batch, []
    for exporter in EXPORTERS:
        try:
            checked = _check(gm, spec, cases, (exporter,))
        except ValidationError as exc:
            text = str(exc).removeprefix("ONNX export failed; ")
            failures.append(text if text.startswith(f"{exporter[0]} exporter") else f"{exporter[0]} exporter: {text}")
            continue
        first, second = checked.errors[0], checked.errors[-1]
        if first[0] > _tolerance(first[2], rtol, atol) or second[0] <= _tolerance(second[2], rtol, atol):
            return checked, ""
        failures.append(f"{exporter[0]} exporter: onnxruntime disagrees with torch at batch {size} "
                        f"(max abs error {second[0]:.3g})")
    return None, "fixed shapes: no export with a dynamic batch axis held (" + "; ".join(failures) + ")"


def _mismatch_message(report: ValidationReport) -> str:
    """Why a report is not ok, in one line."""
    head = ("onnxruntime produces NaN/inf where torch gives finite values" if report.max_abs == _INF
            else "onnxruntime disagrees with torch")
    return (f"{head}: max abs error {report.max_abs:.3g}, max rel error {report.max_rel:.3g}, "
            f"tolerance {report.tolerance:.3g} (exporter {report.exporter})")


def save_onnx(
    gm: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], path: str | os.PathLike[str], *,
    dynamic_batch: bool = True, rtol: float = 1e-4,
) -> str:
    """Export ``gm`` (eval mode), check it with :func:`validate` and write the ONNX file atomically;
    return the exporter used.

    The file has named inputs/outputs and, with ``dynamic_batch`` (default), a dynamic batch axis
    (a ``UserWarning`` says why when the model only exports with fixed shapes). Raises
    ``ValidationError`` when onnxruntime disagrees with torch (``path`` is then untouched), and
    ``InputError`` before any work when ``path`` is not a writable regular file (``fxprune.atomic``).
    """
    check_output_path(path)  # refuse a device node, FIFO, directory ... before any work
    report = validate(gm, example_inputs, rtol=rtol, keep_onnx=True, dynamic_batch=dynamic_batch)
    if report.note:
        warnings.warn(f"{path}: {report.note}", UserWarning, stacklevel=2)
    data = report.onnx_bytes or b""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return report.exporter


def ort_latency(
    onnx_bytes: bytes,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    runs: int = 20,
    warmup: int = 3,
    input_names: Sequence[str] | None = None,
) -> float:
    """Median wall-clock seconds of ``runs`` onnxruntime CPU runs after ``warmup`` runs.

    Inputs are fed by position, or by ``input_names`` (``ValidationReport.input_names``) when given.
    """
    if runs < 1 or warmup < 0:
        raise InputError(f"ort_latency needs runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    session = _session(onnx_bytes)
    feeds = _feeds(session, _as_tuple(example_inputs), input_names)
    for _ in range(warmup):
        _run(session, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        _run(session, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
