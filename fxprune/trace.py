"""Trace a model to a torch.fx GraphModule with an output shape on every node.

Needs: an ``nn.Module`` and example inputs (a tensor, a tuple of tensors, or a
dict of tensors by argument name; see ``fxprune.inputs``). Guarantees: the
returned GraphModule is a copy of the modules whose parameters and buffers are
views of the user's (no weight is copied: ``fxprune.trace_guards.private_copy``;
fxprune never writes into them, not even BN running stats during shape
propagation; deep-copy the GraphModule before training it yourself). Every
submodule keeps its own train/eval mode. It takes the given tensors positionally,
in ``forward``'s signature order (arguments not given are specialised to their
defaults, ``concrete_args`` to their values, and neither is an input); every node
that produces tensors has ``node.meta["tensor_meta"]`` (torch's ShapeProp format).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import logging
import operator
import os
import traceback
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp
from torch.fx._symbolic_trace import _assert_is_none
from torch.fx.passes.shape_prop import ShapeProp, _extract_tensor_metadata
from torch.nn.utils.stateless import _reparametrize_module

from .errors import InputError, LossyCaptureError, TraceError
from .inputs import BoundInputs, bind_inputs
from .modes import eval_mode
from .tuple_values import expand_tuple_values
from .trace_guards import (custom_function_calls, function_callers, hooked_modules, mark_kept_whole,
                           parametrized_modules, private_copy, refuse_exported_functions)
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
    capture: str = "auto",
) -> fx.GraphModule:
    """Trace ``model`` (a private copy of it) and propagate shapes of ``example_inputs``.

    ``capture``: ``"fx"`` symbolic tracing, ``"export"`` ``torch.export`` (non-strict,
    ``fxprune.capture_export``), ``"auto"`` fx, then export where fx raises TraceError.
    The front end used and why is the first of the state's notes (``front end: ...``)."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if capture not in CAPTURES:
        raise InputError(f"capture must be one of {', '.join(map(repr, CAPTURES))}, got {capture!r}")
    bound = bind_inputs(model, example_inputs, concrete_args)
    model = private_copy(model)
    kept: dict[str, str] = {}
    from .capture_export import is_aten_graph

    if isinstance(model, fx.GraphModule) and not bound.specialised and capture != "export" \
            and not is_aten_graph(model):
        gm, front_end = model, "front end: the given torch.fx GraphModule"
    else:
        gm, kept, front_end = _capture(model, tuple(leaf_modules), bound, capture)
    propagate_shapes(gm, bound.tensors)
    expand_tuple_values(gm)
    state = attach_state(gm, bound.tensors)
    state.notes.append(front_end)
    state.notes.extend(f"kept whole: {why}" for why in kept.values())
    return gm


CAPTURES = ("auto", "fx", "export")


def _capture(model: nn.Module, leaf_modules: tuple, bound: BoundInputs,
             capture: str) -> tuple[fx.GraphModule, dict, str]:
    """(GraphModule, modules kept whole, ``front end: ... (why)``) by the front end ``capture`` asks for."""
    from .capture_export import EXPORT_NOTE, capture_with_export, is_aten_graph

    fx_error = None
    if capture != "export" and is_aten_graph(model):
        capture = "export"  # torch.export's ep.module(): fx would only see its ATen ops again
    elif capture != "export":
        try:
            gm, kept = _symbolic_trace(model, leaf_modules, bound)
            _drop_specialised_placeholders(gm, bound)
            return gm, kept, f"front end: torch.fx symbolic trace (capture={capture!r})"
        except LossyCaptureError:
            raise
        except TraceError as failed:
            if capture == "fx":
                raise
            fx_error = failed
    try:
        with custom_function_calls() as calls:
            gm, left = capture_with_export(model, bound)
        refuse_exported_functions(model, calls)
    except LossyCaptureError:
        raise
    except TraceError as failed:
        if fx_error is None:
            raise
        raise TraceError(f"{fx_error} Then torch.export failed too: {failed} Hint: give the model a wrapper "
                         "whose forward takes and returns tensors only, keep the offending part out of it, or "
                         "capture='fx' with leaf_modules=(...)") from failed
    why = "an ATen graph (torch.export's ep.module()) is captured again" if is_aten_graph(model) \
        else "capture='export'" if fx_error is None else f"torch.fx could not trace it: {_first_sentence(fx_error)}"
    unmapped = f"; ATen ops without a rule (barriers): {', '.join(sorted(set(left)))}" if left else ""
    return gm, {}, f"front end: torch.export ({why}); {EXPORT_NOTE}{unmapped}"


def _first_sentence(error: Exception, limit: int = 240) -> str:
    """The message of ``error`` before its hint, at most ``limit`` characters."""
    text = str(error).split(" Hint:")[0].strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _symbolic_trace(model: nn.Module, leaf_modules: tuple, bound: BoundInputs) -> tuple[fx.GraphModule, dict]:
    """Trace ``model``, keeping whole (as leaves) the submodules whose tracing would lose something
    (``fxprune.trace_guards``): parametrized ones, and, found while tracing, those that call a custom
    autograd Function (traced again with them as leaves). Returns the GraphModule and ``{module: reason}``."""
    kept = {**hooked_modules(model), **parametrized_modules(model)}
    while True:
        tracer = _Tracer(leaf_modules + tuple(kept))
        try:
            with custom_function_calls(tracer) as calls:
                graph = tracer.trace(model, concrete_args=bound.specialised or None)
        except Exception as exc:  # torch.fx raises many types; all mean "untraceable"
            raise _trace_error(model, exc) from exc
        callers = function_callers(model, calls)
        if not callers.keys() - kept.keys():
            break
        kept.update(callers)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    mark_kept_whole(gm, kept)
    return gm, kept


def _drop_specialised_placeholders(gm: fx.GraphModule, bound: BoundInputs) -> None:
    """Remove the placeholders fx keeps for specialised arguments (and fx's checks of their
    values), and an unused ``**kwargs``: the GraphModule then takes only the real inputs,
    all of them required."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "placeholder":
            continue
        if not _is_specialised(node, bound):
            changed = changed or bool(node.args)
            node.args = ()  # a given input is required, even if forward has a default for it
            continue
        for user in list(node.users):
            _erase_value_check(gm.graph, user)
        if not node.users:
            gm.graph.erase_node(node)
            changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()


def _is_specialised(placeholder: fx.Node, bound: BoundInputs) -> bool:
    target = str(placeholder.target)
    if bound.names or target.startswith("**"):
        return target not in bound.names
    base, _, count = target.rpartition("_")
    return base in bound.specialised and count.isdigit()


def _erase_value_check(graph: fx.Graph, node: fx.Node) -> None:
    """Erase ``node`` when it is fx's check of a specialised value (``_assert_is_none(ph)``,
    ``torch._assert(ph == v)``), with the comparison it asserts."""
    if node.op != "call_function":
        return
    if node.target in (_assert_is_none, torch._assert) and not node.users:
        graph.erase_node(node)
    elif node.target is operator.eq and node.users and all(u.target is torch._assert for u in node.users):
        for user in list(node.users):
            graph.erase_node(user)
        graph.erase_node(node)


def propagate_shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    """Store every node's output shape in ``node.meta["tensor_meta"]``; inputs that do not fit
    raise InputError (for the user's model and inputs; see ``try_propagate_shapes`` otherwise).
    """
    _check_input_count(gm, inputs)
    try:
        try_propagate_shapes(gm, inputs)
    except ShapePropagationError as failed:
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        raise InputError(f"example inputs of shape {shapes} do not fit the model: {failed.first_line}") from failed.cause


class ShapePropagationError(Exception):
    """No strategy could run the graph: ``node`` is where its real forward failed (None if unknown)."""

    def __init__(self, node: fx.Node | None, cause: BaseException):
        super().__init__(str(cause))
        self.node = node
        self.cause = cause

    @property
    def first_line(self) -> str:
        cause = self.cause.__cause__ or self.cause
        return (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]


def try_propagate_shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    """Store every node's output shape in ``node.meta["tensor_meta"]``, or raise ShapePropagationError.

    Runs ShapeProp on the meta device (weights swapped for meta tensors: no
    arithmetic and no copy); ops without meta kernels fall back to a real forward,
    then to fake tensors. The error names the node where the real forward failed.
    """
    with eval_mode(gm):  # shapes do not depend on the mode; eval keeps BN running stats untouched
        _propagate_first_that_works(gm, inputs)


def _check_input_count(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    names = [str(n.target) for n in gm.graph.nodes if n.op == "placeholder"]
    fixed = [n for n in names if not n.startswith("*")]
    variadic = len(fixed) < len(names)
    if len(inputs) < len(fixed) or (len(inputs) > len(fixed) and not variadic):
        raise InputError(f"the model takes {len(fixed)} input(s) ({', '.join(names)}) but "
                         f"{len(inputs)} example input(s) were given")


def _propagate_first_that_works(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    failures = []
    for propagate in (_meta_propagate, _real_propagate, _fake_propagate):
        try:
            propagate(gm, inputs)
            return
        except ShapePropagationError as failed:  # the next strategy may support this op
            failures.append(failed)
    raise failures[1]  # the real forward's error is the clearest


class _NodeTracking:
    """Mixin for fx interpreters: a failure is a ShapePropagationError naming the node."""

    def run_node(self, n: fx.Node) -> Any:
        try:
            return super().run_node(n)  # type: ignore[misc]
        except ShapePropagationError:
            raise
        except Exception as exc:
            raise ShapePropagationError(n, exc) from exc


class _ShapeProp(_NodeTracking, ShapeProp):
    pass


class _FakeTensorProp(_NodeTracking, FakeTensorProp):
    pass


def _meta_propagate(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    """ShapeProp with every parameter, buffer and input on the meta device: no arithmetic, no copy."""
    meta = {name: t.to("meta") for name, t in [*gm.named_parameters(), *gm.named_buffers()]}
    with torch.no_grad(), _reparametrize_module(gm, meta), contextlib.redirect_stderr(io.StringIO()):
        _run(_ShapeProp(gm), *(x.to("meta") for x in inputs))


def _real_propagate(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints tracebacks
        _run(_ShapeProp(gm), *inputs)


def _fake_propagate(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with torch.no_grad(), _logger_silenced("torch._subclasses.fake_tensor"):
        _run(_FakeTensorProp(gm, mode), *(mode.from_tensor(x) for x in inputs))
    for node in gm.graph.nodes:
        val = node.meta.pop("val", None)
        meta = _metadata(val)
        if meta is not None:
            node.meta["tensor_meta"] = meta
        else:
            node.meta.pop("tensor_meta", None)


def _run(prop: Any, *args: Any) -> None:
    """``prop.propagate(*args)``; any failure becomes a ShapePropagationError."""
    try:
        prop.propagate(*args)
    except ShapePropagationError:
        raise
    except Exception as exc:  # e.g. moving inputs to a device, before any node ran
        raise ShapePropagationError(None, exc) from exc


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
