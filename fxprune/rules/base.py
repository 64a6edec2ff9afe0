"""The rule table: how each op relates the channel spaces of its inputs and outputs.

A rule is registered for module types, functions or method names. Its
``analyze(ctx)`` links spaces through ``ctx``; any tensor dimension of the
node's inputs or outputs that the rule leaves untouched becomes a *barrier*
(its units are never pruned), so a rule that forgets a dimension is safe, never
wrong. Its optional ``rewrite(rctx)`` fixes modules or literal arguments after
pruning (parameters are sliced generically).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from torch import fx, nn


@dataclass(frozen=True)
class Rule:
    name: str
    analyze: Callable[[Any], None]
    rewrite: Callable[[Any], None] | None = None


@dataclass
class RuleTable:
    modules: dict[type, Rule]
    functions: dict[Any, Rule]
    methods: dict[str, Rule]

    def lookup(self, node: fx.Node, modules: dict[str, nn.Module]) -> Rule | None:
        """The rule for ``node``: exact module type first, then its bases."""
        if node.op == "call_module":
            for cls in type(modules[node.target]).__mro__:
                if cls in self.modules:
                    return self.modules[cls]
                if cls is nn.Module:
                    return None
            return None
        if node.op == "call_function":
            return self.functions.get(node.target)
        if node.op == "call_method":
            return self.methods.get(node.target)
        return None


RULES = RuleTable({}, {}, {})


def rule(
    *,
    modules: Iterable[type] = (),
    functions: Iterable[Any] = (),
    methods: Iterable[str] = (),
    rewrite: Callable[[Any], None] | None = None,
    name: str | None = None,
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register the decorated ``analyze`` function for these ops."""

    def register(analyze: Callable[[Any], None]) -> Callable[[Any], None]:
        r = Rule(name or analyze.__name__, analyze, rewrite)
        for m in modules:
            RULES.modules[m] = r
        for f in functions:
            RULES.functions[f] = r
        for m in methods:
            RULES.methods[m] = r
        return analyze

    return register


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of a call, given positionally at ``index`` or by keyword."""
    if index is not None and len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def set_arg(node: fx.Node, index: int, name: str, value: Any) -> None:
    """Replace argument ``name`` wherever it was given (keyword if it was absent)."""
    if index is not None and len(node.args) > index:
        args = list(node.args)
        args[index] = value
        node.args = tuple(args)
    else:
        kwargs = dict(node.kwargs)
        kwargs[name] = value
        node.kwargs = kwargs
