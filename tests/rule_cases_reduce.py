"""Cases for fxprune/rules/reduce.py: ``spatial`` (pooling, adaptive pooling, LP pooling,
interpolation), ``pad``, ``roll`` and ``reduce`` (sum, mean, amax ... over any dims)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hypothesis import assume
from hypothesis import strategies as st
from torch import nn

from rule_cases import BATCH, Built, Probe, register, retargeted, stage

SIZE = 6
"""Spatial size of the pooled/padded tensors."""

# ---------------------------------------------------------------------------
# pooling and interpolation
# ---------------------------------------------------------------------------

MAX_POOL = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3,
            torch.max_pool1d: 1, torch.max_pool2d: 2, torch.max_pool3d: 3}
AVG_POOL = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3}
ADAPTIVE = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3, nn.AdaptiveMaxPool1d: 1,
            nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2,
            F.adaptive_avg_pool3d: 3, F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3}
LP_POOL = {nn.LPPool1d: 1, nn.LPPool2d: 2, F.lp_pool1d: 1, F.lp_pool2d: 2}
RESIZE = {nn.Upsample: None, nn.UpsamplingNearest2d: 2, nn.UpsamplingBilinear2d: 2, F.interpolate: None,
          F.upsample: None}
SPATIAL = {**MAX_POOL, **AVG_POOL, **ADAPTIVE, **LP_POOL, **RESIZE}
WITH_INDICES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d,
                nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, F.adaptive_max_pool1d,
                F.adaptive_max_pool2d, F.adaptive_max_pool3d)
RESIZE_MODES = {1: ["nearest", "linear", "area", "nearest-exact"], 2: ["nearest", "bilinear", "bicubic", "area"],
                3: ["nearest", "trilinear"]}


def _draw_window(draw, k: int, dilation: bool) -> dict:
    kernel = draw(st.integers(1, 3), label="kernel")
    a = {"kernel": kernel, "stride": draw(st.sampled_from([None, 1, 2]), label="stride"),
         "padding": draw(st.integers(0, kernel // 2), label="padding"),
         "ceil_mode": draw(st.booleans(), label="ceil_mode")}
    if dilation:
        a["dilation"] = draw(st.integers(1, 2), label="dilation")
    return a


@register("spatial", "spatial", list(SPATIAL))
def draw_spatial(draw, op) -> dict:
    k = SPATIAL[op] or draw(st.integers(1, 3), label="spatial dims")
    a: dict = {"k": k, "unbatched": isinstance(op, type) and op not in RESIZE and draw(st.booleans(),
                                                                                     label="unbatched")}
    if op in MAX_POOL:
        a.update(_draw_window(draw, k, True))
    elif op in AVG_POOL:
        a.update(_draw_window(draw, k, False), count_include_pad=draw(st.booleans(), label="count_include_pad"))
        if k > 1:
            a["divisor_override"] = draw(st.sampled_from([None, 3]), label="divisor_override")
    elif op in LP_POOL:
        a.update(norm_type=draw(st.sampled_from([1, 2, 3.0]), label="norm_type"),
                 kernel=draw(st.integers(1, 3), label="kernel"), stride=draw(st.sampled_from([None, 1, 2]),
                                                                             label="stride"),
                 ceil_mode=draw(st.booleans(), label="ceil_mode"))
    elif op in ADAPTIVE:
        form = draw(st.sampled_from(["int", "tuple", "none_entry"] if k > 1 else ["int", "tuple"]), label="size form")
        size = draw(st.integers(1, 4), label="output_size")
        a["output_size"] = size if form == "int" else tuple(None if form == "none_entry" and i == 0 else size
                                                            for i in range(k))
    else:
        a.update(_draw_resize(draw, op, k))
    if op in WITH_INDICES and isinstance(op, type):  # F.max_pool2d(..., return_indices=True) is traced as
        a["return_indices"] = draw(st.booleans(), label="return_indices")  # max_pool2d_with_indices (no rule)
    if not isinstance(op, type):
        a["keywords"] = draw(st.booleans(), label="keywords")
    return a


def _draw_resize(draw, op, k: int) -> dict:
    by = draw(st.sampled_from(["size", "scale_factor"]), label="by")
    value = draw(st.sampled_from([2, 3]) if by == "size" else st.sampled_from([2.0, 0.5, 1.5]), label=by)
    a = {by: value}
    if op in (nn.Upsample, F.interpolate, F.upsample):
        mode = draw(st.sampled_from(RESIZE_MODES[k]), label="mode")
        a["mode"] = mode
        if mode in ("linear", "bilinear", "bicubic", "trilinear"):
            a["align_corners"] = draw(st.sampled_from([None, False, True]), label="align_corners")
    return a


def _call_args(op, a: dict) -> tuple[tuple, dict]:
    """(positional, keyword) arguments after the input, for module constructors and functions alike."""
    if op in MAX_POOL or op in AVG_POOL or op in LP_POOL:
        names = ["norm_type"] if op in LP_POOL else []
        names += ["kernel", "stride", "padding", "dilation", "ceil_mode", "count_include_pad", "divisor_override"]
        names = [n for n in names if n in a]
        if op in LP_POOL:
            names = [n for n in names if n != "padding"]
        values = [a[n] for n in names]
        kwnames = [{"kernel": "kernel_size"}.get(n, n) for n in names]
        if op in (torch.max_pool1d, torch.max_pool2d, torch.max_pool3d):  # builtins: no None stride
            values = [v if not (n == "stride" and v is None) else [] for n, v in zip(names, values)]
        extra = {"return_indices": a["return_indices"]} if a.get("return_indices") else {}
    elif op in ADAPTIVE:
        kwnames, values = ["output_size"], [a["output_size"]]
        extra = {"return_indices": a["return_indices"]} if a.get("return_indices") else {}
    else:
        kwnames = [n for n in ("size", "scale_factor", "mode", "align_corners") if n in a]
        values, extra = [a[n] for n in kwnames], {}
    if isinstance(op, type) or a.get("keywords") or op in RESIZE:
        return (), {**dict(zip(kwnames, values)), **extra}
    return tuple(values), extra


@draw_spatial.build
def build_spatial(op, a: dict) -> Built:
    k, c = a["k"], 5
    pos, kw = _call_args(op, a)
    if isinstance(op, type):
        parts = {"pool": op(*pos, **kw)}

        def core(m, y):
            return m.pool(y)
    else:
        parts = {}
        traced = F.interpolate if op is F.upsample else op  # fx traces through F.upsample: retargeted below

        def core(m, y):
            return traced(y, *pos, **kw)

    def apply(m, y):
        out = core(m, y.abs() if op in LP_POOL else y)  # odd powers of negative sums are nan
        return out[0] if a.get("return_indices") else out

    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[k]
    parts.update(head=conv(3, c, 1), tail=conv(c, 3, 1))
    size = SIZE

    def body(m, x):
        return m.tail(apply(m, m.head(x)))

    shape = (3,) + (size,) * k
    x = torch.randn(shape if a["unbatched"] else (BATCH, *shape))
    model: nn.Module = Probe(body, **parts).eval()
    if op is F.upsample:
        model = retargeted(model, F.interpolate, F.upsample, drop=("recompute_scale_factor", "antialias"))
    return Built(model, (x,), {("head.weight", 0): True})


# ---------------------------------------------------------------------------
# padding
# ---------------------------------------------------------------------------

PAD_MODULES = {nn.ZeroPad1d: (1, None), nn.ZeroPad2d: (2, None), nn.ZeroPad3d: (3, None),
               nn.ConstantPad1d: (1, "constant"), nn.ConstantPad2d: (2, "constant"), nn.ConstantPad3d: (3, "constant"),
               nn.ReflectionPad1d: (1, "reflect"), nn.ReflectionPad2d: (2, "reflect"),
               nn.ReflectionPad3d: (3, "reflect"), nn.ReplicationPad1d: (1, "replicate"),
               nn.ReplicationPad2d: (2, "replicate"), nn.ReplicationPad3d: (3, "replicate"),
               nn.CircularPad1d: (1, "circular"), nn.CircularPad2d: (2, "circular"), nn.CircularPad3d: (3, "circular")}
PAD_OPS = list(PAD_MODULES) + [F.pad]


def _draw_pad(draw, op, value_zero: bool) -> dict:
    if op is F.pad:
        mode = draw(st.sampled_from(["constant", "reflect", "replicate", "circular"]), label="mode")
        k = draw(st.integers(1, 3), label="padded dims")
    else:
        k, mode = PAD_MODULES[op]
    low = -1 if mode in (None, "constant") else 0  # cropping (negative padding)
    pads = tuple(draw(st.lists(st.integers(low, 2), min_size=2 * k, max_size=2 * k), label="pad"))
    a = {"k": k, "mode": mode or "zeros", "pad": pads}
    if op is not F.pad and draw(st.booleans(), label="int padding"):
        a["pad"] = draw(st.integers(0, 2), label="pad")
    if mode == "constant":
        a["value"] = 0.0 if value_zero else draw(st.sampled_from([1.0, -0.5]), label="value")
    if op is F.pad:
        # constant padding may reach one dim further, into the channels (a barrier)
        a["channels_too"] = mode == "constant" and draw(st.booleans(), label="pads the channel dim")
        a["keywords"] = draw(st.booleans(), label="keywords")
    else:
        a["unbatched"] = draw(st.booleans(), label="unbatched")
    return a


@register("pad", "pad", PAD_OPS)
def draw_pad_zero(draw, op) -> dict:
    return _draw_pad(draw, op, True)


@register("pad_bias", "pad", [nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, F.pad], bias=True,
          why="a non-zero pad value borders a zeroed channel: a value per position, the group must be a barrier")
def draw_pad_value(draw, op) -> dict:
    a = _draw_pad(draw, op, False)
    assume(a["mode"] == "constant" and (a["pad"] > 0 if isinstance(a["pad"], int) else max(a["pad"]) > 0))
    return a


@draw_pad_zero.build
@draw_pad_value.build
def build_pad(op, a: dict) -> Built:
    k, c = a["k"], 5
    pads = a["pad"]
    if a.get("channels_too"):
        pads = tuple(pads) + (1, 0)
    if op is F.pad:
        extra = {"value": a["value"]} if "value" in a else {}

        def apply(m, y):
            if a["keywords"]:
                return F.pad(y, pad=pads, mode=a["mode"], **extra)
            return F.pad(y, pads, a["mode"], *extra.values())

        parts = {}
    else:
        layer = op(pads, a["value"]) if "value" in a else op(pads)
        parts = {"pad": layer}

        def apply(m, y):
            return m.pad(y)

    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[k]
    width = c + 1 if a.get("channels_too") else c
    parts.update(head=conv(3, c, 1), tail=conv(width, 3, 1))

    def body(m, x):
        return m.tail(apply(m, m.head(x)))

    shape = (3,) + (4,) * k
    x = torch.randn(shape if a.get("unbatched") else (BATCH, *shape))
    grows = (a["pad"] > 0 if isinstance(a["pad"], int) else max(a["pad"]) > 0)
    zero_value = a.get("value", 0.0) == 0.0 or not grows
    return Built(Probe(body, **parts).eval(), (x,), {("head.weight", 0): zero_value and not a.get("channels_too")})


# ---------------------------------------------------------------------------
# roll
# ---------------------------------------------------------------------------


@register("roll", "roll", [torch.roll, "roll"])
def draw_roll(draw, op) -> dict:
    rank = draw(st.integers(3, 4), label="rank")
    form = draw(st.sampled_from(["int", "tuple", "none"]), label="dims form")
    if form == "none":
        return {"rank": rank, "shifts": draw(st.integers(-3, 3), label="shifts"), "dims": None,
                "keywords": draw(st.booleans(), label="keywords")}
    dims = draw(st.lists(st.integers(-rank, rank - 1), min_size=1, max_size=2, unique_by=lambda d: d % rank),
                label="dims")
    shifts = draw(st.lists(st.integers(-3, 3), min_size=len(dims), max_size=len(dims)), label="shifts")
    if form == "int":
        dims, shifts = dims[:1], shifts[:1]
    return {"rank": rank, "dims": dims[0] if form == "int" else tuple(dims),
            "shifts": shifts[0] if form == "int" else tuple(shifts), "keywords": draw(st.booleans(), label="keywords")}


@draw_roll.build
def build_roll(op, a: dict) -> Built:
    rank, c = a["rank"], 5
    dims, shifts = a["dims"], a["shifts"]
    given = {"shifts": shifts} if dims is None else {"shifts": shifts, "dims": dims}

    def apply(m, y):
        if a["keywords"]:
            return torch.roll(y, **given) if op is torch.roll else y.roll(**given)
        return torch.roll(y, *given.values()) if op is torch.roll else y.roll(*given.values())

    def body(m, x):
        return m.tail(apply(m, m.head(x)))

    rolled = set() if dims is None else {d % rank for d in ([dims] if isinstance(dims, int) else dims)}
    channel_free = dims is not None and 1 not in rolled
    parts = dict(head=stage(rank, 3, c), tail=stage(rank, c, 3))
    x = torch.randn(BATCH, 3, *(4,) * (rank - 2))
    return Built(Probe(body, **parts).eval(), (x,), {("head.weight", 0): channel_free})


# ---------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------

REDUCTIONS = ["sum", "mean", "amax", "amin", "std", "var", "logsumexp", "prod", "nansum", "nanmean"]
REDUCE_OPS = [getattr(torch, n) for n in REDUCTIONS] + REDUCTIONS
EXACT_OVER_CHANNEL = ("sum", "nansum")
SINGLE_DIM = ("prod",)
NEEDS_DIM = ("amax", "amin", "logsumexp")  # amax/amin take an empty dim, logsumexp needs one


def _name(op) -> str:
    return op if isinstance(op, str) else op.__name__


def _draw_reduce(draw, op, over_channel: bool | None) -> dict:
    name, rank = _name(op), 4
    if name in SINGLE_DIM:
        dims = [draw(st.integers(-rank, rank - 1), label="dim")]
        form = draw(st.sampled_from(["int"]), label="dim form")
    else:
        form = draw(st.sampled_from(["int", "tuple", "list"] + ([] if name in NEEDS_DIM else ["none"])),
                    label="dim form")
        dims = [] if form == "none" else draw(st.lists(st.integers(-rank, rank - 1), min_size=1,
                                                       max_size=1 if form == "int" else 3,
                                                       unique_by=lambda d: d % rank), label="dims")
    channel = form == "none" or any(d % rank == 1 for d in dims)
    if over_channel is not None:
        assume(channel == over_channel)
    a = {"rank": rank, "form": form, "dim": None if form == "none" else (dims[0] if form == "int" else
                                                                         (tuple(dims) if form == "tuple" else
                                                                          list(dims))),
         "keepdim": False if form == "none" else draw(st.booleans(), label="keepdim"),
         "call": draw(st.sampled_from(["positional", "keywords", "numpy names"] if form != "none" else
                                      ["positional"]), label="call")}
    if name in ("std", "var"):
        a["spread"] = draw(st.sampled_from(["default", "unbiased", "correction"]), label="spread")
        if a["spread"] != "default":
            a["spread_value"] = draw(st.sampled_from([True, False] if a["spread"] == "unbiased" else [0, 1]),
                                     label=a["spread"])
    if name in ("sum", "mean", "nansum", "nanmean", "prod") and draw(st.booleans(), label="give dtype"):
        a["dtype"] = "float32"
    return a


def _reduce_call(op, a: dict):
    name = _name(op)
    dim = a["dim"]
    spread = a.get("spread", "default")
    dtype = {"dtype": torch.float32} if a.get("dtype") else {}

    def fn(y, *args, **kwargs):
        return getattr(y, op)(*args, **kwargs) if isinstance(op, str) else op(y, *args, **kwargs)

    def apply(y):
        if a["form"] == "none":
            return fn(y, **dtype)
        if a["call"] == "positional":
            if name in ("std", "var"):  # positionally only the old signature: (dim, unbiased, keepdim)
                return fn(y, dim, a.get("spread_value", True) if spread == "unbiased" else True, a["keepdim"])
            return fn(y, dim, a["keepdim"], **dtype)
        names = ("axis", "keepdims") if a["call"] == "numpy names" else ("dim", "keepdim")
        extra = {spread: a["spread_value"]} if spread != "default" else {}
        return fn(y, **{names[0]: dim, names[1]: a["keepdim"]}, **dtype, **extra)

    return apply


def _reduced_shape(a: dict, shape: tuple[int, ...]) -> tuple[int, ...]:
    rank = len(shape)
    dims = set(range(rank)) if a["dim"] is None else {d % rank for d in
                                                     ([a["dim"]] if isinstance(a["dim"], int) else a["dim"])}
    return tuple(1 if d in dims else n for d, n in enumerate(shape) if a["keepdim"] or d not in dims)


@register("reduce", "reduce", REDUCE_OPS)
def draw_reduce(draw, op) -> dict:
    a = _draw_reduce(draw, op, None)
    over_channel = a["dim"] is None or any(d % 4 == 1 for d in ([a["dim"]] if isinstance(a["dim"], int) else a["dim"]))
    assume(_name(op) != "logsumexp" or over_channel)  # logsumexp of a zeroed channel elsewhere is log(n)
    return a


@register("reduce_bias", "reduce", [torch.logsumexp, "logsumexp"], bias=True,
          why="logsumexp over other dims maps a zeroed channel to log(n)")
def draw_reduce_bias(draw, op) -> dict:
    return _draw_reduce(draw, op, False)


@draw_reduce.build
@draw_reduce_bias.build
def build_reduce(op, a: dict) -> Built:
    """(N, C, H, W) -> reduction -> flattened -> Linear: the consumer reads whatever dims remain."""
    c, shape = 5, (BATCH, 5, 3, 4)
    apply = _reduce_call(op, a)
    out = _reduced_shape(a, shape)
    parts = {"head": nn.Conv2d(3, c, 1)}
    if out:
        parts["tail"] = nn.Linear(math.prod(out), 3)

    def body(m, x):
        r = apply(m.head(x))
        return m.tail(r.flatten()) if out else r

    dims = set(range(4)) if a["dim"] is None else {d % 4 for d in ([a["dim"]] if isinstance(a["dim"], int)
                                                                      else a["dim"])}
    exact = 1 not in dims or _name(op) in EXACT_OVER_CHANNEL
    x = torch.randn(BATCH, 3, 3, 4)
    return Built(Probe(body, **parts).eval(), (x,), {("head.weight", 0): exact})
