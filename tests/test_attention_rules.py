"""Attention rules (fxprune/rules/attention.py) on the arguments that change what heads mean:
a per-head attention mask, grouped-query attention, query/key/value given by keyword, and
nn.MultiheadAttention's attention-weights output and per-head masks. Where heads stay
prunable, removing some equals zeroing their produce slices (and masking them)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from equivalence import compare, zero_produce

DIM, HEADS, TOKENS = 16, 4, 6


class SelfAttention(nn.Module):
    """timm-style attention: one qkv projection split into heads, then sdpa."""

    def __init__(self, per_head_bias: bool = False, by_keyword: bool = False):
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.by_keyword = by_keyword
        self.bias = nn.Parameter(torch.randn(1, HEADS, TOKENS, TOKENS)) if per_head_bias else None

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4).unbind(0)
        if self.by_keyword:
            o = F.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=self.bias)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


class GroupedQuery(nn.Module):
    """Four query heads sharing two key/value heads (``enable_gqa``)."""

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(DIM, DIM)
        self.kv = nn.Linear(DIM, DIM)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).reshape(b, n, HEADS, 4).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, HEADS // 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.proj(o.transpose(1, 2).reshape(b, n, DIM))


class TorchMHA(nn.Module):
    def __init__(self, return_weights: bool = False, per_head_mask: bool = False):
        super().__init__()
        self.inp = nn.Linear(8, DIM)
        self.mha = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
        self.out = nn.Linear(DIM, 4)
        self.return_weights = return_weights
        self.register_buffer("mask", torch.randn(2 * HEADS, TOKENS, TOKENS) if per_head_mask else None)

    def forward(self, x):
        h = self.inp(x)
        o, weights = self.mha(h, h, h, attn_mask=self.mask)
        return (self.out(o), weights) if self.return_weights else self.out(o)


def _heads_group(graph):
    found = [g for g in graph.groups if g.id in ("qkv", "q", "mha")]
    assert len(found) == 1, [g.id for g in graph.groups]
    return found[0]


def _assert_exact(model, x, graph, plan):
    rewritten = fxprune.rewrite(graph.gm, graph, plan)
    with torch.no_grad():
        got = rewritten(x)
        compare(got, zero_produce(graph, plan)(x), "rewrite vs zero-produce")
        compare(got, fxprune.mask(graph.gm, graph, plan)(x), "rewrite vs mask")
        compare(fxprune.rewrite(model, graph, plan)(x), got, "rewrite(user model)")


def test_sdpa_per_head_mask_goes_with_the_heads():
    torch.manual_seed(0)
    model, x = SelfAttention(per_head_bias=True).eval(), torch.randn(2, TOKENS, DIM)
    graph = fxprune.analyze(model, x)
    heads = _heads_group(graph)
    assert heads.prunable and heads.units == HEADS
    assert ("bias", 1, "produce") in heads.members()  # the mask's head dim is one of the group's slices
    plan = {heads.id: [0, 2]}
    _assert_exact(model, x, graph, plan)
    assert fxprune.rewrite(graph.gm, graph, plan).bias.shape == (1, 2, TOKENS, TOKENS)


def test_sdpa_by_keyword_is_analysed_like_positional():
    torch.manual_seed(0)
    x = torch.randn(2, TOKENS, DIM)
    positional = fxprune.analyze(SelfAttention().eval(), x)
    model = SelfAttention(by_keyword=True).eval()
    graph = fxprune.analyze(model, x)
    def summary(g):
        return [(group.id, group.units, group.prunable) for group in g.groups]

    assert summary(graph) == summary(positional)
    _assert_exact(model, x, graph, {_heads_group(graph).id: [1, 3]})


def test_grouped_query_heads_stay_whole():
    """Query head h reads key/value head h // 2: removing query heads would regroup them."""
    torch.manual_seed(0)
    graph = fxprune.analyze(GroupedQuery().eval(), torch.randn(2, TOKENS, DIM))
    q = _heads_group(graph)
    assert not q.prunable and "grouped-query attention" in q.reason


def test_mha_heads_prunable_when_the_weights_output_is_discarded():
    torch.manual_seed(0)
    model, x = TorchMHA().eval(), torch.randn(2, TOKENS, 8)
    graph = fxprune.analyze(model, x)
    heads = _heads_group(graph)
    assert heads.prunable and heads.units == HEADS
    _assert_exact(model, x, graph, {heads.id: [1, 3]})


def test_mha_heads_fixed_when_the_averaged_weights_are_used():
    torch.manual_seed(0)
    graph = fxprune.analyze(TorchMHA(return_weights=True).eval(), torch.randn(2, TOKENS, 8))
    heads = _heads_group(graph)
    assert not heads.prunable and "attention-weights output is used" in heads.reason


def test_mha_per_head_mask_is_a_barrier_not_a_failure():
    torch.manual_seed(0)
    model, x = TorchMHA(per_head_mask=True).eval(), torch.randn(2, TOKENS, 8)
    graph = fxprune.analyze(model, x)
    assert not any(g.id == "mha" and g.prunable for g in graph.groups)
    assert any("per-head (3-D) attn_mask" in (g.reason or "") for g in graph.groups)
    res = fxprune.compile(model, x, sparsity=0.5)  # what is left prunable compiles and validates
    with torch.no_grad():
        assert res.module(x).shape == model(x).shape
