"""The rewrite copies each weight once: it slices the analysed model's tensors into new ones and
copies the rest after slicing (no deep copy first), never writing into the analysed model's tensors
or the user's. ``tools/bench_memory.py`` measures the peak; these tests check the ownership."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fxprune
from conftest import assert_same_state, exact_plan, state_snapshot, zero_produce


class SigmoidReader(nn.Module):
    """Removed units leave sigmoid(0) = 0.5 at c2 (compensation folds it into c2's bias), and
    ``head`` is never sliced (its input and output are whole)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.head = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 6, 1), nn.Linear(6, 4)
        self.register_buffer("scale", torch.full((4,), 2.0))

    def forward(self, x):
        y = self.c2(torch.sigmoid(self.c1(x))).mean((2, 3))
        return self.head(y) * self.scale


def _storages(module: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()] if t.numel()}


def test_rewrite_owns_every_tensor_and_changes_neither_source():
    torch.manual_seed(0)
    model, x = SigmoidReader(), torch.randn(2, 3, 8, 8)
    graph = fxprune.analyze(model, x)
    plan = {gid: kept for gid, kept in exact_plan(graph).items()
            if any(name == "c1.weight" for name, _, _ in graph.group(gid).members())}
    assert plan, "c1's channels are prunable"
    before_model, before_graph = state_snapshot(model), state_snapshot(graph.gm)
    for source in (graph.gm, model):
        pruned = fxprune.rewrite(source, graph, plan)
        assert not _storages(pruned) & (_storages(model) | _storages(graph.gm)), "no storage is shared"
        assert pruned.c1.out_channels < 8 and pruned.head.weight.shape == (4, 6)
        with torch.no_grad():
            assert torch.allclose(pruned(x), zero_produce(graph, plan)(x), atol=1e-5)
    assert_same_state(before_model, model)
    assert_same_state(before_graph, graph.gm)


def test_training_the_pruned_model_leaves_the_original_alone():
    torch.manual_seed(0)
    model, x = SigmoidReader(), torch.randn(2, 3, 8, 8)
    before = state_snapshot(model)
    result = fxprune.compile(model, x, method="l1", sparsity=0.5)
    opt = torch.optim.SGD(result.module.parameters(), lr=0.1)
    result.module(x).square().sum().backward()
    opt.step()
    assert_same_state(before, model)
    assert all(p.grad is None for p in model.parameters())


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc1, self.fc2 = nn.Linear(8 * 7 * 7, 16), nn.Linear(16, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.c1(x))), 2)
        x = torch.max_pool2d(torch.relu(self.bn2(self.c2(x))), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


ONE_SHOT = ["l1", "random", "taylor", "snip", "grasp", "submodular", "actgrad", "layer_actgrad",
            "layer_weightnorm", "layer_sampling", "layer_random"]


@pytest.mark.parametrize("method", ONE_SHOT)
def test_no_method_writes_into_the_users_tensors(method):
    """The traced model's tensors are views of the user's: an in-place write would bump their version."""
    torch.manual_seed(0)
    model = SmallNet().train()  # train mode: a forward would update BN statistics in place
    data = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))) for _ in range(2)]
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    versions = {name: t._version for name, t in tensors.items()}
    before = state_snapshot(model)
    options = {} if method == "l1" else {"data": data, "progress": False}
    fxprune.compile(model, data[0][0][:2], method, 0.5, validate=False, **options)
    assert {name: t._version for name, t in tensors.items()} == versions
    assert_same_state(before, model)
    assert all(p.grad is None for p in model.parameters())
