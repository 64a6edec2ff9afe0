"""Cases for fxprune/rules/attention.py: ``matmul``, ``einsum``, ``sdpa``,
``multihead_attention`` and torchvision's Swin pieces (``window_attention``,
``relative_position_bias``, ``patch_merging``), including a second analysis of an
already pruned Swin block (whose attention is ``fxprune.nn.window_attention``).
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
import torchvision.models.swin_transformer as tv_swin
from hypothesis import strategies as st
from torch import nn

import fxprune
from fxprune import nn as fxnn
from rule_cases import BATCH, Built, Probe, register

# ---------------------------------------------------------------------------
# matmul / bmm / mm
# ---------------------------------------------------------------------------

MATMUL_OPS = [operator.matmul, torch.matmul, torch.bmm, torch.mm, "matmul", "bmm", "mm"]
SCENARIOS = {"mm": ["weight"], "bmm": ["attention", "batched weight"]}


def _mm(op, a, b):
    return getattr(a, op)(b) if isinstance(op, str) else op(a, b)


def _kind(op) -> str:
    name = op if isinstance(op, str) else op.__name__
    return {"mm": "mm", "bmm": "bmm"}.get(name, "matmul")


@register("matmul", "matmul", MATMUL_OPS)
def draw_matmul(draw, op) -> dict:
    scenarios = SCENARIOS.get(_kind(op), ["weight", "attention", "batched weight", "broadcast", "vector"])
    return {"scenario": draw(st.sampled_from(scenarios), label="scenario"), "c": draw(st.integers(2, 5), label="c"),
            "d": draw(st.integers(2, 5), label="d")}


@draw_matmul.build
def build_matmul(op, a: dict) -> Built:
    c, d, L = a["c"], a["d"], 3
    scenario = a["scenario"]
    rank2 = _kind(op) == "mm"
    parts = dict(q=nn.Linear(3, c), k=nn.Linear(3, c), v=nn.Linear(3, d), w=nn.Parameter(torch.randn(c, d)),
                 tail=nn.Linear(d, 3))
    x = torch.randn(BATCH, 3) if rank2 else torch.randn(BATCH, L, 3)
    claims = {("q.weight", 0): True}

    def body(m, x):
        q = m.q(x)
        if scenario == "weight":
            return m.tail(_mm(op, q, m.w))
        if scenario == "batched weight":  # (N, L, c) @ (N, c, d): the weight per sample from a producer
            b = m.w.expand(BATCH, c, d)
            return m.tail(_mm(op, q, b))
        if scenario == "broadcast":  # (N, 1, L, c) @ (c, d)
            return m.tail(_mm(op, q.unsqueeze(1), m.w).squeeze(1))
        if scenario == "vector":  # a 1-d operand: no rule relation, every dim a barrier
            return _mm(op, q, m.w[:, 0])
        scores = _mm(op, q, m.k(x).transpose(-2, -1)).softmax(-1)
        return m.tail(_mm(op, scores, m.v(x)))

    if scenario == "vector":
        claims = {("q.weight", 0): False}
    if scenario == "attention":
        claims[("v.weight", 0)] = True
    return Built(Probe(body, **parts).eval(), (x,), claims)


# ---------------------------------------------------------------------------
# einsum
# ---------------------------------------------------------------------------

EQUATIONS = {
    "nlc,cd->nld": True, "nlc, cd -> nld": True, "nlc,nmc->nlm": True, "bij,bkj->bik": True,
    "nlc,cd": False,  # implicit output (dln): not mapped (a barrier)
    "...c,cd->...d": False,  # ellipsis: not mapped (a barrier)
}


@register("einsum", "einsum", [torch.einsum])
def draw_einsum(draw, op) -> dict:
    return {"equation": draw(st.sampled_from(sorted(EQUATIONS)), label="equation"),
            "operands": draw(st.sampled_from(["varargs", "list"]), label="operands")}


@draw_einsum.build
def build_einsum(op, a: dict) -> Built:
    eq, c = a["equation"], 4
    parts = dict(q=nn.Linear(3, c), k=nn.Linear(3, c), w=nn.Parameter(torch.randn(c, 5)), tail=nn.Linear(5, 3),
                 tail_l=nn.Linear(3, 3))

    def call(*ops):
        return torch.einsum(eq, *ops) if a["operands"] == "varargs" else torch.einsum(eq, list(ops))

    def body(m, x):
        q = m.q(x)
        if eq.replace(" ", "").startswith("nlc,nmc") or eq.startswith("bij"):
            return m.tail_l(call(q, m.k(x)))
        out = call(q, m.w)
        return m.tail(out.permute(2, 1, 0) if "->" not in eq else out)

    claims = {("q.weight", 0): EQUATIONS[eq]}
    return Built(Probe(body, **parts).eval(), (torch.randn(BATCH, 3, 3),), claims)


# ---------------------------------------------------------------------------
# scaled_dot_product_attention
# ---------------------------------------------------------------------------


@register("sdpa", "sdpa", [F.scaled_dot_product_attention])
def draw_sdpa(draw, op) -> dict:
    a = {"heads": draw(st.integers(1, 3), label="heads"), "e": draw(st.integers(2, 4), label="head dim"),
         "ev": draw(st.integers(2, 4), label="value dim"),
         "layout": draw(st.sampled_from(["4d", "3d"]), label="layout"),
         "mask": draw(st.sampled_from(["none", "bool", "float", "causal"]), label="mask"),
         "scale": draw(st.sampled_from([None, 0.3]), label="scale"),
         "keywords": draw(st.booleans(), label="keywords")}
    if a["layout"] == "3d":
        a["heads"] = 1
    return a


@draw_sdpa.build
def build_sdpa(op, a: dict) -> Built:
    h, e, ev, L = a["heads"], a["e"], a["ev"], 4
    parts = dict(q=nn.Linear(3, h * e), k=nn.Linear(3, h * e), v=nn.Linear(3, h * ev), proj=nn.Linear(h * ev, 3),
                 bool_mask=torch.rand(L, L) > 0.3, float_mask=torch.randn(L, L))
    parts["bool_mask"][:, 0] = True  # every query sees a key

    def split(t, width):
        return t.view(BATCH, L, h, width).transpose(1, 2) if a["layout"] == "4d" else t

    def body(m, x):
        q, k, v = split(m.q(x), e), split(m.k(x), e), split(m.v(x), ev)
        mask = {"none": None, "bool": m.bool_mask, "float": m.float_mask, "causal": None}[a["mask"]]
        causal = a["mask"] == "causal"
        if a["keywords"]:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=a["scale"])
        else:
            out = F.scaled_dot_product_attention(q, k, v, mask, 0.0, causal, scale=a["scale"])  # scale: keyword-only
        if a["layout"] == "4d":
            out = out.transpose(1, 2).reshape(BATCH, L, h * ev)
        return m.proj(out)

    # the (heads, width) reshapes carry units on their larger factor: heads in q, k and v, or widths in all
    consistent = h == 1 or (h >= e and h >= ev) or (e > h and ev > h)
    claims = {("v.weight", 0): True, ("q.weight", 0): True} if consistent else {}
    return Built(Probe(body, **parts).eval(), (torch.randn(BATCH, L, 3),), claims)


# ---------------------------------------------------------------------------
# nn.MultiheadAttention
# ---------------------------------------------------------------------------


@register("multihead_attention", "multihead_attention", [nn.MultiheadAttention])
def draw_mha(draw, op) -> dict:
    heads = draw(st.integers(1, 3), label="heads")
    return {"heads": heads, "head_dim": draw(st.integers(2, 3), label="head dim"),
            "bias": draw(st.booleans(), label="bias"), "batch_first": draw(st.booleans(), label="batch_first"),
            "cross": draw(st.sampled_from(["self", "kdim/vdim"]), label="attention"),
            "add_bias_kv": draw(st.booleans(), label="add_bias_kv"),
            "add_zero_attn": draw(st.booleans(), label="add_zero_attn"),
            "need_weights": draw(st.booleans(), label="need_weights"),
            "mask": draw(st.sampled_from(["none", "attn_mask", "key_padding_mask"]), label="mask")}


@draw_mha.build
def build_mha(op, a: dict) -> Built:
    heads, e = a["heads"], a["heads"] * a["head_dim"]
    kdim = 5 if a["cross"] == "kdim/vdim" else None
    L = 3
    attn = nn.MultiheadAttention(e, heads, bias=a["bias"], add_bias_kv=a["add_bias_kv"],
                                 add_zero_attn=a["add_zero_attn"], kdim=kdim, vdim=kdim, batch_first=a["batch_first"])
    parts = dict(head=nn.Linear(3, e), kv=nn.Linear(3, kdim or e), attn=attn, tail=nn.Linear(e, 3),
                 attn_mask=torch.rand(L, L) > 0.7, padding=torch.zeros(BATCH, L, dtype=torch.bool))
    parts["padding"][0, -1] = True
    parts["attn_mask"].fill_diagonal_(False)

    def body(m, x):
        q = m.head(x)
        kv = m.kv(x) if kdim else q
        if not a["batch_first"]:
            q, kv = q.transpose(0, 1), kv.transpose(0, 1)
        extra = {"attn_mask": m.attn_mask} if a["mask"] == "attn_mask" else \
            {"key_padding_mask": m.padding} if a["mask"] == "key_padding_mask" else {}
        out = m.attn(q, kv, kv, need_weights=a["need_weights"], **extra)[0]
        return m.tail(out if a["batch_first"] else out.transpose(0, 1))

    per_head = heads >= 2 and not a["add_bias_kv"] and not a["add_zero_attn"]
    rows = "q_proj_weight" if kdim else "in_proj_weight"
    claims = {(f"attn.{rows}", 0): per_head} if heads >= 2 else {}
    return Built(Probe(body, **parts).eval(), (torch.randn(BATCH, L, 3),), claims)


# ---------------------------------------------------------------------------
# Swin: shifted window attention, relative position bias, patch merging
# ---------------------------------------------------------------------------

SWIN_ATTENTION = {1: tv_swin.ShiftedWindowAttention, 2: tv_swin.ShiftedWindowAttentionV2}


def _draw_swin(draw) -> dict:
    return {"version": draw(st.sampled_from([1, 2]), label="version"), "heads": draw(st.integers(1, 3), label="heads"),
            "head_dim": draw(st.integers(2, 3), label="head dim"),
            "window": draw(st.sampled_from([2, 3]), label="window"),
            "shift": draw(st.sampled_from([0, 1]), label="shift"), "size": draw(st.sampled_from([4, 5]), label="size"),
            "qkv_bias": draw(st.booleans(), label="qkv_bias")}


def _swin_block(a: dict) -> tuple[Probe, torch.Tensor]:
    c = a["heads"] * a["head_dim"]
    attn = SWIN_ATTENTION[a["version"]](c, [a["window"]] * 2, [a["shift"]] * 2, a["heads"], qkv_bias=a["qkv_bias"])

    def body(m, x):
        return m.tail(m.attn(m.head(x)))

    probe = Probe(body, head=nn.Linear(3, c), attn=attn, tail=nn.Linear(c, 3)).eval()
    return probe, torch.randn(BATCH, a["size"], a["size"], 3)


def _swin_claims(a: dict) -> dict:
    return {("attn.qkv.weight", 0): True} if a["heads"] >= 2 else {}


@register("window_attention", "window_attention", [tv_swin.shifted_window_attention])
def draw_window_attention(draw, op) -> dict:
    return _draw_swin(draw)


@draw_window_attention.build
def build_window_attention(op, a: dict) -> Built:
    model, x = _swin_block(a)
    return Built(model, (x,), _swin_claims(a))


@register("window_attention_pruned", "window_attention", [fxnn.window_attention])
def draw_pruned_swin(draw, op) -> dict:
    """A Swin block pruned once (a head removed), analysed again: its attention is fxprune's."""
    a = _draw_swin(draw)
    a["heads"] = draw(st.integers(2, 3), label="heads")
    return a


@draw_pruned_swin.build
def build_pruned_swin(op, a: dict) -> Built:
    model, x = _swin_block(a)
    graph = fxprune.analyze(model, x)
    group = next(g for g in graph.prunable_groups if any(m[0] == "attn.qkv.weight" for m in g.members()))
    pruned = fxprune.rewrite(graph.gm, graph, {group.id: list(range(1, group.units))})
    pruned.meta.pop("fxprune", None)  # analysed afresh, as a user's model
    return Built(pruned, (x,), {("attn.qkv.weight", 0): a["heads"] >= 3})


@register("relative_position_bias", "relative_position_bias", [tv_swin._get_relative_position_bias])
def draw_relative_position_bias(draw, op) -> dict:
    return _draw_swin(draw)


@draw_relative_position_bias.build
def build_relative_position_bias(op, a: dict) -> Built:
    model, x = _swin_block(a)  # the block reads its bias table through _get_relative_position_bias
    return Built(model, (x,), _swin_claims(a))


@register("patch_merging", "patch_merging", [tv_swin._patch_merging_pad])
def draw_patch_merging(draw, op) -> dict:
    return {"size": draw(st.sampled_from([4, 5]), label="size"), "c": draw(st.integers(2, 4), label="c"),
            "form": draw(st.sampled_from(["function", "PatchMerging", "PatchMergingV2"]), label="form")}


@draw_patch_merging.build
def build_patch_merging(op, a: dict) -> Built:
    c = a["c"]
    parts = dict(head=nn.Linear(3, c), tail=nn.Linear(4 * c if a["form"] == "function" else 2 * c, 3))
    if a["form"] != "function":
        parts["merge"] = getattr(tv_swin, a["form"])(c)

    def body(m, x):
        y = m.head(x)
        z = tv_swin._patch_merging_pad(y) if a["form"] == "function" else m.merge(y)
        return m.tail(z)

    # PatchMerging normalises the 4c merged channels (a LayerNorm: a norm member); V2 normalises after reducing
    claims = {("head.weight", 0): a["form"] != "PatchMerging"}
    return Built(Probe(body, **parts).eval(), (torch.randn(BATCH, a["size"], a["size"], 3),), claims)
