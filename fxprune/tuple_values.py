"""Tuple-valued nodes made explicit, so that rules see one value per element.

Symbolic tracing keeps some tuples whole as one node:

* tensor lists: ``torch.cat(y.chunk(2, 1), 1)`` passes the ``chunk`` node (a tuple of
  tensors) to ``cat``;
* shapes: ``x.view(x.size()[:-1] + (h, d))`` passes one node (a ``torch.Size`` built
  from a slice of a size read and a literal tuple) to ``view``.

``expand_tuple_values`` rewrites both into explicit element lists::

    cat(chunk, 1)               ->  cat([chunk[0], chunk[1]], 1)
    view(x, size()[:-1] + (h, d))  ->  view(x, x.size(0), x.size(1), h, d)

Needs: shapes propagated (``node.meta["tensor_meta"]``). Guarantees: the graph computes
the same values; what it cannot make explicit is left as it was, and the shape rules
then keep the dims it touches whole (``fxprune.rules.shape``).
"""
from __future__ import annotations

import operator
from typing import Any, NamedTuple

import torch
from torch import fx

from .rules.context import node_shape

TENSOR_LIST_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate, torch.stack, torch.hstack, torch.vstack,
                         torch.dstack, torch.column_stack}
SHAPE_METHODS = {"view", "reshape", "expand", "broadcast_to", "new_zeros", "new_ones", "new_empty"}
SHAPE_FUNCTIONS = {torch.reshape, torch.broadcast_to}


def expand_tuple_values(gm: fx.GraphModule) -> bool:
    """Make tuple-valued arguments explicit (see the module doc); returns whether anything changed."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in TENSOR_LIST_FUNCTIONS:
            changed |= _expand_tensor_list(node)
        elif _takes_shape(node):
            changed |= _expand_shape(node)
    if changed:
        _erase_dead_number_nodes(gm.graph)
        gm.recompile()
    return changed


def _expand_tensor_list(node: fx.Node) -> bool:
    """``cat(t, d)`` with ``t`` one node holding a tuple of tensors -> ``cat([t[0], t[1], ...], d)``."""
    key = "tensors" if "tensors" in node.kwargs else None
    value = node.kwargs["tensors"] if key else (node.args[0] if node.args else None)
    items = _tensor_items(value)
    if items is None:
        return False
    if key:
        node.kwargs = {**node.kwargs, key: items}
    else:
        node.args = (items, *node.args[1:])
    return True


def _tensor_items(value: Any) -> list[fx.Node] | None:
    """The tensors of a tuple-valued node (``chunk``, ``split`` ..., or a literal slice of one), one node each."""
    if not isinstance(value, fx.Node):
        return None
    if value.op == "call_function" and value.target is operator.getitem and _literal_slice(value.args[1]):
        inner = _tensor_items(value.args[0])
        return None if inner is None else inner[value.args[1]]
    metas = value.meta.get("tensor_meta")
    if not isinstance(metas, (tuple, list)) or not metas:
        return None
    return [_item(value, i, meta) for i, meta in enumerate(metas)]


def _item(tuple_node: fx.Node, i: int, meta: Any) -> fx.Node:
    """The node ``tuple_node[i]`` (an existing one, or a new one right after ``tuple_node``)."""
    for user in tuple_node.users:
        if user.op == "call_function" and user.target is operator.getitem and user.args == (tuple_node, i):
            return user
    with tuple_node.graph.inserting_after(tuple_node):
        item = tuple_node.graph.call_function(operator.getitem, (tuple_node, i))
    item.meta = {**{k: v for k, v in tuple_node.meta.items() if k != "tensor_meta"}, "tensor_meta": meta}
    return item


def _takes_shape(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in SHAPE_METHODS
    return node.op == "call_function" and node.target in SHAPE_FUNCTIONS


def _expand_shape(node: fx.Node) -> bool:
    """A shape given as one node built from size reads and literals -> its elements, one argument each."""
    if len(node.args) != 2 or not isinstance(node.args[1], fx.Node) or _whole_shape_of(node.args[1]) is not None:
        return False  # a whole shape read (``y.view(x.shape)``) is rewritten as a whole by the shape rules
    elements = _elements(node.args[1])
    if elements is None:
        return False
    elements = [_size_read(*e, before=node) if isinstance(e, _Read) else e for e in elements]
    if node.op == "call_method":
        node.args = (node.args[0], *elements)
    else:
        node.args = (node.args[0], tuple(elements))
    return True


class _Read(NamedTuple):
    """``tensor.size(dim)``, not yet in the graph."""

    tensor: fx.Node
    dim: int


def _elements(value: Any) -> list | None:
    """The elements of a shape-valued ``value`` (ints, int-valued nodes, ``_Read``s), or None if unknown."""
    if isinstance(value, (tuple, list)):
        return list(value)
    if not isinstance(value, fx.Node) or value.op not in ("call_function", "call_method"):
        return None
    whole = _whole_shape_of(value)
    if whole is not None:
        shape = node_shape(whole)
        return None if shape is None else [_Read(whole, d) for d in range(len(shape))]
    if value.target is operator.getitem and _literal_slice(value.args[1]):
        inner = _elements(value.args[0])
        return None if inner is None else inner[value.args[1]]
    if value.target is operator.add and len(value.args) == 2:
        left, right = (_elements(v) for v in value.args)
        return None if left is None or right is None else left + right
    return None


def _literal_slice(index: Any) -> bool:
    return isinstance(index, slice) and all(isinstance(v, (int, type(None)))
                                            for v in (index.start, index.stop, index.step))


def _whole_shape_of(value: fx.Node) -> fx.Node | None:
    """``x`` when ``value`` is ``x.size()`` or ``x.shape``."""
    if value.op == "call_method" and value.target == "size" and len(value.args) == 1 and not value.kwargs:
        return value.args[0]
    if value.op == "call_function" and value.target is getattr and value.args[1] == "shape":
        return value.args[0]
    return None


def _size_read(tensor: fx.Node, dim: int, *, before: fx.Node) -> fx.Node:
    """A ``tensor.size(dim)`` node (inserted before ``before``)."""
    with tensor.graph.inserting_before(before):
        return tensor.graph.call_method("size", (tensor, dim))


def _erase_dead_number_nodes(graph: fx.Graph) -> None:
    """Remove the size reads and tuple arithmetic the expansion left without users."""
    for node in reversed(list(graph.nodes)):
        if node.users or node.op not in ("call_function", "call_method"):
            continue
        if _whole_shape_of(node) is not None or node.target in (operator.getitem, operator.add):
            graph.erase_node(node)  # pure ops without users
