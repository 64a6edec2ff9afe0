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


REMOVAL_KINDS = ("pass", "elementwise", "product", "constant")


@dataclass(frozen=True)
class Rule:
    """``removal``: what the op makes of a removed (zeroed) unit, for rules outside fxprune
    (built-in rules are described in ``fxprune.removal``): ``"pass"`` (zero stays zero, a
    constant stays constant), ``"elementwise"`` (judged by running the op on zeros),
    ``"product"`` (zero when any operand carrying it is zero) or ``"constant"`` (may turn zero
    into a constant). None: unknown, so a group whose removed units reach it is kept whole."""

    name: str
    analyze: Callable[[Any], None]
    rewrite: Callable[[Any], None] | None = None
    removal: str | None = None


@dataclass
class RuleTable:
    modules: dict[type, Rule]
    functions: dict[Any, Rule]
    methods: dict[str, Rule]

    def lookup(self, node: fx.Node, modules: dict[str, nn.Module]) -> Rule | None:
        """The rule for ``node``: exact module type first, then its bases (see ``rule_class``)."""
        if node.op == "call_module":
            cls = rule_class(type(modules[node.target]), self.modules)
            return None if cls is None else self.modules[cls]
        if node.op == "call_function":
            return self.functions.get(node.target)
        if node.op == "call_method":
            return self.methods.get(node.target)
        return None


RULES = RuleTable({}, {}, {})


def rule_class(cls: type, table: dict[type, Any]) -> type | None:
    """The class of ``cls``'s MRO whose entry in ``table`` applies to it, or None.

    A subclass inherits its base's entry only when it computes what the base
    computes: a class on the way that defines its own ``forward`` (e.g. a conv that
    standardises its weight first) stops the walk, so such a module gets no rule
    (its dims are barriers) unless it is traced through.
    """
    for klass in cls.__mro__:
        if klass in table:
            return klass
        if klass is nn.Module or "forward" in vars(klass):
            return None
    return None


def rule(
    *,
    modules: Iterable[type] = (),
    functions: Iterable[Any] = (),
    methods: Iterable[str] = (),
    rewrite: Callable[[Any], None] | None = None,
    name: str | None = None,
    removal: str | None = None,
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register the decorated ``analyze`` function for these ops (``removal``: see ``Rule``)."""
    if removal is not None and removal not in REMOVAL_KINDS:
        raise ValueError(f"removal must be one of {REMOVAL_KINDS} or None, got {removal!r}")

    def register(analyze: Callable[[Any], None]) -> Callable[[Any], None]:
        r = Rule(name or analyze.__name__, analyze, rewrite, removal)
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
