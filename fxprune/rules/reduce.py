"""Pooling, resizing, padding, rolling and reductions.

Spatial ops keep the leading (batch, channel) dims' indices and leave spatial
dims unmapped (barriers). A reduction over a prunable dim is exact for ``sum``
and a normalisation member (``norm``) for mean/max/var..., whose values change
when elements are removed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import arg, rule

POOL_MODULES = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
    nn.LPPool1d: 1, nn.LPPool2d: 2, nn.Upsample: None, nn.UpsamplingNearest2d: 2,
    nn.UpsamplingBilinear2d: 2, nn.PixelShuffle: None,
}
POOL_FUNCTIONS = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3,
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
    F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3,
    F.lp_pool1d: 1, F.lp_pool2d: 2, F.interpolate: None, F.upsample: None,
    torch.max_pool1d: 1, torch.max_pool2d: 2, torch.max_pool3d: 3, torch.avg_pool1d: 1,
    torch.adaptive_avg_pool1d: 1,
}
POOL_MODULES.pop(nn.PixelShuffle)  # rearranges channels into space: no rule, a barrier


def _leading_identity(ctx, x, spatial: int) -> None:
    shape, out = ctx.shape(x), ctx.out_shape
    if out is None or len(out) != len(shape):
        return
    for d in range(len(shape) - spatial):
        ctx.same(ctx.space(x, d), ctx.out(d))


@rule(modules=list(POOL_MODULES), functions=list(POOL_FUNCTIONS), name="spatial")
def spatial(ctx) -> None:
    """Pooling / interpolation over the trailing spatial dims (k of them)."""
    x = ctx.node.args[0]
    key = type(ctx.module) if ctx.node.op == "call_module" else ctx.node.target
    k = POOL_MODULES.get(key, POOL_FUNCTIONS.get(key))
    if k is None:  # interpolate / Upsample: everything after (N, C)
        k = len(ctx.shape(x)) - 2
    _leading_identity(ctx, x, k)


PAD_MODULES = [nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
               nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
               nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d,
               nn.CircularPad2d, nn.CircularPad3d]


@rule(modules=PAD_MODULES, functions=[F.pad], name="pad")
def pad(ctx) -> None:
    pads = ctx.module.padding if ctx.node.op == "call_module" else arg(ctx.node, 1, "pad")
    if not isinstance(pads, (tuple, list)):
        return
    _leading_identity(ctx, ctx.node.args[0], len(pads) // 2)


@rule(functions=[torch.roll], methods=["roll"], name="roll")
def roll(ctx) -> None:
    x = ctx.node.args[0]
    dims = arg(ctx.node, 2, "dims")
    if dims is None:
        return
    rolled = {d % len(ctx.shape(x)) for d in ([dims] if isinstance(dims, int) else dims)}
    for d in range(len(ctx.shape(x))):
        if d not in rolled:
            ctx.same(ctx.space(x, d), ctx.out(d))


EXACT_REDUCTIONS = {"sum", torch.sum}
REDUCTIONS = ["sum", "mean", "amax", "amin", "std", "var", "logsumexp", "prod", "nansum", "nanmean"]


@rule(methods=REDUCTIONS, functions=[getattr(torch, n) for n in REDUCTIONS], name="reduce")
def reduce(ctx) -> None:
    x = ctx.node.args[0]
    shape = ctx.shape(x)
    dim = arg(ctx.node, 1, "dim")
    keepdim = bool(arg(ctx.node, 2, "keepdim", False))
    if dim is None:
        dims = set(range(len(shape)))
    elif isinstance(dim, int) or (isinstance(dim, (tuple, list)) and all(isinstance(d, int) for d in dim)):
        dims = {d % len(shape) for d in ([dim] if isinstance(dim, int) else dim)}
    else:
        return
    exact = ctx.node.target in EXACT_REDUCTIONS
    out_d = 0
    for d in range(len(shape)):
        if d in dims:
            ctx.cover(ctx.space(x, d)) if exact else ctx.norm(ctx.space(x, d))
            out_d += 1 if keepdim else 0
            continue
        ctx.same(ctx.space(x, d), ctx.out(out_d))
        out_d += 1
