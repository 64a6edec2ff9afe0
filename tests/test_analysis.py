"""The channel analysis finds exactly the coupled groups of hand-built patterns."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from conftest import check_equivalences, randomize_bn


def members(group) -> set[tuple[str, int, str]]:
    return set(group.members())


def by_member(graph, name: str):
    """The group that has parameter ``name`` as a produce member."""
    for g in graph.groups:
        if any(n == name and role == "produce" for n, _, role in g.members()):
            return g
    raise AssertionError(f"no group produced by {name}")


class ConvBnConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv2(F.relu(self.bn(self.conv1(x))))


def test_conv_bn_conv_is_one_group_with_roles():
    g = by_member(fxprune.analyze(ConvBnConv(), torch.randn(1, 3, 8, 8)), "conv1.weight")
    assert g.units == 8 and g.prunable and g.reason is None
    assert members(g) == {
        ("conv1.weight", 0, "produce"), ("conv1.bias", 0, "produce"), ("bn.weight", 0, "produce"),
        ("bn.bias", 0, "produce"), ("bn.running_mean", 0, "produce"), ("bn.running_var", 0, "produce"),
        ("conv2.weight", 1, "consume"),
    }
    slices = {s.name: s for s in g.slices([1, 5])}
    assert slices["conv1.weight"].index.tolist() == [1, 5] and slices["conv2.weight"].dim == 1


def test_model_input_and_output_are_barriers_naming_the_node():
    graph = fxprune.analyze(ConvBnConv(), torch.randn(1, 3, 8, 8))
    out_group = by_member(graph, "conv2.weight")
    assert not out_group.prunable and "model output" in out_group.reason
    in_group = next(g for g in graph.groups if ("conv1.weight", 1, "consume") in members(g))
    assert not in_group.prunable and "model input" in in_group.reason


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        y = x + self.a(x)
        y = y - self.b(y)
        return self.head(y.mean((2, 3)))


def test_residual_adds_couple_all_producers():
    graph = fxprune.analyze(Residual(), torch.randn(1, 3, 6, 6))
    g = by_member(graph, "stem.weight")
    produced = {n for n, _, r in g.members() if r == "produce"}
    assert {"stem.weight", "a.weight", "b.weight"} <= produced
    assert ("head.weight", 1, "consume") in members(g) and g.units == 8


class CatFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 3, 1)
        self.fc = nn.Linear(5 * 4 * 4, 7)
        self.out = nn.Linear(7, 2)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.out(F.relu(self.fc(torch.flatten(y, 1))))


def test_cat_offsets_and_flatten_maps_channel_to_feature_block():
    graph = fxprune.analyze(CatFlatten(), torch.randn(1, 3, 4, 4))
    ga, gb = by_member(graph, "a.weight"), by_member(graph, "b.weight")
    assert ga is not gb and ga.units == 2 and gb.units == 3
    fc_a = {s.name: s for s in ga.slices([1])}["fc.weight"]
    fc_b = {s.name: s for s in gb.slices([0])}["fc.weight"]
    assert fc_a.dim == 1 and fc_a.index.tolist() == list(range(16, 32))  # channel 1 -> features 16..31
    assert fc_b.index.tolist() == list(range(32, 48))  # cat offset 2 -> features 32..47
    check_equivalences(CatFlatten(), torch.randn(2, 3, 4, 4))


class Depthwise(nn.Module):
    def __init__(self, multiplier: int = 1):
        super().__init__()
        self.pw1 = nn.Conv2d(3, 6, 1)
        self.dw = nn.Conv2d(6, 6 * multiplier, 3, padding=1, groups=6)
        self.bn = nn.BatchNorm2d(6 * multiplier)
        self.pw2 = nn.Conv2d(6 * multiplier, 4, 1)

    def forward(self, x):
        return self.pw2(self.bn(self.dw(F.relu(self.pw1(x))))).sum((2, 3))


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_ties_input_and_output_channels(multiplier):
    model = randomize_bn(Depthwise(multiplier))
    graph = fxprune.analyze(model, torch.randn(1, 3, 5, 5))
    g = by_member(graph, "pw1.weight")
    assert g.units == 6 and ("dw.weight", 0, "produce") in members(g)
    dw = {s.name: s for s in g.slices([2])}["dw.weight"]
    assert dw.index.tolist() == list(range(2 * multiplier, 3 * multiplier))
    check_equivalences(model, torch.randn(2, 3, 5, 5))
    pruned = fxprune.rewrite(graph.gm, graph, {g.id: [0, 3, 4]})
    assert pruned.dw.groups == 3 and pruned.dw.out_channels == 3 * multiplier


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1)
        self.gc = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.out = nn.Conv2d(12, 2, 1)

    def forward(self, x):
        return self.out(F.relu(self.gc(F.relu(self.pw(x))))).mean((2, 3))


def test_grouped_conv_keeps_group_count_with_rectangular_units():
    model = Grouped()
    graph = fxprune.analyze(model, torch.randn(1, 3, 5, 5))
    g_in, g_out = by_member(graph, "pw.weight"), by_member(graph, "gc.weight")
    assert g_in.units == 2 and g_out.units == 3  # index within each of the 4 groups
    assert {s.name: s for s in g_in.slices([1])}["pw.weight"].index.tolist() == [1, 3, 5, 7]
    check_equivalences(model, torch.randn(2, 3, 5, 5))
    pruned = fxprune.rewrite(graph.gm, graph, {g_in.id: [0], g_out.id: [0, 2]})
    assert (pruned.gc.groups, pruned.gc.in_channels, pruned.gc.out_channels) == (4, 4, 8)


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.out(y).mean((2, 3))


def test_channel_shuffle_units_stay_rectangular():
    graph = fxprune.analyze(Shuffle(), torch.randn(1, 3, 4, 4))
    g = by_member(graph, "a.weight")
    assert by_member(graph, "b.weight") is g and g.units == 4  # unit j = channel j of each branch
    s = {s.name: s for s in g.slices([1])}
    assert s["a.weight"].index.tolist() == [1] and s["b.weight"].index.tolist() == [1]
    assert s["out.weight"].index.tolist() == [2, 3]  # after the shuffle: channels 2j, 2j+1
    check_equivalences(Shuffle(), torch.randn(2, 3, 4, 4))


class SplitSlice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 1)
        self.a, self.b, self.c = nn.Conv2d(4, 3, 1), nn.Conv2d(6, 3, 1), nn.Conv2d(3, 3, 1)

    def forward(self, x):
        y = self.conv(x)
        p, q = torch.split(y, [4, 6], dim=1)
        return (self.a(p) + self.b(q) + self.c(y[:, 2:5])).mean((2, 3))


def test_split_and_slices_take_subranges_and_are_rewritten():
    model = SplitSlice()
    x = torch.randn(2, 3, 4, 4)
    graph = fxprune.analyze(model, x)
    # channels 0-1 feed only a, 2-3 feed a and c, 4 feeds b and c, 5-9 only b: four kinds of unit
    groups = [g for g in graph.groups if ("conv.weight", 0, "produce") in members(g)]
    rows = sorted(s.index.tolist() for g in groups for s in g.slices(range(g.units)) if s.name == "conv.weight")
    assert rows == [[0, 1], [2, 3], [4], [5, 6, 7, 8, 9]]
    check_equivalences(model, x)
    plan = {g.id: [0] for g in groups}  # keep channels 0, 2, 4, 5
    pruned = fxprune.rewrite(graph.gm, graph, plan)
    assert pruned.a.in_channels == 2 and pruned.b.in_channels == 2 and pruned.c.in_channels == 2
    assert "[2, 2]" in pruned.code and "slice(1, 3" in pruned.code  # split sizes and slice bounds


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 12)
        self.mha = nn.MultiheadAttention(12, 3, batch_first=True)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        y = self.proj(x)
        z, _ = self.mha(y, y, y, need_weights=False)
        return self.fc(z + y)


def test_multihead_attention_heads_are_units_and_rewrite_keeps_exactness():
    model = Attention().eval()
    x = torch.randn(2, 5, 4)
    graph = fxprune.analyze(model, x)
    heads = next(g for g in graph.groups if any(n == "mha.in_proj_weight" and d == 0 for n, d, _ in g.members()))
    assert heads.units == 3 and heads.prunable
    stream = by_member(graph, "proj.weight")
    assert ("mha.in_proj_weight", 1, "consume") in members(stream) and stream.units == 12
    check_equivalences(model, x)
    pruned = fxprune.rewrite(graph.gm, graph, {heads.id: [0, 2], stream.id: list(range(0, 12, 2))})
    assert pruned.mha.num_heads == 2 and pruned.mha.q_weight.shape == (8, 6)
    assert pruned(x).shape == (2, 5, 2)


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.b(torch.cumsum(self.a(x), dim=1))


def test_op_without_rule_is_a_named_barrier_or_strict_error():
    graph = fxprune.analyze(Unsupported(), torch.randn(1, 3, 4, 4))
    g = by_member(graph, "a.weight")
    assert not g.prunable and "cumsum" in g.reason and "no channel rule" in g.reason
    assert "cumsum" in str(graph)
    with pytest.raises(fxprune.UnsupportedOpError, match="cumsum"):
        fxprune.analyze(Unsupported(), torch.randn(1, 3, 4, 4), strict=True)


def test_layernorm_group_is_prunable_but_flagged_norm():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    graph = fxprune.analyze(model, torch.randn(3, 4))
    g = by_member(graph, "0.weight")
    assert g.prunable and g.has_norm and ("1.weight", 0, "norm") in members(g)
    pruned = fxprune.rewrite(graph.gm, graph, {g.id: [0, 1, 2]})
    assert pruned.get_submodule("1").normalized_shape == (3,)


def test_report_and_networkx_views():
    graph = fxprune.analyze(Residual(), torch.randn(1, 3, 6, 6))
    text = str(graph)
    assert "prunable" in text and "stem" in text and "why:" in text
    nxg = graph.to_networkx()
    assert nxg.number_of_nodes() == len(graph.table.sizes) and nxg.number_of_edges() > 0
    assert any(data["group"] == by_member(graph, "stem.weight").id for _, data in nxg.nodes(data=True))
