"""Cases for fxprune/rules/shape.py: ``reshape`` (view, reshape, flatten, unflatten, squeeze,
unsqueeze, view_as), ``permute`` (permute, transpose, t, movedim ...), ``cat``, ``stack``,
``split`` (split, chunk, tensor_split), ``unbind``, ``getitem`` (slices, ints, None,
Ellipsis), ``expand`` and ``repeat``.

Sizes passed to views are drawn as literals, ``-1`` or read from the tensor
(``y.size(1) // g``), so the rewrite's literal fixing is exercised too.
"""
from __future__ import annotations

import builtins
import math

import torch
from hypothesis import assume
from hypothesis import strategies as st
from torch import nn

from rule_cases import BATCH, Built, Probe, register, stage

C_RANGE = (2, 6)


def _y(m, x):
    return m.head(x)


def _conv_model(body, c: int, c_out_tail: int, h: int, w: int, **parts) -> tuple[Probe, torch.Tensor]:
    """``body`` over a (N, c, h, w) conv output ``m.head(x)``; ``m.tail`` reads ``c_out_tail`` channels."""
    parts.setdefault("head", nn.Conv2d(3, c, 1))
    parts.setdefault("tail", nn.Conv2d(c_out_tail, 3, 1))
    return Probe(body, **parts).eval(), torch.randn(BATCH, 3, h, w)


# ---------------------------------------------------------------------------
# reshape family
# ---------------------------------------------------------------------------

VIEWS = ["view", "reshape", torch.reshape]
FLATTENS = ["flatten", torch.flatten, nn.Flatten]
UNFLATTENS = ["unflatten", torch.unflatten, nn.Unflatten]
SQUEEZES = ["squeeze", "unsqueeze", torch.squeeze, torch.unsqueeze]
AS = ["view_as", "reshape_as"]
RESHAPE_OPS = VIEWS + FLATTENS + UNFLATTENS + SQUEEZES + AS


def _sizes(draw, label: str) -> str:
    return draw(st.sampled_from(["literal", "minus_one", "from_shape"]), label=label)


def _view_form(draw, op) -> str:
    if op == "view":
        return draw(st.sampled_from(["varargs", "tuple", "keyword"]), label="form")
    if op == "reshape":
        return draw(st.sampled_from(["varargs", "tuple", "keyword"]), label="form")
    return draw(st.sampled_from(["positional", "keyword"]), label="form")


@register("reshape", "reshape", RESHAPE_OPS)
def draw_reshape(draw, op) -> dict:
    a: dict = {"c": draw(st.integers(*C_RANGE), label="c"), "h": draw(st.integers(1, 3), label="h"),
               "w": draw(st.integers(1, 4), label="w")}
    if op in VIEWS:
        a["scenario"] = draw(st.sampled_from(["flatten", "unflatten_channel", "shuffle", "merge_batch",
                                              "other_shape"]), label="scenario")
        a["form"] = _view_form(draw, op)
        a["sizes"] = _sizes(draw, "sizes")
    elif op in FLATTENS:
        a["scenario"] = draw(st.sampled_from(["flatten", "unflatten_channel"]), label="scenario")
        if a["scenario"] == "flatten":  # the other scenario flattens (g, c/g) back: dims 1..2
            a["start"] = draw(st.sampled_from([1, -3]), label="start_dim")
            a["end"] = draw(st.sampled_from([-1, 3]), label="end_dim")
        a["keywords"] = draw(st.booleans(), label="keywords") if op is not nn.Flatten else False
    elif op in UNFLATTENS:
        a["scenario"] = "unflatten_channel"
        a["dim"] = draw(st.sampled_from([1, -3]), label="dim")
        a["sizes"] = draw(st.sampled_from(["literal", "minus_one"]), label="sizes")
        a["keywords"] = draw(st.booleans(), label="keywords") if op is not nn.Unflatten else False
    elif op in SQUEEZES:
        a["scenario"] = "squeeze"
        a["h"], a["w"] = 1, max(a["w"], 2)
        a["dim"] = draw(st.sampled_from([2, -2]), label="dim")
        a["squeeze_form"] = draw(st.sampled_from(["dim", "tuple", "all"]), label="squeeze form")
        a["keywords"] = draw(st.booleans(), label="keywords")
    else:
        a["scenario"] = "view_as"
    if a["scenario"] in ("unflatten_channel", "shuffle"):
        g = draw(st.sampled_from([2, 3]), label="groups")
        a.update(g=g, c=g * draw(st.integers(1, 3), label="per group"))
    return a


def _shape_args(a: dict, y, dims: list[int | str]) -> list:
    """Sizes for a view: literals, -1 for one dim, or read from ``y`` (``y.size(1) // g`` ...)."""
    out = []
    for i, d in enumerate(dims):
        if isinstance(d, str):  # "N", "C", "C/g", "g", "H", "W", "CHW", "NC"
            if a.get("sizes") == "from_shape":
                value = {"N": lambda: y.size(0), "C": lambda: y.size(1), "C/g": lambda: y.shape[1] // a["g"],
                         "g": lambda: a["g"], "H": lambda: y.size(-2), "W": lambda: y.shape[-1],
                         "CHW": lambda: y.size(1) * y.size(2) * y.size(3), "NC": lambda: y.size(0) * y.size(1)}[d]()
            else:
                value = {"N": BATCH, "C": a["c"], "C/g": a["c"] // a.get("g", 1), "g": a.get("g"), "H": a["h"],
                         "W": a["w"], "CHW": a["c"] * a["h"] * a["w"], "NC": BATCH * a["c"]}[d]
            out.append(value)
        else:
            out.append(d)
    if a.get("sizes") == "minus_one":
        out[-1 if len(out) > 1 and not isinstance(dims[-1], int) else 0] = -1
    return out


def _view(op, a: dict, y, sizes):
    """``op`` (view, reshape, torch.reshape) with ``sizes`` (a list, or a shape read from a tensor)."""
    packed = tuple(sizes) if isinstance(sizes, list) else sizes
    if op is torch.reshape:
        return torch.reshape(y, shape=packed) if a["form"] == "keyword" else torch.reshape(y, packed)
    if a["form"] == "varargs":
        return getattr(y, op)(*sizes)
    if a["form"] == "tuple":
        return getattr(y, op)(packed)
    return getattr(y, op)(**{("size" if op == "view" else "shape"): packed})


def _flatten(op, a: dict, m, y, start, end):
    if op is nn.Flatten:
        return m.flat(y)
    kw = {"start_dim": start, "end_dim": end}
    if op is torch.flatten:
        return torch.flatten(y, **kw) if a["keywords"] else torch.flatten(y, start, end)
    return y.flatten(**kw) if a["keywords"] else y.flatten(start, end)


def _unflatten(op, a: dict, m, y, sizes: tuple):
    dim = a["dim"]
    if op is nn.Unflatten:
        return m.unflat(y)
    if op is torch.unflatten:
        return torch.unflatten(y, dim=dim, sizes=sizes) if a["keywords"] else torch.unflatten(y, dim, sizes)
    return y.unflatten(dim=dim, sizes=sizes) if a["keywords"] else y.unflatten(dim, sizes)


@draw_reshape.build
def build_reshape(op, a: dict) -> Built:
    c, h, w = a["c"], a["h"], a["w"]
    scenario = a["scenario"]
    parts: dict = {}
    if scenario == "flatten":
        parts["tail"] = nn.Linear(c * h * w, 3)

        def body(m, x):
            y = _y(m, x)
            if op in VIEWS:
                return m.tail(_view(op, a, y, _shape_args(a, y, ["N", "CHW"])))
            return m.tail(_flatten(op, a, m, y, a["start"], a["end"]))

        if op is nn.Flatten:
            parts["flat"] = nn.Flatten(a["start"], a["end"])
        claims = {("head.weight", 0): c >= max(h, w)}  # only the largest factor carries units
    elif scenario == "unflatten_channel":
        g = a["g"]
        sizes = (g, -1) if a.get("sizes") == "minus_one" and op in UNFLATTENS else (g, c // g)
        if op is nn.Unflatten:
            parts["unflat"] = nn.Unflatten(a["dim"], sizes)
        if op is nn.Flatten:
            parts["flat"] = nn.Flatten(1, 2)
        parts["scale"] = nn.Parameter(torch.rand(g, 1, 1, 1) + 0.5)

        def body(m, x):
            y = _y(m, x)
            if op in UNFLATTENS:
                z = _unflatten(op, a, m, y, sizes)
            elif op in VIEWS:
                z = _view(op, a, y, _shape_args(a, y, ["N", "g", "C/g", "H", "W"]))
            else:
                z = y.view(BATCH, g, c // g, h, w)
            z = z * m.scale  # per group: the group dim meets a parameter
            if op in FLATTENS:
                return m.tail(_flatten(op, a, m, z, 1, 2))
            return m.tail(z.reshape(BATCH, c, h, w))

        claims = {("head.weight", 0): True}
    elif scenario == "shuffle":
        g = a["g"]

        def body(m, x):
            y = _y(m, x)
            z = _view(op, a, y, _shape_args(a, y, ["N", "g", "C/g", "H", "W"])).transpose(1, 2)
            return m.tail(z.reshape(BATCH, c, h, w))

        # with as many groups as channels per group, the two reshapes pick different carriers: a barrier
        claims = {} if g == c // g else {("head.weight", 0): True}
    elif scenario == "merge_batch":
        def body(m, x):
            y = _y(m, x)
            z = _view(op, a, y, _shape_args(a, y, ["NC", "H", "W"]))
            return m.tail(z.view(BATCH, c, h, w))

        claims = {("head.weight", 0): c > BATCH}  # the larger factor carries, the batch (major) on ties
    elif scenario == "squeeze":
        parts["tail"] = nn.Conv1d(c, 3, 1)

        def body(m, x):
            y = _y(m, x)
            if op in ("unsqueeze", torch.unsqueeze):
                d = a["dim"]
                z = torch.unsqueeze(y, dim=d) if op is torch.unsqueeze and a["keywords"] else \
                    torch.unsqueeze(y, d) if op is torch.unsqueeze else y.unsqueeze(d)
                return m.tail((z * 1.0).flatten(1, 3))
            form = a["squeeze_form"]
            args = () if form == "all" else ((a["dim"],) if form == "dim" else ((a["dim"],),))
            if a["keywords"] and args:
                return m.tail(torch.squeeze(y, dim=args[0]) if op is torch.squeeze else y.squeeze(dim=args[0]))
            return m.tail(torch.squeeze(y, *args) if op is torch.squeeze else y.squeeze(*args))

        if op in ("unsqueeze", torch.unsqueeze):
            parts["tail"] = nn.Conv1d(c, 3, 1)
        claims = {("head.weight", 0): True}
    else:  # view_as / reshape_as another tensor of the flat shape, or view(other.shape)
        parts.update(proj=nn.Linear(3 * h * w, c * h * w), tail=nn.Linear(c * h * w, 3))

        def body(m, x):
            other = m.proj(x.flatten(1))
            y = _y(m, x)
            if op in AS:
                return m.tail(getattr(y, op)(other) + other)
            shape = other.shape if a["form"] != "varargs" else other.size()
            return m.tail(_view(op, {**a, "form": "tuple"}, y, shape) + other)

        claims = {("head.weight", 0): c >= max(h, w)}
    model, x = _conv_model(body, c, c, h, w, **parts)
    if op in ("unsqueeze", torch.unsqueeze):
        model.tail = nn.Conv1d(c, 3, 1)
        x = torch.randn(BATCH, 3, 1, w)
    return Built(model, (x,), claims)


# ---------------------------------------------------------------------------
# permutations
# ---------------------------------------------------------------------------

PERMUTES = ["permute", "transpose", "swapaxes", "swapdims", "t", "movedim", "moveaxis"]
PERMUTE_OPS = [getattr(torch, p) for p in PERMUTES] + PERMUTES


def _name(op) -> str:
    return op if isinstance(op, str) else op.__name__


@register("permute", "permute", PERMUTE_OPS)
def draw_permute(draw, op) -> dict:
    name = _name(op)
    if name == "t":
        return {"rank": 2, "keywords": False}
    rank = draw(st.integers(3, 4), label="rank")
    a: dict = {"rank": rank, "keywords": draw(st.booleans(), label="keywords")}
    if name == "permute":
        perm = draw(st.permutations(range(rank)), label="perm")
        a["dims"] = tuple(d - rank if draw(st.booleans(), label="negative") else d for d in perm)
        a["form"] = draw(st.sampled_from(["varargs", "tuple"]), label="form") if isinstance(op, str) else "tuple"
    elif name in ("transpose", "swapaxes", "swapdims"):
        d0, d1 = draw(st.lists(st.integers(-rank, rank - 1), min_size=2, max_size=2), label="dims")
        a["dims"] = (d0, d1)
    else:
        k = draw(st.integers(1, 2), label="moved")
        src = draw(st.lists(st.integers(0, rank - 1), min_size=k, max_size=k, unique=True), label="source")
        dst = draw(st.lists(st.integers(0, rank - 1), min_size=k, max_size=k, unique=True), label="destination")
        as_int = k == 1 and draw(st.booleans(), label="ints")
        a["source"] = src[0] if as_int else tuple(src)
        a["destination"] = dst[0] if as_int else tuple(dst)
    return a


def _permuted(op, a: dict, y):
    name, kw = _name(op), a["keywords"]
    call = (lambda *args, **kwargs: getattr(torch, name)(y, *args, **kwargs)) if not isinstance(op, str) else \
        (lambda *args, **kwargs: getattr(y, name)(*args, **kwargs))
    if name == "t":
        return call()
    if name == "permute":
        if kw:
            return call(dims=a["dims"])
        return call(*a["dims"]) if a.get("form") == "varargs" else call(a["dims"])
    if name in ("transpose", "swapaxes", "swapdims"):
        names = ("axis0", "axis1") if name == "swapaxes" else ("dim0", "dim1")
        return call(**dict(zip(names, a["dims"]))) if kw else call(*a["dims"])
    if kw:
        return call(source=a["source"], destination=a["destination"])
    return call(a["source"], a["destination"])


@draw_permute.build
def build_permute(op, a: dict) -> Built:
    rank, c = a["rank"], 5
    spatial = (4, 3)[: rank - 2]
    out_shape = _permuted(op, a, torch.zeros((BATCH, c) + spatial)).shape
    where_c = list(out_shape).index(c)

    def body(m, x):
        z = _permuted(op, a, m.head(x))
        return m.tail(z.movedim(where_c, -1))  # the channels last, for a Linear tail

    parts = dict(head=stage(rank, 3, c), tail=nn.Linear(c, 3))
    x = torch.randn(BATCH, 3, *spatial)
    return Built(Probe(body, **parts).eval(), (x,), {("head.weight", 0): True})


# ---------------------------------------------------------------------------
# cat / stack
# ---------------------------------------------------------------------------

CAT_OPS = [torch.cat, torch.concat, torch.concatenate]


@register("cat", "cat", CAT_OPS)
def draw_cat(draw, op) -> dict:
    widths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3), label="widths")
    dim = draw(st.sampled_from([0, 1, 2, 3, -1, -3]), label="dim")
    return {"widths": tuple(widths), "dim": dim, "same_twice": draw(st.booleans(), label="a tensor twice"),
            "container": draw(st.sampled_from(["list", "tuple"]), label="container"),
            "dim_as": draw(st.sampled_from(["positional", "dim", "axis"]), label="dim as")}


@draw_cat.build
def build_cat(op, a: dict) -> Built:
    widths, dim = list(a["widths"]), a["dim"]
    if dim % 4 != 1:  # along another dim the inputs need equal channels
        widths = [widths[0]] * len(widths)
    heads = nn.ModuleList(nn.Conv2d(3, n, 1) for n in widths)
    pieces_idx = list(range(len(widths))) + ([0] if a["same_twice"] else [])
    out_c = sum(widths[i] for i in pieces_idx) if dim % 4 == 1 else widths[0]

    def body(m, x):
        pieces = [m.heads[i](x) for i in range(len(widths))]
        ts = [pieces[i] for i in pieces_idx]
        ts = ts if a["container"] == "list" else tuple(ts)
        if a["dim_as"] == "positional":
            z = op(ts, dim)
        else:
            z = op(ts, **{a["dim_as"]: dim})
        return m.tail(z)

    parts = dict(heads=heads, tail=nn.Conv2d(out_c, 3, 1))
    claims = {(f"heads.{i}.weight", 0): True for i, n in enumerate(widths) if n >= 2}
    return Built(Probe(body, **parts).eval(), (torch.randn(BATCH, 3, 3, 4),), claims)


@register("stack", "stack", [torch.stack])
def draw_stack(draw, op) -> dict:
    return {"n": draw(st.integers(1, 3), label="tensors"), "dim": draw(st.integers(-5, 4), label="dim"),
            "consume": draw(st.sampled_from(["sum", "flatten"]), label="consumer"),
            "dim_as": draw(st.sampled_from(["positional", "dim", "axis"]), label="dim as")}


@draw_stack.build
def build_stack(op, a: dict) -> Built:
    n, dim, c = a["n"], a["dim"], 4
    d = dim % 5
    heads = nn.ModuleList(nn.Conv2d(3, c, 1) for _ in range(n))
    flat = a["consume"] == "flatten" and d in (1, 2)

    def body(m, x):
        ts = [h(x) for h in m.heads]
        s = torch.stack(ts, dim) if a["dim_as"] == "positional" else torch.stack(ts, **{a["dim_as"]: dim})
        z = s.flatten(1, 2) if flat else s.sum(d)
        return m.tail(z)

    parts = dict(heads=heads, tail=nn.Conv2d(c * n if flat else c, 3, 1))
    claims = {(f"heads.{i}.weight", 0): True for i in range(n)}
    return Built(Probe(body, **parts).eval(), (torch.randn(BATCH, 3, 3, 4),), claims)


# ---------------------------------------------------------------------------
# split / chunk / tensor_split / unbind
# ---------------------------------------------------------------------------

SPLIT_OPS = [torch.split, torch.chunk, torch.tensor_split, "split", "chunk", "tensor_split", "split_with_sizes"]


@register("split", "split", SPLIT_OPS)
def draw_split(draw, op) -> dict:
    name = _name(op)
    c = draw(st.integers(2, 7), label="c")
    dim = draw(st.sampled_from([1, -3, 2, -1]), label="dim")
    size = c if dim % 4 == 1 else (3 if dim % 4 == 2 else 4)
    a: dict = {"c": c, "dim": dim, "keywords": draw(st.booleans(), label="keywords"),
               "take": draw(st.sampled_from(["unpack", "index", "negative index"]), label="take")}
    if name == "chunk":
        a["chunks"] = draw(st.integers(1, 4), label="chunks")
    elif name == "tensor_split":
        if draw(st.booleans(), label="sections"):
            a["sections"] = draw(st.integers(1, 3), label="sections")
        else:
            positions = st.lists(st.integers(1, size - 1), min_size=1, max_size=2, unique=True)
            a["indices"] = tuple(sorted(draw(positions, label="indices")))
    elif name == "split_with_sizes" or draw(st.booleans(), label="sizes list"):
        cuts = sorted(draw(st.lists(st.integers(1, size - 1), max_size=2, unique=True), label="cuts"))
        bounds = [0] + cuts + [size]
        a["sizes"] = tuple(b - c0 for c0, b in zip(bounds, bounds[1:]))
    else:
        a["split_size"] = draw(st.integers(1, size), label="split_size")
    assume(all(p.numel() for p in _pieces(op, a, torch.zeros(BATCH, c, 3, 4))))  # no empty piece
    return a


def _unpack(pieces, n: int) -> list:
    """``a, b = pieces`` (fx turns tuple unpacking of a known length into getitems)."""
    if n == 1:
        (p0,) = pieces
        return [p0]
    if n == 2:
        p0, p1 = pieces
        return [p0, p1]
    if n == 3:
        p0, p1, p2 = pieces
        return [p0, p1, p2]
    p0, p1, p2, p3 = pieces
    return [p0, p1, p2, p3]


def _pieces(op, a: dict, y):
    name, dim, kw = _name(op), a["dim"], a["keywords"]
    f = (lambda *args, **kws: getattr(torch, name)(y, *args, **kws)) if not isinstance(op, str) else \
        (lambda *args, **kws: getattr(y, name)(*args, **kws))
    if name == "chunk":
        return f(chunks=a["chunks"], dim=dim) if kw else f(a["chunks"], dim)
    if name == "tensor_split":
        if "sections" in a:
            return f(sections=a["sections"], dim=dim) if kw else f(a["sections"], dim)
        return f(indices=list(a["indices"]), dim=dim) if kw else f(list(a["indices"]), dim)
    if name == "split_with_sizes":
        return f(split_sizes=list(a["sizes"]), dim=dim) if kw else f(list(a["sizes"]), dim)
    arg = list(a["sizes"]) if "sizes" in a else a["split_size"]
    if kw:
        return f(arg, dim=dim) if not isinstance(op, str) else f(split_size=arg, dim=dim)
    return f(arg, dim)


@draw_split.build
def build_split(op, a: dict) -> Built:
    c, dim = a["c"], a["dim"]
    probe = _pieces(op, a, torch.zeros(BATCH, c, 3, 4))
    n = len(probe)
    widths = [p.shape[1] for p in probe]
    tails = nn.ModuleList(nn.Conv2d(wd, 3, 1) for wd in widths)
    extents = [p.shape[dim] for p in probe]

    def body(m, x):
        pieces = _pieces(op, a, m.head(x))
        if a["take"] == "unpack":
            parts_ = _unpack(pieces, n)
        elif a["take"] == "index":
            parts_ = [pieces[i] for i in range(n)]
        else:
            parts_ = [pieces[i - n] for i in range(n)]
        outs = [t(p).mean((2, 3)) for t, p in zip(m.tails, parts_)]
        total = outs[0]
        for o in outs[1:]:
            total = total + o
        return total

    channel = dim % 4 == 1
    claims = {("head.weight", 0): (max(extents) >= 2) if channel else True}
    return Built(Probe(body, head=nn.Conv2d(3, c, 1), tails=tails).eval(), (torch.randn(BATCH, 3, 3, 4),), claims)


@register("unbind", "unbind", [torch.unbind, "unbind"])
def draw_unbind(draw, op) -> dict:
    return {"dim": draw(st.sampled_from([1, 2, -1, -2, 0]), label="dim"), "keywords": draw(st.booleans(),
                                                                                        label="keywords")}


@draw_unbind.build
def build_unbind(op, a: dict) -> Built:
    dim, c = a["dim"], 4
    d = dim % 4
    n = (BATCH, c, 2, 3)[d]
    rest = [s for i, s in enumerate((BATCH, c, 2, 3)) if i != d]

    def body(m, x):
        y = m.head(x)
        kw = {"dim": dim} if a["keywords"] else {}
        pieces = (torch.unbind(y, **kw) if kw else torch.unbind(y, dim)) if op is torch.unbind else \
            (y.unbind(**kw) if kw else y.unbind(dim))
        total = pieces[0]
        for i in range(1, n):
            total = total + pieces[i]
        return m.tail(total.flatten())

    parts = dict(head=nn.Conv2d(3, c, 1), tail=nn.Linear(math.prod(rest), 3))
    return Built(Probe(body, **parts).eval(), (torch.randn(BATCH, 3, 2, 3),), {("head.weight", 0): d != 1})


# ---------------------------------------------------------------------------
# getitem
# ---------------------------------------------------------------------------

INDEXES = {
    "channel slice": (lambda y, a: y[:, a["start"]:a["stop"]], True),
    "channel slice, negative": (lambda y, a: y[:, a["start"] - 6:], True),
    "channel int": (lambda y, a: y[:, a["start"]], None),
    "channel step": (lambda y, a: y[:, ::2], False),
    "channel list": (lambda y, a: y[:, [0, 2]], False),
    "ellipsis, spatial slice": (lambda y, a: y[..., 1:], True),
    "spatial step": (lambda y, a: y[:, :, ::2], True),
    "new axis": (lambda y, a: y[:, None, :, None], True),
    "ellipsis, new axis": (lambda y, a: y[None, ...], True),
    "spatial int": (lambda y, a: y[:, :, -1], True),
    "batch slice": (lambda y, a: y[1:], True),
    "bool mask": (lambda y, a: y[y > 0], False),  # a data-dependent size: summed to a scalar
}


@register("getitem", "getitem", [__import__("operator").getitem])
def draw_getitem(draw, op) -> dict:
    kind = draw(st.sampled_from(sorted(INDEXES)), label="index")
    start = draw(st.integers(0, 3), label="start")
    return {"index": kind, "start": start, "stop": draw(st.integers(start + 1, 7), label="stop")}


@draw_getitem.build
def build_getitem(op, a: dict) -> Built:
    c = 6
    index, claim = INDEXES[a["index"]]
    out = index(torch.zeros(BATCH, c, 3, 4), a)
    parts = dict(head=nn.Conv2d(3, c, 1), tail=nn.Linear(out.numel() // (out.shape[0] if out.dim() > 1 else 1), 3))
    flat_from = 1 if out.dim() > 1 and a["index"] not in ("bool mask", "batch slice", "ellipsis, new axis") else 0

    def body(m, x):
        z = index(m.head(x), a)
        if a["index"] == "bool mask":
            return z.sum()
        return m.tail(z.flatten(flat_from) if flat_from else z.flatten())

    if flat_from == 0:
        parts["tail"] = nn.Linear(out.numel(), 3)
    if a["index"] == "channel int":
        claim = True  # one channel is read by index: it stays, the others are prunable
    return Built(Probe(body, **parts).eval(), (torch.randn(BATCH, 3, 3, 4),),
                 {} if claim is None else {("head.weight", 0): claim})


# ---------------------------------------------------------------------------
# expand / broadcast_to / repeat
# ---------------------------------------------------------------------------

EXPAND_OPS = ["expand", "expand_as", "broadcast_to", torch.broadcast_to]


@register("expand", "expand", EXPAND_OPS)
def draw_expand(draw, op) -> dict:
    a = {"source": draw(st.sampled_from(["pooled", "leading"]), label="expanded"),
         "sizes": draw(st.sampled_from(["literal", "minus_one", "from_shape"]), label="sizes"),
         "combine": draw(st.sampled_from(["mul", "add"]), label="combine")}
    if op == "expand":
        a["form"] = draw(st.sampled_from(["varargs", "tuple"]), label="form")
    return a


def _expanded(op, a: dict, p, like):
    """``p`` expanded to ``like``'s shape (sizes as literals, -1 where p keeps the size, or read from ``like``)."""
    target = [like.shape[i] for i in range(4)] if a["sizes"] == "from_shape" else list(a["_shape"])
    if a["sizes"] == "minus_one":
        target = [-1 if i < len(a["_p_shape"]) and a["_p_shape"][-1 - i] == n else n
                  for i, n in reversed(list(enumerate(reversed(target))))]
    if op == "expand_as":
        return p.expand_as(like)
    if op == "expand":
        return p.expand(*target) if a["form"] == "varargs" else p.expand(tuple(target))
    if op == "broadcast_to":
        return p.broadcast_to(tuple(target))
    return torch.broadcast_to(p, tuple(target))


@draw_expand.build
def build_expand(op, a: dict) -> Built:
    c, shape = 5, (BATCH, 5, 3, 4)
    p_shape = (BATCH, c, 1, 1) if a["source"] == "pooled" else (c, 3, 4)
    a = {**a, "_shape": shape, "_p_shape": p_shape}

    def body(m, x):
        y = m.head(x)
        p = m.gate(x).mean((2, 3), keepdim=True) if a["source"] == "pooled" else m.table
        e = _expanded(op, a, p, y)
        return m.tail(y * e if a["combine"] == "mul" else y + e)

    parts = dict(head=nn.Conv2d(3, c, 1), gate=nn.Conv2d(3, c, 1), tail=nn.Conv2d(c, 3, 1),
                 table=nn.Parameter(torch.randn(c, 3, 4)))
    claims = {("head.weight", 0): True}
    return Built(Probe(body, **parts).eval(), (torch.randn(*shape[:1], 3, *shape[2:]),), claims)


@register("repeat", "repeat", ["repeat"])
def draw_repeat(draw, op) -> dict:
    reps = tuple(draw(st.lists(st.integers(1, 3), min_size=4, max_size=4), label="repeats"))
    return {"repeats": reps, "leading": draw(st.integers(0, 2), label="new leading dim"),
            "form": draw(st.sampled_from(["varargs", "tuple"]), label="form")}


@draw_repeat.build
def build_repeat(op, a: dict) -> Built:
    c = 4
    reps = (a["leading"],) * bool(a["leading"]) + a["repeats"]
    out = torch.zeros(BATCH, c, 3, 2).repeat(*reps).shape

    def body(m, x):
        y = m.head(x)
        z = y.repeat(*reps) if a["form"] == "varargs" else y.repeat(reps)
        if a["leading"]:
            z = z.sum(0)
        return m.tail(z)

    parts = dict(head=nn.Conv2d(3, c, 1), tail=nn.Conv2d(out[-3], 3, 1))
    return Built(Probe(body, **parts).eval(), (torch.randn(BATCH, 3, 3, 2),), {("head.weight", 0): True})


# ---------------------------------------------------------------------------
# casts and metadata reads (rules ``cast`` and ``metadata`` of elementwise.py)
# ---------------------------------------------------------------------------


@register("cast", "cast", ["to", "type", "type_as"])
def draw_cast(draw, op) -> dict:
    choices = {"to": ["dtype", "dtype kw", "other", "device", "dtype and copy"], "type": ["dtype", "string"],
               "type_as": ["other"]}[op]
    return {"how": draw(st.sampled_from(choices), label="how"),
            "via": draw(st.sampled_from(["float64", "float32"]), label="via")}


@draw_cast.build
def build_cast(op, a: dict) -> Built:
    via = getattr(torch, a["via"])

    def cast(y, other):
        how = a["how"]
        if op == "type_as":
            return y.type_as(other)
        if op == "type":
            return y.type(via) if how == "dtype" else y.type("torch.DoubleTensor" if via is torch.float64 else
                                                              "torch.FloatTensor")
        return {"dtype": lambda: y.to(via), "dtype kw": lambda: y.to(dtype=via), "other": lambda: y.to(other),
                "device": lambda: y.to("cpu"), "dtype and copy": lambda: y.to(via, copy=True)}[how]()

    def body(m, x):
        y = m.head(x)
        other = m.other.to(via)
        return m.tail(cast(y, other).float())

    parts = dict(head=nn.Conv2d(3, 4, 1), tail=nn.Conv2d(4, 3, 1), other=torch.zeros(1))
    return Built(Probe(body, **parts).eval(), (torch.randn(BATCH, 3, 3, 4),), {("head.weight", 0): True})


torch.fx.wrap("len")  # ``len(y)`` below is recorded as a call (as in a model that wraps it)
METADATA_OPS = [getattr, len, "size", "dim", "numel", "nelement", "element_size", "is_contiguous", "get_device"]


@register("metadata", "metadata", METADATA_OPS)
def draw_metadata(draw, op) -> dict:
    uses = {getattr: ["view batch", "view channels", "scale by a spatial size", "dtype"], builtins.len: ["view batch"],
            "size": ["view batch", "view channels", "scale by a spatial size", "whole size"],
            "dim": ["scale"], "numel": ["view", "per sample"], "nelement": ["view", "per sample"],
            "element_size": ["scale"], "is_contiguous": ["scale"], "get_device": ["scale"]}[op]
    return {"use": draw(st.sampled_from(uses), label="use")}


def _read(op, use: str, y):
    """The metadata read of ``op`` on ``y``, used as ``use`` says: (a tensor the tail reads)."""
    n = BATCH
    if op is getattr:
        if use == "dtype":
            return y.to(y.dtype)
        dims = y.shape
        return {"view batch": lambda: y.view(dims[0], -1), "view channels": lambda: y.view(n, dims[1], -1),
                "scale by a spatial size": lambda: y * dims[-1]}[use]()
    if op is builtins.len:  # (``len`` itself is patched while fx traces)
        return y.view(len(y), -1)
    if op == "size":
        return {"view batch": lambda: y.view(y.size(0), -1), "view channels": lambda: y.view(n, y.size(1), -1),
                "scale by a spatial size": lambda: y / y.size(-1),
                "whole size": lambda: y.view(y.size()).flatten(1)}[use]()
    if op in ("numel", "nelement"):
        total = getattr(y, op)()
        return y.view(n, total // n) if use == "view" else y.view(n, -1) * (total // total)
    if op == "dim":
        return y * y.dim()
    if op == "element_size":
        return y * y.element_size()
    if op == "is_contiguous":
        return y * y.is_contiguous()
    return y * (y.get_device() + 2)  # -1 on the CPU, a GPU's index otherwise


@draw_metadata.build
def build_metadata(op, a: dict) -> Built:
    c, shape = 7, (BATCH, 3, 3, 2)  # more channels than positions: flattened, the channels carry the units
    out = _read(op, a["use"], torch.zeros(BATCH, c, 3, 2))
    parts = dict(head=nn.Conv2d(3, c, 1), tail=nn.Linear(out[0].numel(), 3))

    def body(m, x):
        z = _read(op, a["use"], m.head(x))
        return m.tail(z.flatten(1))

    return Built(Probe(body, **parts).eval(), (torch.randn(*shape),), {("head.weight", 0): True})
