"""Physical rewrite: a new, smaller GraphModule that keeps only the planned units.

Needs: the ChannelGraph of a traced model and a plan (kept units per group).
Guarantees: parameters and buffers are sliced along every pruned dim; modules
get attributes that agree with their new weights (in/out channels, groups,
num_features, normalized_shape, heads ...); literal arguments (view sizes,
split sizes, slice bounds, num_heads) are rewritten; the result is linted and
shape-propagated again, and any node whose new shape differs from what the
analysis predicted raises ``RewriteError``. The user's model is never touched.
"""
from __future__ import annotations

import copy
import operator
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import fx, nn

from .errors import PlanError, RewriteError
from .graph import ChannelGraph
from .plan import check_plan
from .rules.base import RULES
from .rules.context import tensor_meta_shapes
from .spaces import SpaceKey
from .state import attach_state, state_of
from .trace import propagate_shapes


class RewriteContext:
    """What a rule's ``rewrite`` sees: old/new shapes, kept indices, the module to fix."""

    def __init__(self, rw: "Rewriter", node: fx.Node):
        self.rw = rw
        self.node = node

    @property
    def module(self) -> nn.Module:
        return self.rw.gm.get_submodule(self.node.target)

    def set_module(self, module: nn.Module) -> None:
        parent, _, name = self.node.target.rpartition(".")
        setattr(self.rw.gm.get_submodule(parent) if parent else self.rw.gm, name, module)

    def old_shape(self, x: Any) -> tuple[int, ...] | None:
        shapes = self.rw.old_shapes.get(x.name) if isinstance(x, fx.Node) else None
        return shapes if isinstance(shapes, tuple) else None

    def new_shape(self, x: Any) -> tuple[int, ...] | None:
        shapes = self.rw.new_shapes.get(x.name) if isinstance(x, fx.Node) else None
        return shapes if isinstance(shapes, tuple) else None

    def old_shapes(self, x: fx.Node) -> list:
        return self.rw.old_shapes[x.name]

    def new_shapes(self, x: fx.Node) -> list:
        return self.rw.new_shapes[x.name]

    def kept_of(self, x: fx.Node, dim: int) -> np.ndarray | None:
        return self.rw.kept.get(self.rw.key_of(x, dim))

    def reads_pruned_size(self, value: fx.Node) -> bool:
        """Whether the integer ``value`` is computed from the size of a pruned dim."""
        return self.rw.reads_pruned_size(value)


class Rewriter:
    def __init__(self, graph: ChannelGraph, plan: Mapping[str, Sequence[int]]):
        self.graph = graph
        self.plan = check_plan(graph, plan)
        removed = graph.removed_labels(self.plan)
        self.kept: dict[SpaceKey, np.ndarray] = {}
        for gid in self.plan:
            for key in graph.group(gid).spaces:
                idx = graph.kept_index(key, removed)
                if idx is not None:
                    self.kept[key] = idx
        self.old_shapes = {n.name: tensor_meta_shapes(n) for n in graph.gm.graph.nodes}
        self.new_shapes = {n.name: self._predict(n) for n in graph.gm.graph.nodes}
        self.gm: fx.GraphModule = _copy_graph_module(graph.gm)

    def key_of(self, node: fx.Node, dim: int, out_index: int = -1) -> SpaceKey:
        return ("p", node.target, dim) if node.op == "get_attr" else ("n", node.name, out_index, dim)

    def _predict(self, node: fx.Node):
        shapes = tensor_meta_shapes(node)
        if isinstance(shapes, tuple):
            return self._predict_one(node, shapes, -1)
        if isinstance(shapes, list):
            return [None if s is None else self._predict_one(node, s, i) for i, s in enumerate(shapes)]
        return None

    def _predict_one(self, node: fx.Node, shape: tuple, out_index: int) -> tuple[int, ...]:
        return tuple(
            len(self.kept[k]) if (k := self.key_of(node, d, out_index)) in self.kept else n
            for d, n in enumerate(shape)
        )

    def run(self) -> fx.GraphModule:
        sliced_owners = self._slice_parameters()
        modules = dict(self.gm.named_modules())
        for node in list(self.gm.graph.nodes):
            rule = RULES.lookup(node, modules) if node.op.startswith("call_") else None
            if rule is None or rule.rewrite is None:
                continue
            if self._changed(node) or (node.op == "call_module" and node.target in sliced_owners):
                rule.rewrite(RewriteContext(self, node))
        self.gm.graph.lint()
        self.gm.recompile()
        return self.gm

    def reads_pruned_size(self, value: fx.Node, seen: set | None = None) -> bool:
        seen = set() if seen is None else seen
        if value in seen:
            return False
        seen.add(value)
        dims = _size_read(value)
        if dims is not None:
            tensor, dim = dims
            old, new = self.old_shapes.get(tensor.name), self.new_shapes.get(tensor.name)
            if not isinstance(old, tuple):
                return False
            return old != new if dim is None else old[dim] != new[dim]
        return any(self.reads_pruned_size(n, seen) for n in value.all_input_nodes)

    def _changed(self, node: fx.Node) -> bool:
        names = [node.name] + [n.name for n in node.all_input_nodes]
        return any(self.old_shapes.get(n) != self.new_shapes.get(n) for n in names)

    def _slice_parameters(self) -> set[str]:
        by_name: dict[str, list[tuple[int, np.ndarray]]] = {}
        for key, idx in self.kept.items():
            if key[0] == "p":
                by_name.setdefault(key[1], []).append((key[2], idx))
        owners = set()
        for qualname, cuts in by_name.items():
            owner_name, _, attr = qualname.rpartition(".")
            owner = self.gm.get_submodule(owner_name) if owner_name else self.gm
            tensor = getattr(owner, attr)
            new = tensor.detach()
            for dim, idx in cuts:
                new = new.index_select(dim, torch.as_tensor(idx, dtype=torch.long, device=new.device))
            _set_tensor(owner, attr, tensor, new.clone())
            owners.add(owner_name)
        return owners


def _size_read(node: fx.Node) -> tuple[fx.Node, int | None] | None:
    """(tensor, dim) when ``node`` reads a tensor's size (dim None: the whole shape)."""
    if node.op == "call_method" and node.target == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return node.args[0], dim
    if node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
        return node.args[0], None
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[1], int):
        src = node.args[0]
        if isinstance(src, fx.Node):
            inner = _size_read(src)
            if inner is not None and inner[1] is None:
                return inner[0], node.args[1]
    return None


def _set_tensor(owner: nn.Module, attr: str, old: torch.Tensor, new: torch.Tensor) -> None:
    if isinstance(old, nn.Parameter):
        setattr(owner, attr, nn.Parameter(new, requires_grad=old.requires_grad))
    elif attr in owner._buffers:
        owner._buffers[attr] = new
    else:
        setattr(owner, attr, new)


def _copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """Deep copy without the cross-pass state (which holds the analysis of ``gm``)."""
    state = gm.meta.pop("fxprune", None)
    try:
        new = copy.deepcopy(gm)
    finally:
        if state is not None:
            gm.meta["fxprune"] = state
    return new


def _shapes_agree(got: Any, want: Any) -> bool:
    """Equal shapes where both sides are tensors (an unused attention-weights output may be
    an empty tensor in torch's MultiheadAttention and None in fxprune's)."""
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        return all(_shapes_agree(g, w) for g, w in zip(got, want))
    return got is None or want is None or got == want


def _check_shapes(gm: fx.GraphModule, predicted: dict[str, Any]) -> None:
    for node in gm.graph.nodes:
        got = tensor_meta_shapes(node)
        want = predicted.get(node.name)
        if want is not None and not _shapes_agree(got, want):
            raise RewriteError(
                f"after rewrite, {node.format_node()} has shape {got}, the analysis predicted {want}; "
                "a rule misses a dependency here (please report it)"
            )


def adopt_weights(graph: ChannelGraph, model_or_gm: nn.Module) -> None:
    """Check ``model_or_gm`` matches the analysed graph (same parameter names and shapes)."""
    if model_or_gm is graph.gm:
        return
    ours = graph.gm.state_dict()
    theirs = model_or_gm.state_dict()
    if set(ours) != set(theirs) or any(ours[k].shape != theirs[k].shape for k in ours):
        raise PlanError("the model does not match the analysed graph (different parameters); analyse it first")


def rewrite(model_or_gm: nn.Module, graph: ChannelGraph, plan: Mapping[str, Sequence[int]]) -> fx.GraphModule:
    """A physically smaller copy of the analysed model that keeps only ``plan``'s units.

    ``model_or_gm`` supplies the weights (the analysed GraphModule, or the model it
    was traced from, possibly trained since); it is never modified.
    """
    adopt_weights(graph, model_or_gm)
    rw = Rewriter(graph, plan)
    if model_or_gm is not graph.gm:
        rw.gm.load_state_dict(model_or_gm.state_dict())
    gm = rw.run()
    inputs = state_of(graph.gm).example_inputs
    propagate_shapes(gm, inputs)
    _check_shapes(gm, rw.new_shapes)
    state = attach_state(gm, inputs)
    state.plan = rw.plan
    return gm
