"""Reads of a pruned dim's size (``x.shape[1]``, ``x.size(-1)``, ``x.size()[1]``) keep their meaning.

Arithmetic into tensor values keeps the original number (what the original computes
with the removed units zeroed: the oracle), sizes given to reshape/view keep being
rewritten to the new size, reads of dims that did not change (the batch) stay
dynamic, and a size used any other way (``torch.zeros(C)``, ``chunk(C)``) makes the
dim a barrier with a reason.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fxprune
from equivalence import compare, repair_keep, zero_produce

PLANS = [lambda n: range(0, n, 2), lambda n: [n - 1], lambda n: range(1, n)]


class HeadDimAttention(nn.Module):
    """Self-attention whose softmax scale is read from the head width."""

    def __init__(self, dim: int = 8, heads: int = 2, head_dim: int = 6):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        scale = q.size(-1) ** -0.5
        attn = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, -1))


class ChannelMean(nn.Module):
    """A mean over channels written as ``sum / C``, and a size used by a view."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        mean = y.sum(1, keepdim=True) / y.shape[1]
        flat = y.view(y.size(0), y.size()[1], -1)  # sizes given to a view: rewritten
        total = flat.sum((0, 1)) / (y.shape[0] * y.shape[1])  # the batch read stays dynamic
        return self.conv2(y) + mean + total.view((1, 1) + y.shape[2:])


class MergeHeads(nn.Module):
    """torchvision MaxViT's pattern: heads merged back with ``reshape(B, N, D)``, ``D`` read from the
    block input; pruning the input's channels must not change that reshape (heads x width stays)."""

    def __init__(self):
        super().__init__()
        self.embed, self.qkv, self.out = nn.Linear(4, 8), nn.Linear(8, 24), nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.embed(x))
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        y = ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(B, N, D)
        return self.out(y)


class ZerosOfChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv1(x)
        return self.conv2(y) + torch.zeros(y.shape[1]).sum()


class ChunkOfChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv1(x)
        return self.conv2(y) + y.chunk(y.size(1) // 4, dim=0)[0].sum()


def check_against_oracle(model: nn.Module, x: torch.Tensor, group_id: str, also: torch.Tensor | None = None):
    """rewrite == original with the removed produce slices zeroed, for a few plans of ``group_id``
    (and on ``also``, inputs of another batch size)."""
    graph = fxprune.analyze(model.eval(), x)
    group = graph.group(group_id)
    assert group in graph.prunable_groups, str(graph)
    for keep in PLANS:
        plan = {group_id: repair_keep(group, keep(group.units))}
        pruned, oracle = fxprune.rewrite(graph.gm, graph, plan), zero_produce(graph, plan)
        with torch.no_grad():
            for inputs in [x] if also is None else [x, also]:
                compare(pruned(inputs), oracle(inputs), f"{type(model).__name__} keep {plan[group_id]}")
    return graph, pruned


def test_attention_scale_read_from_the_pruned_head_width_keeps_its_value():
    torch.manual_seed(0)
    graph, pruned = check_against_oracle(HeadDimAttention(), torch.randn(2, 5, 8), "qkv")
    assert graph.group("qkv").units == 6  # the head width is what is pruned
    assert f"{6 ** -0.5!r}" in pruned.code, pruned.code


def test_channel_mean_divides_by_the_original_channel_count():
    torch.manual_seed(0)
    _, pruned = check_against_oracle(ChannelMean(), torch.randn(2, 3, 4, 4), "conv1",
                                     also=torch.randn(3, 3, 4, 4))
    assert "/ 8" in pruned.code, pruned.code  # sum / C keeps C = 8
    assert "* 8" in pruned.code, pruned.code  # B * C: B is still read (the batch of 3 above), C = 8


def test_size_given_to_a_reshape_the_plan_does_not_change_keeps_its_value():
    torch.manual_seed(0)
    graph, pruned = check_against_oracle(MergeHeads(), torch.randn(2, 5, 4), "embed", also=torch.randn(3, 5, 4))
    assert ", 8)" in pruned.code, pruned.code  # reshape(B, N, 8): the batch and tokens are still read


@pytest.mark.parametrize("model, user", [(ZerosOfChannels(), "zeros"), (ChunkOfChannels(), "chunk")])
def test_size_creating_a_tensor_or_a_count_makes_the_dim_a_barrier(model, user):
    graph = fxprune.analyze(model.eval(), torch.randn(2, 3, 4, 4))
    assert not any(g.id == "conv1" for g in graph.prunable_groups), str(graph)
    assert f"the size of dim 1 of conv1 is used by {user}" in str(graph), str(graph)


def test_without_pruning_the_read_dim_nothing_changes():
    torch.manual_seed(0)
    graph = fxprune.analyze(ChannelMean().eval(), torch.randn(2, 3, 4, 4))
    plan = {g.id: list(range(g.units)) for g in graph.prunable_groups}
    assert fxprune.rewrite(graph.gm, graph, plan).code == graph.gm.code
