"""CostModel: params/MACs from kept counts equal count_params/count_macs of the rewritten model."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
import fxprune.models as zoo
from fxprune.cost import CostModel, counts_of
from fxprune.errors import InputError
from fxprune.plan import check_plan
from fxprune.report import count_macs, count_params


def _random_plan(graph, rng: random.Random) -> dict[str, list[int]]:
    plan = {g.id: sorted(rng.sample(range(g.units), rng.randint(1, g.units))) for g in graph.prunable_groups}
    return check_plan(graph, plan)


def _assert_exact(model, graph, cost, x, plans) -> None:
    for plan in plans:
        pruned = fxprune.rewrite(model, graph, plan)
        params, macs = count_params(pruned), count_macs(pruned, (x,))
        assert cost.params(counts_of(plan)) == params
        assert cost.macs(counts_of(plan)) == macs
        assert cost.params(plan) == params and cost.macs(plan) == macs


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "vgg11", "mobilenet_v2_cifar"])
def test_zoo_exact(name):
    model = zoo.get(name, in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    graph = fxprune.analyze(model, (x,))
    cost = CostModel.build(graph, (x,))
    assert cost.approximate == []
    assert cost.full_params == count_params(model) == cost.params({})
    assert cost.full_macs == count_macs(model, (x,)) == cost.macs({})
    full = {g.id: g.units for g in graph.prunable_groups}
    assert cost.params(full) == cost.full_params and cost.macs(full) == cost.full_macs
    rng = random.Random(name)
    plans = [_random_plan(graph, rng) for _ in range(3)]
    plans.append({g.id: [0] for g in graph.prunable_groups})  # every group at one unit
    _assert_exact(model, graph, cost, x, plans)


def test_default_inputs_are_the_analysed_ones():
    model = zoo.get("lenet5", in_channels=1).eval()
    x = torch.randn(3, 1, 28, 28)
    graph = fxprune.analyze(model, (x,))
    assert CostModel.build(graph).full_macs == count_macs(model, (x,))


class CatGroupedAttention(nn.Module):
    """cat of two convs into a grouped conv, a depthwise conv, functional conv, SDPA, matmul."""

    def __init__(self, a: int = 10, b: int = 10):
        super().__init__()
        self.a = nn.Conv2d(3, a, 3, padding=1)
        self.b = nn.Conv2d(3, b, 1)
        self.g = nn.Conv2d(a + b, 20, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(20, 20, 3, padding=1, groups=20)
        self.w = nn.Parameter(torch.randn(24, 20, 1, 1))
        self.q, self.k, self.v = nn.Linear(24, 32), nn.Linear(24, 32), nn.Linear(24, 32)
        self.proj = nn.Parameter(torch.randn(32, 16))
        self.fc = nn.Linear(16 * 16, 10)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), self.b(x)], 1)
        y = F.conv2d(self.dw(F.relu(self.g(y))), self.w)
        t = y.flatten(2).transpose(1, 2)
        n, length, _ = t.shape
        q, k, v = (m(t).view(n, length, 4, 8).transpose(1, 2) for m in (self.q, self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, 32)
        return self.fc((o @ self.proj).flatten(1))


def test_cat_grouped_functional_attention_exact():
    model = CatGroupedAttention().eval()
    x = torch.randn(2, 3, 4, 4)
    graph = fxprune.analyze(model, (x,))
    cost = CostModel.build(graph, (x,))
    assert cost.approximate == []
    assert cost.full_params == count_params(model) and cost.full_macs == count_macs(model, (x,))
    rng = random.Random(1)
    _assert_exact(model, graph, cost, x, [_random_plan(graph, rng) for _ in range(4)])


def test_unequal_unit_widths_exact_for_plans_and_flagged():
    model = CatGroupedAttention(a=8, b=12).eval()  # grouped conv units straddle the cat unevenly
    x = torch.randn(2, 3, 4, 4)
    graph = fxprune.analyze(model, (x,))
    cost = CostModel.build(graph, (x,))
    assert any("differ in width" in why for why in cost.approximate)
    rng = random.Random(2)
    for _ in range(4):
        plan = _random_plan(graph, rng)
        pruned = fxprune.rewrite(model, graph, plan)
        assert cost.params(plan) == count_params(pruned)
        assert cost.macs(plan) == count_macs(pruned, (x,))


def test_multihead_attention_is_counted_and_flagged_approximate():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(8, 16)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
            self.out = nn.Linear(16, 4)

        def forward(self, x):
            h = self.inp(x)
            return self.out(self.attn(h, h, h, need_weights=False)[0])

    model = Attn().eval()
    x = torch.randn(2, 5, 8)
    cost = CostModel.build(fxprune.analyze(model, (x,)), (x,))
    assert any(why.startswith("attn") for why in cost.approximate)  # a leaf module scaled like one projection
    assert cost.node_macs["attn"] == 2 * (4 * 5 * 16 * 16 + 2 * 5 * 5 * 16)  # 2 x (projections + attention)
    assert cost.full_macs == count_macs(model, (x,))


def test_monotone_in_counts_and_errors():
    model = zoo.get("resnet20", in_channels=1).eval()
    x = torch.randn(1, 1, 28, 28)
    graph = fxprune.analyze(model, (x,))
    cost = CostModel.build(graph, (x,))
    g = graph.prunable_groups[3]
    values = [cost.macs({g.id: k}) for k in range(1, g.units + 1)]
    assert values == sorted(values) and values[-1] == cost.full_macs
    assert cost.cost({g.id: 2}, "params") == cost.params({g.id: 2})
    assert cost.full("macs") == cost.full_macs
    fixed = next(gr for gr in graph.groups if not gr.prunable)
    for bad in ({"nope": 1}, {g.id: 0}, {g.id: g.units + 1}, {g.id: [0, 0]}, {g.id: [g.units]},
                {g.id: 1.5}, {fixed.id: max(fixed.units - 1, 0) if fixed.units else 1}):
        with pytest.raises(InputError):
            cost.params(bad)
    with pytest.raises(InputError):
        cost.cost({}, "flops")


def test_counts_of():
    assert counts_of({"a": [0, 2, 5], "b": [1]}) == {"a": 3, "b": 1}
