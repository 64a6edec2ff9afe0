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

from .base import arg, rule, rule_class
from .context import tensor_meta_shapes

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
    """The dims before the last ``spatial`` ones map one to one, into every output
    (``return_indices=True``: the pooled values and their indices, both per channel)."""
    shape, metas = ctx.shape(x), tensor_meta_shapes(ctx.node)
    outputs = [(-1, metas)] if isinstance(metas, tuple) else list(enumerate(metas or []))
    for i, out in outputs:
        if shape is None or out is None or len(out) != len(shape):
            continue
        for d in range(len(shape) - spatial):
            ctx.same(ctx.space(x, d), ctx.out(d, i))


@rule(modules=list(POOL_MODULES), functions=list(POOL_FUNCTIONS), name="spatial")
def spatial(ctx) -> None:
    """Pooling / interpolation over the trailing spatial dims (k of them)."""
    x = ctx.node.args[0]
    key = rule_class(type(ctx.module), POOL_MODULES) if ctx.node.op == "call_module" else ctx.node.target
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


EXACT_REDUCTIONS = {"sum", torch.sum, "nansum", torch.nansum}
REDUCTIONS = ["sum", "mean", "amax", "amin", "std", "var", "logsumexp", "prod", "nansum", "nanmean"]
OLD_SIGNATURE = {"std", torch.std, "var", torch.var}
"""``std(x, dim, unbiased, keepdim)``: positionally, the third argument is ``unbiased``."""


def _reduced_dims(node, rank: int) -> tuple[set[int], bool] | None:
    """(reduced dims, keepdim) of a reduction call, or None when they are not literal.

    Reads ``dim``/``axis`` and ``keepdim``/``keepdims`` (numpy names), the old
    ``std``/``var`` signature (a bool third argument is ``unbiased``; ``x.std(True)``
    is a full reduction), and an empty dim list (reduce everything).
    """
    dim = arg(node, 1, "dim", node.kwargs.get("axis"))
    keep_at = 3 if node.target in OLD_SIGNATURE else 2
    keepdim = arg(node, keep_at, "keepdim", node.kwargs.get("keepdims", False))
    if node.target in OLD_SIGNATURE and isinstance(dim, bool):  # std(x, unbiased)
        dim = None
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return set(range(rank)), bool(keepdim)
    dims = [dim] if isinstance(dim, int) and not isinstance(dim, bool) else dim
    if not isinstance(dims, (tuple, list)) or not all(isinstance(d, int) for d in dims) or \
            not isinstance(keepdim, bool):
        return None
    return {d % rank for d in dims}, keepdim


@rule(methods=REDUCTIONS, functions=[getattr(torch, n) for n in REDUCTIONS], name="reduce")
def reduce(ctx) -> None:
    x = ctx.node.args[0]
    shape, out = ctx.shape(x), ctx.out_shape
    found = _reduced_dims(ctx.node, len(shape)) if shape is not None and out is not None else None
    if found is None:
        return
    dims, keepdim = found
    want = tuple(1 if d in dims else n for d, n in enumerate(shape) if keepdim or d not in dims)
    if want != tuple(out):  # arguments read wrong: every dim stays a barrier
        return
    exact = ctx.node.target in EXACT_REDUCTIONS
    need = _elements_needed(ctx.node)
    out_d = 0
    for d in range(len(shape)):
        if d in dims:
            ctx.cover(ctx.space(x, d)) if exact else ctx.norm(ctx.space(x, d))
            if need > 1 and ctx.space(x, d) is not None:
                ctx.fix(ctx.space(x, d), range(min(need, shape[d])),
                        f"{_name(ctx.node)} needs more than {need - 1} element(s)")
            out_d += 1 if keepdim else 0
            continue
        ctx.same(ctx.space(x, d), ctx.out(out_d))
        out_d += 1


def _name(node) -> str:
    return node.target if isinstance(node.target, str) else node.target.__name__


def _elements_needed(node) -> int:
    """``std``/``var`` with correction c are finite over more than c elements: c + 1 must stay
    (a reduced dim pruned to one element would make them nan); 1 for other reductions."""
    if node.target not in OLD_SIGNATURE:
        return 1
    correction = node.kwargs.get("correction")
    unbiased = node.kwargs.get("unbiased", node.args[2] if len(node.args) > 2 else True)
    if correction is None:
        correction = 1 if unbiased is not False else 0
    return int(correction) + 1 if isinstance(correction, (int, float)) and not isinstance(correction, bool) else 2
