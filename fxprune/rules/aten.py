"""ATen ops of a ``torch.export`` graph, mapped onto the torch-level ops the rule table knows.

``torch.export`` emits ATen overloads (``aten.conv2d.default``, ``aten.view.default`` ...).
Where an ATen op computes exactly what a torch-level op computes (same values, same
in-place behaviour), ``to_torch_level`` turns the node into that op, so the rules of
``fxprune/rules/*.py`` (analysis *and* rewrite: view sizes, split sizes, slice bounds,
group counts, the SDPA scale), the removal semantics and bias compensation apply as
they do to a symbolically traced graph. Only arguments are reordered or renamed;
nothing is approximated.

An ATen op without an entry stays as it is: it has no rule, so the analysis makes
every dim it touches a barrier (named by op and module path), never a guess.
Checks that export inserts (``aten._assert_tensor_metadata`` ...) are dropped: they
assert the original shapes, which pruning changes on purpose.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx

aten = torch.ops.aten

Args = tuple
Kwargs = dict


@dataclass(frozen=True)
class Equivalent:
    """The torch-level call (``op``, ``target``) computing what an ATen op computes;
    ``adapt(args, kwargs, node)`` gives its arguments."""

    op: str
    target: Any
    adapt: Callable[[Args, Kwargs, fx.Node], tuple[Args, Kwargs]]


def _same(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
    return tuple(args), dict(kwargs)


def _get(args: Args, kwargs: Kwargs, index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


ATEN_ONLY_FLAGS = ("cudnn_enable", "cudnn_enabled", "memory_format")


def _first(n: int) -> Callable[[Args, Kwargs, fx.Node], tuple[Args, Kwargs]]:
    """Keep the first ``n`` positional arguments and the keywords, without ATen-only flags
    (``cudnn_enabled``, ``memory_format``) that change no value."""
    def adapt(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
        return tuple(args[:n]), {k: v for k, v in kwargs.items() if k not in ATEN_ONLY_FLAGS}
    return adapt


def _batch_norm(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
    """aten: (x, weight, bias, mean, var, training, momentum, eps, cudnn);
    F: (x, mean, var, weight, bias, training, momentum, eps)."""
    x, w, b, mean, var, training, momentum, eps = args[:8]
    return (x, mean, var, w, b, training, momentum, eps), {}


def _instance_norm(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
    x, w, b, mean, var, use_input_stats, momentum, eps = args[:8]
    return (x, mean, var, w, b, use_input_stats, momentum, eps), {}


def _max_pool(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
    """An empty ``stride`` means "the kernel size" in ATen; F spells it None."""
    args = list(args)
    if len(args) > 2 and not args[2]:
        args[2] = None
    return tuple(args), dict(kwargs)


def _softmax(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
    dtype = _get(args, kwargs, 2, "dtype")
    return (args[0], args[1]), ({} if dtype is None else {"dtype": dtype})


def _reduction(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
    """``mean.dim``/``sum.dim_IntList``/``amax``: (x, dim, keepdim) positional, dtype by keyword."""
    kw = {k: v for k, v in kwargs.items() if k in ("dtype", "keepdim")}
    return tuple(args[:3]), kw


def _upsample(mode: str, has_align: bool) -> Callable[[Args, Kwargs, fx.Node], tuple[Args, Kwargs]]:
    """``upsample_*.vec(x, output_size, [align_corners,] scale_factors)``: F.interpolate calls
    exactly this kernel with the size or the scale factors it was given."""
    def adapt(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
        x, size = args[0], _get(args, kwargs, 1, "output_size")
        align = _get(args, kwargs, 2, "align_corners") if has_align else None
        scale = _get(args, kwargs, 3 if has_align else 2, "scale_factors")
        kw: dict[str, Any] = {"mode": mode}
        if size is not None:
            kw["size"] = list(size)
        else:
            kw["scale_factor"] = list(scale)
        if has_align:
            kw["align_corners"] = align
        return (x,), kw
    return adapt


def _pad(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
    x, pad = args[0], _get(args, kwargs, 1, "pad")
    mode = _get(args, kwargs, 2, "mode", "constant")
    value = _get(args, kwargs, 3, "value")
    return (x, list(pad)), ({"mode": mode} if value is None else {"mode": mode, "value": value})


def _constant_pad(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
    return (args[0], list(args[1])), {"mode": "constant", "value": _get(args, kwargs, 2, "value", 0)}


def _rank(node: fx.Node) -> int | None:
    x = node.args[0] if node.args else None
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    return val.dim() if isinstance(val, torch.Tensor) else None


def _slice(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
    """``slice.Tensor(x, dim, start, end, step)`` is ``x[:, ..., start:end:step]``."""
    dim = _get(args, kwargs, 1, "dim", 0)
    start, end = _get(args, kwargs, 2, "start"), _get(args, kwargs, 3, "end")
    step = _get(args, kwargs, 4, "step", 1)
    rank = _rank(node)
    dim = dim % rank if rank else dim
    return (args[0], (slice(None),) * dim + (slice(start, end, step),)), {}


def _select(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
    """``select.int(x, dim, index)`` is ``x[:, ..., index]``."""
    rank = _rank(node)
    dim = args[1] % rank if rank else args[1]
    return (args[0], (slice(None),) * dim + (args[2],)), {}


def _einsum(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
    return (args[0], *args[1]), {}


def _dtype_only(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
    """``to.dtype(x, dtype)`` / ``_to_copy(x, dtype=...)``: a cast (same device, no layout change)."""
    dtype = _get(args, kwargs, 1, "dtype")
    return (args[0], dtype), {}


def _inplace_flag(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
    return tuple(args), {**kwargs, "inplace": True}


def _hardtanh_(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
    return tuple(args[:3]), {"inplace": True}


def _dropout_(args: Args, kwargs: Kwargs, node: fx.Node) -> tuple[Args, Kwargs]:
    return tuple(args[:3]), {"inplace": True}


def _method(name: str, adapt=_same) -> Equivalent:
    return Equivalent("call_method", name, adapt)


def _fn(target: Any, adapt=_same) -> Equivalent:
    return Equivalent("call_function", target, adapt)


UNARY = ["relu", "sigmoid", "tanh", "exp", "abs", "neg", "sqrt", "rsqrt", "erf", "log", "sin", "cos", "square",
         "sign", "round", "floor", "ceil", "logical_not"]
BINARY = ["add", "sub", "mul", "div", "maximum", "minimum", "where", "pow", "eq", "ne", "lt", "le", "gt", "ge"]
INPLACE_METHODS = ["relu_", "sigmoid_", "tanh_", "add_", "sub_", "mul_", "div_", "clamp_", "masked_fill_",
                   "zero_", "fill_"]

EQUIVALENTS: dict[Any, Equivalent] = {
    # layers
    aten.conv1d: _fn(F.conv1d), aten.conv2d: _fn(F.conv2d), aten.conv3d: _fn(F.conv3d),
    aten.conv_transpose1d: _fn(F.conv_transpose1d), aten.conv_transpose2d: _fn(F.conv_transpose2d),
    aten.conv_transpose3d: _fn(F.conv_transpose3d),
    aten.linear: _fn(F.linear),
    aten.matmul: _fn(torch.matmul), aten.bmm: _fn(torch.bmm), aten.mm: _fn(torch.mm),
    aten.einsum: _fn(torch.einsum, _einsum),
    aten.scaled_dot_product_attention: _fn(F.scaled_dot_product_attention),
    # normalisations
    aten.batch_norm: _fn(F.batch_norm, _batch_norm),
    aten.instance_norm: _fn(F.instance_norm, _instance_norm),
    aten.layer_norm: _fn(F.layer_norm, _first(5)),
    aten.group_norm: _fn(F.group_norm, _first(5)),
    aten.rms_norm: _fn(F.rms_norm, _first(4)),
    aten.softmax: _fn(torch.softmax, _softmax), aten.log_softmax: _fn(torch.log_softmax, _softmax),
    # activations and arithmetic
    aten.gelu: _fn(F.gelu), aten.silu: _fn(F.silu), aten.silu_: _fn(F.silu, _inplace_flag),
    aten.hardswish: _fn(F.hardswish), aten.hardswish_: _fn(F.hardswish, _inplace_flag),
    aten.hardsigmoid: _fn(F.hardsigmoid), aten.hardsigmoid_: _fn(F.hardsigmoid, _inplace_flag),
    aten.hardtanh: _fn(F.hardtanh), aten.hardtanh_: _fn(F.hardtanh, _hardtanh_),
    aten.leaky_relu: _fn(F.leaky_relu), aten.mish: _fn(F.mish),
    aten.relu_: _fn(torch.relu_),
    aten.clamp: _fn(torch.clamp), aten.clip: _fn(torch.clip),
    aten.dropout: _fn(F.dropout), aten.dropout_: _fn(F.dropout, _dropout_),
    aten.masked_fill: _method("masked_fill"),
    **{getattr(aten, n): _fn(getattr(torch, n)) for n in UNARY + BINARY},
    **{getattr(aten, n): _method(n) for n in INPLACE_METHODS},
    aten.clone: _method("clone", _first(1)), aten.detach: _method("detach"),
    aten.contiguous: _method("contiguous", _first(1)),
    # pooling, resizing, padding
    aten.max_pool1d: _fn(F.max_pool1d, _max_pool), aten.max_pool2d: _fn(F.max_pool2d, _max_pool),
    aten.max_pool3d: _fn(F.max_pool3d, _max_pool),
    aten.avg_pool1d: _fn(F.avg_pool1d), aten.avg_pool2d: _fn(F.avg_pool2d), aten.avg_pool3d: _fn(F.avg_pool3d),
    aten.adaptive_avg_pool1d: _fn(F.adaptive_avg_pool1d), aten.adaptive_avg_pool2d: _fn(F.adaptive_avg_pool2d),
    aten.adaptive_avg_pool3d: _fn(F.adaptive_avg_pool3d),
    aten.pad: _fn(F.pad, _pad), aten.constant_pad_nd: _fn(F.pad, _constant_pad),
    aten.roll: _fn(torch.roll),
    # reductions
    aten.mean: _fn(torch.mean, _reduction), aten.sum: _fn(torch.sum, _reduction),
    aten.amax: _fn(torch.amax, _reduction), aten.amin: _fn(torch.amin, _reduction),
    # shapes
    aten.view: _method("view"), aten._unsafe_view: _method("view"), aten.reshape: _fn(torch.reshape),
    aten.reshape_as: _method("reshape_as"), aten.view_as: _method("view_as"),
    aten.flatten: _fn(torch.flatten), aten.unflatten: _fn(torch.unflatten),
    aten.permute: _fn(torch.permute), aten.transpose: _fn(torch.transpose), aten.t: _fn(torch.t),
    aten.expand: _method("expand", _first(2)),
    aten.unsqueeze: _fn(torch.unsqueeze), aten.squeeze: _fn(torch.squeeze),
    aten.slice: _fn(operator.getitem, _slice), aten.select: _fn(operator.getitem, _select),
    aten.cat: _fn(torch.cat), aten.stack: _fn(torch.stack),
    aten.split: _fn(torch.split), aten.split_with_sizes: _fn(torch.split), aten.chunk: _fn(torch.chunk),
    aten.unbind: _fn(torch.unbind),
    aten.to: _method("to", _dtype_only),
}
"""ATen overload packets -> their torch-level equivalent (see module doc)."""

OVERLOAD_EQUIVALENTS: dict[Any, Equivalent] = {
    aten.upsample_nearest2d.vec: _fn(F.interpolate, _upsample("nearest", False)),
    aten.upsample_bilinear2d.vec: _fn(F.interpolate, _upsample("bilinear", True)),
    aten.upsample_bicubic2d.vec: _fn(F.interpolate, _upsample("bicubic", True)),
}
"""Single overloads (others of the same packet take other arguments: no equivalent)."""

OVERLOADS_REFUSED = {aten.to.device, aten.to.other, aten.to.prim_Device, aten.to.dtype_layout,
                     aten.where.default, aten.to.prim_other}
"""Overloads of mapped packets whose arguments mean something else: left without a rule."""

CHECKS = {aten._assert_tensor_metadata.default, aten._assert_scalar.default, aten._assert_async.msg,
          aten._assert_async.default, aten.sym_constrain_range_for_size.default}
"""Checks of the export-time shapes and values: dropped (pruning changes shapes on purpose)."""

ALIASES = {aten.alias.default}
"""Views that are the same tensor (in-place ops on them act on the input): replaced by their input."""


def equivalent_of(target: Any) -> Equivalent | None:
    """The torch-level equivalent of an ATen overload, or None (the node keeps no rule)."""
    packet = getattr(target, "overloadpacket", None)
    if packet is None or target in OVERLOADS_REFUSED:
        return None
    return OVERLOAD_EQUIVALENTS.get(target) or EQUIVALENTS.get(packet)


def _split_addmm(graph: fx.Graph, node: fx.Node) -> bool:
    """``addmm(b, x, w)`` (beta = alpha = 1, e.g. Hugging Face's Conv1D) as ``torch.add(torch.mm(x, w), b)``:
    the decomposed form the matmul and elementwise rules know (the same sum; rounding may differ in
    the last bit). Returns False (node untouched) for other scalings."""
    if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1 or len(node.args) != 3:
        return False
    bias, x, w = node.args
    with graph.inserting_before(node):
        product = graph.call_function(torch.mm, (x, w))
    product.meta = {k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace")}
    node.op, node.target, node.args, node.kwargs = "call_function", torch.add, (product, bias), {}
    return True


def to_torch_level(gm: fx.GraphModule) -> list[str]:
    """Turn every ATen node with an equivalent into it, drop export's checks, drop aliases.

    Needs: a graph whose nodes carry export's ``meta["val"]``. Guarantees: the graph computes
    what it computed; ATen ops without an equivalent are left as they are (and listed, by op).
    """
    left: list[str] = []
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if node.target in CHECKS and not node.users:
            graph.erase_node(node)
            continue
        if node.target is aten.addmm.default and _split_addmm(graph, node):
            continue
        if node.target in ALIASES:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            continue
        eq = equivalent_of(node.target)
        try:
            args, kwargs = eq.adapt(tuple(node.args), dict(node.kwargs), node) if eq is not None else (None, None)
        except (IndexError, ValueError, TypeError):  # an argument list the table does not know: keep ATen
            eq = None
        if eq is None:
            left.append(str(node.target))
            continue
        node.op, node.target, node.args, node.kwargs = eq.op, eq.target, args, kwargs
    graph.lint()
    gm.recompile()
    return left
