"""Cases for the normalisation rules (fxprune/rules/norm.py and PReLU): ``prelu``, ``batchnorm``,
``layernorm``, ``groupnorm`` and ``softmax``.

Two layouts: the pruned dim is the norm's channel dim (``channel``), or a dim the
norm reduces over or broadcasts its affine parameters along (``other``): a
Linear producer's features seen as the length of ``BatchNorm1d`` over (N, L, C),
the channels of an NCHW tensor under a ``LayerNorm`` over W ... There the rule
must make the pruned dim a norm member (statistics change) or, where a zeroed
unit leaves a value (``LayerNorm``'s bias, running statistics), a barrier.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from rule_cases import BATCH, Built, Probe, randomize_norms, register, stage

# ---------------------------------------------------------------------------
# PReLU
# ---------------------------------------------------------------------------


@register("prelu", "prelu", [nn.PReLU])
def draw_prelu(draw, op) -> dict:
    rank = draw(st.integers(1, 4), label="rank")  # a 1-d input has one channel: one parameter
    return {"rank": rank, "shared": rank == 1 or draw(st.booleans(), label="one parameter"),
            "init": draw(st.sampled_from([0.25, -0.5]), label="init")}


@draw_prelu.build
def build_prelu(op, a: dict) -> Built:
    rank, c = a["rank"], 5
    parts = dict(head=stage(max(rank, 2), 3, c), tail=stage(max(rank, 2), c, 3),
                 act=nn.PReLU(1 if a["shared"] else c, init=a["init"]))
    with torch.no_grad():
        parts["act"].weight.uniform_(-0.5, 0.5)

    def body(m, x):
        return m.tail(m.act(m.head(x)))

    x = torch.randn(3) if rank == 1 else torch.randn(BATCH, 3, *(4,) * (rank - 2))
    return Built(Probe(body, **parts).eval(), (x,), {("head.weight", 0): True})


# ---------------------------------------------------------------------------
# BatchNorm / InstanceNorm (modules and functions)
# ---------------------------------------------------------------------------

BN_RANKS = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,), nn.SyncBatchNorm: (2, 3, 4),
            nn.InstanceNorm1d: (3,), nn.InstanceNorm2d: (4,), nn.InstanceNorm3d: (5,),
            F.batch_norm: (2, 3, 4), F.instance_norm: (3, 4)}
"""Batched input ranks each norm accepts (instance-norm modules also take one sample less)."""
UNBATCHED_OK = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
OVER_FEATURES = [nn.BatchNorm1d, nn.SyncBatchNorm, nn.InstanceNorm1d, F.batch_norm, F.instance_norm]
"""Norms that take (N, L, F): their channel dim is L, the pruned features F lie in the reduced/position dims."""
INSTANCE_OVER_FEATURES = [nn.InstanceNorm1d, F.instance_norm]


def _uses_input_stats(op, a: dict) -> bool:
    if op is F.batch_norm:
        return a["training"] or not a["running"]
    if op is F.instance_norm:
        return a["use_input_stats"] or not a["running"]
    return a["train"] or not a["running"]


def _draw_bn(draw, op, layout: str) -> dict:
    a = {"layout": layout, "rank": draw(st.sampled_from(BN_RANKS[op] if layout == "channel" else (3,)), label="rank"),
         "running": draw(st.booleans(), label="running stats"), "affine": draw(st.booleans(), label="affine"),
         "eps": draw(st.sampled_from([1e-5, 1e-3]), label="eps")}
    if op is F.batch_norm:  # without running statistics it must use the batch's
        a["training"] = draw(st.booleans(), label="training") if a["running"] else True
        a["momentum"] = draw(st.sampled_from([0.1, 0.5]), label="momentum")
        a["keywords"] = draw(st.booleans(), label="keywords")
    elif op is F.instance_norm:
        a["use_input_stats"] = draw(st.booleans(), label="use_input_stats") if a["running"] else True
        a["keywords"] = draw(st.booleans(), label="keywords")
    else:
        a["train"] = draw(st.booleans(), label="train mode")
        a["momentum"] = draw(st.sampled_from([0.1, None]), label="momentum")
    return a


def _bn_layer(op, a: dict, c: int):
    """(parts, apply(m, y)) for the norm under test over ``c`` channels."""
    if isinstance(op, type):
        kw = {"track_running_stats": a["running"], "affine": a["affine"], "eps": a["eps"], "momentum": a["momentum"]}
        return {"norm": op(c, **kw)}, lambda m, y: m.norm(y)
    parts = {}
    if a["running"]:
        parts.update(rm=torch.rand(c) - 0.5, rv=torch.rand(c) + 0.5)
    if a["affine"]:
        parts.update(w=nn.Parameter(torch.rand(c) + 0.5), b=nn.Parameter(torch.rand(c) - 0.5))
    flag = "training" if op is F.batch_norm else "use_input_stats"

    def apply(m, y):
        stats = (m.rm, m.rv) if a["running"] else (None, None)
        affine = (m.w, m.b) if a["affine"] else (None, None)
        rest = (a[flag], a.get("momentum", 0.1), a["eps"])
        if a["keywords"]:
            return op(y, running_mean=stats[0], running_var=stats[1], weight=affine[0], bias=affine[1],
                      **{flag: rest[0]}, momentum=rest[1], eps=rest[2])
        return op(y, *stats, *affine, *rest)

    return parts, apply


@register("batchnorm", "batchnorm", list(BN_RANKS))
def draw_bn_channel(draw, op) -> dict:
    return _draw_bn(draw, op, "channel")


@register("instance_norm_unbatched", "batchnorm", UNBATCHED_OK)
def draw_instance_unbatched(draw, op) -> dict:
    """One sample, no batch dim: (C, *spatial)."""
    return {**_draw_bn(draw, op, "channel"), "unbatched": True}


@register("batchnorm_stats", "batchnorm", [o for o in OVER_FEATURES if o not in INSTANCE_OVER_FEATURES])
def draw_bn_stats(draw, op) -> dict:
    """The pruned dim is one the statistics are computed over: it must be a norm member."""
    a = _draw_bn(draw, op, "other")
    if op is F.batch_norm:
        a["training"] = True
    elif op is F.instance_norm:
        a["use_input_stats"] = True
    else:
        a["train"] = True
    return a


@register("instance_norm_stats", "batchnorm", INSTANCE_OVER_FEATURES)
def draw_instance_stats(draw, op) -> dict:
    return draw_bn_stats(draw, op)


@register("batchnorm_running", "batchnorm", OVER_FEATURES, bias=True,
          why="running statistics map a zeroed feature to -mean/std: a value per position, not foldable")
def draw_bn_running(draw, op) -> dict:
    a = _draw_bn(draw, op, "other")
    a["running"] = True
    if op is F.batch_norm:
        a["training"] = False
    elif op is F.instance_norm:
        a["use_input_stats"] = False
    else:
        a["train"] = False
    return a


@draw_bn_channel.build
@draw_instance_unbatched.build
@draw_bn_stats.build
@draw_instance_stats.build
@draw_bn_running.build
def build_bn(op, a: dict) -> Built:
    c = 5
    if a["layout"] == "channel":  # (N, C, *): the channel dim is pruned
        rank = a["rank"]
        norm_parts, apply = _bn_layer(op, a, c)
        parts = dict(head=stage(rank, 3, c), tail=stage(rank, c, 3), **norm_parts)
        x = torch.randn(BATCH, 3, *(4,) * (rank - 2))
        claims = {("head.weight", 0): True}
    else:  # (N, L, F) from a Linear: the norm's channel dim is L, the pruned features F are reduced over
        length = 4
        norm_parts, apply = _bn_layer(op, a, length)
        parts = dict(head=nn.Linear(3, c), tail=nn.Linear(c, 3), **norm_parts)
        x = torch.randn(BATCH, length, 3)
        claims = {("head.weight", 0): False}

    def body(m, x):
        return m.tail(apply(m, m.head(x)))

    model = randomize_norms(Probe(body, **parts)).eval()
    if isinstance(op, type) and a.get("train"):
        model.train()  # the whole model: a train-mode norm inside an eval model is traced as eval (reported)
    return Built(model, (x[0] if a.get("unbatched") else x,), claims)


# ---------------------------------------------------------------------------
# LayerNorm / RMSNorm
# ---------------------------------------------------------------------------

LN_OPS = [nn.LayerNorm, nn.RMSNorm, F.layer_norm, F.rms_norm]


def _draw_ln(draw, op, layout: str, with_bias: bool | None) -> dict:
    a = {"layout": layout, "k": draw(st.integers(1, 2), label="normalized dims"),
         "affine": draw(st.booleans(), label="affine"), "eps": draw(st.sampled_from([1e-5, 1e-3, None]), label="eps")}
    if op in (nn.LayerNorm, F.layer_norm):
        a["bias"] = draw(st.booleans(), label="bias") if with_bias is None else with_bias
        if a["bias"]:
            a["affine"] = True
    if not isinstance(op, type):
        a["keywords"] = draw(st.booleans(), label="keywords")
        a["shape_as"] = draw(st.sampled_from(["list", "tuple"]), label="normalized_shape as")
    return a


def _ln_layer(op, a: dict, shape: tuple[int, ...]):
    eps = {} if a["eps"] is None else {"eps": a["eps"]}
    if isinstance(op, type):
        kw = {"elementwise_affine": a["affine"], **eps}
        if op is nn.LayerNorm:
            kw["bias"] = a.get("bias", False)
        return {"norm": op(shape, **kw)}, lambda m, y: m.norm(y)
    parts = {}
    if a["affine"]:
        parts["w"] = nn.Parameter(torch.rand(shape) + 0.5)
    if a.get("bias"):
        parts["b"] = nn.Parameter(torch.rand(shape) - 0.5)
    norm_shape = list(shape) if a["shape_as"] == "list" else tuple(shape)

    def apply(m, y):
        w = m.w if a["affine"] else None
        extra = ((m.b if a.get("bias") else None),) if op is F.layer_norm else ()
        if a["keywords"]:
            kw = {"weight": w, **({"bias": extra[0]} if extra else {}), **eps}
            return op(y, normalized_shape=norm_shape, **kw)
        return op(y, norm_shape, w, *extra, *eps.values())

    return parts, apply


@register("layernorm", "layernorm", LN_OPS)
def draw_ln(draw, op) -> dict:
    layout = draw(st.sampled_from(["channel", "other"]), label="layout")
    return _draw_ln(draw, op, layout, False if layout == "other" else None)


@register("layernorm_bias", "layernorm", [nn.LayerNorm, F.layer_norm], bias=True,
          why="a LayerNorm over other dims leaves its bias where a pruned channel was zeroed: a value per "
              "position, not foldable")
def draw_ln_bias(draw, op) -> dict:
    return _draw_ln(draw, op, "other", True)


@draw_ln.build
@draw_ln_bias.build
def build_ln(op, a: dict) -> Built:
    c, k = 5, a["k"]
    if a["layout"] == "channel":  # (N, L, C) from a Linear: LayerNorm over C (and L): the pruned dim is normalised
        norm_parts, apply = _ln_layer(op, a, (3, c)[2 - k:])
        parts = dict(head=nn.Linear(3, c), tail=nn.Linear(c, 3), **norm_parts)
        x = torch.randn(BATCH, 3, 3)
        claims = {("head.weight", 0): False}
    else:  # (N, C, H, W): LayerNorm over W (and H); channel c of every sample is its own row
        norm_parts, apply = _ln_layer(op, a, (3, 4)[2 - k:])
        parts = dict(head=nn.Conv2d(3, c, 1), tail=nn.Conv2d(c, 3, 1), **norm_parts)
        x = torch.randn(BATCH, 3, 3, 4)
        claims = {("head.weight", 0): not a.get("bias")}

    def body(m, x):
        return m.tail(apply(m, m.head(x)))

    return Built(randomize_norms(Probe(body, **parts)).eval(), (x,), claims)


# ---------------------------------------------------------------------------
# GroupNorm
# ---------------------------------------------------------------------------


@register("groupnorm", "groupnorm", [nn.GroupNorm, F.group_norm])
def draw_gn(draw, op) -> dict:
    groups = draw(st.sampled_from([1, 2, 3, 6]), label="groups")
    a = {"rank": draw(st.integers(2, 5), label="rank"), "groups": groups,
         "affine": draw(st.booleans(), label="affine"), "eps": draw(st.sampled_from([1e-5, 1e-2]), label="eps")}
    if op is F.group_norm:
        a["keywords"] = draw(st.booleans(), label="keywords")
    return a


@draw_gn.build
def build_gn(op, a: dict) -> Built:
    rank, c, g = a["rank"], 6, a["groups"]
    if op is nn.GroupNorm:
        parts = {"norm": nn.GroupNorm(g, c, eps=a["eps"], affine=a["affine"])}

        def apply(m, y):
            return m.norm(y)
    else:
        parts = {"w": nn.Parameter(torch.rand(c) + 0.5), "b": nn.Parameter(torch.rand(c) - 0.5)} if a["affine"] else {}

        def apply(m, y):
            w, b = (m.w, m.b) if a["affine"] else (None, None)
            if a["keywords"]:
                return F.group_norm(y, num_groups=g, weight=w, bias=b, eps=a["eps"])
            return F.group_norm(y, g, w, b, a["eps"])

    parts.update(head=stage(rank, 3, c), tail=stage(rank, c, 3))

    def body(m, x):
        return m.tail(apply(m, m.head(x)))

    x = torch.randn(BATCH, 3, *(3,) * (rank - 2))
    per_channel = c // g == 1  # one channel per group: statistics of that channel alone
    return Built(randomize_norms(Probe(body, **parts)).eval(), (x,), {("head.weight", 0): per_channel})


# ---------------------------------------------------------------------------
# softmax family
# ---------------------------------------------------------------------------

SOFTMAX_MODULES = [nn.Softmax, nn.LogSoftmax, nn.Softmin]
SOFTMAX_FUNCTIONS = [F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax]
SOFTMAX_OPS = SOFTMAX_MODULES + SOFTMAX_FUNCTIONS + ["softmax", "log_softmax"]


def _draw_softmax(draw, op, over_channel: bool) -> dict:
    rank = draw(st.integers(2 if over_channel else 3, 4), label="rank")
    dim = draw(st.sampled_from([1, 1 - rank]) if over_channel else st.sampled_from([2, rank - 1, -1]), label="dim")
    a = {"rank": rank, "dim": dim}
    if not isinstance(op, type):
        a["keywords"] = draw(st.booleans(), label="keywords")
        if op not in (torch.softmax, torch.log_softmax):
            a["dtype"] = draw(st.sampled_from([None, "float32"]), label="dtype")
    return a


@register("softmax", "softmax", SOFTMAX_OPS)
def draw_softmax_channel(draw, op) -> dict:
    """Over the pruned dim: the statistics change (a norm member)."""
    return _draw_softmax(draw, op, True)


@register("softmax_bias", "softmax", SOFTMAX_OPS, bias=True,
          why="softmax over another dim maps a zeroed channel to 1/n (log_softmax: -log n)")
def draw_softmax_other(draw, op) -> dict:
    return _draw_softmax(draw, op, False)


@draw_softmax_channel.build
@draw_softmax_other.build
def build_softmax(op, a: dict) -> Built:
    rank, dim, c = a["rank"], a["dim"], 5
    kw = {"dtype": torch.float32} if a.get("dtype") else {}
    if isinstance(op, type):
        parts = {"sm": op(dim=dim)}

        def apply(m, y):
            return m.sm(y)
    elif isinstance(op, str):
        parts = {}

        def apply(m, y):
            return getattr(y, op)(dim=dim, **kw) if a["keywords"] else getattr(y, op)(dim, **kw)
    else:
        parts = {}

        def apply(m, y):
            return op(y, dim=dim, **kw) if a["keywords"] else op(y, dim, **kw)

    parts.update(head=stage(rank, 3, c), tail=stage(rank, c, 3))

    def body(m, x):
        return m.tail(apply(m, m.head(x)))

    x = torch.randn(BATCH, 3, *(4,) * (rank - 2))
    over_channel = dim % rank == 1
    return Built(Probe(body, **parts).eval(), (x,), {("head.weight", 0): not over_channel})
