"""Conv (1d/2d/3d, grouped, depthwise, transposed) and linear: consume one space, produce another.

Grouped convs keep their group count: input and output channels are tied by
their index *within* a group (unit ``j`` is channel ``j`` of every group). A
depthwise-like conv (one input channel per group) instead makes each group a
unit: input channel ``c`` together with its ``out/groups`` outputs.
"""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import nn

from .base import arg, rule, rule_class, set_arg

CONV_DIMS = {
    nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3,
    nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3,
    F.conv1d: 1, F.conv2d: 2, F.conv3d: 3,
    F.conv_transpose1d: 1, F.conv_transpose2d: 2, F.conv_transpose3d: 3,
}
TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
              F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)


def _relate_channels(ctx, x, groups: int, transposed: bool, weight, bias) -> None:
    """Link input channels, output channels and weight/bias dims of a conv.

    ``weight(dim, role)`` / ``bias(role)`` return the space of that parameter dim.
    """
    shape = ctx.shape(x)
    k = CONV_DIMS[_kind(ctx)]
    cd = len(shape) - k - 1
    if cd == 1:
        ctx.same(ctx.space(x, 0), ctx.out(0))
    xs, os = ctx.space(x, cd), ctx.out(cd)
    c_in, c_out = shape[cd], ctx.out_shape[cd]
    in_g, out_g = c_in // groups, c_out // groups
    w_in, w_out = (0, 1) if transposed else (1, 0)
    if groups == 1:
        ctx.same(xs, weight(w_in, "consume"))
        ctx.same(os, weight(w_out, "produce"))
        ctx.same(os, bias("produce"))
        return
    ctx.same(os, bias("produce"))
    if in_g == 1:  # depthwise-like: group c is input channel c and its out_g outputs
        owner = os if not transposed else xs
        ctx.same(owner, weight(0, "produce"))
        ctx.link(xs, os, np.repeat(np.arange(c_in), out_g), np.arange(c_out))
        return
    local_in = ctx.virtual("in_local", in_g)
    ctx.link(xs, local_in, np.arange(c_in), np.arange(c_in) % in_g)
    ctx.same(xs, weight(0, "consume")) if transposed else ctx.same(local_in, weight(1, "consume"))
    if out_g == 1:
        ctx.barrier(os, "grouped conv with one output channel per group")
        return
    local_out = ctx.virtual("out_local", out_g)
    ctx.link(os, local_out, np.arange(c_out), np.arange(c_out) % out_g)
    if transposed:
        ctx.same(local_out, weight(1, "produce"))
    else:
        ctx.same(os, weight(0, "produce"))


def _kind(ctx):
    return rule_class(type(ctx.module), CONV_DIMS) if ctx.node.op == "call_module" else ctx.node.target


@rule(modules=[m for m in CONV_DIMS if isinstance(m, type)], name="conv",
      rewrite=lambda r: _rewrite_conv_module(r))
def conv_module(ctx) -> None:
    m = ctx.module
    transposed = rule_class(type(m), CONV_DIMS) in TRANSPOSED
    _relate_channels(ctx, ctx.node.args[0], m.groups, transposed,
                     lambda d, role: ctx.param("weight", d, role),
                     lambda role: ctx.param("bias", 0, role) if m.bias is not None else None)


def _new_groups(r, x, groups: int, in_per_group: int, cd: int) -> int:
    return r.new_shape(x)[cd] if in_per_group == 1 and groups > 1 else groups


def _rewrite_conv_module(r) -> None:
    m, x = r.module, r.node.args[0]
    k = CONV_DIMS[rule_class(type(m), CONV_DIMS)]
    cd = len(r.old_shape(x)) - k - 1
    old_in = r.old_shape(x)[cd]
    m.groups = _new_groups(r, x, m.groups, old_in // m.groups, cd)
    m.in_channels = r.new_shape(x)[cd]
    m.out_channels = r.new_shape(r.node)[cd]


def node_param_spaces(ctx, w, b):
    """(weight(dim, role), bias(role)) space getters for weights passed as graph values."""

    def weight(d, role):
        s = ctx.space(w, d)
        ctx.role(s, role)
        return s

    def bias(role):
        s = ctx.space(b, 0)
        ctx.role(s, role)
        return s

    return weight, bias


@rule(functions=[f for f in CONV_DIMS if not isinstance(f, type)], name="conv",
      rewrite=lambda r: _rewrite_conv_function(r))
def conv_function(ctx) -> None:
    x, w, b = ctx.node.args[0], arg(ctx.node, 1, "weight"), arg(ctx.node, 2, "bias")
    groups = arg(ctx.node, 6, "groups", 1)
    if isinstance(groups, int):  # a dynamic group count leaves every dim a barrier
        weight, bias = node_param_spaces(ctx, w, b)
        _relate_channels(ctx, x, groups, ctx.node.target in TRANSPOSED, weight, bias)


def _rewrite_conv_function(r) -> None:
    x = r.node.args[0]
    groups = arg(r.node, 6, "groups", 1)
    cd = len(r.old_shape(x)) - CONV_DIMS[r.node.target] - 1
    new = _new_groups(r, x, groups, r.old_shape(x)[cd] // groups, cd)
    if new != groups:
        set_arg(r.node, 6, "groups", new)


def _linear(ctx, x, weight, bias) -> None:
    shape = ctx.shape(x)
    for d in range(len(shape) - 1):
        ctx.same(ctx.space(x, d), ctx.out(d))
    ctx.same(ctx.space(x, -1), weight(1, "consume"))
    ctx.same(ctx.out(-1), weight(0, "produce"))
    ctx.same(ctx.out(-1), bias("produce"))


def _rewrite_linear(r) -> None:
    m = r.module
    m.in_features = m.weight.shape[1]
    m.out_features = m.weight.shape[0]


@rule(modules=[nn.Linear], name="linear", rewrite=_rewrite_linear)
def linear_module(ctx) -> None:
    m = ctx.module
    _linear(ctx, ctx.node.args[0], lambda d, role: ctx.param("weight", d, role),
            lambda role: ctx.param("bias", 0, role) if m.bias is not None else None)


@rule(functions=[F.linear], name="linear")
def linear_function(ctx) -> None:
    weight, bias = node_param_spaces(ctx, arg(ctx.node, 1, "weight"), arg(ctx.node, 2, "bias"))
    _linear(ctx, ctx.node.args[0], weight, bias)
