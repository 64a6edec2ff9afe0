"""Cases for the ``elementwise`` rule (fxprune/rules/elementwise.py): activations, dropout,
math functions, arithmetic with broadcasting, comparisons, casts and in-place forms.

Every example is ``tail(f(head(x)))`` (``f`` may read a second tensor: another
producer ``head2`` of the same shape, a per-channel parameter or buffer, a
broadcast one-channel branch, a scalar ...). Its category is *measured*, not
declared: ``f`` is evaluated where the removed units are zero (the other producer
and linked parameters zeroed too, a broadcast branch not) and the example is
``zero`` (f(0) == 0: exact today), ``bias`` (a finite f(0) != 0: needs bias
compensation) or ``singular`` (f(0) is not finite: ``log(0)``, ``1 / 0``).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from hypothesis import assume
from hypothesis import strategies as st
from torch import nn

from rule_cases import BATCH, Built, Probe, call_form, register, retargeted, split_call, stage

BOOL = (False, True)


@dataclass(frozen=True)
class Param:
    name: str
    values: Sequence[Any]
    required: bool = False
    kwonly: bool = False


@dataclass(frozen=True)
class Unary:
    """A one-input op: its parameters (constructor args for modules), ranks it accepts and options."""

    op: Any
    params: tuple[Param, ...] = ()
    ranks: tuple[int, ...] = (2, 3, 4)
    pre_abs: bool = False  # feed |y| (sqrt, log ...)
    to_float: bool = False  # the op returns bool
    trainable: bool = False  # a dropout that may run in training mode with p = 0
    traced_as: str | None = None  # fx traces through ``op`` to this method: the node is retargeted to ``op``


def p(name: str, *values: Any, required: bool = False, kwonly: bool = False) -> Param:
    return Param(name, values, required, kwonly)


INPLACE = p("inplace", *BOOL)
ALPHA = p("alpha", 1.0, 0.5, 2.0)
DROP_P = p("p", 0.0, 0.3)
DROPOUT_F = (DROP_P, p("training", False, required=True), INPLACE)
HARDTANH = (p("min_val", -1.0, -0.5, 0.0, 0.2), p("max_val", 0.5, 1.0, 2.0), INPLACE)
SOFTPLUS = (p("beta", 1.0, 2.0), p("threshold", 20.0, 1.0))
SHRINK = (p("lambd", 0.5, 0.1),)
CLAMP = (p("min", None, -1.0, 0.0, 0.3), p("max", None, 1.0, 0.0, -0.2))
ROUND = (p("decimals", 0, 1, kwonly=True),)

UNARY_MODULES = [
    Unary(nn.ReLU, (INPLACE,)), Unary(nn.ReLU6, (INPLACE,)), Unary(nn.LeakyReLU, (p("negative_slope", 0.01, 0.2, -0.5),
                                                                                   INPLACE)),
    Unary(nn.ELU, (ALPHA, INPLACE)), Unary(nn.SELU, (INPLACE,)), Unary(nn.CELU, (ALPHA, INPLACE)),
    Unary(nn.GELU, (p("approximate", "none", "tanh"),)), Unary(nn.SiLU, (INPLACE,)), Unary(nn.Mish, (INPLACE,)),
    Unary(nn.Sigmoid), Unary(nn.Tanh), Unary(nn.Hardswish, (INPLACE,)), Unary(nn.Hardsigmoid, (INPLACE,)),
    Unary(nn.Hardtanh, HARDTANH), Unary(nn.Softplus, SOFTPLUS), Unary(nn.Softsign), Unary(nn.Tanhshrink),
    Unary(nn.LogSigmoid), Unary(nn.Hardshrink, SHRINK), Unary(nn.Softshrink, SHRINK),
    Unary(nn.Threshold, (p("threshold", -0.1, 0.0, 0.1, required=True), p("value", 0.0, 0.5, -1.0, required=True),
                         INPLACE)),
    Unary(nn.Identity), Unary(nn.Dropout, (DROP_P, INPLACE), trainable=True),
    Unary(nn.Dropout1d, (DROP_P, INPLACE), ranks=(3,), trainable=True),
    Unary(nn.Dropout2d, (DROP_P, INPLACE), ranks=(4,), trainable=True),
    Unary(nn.Dropout3d, (DROP_P, INPLACE), ranks=(5,), trainable=True),
    Unary(nn.AlphaDropout, (DROP_P, INPLACE)), Unary(nn.FeatureAlphaDropout, (DROP_P, INPLACE), ranks=(3, 4)),
]

UNARY_FUNCTIONS = [
    Unary(F.relu, (INPLACE,)), Unary(torch.relu_), Unary(F.relu6, (INPLACE,)), Unary(F.elu, (ALPHA, INPLACE)),
    Unary(F.selu, (INPLACE,)), Unary(F.celu, (ALPHA, INPLACE)), Unary(F.gelu, (p("approximate", "none", "tanh",
                                                                               kwonly=True),)),
    Unary(F.silu, (INPLACE,)), Unary(F.mish, (INPLACE,)), Unary(F.hardswish, (INPLACE,)),
    Unary(F.hardsigmoid, (INPLACE,)), Unary(F.hardtanh, HARDTANH),
    Unary(F.leaky_relu, (p("negative_slope", 0.01, 0.2, -0.5), INPLACE)),
    Unary(F.sigmoid, traced_as="sigmoid"), Unary(F.tanh, traced_as="tanh"),
    Unary(F.softplus, SOFTPLUS), Unary(F.softsign), Unary(F.logsigmoid),
    Unary(F.dropout, DROPOUT_F, trainable=True), Unary(F.dropout1d, DROPOUT_F, ranks=(3,), trainable=True),
    Unary(F.dropout2d, DROPOUT_F, ranks=(4,), trainable=True),
    Unary(F.dropout3d, DROPOUT_F, ranks=(5,), trainable=True),
    Unary(F.alpha_dropout, (DROP_P, p("training", False), INPLACE)),
    Unary(F.feature_alpha_dropout, (DROP_P, p("training", False), INPLACE), ranks=(3, 4)),
    Unary(torch.relu), Unary(torch.sigmoid), Unary(torch.tanh), Unary(torch.exp), Unary(torch.abs), Unary(torch.neg),
    Unary(torch.sqrt, pre_abs=True), Unary(torch.rsqrt, pre_abs=True), Unary(torch.clamp, CLAMP),
    Unary(torch.clip, CLAMP), Unary(torch.square), Unary(torch.erf), Unary(torch.log, pre_abs=True),
    Unary(torch.sin), Unary(torch.cos), Unary(torch.sign), Unary(torch.round, ROUND), Unary(torch.floor),
    Unary(torch.ceil), Unary(torch.logical_not, to_float=True), Unary(operator.neg),
]

UNARY_METHODS = [
    Unary("relu"), Unary("relu_"), Unary("sigmoid"), Unary("sigmoid_"), Unary("tanh"), Unary("tanh_"), Unary("exp"),
    Unary("abs"), Unary("neg"), Unary("sqrt", pre_abs=True), Unary("rsqrt", pre_abs=True), Unary("clamp", CLAMP),
    Unary("clamp_", CLAMP), Unary("clip", CLAMP), Unary("clip_", CLAMP), Unary("square"), Unary("erf"),
    Unary("log", pre_abs=True), Unary("sin"), Unary("cos"), Unary("sign"), Unary("round", ROUND), Unary("floor"),
    Unary("ceil"), Unary("logical_not", to_float=True), Unary("contiguous"), Unary("clone"), Unary("detach"),
    Unary("float"), Unary("half"), Unary("double"), Unary("bfloat16"),
]
UNARY = {u.op: u for u in UNARY_MODULES + UNARY_FUNCTIONS + UNARY_METHODS}
LOW_PRECISION = ("half", "bfloat16", "double")


def category(value: torch.Tensor, other: torch.Tensor | None = None) -> str:
    """What the op leaves where its input units are zero: ``zero``, ``bias`` (a constant),
    ``varying`` (depends on the inputs: ``other`` is the same evaluated with other branch values)
    or ``singular`` (not finite)."""
    value = value.float()
    if not torch.isfinite(value).all():
        return "singular"
    if other is not None and not torch.equal(value, other.float()):
        return "varying"
    return "zero" if bool((value == 0).all()) else "bias"


def claims_for(kind: str) -> dict:
    """Zero and constant leftovers keep the producer prunable; varying or infinite ones (and divisors: norm
    members) must not leave it exactly prunable."""
    return {("head.weight", 0): kind in ("zero", "bias")}


# ---------------------------------------------------------------------------
# unary ops
# ---------------------------------------------------------------------------


def _draw_unary(draw, u: Unary) -> dict:
    if u.op in (torch.clamp, torch.clip, "clamp", "clamp_", "clip", "clip_"):
        which = draw(st.sampled_from(["min", "max", "both"]), label="bounds")
        lo = draw(st.sampled_from([-1.0, 0.0, 0.3]), label="min") if which != "max" else None
        hi = draw(st.sampled_from([1.0, 0.0, -0.2]), label="max") if which != "min" else None
        if lo is not None and hi is not None:
            assume(lo <= hi)
        args = {"min": lo, "max": hi, "npos": draw(st.integers(0, 2), label="npos")}
    else:
        params = [(q.name, st.sampled_from(q.values), q.required) for q in u.params]
        args = call_form(draw, params, kwonly=[q.name for q in u.params if q.kwonly])
    args["rank"] = draw(st.sampled_from(u.ranks), label="rank")
    if u.trainable:
        args["train"] = draw(st.booleans(), label="train")
        if args["train"]:
            args["p"] = 0.0
            if not isinstance(u.op, type):
                args["training"] = True
    return args


def _unary_apply(u: Unary, a: dict) -> tuple[Callable, dict]:
    """(apply(m, y), parts) for a unary op with arguments ``a``."""
    if u.op in (torch.clamp, torch.clip, "clamp", "clamp_", "clip", "clip_"):
        n, names = a["npos"], ("min", "max")
        pos = tuple(a[k] for k in names[:n])
        kw = {k: a[k] for k in names[n:] if a[k] is not None}
    else:
        pos, kw = split_call(a, [q.name for q in u.params])
    parts: dict[str, Any] = {}
    if isinstance(u.op, type):
        module = u.op(*pos, **kw)
        module.train(bool(a.get("train")))
        parts["act"] = module

        def core(m, y):
            return m.act(y)
    elif isinstance(u.op, str):
        def core(m, y):
            return getattr(y, u.op)(*pos, **kw)
    else:
        def core(m, y):
            return u.op(y, *pos, **kw)

    def apply(m, y):
        y = y.abs() if u.pre_abs else y
        out = core(m, y)
        return out.float() if (u.to_float or u.op in LOW_PRECISION) else out

    return apply, parts


def _unary_category(u: Unary, a: dict) -> str:
    apply, parts = _unary_apply(u, a)
    holder = nn.Module()
    for k, v in parts.items():
        setattr(holder, k, v)
    shape = (BATCH, 3) + (4,) * (a["rank"] - 2)
    with torch.no_grad():
        return category(apply(holder, torch.zeros(shape)))


def _unary_case(kind: str):
    def draw_fn(draw, op) -> dict:
        a = _draw_unary(draw, UNARY[op])
        assume(_unary_category(UNARY[op], a) == kind)
        return a

    return draw_fn


def build_unary(op, a: dict) -> Built:
    u = UNARY[op]
    apply, parts = _unary_apply(u, a)
    rank, c = a["rank"], 5
    parts.update(head=stage(rank, 3, c), tail=stage(rank, c, 3))

    def body(m, x):
        return m.tail(apply(m, m.head(x)))

    model: nn.Module = Probe(body, **parts).eval()
    if a.get("train") and "act" in parts:
        model.act.train()
    if u.traced_as is not None:
        model = retargeted(model, u.traced_as, u.op)
    x = torch.randn(BATCH, 3, *(4,) * (rank - 2))
    return Built(model, (x,), claims_for(_unary_category(u, a)))


def _ops_with(kinds: set[str], limit: int = 24) -> list:
    """Unary ops some of whose argument values fall in ``kinds`` (found by evaluating their combinations;
    ``inplace`` does not change the category)."""
    import itertools

    out = []
    for op, u in UNARY.items():
        if op in (torch.clamp, torch.clip, "clamp", "clamp_", "clip", "clip_"):
            names, grid = ["min", "max"], [[None, -1.0, 0.0, 0.3], [None, 1.0, 0.0, -0.2]]
        else:
            params = [q for q in u.params if q.name != "inplace"]
            names, grid = [q.name for q in params], [list(q.values) for q in params]
        seen = set()
        for values in itertools.islice(itertools.product(*grid), limit):
            a = dict(zip(names, values), npos=0, rank=u.ranks[0])
            if "min" in a and (a["min"] is None and a["max"] is None or
                               None not in (a["min"], a["max"]) and a["min"] > a["max"]):
                continue
            seen.add(_unary_category(u, a))
        if seen & kinds:
            out.append(op)
    return out


register("unary", "elementwise", _ops_with({"zero"}))(_unary_case("zero")).build(build_unary)
register("unary_bias", "elementwise", _ops_with({"bias"}), bias=True,
         why="f(0) != 0 (sigmoid, exp, cos, softplus, clamp(min>0) ...)")(_unary_case("bias")).build(build_unary)
register("unary_singular", "elementwise", _ops_with({"singular"}), bias=True,
         why="f(0) is not finite (log, rsqrt): no constant to fold; these dims should be norm members or "
             "barriers")(_unary_case("singular")).build(build_unary)


# ---------------------------------------------------------------------------
# binary ops: arithmetic, maximum/minimum, pow, comparisons, where, masked_fill
# ---------------------------------------------------------------------------

OTHERS = ("twin", "param", "buffer", "broadcast", "scalar", "scalar_tensor", "one_element")
"""What the second operand is: another producer of the same shape (same group), a per-channel
parameter or buffer (linked, so zeroed with the unit), a one-channel branch broadcast over the
channels, a Python number, a 0-d tensor, a one-element tensor."""
TENSOR_OTHERS = tuple(o for o in OTHERS if o != "scalar")


@dataclass(frozen=True)
class Binary:
    """A two-operand op: how to call it with ``(y, other)``, which operands and options it takes."""

    op: Any
    call: Callable[[Any, Any, dict], Any]
    others: tuple[str, ...] = OTHERS
    options: tuple[Param, ...] = ()
    reversible: bool = False  # ``other op y`` is a form of the same entry
    scalars: tuple[float, ...] = (0.0, 1.5, -2.0)
    bool_out: bool = False
    retarget: Any = None  # traced as this op, then the node is retargeted to ``op``


def _fn(f):
    def call(y, o, a):
        return f(o, y, **_opts(a)) if a.get("reversed") else f(y, o, **_opts(a))

    return call


def _method(name):
    def call(y, o, a):
        return getattr(y, name)(o, **_opts(a))

    return call


def _opts(a: dict) -> dict:
    return {k[4:]: v for k, v in a.items() if k.startswith("opt_")}


ALPHA_OPT = (Param("alpha", (1, 2, -0.5)),)
ROUNDING = (Param("rounding_mode", (None, "trunc", "floor")),)
POW_SCALARS = (2, 3, 1.0, 0, -1, 0.5)

BINARY = {b.op: b for b in [
    Binary(operator.add, _fn(operator.add), reversible=True),
    Binary(operator.sub, _fn(operator.sub), reversible=True),
    Binary(operator.mul, _fn(operator.mul), reversible=True),
    Binary(operator.truediv, _fn(operator.truediv), reversible=True),
    Binary(operator.pow, _fn(operator.pow), others=("scalar",), reversible=True, scalars=POW_SCALARS),
    Binary(operator.iadd, _fn(operator.add), retarget=operator.add),
    Binary(operator.isub, _fn(operator.sub), retarget=operator.sub),
    Binary(operator.imul, _fn(operator.mul), retarget=operator.mul),
    Binary(operator.itruediv, _fn(operator.truediv), retarget=operator.truediv),
    Binary(torch.add, _fn(torch.add), options=ALPHA_OPT, reversible=True),
    Binary(torch.sub, _fn(torch.sub), options=ALPHA_OPT, reversible=True),
    Binary(torch.mul, _fn(torch.mul), reversible=True),
    Binary(torch.div, _fn(torch.div), options=ROUNDING),
    Binary(torch.true_divide, _fn(torch.true_divide)),
    Binary(torch.maximum, _fn(torch.maximum), others=TENSOR_OTHERS, reversible=True),
    Binary(torch.minimum, _fn(torch.minimum), others=TENSOR_OTHERS, reversible=True),
    Binary(torch.pow, _fn(torch.pow), others=("scalar",), reversible=True, scalars=POW_SCALARS),
    Binary("add", _method("add"), options=ALPHA_OPT), Binary("add_", _method("add_"), options=ALPHA_OPT),
    Binary("sub", _method("sub"), options=ALPHA_OPT), Binary("sub_", _method("sub_"), options=ALPHA_OPT),
    Binary("mul", _method("mul")), Binary("mul_", _method("mul_")),
    Binary("div", _method("div"), options=ROUNDING), Binary("div_", _method("div_"), options=ROUNDING),
    Binary("maximum", _method("maximum"), others=TENSOR_OTHERS),
    Binary("minimum", _method("minimum"), others=TENSOR_OTHERS),
    Binary("pow", _method("pow"), others=("scalar",), scalars=POW_SCALARS),
] + [Binary(getattr(operator, c), _fn(getattr(operator, c)), bool_out=True, scalars=(0.0, 0.5, -0.5))
     for c in ("eq", "ne", "lt", "le", "gt", "ge")]
  + [Binary(c, _method(c), bool_out=True, scalars=(0.0, 0.5, -0.5)) for c in ("eq", "ne", "lt", "le", "gt", "ge")]}


def _draw_binary(draw, b: Binary) -> dict:
    a: dict[str, Any] = {"rank": draw(st.sampled_from([2, 3, 4]), label="rank"),
                         "other": draw(st.sampled_from(b.others), label="other")}
    if a["other"] in ("scalar", "scalar_tensor", "one_element"):
        a["value"] = draw(st.sampled_from(b.scalars), label="value")
    if a["other"] in ("param", "buffer"):
        a["param_shape"] = draw(st.sampled_from(["C", "1C"]), label="param_shape")
    # fx records ``attribute op y`` as a method call on the attribute: only branches go first
    if b.reversible and (a["other"] in ("twin", "broadcast", "scalar") or not callable(b.op)
                         or b.op.__module__ != "_operator"):
        a["reversed"] = draw(st.booleans(), label="reversed")
    if b.op in (operator.pow, torch.pow) and a.get("reversed"):
        a["value"] = draw(st.sampled_from([2, 0.5, 1.0]), label="base")  # a negative base ** y is nan
    if b.op in DIVISIONS and not a.get("reversed") and a.get("value") == 0:
        a["value"] = draw(st.sampled_from([1.5, -2.0]), label="divisor")  # y / 0 is not finite anywhere
    for q in b.options:
        if draw(st.booleans(), label=f"give {q.name}"):
            a["opt_" + q.name] = draw(st.sampled_from(q.values), label=q.name)
    if _fractional_power(b, a):
        a["abs"] = True  # y ** 0.5 of a negative y is nan in the model itself
    return a


def _fractional_power(b: Binary, a: dict) -> bool:
    return b.op in (operator.pow, torch.pow, "pow") and not a.get("reversed") and float(a.get("value", 1)) % 1 != 0


def _other_parts(a: dict, c: int) -> dict:
    rank, kind = a["rank"], a["other"]
    per_channel = (c,) + (1,) * (rank - 2) if a.get("param_shape") == "C" else (1, c) + (1,) * (rank - 2)
    if kind == "twin":
        return {"head2": stage(rank, 3, c)}
    if kind == "broadcast":
        return {"head1": stage(rank, 3, 1)}
    if kind == "param":
        return {"other_t": nn.Parameter(torch.rand(per_channel) + 0.5)}
    if kind == "buffer":
        return {"other_t": torch.rand(per_channel) + 0.5}
    if kind == "scalar_tensor":
        return {"other_t": torch.tensor(float(a["value"]))}
    if kind == "one_element":
        return {"other_t": torch.tensor([float(a["value"])])}
    return {}


def _other(m, x, a: dict):
    kind = a["other"]
    if kind == "twin":
        return m.head2(x)
    if kind == "broadcast":
        return m.head1(x)
    if kind == "scalar":
        return a["value"]
    return m.other_t


def _binary_apply(b: Binary, a: dict) -> Callable:
    def apply(m, x, y):
        y = y.abs() if a.get("abs") else y
        out = b.call(y, _other(m, x, a), a)
        return out.float() if b.bool_out else out

    return apply


def _stand_ins(a: dict, shape: tuple, sign: float) -> nn.Module:
    """The other operand where the unit is removed: the twin and linked parameters 0, a broadcast
    branch some input-dependent value (``sign`` flips it)."""
    holder = nn.Module()
    for k, v in _other_parts(a, shape[1]).items():
        if isinstance(v, nn.Module):
            setattr(holder, k, _Const(shape, 0.0) if k == "head2" else
                    _Const(shape[:1] + (1,) + shape[2:], 0.7 * sign))
        else:
            holder.register_buffer(k, torch.zeros_like(v) if a["other"] in ("param", "buffer") else v.detach())
    return holder


def measured(apply: Callable, a: dict) -> str:
    """The category of ``apply(m, x, y)`` at y = 0 (see ``category``)."""
    shape = (BATCH, 3) + (4,) * (a["rank"] - 2)
    with torch.no_grad():
        values = [apply(_stand_ins(a, shape, sign), None, torch.zeros(shape)) for sign in (1.0, -1.0)]
    return category(*values)


DIVISIONS = (operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_")


def _binary_category(b: Binary, a: dict) -> str:
    if b.op in DIVISIONS and a["other"] in ("twin", "param", "buffer"):
        return "norm"  # a divisor in the group: a norm member (checked to run and keep shapes)
    return measured(_binary_apply(b, a), a)


class _Const(nn.Module):
    """Stands in for a branch when measuring f(0): a constant of the branch's shape."""

    def __init__(self, shape, value):
        super().__init__()
        self.shape, self.value = shape, value

    def forward(self, x):
        if self.value == 0:
            return torch.zeros(self.shape)
        signs = torch.where(torch.arange(math.prod(self.shape)) % 2 == 0, 1.0, -1.0).view(self.shape)
        return self.value * signs


def build_binary(op, a: dict) -> Built:
    b = BINARY[op]
    rank, c = a["rank"], 5
    apply = _binary_apply(b, a)
    parts = dict(head=stage(rank, 3, c), tail=stage(rank, c, 3), **_other_parts(a, c))

    def body(m, x):
        return m.tail(apply(m, x, m.head(x)))

    model: nn.Module = Probe(body, **parts).eval()
    if b.retarget is not None:
        model = retargeted(model, b.retarget, b.op)
    x = torch.randn(BATCH, 3, *(4,) * (rank - 2))
    return Built(model, (x,), claims_for(_binary_category(b, a)))


def _binary_case(kind: str):
    kinds = ("zero", "norm") if kind == "zero" else (kind,)

    def draw_fn(draw, op) -> dict:
        a = _draw_binary(draw, BINARY[op])
        assume(_binary_category(BINARY[op], a) in kinds)
        return a

    return draw_fn


NEVER_BIAS = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
register("binary", "elementwise", list(BINARY))(_binary_case("zero")).build(build_binary)
register("binary_bias", "elementwise", [o for o in BINARY if o not in NEVER_BIAS and o not in DIVISIONS], bias=True,
         why="a constant survives where the unit is removed (+ scalar, x ** 0, x == 0 ...)"
         )(_binary_case("bias")).build(build_binary)
VARYING_OPS = [operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub, torch.maximum,
               torch.minimum, "add", "add_", "sub", "sub_", "maximum", "minimum",
               *(getattr(operator, c) for c in ("lt", "le", "gt", "ge")), "lt", "le", "gt", "ge"]
register("binary_varying", "elementwise", VARYING_OPS, bias=True,
         why="an input-dependent value survives where the unit is removed (+ a broadcast branch, y < branch): "
             "the group must be a barrier")(_binary_case("varying")).build(build_binary)
register("binary_singular", "elementwise", [operator.truediv, operator.pow, torch.pow, "pow"], bias=True,
         why="f(0) is not finite (c / y, y ** -1): the group must be a barrier or have a norm member"
         )(_binary_case("singular")).build(build_binary)


# ---------------------------------------------------------------------------
# where / masked_fill / fill_ / zero_ / stochastic depth
# ---------------------------------------------------------------------------

CONDITIONS = {"y>0": lambda y: y > 0, "y<0": lambda y: y < 0, "y>=0": lambda y: y >= 0, "y!=0": lambda y: y != 0}


def _select_apply(op, a: dict) -> Callable:
    cond = CONDITIONS[a["cond"]]

    def apply(m, x, y):
        c = cond(y)
        other = _other(m, x, a) if op in (torch.where, "where") else None
        if op is torch.where:
            return torch.where(c, other, y) if a.get("reversed") else torch.where(c, y, other)
        if op == "where":
            return y.where(c, other)
        if op in ("masked_fill", "masked_fill_"):
            return getattr(y, op)(c, a["value"])
        t = y.clone()
        filled = t.zero_() if op == "zero_" else t.fill_(a["value"])
        return y + filled if a["combine"] == "add" else y * filled

    return apply


SELECTS = (torch.where, "where", "masked_fill", "masked_fill_", "fill_", "zero_")


def _draw_select(draw, op) -> dict:
    a: dict[str, Any] = {"rank": draw(st.sampled_from([2, 3, 4]), label="rank"),
                         "cond": draw(st.sampled_from(sorted(CONDITIONS)), label="cond")}
    if op in (torch.where, "where"):
        a["other"] = draw(st.sampled_from(("scalar", "twin", "param", "broadcast")), label="other")
        if a["other"] == "scalar":
            a["value"] = draw(st.sampled_from([0.0, 1.5]), label="value")
        if a["other"] == "param":
            a["param_shape"] = draw(st.sampled_from(["C", "1C"]), label="param_shape")
        if op is torch.where:
            a["reversed"] = draw(st.booleans(), label="reversed")
    elif op != "zero_":
        a["other"] = "scalar"
        a["value"] = draw(st.sampled_from([0.0, 1.5, -1.0]), label="value")
    else:
        a["other"] = "scalar"
    if op in ("fill_", "zero_"):
        a["combine"] = draw(st.sampled_from(["add", "mul"]), label="combine")
    return a


def _select_category(op, a: dict) -> str:
    return measured(_select_apply(op, a), a)


def build_select(op, a: dict) -> Built:
    rank, c = a["rank"], 5
    apply = _select_apply(op, a)
    parts = dict(head=stage(rank, 3, c), tail=stage(rank, c, 3), **_other_parts(a, c))

    def body(m, x):
        return m.tail(apply(m, x, m.head(x)))

    x = torch.randn(BATCH, 3, *(4,) * (rank - 2))
    return Built(Probe(body, **parts).eval(), (x,), claims_for(_select_category(op, a)))


def _select_case(kind: str):
    def draw_fn(draw, op) -> dict:
        a = _draw_select(draw, op)
        assume(_select_category(op, a) == kind)
        return a

    return draw_fn


register("select", "elementwise", SELECTS)(_select_case("zero")).build(build_select)
register("select_bias", "elementwise", (torch.where, "where", "masked_fill", "masked_fill_", "fill_"), bias=True,
         why="the filled value survives where the unit is removed")(_select_case("bias")).build(build_select)
register("select_varying", "elementwise", (torch.where, "where"), bias=True,
         why="where(y >= 0, branch, y) leaves an input-dependent value: the group must be a barrier"
         )(_select_case("varying")).build(build_select)


@register("stochastic_depth", "elementwise", [torchvision.ops.stochastic_depth])
def draw_stochastic_depth(draw, op) -> dict:
    return {"p": draw(st.sampled_from([0.0, 0.2, 0.5]), label="p"),
            "mode": draw(st.sampled_from(["row", "batch"]), label="mode"),
            "residual": draw(st.booleans(), label="residual")}


@draw_stochastic_depth.build
def build_stochastic_depth(op, a: dict) -> Built:
    """torchvision's StochasticDepth module (its call is an fx leaf), traced in eval mode."""
    def body(m, x):
        y = m.head(x)
        z = m.drop(m.mid(y))
        return m.tail(y + z if a["residual"] else z)

    parts = dict(head=nn.Conv2d(3, 5, 1), mid=nn.Conv2d(5, 5, 3, padding=1),
                 drop=torchvision.ops.StochasticDepth(a["p"], a["mode"]), tail=nn.Conv2d(5, 3, 1))
    return Built(Probe(body, **parts).eval(), (torch.randn(BATCH, 3, 4, 4),), {("mid.weight", 0): True})
