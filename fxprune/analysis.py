"""Coupled-channel analysis: run the rule table over a traced graph.

Needs: a GraphModule whose nodes carry ``tensor_meta`` (see ``fxprune.trace``).
Guarantees: a ``ChannelGraph`` whose groups are exactly the sets of channels that
must be removed together; a dimension touched by an op without a rule (or that
a rule does not map) is a barrier, so its units are reported unprunable with the
node and the reason, or ``UnsupportedOpError`` is raised in strict mode.
"""
from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
from torch import fx

from . import rules as _rules  # noqa: F401  (registers the rule table)
from .errors import InputError, UnsupportedOpError
from .trace_guards import KEPT_WHOLE
from .graph import ChannelGraph
from .removal import removal_semantics
from .rules.base import RULES
from .rules.context import RuleContext, tensor_aliases, tensor_meta_shapes
from .spaces import SpaceKey, SpaceTable
from .state import state_of
from .trace import trace


class Analyzer:
    """Builds the space table of one GraphModule."""

    def __init__(self, gm: fx.GraphModule, strict: bool):
        self.gm = gm
        self.strict = strict
        self.modules = dict(gm.named_modules())
        self.table = SpaceTable()
        self.roles: dict[SpaceKey, str] = {}
        self.barriers: dict[SpaceKey, str] = {}
        self.norm_spaces: dict[SpaceKey, str] = {}
        self.attr_spaces: set[SpaceKey] = set()
        self.position = {node: i for i, node in enumerate(gm.graph.nodes)}
        self.nodes = {node.name: node for node in gm.graph.nodes}
        self.aliases = tensor_aliases(gm)
        self.unsupported: dict[str, str] = {}
        self.fixed_elements: list[tuple[SpaceKey, object, str]] = []

    # --- spaces -----------------------------------------------------------------
    def space_of(self, x: Any, dim: int, out_index: int = -1) -> SpaceKey | None:
        if not isinstance(x, fx.Node):
            return None
        shapes = tensor_meta_shapes(x)
        if isinstance(shapes, list):
            shape = shapes[out_index] if out_index >= 0 else None
        else:
            shape = shapes
        if shape is None or not -len(shape) <= dim < len(shape):
            return None
        dim %= len(shape)
        if shape[dim] < 2:
            return None
        if x.op == "get_attr":
            key = self.table.add(("p", self.canonical(x.target), dim), shape[dim], self.position[x])
            self.attr_spaces.add(key)
            return key
        return self.table.add(("n", x.name, out_index, dim), shape[dim], self.position[x])

    def all_spaces(self, x: fx.Node, only_index: int | None = None) -> list[SpaceKey]:
        shapes = tensor_meta_shapes(x)
        if shapes is None:
            return []
        if isinstance(shapes, tuple):
            return [s for d in range(len(shapes)) if (s := self.space_of(x, d)) is not None]
        indices = range(len(shapes)) if only_index is None else [only_index]
        return [
            s for i in indices if shapes[i] is not None
            for d in range(len(shapes[i])) if (s := self.space_of(x, d, i)) is not None
        ]

    def canonical(self, name: str) -> str:
        """The one name of a parameter or buffer that several attributes share (tied weights)."""
        return self.aliases.get(name, name)

    def set_role(self, key: SpaceKey, role: str) -> None:
        """A space's role is the strongest of its uses: produce > norm > consume."""
        if ROLE_RANK[role] > ROLE_RANK.get(self.roles.get(key), -1):
            self.roles[key] = role

    def add_barrier(self, key: SpaceKey, why: str) -> None:
        self.barriers.setdefault(key, why)

    # --- the walk ---------------------------------------------------------------
    def touched(self, node: fx.Node) -> list[SpaceKey]:
        spaces = self.all_spaces(node)
        for inp in node.all_input_nodes:
            only = None
            if node.target is operator.getitem and isinstance(tensor_meta_shapes(inp), list):
                only = node.args[1] if isinstance(node.args[1], int) else None
            spaces += self.all_spaces(inp, only)
        return spaces

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            for s in self.all_spaces(node):
                self.add_barrier(s, f"{node.name}: model input")
            return
        if node.op == "output":
            for inp in node.all_input_nodes:
                for s in self.all_spaces(inp):
                    self.add_barrier(s, f"{inp.name}: model output")
            return
        if node.op == "get_attr":
            return
        touched = self.touched(node)
        if not touched:
            return
        rule = None if KEPT_WHOLE in node.meta else RULES.lookup(node, self.modules)
        if rule is None:
            self.refuse(node, touched)
            return
        ctx = RuleContext(self, node, self.position[node])
        rule.analyze(ctx)
        for s in touched:
            if s not in ctx.covered:
                self.add_barrier(s, f"{node.name}: {rule.name} does not map dim {s[-1]}")

    def refuse(self, node: fx.Node, touched: list[SpaceKey]) -> None:
        what = describe_target(node, self.modules)
        why = node.meta.get(KEPT_WHOLE) or f"no channel rule for {what}"
        if self.strict:
            raise UnsupportedOpError(
                f"{why} at node {node.format_node()}"
                f"{source_hint(node)}; run with strict=False to treat it as a barrier"
            )
        self.unsupported[node.name] = what
        for s in touched:
            self.add_barrier(s, f"{node.name}: {why}")

    def run(self) -> ChannelGraph:
        for node in self.gm.graph.nodes:
            self.visit(node)
        linked = {s for a, b in self.table.space_edges if a != b for s in (a, b)}
        for key in self.attr_spaces & linked:
            if key not in self.barriers:
                self.roles.setdefault(key, "produce")
        for key in set(self.roles) - linked:  # e.g. the rows of a one-head attention
            self.add_barrier(key, f"{key[1]} dim {key[2]} is not related to any tensor")
        return self.exactly_removable(ChannelGraph.build(self))

    def exactly_removable(self, graph: ChannelGraph) -> ChannelGraph:
        """Fix the groups whose removal cannot equal zeroing (fxprune.removal); attach the semantics."""
        removal = removal_semantics(graph)
        problems = {gid: r.problem for gid, r in removal.items() if r.problem}
        for gid, why in problems.items():
            group = graph.group(gid)
            key = group.spaces[0]
            index = np.nonzero(group.unit_index(key) >= 0)[0]
            self.fixed_elements.append((key, index, why))
        if problems:
            graph = ChannelGraph.build(self)
        graph.removal = {gid: r for gid, r in removal.items() if not r.problem}
        return graph


ROLE_RANK = {"consume": 0, "norm": 1, "produce": 2}


def describe_target(node: fx.Node, modules: dict) -> str:
    if node.op == "call_module":
        return f"module {type(modules[node.target]).__qualname__} ({node.target})"
    if node.op == "call_method":
        return f"method Tensor.{node.target}"
    target = node.target
    if isinstance(target, torch._ops.OpOverload):  # an ATen op of a torch.export capture: say where
        return f"ATen op {target} in module {module_path(node)}"
    return f"function {getattr(target, '__module__', '') or ''}.{getattr(target, '__name__', str(target))}"


def module_path(node: fx.Node) -> str:
    """The innermost module a node of a torch.export capture ran in (``nn_module_stack``), or ``<root>``."""
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()), ("", None))[0] if stack else ""
    return path or "<root>"


def source_hint(node: fx.Node) -> str:
    trace_text = node.meta.get("stack_trace")
    if not trace_text:
        return ""
    lines = [ln.strip() for ln in trace_text.strip().splitlines() if ln.strip()]
    return f" (source: {lines[-2]} {lines[-1]})" if len(lines) >= 2 else ""


def analyze(model_or_gm: torch.nn.Module, example_inputs: Any = None, *, strict: bool = False,
            capture: str = "auto") -> ChannelGraph:
    """Find every set of coupled channels of a model (traced here with front end ``capture``,
    see ``fxprune.trace``) or a traced GraphModule."""
    gm = ensure_traced(model_or_gm, example_inputs, capture)
    return Analyzer(gm, strict).run()


def ensure_traced(model_or_gm: torch.nn.Module, example_inputs: Any, capture: str = "auto") -> fx.GraphModule:
    """Reuse a GraphModule fxprune traced (shapes present), otherwise trace a copy."""
    if isinstance(model_or_gm, fx.GraphModule) and state_of(model_or_gm) is not None and example_inputs is None:
        return model_or_gm
    if example_inputs is None:
        raise InputError("example_inputs are required unless the model was traced by fxprune.trace")
    return trace(model_or_gm, example_inputs, capture=capture)
