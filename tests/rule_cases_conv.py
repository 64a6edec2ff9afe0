"""Cases for the ``conv`` and ``linear`` rules (fxprune/rules/conv.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from rule_cases import BATCH, Built, Probe, register

CONV_MODULES = {nn.Conv1d: (1, False), nn.Conv2d: (2, False), nn.Conv3d: (3, False),
                nn.ConvTranspose1d: (1, True), nn.ConvTranspose2d: (2, True), nn.ConvTranspose3d: (3, True)}
CONV_FUNCTIONS = {F.conv1d: (1, False), F.conv2d: (2, False), F.conv3d: (3, False),
                  F.conv_transpose1d: (1, True), F.conv_transpose2d: (2, True), F.conv_transpose3d: (3, True)}
CONV_OPS = {**CONV_MODULES, **CONV_FUNCTIONS}
SIZE = 5
"""Spatial size of every conv input (large enough for kernel 3 at dilation 2)."""


def _channels(draw, kind: str) -> tuple[int, int, int]:
    """(c_in, c_out, groups) for a groups kind."""
    if kind == "plain":
        return draw(st.integers(2, 5), label="c_in"), draw(st.integers(2, 5), label="c_out"), 1
    if kind == "grouped":
        g, i, o = 2, draw(st.integers(2, 3), label="in/g"), draw(st.integers(2, 3), label="out/g")
        return g * i, g * o, g
    if kind == "depthwise":
        c = draw(st.integers(2, 4), label="c_in")
        return c, c * draw(st.integers(1, 2), label="multiplier"), c
    g = draw(st.integers(2, 3), label="groups")  # "one_out": one output channel per group
    return 2 * g, g, g


def _padding(draw, k: int, transposed: bool, stride: int, module: bool):
    choices = ["int", "tuple"] + ([] if transposed else ["valid"] + (["same"] if stride == 1 else []))
    how = draw(st.sampled_from(choices), label="padding form")
    if how in ("valid", "same"):
        return how
    if how == "int":
        return draw(st.integers(0, 2), label="padding")
    return tuple(draw(st.lists(st.integers(0, 2), min_size=k, max_size=k), label="padding"))


@register("conv", "conv", list(CONV_OPS))
def draw_conv(draw, op) -> dict:
    k, transposed = CONV_OPS[op]
    module = op in CONV_MODULES
    kind = draw(st.sampled_from(["plain", "grouped", "depthwise", "one_out"]), label="groups kind")
    c_in, c_out, groups = _channels(draw, kind)
    stride = draw(st.integers(1, 2), label="stride")
    dilation = draw(st.integers(1, 2), label="dilation")
    args = dict(groups_kind=kind, c_in=c_in, c_out=c_out, groups=groups, kernel=draw(st.integers(1, 3), label="kernel"),
                stride=stride, dilation=dilation, padding=_padding(draw, k, transposed, stride, module),
                bias=draw(st.booleans(), label="bias"), unbatched=draw(st.booleans(), label="unbatched"))
    if transposed:
        args["output_padding"] = draw(st.integers(0, max(stride, dilation) - 1), label="output_padding")
    if module and not transposed:
        modes = ["zeros"] if args["padding"] == "valid" else ["zeros", "reflect", "replicate", "circular"]
        args["padding_mode"] = draw(st.sampled_from(modes), label="padding_mode")
    if not module:
        args["keywords"] = draw(st.booleans(), label="keywords")
    return args


def _conv_module(op, a: dict) -> nn.Module:
    k, transposed = CONV_OPS[op]
    extra = {"output_padding": a["output_padding"]} if transposed else {"padding_mode": a.get("padding_mode", "zeros")}
    return op(a["c_in"], a["c_out"], a["kernel"], stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
              groups=a["groups"], bias=a["bias"], **extra)


def _conv_call(op, a: dict):
    """A function applying ``op`` with the module's weight/bias, positionally or by keyword."""
    k, transposed = CONV_OPS[op]
    names = ["stride", "padding"] + (["output_padding", "groups", "dilation"] if transposed else ["dilation", "groups"])
    values = {n: a[n] for n in names}

    def apply(m, y):
        if a["keywords"]:
            return op(y, weight=m.w, bias=m.b if a["bias"] else None, **values)
        return op(y, m.w, m.b if a["bias"] else None, *(values[n] for n in names))

    return apply


@draw_conv.build
def build_conv(op, a: dict) -> Built:
    k, transposed = CONV_OPS[op]
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[k]
    layer = _conv_module(op if op in CONV_MODULES else _module_for(op), a)
    parts = dict(head=conv(3, a["c_in"], 1), tail=conv(a["c_out"], 3, 1))
    if op in CONV_MODULES:
        parts["mid"] = layer

        def body(m, x):
            return m.tail(torch.relu(m.mid(m.head(x))))
    else:
        parts["w"] = nn.Parameter(layer.weight.detach().clone())
        if a["bias"]:
            parts["b"] = nn.Parameter(layer.bias.detach().clone())
        apply = _conv_call(op, a)

        def body(m, x):
            return m.tail(torch.relu(apply(m, m.head(x))))

    shape = (3,) + (SIZE,) * k
    x = torch.randn(shape if a["unbatched"] else (BATCH, *shape))
    claims = {("head.weight", 0): True, ("tail.weight", 1): a["groups_kind"] != "one_out"}
    return Built(Probe(body, **parts).eval(), (x,), claims)


def _module_for(fn):
    return {f: m for m, v in CONV_MODULES.items() for f, w in CONV_FUNCTIONS.items() if v == w}[fn]


# ---------------------------------------------------------------------------
# linear
# ---------------------------------------------------------------------------


def _draw_linear(draw, op, layout: str, bias: bool | None) -> dict:
    rank = draw(st.integers(1 if layout == "last" else 3, 4), label="rank")
    args = dict(layout=layout, rank=rank, c_in=draw(st.integers(2, 5), label="c_in"),
                c_out=draw(st.integers(2, 5), label="c_out"),
                bias=draw(st.booleans(), label="bias") if bias is None else bias)
    if op is F.linear:
        args["npos"] = draw(st.integers(0, 2 if args["bias"] else 1), label="positional")
    return args


@register("linear", "linear", [nn.Linear, F.linear])
def draw_linear(draw, op) -> dict:
    layout = draw(st.sampled_from(["last", "leading"]), label="layout")
    return _draw_linear(draw, op, layout, None if layout == "last" else False)


@register("linear_bias", "linear", [nn.Linear, F.linear], bias=True,
          why="a linear over another dim adds its bias to the removed channel's row")
def draw_linear_bias(draw, op) -> dict:
    return _draw_linear(draw, op, "leading", True)


@draw_linear.build
@draw_linear_bias.build
def build_linear(op, a: dict) -> Built:
    c_in, c_out, rank = a["c_in"], a["c_out"], a["rank"]
    layer = nn.Linear(c_in, c_out, bias=a["bias"])
    if op is nn.Linear:
        parts = dict(mid=layer)

        def apply(m, y):
            return m.mid(y)
    else:
        parts = dict(w=nn.Parameter(layer.weight.detach().clone()))
        if a["bias"]:
            parts["b"] = nn.Parameter(layer.bias.detach().clone())

        def apply(m, y):
            given = [("weight", m.w)] + ([("bias", m.b)] if a["bias"] else [])
            n = a["npos"]
            return F.linear(y, *(v for _, v in given[:n]), **dict(given[n:]))

    if a["layout"] == "last":  # the pruned dims are the linear's in/out features
        parts.update(head=nn.Linear(3, c_in), tail=nn.Linear(c_out, 3))
        lead = (BATCH, 3, 2)[: rank - 1]
        x = torch.randn(*lead, 3)
        claims = {("head.weight", 0): True, ("tail.weight", 1): True}

        def body(m, x):
            return m.tail(torch.relu(apply(m, m.head(x))))
    else:  # the pruned dim is a leading dim the linear maps through: (N, C, [H,] L) -> (N, C, [H,] L')
        conv = {3: nn.Conv1d, 4: nn.Conv2d}[rank]
        parts.update(head=conv(3, 4, 1), tail=conv(4, 3, 1))
        x = torch.randn(BATCH, 3, *([3] * (rank - 3)), c_in)
        claims = {("head.weight", 0): True}

        def body(m, x):
            return m.tail(torch.relu(apply(m, m.head(x))))

    return Built(Probe(body, **parts).eval(), (x,), claims)
