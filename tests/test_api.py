"""compile(), budgets, pipelines and every kind of bad input."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.passes import L1, Analyze, Rewrite, Validate
from conftest import assert_same_state, randomize_bn, state_snapshot


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x)) + x), 2)
        return self.fc(self.drop(torch.flatten(x, 1)))


@pytest.fixture
def net():
    return randomize_bn(Net()).eval()


X = torch.randn(2, 3, 8, 8)


def test_compile_prunes_validates_and_reports(net):
    before = state_snapshot(net)
    result = fxprune.compile(net, X, method="l1", sparsity=0.5)
    assert_same_state(before, net)
    r = result.report
    assert r.params_after < r.params_before and r.macs_after < r.macs_before
    assert "onnx ok" in r.validation and set(r.seconds) == {"trace", "analyze", "l1", "rewrite", "validate"}
    assert [g.kept for g in r.groups] == [8]  # one residual group of 16 channels, half kept
    assert result.module.conv1.out_channels == 8 and result.module.fc.in_features == 8 * 16
    json.loads(result.plan_json())  # JSON-serialisable
    assert "MACs" in str(r) and r.to_dict()["macs_ratio"] < 1


def test_compile_keeps_user_mode_and_returns_same_mode(net):
    net.train()
    result = fxprune.compile(net, X, sparsity=0.25)
    assert net.training and result.module.training
    net.eval()
    assert not fxprune.compile(net, X, sparsity=0.25).module.training


def test_l1_keeps_the_largest_filters(net):
    with torch.no_grad():
        net.conv1.weight.mul_(0.01)
        net.conv2.weight.mul_(0.01)
        for c in (3, 5, 7, 11):
            net.conv1.weight[c] *= 1000
    result = fxprune.compile(net, X, method="l1", sparsity=0.75, validate=False)
    assert list(result.plan.values()) == [[3, 5, 7, 11]]


def test_random_is_reproducible_and_round_to_rounds_up(net):
    a = fxprune.compile(net, X, method="random", sparsity=0.6, seed=3, validate=False)
    b = fxprune.compile(net, X, method="random", sparsity=0.6, seed=3, validate=False)
    assert a.plan == b.plan
    c = fxprune.compile(net, X, method="random", sparsity=0.6, round_to=4, validate=False)
    assert all(len(k) % 4 == 0 for k in c.plan.values()) and len(next(iter(c.plan.values()))) == 8


def test_ignore_leaves_modules_whole_and_global_scope(net):
    result = fxprune.compile(net, X, ignore=("conv2",), validate=False)
    assert result.plan == {} and result.module.conv2.out_channels == 16
    g = fxprune.compile(net, X, scope="global", sparsity=0.5, validate=False)
    assert sum(16 - len(v) for v in g.plan.values()) == 8


def test_taylor_uses_data_and_loss():
    model = randomize_bn(Net()).eval()
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))) for _ in range(3)]
    result = fxprune.compile(model, X, method="taylor", data=data, progress=False)
    assert result.module.conv1.out_channels == 8
    with pytest.raises(fxprune.InputError, match="needs data"):
        fxprune.compile(model, X, method="taylor")


def test_nothing_prunable_returns_model_with_warning():
    model = nn.Linear(4, 3)
    result = fxprune.compile(model, torch.randn(2, 4))
    assert result.plan == {} and "nothing is prunable" in result.report.warnings[0]
    assert torch.allclose(result.module(torch.ones(1, 4)), model(torch.ones(1, 4)))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.fc(x)
        return x


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: fxprune.compile(Untraceable(), torch.randn(1, 4)), fxprune.TraceError,
         r"test_api.py:\d+ .*x.sum\(\) > 0.*leaf_modules"),
        (lambda m: fxprune.compile(m, [1, 2]), fxprune.InputError, "example_inputs must be a tensor"),
        (lambda m: fxprune.compile(m, torch.randn(2, 5, 8, 8)), fxprune.InputError, r"\(2, 5, 8, 8\) do not fit"),
        (lambda m: fxprune.compile(m, (X, X)), fxprune.InputError, "takes 1 input"),
        (lambda m: fxprune.compile(m, X, sparsity=1.0), fxprune.InputError, r"sparsity must be in \[0, 1\)"),
        (lambda m: fxprune.compile(m, X, sparsity=-0.1), fxprune.InputError, "sparsity"),
        (lambda m: fxprune.compile(m, X, method="magic"), fxprune.InputError, "unknown method 'magic'"),
        (lambda m: fxprune.compile(m, X, colour="red"), fxprune.InputError, "no option"),
        (lambda m: fxprune.compile(m, X, ignore=("nope",)), fxprune.InputError, "ignore names not in the model: nope"),
        (lambda m: fxprune.compile(m, X, scope="everywhere"), fxprune.InputError, "scope"),
        (lambda m: fxprune.compile("model", X), fxprune.InputError, "torch.nn.Module"),
    ],
)
def test_bad_input_raises_named_error_and_leaves_model_intact(net, call, error, match):
    before = state_snapshot(net)
    with pytest.raises(error, match=match):
        call(net)
    assert_same_state(before, net)


@pytest.mark.parametrize(
    "plan, match",
    [
        ({"nope": [0]}, "unknown group id 'nope'"),
        ({"conv1": [0, 99]}, "out of range"),
        ({"conv1": [1, 1, 2]}, "duplicate"),
        ({"conv1": []}, "at least one unit"),
        ({"conv1": ["a"]}, "integers"),
    ],
)
def test_bad_plans_raise_plan_error(net, plan, match):
    graph = fxprune.analyze(net, X)
    before = state_snapshot(graph.gm)
    for fn in (fxprune.rewrite, fxprune.mask):
        with pytest.raises(fxprune.PlanError, match=match):
            fn(graph.gm, graph, plan)
    assert_same_state(before, graph.gm)


def test_rewrite_and_mask_accept_the_original_model_and_its_new_weights(net):
    graph = fxprune.analyze(net, X)
    with torch.no_grad():
        net.conv1.weight.add_(1.0)  # trained after analysis: its weights are used
    plan = {"conv1": list(range(0, 16, 2))}
    with torch.no_grad():
        a = fxprune.rewrite(net, graph, plan)(X)
        b = fxprune.mask(net, graph, plan)(X)
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(fxprune.PlanError, match="does not match"):
        fxprune.rewrite(nn.Linear(2, 2), graph, plan)


@dataclass(frozen=True)
class KeepAtLeast(fxprune.Pass):
    """Custom pass: make every group keep at least ``minimum`` units (edits the plan)."""

    minimum: int = 12
    name: ClassVar[str] = "keep-at-least"

    def run(self, gm):
        state = gm.meta["fxprune"]
        for gid, kept in state.plan.items():
            extra = [u for u in range(state.channel_graph.group(gid).units) if u not in kept]
            state.plan[gid] = sorted(kept + extra[: max(0, self.minimum - len(kept))])
        return gm


def test_pipeline_runs_custom_pass_with_callback_and_derived_modified(net):
    seen = []
    pipeline = fxprune.Pipeline([Analyze(), L1(sparsity=0.5), KeepAtLeast(), Rewrite(), Validate()],
                                callback=lambda name, result, s: seen.append((name, result.modified)))
    out = pipeline(fxprune.trace(net, X))
    assert [n for n, _ in seen] == ["analyze", "l1", "keep-at-least", "rewrite", "validate"]
    assert dict(seen) == {"analyze": False, "l1": True, "keep-at-least": True, "rewrite": True, "validate": False}
    assert out.graph_module.conv1.out_channels == 12 and out.modified


def test_pipeline_names_the_failing_pass(net):
    def broken(gm):
        raise ZeroDivisionError("boom")

    with pytest.raises(fxprune.PassError, match="pass 'broken' failed after analyze: ZeroDivisionError: boom"):
        fxprune.Pipeline([Analyze(), broken])(fxprune.trace(net, X))
    with pytest.raises(fxprune.PlanError, match=r"\[pass rewrite\] rewrite needs an analysis"):
        fxprune.Pipeline([Rewrite()])(fxprune.trace(net, X))


def test_trace_leaf_modules_keep_a_module_whole():
    model = nn.Sequential(nn.Linear(4, 4), Untraceable())
    gm = fxprune.trace(model, torch.randn(1, 4), leaf_modules=(Untraceable,))
    assert any(n.op == "call_module" and n.target == "1" for n in gm.graph.nodes)
    graph = fxprune.analyze(gm)
    assert "no channel rule for module Untraceable" in str(graph)
