"""ONNX export for fxprune.validate: graph input/output names, the dynamic batch axis, and the
two exporters (TorchScript first, then dynamo), silenced and with one-line errors.

``export(module, args, spec)`` returns the serialized model of the first exporter that works
for ``spec`` (an ``ExportSpec``: names, and which inputs/outputs carry the ``batch`` axis on
dim 0); when none works it raises ``ValidationError`` naming each exporter's failure.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .errors import ValidationError
from .report import eval_mode

__all__ = ["BATCH_AXIS", "EXPORTERS", "ExportSpec", "Exported", "describe", "export", "first_line", "io_names"]

BATCH_AXIS = "batch"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Exported:
    """An exported ONNX model and how it was produced."""

    onnx_bytes: bytes
    exporter: str
    seconds: float
    opset: int


@dataclass(frozen=True)
class ExportSpec:
    """How to export: graph input/output names and which of them carry the dynamic batch axis (dim 0)."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    batch_inputs: tuple[int, ...] = ()
    batch_outputs: tuple[int, ...] = ()

    @property
    def dynamic(self) -> bool:
        return bool(self.batch_inputs)

    def fixed(self) -> ExportSpec:
        return ExportSpec(self.input_names, self.output_names)

    def dynamic_axes(self) -> dict[str, dict[int, str]] | None:
        """The TorchScript exporter's ``dynamic_axes`` (None when static)."""
        if not self.dynamic:
            return None
        names = [self.input_names[i] for i in self.batch_inputs] + [self.output_names[i] for i in self.batch_outputs]
        return {name: {0: BATCH_AXIS} for name in names}

    def dynamic_shapes(self) -> tuple | None:
        """The dynamo exporter's ``dynamic_shapes``: one entry per positional input (None when static)."""
        if not self.dynamic:
            return None
        batch = torch.export.Dim(BATCH_AXIS)
        return tuple({0: batch} if i in self.batch_inputs else None for i in range(len(self.input_names)))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
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


def _default_names(prefix: str, count: int) -> tuple[str, ...]:
    """``prefix`` for one, ``prefix_0``, ``prefix_1`` ... for several."""
    return (prefix,) if count == 1 else tuple(f"{prefix}_{i}" for i in range(count))


def _forward_names(module: torch.nn.Module) -> list[str]:
    """The names of ``module``'s positional forward arguments (a GraphModule's placeholders)."""
    if isinstance(module, torch.fx.GraphModule):
        return [str(n.target) for n in module.graph.nodes if n.op == "placeholder"]
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]


def io_names(module: torch.nn.Module, n_inputs: int, n_outputs: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Graph input names (the forward's argument names where they are usable, else ``input``/``input_i``)
    and output names (``output``/``output_i``)."""
    outputs = _default_names("output", n_outputs)
    names = _forward_names(module)[:n_inputs]
    usable = (len(names) == n_inputs and len(set(names)) == n_inputs
              and all(n.isidentifier() for n in names) and not set(names) & set(outputs))
    return (tuple(names) if usable else _default_names("input", n_inputs)), outputs


def _export_torchscript(module: torch.nn.Module, args: tuple, spec: ExportSpec) -> bytes:
    """Legacy TorchScript-based export into memory."""
    buf = io.BytesIO()
    torch.onnx.export(module, args, buf, dynamo=False, input_names=list(spec.input_names),
                      output_names=list(spec.output_names), dynamic_axes=spec.dynamic_axes())
    return buf.getvalue()


def _export_dynamo(module: torch.nn.Module, args: tuple, spec: ExportSpec) -> bytes:
    """torch.export-based (dynamo) export into memory."""
    program = torch.onnx.export(
        module, args, None, dynamo=True, verbose=False, input_names=list(spec.input_names),
        output_names=list(spec.output_names), dynamic_shapes=spec.dynamic_shapes(),
    )
    if program is None:  # pragma: no cover - defensive: API contract says ONNXProgram
        raise RuntimeError("dynamo exporter returned no program")
    return program.model_proto.SerializeToString()


EXPORTERS = (("torchscript", _export_torchscript), ("dynamo", _export_dynamo))


def first_line(exc: BaseException) -> str:
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


def describe(exc: BaseException) -> str:
    """First line of an error, plus its root cause's first line when that differs."""
    head, root = first_line(exc), first_line(_root_cause(exc))
    return head if head == root else f"{head} (cause: {root})"


def _opset(onnx_bytes: bytes) -> int:
    """Default-domain opset version of a serialized ONNX model (0 if unknown)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def export(module: torch.nn.Module, args: tuple, spec: ExportSpec, exporters: Sequence = EXPORTERS) -> Exported:
    """Export ``module`` in eval mode as ``spec`` says, trying each of ``exporters`` in turn."""
    failures: list[str] = []
    last: BaseException | None = None
    with eval_mode(module):
        for name, exporter in exporters:
            start = time.perf_counter()
            try:
                with quiet():
                    data = exporter(module, args, spec)
                seconds = time.perf_counter() - start
                opset = _opset(data)
            except Exception as exc:  # noqa: BLE001 - any exporter failure falls through
                failures.append(f"{name} exporter: {describe(exc)}")
                last = exc
                continue
            return Exported(data, name, seconds, opset)
    raise ValidationError("ONNX export failed; " + "; ".join(failures)) from last
