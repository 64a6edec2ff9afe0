"""Example inputs bound to the arguments of a model's ``forward``.

Needs: a module and example inputs: a tensor, a tuple/list of tensors (positional
arguments) or a dict of tensors (keyword arguments). Guarantees: ``bind_inputs``
returns the given tensors as a tuple in ``forward``'s signature order, their
argument names, and the arguments torch.fx must specialise (every argument not
given, at its default, plus the caller's ``concrete_args``). The traced
GraphModule then takes exactly the given tensors, positionally, in that order.
Every problem (an unknown keyword, a required argument missing, a value that is
not a tensor) is an ``InputError`` that names the argument.

A ``forward`` with ``*args`` is not bound: positional inputs are taken as they
are (keyword inputs are refused) and only ``concrete_args`` is specialised.
``**kwargs`` receives no example input (fx gives it an unused placeholder).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from .errors import InputError

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class BoundInputs:
    """The inputs of a trace: tensors in signature order (``names`` empty when not bound)."""

    tensors: tuple[torch.Tensor, ...]
    names: tuple[str, ...] = ()
    specialised: dict[str, Any] = field(default_factory=dict)


def bind_inputs(model: nn.Module, example_inputs: Any, concrete_args: Mapping[str, Any] | None = None) -> BoundInputs:
    """Bind ``example_inputs`` to ``model.forward``'s arguments (see module doc)."""
    args, kwargs = split_inputs(example_inputs)
    concrete = _check_concrete(concrete_args)
    params = _parameters(model)
    if params is None or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        if kwargs:
            raise InputError(f"example inputs given by keyword ({', '.join(kwargs)}) need a forward with named "
                             f"arguments; {type(model).__name__}.forward takes *args: pass a tuple")
        return BoundInputs(tuple(args), (), concrete)
    params = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    given = _given(params, args, kwargs, type(model).__name__)
    _check_concrete_names(params, given, concrete)
    specialised = dict(concrete)
    missing = []
    for p in params:
        if p.name in given or p.name in concrete:
            continue
        if p.default is inspect.Parameter.empty:
            missing.append(p.name)
        else:
            specialised[p.name] = p.default
    if missing:
        raise InputError(f"{type(model).__name__}.forward needs argument(s) {', '.join(map(repr, missing))}, "
                         f"not among the example inputs ({', '.join(given) or 'none'}); give them as tensors "
                         f"(a dict names them) or fix them with concrete_args={{...}}")
    names = tuple(p.name for p in params if p.name in given)
    return BoundInputs(tuple(given[n] for n in names), names, specialised)


def split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(positional, keyword) example inputs; the container itself is checked here, the values later."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, (tuple, list)) and example_inputs:
        _check_tensors(dict(enumerate(example_inputs)), "example input")
        return tuple(example_inputs), {}
    if isinstance(example_inputs, Mapping) and example_inputs:
        if not all(isinstance(k, str) for k in example_inputs):
            raise InputError("a dict of example inputs must map argument names (str) to tensors")
        _check_tensors(example_inputs, "example input")
        return (), dict(example_inputs)
    raise InputError("example_inputs must be a tensor, a non-empty tuple of tensors or a dict of tensors "
                     f"by argument name, got {type(example_inputs).__name__}")


def _check_tensors(values: Mapping[Any, Any], what: str) -> None:
    for key, value in values.items():
        if not isinstance(value, torch.Tensor):
            label = f"{what} {key!r}" if isinstance(key, str) else f"{what} {key}"
            raise InputError(f"example_inputs must be a tensor or tensors: {label} is a {type(value).__name__}; "
                             "fix a non-tensor argument of forward with concrete_args={name: value} instead")


def _check_concrete(concrete_args: Mapping[str, Any] | None) -> dict[str, Any]:
    if concrete_args is None:
        return {}
    if not isinstance(concrete_args, Mapping) or not all(isinstance(k, str) for k in concrete_args):
        raise InputError(f"concrete_args must be a dict of argument name -> value, got {type(concrete_args).__name__}")
    return dict(concrete_args)


def _parameters(model: nn.Module) -> list[inspect.Parameter] | None:
    """``forward``'s parameters (``self`` excluded), or None when Python cannot tell them."""
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None


def _given(params: list[inspect.Parameter], args: tuple, kwargs: dict[str, Any], owner: str) -> dict[str, Any]:
    """Argument name -> example tensor, for the positional and keyword inputs."""
    positional = [p.name for p in params if p.kind in _POSITIONAL]
    if len(args) > len(positional):
        raise InputError(f"{owner}.forward takes {len(positional)} input(s) by position "
                         f"({', '.join(positional) or 'none'}) but {len(args)} example inputs were given")
    given = dict(zip(positional, args))
    by_name = {p.name: p for p in params}
    for name, value in kwargs.items():
        if name not in by_name:
            raise InputError(f"{owner}.forward has no argument {name!r}; its arguments: {', '.join(by_name)}")
        if by_name[name].kind is inspect.Parameter.POSITIONAL_ONLY:
            raise InputError(f"{owner}.forward's argument {name!r} is positional-only: pass a tuple")
        given[name] = value
    return given


def _check_concrete_names(params: list[inspect.Parameter], given: dict[str, Any], concrete: dict[str, Any]) -> None:
    names = {p.name for p in params}
    unknown = sorted(set(concrete) - names)
    if unknown:
        raise InputError(f"concrete_args names no argument of forward: {', '.join(unknown)}; "
                         f"its arguments: {', '.join(p.name for p in params)}")
    twice = sorted(set(concrete) & set(given))
    if twice:
        raise InputError(f"argument(s) {', '.join(twice)} given both as example inputs and in concrete_args")
