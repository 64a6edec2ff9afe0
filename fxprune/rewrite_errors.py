"""``RewriteError``s that blame the right party: the node, its rule and the shapes around it.

Needs: the Rewriter of a rewrite (the analysed graph, the shapes before pruning and the
shapes the analysis predicted) and the node of the rewritten GraphModule where it failed.
Guarantees: the message names the node (and the user's source line when known), the
channel rule the analysis used for it, the shapes of the node and of its inputs before
pruning, as predicted and as found, says that this is a bug of fxprune and not of the
user's model or inputs, and how to get past it (strict mode, keeping the groups whole).
"""
from __future__ import annotations

from typing import Any

from torch import fx

from .errors import RewriteError
from .rules.base import RULES
from .rules.context import tensor_meta_shapes


def rewrite_error(rw: Any, node: fx.Node | None, problem: str, *, stage: str = "check") -> RewriteError:
    """The RewriteError for ``problem`` at ``node`` of the rewritten graph (None: no node known).

    ``stage``: "rule" (a rule's rewrite failed: no shapes were found yet), "run" (running
    ``node`` failed: its inputs have found shapes) or "check" (every node has a found shape).
    """
    if node is None:
        return RewriteError(f"rewrite failed: {problem}. {_advice('a channel rule')}")
    original = _original_node(rw, node.name)
    rule = _rule_name(rw, original)
    where = f"node {node.format_node()}{_source(original)}"
    found = {"rule": set(), "run": set(node.all_input_nodes), "check": {node, *node.all_input_nodes}}[stage]
    shapes = "; ".join(_shape_line(rw, n, n in found) for n in [node, *node.all_input_nodes])
    return RewriteError(
        f"rewrite failed at {where}, rule {rule!r}: {problem}. "
        f"Shapes (before pruning -> predicted -> found): {shapes}. {_advice(f'the rule {rule!r}')}"
    )


def _advice(culprit: str) -> str:
    return (
        f"This is a bug of fxprune ({culprit} misses a dependency), not of your model or inputs: please "
        "report it with this message. Meanwhile, analysing with strict=True says whether an op without a "
        "rule is involved, and keeping the groups through this node whole (ignore=..., or a plan that "
        "keeps their units) avoids it"
    )


def _original_node(rw: Any, name: str) -> fx.Node | None:
    return next((n for n in rw.graph.gm.graph.nodes if n.name == name), None)


def _rule_name(rw: Any, original: fx.Node | None) -> str:
    """The rule the analysis used for ``original`` ("none" when it has none or was inserted)."""
    if original is None:
        return "none (a node the rewrite inserted)"
    if not original.op.startswith("call_"):
        return f"none ({original.op})"
    rule = RULES.lookup(original, dict(rw.graph.gm.named_modules()))
    return rule.name if rule is not None else "none (no channel rule)"


def _source(original: fx.Node | None) -> str:
    trace_text = original.meta.get("stack_trace") if original is not None else None
    lines = [ln.strip() for ln in (trace_text or "").strip().splitlines() if ln.strip()]
    return f" (source: {lines[-2]} {lines[-1]})" if len(lines) >= 2 else ""


def _shape_line(rw: Any, node: fx.Node, has_found_shape: bool) -> str:
    found = _fmt(tensor_meta_shapes(node)) if has_found_shape else "?"
    return f"%{node.name} {_fmt(rw.old_shapes.get(node.name))} -> {_fmt(rw.new_shapes.get(node.name))} -> {found}"


def _fmt(shapes: Any) -> str:
    if shapes is None:
        return "-"
    if isinstance(shapes, list):
        return "[" + ", ".join(_fmt(s) for s in shapes) + "]"
    return str(tuple(shapes))
