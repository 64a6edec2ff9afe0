"""Per-rule example generators for the exactness tests of every entry of the rule table.

For each rule of ``fxprune.rules.base.RULES`` (each module type, function and
method name the table knows), a :class:`Case` draws the op's arguments across
their space (dims incl. negative, keepdim, strides, dilation, padding modes,
groups, transposed convs, broadcasting shapes, 1-element dims, scalars vs
tensors, kwargs vs positional, module vs function vs method forms) and builds a
small model around it: a producer (conv/linear) whose output channels are a
prunable group -> the op -> a consumer that reads them, so units cross the op.

A drawn example is a :class:`Spec` (case, op, argument combination, weight seed):
plain data, printable, usable in ``@example``. :func:`check` builds its model,
analyses it, draws a plan and checks

1. ``rewrite(plan)(x) == mask(plan)(x)`` (groups without norm members);
2. ``rewrite(plan)(x) == zero_produce(plan)(x)`` (same groups);
3. the rewrite's shape prediction (``fxprune.rewrite`` raises ``RewriteError``
   when a propagated shape differs; the output shape is asserted here), also for
   groups with norm members, which must run and stay finite;

plus the case's own claims: the op is in the traced graph, and the producer
groups it names are exactly prunable (units cross the op) or not (the op must
make them a barrier or a norm member for these arguments). Cases marked ``bias``
put an op with ``f(0) != 0`` between producer and consumer (sigmoid, exp,
+ scalar ...): a constant leftover must be compensated (the group stays prunable
and exact), an input-dependent or infinite one must make the group a barrier.
Cases marked ``xfail`` hit a bug reported outside the rule files.

The case modules register themselves: ``rule_cases_conv`` ... (imported at the
bottom), each a family of the rule table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from hypothesis import strategies as st
from torch import fx, nn

import fxprune
from equivalence import compare, describe_group, draw_plan, removes_something, repair_keep, zero_produce
from fxprune.errors import PlanError
from fxprune.rules.base import RULES

Op = Any
"""A key of the rule table: a module type, a function, or a tensor method name."""

BATCH = 2
MAX_SEED = 2**16


# ---------------------------------------------------------------------------
# The rule table's entries
# ---------------------------------------------------------------------------


def op_label(op: Op) -> str:
    """Readable, unique name of a table entry: ``nn.Conv2d``, ``torch.add``, ``Tensor.view``."""
    if isinstance(op, str):
        return f"Tensor.{op}"
    if isinstance(op, type):
        module = "nn" if op.__module__.startswith("torch.nn") else op.__module__
        return f"{module}.{op.__qualname__}"
    module = getattr(op, "__module__", None) or ""
    module = {"_operator": "operator", "torch._C._nn": "F", "torch.nn.functional": "F",
              "torch._C._VariableFunctions": "torch", "torch.functional": "torch"}.get(module, module)
    return f"{module}.{getattr(op, '__name__', repr(op))}"


@dataclass(frozen=True)
class Entry:
    """One key of the rule table and the name of its rule."""

    kind: str  # "module" | "function" | "method"
    op: Op
    rule: str

    @property
    def label(self) -> str:
        return op_label(self.op)


def table_entries() -> list[Entry]:
    """Every module type, function and method name of fxprune's own ``RULES``, in table order
    (rules registered at run time by other code, e.g. the CONTRIBUTING example, are left out)."""
    def own(r) -> bool:
        return r.analyze.__module__.startswith("fxprune.")

    out = [Entry("module", k, r.name) for k, r in RULES.modules.items() if own(r)]
    out += [Entry("function", k, r.name) for k, r in RULES.functions.items() if own(r)]
    out += [Entry("method", k, r.name) for k, r in RULES.methods.items() if own(r)]
    return out


# ---------------------------------------------------------------------------
# Specs, cases and the registry
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One drawn example: which case and op, the argument combination, the weight seed."""

    case: str
    op: str  # op_label of the table entry
    args: tuple[tuple[str, Any], ...]
    seed: int = 0

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.args)

    def __repr__(self) -> str:
        return f"Spec({self.case!r}, {self.op!r}, {self.kwargs!r}, seed={self.seed})"


def spec(case: str, op: Op, seed: int = 0, **args: Any) -> Spec:
    """A Spec written by hand (explicit ``@example``s of bugs found)."""
    return Spec(case, op if isinstance(op, str) and "." in op else op_label(op), tuple(args.items()), seed)


@dataclass
class Built:
    """A model around the op, its example inputs and the case's claims about its groups.

    ``prunable``: (parameter name, dim) of a parameter -> whether its group must be
    exactly prunable, without norm members (True: units cross the op; False: the op
    must make them a barrier, or a norm member, for these arguments).
    """

    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    prunable: dict[tuple[str, int], bool] = field(default_factory=dict)


DrawArgs = Callable[[Callable[[st.SearchStrategy], Any], Op], dict]
Build = Callable[[Op, dict], Built]


@dataclass(frozen=True)
class Case:
    """A family of examples for some entries of one rule.

    ``draw(draw, op)`` returns the argument combination (a dict of plain values:
    ints, floats, bools, strings, tuples, None); ``build(op, args)`` turns it into
    a model (called under a fixed seed). ``bias``: the op maps a zeroed unit to a
    non-zero value between producer and consumer (zero-produce needs bias
    compensation). ``ops``: the table entries the case covers.
    """

    name: str
    rule: str
    ops: tuple[Op, ...]
    draw: DrawArgs
    build: Build
    bias: bool = False
    why: str = ""
    xfail: str = ""  # a reported bug outside the rule files: expected to fail until it is fixed

    def op(self, label: str) -> Op:
        for o in self.ops:
            if op_label(o) == label:
                return o
        raise KeyError(f"case {self.name!r} has no op {label!r}")

    def specs(self, ops: Sequence[Op] | None = None) -> st.SearchStrategy[Spec]:
        """Specs for ``ops`` (default: all of the case's ops)."""
        chosen = list(self.ops if ops is None else ops)

        @st.composite
        def one(draw) -> Spec:
            op = draw(st.sampled_from(chosen), label="op")
            args = self.draw(draw, op)
            seed = draw(st.integers(0, MAX_SEED), label="seed")
            return Spec(self.name, op_label(op), tuple(args.items()), seed)

        return one()


CASES: dict[str, Case] = {}


def register(name: str, rule: str, ops: Iterable[Op], *, bias: bool = False, why: str = "",
             xfail: str = "") -> Callable[[DrawArgs], Callable[[Build], Build]]:
    """Decorator pair: ``@register(...)`` on the draw function, whose ``.build`` decorates the builder.

    Usage::

        @register("roll", "roll", [torch.roll, "roll"])
        def draw_roll(draw, op): ...

        @draw_roll.build
        def build_roll(op, args): ...
    """

    def on_draw(draw_fn: DrawArgs):
        def on_build(build_fn: Build) -> Build:
            if name in CASES:
                raise ValueError(f"duplicate case {name!r}")
            CASES[name] = Case(name, rule, tuple(ops), draw_fn, build_fn, bias, why, xfail)
            return build_fn

        draw_fn.build = on_build  # type: ignore[attr-defined]
        return draw_fn

    return on_draw


UNREACHABLE = {"Tensor.hardswish": "torch.Tensor has no hardswish method: no graph can call it"}
"""Table entries no model can exercise, and why (``test_rule_exactness`` checks each reason still holds)."""


def covered_labels() -> dict[str, list[str]]:
    """op label -> names of the cases that exercise it."""
    out: dict[str, list[str]] = {}
    for c in CASES.values():
        for o in c.ops:
            out.setdefault(op_label(o), []).append(c.name)
    return out


# ---------------------------------------------------------------------------
# Small-model building blocks
# ---------------------------------------------------------------------------


class Probe(nn.Module):
    """A model whose ``forward`` is ``body(self, x)``: a plain function, traced through by fx.

    ``parts`` become submodules / parameters / buffers of the model.
    """

    def __init__(self, body: Callable[..., torch.Tensor], **parts: Any):
        super().__init__()
        self.body = body
        for name, part in parts.items():
            if isinstance(part, torch.Tensor) and not isinstance(part, nn.Parameter):
                self.register_buffer(name, part)
            else:
                setattr(self, name, part)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self, x)


def stage(rank: int, c_in: int, c_out: int, *, bias: bool = True) -> nn.Module:
    """A channel mixer for an (N, C, *spatial) tensor of ``rank`` dims (Linear for rank 2)."""
    if rank == 2:
        return nn.Linear(c_in, c_out, bias=bias)
    conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[rank]
    return conv(c_in, c_out, 1, bias=bias)


def randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters for every norm layer."""
    with torch.no_grad():
        for m in model.modules():
            for name in ("running_mean", "weight", "bias"):
                t = getattr(m, name, None)
                if isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)) \
                        and isinstance(t, torch.Tensor):
                    t.uniform_(-0.5, 0.5) if name != "weight" else t.uniform_(0.5, 1.5)
            var = getattr(m, "running_var", None)
            if isinstance(var, torch.Tensor):
                var.uniform_(0.5, 1.5)
    return model


def call_form(draw, params: Sequence[tuple[str, st.SearchStrategy, bool]], *, kwonly: Iterable[str] = ()) -> dict:
    """Draw values of optional call parameters and how they are passed.

    ``params``: (name, strategy, required) in positional order. Returns
    ``{name: value, ...}`` for the parameters given, plus ``"npos"``: how many of
    them (a prefix) are passed positionally, the rest by keyword.
    """
    kwonly = set(kwonly)
    out: dict[str, Any] = {}
    given: list[str] = []
    for name, strategy, required in params:
        if required or draw(st.booleans(), label=f"give {name}"):
            out[name] = draw(strategy, label=name)
            given.append(name)
    prefix = 0
    for i, (name, _, _) in enumerate(params):
        if name not in out or name in kwonly:
            break
        prefix = i + 1
    out["npos"] = draw(st.integers(0, prefix), label="npos") if prefix else 0
    return out


def split_call(args: Mapping[str, Any], names: Sequence[str]) -> tuple[tuple, dict]:
    """(positional, keyword) arguments of a call drawn by :func:`call_form` (``names`` in order)."""
    n = args.get("npos", 0)
    given = [k for k in names if k in args]
    pos = tuple(args[k] for k in given[:n])
    kw = {k: args[k] for k in given[n:]}
    return pos, kw


def retargeted(model: nn.Module, old: Any, new: Any, drop: Iterable[str] = ()) -> fx.GraphModule:
    """``model`` traced, with its calls of ``old`` (a function or a method name) turned into calls of
    function ``new`` (keyword arguments in ``drop`` removed): fx traces ``y += 1`` as ``operator.add``
    and ``F.tanh(y)`` as ``y.tanh()``, but graphs built by other tools hold ``operator.iadd`` and
    ``F.tanh`` nodes."""
    gm = fx.symbolic_trace(model)
    for n in gm.graph.nodes:
        if (n.op == "call_function" and n.target is old) or (n.op == "call_method" and n.target == old):
            n.op, n.target = "call_function", new
            n.kwargs = {k: v for k, v in n.kwargs.items() if k not in set(drop)}
    gm.recompile()
    return gm


# ---------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one example checked: ``exact`` groups compared, ``norm`` groups run, ``refused`` plans."""

    exact_groups: int = 0
    norm_groups: int = 0
    removed: bool = False
    refused: str = ""


def build(s: Spec) -> tuple[Case, Op, Built]:
    case = CASES[s.case]
    op = case.op(s.op)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        built = case.build(op, s.kwargs)
    return case, op, built


def reaches(gm: fx.GraphModule, op: Op) -> bool:
    """Whether the traced graph calls exactly table entry ``op``."""
    modules = dict(gm.named_modules())
    for n in gm.graph.nodes:
        if n.op == "call_module" and type(modules[n.target]) is op:
            return True
        if n.op == "call_function" and n.target is op:
            return True
        if n.op == "call_method" and n.target == op:
            return True
    return False


def groups_of(graph: fxprune.ChannelGraph, name: str, dim: int) -> list[fxprune.Group]:
    """The groups with a member ``name[dim]`` (units of one tensor may split into several groups)."""
    return [g for g in graph.groups if any(m[0] == name and m[1] == dim for m in g.members())]


REMOVAL_REASON = "removed units would reach"
"""How the analysis says a group was kept whole because removing its units cannot equal zeroing them."""


def check_claims(graph: fxprune.ChannelGraph, built: Built, removal_may_fix: bool = False) -> None:
    """True claims need a group that is prunable without norm members; False ones need none.

    ``removal_may_fix`` (cases where removed units can leave constants behind): a True claim is
    also met by a group kept whole because its removal could not equal zeroing (fxprune.removal)."""
    for (name, dim), want in built.prunable.items():
        groups = groups_of(graph, name, dim)
        ok = any(g.prunable and not g.has_norm for g in groups) == want
        if not ok and want and removal_may_fix:
            ok = any(REMOVAL_REASON in (g.reason or "") for g in groups)
        assert ok, (f"{name}[{dim}]: expected {'a prunable group' if want else 'a barrier or norm member'}, "
                    f"got {groups!r}\n{graph}")


FIXED_PLANS = {"alternate": lambda n: range(0, n, 2), "one": lambda n: [0], "all": range}
"""Keep-sets for explicit examples (no hypothesis data): every other unit, the first only, all."""


def fixed_plan(groups: Sequence[fxprune.Group], keep: str = "alternate") -> dict[str, list[int]]:
    return {g.id: repair_keep(g, FIXED_PLANS[keep](g.units)) for g in groups}


def plan_for(data: Any, groups: Sequence[fxprune.Group], label: str) -> dict[str, list[int]]:
    """A plan drawn from hypothesis ``data``, or a fixed one (``data`` None or a FIXED_PLANS name)."""
    if data is None or isinstance(data, str):
        return fixed_plan(groups, data or "alternate")
    return draw_plan(data, groups, label)


def forward(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        out = module(*inputs)
    assert isinstance(out, torch.Tensor), f"expected one tensor output, got {type(out).__name__}"
    return out


def _context(graph: fxprune.ChannelGraph, plan: Mapping[str, Sequence[int]]) -> str:
    lines = [describe_group(graph, gid) for gid, kept in plan.items() if len(kept) < graph.group(gid).units]
    return f"plan={dict(plan)}\n" + "\n".join(lines)


def check_exact(graph: fxprune.ChannelGraph, built: Built, plan: Mapping[str, Sequence[int]]) -> None:
    """(1) rewrite == mask, (2) rewrite == zero-produce, (3) the output shape."""
    x = built.inputs
    original = forward(graph.gm, x)
    pruned = forward(fxprune.rewrite(graph.gm, graph, plan), x)
    assert pruned.shape == original.shape, f"output shape {tuple(pruned.shape)} != {tuple(original.shape)}"
    try:
        compare(pruned, forward(fxprune.mask(graph.gm, graph, plan), x), "rewrite vs mask")
        compare(pruned, forward(zero_produce(graph, plan), x), "rewrite vs zero-produce")
        if not removes_something(graph, plan):
            compare(pruned, original, "keep-all rewrite vs model")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_context(graph, plan)}\n{graph}") from None


def check_norm(graph: fxprune.ChannelGraph, built: Built, plan: Mapping[str, Sequence[int]]) -> None:
    """(3) for groups with norm members: the rewrite runs, keeps the output shape, stays finite."""
    x = built.inputs
    original = forward(graph.gm, x)
    pruned = forward(fxprune.rewrite(graph.gm, graph, plan), x)
    assert pruned.shape == original.shape, f"output shape {tuple(pruned.shape)} != {tuple(original.shape)}"
    if torch.isfinite(original).all():
        assert torch.isfinite(pruned).all(), f"norm-group rewrite is not finite\n{_context(graph, plan)}"


def check(s: Spec, data: Any = None) -> Outcome:
    """Build ``s``'s model, analyse it and check the three properties (see the module doc).

    ``data``: hypothesis data to draw plans from, or None / a ``FIXED_PLANS`` name for a fixed plan.
    A ``PlanError`` (pruning refused with a named error) is an accepted outcome.
    """
    case, op, built = build(s)
    graph = fxprune.analyze(built.model, built.inputs)
    assert reaches(graph.gm, op), f"{s}: the traced graph never calls {s.op}"
    check_claims(graph, built, removal_may_fix=case.bias)
    outcome = Outcome()
    exact = [g for g in graph.prunable_groups if not g.has_norm]
    norm = [g for g in graph.prunable_groups if g.has_norm]
    outcome.exact_groups, outcome.norm_groups = len(exact), len(norm)
    try:
        plan = plan_for(data, exact, "exact ")
        outcome.removed = removes_something(graph, plan)
        check_exact(graph, built, plan)
        if norm:
            check_norm(graph, built, plan_for(data, norm, "norm "))
    except PlanError as exc:
        outcome.refused = str(exc)
    return outcome


__all__ = [
    "BATCH", "Built", "CASES", "Case", "Entry", "Outcome", "Probe", "Spec", "UNREACHABLE", "build", "call_form",
    "check", "covered_labels", "op_label", "randomize_norms", "reaches", "register", "retargeted", "spec",
    "split_call", "stage", "table_entries",
]

# the case families (each registers its cases on import)
import rule_cases_conv  # noqa: E402,F401
import rule_cases_elementwise  # noqa: E402,F401
import rule_cases_norm  # noqa: E402,F401
import rule_cases_reduce  # noqa: E402,F401
import rule_cases_shape  # noqa: E402,F401
import rule_cases_attention  # noqa: E402,F401
