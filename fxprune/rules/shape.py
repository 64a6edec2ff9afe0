"""Shape ops: reshape/flatten/view, permute/transpose, cat/stack, split/chunk, getitem, expand.

Reshapes are split into regions of input and output dims with equal products.
Inside a region the dims must share a common mixed-radix refinement into
*atoms* (else the region is a barrier). One atom, the largest (the more major on
ties), carries the units; every dim containing it maps its elements to the
atom's coordinate, so units stay rectangular through the reshape: channel ``c``
of NCHW becomes the block ``c*H*W .. (c+1)*H*W-1`` after flatten, and unit ``j``
of a channel shuffle is channel ``j`` of every group. Dims without the carrier
(e.g. the group dim of a shuffle) become barriers.
"""
from __future__ import annotations

import math
import operator

import numpy as np
import torch
from torch import fx, nn

from .base import arg, rule, set_arg
from .context import tensor_meta_shapes

RESHAPE_METHODS = ["view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"]
RESHAPE_FUNCTIONS = [torch.reshape, torch.flatten, torch.unflatten, torch.squeeze, torch.unsqueeze]


def _regions(ins: tuple, outs: tuple) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of input and output dims (size-1 dims dropped) with equal products."""
    a = [d for d, s in enumerate(ins) if s != 1]
    b = [d for d, s in enumerate(outs) if s != 1]
    regions, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        ri, rj = [a[i]], [b[j]]
        pi, pj = ins[a[i]], outs[b[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj and i < len(a):
                ri.append(a[i]); pi *= ins[a[i]]; i += 1  # noqa: E702
            elif pj < pi and j < len(b):
                rj.append(b[j]); pj *= outs[b[j]]; j += 1  # noqa: E702
            else:
                return None
        regions.append((ri, rj))
    return regions if i == len(a) and j == len(b) else None


def _strides(dims: list[int], shape: tuple) -> dict[int, int]:
    out, stride = {}, 1
    for d in reversed(dims):
        out[d] = stride
        stride *= shape[d]
    return out


def _map_region(ctx, x, ins, outs, ri, rj, tag) -> None:
    if len(ri) == 1 and len(rj) == 1:
        ctx.same(ctx.space(x, ri[0]), ctx.out(rj[0]))
        return
    s_in, s_out = _strides(ri, ins), _strides(rj, outs)
    total = math.prod(ins[d] for d in ri)
    bounds = sorted(set(s_in.values()) | set(s_out.values()) | {total})
    spaces = [(ctx.space(x, d), s_in[d], ins[d]) for d in ri] + [(ctx.out(d), s_out[d], outs[d]) for d in rj]
    if any(hi % lo for lo, hi in zip(bounds, bounds[1:])):
        for space, _, _ in spaces:
            ctx.barrier(space, "reshape regroups elements non-rectangularly")
        return
    atoms = [(hi // lo, lo) for lo, hi in zip(bounds, bounds[1:])]  # (size, stride)
    size, lo = max(atoms, key=lambda a: (_open(ctx, spaces, *a), a[0], a[1]))
    carrier = ctx.virtual(f"reshape{tag}", size)
    for space, stride, n in spaces:
        if stride <= lo and lo * size <= stride * n:
            e = np.arange(n)
            ctx.link(space, carrier, e, (e * stride // lo) % size)
        else:
            ctx.barrier(space, "reshape: only its largest factor is prunable")


def _open(ctx, spaces, size: int, lo: int) -> bool:
    """Whether no space that carries the atom (``size`` elements of stride ``lo``) is a barrier
    already (``flatten`` of (C, 5, 5) with C = 4: the spatial atoms are, the channel atom is not)."""
    return not any(space in ctx.an.barriers for space, stride, n in spaces
                   if stride <= lo and lo * size <= stride * n)


@rule(methods=RESHAPE_METHODS, functions=RESHAPE_FUNCTIONS, modules=[nn.Flatten, nn.Unflatten],
      name="reshape", rewrite=lambda r: _rewrite_reshape(r))
def reshape(ctx) -> None:
    x = ctx.node.args[0]
    ins, outs = ctx.shape(x), ctx.out_shape
    if ins is None or outs is None:
        return
    if _sizes_from_unknown_tuple(ctx.node, len(outs)):
        for space in [*(ctx.space(x, d) for d in range(len(ins))), *(ctx.out(d) for d in range(len(outs)))]:
            ctx.barrier(space, "its shape is one computed tuple fxprune cannot follow")
        return
    regions = _regions(ins, outs)
    if regions is None:
        return
    for tag, (ri, rj) in enumerate(regions):
        _map_region(ctx, x, ins, outs, ri, rj, tag)
    if ctx.node.target in ("view_as", "reshape_as"):
        other = ctx.node.args[1]
        for d in range(len(outs)):
            ctx.same(ctx.out(d), ctx.space(other, d))


def _sizes_from_unknown_tuple(node: fx.Node, out_rank: int) -> bool:
    """``view(x, t)`` with ``t`` one computed tuple (not a size read; ``fxprune.tuple_values`` made
    the ones it understands explicit): its elements cannot be rewritten one by one."""
    if node.target not in ("view", "reshape", torch.reshape):
        return False
    rest = node.args[1:]
    return (len(rest) == 1 and isinstance(rest[0], fx.Node) and out_rank != 1
            and not _reads_whole_shape(rest[0]))


def _new_sizes(r, sizes, first_dim: int = 0) -> list:
    """Sizes with the new literal wherever the dim changed or the size was computed from
    a pruned size (e.g. ``c // groups``); ``-1`` and other dynamic sizes (batch) are kept."""
    old, new = r.old_shape(r.node), r.new_shape(r.node)
    out = list(sizes)
    for i, s in enumerate(out):
        d = first_dim + i
        if isinstance(s, int) and s == -1:
            continue
        if old[d] != new[d] or (isinstance(s, fx.Node) and r.reads_pruned_size(s)):
            out[i] = new[d]
    return out


def _rewrite_reshape(r) -> None:
    node = r.node
    in_rank = len(r.old_shape(node.args[0]) or ())
    if node.op == "call_module":
        if isinstance(r.module, nn.Unflatten):  # ``dim`` counts the input's dims
            dim = r.module.dim % in_rank
            r.module.unflattened_size = tuple(_new_sizes(r, r.module.unflattened_size, dim))
        return
    if node.target in ("view", "reshape", torch.reshape):
        _rewrite_view_sizes(r, node)
    elif node.target in ("unflatten", torch.unflatten):
        dim = arg(node, 1, "dim") % in_rank
        set_arg(node, 2, "sizes", _new_sizes(r, arg(node, 2, "sizes"), dim))
    elif node.target in ("squeeze", torch.squeeze):
        _squeeze_only_unit_dims(r, node, in_rank)


def _rewrite_view_sizes(r, node: fx.Node) -> None:
    """Sizes given as varargs, as one tuple/list or shape value, or by keyword (``size=``/``shape=``)."""
    rest = node.args[1:]
    if not rest:
        name = next((k for k in ("shape", "size") if k in node.kwargs), None)
        if name is not None:
            node.kwargs = {**node.kwargs, name: _packed_sizes(r, node.kwargs[name])}
    elif len(rest) == 1 and (isinstance(rest[0], (tuple, list)) or _reads_whole_shape(rest[0])):
        node.args = (node.args[0], _packed_sizes(r, rest[0]))
    else:
        node.args = (node.args[0], *_new_sizes(r, rest))


def _packed_sizes(r, sizes):
    """New sizes for a tuple/list, or for a whole shape read from a tensor (``y.view(other.shape)``):
    kept when ``other`` shrinks the same way, else the new shape as literals."""
    if isinstance(sizes, (tuple, list)):
        return type(sizes)(_new_sizes(r, sizes))
    source = sizes.args[0]
    return sizes if r.new_shape(source) == r.new_shape(r.node) else tuple(r.new_shape(r.node))


def _reads_whole_shape(value) -> bool:
    """``x.shape`` or ``x.size()``: one value that is a whole shape."""
    if not isinstance(value, fx.Node):
        return False
    if value.op == "call_method" and value.target == "size":
        return len(value.args) == 1 and "dim" not in value.kwargs
    return value.op == "call_function" and value.target is getattr and value.args[1] == "shape"


def _squeeze_only_unit_dims(r, node: fx.Node, rank: int) -> None:
    """``squeeze()``/``squeeze(d)`` drop only the dims that had size 1 before pruning: a pruned dim
    may have shrunk to one element and must stay."""
    old_in = r.old_shape(node.args[0])
    dim = arg(node, 1, "dim")
    dims = range(rank) if dim is None else ([dim] if isinstance(dim, int) else dim)
    if not all(isinstance(d, int) for d in dims):
        return
    node.args, node.kwargs = (node.args[0], tuple(d % rank for d in dims if old_in[d % rank] == 1)), {}


def _permutation(ctx) -> list[int] | None:
    """Output dim d is input dim ``perm[d]`` (None when the dims are not literal)."""
    node, n = ctx.node, len(ctx.out_shape)
    if node.target in ("permute", torch.permute):
        dims = arg(node, 1, "dims")
        if node.target == "permute" and (len(node.args) > 2 or isinstance(dims, int)):  # x.permute(0, 2, 1)
            dims = node.args[1:]
        ok = isinstance(dims, (tuple, list)) and all(isinstance(d, int) for d in dims)
        return [d % n for d in dims] if ok else None
    if node.target in ("t", torch.t):
        return list(range(n))[::-1]
    if node.target in ("movedim", "moveaxis", torch.movedim, torch.moveaxis):
        return _moved(arg(node, 1, "source"), arg(node, 2, "destination"), n)
    names = ("axis0", "axis1") if node.target in ("swapaxes", torch.swapaxes) else ("dim0", "dim1")
    d0, d1 = arg(node, 1, names[0]), arg(node, 2, names[1])
    if not (isinstance(d0, int) and isinstance(d1, int)):
        return None
    perm = list(range(n))
    perm[d0 % n], perm[d1 % n] = perm[d1 % n], perm[d0 % n]
    return perm


def _moved(src, dst, n: int) -> list[int] | None:
    """The permutation of ``movedim(x, src, dst)``: moved dims land at ``dst``, the rest keep their order."""
    src = [src] if isinstance(src, int) else src
    dst = [dst] if isinstance(dst, int) else dst
    if not (isinstance(src, (tuple, list)) and isinstance(dst, (tuple, list)) and len(src) == len(dst)
            and all(isinstance(d, int) for d in (*src, *dst))):
        return None
    perm: list[int | None] = [None] * n
    for s_, d_ in zip(src, dst):
        perm[d_ % n] = s_ % n
    rest = iter(d for d in range(n) if d not in {s_ % n for s_ in src})
    return [p if p is not None else next(rest) for p in perm]


PERMUTES = ["permute", "transpose", "swapaxes", "swapdims", "t", "movedim", "moveaxis"]


@rule(methods=PERMUTES, functions=[getattr(torch, p) for p in PERMUTES], name="permute")
def permute(ctx) -> None:
    perm = _permutation(ctx)
    if perm is not None:
        for d, src in enumerate(perm):
            ctx.same(ctx.space(ctx.node.args[0], int(src)), ctx.out(d))


def _cat_inputs(node: fx.Node) -> tuple[list, int]:
    """The tensors and the dim of ``cat``/``stack`` (also given as numpy's ``axis=``)."""
    return list(arg(node, 0, "tensors")), arg(node, 1, "dim", node.kwargs.get("axis", 0))


@rule(functions=[torch.cat, torch.concat, torch.concatenate], name="cat")
def cat(ctx) -> None:
    tensors, dim = _cat_inputs(ctx.node)
    out = ctx.out_shape
    dim %= len(out)
    offset = 0
    for t in tensors:
        shape = ctx.shape(t)
        if shape is None or len(shape) != len(out):
            return
        for d in range(len(out)):
            if d != dim:
                ctx.same(ctx.space(t, d), ctx.out(d))
        n = shape[dim]
        ctx.link(ctx.space(t, dim), ctx.out(dim), np.arange(n), offset + np.arange(n))
        if n == 1:  # a size-1 input has no space: its element must stay
            ctx.fix(ctx.out(dim), [offset], "comes from a one-element input of cat")
        offset += n
    ctx.cover(ctx.out(dim))


@rule(functions=[torch.stack], name="stack")
def stack(ctx) -> None:
    tensors, dim = _cat_inputs(ctx.node)
    dim %= len(ctx.out_shape)
    for t in tensors:
        for d in range(len(ctx.shape(t))):
            ctx.same(ctx.space(t, d), ctx.out(d if d < dim else d + 1))
    ctx.barrier(ctx.out(dim), "stack dim")


SPLITS = ["split", "chunk", "tensor_split", "split_with_sizes"]


@rule(methods=SPLITS, functions=[torch.split, torch.chunk, torch.tensor_split], name="split",
      rewrite=lambda r: _rewrite_split(r))
def split(ctx) -> None:
    x = ctx.node.args[0]
    shape = ctx.shape(x)
    dim = arg(ctx.node, 2, "dim", 0) % len(shape)
    offset = 0
    for i, out in enumerate(ctx.node.meta["tensor_meta"]):
        for d in range(len(shape)):
            if d != dim:
                ctx.same(ctx.space(x, d), ctx.out(d, i))
        n = out.shape[dim]
        ctx.link(ctx.space(x, dim), ctx.out(dim, i), offset + np.arange(n), np.arange(n))
        if n == 1:  # a one-element chunk has no space: its element must stay
            ctx.fix(ctx.space(x, dim), [offset], "is a one-element chunk of split")
        offset += n
    ctx.cover(ctx.space(x, dim))


def _rewrite_split(r) -> None:
    node = r.node
    dim = arg(node, 2, "dim", 0)
    d = dim % len(r.old_shape(node.args[0]))
    sizes = [s[d] for s in r.new_shapes(node)]
    if sizes == [s[d] for s in r.old_shapes(node)]:
        return
    node.op, node.target = "call_function", torch.split
    node.args, node.kwargs = (node.args[0], sizes, dim), {}


@rule(methods=["unbind"], functions=[torch.unbind], name="unbind")
def unbind(ctx) -> None:
    x = ctx.node.args[0]
    shape = ctx.shape(x)
    dim = arg(ctx.node, 1, "dim", 0) % len(shape)
    for i in range(shape[dim]):
        for d in range(len(shape)):
            if d != dim:
                ctx.same(ctx.space(x, d), ctx.out(d - (d > dim), i))
    ctx.barrier(ctx.space(x, dim), "unbind: one output per element")


def _index_items(index, ndim: int) -> list | None:
    items = list(index) if isinstance(index, tuple) else [index]
    n_ell = sum(1 for it in items if it is Ellipsis)
    if n_ell > 1 or any(not (it is None or it is Ellipsis or isinstance(it, (int, slice))) for it in items):
        return None
    used = sum(1 for it in items if it is not None and it is not Ellipsis)
    out = []
    for it in items:
        out.extend([slice(None)] * (ndim - used) if it is Ellipsis else [it])
    return out + [slice(None)] * (ndim - sum(1 for it in out if it is not None))


def _plain_slice(it) -> bool:
    return isinstance(it, slice) and it.step in (None, 1) and all(
        v is None or isinstance(v, int) for v in (it.start, it.stop))


@rule(functions=[operator.getitem], name="getitem", rewrite=lambda r: _rewrite_getitem(r))
def getitem(ctx) -> None:
    src, index = ctx.node.args
    if ctx.shape(src) is None:  # element of a tuple output (``chunks[-1]`` counts from the end)
        outputs = tensor_meta_shapes(src) if isinstance(src, fx.Node) else None
        if isinstance(index, int) and ctx.out_shape is not None and isinstance(outputs, list):
            for d in range(len(ctx.out_shape)):
                ctx.same(ctx.space(src, d, index % len(outputs)), ctx.out(d))
        return
    shape = ctx.shape(src)
    items = _index_items(index, len(shape))
    if items is None:
        return
    p = q = 0
    for it in items:
        if it is None:
            q += 1
        elif isinstance(it, int):
            ctx.fix(ctx.space(src, p), [it % shape[p]], "indexed by an integer")
            p += 1
        else:
            if _plain_slice(it):
                kept = np.arange(shape[p])[it]
                ctx.link(ctx.space(src, p), ctx.out(q), kept, np.arange(kept.size))
                if kept.size == 1:  # a one-element slice has no space: its element must stay
                    ctx.fix(ctx.space(src, p), kept, "is a one-element slice")
                ctx.cover(ctx.space(src, p))
            p, q = p + 1, q + 1


def _rewrite_getitem(r) -> None:
    src, index = r.node.args
    shape = r.old_shape(src)
    if shape is None:
        return
    items = _index_items(index, len(shape))
    p, new_items = 0, []
    for it in items:
        if it is not None and (isinstance(it, int) or _plain_slice(it)):
            kept = r.kept_of(src, p)
            if kept is not None:
                it = _remap_index(it, kept, shape[p])
            p += 1
        elif it is not None:
            p += 1
        new_items.append(it)
    r.node.args = (src, tuple(new_items))


def _remap_index(it, kept: np.ndarray, n: int):
    """Position of an int / plain slice among the kept elements of a dim of size ``n``."""
    if isinstance(it, int):
        return int(np.searchsorted(kept, it % n))
    start, stop, _ = it.indices(n)
    return slice(int(np.searchsorted(kept, start)), int(np.searchsorted(kept, stop)))


@rule(methods=["expand", "expand_as", "broadcast_to"], functions=[torch.broadcast_to], name="expand",
      rewrite=lambda r: _rewrite_expand(r))
def expand(ctx) -> None:
    x = ctx.node.args[0]
    shape, out = ctx.shape(x), ctx.out_shape
    offset = len(out) - len(shape)
    for d, n in enumerate(shape):
        if n == out[offset + d]:
            ctx.same(ctx.space(x, d), ctx.out(offset + d))
    for d in range(len(out)):
        ctx.cover(ctx.out(d))
    if ctx.node.target == "expand_as":
        for d in range(len(out)):
            ctx.same(ctx.out(d), ctx.space(ctx.node.args[1], d))


def _rewrite_expand(r) -> None:
    node = r.node
    if node.target == "expand":
        packed = len(node.args) == 2 and isinstance(node.args[1], (tuple, list))
        sizes = node.args[1] if packed else node.args[1:]
        new = _new_sizes(r, sizes)
        node.args = (node.args[0], new) if packed else (node.args[0], *new)
    elif node.target in ("broadcast_to", torch.broadcast_to):
        set_arg(node, 1, "size", _new_sizes(r, arg(node, 1, "size")))


@rule(methods=["repeat"], name="repeat")
def repeat(ctx) -> None:
    x = ctx.node.args[0]
    shape, out = ctx.shape(x), ctx.out_shape
    offset = len(out) - len(shape)
    for d, n in enumerate(shape):
        m = out[offset + d]
        ctx.link(ctx.space(x, d), ctx.out(offset + d), np.arange(m) % n, np.arange(m))
