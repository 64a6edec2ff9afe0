"""Coverage of the rule table: each op family on a small model, checked for exactness."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from conftest import check_equivalences, randomize_bn


class ConvFamily(nn.Module):
    """conv1d/conv3d/transposed (plain, grouped, depthwise) with BN/IN/PReLU in between."""

    def __init__(self, dims: int, transposed: bool, groups: int):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        tconv = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
        bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
        inorm = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims]
        self.a = conv(2, 8, 1)
        self.bn = bn(8)
        self.mid = (tconv if transposed else conv)(8, 8, 3, padding=1, groups=groups)
        self.inorm = inorm(8, affine=True)
        self.act = nn.PReLU(8)
        self.b = conv(8, 3, 1)

    def forward(self, x):
        return self.b(self.act(self.inorm(self.mid(F.relu(self.bn(self.a(x)))))))


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("groups", [1, 2, 8])
def test_conv_family_is_exact(dims, transposed, groups):
    model = randomize_bn(ConvFamily(dims, transposed, groups)).eval()
    x = torch.randn(2, 2, *([5] * dims))
    check_equivalences(model, x)


class Mixed(nn.Module):
    """Functional ops with unwrapped parameters, interpolate, pooling, SE gate, padding."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.w = nn.Parameter(torch.randn(6, 8, 1, 1))
        self.se1, self.se2 = nn.Conv2d(6, 3, 1), nn.Conv2d(3, 6, 1)
        self.fc_w = nn.Parameter(torch.randn(4, 6))

    def forward(self, x):
        y = F.silu(self.conv(x)) * self.gamma
        y = F.interpolate(F.avg_pool2d(y, 2), scale_factor=2.0, mode="nearest")
        y = F.pad(F.conv2d(y, self.w), (1, 1, 1, 1))
        s = torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(y, 1)))))
        y = F.max_pool2d(y * s, 2).amax(dim=(2, 3))
        return F.linear(y, self.fc_w)


def test_functional_ops_and_unwrapped_parameters_are_exact():
    model = Mixed().eval()
    x = torch.randn(2, 3, 8, 8)
    graph = fxprune.analyze(model, x)
    g = next(g for g in graph.groups if ("conv.weight", 0, "produce") in g.members())
    assert ("gamma", 0, "produce") in g.members() and ("w", 1, "consume") in g.members()
    check_equivalences(model, x)


def test_group_norm_keeps_group_count():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 2, 1))
    x = torch.randn(2, 3, 4, 4)
    graph = fxprune.analyze(model, x)
    g = next(g for g in graph.groups if ("0.weight", 0, "produce") in g.members())
    assert g.units == 4 and g.has_norm  # channel j of each of the 2 GroupNorm groups
    small = fxprune.rewrite(model, graph, {g.id: [0, 3]})
    assert small.get_submodule("1").num_groups == 2 and small.get_submodule("1").num_channels == 4
    assert small(x).shape == (2, 2, 4, 4)


class Attn(nn.Module):
    """Hand-written heads with SDPA and an einsum contraction."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)
        self.mix = nn.Parameter(torch.randn(8, 5))

    def forward(self, x):
        n, l, _ = x.shape
        q, k, v = self.qkv(x).reshape(n, l, 3, 2, 4).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        y = self.proj(y.transpose(1, 2).reshape(n, l, 8))
        return torch.einsum("nlc,cd->nld", y, self.mix)


def test_sdpa_and_einsum_are_exact_and_scale_is_kept():
    model = Attn().eval()
    x = torch.randn(2, 6, 8)
    graph = fxprune.analyze(model, x)
    assert any(g.prunable for g in graph.groups if ("qkv.weight", 0, "produce") in g.members())
    check_equivalences(model, x)


class FewChannelsFlatten(nn.Module):
    """flatten of (C, 12, 12) with C = 4 < 12: the channel atom is not the largest of the region,
    but the spatial ones are barriers already, so the channels stay prunable (pruned in steps,
    a layer ends up with fewer channels than its spatial size)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 5), nn.Linear(4 * 12 * 12, 10)

    def forward(self, x):
        return self.fc(torch.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def test_flatten_keeps_few_channels_prunable():
    x = torch.randn(2, 1, 28, 28)
    graph = fxprune.analyze(FewChannelsFlatten(), x)
    assert [g.units for g in graph.prunable_groups] == [4]
    check_equivalences(FewChannelsFlatten(), x)
