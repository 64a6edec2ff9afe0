"""Saving and loading pruned models: files that cannot choose what code runs.

A ``.fxp`` file is one ``torch.save`` of plain data: the plan (kept units per
group), the pruned state_dict, where the original model definition comes from,
the example-input shapes, the fxprune version, the report, a sha256 digest of
the weights and, optionally, the digest of the ONNX file written with it.
``load`` rebuilds the original model, re-runs the analysis, replays the plan
with ``rewrite`` and loads the weights.

Security model (see ``fxprune.sources``):

- the file is read with ``torch.load(weights_only=True)``: nothing is unpickled,
  and a file holding pickled objects is a ``PickledFileError``;
- every field is checked (``fxprune.fxp_schema``) and the weights' digest is
  verified before anything is built: a malformed, damaged or modified file is
  a named ``InputError`` (``PlanError`` for a plan that does not fit the model);
- the model is named through a registry (fxprune.models, torchvision.models,
  timm when installed) with plain-data constructor arguments; a user class is
  rebuilt only with ``model=`` (nothing imported) or ``trust_source=True``
  (imports its module, which runs that module's code, then instantiates it only
  if it is an ``nn.Module`` subclass).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from .atomic import atomic_write, default_file_mode  # noqa: F401 - re-exported
from .errors import FxpruneError, InputError, PickledFileError, PlanError
from .fxp_schema import FORMAT, FORMAT_VERSION, FieldProblem, NewerFormat, check_fields, check_source
from .pickle_scan import pickle_globals, shown_globals
from .report import eval_mode
from .sources import UntrustedSourceError, build_source, registry_kind

__all__ = [
    "FORMAT", "FORMAT_VERSION", "PickledFileError", "UntrustedSourceError", "atomic_write", "build_model",
    "check_onnx_pair", "check_payload", "file_sha256", "load", "model_source", "read", "rebuild", "save",
    "weights_sha256",
]


# ---------------------------------------------------------------------------- sources


def model_source(model: nn.Module | None, name: str | None = None, kwargs: dict | None = None) -> dict[str, Any]:
    """Describe how to rebuild a model: a registry ``name`` (given, or recorded by
    ``fxprune.models.get``) with constructor ``kwargs``, else the class's import path
    (which ``load`` imports only when trusted)."""
    kwargs = dict(kwargs or getattr(model, "_fxprune_kwargs", None) or {})
    name = name or getattr(model, "_fxprune_name", None)
    if name is not None:
        kind = registry_kind(name)
        if kind is None:
            raise InputError(f"unknown model name {name!r}: not a fxprune.models, torchvision.models or timm "
                             f"name; pass one of those, or save without model_name to record the class")
        return {"kind": kind, "name": name, "kwargs": kwargs}
    if model is None:
        raise InputError("a model name or a model is needed to describe the source")
    cls = type(model)
    return {"kind": "class", "name": f"{cls.__module__}:{cls.__qualname__}", "kwargs": kwargs}


def build_model(source: dict[str, Any], *, trust_source: bool = False, where: str = "the file") -> nn.Module:
    """The model ``source`` describes (``fxprune.sources.build_source``): a registry model, or a
    user class only with ``trust_source=True`` (importing its module runs that module's code)."""
    try:
        checked = check_source(source)
    except FieldProblem as exc:
        raise InputError(f"{where}: malformed model source: {exc}") from None
    return build_source(checked, trust_source=trust_source, where=where)


# ---------------------------------------------------------------------------- digests


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in sorted key order."""
    digest = hashlib.sha256(b"fxprune-weights-sha256-v1\n")
    for key in sorted(state_dict):
        tensor = state_dict[key].detach()
        raw = tensor.cpu().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8).numpy()
        header = json.dumps([key, str(tensor.dtype), list(tensor.shape), raw.nbytes])
        digest.update(header.encode() + b"\n")
        digest.update(raw.data)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_onnx_pair(payload: dict[str, Any], onnx_path: str | os.PathLike, fxp_name: str = "the .fxp file") -> bool:
    """Raise InputError when ``onnx_path`` is not the ONNX file recorded in ``payload`` (its sha256
    differs); returns False when the payload records no ONNX file (nothing to check), else True."""
    recorded = payload.get("onnx")
    if not recorded:
        return False
    actual = file_sha256(onnx_path)
    if actual != recorded["sha256"]:
        raise InputError(f"{onnx_path} was not written together with {fxp_name} (its sha256 {actual[:12]}... "
                         f"differs from the {recorded['sha256'][:12]}... recorded for {recorded['file']}); "
                         f"re-run prune to write both files again")
    return True


# ---------------------------------------------------------------------------- save


def save(result: Any, path: str | os.PathLike, *, model_name: str | None = None,
         model_kwargs: dict | None = None, onnx_sha256: str | None = None,
         onnx_file: str | os.PathLike | None = None) -> None:
    """Write ``result`` (from ``fxprune.compile``) to ``path`` atomically (see module doc).

    ``model_name`` records a registry model instead of the result's source; ``onnx_sha256`` and
    ``onnx_file`` (given together) record the ONNX file written with this one (``check_onnx_pair``).
    Raises InputError naming the field when something would not be plain, loadable data.
    """
    from .version import __version__

    if (onnx_sha256 is None) != (onnx_file is None):
        raise InputError("onnx_sha256 and onnx_file go together; pass both or neither")
    source = result.source if model_name is None else model_source(None, model_name, model_kwargs)
    state_dict = {k: v.detach().cpu().clone() for k, v in result.module.state_dict().items()}  # loads anywhere
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fxprune_version": __version__,
        "source": source,
        "input_shapes": [list(s) for s in result.input_shapes],
        "plan": {gid: list(map(int, kept)) for gid, kept in result.plan.items()},
        "state_dict": state_dict,
        "report": result.report.to_dict(),
        "weights_sha256": weights_sha256(state_dict),
        "onnx": None if onnx_file is None else {"file": Path(onnx_file).name, "sha256": onnx_sha256},
        "compensate": bool(getattr(result.report, "compensate", True)),
        "capture": _capture_of(result),
    }
    try:
        check_fields(payload)
    except FieldProblem as exc:
        raise InputError(f"cannot save {path}: {exc}") from None
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


# ---------------------------------------------------------------------------- read


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The checked payload of a ``.fxp`` file, read with ``weights_only=True``.

    Raises ``PickledFileError`` for a file of pickled objects (never unpickled), and a named
    InputError for a missing, empty, unreadable, malformed, newer or modified file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file: {path}")
    if not path.is_file():
        raise InputError(f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty, not a file written by fxprune.save")
    return check_payload(_torch_load_plain(path), str(path))


def _torch_load_plain(path: Path) -> Any:
    """``torch.load(weights_only=True)``; unreadable and pickled files as named InputErrors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        names = pickle_globals(path)
        if names is not None:
            raise _pickled(path, names) from None
        raise _unreadable(path, exc) from None
    except Exception as exc:  # noqa: BLE001 - zip/EOF/Runtime errors all mean a damaged file
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: BaseException) -> InputError:
    """The error for a file ``torch.load`` cannot read: its first sentence says why."""
    first = (str(exc).strip().splitlines() or [""])[0]
    first = first[:first.find(". ") + 1] if ". " in first else first[:120]
    return InputError(f"{path} is not a readable fxprune/torch file (corrupt or truncated: "
                      f"{type(exc).__name__}: {first})")


def _pickled(path: Path, names: list[str]) -> PickledFileError:
    """The error for a file that would need ``weights_only=False``."""
    return PickledFileError(f"{path} holds pickled Python objects{shown_globals(names)}; fxprune.load reads "
                            f".fxp files as plain data and never unpickles, so no code was run", names)


def check_payload(payload: Any, where: str) -> dict[str, Any]:
    """``payload`` (from ``torch.load``) checked field by field, its weights digest verified;
    returns a normalised copy. Raises a named InputError (``where`` names the file)."""
    try:
        checked = check_fields(payload)
    except NewerFormat as exc:
        raise InputError(f"{where} was written by a newer fxprune ({exc}); upgrade fxprune to read it") from None
    except FieldProblem as exc:
        if exc.field == "format":
            raise InputError(f"{where} is not a file written by fxprune.save ({exc})") from None
        raise InputError(f"{where} is a malformed .fxp file: {exc}; write it again with fxprune.save") from None
    _verify_digest(checked, where)
    return checked


def _verify_digest(payload: dict[str, Any], where: str) -> None:
    """The recorded weights digest must match the weights (a version-1 file has none: a note)."""
    recorded = payload.get("weights_sha256")
    if recorded is None:
        warnings.warn(f"{where} is a format-version-{payload['format_version']} file without a weights digest: "
                      f"its integrity cannot be checked; save it again to add one", stacklevel=3)
        return
    try:
        actual = weights_sha256(payload["state_dict"])
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"{where}: field 'state_dict' holds a tensor whose bytes cannot be read "
                         f"({type(exc).__name__}: {str(exc)[:80]}); write it again with fxprune.save") from None
    if actual != recorded:
        raise InputError(f"{where}: field 'weights_sha256' digest mismatch: the file was modified or damaged "
                         f"(its weights do not match the digest recorded when it was saved)")


# ---------------------------------------------------------------------------- load


def load(path: str | os.PathLike, model: nn.Module | None = None, *, trust_source: bool = False) -> fx.GraphModule:
    """Rebuild the pruned GraphModule saved at ``path`` (in eval mode).

    ``model`` is the original (unpruned) model definition; it is left exactly as it was (mode,
    parameters, buffers), and with it nothing the file names is imported. Without it the model is
    rebuilt from the recorded registry name; a recorded user class is imported and instantiated
    only with ``trust_source=True`` (importing runs that module's code; only an ``nn.Module``
    subclass is ever called), otherwise ``UntrustedSourceError``. Every problem with the file is a
    named ``InputError`` (``PlanError`` when the plan or weights do not fit the model).
    """
    payload = read(path)
    if model is not None and not isinstance(model, nn.Module):
        raise InputError(f"model= must be an nn.Module (the unpruned model), got {type(model).__name__}")
    original = model if model is not None else build_model(payload["source"], trust_source=trust_source,
                                                           where=str(path))
    return rebuild(payload, original, str(path))


def _capture_of(result: Any) -> str:
    """The front end that captured ``result``'s model (the report's ``front end:`` line)."""
    front_end = (getattr(result.report, "details", None) or {}).get("front_end") or ""
    return "export" if front_end.startswith("front end: torch.export") else "fx"


def rebuild(payload: dict[str, Any], original: nn.Module, where: str) -> fx.GraphModule:
    """Analyse (a copy of) ``original`` on the recorded input shapes, replay the plan and load the
    weights of a checked ``payload``; ``original`` itself is not changed."""
    from .analysis import analyze
    from .rewrite import rewrite

    inputs = tuple(torch.zeros(shape) for shape in payload["input_shapes"])
    try:
        with eval_mode(original):
            graph = analyze(original, inputs, capture=payload.get("capture", "fx"))  # traces a private copy
    except InputError as exc:
        shapes = payload["input_shapes"]
        raise InputError(f"{where}: field 'input_shapes' {shapes} does not fit the model: "
                         f"{str(exc).splitlines()[0]}") from None
    try:
        gm = rewrite(graph.gm, graph, payload["plan"], compensate=payload.get("compensate", True))
    except (FxpruneError, RuntimeError, IndexError, KeyError, ValueError, TypeError) as exc:
        raise PlanError(f"{where} does not fit this model definition: field 'plan': "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        gm.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise PlanError(f"{where} does not fit this model definition: field 'state_dict': "
                        f"{str(exc).splitlines()[0]}") from None
    return gm.eval()
