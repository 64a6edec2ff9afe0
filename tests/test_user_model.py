"""``fxprune.rewrite(model, graph, plan)`` and ``fxprune.mask(model, graph, plan)`` with the user's
own model object: matched by the tensors the graph uses, whatever tracing dropped.

timm's ``BatchNormAct2d`` calls ``F.batch_norm`` and reads ``num_batches_tracked`` only in
training, so an eval-mode trace has no such buffer; a model also holds tensors its forward
never reads (an unused head) and tensors that are not in its state_dict (non-persistent
buffers, plain tensor attributes). The weights taken from the model are those of the
GraphModule's state_dict (a plain tensor attribute is one: the GraphModule stores it as a
buffer); non-persistent buffers are constants of the graph, in no state_dict.
"""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import BatchNormAct2d
from torch import nn

import fxprune
from conftest import assert_same_state, randomize_bn, state_snapshot
from equivalence import compare, repair_keep


class FunctionalBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 12, 3, padding=1), BatchNormAct2d(12)
        self.conv2, self.bn2 = nn.Conv2d(12, 8, 3, padding=1), BatchNormAct2d(8)
        self.head = nn.Linear(8, 5)
        self.unused_head = nn.Linear(8, 1000)  # never called by forward
        self.register_buffer("offset", torch.randn(1, 8, 1, 1), persistent=False)
        self.gain = torch.full((1, 12, 1, 1), 1.5)  # a plain tensor attribute

    def forward(self, x):
        x = self.bn1(self.conv1(x)) * self.gain
        x = self.bn2(self.conv2(x)) + self.offset
        return self.head(x.mean((2, 3)))


X = torch.randn(2, 3, 8, 8)


def analysed():
    torch.manual_seed(0)
    model = randomize_bn(FunctionalBN()).eval()
    graph = fxprune.analyze(model, X)
    plan = {g.id: repair_keep(g, range(0, g.units, 2)) for g in graph.prunable_groups}
    return model, graph, plan


def test_the_traced_graph_drops_tensors_the_model_has():
    model, graph, _ = analysed()
    dropped = set(model.state_dict()) - set(graph.gm.state_dict())
    assert {"bn1.num_batches_tracked", "unused_head.weight"} <= dropped
    assert set(graph.gm.state_dict()) - set(model.state_dict()) == {"gain"}  # now a buffer of the graph
    assert "offset" not in graph.gm.state_dict()  # non-persistent in both: a constant, not a weight


def test_rewrite_and_mask_take_the_analysed_model_itself():
    model, graph, plan = analysed()
    assert plan, "the model has prunable groups"
    before = state_snapshot(model)
    with torch.no_grad():
        from_model = fxprune.rewrite(model, graph, plan)(X)
        from_graph = fxprune.rewrite(graph.gm, graph, plan)(X)
        masked = fxprune.mask(model, graph, plan)(X)
    compare(from_model, from_graph, "rewrite(model) vs rewrite(graph.gm)")
    compare(from_model, masked, "rewrite(model) vs mask(model)")
    assert_same_state(before, model)


def test_rewrite_takes_the_weights_of_a_trained_copy():
    model, graph, plan = analysed()
    trained = copy.deepcopy(model)
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(1.5)
        trained.gain.mul_(2.0)
    reference = fxprune.analyze(trained, X)  # same structure: same groups and units
    with torch.no_grad():
        got = fxprune.rewrite(trained, graph, plan)(X)
        want = fxprune.rewrite(reference.gm, reference, plan)(X)
        stale = fxprune.rewrite(model, graph, plan)(X)
    compare(got, want, "rewrite(trained) vs rewrite of the trained model's own analysis")
    assert (got - stale).abs().max() > 1e-3, "the trained weights must be the ones used"


def test_a_different_model_is_a_plan_error_saying_what_differs():
    model, graph, plan = analysed()
    other = FunctionalBN()
    other.conv2 = nn.Conv2d(12, 10, 3, padding=1)
    del other.bn1
    for fn in (fxprune.rewrite, fxprune.mask):
        with pytest.raises(fxprune.PlanError) as info:
            fn(other, graph, plan)
        message = str(info.value)
        assert "does not match the analysed graph" in message
        assert "missing: bn1.weight, bn1.bias, bn1.running_mean and 1 more" in message, message
        assert "conv2.weight (10, 12, 3, 3) vs (8, 12, 3, 3)" in message, message


def test_timm_model_with_functional_batch_norm():
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    x = torch.randn(1, 3, 32, 32)
    graph = fxprune.analyze(model, x)
    assert any(k.endswith("num_batches_tracked") for k in set(model.state_dict()) - set(graph.gm.state_dict()))
    groups = graph.prunable_groups[:4]
    plan = {g.id: repair_keep(g, range(0, g.units, 2)) for g in groups}
    with torch.no_grad():
        got = fxprune.rewrite(model, graph, plan)(x)
        want = fxprune.rewrite(graph.gm, graph, plan)(x)
        masked = fxprune.mask(model, graph, plan)(x)
    compare(got, want, "rewrite(timm model) vs rewrite(graph.gm)")
    compare(got, masked, "rewrite(timm model) vs mask(timm model)")
