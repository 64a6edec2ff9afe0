"""Normalisations: per-channel ones (BatchNorm, InstanceNorm) pass indices through and
own per-channel parameters; ones that reduce over the channel dim (LayerNorm,
GroupNorm, softmax) keep indices but change statistics when pruned (``norm``).
GroupNorm keeps its group count: unit ``j`` is channel ``j`` of every group.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import arg, rule, set_arg
from .conv import node_param_spaces

PER_CHANNEL_NORMS = [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                     nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d]
STATS = ("weight", "bias", "running_mean", "running_var")


def _pass_through(ctx, x) -> None:
    for d in range(len(ctx.shape(x))):
        ctx.same(ctx.space(x, d), ctx.out(d))


INSTANCE_RANKS = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}


def channel_dim(shape, module: nn.Module | None = None) -> int:
    """Dim 1, or 0 for an unbatched input: (C,) for BatchNorm1d, (C, *spatial) for an InstanceNorm."""
    spatial = next((k for cls, k in INSTANCE_RANKS.items() if isinstance(module, cls)), None)
    if spatial is not None:
        return 0 if len(shape) == spatial + 1 else 1
    return 1 if len(shape) >= 2 else 0


def _rewrite_per_channel(r) -> None:
    shape = r.new_shape(r.node)
    r.module.num_features = shape[channel_dim(shape, r.module)]


def _batch_statistics(ctx, x, channel: int) -> None:
    """Statistics computed from the input: every other dim is reduced over (a norm member), and
    keeps two elements (a statistic over one element is undefined or an error)."""
    for d in range(len(ctx.shape(x))):
        if d != channel:
            ctx.norm(ctx.out(d))
            ctx.fix(ctx.out(d), [0, 1], "statistics need two elements")


def _module_uses_input_stats(m: nn.Module) -> bool:
    """BatchNorm in training mode or without running stats; InstanceNorm unless eval with running stats."""
    return m.training or getattr(m, "running_mean", None) is None


@rule(modules=PER_CHANNEL_NORMS, name="batchnorm", rewrite=_rewrite_per_channel)
def batchnorm_module(ctx) -> None:
    x = ctx.node.args[0]
    _pass_through(ctx, x)
    channel = channel_dim(ctx.shape(x), ctx.module)
    if _module_uses_input_stats(ctx.module):
        _batch_statistics(ctx, x, channel)
    c = ctx.out(channel)
    for attr in STATS:
        if isinstance(getattr(ctx.module, attr, None), torch.Tensor):
            ctx.same(c, ctx.param(attr, 0, "produce"))


def _function_uses_input_stats(node) -> bool:
    """``F.batch_norm(training=True)`` or without running stats; ``F.instance_norm`` unless
    ``use_input_stats=False``. A flag computed at run time counts as True."""
    running_mean = arg(node, 1, "running_mean")
    if node.target is F.instance_norm:
        return arg(node, 5, "use_input_stats", True) is not False or running_mean is None
    return arg(node, 5, "training", False) is not False or running_mean is None


@rule(functions=[F.batch_norm, F.instance_norm], name="batchnorm")
def batchnorm_function(ctx) -> None:
    x = ctx.node.args[0]
    _pass_through(ctx, x)
    channel = channel_dim(ctx.shape(x))
    if _function_uses_input_stats(ctx.node):
        _batch_statistics(ctx, x, channel)
    c = ctx.out(channel)
    for i, name in enumerate(("running_mean", "running_var", "weight", "bias"), start=1):
        s = ctx.space(arg(ctx.node, i, name), 0)
        ctx.role(s, "produce")
        ctx.same(c, s)


def _layer_norm(ctx, x, k: int, affine) -> None:
    """Normalise over the last ``k`` dims; ``affine(name, i)`` is the space of that param dim."""
    shape = ctx.shape(x)
    _pass_through(ctx, x)
    for i in range(k):
        d = len(shape) - k + i
        ctx.norm(ctx.out(d))
        for name in ("weight", "bias"):
            ctx.same(ctx.out(d), affine(name, i))


def _rewrite_layer_norm_module(r) -> None:
    k = len(r.module.normalized_shape)
    r.module.normalized_shape = tuple(r.new_shape(r.node)[-k:])


@rule(modules=[nn.LayerNorm, nn.RMSNorm], name="layernorm", rewrite=_rewrite_layer_norm_module)
def layer_norm_module(ctx) -> None:
    m = ctx.module

    def affine(name, i):
        return ctx.param(name, i, "norm") if getattr(m, name, None) is not None else None

    _layer_norm(ctx, ctx.node.args[0], len(m.normalized_shape), affine)


def _rewrite_layer_norm_function(r) -> None:
    k = len(arg(r.node, 1, "normalized_shape"))
    set_arg(r.node, 1, "normalized_shape", list(r.new_shape(r.node)[-k:]))


@rule(functions=[F.layer_norm, F.rms_norm], name="layernorm", rewrite=_rewrite_layer_norm_function)
def layer_norm_function(ctx) -> None:
    shape_arg = arg(ctx.node, 1, "normalized_shape")
    if not isinstance(shape_arg, (list, tuple)):
        return
    nodes = {"weight": arg(ctx.node, 2, "weight"),
             "bias": arg(ctx.node, 3, "bias") if ctx.node.target is F.layer_norm else None}

    def affine(name, i):
        s = ctx.space(nodes[name], i)
        ctx.role(s, "norm")
        return s

    _layer_norm(ctx, ctx.node.args[0], len(shape_arg), affine)


def _group_norm(ctx, x, groups: int, weight, bias) -> None:
    _pass_through(ctx, x)
    c = ctx.out(1)
    channels = ctx.shape(x)[1]
    per = channels // groups
    role = "produce" if per == 1 else "norm"
    if per > 1:
        ctx.norm(c)
        local = ctx.virtual("group_local", per)
        ctx.link(c, local, np.arange(channels), np.arange(channels) % per)
    ctx.same(c, weight(0, role))
    ctx.same(c, bias(role))


def _new_group_count(r, groups: int) -> int:
    old_c = r.old_shape(r.node)[1]
    return r.new_shape(r.node)[1] if old_c // groups == 1 else groups


def _rewrite_group_norm_module(r) -> None:
    r.module.num_groups = _new_group_count(r, r.module.num_groups)
    r.module.num_channels = r.new_shape(r.node)[1]


@rule(modules=[nn.GroupNorm], name="groupnorm", rewrite=_rewrite_group_norm_module)
def group_norm_module(ctx) -> None:
    m = ctx.module
    _group_norm(ctx, ctx.node.args[0], m.num_groups,
                lambda d, role: ctx.param("weight", d, role) if m.affine else None,
                lambda role: ctx.param("bias", 0, role) if m.affine else None)


def _rewrite_group_norm_function(r) -> None:
    groups = arg(r.node, 1, "num_groups")
    set_arg(r.node, 1, "num_groups", _new_group_count(r, groups))


@rule(functions=[F.group_norm], name="groupnorm", rewrite=_rewrite_group_norm_function)
def group_norm_function(ctx) -> None:
    groups = arg(ctx.node, 1, "num_groups")
    if isinstance(groups, int):
        weight, bias = node_param_spaces(ctx, arg(ctx.node, 2, "weight"), arg(ctx.node, 3, "bias"))
        _group_norm(ctx, ctx.node.args[0], groups, weight, bias)


SOFTMAX_MODULES = [nn.Softmax, nn.LogSoftmax, nn.Softmin]


@rule(modules=SOFTMAX_MODULES, functions=[F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax],
      methods=["softmax", "log_softmax"], name="softmax")
def softmax(ctx) -> None:
    x = ctx.node.args[0]
    shape = ctx.shape(x)
    dim = ctx.module.dim if ctx.node.op == "call_module" else arg(ctx.node, 1, "dim")
    if dim is None or not isinstance(dim, int):
        return
    _pass_through(ctx, x)
    ctx.norm(ctx.out(dim % len(shape)))
