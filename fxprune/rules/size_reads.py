"""Reads of a tensor's size (``x.shape[1]``, ``x.size(-1)``, ``x.numel()``, ``len(x)``) and their uses.

A size read is a number in the graph, not a tensor: pruning the dim it reads changes
it. ``size_uses`` follows the number through number arithmetic (``C // heads``,
``C ** -0.5``) to the ops that consume it and classifies each use:

* ``"shape"``: a size argument of a reshape/view/expand/split; where the plan changes that
  op's shapes, its rule gives it the new size (``fxprune/rules/shape.py``,
  ``Rewriter.reads_pruned_size``); where it does not (``y.reshape(B, N, D)`` with ``D``
  read from a pruned tensor but ``y`` unchanged), it keeps the original number;
* ``"value"``: arithmetic into tensor values (a ``1/sqrt(C)`` scale, ``sum / C``), an
  assertion, a 0-d tensor of the number, a model output: ``keep_original_sizes`` makes
  the rewrite keep the original number as a literal, which is exactly what the original
  model computes with the removed units zeroed;
* ``"other"``: anything else (a tensor created with that size, ``chunk(C)``, an op
  fxprune does not know): the analysis makes the dims it reads barriers.

Before::

    size = q.size(-1);  pow_1 = size ** -0.5;  mul = matmul * pow_1

after pruning ``q``'s last dim from 64 to 32 (the read stays for other uses)::

    mul = matmul * 0.125
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx

from .context import node_shape, tensor_meta_shapes

NUMBER_OPS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod, operator.pow,
    operator.neg, operator.pos, operator.abs, operator.eq, operator.ne, operator.lt, operator.le, operator.gt,
    operator.ge, operator.getitem,
}
SHAPE_ARG_METHODS = {"view", "reshape", "expand", "broadcast_to", "unflatten", "split", "split_with_sizes"}
SHAPE_ARG_FUNCTIONS = {torch.reshape, torch.broadcast_to, torch.unflatten, torch.split}
VALUE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod, operator.pow,
    torch.add, torch.sub, torch.mul, torch.div, torch.true_divide, torch.pow, torch.clamp, torch.clip,
    torch.where, torch.full_like, torch.tensor, torch.as_tensor, torch.scalar_tensor, torch._assert,
}
VALUE_METHODS = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "pow_", "clamp", "clamp_", "clip",
    "clip_", "masked_fill", "masked_fill_", "fill_", "new_tensor",
}


@dataclass(frozen=True)
class SizeRead:
    """``node`` reads the sizes ``dims`` of ``tensor``; ``number(shape)`` is what it gives for ``shape``."""

    node: fx.Node
    tensor: fx.Node
    dims: tuple[int, ...]
    number: Callable[[tuple[int, ...]], Any]


@dataclass(frozen=True)
class SizeUse:
    """``user`` consumes ``value``, a number computed from the sizes ``dims`` of the read tensor."""

    user: fx.Node
    value: fx.Node
    dims: tuple[int, ...]
    kind: str  # "shape", "value" or "other"


def size_read(node: Any) -> SizeRead | None:
    """The size read ``node`` is (None when it reads no size)."""
    if not isinstance(node, fx.Node) or node.op not in ("call_method", "call_function"):
        return None
    target, args = node.target, node.args
    x = args[0] if args else None
    ndim = len(shape) if (shape := node_shape(x)) is not None else None
    if ndim is None:
        return _item_of_shape(node)
    everything = tuple(range(ndim))
    if node.op == "call_method" and target == "size":
        dim = args[1] if len(args) > 1 else node.kwargs.get("dim")
        if dim is None:
            return SizeRead(node, x, everything, torch.Size)
        return SizeRead(node, x, (dim % ndim,), lambda s: s[dim]) if isinstance(dim, int) else None
    if target is getattr and args[1] == "shape":
        return SizeRead(node, x, everything, torch.Size)
    if node.op == "call_method" and target in ("numel", "nelement"):
        return SizeRead(node, x, everything, math.prod)
    if target is len and ndim:
        return SizeRead(node, x, (0,), lambda s: s[0])
    return None


def _item_of_shape(node: fx.Node) -> SizeRead | None:
    """``x.shape[i]`` / ``x.size()[a:b]``: an int or slice of a whole-shape read."""
    if node.target is not operator.getitem or node.op != "call_function":
        return None
    whole, index = node.args
    read = size_read(whole)
    if read is None or read.number is not torch.Size or not _literal_index(index):
        return None
    dims = read.dims[index]
    if isinstance(index, int):
        return SizeRead(node, read.tensor, (dims,), lambda s: s[index])
    return SizeRead(node, read.tensor, tuple(dims), lambda s: torch.Size(s[index]))


def _literal_index(index: Any) -> bool:
    """An int, or a slice of ints (``s[:-1]``, not ``s[:x.dim() - 1]``)."""
    if isinstance(index, slice):
        return all(isinstance(v, (int, type(None))) for v in (index.start, index.stop, index.step))
    return isinstance(index, int)


def size_uses(read: SizeRead) -> list[SizeUse]:
    """Every op that consumes the number ``read`` gives (through number arithmetic), classified."""
    uses: list[SizeUse] = []
    todo = [(read.node, read.dims)]
    seen: set[fx.Node] = set()
    while todo:
        value, dims = todo.pop()
        if value in seen:
            continue
        seen.add(value)
        for user in value.users:
            sub = _item_of_shape(user) if user.args and user.args[0] is value else None
            if sub is not None:
                todo.append((user, sub.dims))
            elif is_number_op(user):
                todo.append((user, dims))
            else:
                uses.append(SizeUse(user, value, dims, _kind(user, value)))
    return uses


def is_number_op(node: fx.Node) -> bool:
    """Arithmetic on numbers (no tensor comes out)."""
    return node.op == "call_function" and node.target in NUMBER_OPS and tensor_meta_shapes(node) is None


def _kind(user: fx.Node, value: fx.Node) -> str:
    if user.op == "output":
        return "value"
    if user.op == "call_method" and user.target in SHAPE_ARG_METHODS and user.args[0] is not value:
        return "shape"
    if user.op == "call_function" and user.target in SHAPE_ARG_FUNCTIONS and user.args[0] is not value:
        return "shape"
    if user.op == "call_method" and user.target in VALUE_METHODS and user.args[0] is not value:
        return "value"
    if user.op == "call_function" and user.target in VALUE_FUNCTIONS:
        return "value"
    if user.target is F.scaled_dot_product_attention and _only_in_scale(user, value):
        return "value"
    return "other"


def _only_in_scale(user: fx.Node, value: fx.Node) -> bool:
    """Whether ``value`` reaches ``scaled_dot_product_attention`` only as its ``scale``."""
    others = (tuple(user.args[:6]), {k: v for k, v in user.kwargs.items() if k != "scale"})
    return value not in _nodes_in(others)


def keep_original_sizes(r: Any) -> None:
    """Rewrite of a size read: every "value" use of it gets the number the original model computes
    (reads of dims that did not change stay dynamic, e.g. the batch size)."""
    read = size_read(r.node)
    if read is None or not _changed(r, read):
        return
    for use in size_uses(read):
        if use.kind == "value" or (use.kind == "shape" and not _shapes_change(r, use.user)):
            original = _original_number(r, use.value, use.user)
            if original is not use.value:
                _replace_arg(use.user, use.value, original)


def _shapes_change(r: Any, node: fx.Node) -> bool:
    """Whether the plan changes the shape of ``node`` or of a tensor it takes (a reshape that it
    does not change needs the original sizes: its own rewrite is not even run)."""
    old, new = r.rw.old_shapes, r.rw.new_shapes
    return any(old.get(n.name) != new.get(n.name) for n in [node, *node.all_input_nodes])


def _changed(r: Any, read: SizeRead) -> bool:
    old, new = r.old_shape(read.tensor), r.new_shape(read.tensor)
    return old is not None and new is not None and any(old[d] != new[d] for d in read.dims)


def _original_number(r: Any, value: fx.Node, before: fx.Node) -> Any:
    """``value`` as the original model computes it: a literal when it only reads changed dims,
    ``value`` itself when it reads none, else a new node (inserted before ``before``)."""
    read = size_read(value)
    if read is not None:
        return read.number(r.old_shape(read.tensor)) if _changed(r, read) else value
    if not is_number_op(value):
        return value
    args = fx.node.map_arg(value.args, lambda n: _original_number(r, n, before))
    kwargs = fx.node.map_arg(value.kwargs, lambda n: _original_number(r, n, before))
    if _same(args, value.args) and _same(kwargs, value.kwargs):
        return value
    if not _has_node((args, kwargs)):
        return value.target(*args, **kwargs)
    with value.graph.inserting_before(before):
        return value.graph.call_function(value.target, args, kwargs)


def _replace_arg(user: fx.Node, value: fx.Node, new: Any) -> None:
    """Give ``user`` ``new`` (a literal or a node) wherever it takes ``value``."""
    swap = lambda a: new if a is value else a  # noqa: E731
    user.args = fx.node.map_aggregate(user.args, swap)
    user.kwargs = fx.node.map_aggregate(user.kwargs, swap)


def _same(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` hold the very same leaves (nodes and literals)."""
    flat_a, flat_b = [], []
    fx.node.map_aggregate(a, flat_a.append)
    fx.node.map_aggregate(b, flat_b.append)
    return len(flat_a) == len(flat_b) and all(x is y for x, y in zip(flat_a, flat_b))


def _nodes_in(a: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(a, found.append)
    return found


def _has_node(a: Any) -> bool:
    return bool(_nodes_in(a))
