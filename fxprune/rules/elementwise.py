"""Elementwise ops (activations, dropout, arithmetic with broadcasting): indices pass through.

Broadcasting aligns dims from the right; an input dim of size 1 relates nothing.
A tensor divisor is marked as a normalisation member: dividing by a removed
(masked-to-zero) channel is not mask-equivalent, though the rewrite is exact.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

from .base import rule
from .size_reads import keep_original_sizes, size_read, size_uses

ACTIVATION_MODULES = [
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
]
POINTWISE_FUNCTIONS = [
    F.relu, F.relu_, F.relu6, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.leaky_relu, F.sigmoid, F.tanh, F.softplus, F.softsign, F.logsigmoid,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.exp, torch.abs, torch.neg, torch.sqrt,
    torch.rsqrt, torch.clamp, torch.clip, torch.square, torch.erf, torch.log, torch.sin, torch.cos,
    torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.where, torch.pow,
    torch.true_divide, torch.sign, torch.round, torch.floor, torch.ceil, torch.logical_not,
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
    operator.iadd, operator.isub, operator.imul, operator.itruediv,
    operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge,
    torchvision.ops.stochastic_depth,
]
POINTWISE_METHODS = [
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "abs", "neg", "sqrt", "rsqrt",
    "clamp", "clamp_", "clip", "clip_", "square", "pow", "erf", "log", "sin", "cos", "sign",
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "where", "masked_fill", "masked_fill_",
    "maximum", "minimum", "contiguous", "clone", "detach", "float", "half", "double", "bfloat16",
    "hardswish", "sigmoid_", "round", "floor", "ceil", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_not", "zero_", "fill_",
]
DIVISIONS = {operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_"}


def _tensor_args(ctx) -> list[fx.Node]:
    values = list(ctx.node.args) + list(ctx.node.kwargs.values())
    return [a for a in values if ctx.shape(a) is not None]


@rule(modules=ACTIVATION_MODULES, functions=POINTWISE_FUNCTIONS, methods=POINTWISE_METHODS, name="elementwise")
def elementwise(ctx) -> None:
    out = ctx.out_shape
    if out is None:
        return
    inputs = _tensor_args(ctx)
    for i, a in enumerate(inputs):
        shape = ctx.shape(a)
        offset = len(out) - len(shape)
        is_divisor = ctx.node.target in DIVISIONS and i == 1
        for d, size in enumerate(shape):
            if offset + d < 0 or size != out[offset + d]:
                continue
            ctx.same(ctx.space(a, d), ctx.out(offset + d))
            if is_divisor:
                ctx.norm(ctx.space(a, d))


@rule(methods=["to", "type", "type_as"], name="cast")
def cast(ctx) -> None:
    """``x.to(...)``/``x.type_as(other)``: identity on ``x``; ``other`` gives only a dtype."""
    x = ctx.node.args[0]
    if ctx.shape(x) != ctx.out_shape:
        return
    for d in range(len(ctx.out_shape)):
        ctx.same(ctx.space(x, d), ctx.out(d))
    for other in _tensor_args(ctx)[1:]:
        ctx.cover(*ctx.dims(other))


@rule(modules=[nn.PReLU], name="prelu", rewrite=lambda r: setattr(r.module, "num_parameters", r.module.weight.numel()))
def prelu(ctx) -> None:
    x = ctx.node.args[0]
    shape = ctx.shape(x)
    for d in range(len(shape)):
        ctx.same(ctx.space(x, d), ctx.out(d))
    if ctx.module.num_parameters > 1:
        ctx.same(ctx.out(1 if len(shape) >= 2 else 0), ctx.param("weight", 0, "consume"))


@rule(functions=[getattr, len], methods=["size", "dim", "numel", "nelement", "element_size", "is_contiguous",
                                          "get_device"], name="metadata", rewrite=keep_original_sizes)
def metadata(ctx) -> None:
    """Reading ``x.shape``/``x.size()``/``x.dtype``: no data flows.

    A size read is classified by what consumes it (fxprune/rules/size_reads.py): a size
    argument of a reshape gets the new size, arithmetic into tensor values keeps the
    original number; any other use (``torch.zeros(C)``, ``chunk(C)`` ...) makes the dims
    it reads barriers. Every other dim of ``x`` is free.
    """
    if ctx.node.target is getattr and ctx.node.args[1] not in ("shape", "dtype", "device", "ndim", "is_cuda"):
        return
    x = ctx.node.args[0]
    read = size_read(ctx.node)
    blocked = {} if read is None else {d: use for use in size_uses(read) if use.kind == "other" for d in use.dims}
    for d, space in enumerate(ctx.dims(x)):
        if d in blocked:
            user = blocked[d].user
            ctx.barrier(space, f"the size of dim {d} of {x.name} is used by {user.name} "
                               f"({user.op} {getattr(user.target, '__name__', user.target)}), which pruning would change")
        else:
            ctx.cover(space)
