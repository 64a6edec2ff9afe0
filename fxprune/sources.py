"""Rebuilding the original model a ``.fxp`` file names, without letting the file choose code.

A file names its model through a registry: ``fxprune.models`` names,
``torchvision.models`` builder names (``torchvision.models.list_models()``,
built with ``weights=None``) and, when timm is installed, timm names
(``timm.create_model(name, pretrained=False)``). Its constructor keywords are
checked plain data. A file may also name a user class (kind ``"class"``,
``"module:qualname"``); that is never imported unless the caller trusts the
file (``trust_source=True``), because importing a module runs its code, and
even then only an ``nn.Module`` subclass is instantiated, never any other
callable. Without trust the error is ``UntrustedSourceError``.
"""
from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Any

from torch import nn

from .errors import InputError, UntrustedSourceError
from .fxp_schema import RESERVED_KWARG, FieldProblem, check_plain_data


def timm_module() -> ModuleType | None:
    """The ``timm`` module when it can be imported, else None."""
    try:
        return importlib.import_module("timm")
    except Exception:  # noqa: BLE001 - a missing or broken timm means "no timm registry"
        return None


def registry_names(kind: str) -> list[str]:
    """The names registry ``kind`` builds (empty for timm when it is not installed)."""
    if kind == "fxprune.models":
        from . import models

        return models.list()
    if kind == "torchvision.models":
        import torchvision

        return list(torchvision.models.list_models())
    if kind == "timm":
        timm = timm_module()
        return list(timm.list_models()) if timm is not None else []
    raise InputError(f"unknown model registry {kind!r}")


def registry_kind(name: str) -> str | None:
    """The first registry (fxprune.models, torchvision.models, timm) that knows ``name``."""
    for kind in ("fxprune.models", "torchvision.models", "timm"):
        if name in registry_names(kind):
            return kind
    return None


def plain_kwargs(kwargs: Any, field: str = "source.kwargs", registry: bool = True) -> dict[str, Any]:
    """``kwargs`` checked to be a dict of plain data (and, for a registry, free of keywords that
    fetch or read weights/files); raises InputError naming ``field``."""
    try:
        if not isinstance(kwargs, dict):
            raise FieldProblem(field, f"must be a dict, got {type(kwargs).__name__}")
        out = check_plain_data(kwargs, field)
    except FieldProblem as exc:
        raise InputError(f"constructor arguments {exc}") from None
    reserved = [k for k in out if RESERVED_KWARG.search(k)] if registry else []
    if reserved:
        raise InputError(f"constructor argument {reserved[0]!r} in field {field!r} is not allowed: a file may "
                         f"not ask a model registry to fetch or read weights or files")
    return out


def build_registered(kind: str, name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Build ``name`` from registry ``kind`` with plain-data ``kwargs``, without pretrained weights."""
    kwargs = plain_kwargs(kwargs)
    if name not in registry_names(kind):
        extra = "; install timm to build timm models" if kind == "timm" and timm_module() is None else ""
        raise InputError(f"unknown {kind} model {name!r} (field 'source.name'){extra}")
    try:
        model = _BUILDERS[kind](name, kwargs)
    except Exception as exc:  # noqa: BLE001 - constructors raise many types on bad arguments
        raise InputError(f"cannot build {kind} model {name!r} with {kwargs} (field 'source.kwargs'): "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"{kind} model {name!r} built a {type(model).__name__}, not an nn.Module")
    return model


def _build_zoo(name: str, kwargs: dict[str, Any]) -> nn.Module:
    from . import models

    return models.get(name, **kwargs)


def build_torchvision(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``weights=None`` and, where the builder has one, ``weights_backbone=None`` (no download)."""
    import torchvision

    builder = torchvision.models.get_model_builder(name)
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs = {**kwargs, "weights_backbone": None}
    return builder(weights=None, **kwargs)


def _build_timm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    timm = timm_module()
    if timm is None:
        raise InputError("timm is not installed")
    return timm.create_model(name, pretrained=False, **kwargs)


_BUILDERS = {"fxprune.models": _build_zoo, "torchvision.models": build_torchvision, "timm": _build_timm}


def untrusted(name: str, where: str) -> UntrustedSourceError:
    """The error for a file that names class ``name`` when the caller did not trust it."""
    module = name.partition(":")[0]
    return UntrustedSourceError(
        f"{where} names the model class {name!r}; rebuilding it would import {module!r} and run its code, "
        f"so nothing was imported and no code was run; pass model=<an instance of that class> to "
        f"fxprune.load, or trust_source=True (--trust-source at the CLI) if you trust the file", name)


def build_trusted_class(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Import ``module:qualname`` (running that module's code) and instantiate it with ``kwargs``,
    only if it is an ``nn.Module`` subclass; any other object is never called."""
    kwargs = plain_kwargs(kwargs, registry=False)
    module_name, _, qualname = name.partition(":")
    parts = qualname.split(".")
    if not all(p.isidentifier() for p in module_name.split(".") + parts):
        raise InputError(f"model class {name!r} (field 'source.name') cannot be imported: "
                         f"'module:qualname' must be dotted identifiers (a class defined inside a function "
                         f"cannot be rebuilt; pass model= instead)")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in parts:
            obj = getattr(obj, part)
    except Exception as exc:  # noqa: BLE001 - the trusted module's import may raise anything
        raise InputError(f"cannot import model class {name!r} (field 'source.name'): "
                         f"{type(exc).__name__}: {exc}; pass model= to fxprune.load") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise InputError(f"{name!r} (field 'source.name') is a {type(obj).__name__}, not an nn.Module "
                         f"subclass, so it was not called; pass model= to fxprune.load")
    try:
        model = obj(**kwargs)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot build model class {name!r} with {kwargs} (field 'source.kwargs'): "
                         f"{type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"model class {name!r} built a {type(model).__name__}, not an nn.Module")
    return model


def build_source(source: dict[str, Any], *, trust_source: bool = False, where: str = "the file") -> nn.Module:
    """The model a checked ``source`` describes (see the module doc for what runs and when)."""
    kind, name, kwargs = source["kind"], source["name"], source.get("kwargs", {})
    if kind == "class":
        if not trust_source:
            raise untrusted(name, where)
        return build_trusted_class(name, kwargs)
    return build_registered(kind, name, kwargs)
