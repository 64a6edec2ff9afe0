"""Trace a model to a torch.fx GraphModule with an output shape on every node.

Needs: an ``nn.Module`` and example inputs (a tensor or a tuple of tensors).
Guarantees: the returned GraphModule is a copy (the user's module is never
touched, not even BN running stats during shape propagation); every node that
produces tensors has ``node.meta["tensor_meta"]`` (torch's ShapeProp format).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import io
import logging
import os
import traceback
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp
from torch.fx.passes.shape_prop import ShapeProp, _extract_tensor_metadata
from torch.nn.utils.stateless import _reparametrize_module

from .errors import InputError, TraceError
from .state import attach_state

_TORCH_DIR = os.path.dirname(torch.__file__)


class _Tracer(fx.Tracer):
    """An fx tracer that also keeps user-named modules (types or qualified names) whole."""

    def __init__(self, leaf_modules: Sequence[type | str]):
        super().__init__()
        self._leaf_types = tuple(m for m in leaf_modules if isinstance(m, type))
        self._leaf_names = frozenset(m for m in leaf_modules if isinstance(m, str))

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self._leaf_names or (self._leaf_types and isinstance(m, self._leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)


def as_input_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """Normalise example inputs to a tuple of tensors, or raise InputError."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
        isinstance(x, torch.Tensor) for x in example_inputs
    ):
        return tuple(example_inputs)
    got = type(example_inputs).__name__
    raise InputError(
        f"example_inputs must be a tensor or a non-empty tuple of tensors, got {got}"
    )


def _real_dir(path: str) -> str:
    """``path`` resolved and normalised, ending in ``os.sep`` (a prefix that matches whole names)."""
    return os.path.join(os.path.normcase(os.path.realpath(path)), "")


@functools.lru_cache(maxsize=1)
def _library_dirs() -> tuple[str, ...]:
    """torch's and fxprune's own package directories (``fxprune.passes`` and
    ``fxprune.models`` live in ``passes/`` and ``models/`` of a checkout)."""
    dirs = [_TORCH_DIR, os.path.dirname(os.path.abspath(__file__))]
    for name in ("fxprune.passes", "fxprune.models"):
        spec = importlib.util.find_spec(name)  # the location only: the package is not run
        dirs.extend((spec.submodule_search_locations or ()) if spec else ())
    return tuple(_real_dir(d) for d in dirs)


def _is_library_file(filename: str) -> bool:
    """Whether ``filename`` lies inside torch or fxprune (by directory, not by name);
    pseudo-files such as ``<string>`` lie nowhere."""
    if filename.startswith("<"):
        return False
    path = os.path.normcase(os.path.realpath(filename))
    return path.startswith(_library_dirs())


def _user_frame(tb: traceback.StackSummary) -> str | None:
    """The innermost frame outside torch and fxprune: the user's source line."""
    for frame in reversed(tb):
        if not _is_library_file(frame.filename):
            line = (frame.line or "").strip()
            return f'{frame.filename}:{frame.lineno} in {frame.name}: "{line}"'
    return None


def _trace_error(model: nn.Module, exc: Exception) -> TraceError:
    where = _user_frame(traceback.extract_tb(exc.__traceback__)) or "unknown location"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TraceError(
        f"cannot trace {type(model).__name__} with torch.fx at {where}: {first}. "
        "Hint: keep the offending submodule whole with leaf_modules=(TheModuleClass,) "
        "or fix a data-dependent value with concrete_args={...}."
    )


def trace(
    model: nn.Module,
    example_inputs: Any,
    *,
    leaf_modules: Iterable[type | str] = (),
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Trace ``model`` (a private copy of it) and propagate shapes of ``example_inputs``."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = as_input_tuple(example_inputs)
    model = copy.deepcopy(model)
    if isinstance(model, fx.GraphModule):
        gm = model
    else:
        tracer = _Tracer(tuple(leaf_modules))
        try:
            graph = tracer.trace(model, concrete_args=concrete_args)
        except Exception as exc:  # torch.fx raises many types; all mean "untraceable"
            raise _trace_error(model, exc) from exc
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    propagate_shapes(gm, inputs)
    attach_state(gm, inputs)
    return gm


def propagate_shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    """Store every node's output shape in ``node.meta["tensor_meta"]``; wrong inputs raise InputError.

    Runs ShapeProp on the meta device (weights swapped for meta tensors: no
    arithmetic and no copy); ops without meta kernels fall back to a real forward,
    then to fake tensors.
    """
    n_placeholders = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
    if len(inputs) != n_placeholders:
        raise InputError(
            f"the model takes {n_placeholders} input(s) but {len(inputs)} example input(s) were given"
        )
    was_training = gm.training
    gm.eval()  # shapes do not depend on the mode; eval keeps BN running stats untouched
    try:
        _propagate_first_that_works(gm, inputs)
    finally:
        gm.train(was_training)


def _propagate_first_that_works(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    errors = []
    for propagate in (_meta_propagate, _real_propagate, _fake_propagate):
        try:
            propagate(gm, inputs)
            return
        except Exception as exc:  # the next strategy may support this op
            errors.append(exc)
    cause = errors[1].__cause__ or errors[1]  # the real forward's error is the clearest
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
    shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
    raise InputError(f"example inputs of shape {shapes} do not fit the model: {first_line}") from errors[1]


def _meta_propagate(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    """ShapeProp with every parameter, buffer and input on the meta device: no arithmetic, no copy."""
    meta = {name: t.to("meta") for name, t in [*gm.named_parameters(), *gm.named_buffers()]}
    with torch.no_grad(), _reparametrize_module(gm, meta), contextlib.redirect_stderr(io.StringIO()):
        ShapeProp(gm).propagate(*(x.to("meta") for x in inputs))


def _real_propagate(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints tracebacks
        ShapeProp(gm).propagate(*inputs)


def _fake_propagate(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with torch.no_grad(), _logger_silenced("torch._subclasses.fake_tensor"):
        FakeTensorProp(gm, mode).propagate(*(mode.from_tensor(x) for x in inputs))
    for node in gm.graph.nodes:
        val = node.meta.pop("val", None)
        meta = _metadata(val)
        if meta is not None:
            node.meta["tensor_meta"] = meta
        else:
            node.meta.pop("tensor_meta", None)


@contextlib.contextmanager
def _logger_silenced(name: str) -> Iterator[None]:
    """Mute logger ``name`` (fake tensors log a traceback before raising; the error is raised anyway)."""
    logger = logging.getLogger(name)
    was_disabled = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was_disabled


def _metadata(val: Any) -> Any:
    if isinstance(val, torch.Tensor):
        return _extract_tensor_metadata(val)
    if isinstance(val, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in val):
        return tuple(_metadata(v) for v in val)
    return None
