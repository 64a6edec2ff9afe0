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
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import fx, nn

from . import compensate as compensation
from .errors import FxpruneError, PlanError
from .tensors import copy_structure, own_tensors, set_tensor
from .graph import ChannelGraph
from .plan import check_plan
from .rewrite_errors import rewrite_error
from .rules.base import RULES
from .rules.context import tensor_aliases, tensor_meta_shapes
from .rules.size_reads import size_read
from .spaces import SpaceKey
from .state import attach_state, state_of
from .trace import ShapePropagationError, try_propagate_shapes


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
    def __init__(self, graph: ChannelGraph, plan: Mapping[str, Sequence[int]], compensate: bool = True):
        self.graph = graph
        self.compensate = compensate
        self.notes: list[str] = []
        self.aliases = tensor_aliases(graph.gm)
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
        self.gm: fx.GraphModule = copy_structure(graph.gm)  # tensors shared until sliced or owned
        self.borrowed = {id(t) for t in [*self.gm.parameters(), *self.gm.buffers()]}

    def adopt(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Use ``weights`` (by state_dict name; the user's tensors, never copied into or changed)."""
        for name, tensor in weights.items():
            owner_name, _, attr = name.rpartition(".")
            owner = self.gm.get_submodule(owner_name) if owner_name else self.gm
            old = getattr(owner, attr)
            if old.shape != tensor.shape:
                raise PlanError(f"{name}: the model's tensor has shape {tuple(tensor.shape)}, the analysed "
                                f"one {tuple(old.shape)}")
            set_tensor(owner, attr, old, tensor.detach())
            self.borrowed.add(id(getattr(owner, attr)))

    def key_of(self, node: fx.Node, dim: int, out_index: int = -1) -> SpaceKey:
        if node.op == "get_attr":
            return ("p", self.aliases.get(node.target, node.target), dim)
        return ("n", node.name, out_index, dim)

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
        folds = compensation.prepare(self) if self.compensate else []
        sliced_owners = self._slice_parameters()
        own_tensors(self.gm, self.borrowed)  # the rest is copied once, after slicing
        modules = dict(self.gm.named_modules())
        for node in list(self.gm.graph.nodes):
            rule = RULES.lookup(node, modules) if node.op.startswith("call_") else None
            if rule is None or rule.rewrite is None:
                continue
            if self._changed(node) or (node.op == "call_module" and node.target in sliced_owners):
                self._rewrite_node(rule, node)
        self.notes += compensation.apply(self, folds)
        _drop_dead_size_reads(self.gm.graph)
        self.gm.graph.lint()
        self.gm.recompile()
        return self.gm

    def _rewrite_node(self, rule: Any, node: fx.Node) -> None:
        """Run ``rule``'s rewrite on ``node``; an internal failure names the node and the rule."""
        try:
            rule.rewrite(RewriteContext(self, node))
        except FxpruneError:
            raise
        except Exception as exc:  # a rule's bug, never the user's: say where
            raise rewrite_error(self, node, f"its rule's rewrite raised {type(exc).__name__}: {exc}",
                                stage="rule") from exc

    def reads_pruned_size(self, value: fx.Node, seen: set | None = None) -> bool:
        """Whether the number ``value`` is computed (through number arithmetic) from the size of
        a dim the plan prunes; a tensor on the way ends the search (its values are not sizes)."""
        seen = set() if seen is None else seen
        if value in seen:
            return False
        seen.add(value)
        read = size_read(value)
        if read is not None:
            old, new = self.old_shapes.get(read.tensor.name), self.new_shapes.get(read.tensor.name)
            return isinstance(old, tuple) and isinstance(new, tuple) and any(old[d] != new[d] for d in read.dims)
        if tensor_meta_shapes(value) is not None:
            return False
        return any(self.reads_pruned_size(n, seen) for n in value.all_input_nodes)

    def _changed(self, node: fx.Node) -> bool:
        names = [node.name] + [n.name for n in node.all_input_nodes]
        return any(self.old_shapes.get(n) != self.new_shapes.get(n) for n in names)

    def _slice_parameters(self) -> set[str]:
        by_name: dict[str, list[tuple[int, np.ndarray]]] = {}
        for key, idx in self.kept.items():
            if key[0] == "p":
                by_name.setdefault(key[1], []).append((key[2], idx))
        names_of: dict[str, list[str]] = {}
        for name, canonical in self.aliases.items():
            names_of.setdefault(canonical, []).append(name)
        owners = set()
        for qualname, cuts in by_name.items():
            owner_name, _, attr = qualname.rpartition(".")
            owner = self.gm.get_submodule(owner_name) if owner_name else self.gm
            tensor = getattr(owner, attr)
            new = tensor.detach()
            for dim, idx in cuts:  # index_select makes a new tensor: the slice is the only copy
                new = new.index_select(dim, torch.as_tensor(idx, dtype=torch.long, device=new.device))
            new = set_tensor(owner, attr, tensor, new)
            owners.add(owner_name)
            for alias in names_of.get(qualname, ()):  # tied weights stay one tensor
                alias_owner, _, alias_attr = alias.rpartition(".")
                module = self.gm.get_submodule(alias_owner) if alias_owner else self.gm
                set_tensor(module, alias_attr, getattr(module, alias_attr), new, share=True)
                owners.add(alias_owner)
        return owners


PURE_NUMBER_OPS = {getattr, operator.getitem, operator.add, operator.sub, operator.mul, operator.truediv,
                   operator.floordiv, operator.pow, operator.neg, operator.mod, "size", "dim", "numel"}


def _drop_dead_size_reads(graph: fx.Graph) -> None:
    """Remove size reads and their number arithmetic left without users (their value became a
    literal). Not ``eliminate_dead_code``: an in-place method whose result is unused must stay."""
    for node in reversed(list(graph.nodes)):
        if not node.users and node.op in ("call_function", "call_method") and node.target in PURE_NUMBER_OPS \
                and "tensor_meta" not in node.meta:
            graph.erase_node(node)


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


def _check_shapes(gm: fx.GraphModule, rw: "Rewriter") -> None:
    """Run the rewritten ``gm`` on the example inputs; a failure, or a node whose shape differs
    from the analysis' prediction, is a RewriteError blaming the first such node and its rule."""
    try:
        try_propagate_shapes(gm, state_of(rw.graph.gm).example_inputs)
    except ShapePropagationError as failed:
        nodes = list(gm.graph.nodes)
        ran = nodes[:nodes.index(failed.node)] if failed.node in nodes else []
        wrong = _first_mismatch(ran, rw.new_shapes)
        fails = f"the pruned graph fails at %{failed.node.name if failed.node else '?'}: {failed.first_line}"
        if wrong is None:
            raise rewrite_error(rw, failed.node, fails, stage="run") from failed.cause
        raise rewrite_error(rw, wrong, f"{_mismatch(wrong, rw.new_shapes)}; {fails}") from failed.cause
    wrong = _first_mismatch(gm.graph.nodes, rw.new_shapes)
    if wrong is not None:
        raise rewrite_error(rw, wrong, _mismatch(wrong, rw.new_shapes))


def _first_mismatch(nodes: Iterable[fx.Node], predicted: dict[str, Any]) -> fx.Node | None:
    """The first of ``nodes`` whose shape is not the one predicted."""
    for node in nodes:
        want = predicted.get(node.name)
        if want is not None and not _shapes_agree(tensor_meta_shapes(node), want):
            return node
    return None


def _mismatch(node: fx.Node, predicted: dict[str, Any]) -> str:
    return f"its shape after the rewrite is {tensor_meta_shapes(node)}, the analysis predicted {predicted[node.name]}"


def adopt_weights(graph: ChannelGraph, model_or_gm: nn.Module) -> dict[str, torch.Tensor] | None:
    """The weights of ``model_or_gm`` that the analysed graph uses, by the graph's state_dict names
    (None when it is the analysed GraphModule itself).

    Needs: the model the graph was traced from (or a trained copy, or any GraphModule of it).
    Tensors the traced forward never reads (e.g. ``num_batches_tracked`` of a BN whose forward
    calls ``F.batch_norm``) are ignored; constants that tracing created (``_tensor_constant0``)
    come from the graph. A model that lacks a tensor of the graph, or has it in another shape,
    raises PlanError naming the first few differences.
    """
    if model_or_gm is graph.gm:
        return None
    weights: dict[str, torch.Tensor] = {}
    missing, mismatched = [], []
    for name, ours in graph.gm.state_dict().items():
        theirs = _tensor_at(model_or_gm, name)
        if theirs is None and _is_trace_constant(name):
            weights[name] = ours
        elif theirs is None:
            missing.append(name)
        elif theirs.shape != ours.shape:
            mismatched.append(f"{name} {tuple(theirs.shape)} vs {tuple(ours.shape)}")
        else:
            weights[name] = theirs
    if missing or mismatched:
        raise PlanError(f"the model does not match the analysed graph ({type(model_or_gm).__name__}): "
                        f"{_first_few('missing', missing)}{_first_few('shape differs (model vs analysed)', mismatched)}"
                        "analyse this model first")
    return weights


def _tensor_at(module: nn.Module, qualname: str) -> torch.Tensor | None:
    """The parameter, buffer or tensor attribute ``qualname`` of ``module``, or None."""
    owner_name, _, attr = qualname.rpartition(".")
    try:
        owner = module.get_submodule(owner_name) if owner_name else module
    except AttributeError:
        return None
    value = getattr(owner, attr, None)
    return value if isinstance(value, torch.Tensor) else None


def _is_trace_constant(name: str) -> bool:
    """A tensor torch.fx stored while tracing (a constant of the forward, not a weight)."""
    return name.rpartition(".")[2].startswith("_tensor_constant")


def _first_few(what: str, names: list[str], few: int = 3) -> str:
    if not names:
        return ""
    more = f" and {len(names) - few} more" if len(names) > few else ""
    return f"{what}: {', '.join(names[:few])}{more}; "


def rewrite(model_or_gm: nn.Module, graph: ChannelGraph, plan: Mapping[str, Sequence[int]], *,
            compensate: bool = True) -> fx.GraphModule:
    """A physically smaller copy of the analysed model that keeps only ``plan``'s units.

    ``model_or_gm`` supplies the weights (the analysed GraphModule, or the model it
    was traced from, possibly trained since); it is never modified. With
    ``compensate`` (the default) the result equals the original with the removed
    units' produce slices zeroed, also where they reach a layer as a non-zero
    constant (``sigmoid(0)``): it is folded into that layer's bias (fxprune.compensate).
    ``compensate=False`` drops such constants (the result then equals ``mask(...,
    compensate=False)``).
    """
    weights = adopt_weights(graph, model_or_gm)
    rw = Rewriter(graph, plan, compensate)
    if weights is not None:
        rw.adopt(weights)
    try:
        gm = rw.run()
    except FxpruneError:
        raise
    except Exception as exc:  # a rule's rewrite failed: fxprune's bug, not the user's
        raise rewrite_error(rw, None, f"{type(exc).__name__}: {exc}") from exc
    _check_shapes(gm, rw)
    state = attach_state(gm, state_of(graph.gm).example_inputs)
    state.plan = rw.plan
    state.notes += rw.notes
    return gm
