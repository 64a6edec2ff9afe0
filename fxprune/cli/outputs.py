"""Outputs of ``fxprune-trace``: output-path checks, writing files all-or-nothing, pass dumps,
running an ONNX file in onnxruntime and measuring how far two sets of outputs differ.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import PROG, CLIError, first_line, one_line


def check_output(path_text: str | None, option: str, inputs: Sequence[str] = ()) -> Path | None:
    """``option``'s output path, checked before any work starts (None stays None): its directory
    exists and is writable, and it is neither an existing non-regular file (device node, FIFO,
    socket, directory, or a symlink to one) nor the same file as any of ``inputs``."""
    from fxprune.atomic import check_output_path
    from fxprune.errors import InputError

    if path_text is None:
        return None
    path = Path(path_text)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"{option} {path}: directory {parent} does not exist; create it or choose another path")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"{option} {path}: directory {parent} is not writable; choose another path")
    try:
        check_output_path(path, inputs=inputs)
    except InputError as exc:
        raise CLIError(f"{option}: {one_line(exc)}") from None
    return path


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (resolved, or the same inode when both exist)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def write_together(finals: Sequence[Path | None], work: Callable[..., None]) -> None:
    """``work(*temps)`` with one temporary path per final path (None stays None); once it
    returns, every temporary file is moved into place in the order given, with SIGTERM/SIGINT
    held back until all are (``fxprune.atomic.atomic_write_all``); on failure nothing is
    published or left behind, and an ``OSError`` (disk full ...) is a one-line CLIError.
    """
    from fxprune.atomic import OutputError, atomic_write_all

    pending = [i for i, final in enumerate(finals) if final is not None]

    def write(temps: list[str]) -> None:
        slots: list[Path | None] = [None] * len(finals)
        for i, tmp in zip(pending, temps):
            slots[i] = Path(tmp)
        work(*slots)

    try:
        atomic_write_all([finals[i] for i in pending], write)
    except OutputError as exc:
        raise CLIError(one_line(exc)) from None


class PassDumper:
    """``compile`` callback writing ``DIR/NN_<pass>.py`` with the graph code after every pass."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.done: list[str] = []

    def __call__(self, name: str, result: Any, seconds: float) -> None:
        """Record pass ``name``; with a folder, write its graph code there."""
        self.done.append(name)
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "pass"
        path = self.folder / f"{len(self.done):02d}_{safe}.py"
        text = (f"# fxprune-trace --dump-passes: graph code after pass {len(self.done)} {name!r} "
                f"(modified={result.modified}, {seconds:.3f}s)\n{result.graph_module.code}")
        path.write_text(text)


def flatten(out: Any) -> list:
    """Tensors of a (nested tuple/list/dict) model output, in export order."""
    from fxprune.validate import flatten_outputs

    return flatten_outputs(out)


def max_abs_error(refs: Sequence, outs: Sequence) -> tuple[float, float]:
    """(max |ref - out|, max |ref|) over matching outputs; CLIError when counts/shapes differ."""
    import numpy as np

    if len(refs) != len(outs):
        raise CLIError(f"{len(outs)} outputs where the model has {len(refs)}; compare files of the same model")
    err = scale = 0.0
    for i, (ref, out) in enumerate(zip(refs, outs)):
        ref = ref.detach().cpu().double().numpy() if hasattr(ref, "detach") else np.asarray(ref, dtype=np.float64)
        out = out.detach().cpu().double().numpy() if hasattr(out, "detach") else np.asarray(out, dtype=np.float64)
        if ref.shape != out.shape:
            raise CLIError(f"output {i} has shape {out.shape} where the model gives {ref.shape}; compare "
                           f"files of the same model")
        if ref.size:  # NaN/inf anywhere is never agreement: it counts as an infinite error
            err = max(err, float(np.nan_to_num(np.abs(ref - out), nan=np.inf).max()))
            scale = max(scale, float(np.nan_to_num(np.abs(ref), nan=0.0, posinf=0.0).max()))
    return err, scale


def run_onnx_file(path: Path, inputs: tuple, recorded_by: str) -> list:
    """Run an ONNX file in onnxruntime (CPU) on ``inputs``."""
    return run_onnx_file_batches(path, inputs, recorded_by, second_batch=False)[0][1]


def run_onnx_file_batches(path: Path, inputs: tuple, recorded_by: str, second_batch: bool = True) -> list:
    """``[(inputs, outputs), ...]`` of an ONNX file run in onnxruntime (CPU) on ``inputs`` and, when
    ``second_batch`` and its batch axis is dynamic, on inputs one larger along it
    (``fxprune.validate.batch_variant``)."""
    from fxprune.validate import batch_variant

    session = _onnx_session(path)
    runs = [(inputs, _onnx_run(session, path, _onnx_feeds(session, path, inputs, recorded_by)))]
    dynamic = [i for i, meta in enumerate(session.get_inputs())
               if meta.shape and not isinstance(meta.shape[0], int) and inputs[i].dim()]
    if second_batch and dynamic:
        more = batch_variant(inputs, dynamic, int(inputs[dynamic[0]].shape[0]) + 1)
        runs.append((more, _onnx_run(session, path, _onnx_feeds(session, path, more, recorded_by))))
    return runs


def _onnx_run(session: Any, path: Path, feeds: dict) -> list:
    """One onnxruntime run of the ONNX file ``path``; failures are a CLIError."""
    try:
        return session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"onnxruntime cannot run {path} ({first_line(exc)}); pass the file written by "
                       f"'{PROG} prune --onnx'") from None


def _onnx_session(path: Path) -> Any:
    """A quiet CPU onnxruntime session for the ONNX file ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"{path} is not a loadable ONNX model ({first_line(exc)}); pass the file written by "
                       f"'{PROG} prune --onnx'") from None


def _onnx_feeds(session: Any, path: Path, inputs: tuple, recorded_by: str) -> dict:
    """``inputs`` by the session's input names, checked against its input count and shapes; a
    dynamic dimension (a name such as ``batch`` instead of a number) accepts any size."""
    metas = session.get_inputs()
    if len(metas) != len(inputs):
        raise CLIError(f"{path} takes {len(metas)} input(s) but {recorded_by} records {len(inputs)}; pass the "
                       f"ONNX file exported with it")
    feeds = {}
    for meta, x in zip(metas, inputs):
        want = [d if isinstance(d, int) else None for d in meta.shape]
        if len(want) != x.dim() or any(w is not None and w != s for w, s in zip(want, x.shape)):
            raise CLIError(f"{path} expects input {meta.name!r} of shape {tuple(meta.shape)} but {recorded_by} "
                           f"records {tuple(x.shape)}; pass the ONNX file exported with it")
        feeds[meta.name] = x.detach().cpu().numpy()
    return feeds
