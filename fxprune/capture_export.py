"""The second front end: capture a model with ``torch.export`` (non-strict) as a plain fx GraphModule.

Needs: a private copy of the user's model (``fxprune.trace`` makes it) and its bound
example inputs (``fxprune.inputs``). Guarantees: a GraphModule that

* takes the bound tensors positionally, in ``forward``'s order, like a traced one;
* holds every parameter and buffer at the attribute path it has in the model
  (``layer1.0.conv1.weight``): the graph signature's lifted placeholders become
  ``get_attr`` nodes, so ``state_dict`` names, tied weights, ``ignore=`` and the
  rewrite's parameter slicing work as for a traced model; tensors the forward
  creates are ``_tensor_constant<i>`` attributes;
* calls torch-level ops wherever an ATen op has an exact equivalent
  (``fxprune.rules.aten``), so the rule table, the removal semantics and bias
  compensation apply unchanged; the remaining ATen ops are barriers;
* keeps export's node metadata (``nn_module_stack``, ``stack_trace``);
* computes what the model computes on the example inputs (checked here).

The capture is specialised to the example inputs' shapes and to eval mode
(BatchNorm with running statistics, dropout off), as export itself is.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind
from torch.utils import _pytree as pytree

from .errors import TraceError
from .inputs import BoundInputs
from .rules.aten import to_torch_level

EXPORT_NOTE = "captured by torch.export (non-strict): specialised to the example input shapes and to eval mode"
CHECK_RTOL = 1e-4


def capture_with_export(model: nn.Module, bound: BoundInputs) -> tuple[fx.GraphModule, list[str]]:
    """``model`` (a copy the caller owns; put in eval mode here) as a normalised GraphModule, and
    the ATen ops left without an equivalent (they become barriers). Raises TraceError."""
    model.eval()
    program = _export(model, bound)
    gm = _unlift(program, model, bound)
    left = to_torch_level(gm)
    _check_same_outputs(gm, model, bound)
    return gm, left


def is_aten_graph(model: nn.Module) -> bool:
    """Whether ``model`` is a GraphModule of ATen ops (``ExportedProgram.module()``)."""
    return isinstance(model, fx.GraphModule) and any(
        isinstance(n.target, torch._ops.OpOverload) for n in model.graph.nodes if n.op == "call_function")


def _call_args(bound: BoundInputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) for ``forward``: named tensors by keyword in signature order, plus concrete args."""
    if not bound.names:
        return tuple(bound.tensors), dict(bound.specialised)
    kwargs = dict(zip(bound.names, bound.tensors))
    return (), {**kwargs, **{k: v for k, v in bound.specialised.items() if k not in kwargs}}


def _export(model: nn.Module, bound: BoundInputs) -> ExportedProgram:
    args, kwargs = _call_args(bound)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            return torch.export.export(model, args, kwargs, strict=False)
    except Exception as exc:  # export raises many types (UserError, Unsupported, guard failures ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise TraceError(f"cannot capture {type(model).__name__} with torch.export (non-strict): "
                         f"{type(exc).__name__}: {first}") from exc


def _unlift(program: ExportedProgram, model: nn.Module, bound: BoundInputs) -> fx.GraphModule:
    """A GraphModule of ``program``'s graph with parameters, buffers and constants as attributes."""
    graph, attrs, env = fx.Graph(), {}, {}
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    specs = program.graph_signature.input_specs
    if len(specs) != len(placeholders):
        raise TraceError("torch.export gave a graph whose inputs do not match its signature")
    user_values = iter(_user_values(program, bound))
    constant_count = 0
    for node, spec in zip(placeholders, specs):
        if spec.kind == InputKind.USER_INPUT:
            name, value = next(user_values)
            if name is None and isinstance(value, torch.Tensor):
                raise TraceError("a tensor given in concrete_args cannot be specialised by torch.export; "
                                 "pass it as an example input")
            if name is None:  # a non-tensor argument export specialised: its value
                env[node] = value
                continue
            env[node] = graph.placeholder(name)
            env[node].meta = dict(node.meta)
            continue
        target, value = _attribute(program, model, spec)
        if spec.kind == InputKind.CONSTANT_TENSOR:
            target, constant_count = f"_tensor_constant{constant_count}", constant_count + 1
        attrs[target] = value
        env[node] = graph.get_attr(target)
        env[node].meta = dict(node.meta)
    for node in program.graph.nodes:
        if node.op in ("call_function", "call_method"):
            env[node] = graph.node_copy(node, lambda n: env[n])
        elif node.op == "get_attr":
            raise TraceError(f"torch.export captured a submodule call ({node.target}, a control-flow or "
                             "higher-order op) that fxprune cannot prune through; keep that part out of the model")
        elif node.op == "output":
            graph.output(_outputs(program, node, env))
    gm = fx.GraphModule(attrs, graph, type(model).__name__)
    return gm


def _user_values(program: ExportedProgram, bound: BoundInputs) -> list[tuple[str | None, Any]]:
    """(name, value) of each user input of ``program``, in its order: a bound tensor gets its argument
    name (or ``input_<i>`` for ``*args``), any other value (a specialised constant) the name None."""
    args, kwargs = _call_args(bound)
    leaves = pytree.tree_leaves((args, kwargs))
    count = sum(1 for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT)
    if len(leaves) != count:
        raise TraceError(f"torch.export took {count} user inputs for {len(leaves)} given values; "
                         "pass tensors (or a dict of tensors) as example inputs")
    names = {id(t): n for n, t in zip(bound.names or [f"input_{i}" for i in range(len(bound.tensors))],
                                      bound.tensors)}
    return [(names.get(id(v)) if isinstance(v, torch.Tensor) else None, v) for v in leaves]


def _attribute(program: ExportedProgram, model: nn.Module, spec: Any) -> tuple[str, torch.Tensor]:
    """The tensor a lifted input stands for, taken from the model copy by its attribute path."""
    target = spec.target
    if spec.kind == InputKind.PARAMETER:
        return target, model.get_parameter(target)
    if spec.kind == InputKind.BUFFER:
        return target, model.get_buffer(target)
    if spec.kind == InputKind.CONSTANT_TENSOR:
        value = program.constants[target]
        if isinstance(value, torch.Tensor):
            return target, value.detach().clone()
    raise TraceError(f"torch.export lifted an input fxprune does not support: {spec.kind.name} {target}")


def _outputs(program: ExportedProgram, node: fx.Node, env: dict) -> Any:
    """The user outputs, in the structure ``forward`` returns when it is a tensor or a (nested)
    tuple/list/dict of tensors; any other container comes back as a flat tuple."""
    specs = program.graph_signature.output_specs
    flat = [a for a in node.args[0]]
    if any(s.kind != OutputKind.USER_OUTPUT for s in specs):
        kinds = sorted({s.kind.name for s in specs if s.kind != OutputKind.USER_OUTPUT})
        raise TraceError(f"the exported forward mutates its inputs or state ({', '.join(kinds)}); "
                         "fxprune prunes pure forwards only")
    values = [env[a] if isinstance(a, fx.Node) else a for a in flat]
    spec = program.call_spec.out_spec
    if spec is not None and _plain_containers(spec):
        return pytree.tree_unflatten(values, spec)
    return values[0] if len(values) == 1 else tuple(values)


def _plain_containers(spec: pytree.TreeSpec) -> bool:
    if spec.is_leaf():
        return True
    return spec.type in (tuple, list, dict) and all(_plain_containers(c) for c in spec.children_specs)


def _check_same_outputs(gm: fx.GraphModule, model: nn.Module, bound: BoundInputs) -> None:
    """The normalised graph must compute what the model computes on the example inputs
    (meta tensors are not checked: they carry no values)."""
    if any(x.device.type == "meta" for x in bound.tensors):
        return
    args, kwargs = _call_args(bound)
    with torch.no_grad():
        want = pytree.tree_leaves(model(*args, **kwargs))
        got = pytree.tree_leaves(gm(*bound.tensors))
    want = [t for t in want if isinstance(t, torch.Tensor)]
    got = [t for t in got if isinstance(t, torch.Tensor)]
    if len(want) != len(got) or any(not _close(g, w) for g, w in zip(got, want)):
        raise TraceError(f"the torch.export capture of {type(model).__name__} does not compute what the model "
                         "computes on the example inputs (fxprune's normalisation of its ATen graph is wrong); "
                         "use capture='fx' or report this model")


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    if got.shape != want.shape:
        return False
    if not want.is_floating_point():
        return bool(torch.equal(got, want))
    scale = max(1.0, float(want.detach().abs().max().cpu())) if want.numel() else 1.0
    return bool(((got - want).abs().max().cpu() <= CHECK_RTOL * scale).item()) if want.numel() else True
