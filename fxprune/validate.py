"""Check a (pruned) module against onnxruntime, and export/benchmark it as ONNX.

Export prefers the legacy TorchScript exporter (``dynamo=False``, fast) and falls
back to the dynamo exporter (``dynamo=True``) if the legacy one raises. Every
failure to export, load or run the model surfaces as ``ValidationError``.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError, ValidationError
from .io import atomic_write
from .report import _as_tuple, eval_mode

__all__ = ["ValidationReport", "ort_latency", "save_onnx", "validate"]

_TINY = 1e-12
_INF = float("inf")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of :func:`validate` (errors and timings; ``onnx_bytes`` only on request)."""

    ok: bool
    max_abs: float
    max_rel: float
    tolerance: float
    exporter: str
    export_seconds: float
    run_seconds: float
    opset: int = 0
    onnx_bytes: bytes | None = field(default=None, repr=False)

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "MISMATCH"
        return (
            f"onnx {verdict}: max_abs={self.max_abs:.3g} max_rel={self.max_rel:.3g} "
            f"tol={self.tolerance:.3g} exporter={self.exporter} opset={self.opset} "
            f"export={self.export_seconds:.2f}s run={self.run_seconds * 1e3:.1f}ms"
        )


@dataclass(frozen=True)
class _Exported:
    """An exported ONNX model and how it was produced."""

    onnx_bytes: bytes
    exporter: str
    seconds: float
    opset: int


# --------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Python warnings and stdout/stderr chatter, including C++ prints on fds 1/2.

    Process-wide while active: output of other threads is discarded too.
    """
    with warnings.catch_warnings(), _fd_silenced():
        warnings.simplefilter("ignore")
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield


@contextlib.contextmanager
def _fd_silenced() -> Iterator[None]:
    """Point file descriptors 1 and 2 at /dev/null (best effort; no-op if unavailable)."""
    saved: list[tuple[int, int]] = []
    try:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull, fd)
        finally:
            os.close(devnull)
    except OSError:
        _restore_fds(saved)
        saved = []
    try:
        yield
    finally:
        _restore_fds(saved)


def _restore_fds(saved: list[tuple[int, int]]) -> None:
    """Undo :func:`_fd_silenced`'s redirections."""
    for fd, copy in saved:
        with contextlib.suppress(OSError):
            os.dup2(copy, fd)
        with contextlib.suppress(OSError):
            os.close(copy)


def _input_names(args: tuple) -> list[str]:
    """Stable ONNX graph input names, one per positional input."""
    return [f"input_{i}" for i in range(len(args))]


def _export_torchscript(module: torch.nn.Module, args: tuple) -> bytes:
    """Legacy TorchScript-based export into memory."""
    buf = io.BytesIO()
    torch.onnx.export(module, args, buf, dynamo=False, input_names=_input_names(args))
    return buf.getvalue()


def _export_dynamo(module: torch.nn.Module, args: tuple) -> bytes:
    """torch.export-based (dynamo) export into memory."""
    program = torch.onnx.export(
        module, args, None, dynamo=True, verbose=False, input_names=_input_names(args)
    )
    if program is None:  # pragma: no cover - defensive: API contract says ONNXProgram
        raise RuntimeError("dynamo exporter returned no program")
    return program.model_proto.SerializeToString()


_EXPORTERS = (("torchscript", _export_torchscript), ("dynamo", _export_dynamo))


def _first_line(exc: BaseException) -> str:
    """First non-empty line of an exception (ANSI colours stripped), with its type."""
    text = _ANSI.sub("", str(exc)).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _root_cause(exc: BaseException) -> BaseException:
    """Innermost ``__cause__`` of an exception chain (the dynamo exporter wraps deeply)."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def _describe(exc: BaseException) -> str:
    """First line of an error, plus its root cause's first line when that differs."""
    head, root = _first_line(exc), _first_line(_root_cause(exc))
    return head if head == root else f"{head} (cause: {root})"


def _opset(onnx_bytes: bytes) -> int:
    """Default-domain opset version of a serialized ONNX model (0 if unknown)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _export(module: torch.nn.Module, args: tuple) -> _Exported:
    """Export ``module`` in eval mode, trying each exporter in turn."""
    failures: list[str] = []
    last: BaseException | None = None
    with eval_mode(module):
        for name, exporter in _EXPORTERS:
            start = time.perf_counter()
            try:
                with _quiet():
                    data = exporter(module, args)
                seconds = time.perf_counter() - start
                opset = _opset(data)
            except Exception as exc:  # noqa: BLE001 - any exporter failure falls through
                failures.append(f"{name} exporter: {_describe(exc)}")
                last = exc
                continue
            return _Exported(data, name, seconds, opset)
    raise ValidationError("ONNX export failed; " + "; ".join(failures)) from last


# --------------------------------------------------------------------------- onnxruntime


def _session(onnx_bytes: bytes) -> Any:
    """A CPU onnxruntime session for a serialized model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise ValidationError(f"onnxruntime could not load the model: {_describe(exc)}") from exc


def _feeds(session: Any, args: tuple) -> dict[str, np.ndarray]:
    """Map the session's inputs (unused ones may have been dropped) to numpy arrays."""
    by_name = dict(zip(_input_names(args), args))
    feeds: dict[str, np.ndarray] = {}
    for i, meta in enumerate(session.get_inputs()):
        value = by_name.get(meta.name, args[i] if i < len(args) else None)
        if not isinstance(value, torch.Tensor):
            raise ValidationError(f"cannot feed ONNX input {meta.name!r} from the example inputs")
        feeds[meta.name] = value.detach().cpu().numpy()
    return feeds


def _run(session: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One onnxruntime run; errors become ``ValidationError``."""
    try:
        return session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001
        raise ValidationError(f"onnxruntime could not run the model: {_describe(exc)}") from exc


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


def _abs_diff(ref: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    """|ref - got| in float64; equal values (incl. matching inf/nan) give 0, lone nan gives inf."""
    ref, got = ref.double(), got.double()
    diff = (ref - got).abs()
    same = (ref == got) | (ref.isnan() & got.isnan())
    diff = torch.where(same, torch.zeros_like(diff), diff)
    return torch.nan_to_num(diff, nan=_INF, posinf=_INF)


def _compare(refs: list[torch.Tensor], outs: list[np.ndarray]) -> tuple[float, float, float]:
    """(max_abs, max_rel, max |ref| over finite values) across all outputs."""
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
        diff = _abs_diff(ref, got)
        finite = ref[ref.isfinite()].abs()
        max_abs = max(max_abs, diff.max().item())
        rel = diff / (ref.abs().nan_to_num(nan=0.0, posinf=_INF) + _TINY)
        max_rel = max(max_rel, rel.nan_to_num(nan=_INF, posinf=_INF).max().item())
        scale = max(scale, finite.max().item() if finite.numel() else 0.0)
    return max_abs, max_rel, scale


# --------------------------------------------------------------------------- public API


def validate(
    gm: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    rtol: float = 1e-4,
    atol: float | None = None,
    keep_onnx: bool = False,
    raise_on_mismatch: bool = True,
) -> ValidationReport:
    """Export ``gm`` to ONNX, run it in onnxruntime (CPU) and compare with eager torch.

    Both sides run in eval mode (the caller's train/eval flags are restored);
    torch runs under ``torch.no_grad()``. All output tensors (nested tuples/lists
    flattened) are compared. The error is judged relative to the output scale:
    the check passes iff ``max_abs <= atol_eff`` where
    ``atol_eff = atol`` if given, else ``rtol * max(1.0, max |torch output|)``.
    ``max_rel`` (``|diff| / (|ref| + 1e-12)``) is reported only.

    Raises ``ValidationError`` on disagreement (unless ``raise_on_mismatch=False``,
    which returns a report with ``ok=False``), and when neither exporter works or
    onnxruntime cannot load/run the model. ``keep_onnx`` keeps the model bytes.
    """
    args = _as_tuple(example_inputs)
    exported = _export(gm, args)
    session = _session(exported.onnx_bytes)
    feeds = _feeds(session, args)
    start = time.perf_counter()
    outs = _run(session, feeds)
    run_seconds = time.perf_counter() - start
    with eval_mode(gm), torch.no_grad():
        refs = flatten_outputs(gm(*args))
    max_abs, max_rel, scale = _compare(refs, outs)
    tolerance = atol if atol is not None else rtol * max(1.0, scale)
    report = ValidationReport(
        ok=max_abs <= tolerance,
        max_abs=max_abs,
        max_rel=max_rel,
        tolerance=tolerance,
        exporter=exported.exporter,
        export_seconds=exported.seconds,
        run_seconds=run_seconds,
        opset=exported.opset,
        onnx_bytes=exported.onnx_bytes if keep_onnx else None,
    )
    if not report.ok and raise_on_mismatch:
        raise ValidationError(
            f"onnxruntime disagrees with torch: max abs error {max_abs:.3g}, "
            f"max rel error {max_rel:.3g}, tolerance {tolerance:.3g} (exporter {exported.exporter})",
            max_abs=max_abs,
            max_rel=max_rel,
        )
    return report


def save_onnx(
    gm: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], path: str | os.PathLike[str]
) -> str:
    """Export ``gm`` (eval mode) and write the ONNX file atomically; return the exporter used.

    The bytes go to a temporary file in the target directory, then ``os.replace``
    moves it into place, so ``path`` is either the old file or the complete new one.
    """
    exported = _export(gm, _as_tuple(example_inputs))
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(exported.onnx_bytes))
    return exported.exporter


def ort_latency(
    onnx_bytes: bytes,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    runs: int = 20,
    warmup: int = 3,
) -> float:
    """Median wall-clock seconds of ``runs`` onnxruntime CPU runs after ``warmup`` runs."""
    if runs < 1 or warmup < 0:
        raise InputError(f"ort_latency needs runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    session = _session(onnx_bytes)
    feeds = _feeds(session, _as_tuple(example_inputs))
    for _ in range(warmup):
        _run(session, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        _run(session, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
