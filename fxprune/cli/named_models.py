"""Models by name: fxprune.models, torchvision.models and timm (when installed), as ``--model NAME``
selects them.

Checks a name (suggesting close matches), builds the model with the
``--num-classes``/``--in-channels`` constructor arguments, and describes it the
way ``fxprune.save`` records an original model (its "source"), with the default
input shape and the label used in messages.
"""
from __future__ import annotations

import argparse
import difflib
from typing import Any

from .errors import CLIError, first_line, one_line

NAMED_KINDS = ("fxprune.models", "torchvision.models", "timm")


def zoo_names() -> list[str]:
    """The fxprune.models names."""
    from fxprune import models as zoo

    return zoo.list()


def torchvision_names() -> list[str]:
    """The torchvision.models names."""
    import torchvision

    return torchvision.models.list_models()


def timm_names() -> list[str]:
    """The timm model names (empty when timm is not installed)."""
    from fxprune.sources import registry_names

    return registry_names("timm")


def check_model_name(name: str) -> None:
    """Raise CLIError for a name that is in none of fxprune.models, torchvision.models, timm."""
    if name in zoo_names() or name in torchvision_names() or name in timm_names():
        return
    close = difflib.get_close_matches(name, zoo_names() + torchvision_names(), n=3)
    guess = f" (did you mean {', '.join(close)}?)" if close else ""
    raise CLIError(f"unknown model {name!r}{guess}; pass --model with a fxprune.models name "
                   f"({', '.join(zoo_names())}) or a torchvision.models name (see "
                   f"torchvision.models.list_models()), or a timm name when timm is installed")


def build_named(name: str, kwargs: dict) -> tuple[Any, dict]:
    """Build zoo/torchvision model ``name``; returns (model in eval mode, its fxprune.save source)."""
    check_model_name(name)
    kwargs = dict(kwargs)
    if name in zoo_names():
        model = _build_zoo(name, kwargs)
    elif name in torchvision_names():
        model = _build_torchvision(name, kwargs)
    else:
        model = _build_timm(name, kwargs)
    return model.eval(), named_source(name, kwargs)


def _build_zoo(name: str, kwargs: dict) -> Any:
    """``fxprune.models.get(name, **kwargs)``; constructor errors as CLIError."""
    from fxprune import models as zoo

    try:
        return zoo.get(name, **kwargs)
    except TypeError as exc:
        raise CLIError(f"cannot build {name} with {kwargs}: {first_line(exc)}; "
                       f"check --num-classes/--in-channels") from None


def _build_torchvision(name: str, kwargs: dict) -> Any:
    """The torchvision builder with ``weights=None`` (and ``weights_backbone=None``: nothing is
    downloaded); errors as CLIError."""
    from fxprune.sources import build_torchvision

    if "in_channels" in kwargs:
        raise CLIError(f"--in-channels applies to fxprune.models only; torchvision model {name} "
                       f"takes 3-channel input, drop --in-channels")
    try:
        return build_torchvision(name, kwargs)
    except Exception as exc:  # noqa: BLE001 - constructors raise many types
        raise CLIError(f"cannot build torchvision model {name} with {kwargs}: {first_line(exc)}; "
                       f"check --num-classes") from None


def _build_timm(name: str, kwargs: dict) -> Any:
    """``timm.create_model(name, pretrained=False, **kwargs)``; errors as CLIError."""
    from fxprune.errors import InputError
    from fxprune.sources import build_registered

    if "in_channels" in kwargs:
        raise CLIError(f"--in-channels applies to fxprune.models only; timm model {name} takes in_chans, "
                       f"drop --in-channels")
    try:
        return build_registered("timm", name, kwargs)
    except InputError as exc:
        raise CLIError(f"{one_line(exc)}; check --num-classes") from None


def named_source(name: str, kwargs: dict) -> dict:
    """The ``fxprune.save`` source of zoo/torchvision model ``name`` (``fxprune.io.model_source``)."""
    from fxprune.io import model_source

    return model_source(None, name, kwargs)


def cli_kwargs(args: argparse.Namespace) -> dict:
    """Constructor arguments given on the command line (``--num-classes``, ``--in-channels``)."""
    kwargs = {}
    if getattr(args, "num_classes", None) is not None:
        kwargs["num_classes"] = args.num_classes
    if getattr(args, "in_channels", None) is not None:
        kwargs["in_channels"] = args.in_channels
    return kwargs


def default_shape(source: dict | None, cifar_shape: bool = False) -> list[tuple[int, ...]] | None:
    """Default example-input shapes of a named model (None when unknown)."""
    if not source:
        return None
    if source["kind"] == "torchvision.models":
        return [(1, 3, 224, 224)]
    if source["kind"] == "fxprune.models":
        size = 32 if cifar_shape else 28
        return [(1, int(source.get("kwargs", {}).get("in_channels", 3)), size, size)]
    return None


def label(source: dict | None, model: Any) -> str:
    """How messages name a model: ``"resnet18 (torchvision.models)"``, else its class name."""
    if source and source.get("kind") in NAMED_KINDS:
        kwargs = ", ".join(f"{k}={v}" for k, v in source.get("kwargs", {}).items())
        return f"{source['name']}{f'({kwargs})' if kwargs else ''} ({source['kind']})"
    return type(model).__name__ if model is not None else "model"
