"""Outputs of ``fxprune-trace``: output-path checks, writing files all-or-nothing, pass dumps,
running an ONNX file in onnxruntime and measuring how far two sets of outputs differ.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import PROG, CLIError, first_line


def check_output(path_text: str | None, option: str) -> Path | None:
    """``option``'s output path, checked to be writable before any work starts (None stays None)."""
    if path_text is None:
        return None
    path = Path(path_text)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"{option} {path}: directory {parent} does not exist; create it or choose another path")
    if path.is_dir():
        raise CLIError(f"{option} {path} is a directory; pass a file path")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"{option} {path}: directory {parent} is not writable; choose another path")
    return path


def write_together(finals: Sequence[Path | None], work: Callable[..., None]) -> None:
    """``work(*temps)`` with one temporary path per final path (None stays None); once it
    returns, every temporary file is moved into place, in the order given, with the usual
    permissions (``fxprune.io.atomic_write``); on failure nothing is published or left behind.
    """
    from fxprune.io import atomic_write

    temps: list[Path | None] = [None] * len(finals)
    pending = [i for i, final in enumerate(finals) if final is not None]

    def nest(k: int) -> None:
        """atomic_write of pending[k] around pending[k-1] ...; the innermost (pending[0]) publishes first."""
        if k < 0:
            work(*temps)
            return

        def write(tmp: str) -> None:
            temps[pending[k]] = Path(tmp)
            nest(k - 1)
        atomic_write(finals[pending[k]], write)

    nest(len(pending) - 1)


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
        ref = ref.detach().double().numpy() if hasattr(ref, "detach") else np.asarray(ref, dtype=np.float64)
        out = out.detach().double().numpy() if hasattr(out, "detach") else np.asarray(out, dtype=np.float64)
        if ref.shape != out.shape:
            raise CLIError(f"output {i} has shape {out.shape} where the model gives {ref.shape}; compare "
                           f"files of the same model")
        if ref.size:
            err = max(err, float(np.abs(ref - out).max()))
            scale = max(scale, float(np.abs(ref).max()))
    return err, scale


def run_onnx_file(path: Path, inputs: tuple, recorded_by: str) -> list:
    """Run an ONNX file in onnxruntime (CPU) on ``inputs``."""
    session = _onnx_session(path)
    feeds = _onnx_feeds(session, path, inputs, recorded_by)
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
    """``inputs`` by the session's input names, checked against its input count and shapes."""
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
        feeds[meta.name] = x.detach().numpy()
    return feeds
