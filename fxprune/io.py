"""Saving and loading pruned models without pickling code.

A ``.fxp`` file is one ``torch.save`` of plain data: the plan (kept units per
group), the pruned state_dict, where the original model definition comes from
(a ``fxprune.models`` or ``torchvision.models`` name with constructor
arguments, or a class import path), the example-input shapes, the fxprune
version and the report. ``load`` rebuilds the original model, re-runs the
analysis, replays the plan with ``rewrite`` and loads the weights; the file is
read with ``torch.load(weights_only=True)``, so loading never unpickles
arbitrary objects.
"""
from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from .errors import InputError, PlanError

FORMAT = "fxprune-pruned-model"
FORMAT_VERSION = 1


def model_source(model: nn.Module | None, name: str | None = None, kwargs: dict | None = None) -> dict[str, Any]:
    """Describe how to rebuild a model: a zoo/torchvision ``name`` (given, or recorded by
    ``fxprune.models.get``) with constructor ``kwargs``, else the class's import path."""
    kwargs = dict(kwargs or getattr(model, "_fxprune_kwargs", None) or {})
    name = name or getattr(model, "_fxprune_name", None)
    if name is not None:
        from . import models

        kind = "fxprune.models" if name in models.list() else "torchvision.models"
        return {"kind": kind, "name": name, "kwargs": kwargs}
    if model is None:
        raise InputError("a model name or a model is needed to describe the source")
    cls = type(model)
    return {"kind": "class", "name": f"{cls.__module__}:{cls.__qualname__}", "kwargs": kwargs}


def build_model(source: dict[str, Any]) -> nn.Module:
    """Instantiate the model a ``model_source`` describes (torchvision with ``weights=None``)."""
    kind, name, kwargs = source["kind"], source["name"], dict(source.get("kwargs", {}))
    if kind == "fxprune.models":
        from . import models

        return models.get(name, **kwargs)
    if kind == "torchvision.models":
        import torchvision

        try:
            return torchvision.models.get_model(name, weights=None, **kwargs)
        except ValueError as exc:
            raise InputError(f"unknown model {name!r}: {exc}") from None
    module_name, _, qualname = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj(**kwargs)
    except (ImportError, AttributeError, TypeError) as exc:
        raise InputError(f"cannot rebuild model class {name}: {exc}; pass model= to fxprune.load") from None


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(tmp_path)`` then move it to ``path``; nothing is left behind on failure."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"output directory {str(path.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save(result: Any, path: str | os.PathLike, *, model_name: str | None = None,
         model_kwargs: dict | None = None) -> None:
    """Write ``result`` (from ``fxprune.compile``) to ``path`` (see module doc)."""
    from . import __version__

    source = result.source if model_name is None else model_source(None, model_name, model_kwargs)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fxprune_version": __version__,
        "source": source,
        "input_shapes": [list(s) for s in result.input_shapes],
        "plan": {gid: list(map(int, kept)) for gid, kept in result.plan.items()},
        "state_dict": {k: v.detach().clone() for k, v in result.module.state_dict().items()},
        "report": result.report.to_dict(),
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The payload of a ``.fxp`` file, read safely (``weights_only=True``)."""
    if not Path(path).is_file():
        raise InputError(f"no such file: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path} is not a readable fxprune/torch file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path} is not a file written by fxprune.save")
    return payload


def load(path: str | os.PathLike, model: nn.Module | None = None) -> fx.GraphModule:
    """Rebuild the pruned GraphModule saved at ``path`` (in eval mode).

    ``model`` is the original (unpruned) model definition; by default it is
    rebuilt from the recorded zoo name or import path.
    """
    from .analysis import analyze
    from .rewrite import rewrite

    payload = read(path)
    original = model if model is not None else build_model(payload["source"])
    inputs = tuple(torch.zeros(shape) for shape in payload["input_shapes"])
    graph = analyze(original.eval(), inputs)
    try:
        gm = rewrite(graph.gm, graph, payload["plan"])
        gm.load_state_dict(payload["state_dict"])
    except (PlanError, RuntimeError) as exc:
        raise PlanError(f"{path} does not fit this model definition: {str(exc).splitlines()[0]}") from None
    return gm.eval()
