"""Patterns outside the per-op rule table (issue 18): custom autograd Functions, parametrized
modules, hook-based weight norm, tuple-valued nodes, and each submodule's own train/eval mode.
Each model is either pruned exactly (rewrite == mask == the original with removed units zeroed)
or refused by name; never a model that lost its backward or a raw internal error."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import fxprune
from conftest import assert_same_state, check_equivalences, exact_plan, state_snapshot, zero_produce


class RoundSTE(torch.autograd.Function):
    """Straight-through rounding: forward rounds, backward passes the gradient unchanged."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class Quantize(nn.Module):
    def forward(self, x):
        return RoundSTE.apply(x * 4) / 4


class QuantNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0, self.c1, self.q, self.c2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 6, 3), Quantize(), nn.Conv2d(6, 4, 3)

    def forward(self, x):
        return self.c2(self.q(self.c1(torch.relu(self.c0(x)))))


class RootSTE(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.c2(RoundSTE.apply(self.c1(x)))


def test_a_module_calling_a_custom_function_is_kept_whole_and_gradients_survive():
    torch.manual_seed(0)
    model, x = QuantNet(), torch.randn(2, 3, 12, 12)
    graph = fxprune.analyze(model, x)
    reasons = " ".join(graph.barriers.values())
    assert "custom autograd Function" in reasons and "RoundSTE" in reasons
    plan = exact_plan(graph)
    assert [g for g in graph.prunable_groups if g.id in plan], "c0's channels stay prunable"
    pruned, zeroed = fxprune.rewrite(model, graph, plan), zero_produce(graph, plan)
    inputs = []
    for module in (pruned, zeroed):
        inputs.append(x.clone().requires_grad_())
        module(inputs[-1]).square().sum().backward()
    assert inputs[0].grad.abs().sum() > 0, "the straight-through gradient reaches the input"
    assert torch.allclose(inputs[0].grad, inputs[1].grad, atol=1e-5)
    for name in ("c1.bias", "c2.weight", "c2.bias"):  # the parameters the plan did not slice
        got, want = pruned.get_parameter(name).grad, zeroed.get_parameter(name).grad
        assert torch.allclose(got, want, atol=1e-5), name
    check_equivalences(model, x)


def test_a_custom_function_in_the_root_forward_is_refused_by_name():
    with pytest.raises(fxprune.LossyCaptureError, match="custom autograd Function .*RoundSTE.*submodule"):
        fxprune.compile(RootSTE(), torch.randn(1, 3, 8, 8), method="l1")


def test_custom_function_in_strict_mode_is_an_unsupported_op():
    with pytest.raises(fxprune.UnsupportedOpError, match="custom autograd Function"):
        fxprune.analyze(QuantNet(), torch.randn(1, 3, 12, 12), strict=True)


class WeightNormed(nn.Module):
    def __init__(self, hook_based: bool = False):
        super().__init__()
        norm = nn.utils.weight_norm if hook_based else parametrizations.weight_norm
        self.c0, self.c1 = nn.Conv2d(3, 8, 3), norm(nn.Conv2d(8, 6, 3))
        self.c2, self.c3 = nn.Conv2d(6, 10, 3), nn.Conv2d(10, 4, 3)

    def forward(self, x):
        return self.c3(F.relu(self.c2(F.relu(self.c1(F.relu(self.c0(x)))))))


def test_a_parametrized_module_is_kept_whole_and_stays_parametrized():
    torch.manual_seed(0)
    model, x = WeightNormed(), torch.randn(2, 3, 12, 12)
    before = state_snapshot(model)
    result = fxprune.compile(model, x, method="l1", sparsity=0.5)
    assert parametrize.is_parametrized(result.module.c1), "c1 keeps its weight norm"
    assert result.module.c1.out_channels == 6 and result.module.c0.out_channels == 8, "kept whole with its neighbours"
    assert result.module.c2.out_channels < 10, "the plain convs after it are still pruned"
    assert any("parametrized" in b for b in result.graph.barriers.values())
    assert_same_state(before, model)
    check_equivalences(model, x)


def test_hook_based_weight_norm_is_refused_with_the_fix():
    model = WeightNormed(hook_based=True)
    with pytest.raises(fxprune.TraceError, match="c1 uses the hook-based torch.nn.utils.weight_norm.*remove_weight_norm"):
        fxprune.compile(model, torch.randn(1, 3, 12, 12), method="l1")


class HeadsView(nn.Module):
    """The head split of many attention implementations: a shape built from ``x.size()``."""

    def __init__(self, dynamic_rank: bool = False):
        super().__init__()
        self.qkv, self.out, self.dynamic_rank = nn.Linear(16, 16), nn.Linear(16, 8), dynamic_rank

    def forward(self, x):
        y = self.qkv(x)
        keep = y.dim() - 1 if self.dynamic_rank else -1
        y = y.view(y.size()[:keep] + (4, 4)).softmax(-1)
        return self.out(y.reshape(y.shape[:-2] + (16,)))


class CatOfChunks(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)

    def forward(self, x):
        y = self.c1(x)
        return self.c2(torch.cat(torch.relu(y).chunk(2, 1)[::-1], 1) + torch.cat(y.chunk(4, 1), 1))


class StackOfChunks(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.c2(torch.stack(torch.relu(self.c1(x)).chunk(2, 1), 2).flatten(1, 2))


@pytest.mark.parametrize("model, x", [(HeadsView(), torch.randn(2, 5, 16)),
                                      (CatOfChunks(), torch.randn(2, 3, 9, 9))], ids=["view", "cat-chunk"])
def test_tuple_valued_nodes_are_read_element_by_element(model, x):
    torch.manual_seed(0)
    graph = fxprune.analyze(model, x)
    assert graph.prunable_groups
    check_equivalences(model, x)


def test_stack_takes_a_tuple_node():
    torch.manual_seed(0)
    model, x = StackOfChunks(), torch.randn(2, 3, 9, 9)
    result = fxprune.compile(model, x, method="l1", sparsity=0.5)
    with torch.no_grad():
        graph = result.graph
        compare_to = zero_produce(graph, result.plan)(x)
        assert torch.allclose(result.module(x), compare_to, atol=1e-5)


def test_a_shape_tuple_fxprune_cannot_follow_keeps_its_dims_whole():
    model, x = HeadsView(dynamic_rank=True), torch.randn(2, 5, 16)
    graph = fxprune.analyze(model, x)
    assert any("computed tuple" in why for why in graph.barriers.values())
    result = fxprune.compile(model, x, method="l1", sparsity=0.5)
    with torch.no_grad():
        assert torch.allclose(result.module(x), model(x), atol=1e-6)


class FrozenBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.c2(F.relu(self.bn(self.c1(x)))))


def test_each_submodule_comes_back_in_its_own_mode():
    model = FrozenBN().train()
    model.bn.eval()  # frozen statistics, the usual fine-tuning set-up
    model.bn.running_mean.normal_()
    before = {name: m.training for name, m in model.named_modules()}
    result = fxprune.compile(model, torch.randn(2, 3, 10, 10), method="l1", sparsity=0.5)
    after = {name: m.training for name, m in result.module.named_modules() if name in before}
    assert after == {name: mode for name, mode in before.items() if name in after}
    assert after["bn"] is False and after[""] is True
    assert {name: m.training for name, m in model.named_modules()} == before, "the user's model keeps its modes"


def test_frozen_batch_norm_is_analysed_with_its_running_statistics():
    model = FrozenBN().train()
    model.bn.eval()
    model.drop.eval()
    graph = fxprune.analyze(model, torch.randn(2, 3, 10, 10))
    assert not any(g.has_norm for g in graph.prunable_groups), "eval BN has no batch statistics"
    x = torch.randn(2, 3, 10, 10)
    check_equivalences(copy.deepcopy(model), x)


class Hooked(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0, self.block, self.c2 = nn.Conv2d(3, 8, 3), nn.Sequential(nn.Conv2d(8, 6, 3), nn.ReLU()), nn.Conv2d(6, 4, 3)
        self.c3 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.c3(torch.relu(self.c2(self.block(torch.relu(self.c0(x))))))


def test_hooks_on_a_submodule_still_run_after_pruning():
    torch.manual_seed(0)
    model, x = Hooked(), torch.randn(2, 3, 12, 12)
    model.block.register_forward_hook(lambda module, args, out: out * 2 + 1)
    result = fxprune.compile(model, x, method="l1", sparsity=0.5)
    assert any("forward hooks" in why for why in result.graph.barriers.values())
    with torch.no_grad():
        expected = zero_produce(result.graph, result.plan)(x)
        assert torch.allclose(result.module(x), expected, atol=1e-5)
        unpruned = fxprune.compile(model, x, method="l1", sparsity=0.0).module(x)
        assert torch.allclose(unpruned, model(x), atol=1e-5), "the traced model runs the hook"


def test_hooks_on_the_model_itself_are_refused():
    model = Hooked()
    model.register_forward_hook(lambda module, args, out: out * 2)
    with pytest.raises(fxprune.LossyCaptureError, match="itself has forward hooks"):
        fxprune.compile(model, torch.randn(1, 3, 12, 12), method="l1")


class NoWeights(nn.Module):
    def forward(self, x):
        return torch.relu(x).view(x.size()[:-1] + (16,))


def test_a_model_without_weights_has_nothing_to_prune_and_says_so():
    result = fxprune.compile(NoWeights(), torch.randn(2, 3, 16))
    assert not result.graph.prunable_groups
    assert any("nothing is prunable" in w for w in result.report.warnings)
