"""Attention: matmul/einsum contractions, scaled_dot_product_attention, nn.MultiheadAttention
and torchvision's Swin window attention.

Heads are units: pruning a head removes its query, key and value rows and its
output-projection columns, so the other heads compute exactly what they did
(the softmax scale depends on the head width, which is kept). The embedding
(residual) width on the way in and out is a separate group.
"""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.models.swin_transformer as tv_swin
from torch import nn

from .. import nn as fxnn
from .base import arg, rule, set_arg


def _align_batch(ctx, a, b_dims_from_end: int) -> None:
    """Broadcast-align the leading (batch) dims of operand ``a`` with the output."""
    shape, out = ctx.shape(a), ctx.out_shape
    for d in range(len(shape) - b_dims_from_end):
        o = len(out) - len(shape) + d
        if o >= 0 and shape[d] == out[o]:
            ctx.same(ctx.space(a, d), ctx.out(o))


@rule(functions=[operator.matmul, torch.matmul, torch.bmm, torch.mm], methods=["matmul", "bmm", "mm"], name="matmul")
def matmul(ctx) -> None:
    a, b = ctx.node.args[0], ctx.node.args[1]
    sa, sb = ctx.shape(a), ctx.shape(b)
    if sa is None or sb is None or len(sa) < 2 or len(sb) < 2:
        return
    ctx.same(ctx.space(a, -1), ctx.space(b, -2))  # contraction
    ctx.same(ctx.space(a, -2), ctx.out(-2))
    ctx.same(ctx.space(b, -1), ctx.out(-1))
    _align_batch(ctx, a, 2)
    _align_batch(ctx, b, 2)


@rule(functions=[torch.einsum, torch.functional.einsum], name="einsum")
def einsum(ctx) -> None:
    equation, *operands = ctx.node.args
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    if not isinstance(equation, str) or "..." in equation or "->" not in equation:
        return
    lhs, rhs = equation.replace(" ", "").split("->")
    terms = lhs.split(",")
    if len(terms) != len(operands):
        return
    first: dict[str, object] = {}
    for letter, d in zip(rhs, range(len(rhs))):
        first.setdefault(letter, ctx.out(d))
    for term, op in zip(terms, operands):
        for d, letter in enumerate(term):
            space = ctx.space(op, d)
            if letter in first:
                ctx.same(first[letter], space)
            else:
                first[letter] = space
            ctx.cover(space)


def _rewrite_sdpa(r) -> None:
    q = arg(r.node, 0, "query")
    if r.old_shape(q)[-1] != r.new_shape(q)[-1] and arg(r.node, 6, "scale") is None:
        set_arg(r.node, 6, "scale", float(r.old_shape(q)[-1]) ** -0.5)


@rule(functions=[F.scaled_dot_product_attention], name="sdpa", rewrite=_rewrite_sdpa)
def sdpa(ctx) -> None:
    q, k, v = (arg(ctx.node, i, name) for i, name in enumerate(("query", "key", "value")))
    ctx.same(ctx.space(q, -1), ctx.space(k, -1))
    ctx.same(ctx.space(q, -2), ctx.out(-2))
    ctx.same(ctx.space(k, -2), ctx.space(v, -2))
    ctx.same(ctx.space(v, -1), ctx.out(-1))
    for t in (q, k, v):
        _align_batch(ctx, t, 2)
    mask = arg(ctx.node, 3, "attn_mask")
    if ctx.shape(mask) is not None:
        ctx.same(ctx.space(mask, -2), ctx.space(q, -2))
        ctx.same(ctx.space(mask, -1), ctx.space(k, -2))
        _align_batch(ctx, mask, 2)  # e.g. a per-head bias: its head dim goes with the heads
    _shared_kv_heads(ctx, q, k)


def _shared_kv_heads(ctx, q, k) -> None:
    """Grouped-query attention (``enable_gqa``, fewer key/value heads than query heads): query
    head h reads key/value head h // (Hq / Hkv), so removing query heads would regroup them."""
    sq, sk = ctx.shape(q), ctx.shape(k)
    if not arg(ctx.node, 7, "enable_gqa", False) or sq is None or sk is None or min(len(sq), len(sk)) < 3:
        return
    if sq[-3] != sk[-3]:
        ctx.barrier(ctx.space(q, -3), "grouped-query attention: query heads share key/value heads")


def _link_heads(ctx, heads, space, n_rows: int, inner: int, head_dim: int) -> None:
    """Tie each row of a projection to its head (a single head: the rows stay whole)."""
    if heads is None:
        ctx.barrier(space, "a single attention head cannot shrink")
    elif space is not None:
        ctx.link(space, heads, np.arange(n_rows), (np.arange(n_rows) % inner) // head_dim)


def _rewrite_mha(r) -> None:
    m: nn.MultiheadAttention = r.module
    weights = {name: p.detach() for name, p in m.named_parameters()}
    inner = weights["out_proj.weight"].shape[1]
    r.set_module(fxnn.PrunedMultiheadAttention(m, weights, inner // m.head_dim))


def _weights_output_used(node) -> bool:
    """Whether anything reads output 1 (the attention weights) of a MultiheadAttention call."""
    return any(not (user.target is operator.getitem and (user.args[1] == 0 or not user.users)) for user in node.users)


@rule(modules=[nn.MultiheadAttention], name="multihead_attention", rewrite=_rewrite_mha)
def multihead_attention(ctx) -> None:
    m: nn.MultiheadAttention = ctx.module
    query, key, value = (arg(ctx.node, i, n) for i, n in enumerate(("query", "key", "value")))
    if m.bias_k is not None or m.add_zero_attn or ctx.shape(query) is None:
        return
    mask_shape = ctx.shape(arg(ctx.node, 5, "attn_mask"))
    if mask_shape is not None and len(mask_shape) == 3:  # (N * heads, L, S): the substitute takes 2-D masks
        for space in (ctx.space(query, -1), ctx.space(key, -1), ctx.space(value, -1), ctx.out(-1, 0)):
            ctx.barrier(space, "a per-head (3-D) attn_mask")
        return
    inner, hd = m.embed_dim, m.head_dim
    heads = ctx.virtual("heads", m.num_heads)
    if arg(ctx.node, 4, "need_weights", True) and _weights_output_used(ctx.node):
        ctx.barrier(heads, "its attention-weights output is used, and it averages over the heads")
    if m._qkv_same_embed_dim:
        for t in (query, key, value):
            ctx.same(ctx.space(t, -1), ctx.param("in_proj_weight", 1, "consume"))
        _link_heads(ctx, heads, ctx.param("in_proj_weight", 0, "produce"), 3 * inner, inner, hd)
    else:
        for t, name in ((query, "q_proj_weight"), (key, "k_proj_weight"), (value, "v_proj_weight")):
            ctx.same(ctx.space(t, -1), ctx.param(name, 1, "consume"))
            _link_heads(ctx, heads, ctx.param(name, 0, "produce"), inner, inner, hd)
    if m.in_proj_bias is not None:
        bias = ctx.param("in_proj_bias", 0, "produce")
        _link_heads(ctx, heads, bias, 3 * inner, inner, hd)
        if m._qkv_same_embed_dim:
            ctx.same(bias, ctx.param("in_proj_weight", 0, "produce"))  # row r of W and b: one unit
    _link_heads(ctx, heads, ctx.param("out_proj.weight", 1, "consume"), inner, inner, hd)
    ctx.same(ctx.out(-1, 0), ctx.param("out_proj.weight", 0, "produce"))
    if m.out_proj.bias is not None:
        ctx.same(ctx.out(-1, 0), ctx.param("out_proj.bias", 0, "produce"))
    for d in range(len(ctx.shape(query)) - 1):
        ctx.same(ctx.space(query, d), ctx.out(d, 0))
        ctx.same(ctx.space(key, d), ctx.space(value, d))
        ctx.cover(ctx.space(key, d))


@rule(functions=[tv_swin._get_relative_position_bias], name="relative_position_bias")
def relative_position_bias(ctx) -> None:
    table = ctx.node.args[0]
    ctx.same(ctx.space(table, -1), ctx.out(1))
    ctx.barrier(ctx.space(table, 0), "relative positions are indexed by a buffer")


@rule(functions=[tv_swin._patch_merging_pad], name="patch_merging")
def patch_merging(ctx) -> None:
    x = ctx.node.args[0]
    shape = ctx.shape(x)
    c = shape[-1]
    for d in range(len(shape) - 3):
        ctx.same(ctx.space(x, d), ctx.out(d))
    ctx.link(ctx.space(x, -1), ctx.out(-1), np.tile(np.arange(c), 4), np.arange(4 * c))


SWIN_ARGS = ("input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads",
             "shift_size", "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale", "training")


def _swin_args(node) -> dict:
    return {name: arg(node, i, name) for i, name in enumerate(SWIN_ARGS)}


def _rewrite_window_attention(r) -> None:
    a = _swin_args(r.node)
    old_heads = a["num_heads"]
    head_dim = r.old_shape(a["qkv_weight"])[0] // 3 // old_heads
    a["num_heads"] = r.new_shape(a["qkv_weight"])[0] // 3 // head_dim
    a["head_dim"] = head_dim
    r.node.target = fxnn.window_attention
    r.node.args, r.node.kwargs = (), a


@rule(functions=[tv_swin.shifted_window_attention, fxnn.window_attention], name="window_attention",
      rewrite=_rewrite_window_attention)
def window_attention(ctx) -> None:
    a = _swin_args(ctx.node)
    x, nh = a["input"], a["num_heads"]
    if not isinstance(nh, int) or ctx.shape(a["qkv_weight"]) is None:
        return
    rows = ctx.shape(a["qkv_weight"])[0]
    inner = rows // 3
    hd = inner // nh
    ctx.same(ctx.space(x, 0), ctx.out(0))
    ctx.same(ctx.space(x, -1), ctx.space(a["qkv_weight"], 1))
    ctx.role(ctx.space(a["qkv_weight"], 1), "consume")
    heads = ctx.virtual("heads", nh)
    for name in ("qkv_weight", "qkv_bias"):
        space = ctx.space(a[name], 0)
        ctx.role(space, "produce")
        _link_heads(ctx, heads, space, rows, inner, hd)
    ctx.same(ctx.space(a["qkv_weight"], 0), ctx.space(a["qkv_bias"], 0))  # row r of W and b: one unit
    proj_in = ctx.space(a["proj_weight"], 1)
    ctx.role(proj_in, "consume")
    _link_heads(ctx, heads, proj_in, inner, inner, hd)
    for name in ("proj_weight", "proj_bias"):
        space = ctx.space(a[name], 0)
        ctx.role(space, "produce")
        ctx.same(ctx.out(-1), space)
    ctx.same(heads, ctx.space(a["relative_position_bias"], 1))
    ctx.cover(*ctx.dims(a["relative_position_bias"]))
    if a["logit_scale"] is not None:
        ctx.same(heads, ctx.space(a["logit_scale"], 0))
