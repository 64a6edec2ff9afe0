"""The layer-wise baselines of the submodular paper (passes/actgrad, weightnorm, sampling,
greedy_fs, random) through ``fxprune.compile``, and each one's scores against its definition."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from conftest import assert_same_state, state_snapshot
from fxprune.budget import Budget, select, selectable_groups
from fxprune.passes.submodular.layerwise import LayerwiseContext
from fxprune.passes import ActGrad, Analyze, LayerActGrad, LayerGreedyFS, LayerSampling
from fxprune.passes.sampling import sensitivities
from fxprune.state import state_of

pytestmark = pytest.mark.usefixtures("one_thread")  # 2 OpenMP threads on a busy 2-core machine stall (10x)

BASELINES = ["actgrad", "layer_actgrad", "layer_weightnorm", "layer_sampling", "layer_greedy_fs", "random",
             "layer_random"]
LENET_READER = {"conv1": "conv2", "conv2": "fc1", "fc1": "fc2", "fc2": "fc3"}  # group -> its one reader


@pytest.fixture(scope="module")
def calib(fashion):
    images, labels = fashion
    return [(images[i:i + 64], labels[i:i + 64]) for i in (0, 64)]


def context(model, x, method) -> LayerwiseContext:
    gm = fxprune.trace(model, x)
    Analyze()(gm)
    return LayerwiseContext(method, gm, state_of(gm))


def top(scores: np.ndarray, k: int) -> list[int]:
    return sorted(np.lexsort((np.arange(scores.size), -np.asarray(scores))).tolist()[:k])


# ---------------------------------------------------------------- every baseline through compile

@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m == "layer_greedy_fs" else m
                                    for m in BASELINES])
def test_baseline_compiles_validates_and_reproduces(method, lenet, calib, fashion):
    images, labels = fashion
    x = images[:1]
    data = calib
    if method == "layer_greedy_fs":  # ~ units^2 / 2 forwards per group, on the first batch: make it small
        data = [(images[256:272], labels[256:272])] + calib
    sparsity = 0.3
    before = state_snapshot(lenet)

    def run(reweight, seed=3):
        return fxprune.compile(lenet, x, method, sparsity, data=data, reweight=reweight, seed=seed, progress=False)

    plain, again, reweighted = run(False), run(False), run(True)
    assert_same_state(before, lenet)
    for res in (plain, reweighted):
        assert res.report.validation.startswith("onnx ok"), res.report.validation
        assert res.plan and any(len(k) < res.graph.group(g).units for g, k in res.plan.items())
        assert res.report.params_after < res.report.params_before
    assert plain.plan == again.plan
    sd, sd2 = plain.module.state_dict(), again.module.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    if method != "actgrad":  # per group (random: scope="local" by default)
        assert {g: len(k) for g, k in plain.plan.items()} == \
            {g.id: g.units - int(sparsity * g.units) for g in plain.graph.prunable_groups}
    else:  # actgrad ranks globally: the fraction is of all units, not of each group
        total = sum(g.units for g in plain.graph.prunable_groups)
        assert sum(len(k) for k in plain.plan.values()) == total - int(sparsity * total)
    if method != "layer_greedy_fs":  # scores come from the unpruned model: reweighting only changes weights
        assert reweighted.plan == plain.plan
        rw = reweighted.module.state_dict()
        changed = {k for k in sd if not torch.equal(sd[k], rw[k])}
        # the readers of pruned groups get least-squares weights; nothing else changes
        readers = {f"{r}.weight" for r in LENET_READER.values()}
        pruned_readers = {f"{LENET_READER[g]}.weight" for g, k in plain.plan.items()
                          if len(k) < plain.graph.group(g).units}
        assert pruned_readers <= changed <= readers, changed


@pytest.mark.parametrize("method", ["random", "layer_random", "layer_sampling"])
def test_seed_changes_random_choices(method, lenet, calib, fashion):
    plans = [fxprune.compile(lenet, fashion[0][:1], method, 0.5, data=calib, seed=s, validate=False,
                             progress=False).plan for s in range(3)]
    assert plans[0] != plans[1] or plans[0] != plans[2]


# ---------------------------------------------------------------- weightnorm(producing) == l1, random == before

@pytest.mark.parametrize("model_name,sparsity", [("lenet", 0.5), ("resnet20", 0.3)])
def test_layer_weightnorm_plan_is_l1_plan(model_name, sparsity, lenet, resnet):
    model = lenet if model_name == "lenet" else resnet
    x = torch.randn(1, 1, 28, 28)
    wn = fxprune.compile(model, x, "layer_weightnorm", sparsity, validate=False, progress=False, weights="producing")
    l1 = fxprune.compile(model, x, "l1", sparsity, validate=False)
    assert wn.plan == l1.plan
    for k, v in l1.module.state_dict().items():
        assert torch.equal(v, wn.module.state_dict()[k])


@pytest.mark.parametrize("model_name", ["lenet", "resnet20"])
@pytest.mark.parametrize("scope", ["local", "global"])
def test_random_plan_unchanged_by_refactor(model_name, scope, lenet, resnet):
    """The ScorePass-era ``random``: scores ``default_rng(seed).random(units)`` drawn group after
    group in analysis order, then fxprune.budget.select (top-k per group)."""
    model = lenet if model_name == "lenet" else resnet
    x = torch.randn(1, 1, 28, 28)
    for seed in (0, 11):
        res = fxprune.compile(model, x, "random", 0.5, scope=scope, seed=seed, validate=False, progress=False)
        budget = Budget(0.5, scope)
        groups = selectable_groups(res.graph, budget)
        rng = np.random.default_rng(seed)
        scores = {g.id: rng.random(g.units) for g in groups}
        assert res.plan == select(res.graph, scores, budget)
        if scope == "local":
            assert res.plan == {g.id: top(scores[g.id], g.units - g.units // 2) for g in groups}
            layer = fxprune.compile(model, x, "layer_random", 0.5, seed=seed, validate=False, progress=False)
            assert layer.plan == res.plan


# ---------------------------------------------------------------- actgrad

def explicit_actgrad(model, data, module: str) -> np.ndarray:
    """|sum of activation x gradient| at ``module``'s output per channel, mean over batches, l2-normalised."""
    model = copy.deepcopy(model).eval()
    out = {}
    handle = model.get_submodule(module).register_forward_hook(lambda m, a, y: out.__setitem__("y", y))
    total = 0
    for images, labels in data:
        model.zero_grad()
        y = None
        loss = F.cross_entropy(model(images), labels)
        y = out["y"]
        (g,) = torch.autograd.grad(loss, y)
        dims = [d for d in range(y.dim()) if d != 1]
        total = total + (y * g).sum(dims).abs().double() / len(data)
    handle.remove()
    s = total.detach().numpy()
    return s / np.linalg.norm(s)


def test_actgrad_per_batch_scores_are_normalised_activation_gradients(lenet, calib, fashion):
    x = fashion[0][:1]
    ctx = context(lenet, x, ActGrad(data=calib, progress=False, saliency="per_batch"))
    scores = ctx.cached_scores(ctx.method)
    assert set(scores) == {"conv1", "conv2", "fc1", "fc2"}
    for gid, s in scores.items():
        assert s.shape == (ctx.graph.group(gid).units,)
        assert np.all(s >= 0)
        assert np.linalg.norm(s) == pytest.approx(1.0, rel=1e-9)
        # every gated tensor of a group (conv, relu, pool, flatten) adds the same a*g: a constant factor
        np.testing.assert_allclose(s, explicit_actgrad(lenet, calib, gid), rtol=1e-4, atol=1e-6)
    layer_ctx = context(lenet, x, LayerActGrad(data=calib, progress=False, saliency="per_batch"))
    assert all(np.array_equal(scores[g], v) for g, v in layer_ctx.cached_scores(layer_ctx.method).items())
    res = fxprune.compile(lenet, x, "layer_actgrad", 0.5, data=calib, validate=False, progress=False,
                          saliency="per_batch")
    assert res.plan == {g: top(s, s.size - s.size // 2) for g, s in scores.items()}


# ---------------------------------------------------------------- greedy forward selection

def test_greedy_fs_first_units_lower_the_loss_most(lenet, calib, fashion):
    x = fashion[0][:1]
    graph = fxprune.analyze(lenet, x)
    images, labels = calib[0]  # forward selection uses the first calibration batch

    def loss(kept):
        with torch.no_grad():
            return float(F.cross_entropy(fxprune.mask(graph.gm, graph, {"conv1": kept})(images), labels))

    first = min(range(6), key=lambda u: loss([u]))
    second = min((u for u in range(6) if u != first), key=lambda u: loss(sorted([first, u])))
    # 6 units, sparsity 0.84: int(5.04) = 5 removed, one kept
    plain = dict(rescale=False, batches="first")  # the earlier behaviour; the reference: test_saliency_definitions
    res = fxprune.compile(lenet, x, "layer_greedy_fs", 0.84, data=calib, groups=("conv1",), progress=False, **plain)
    assert res.plan == {"conv1": [first]}
    ctx = context(lenet, x, LayerGreedyFS(data=calib, groups=("conv1",), progress=False, **plain))
    assert ctx.method.order(ctx, ctx.graph.group("conv1"), 2)[:2] == [first, second]
    assert sorted(ctx.method.order(ctx, ctx.graph.group("conv1"), 2)) == list(range(6))


# ---------------------------------------------------------------- sampling

def explicit_sensitivity(model, data, reader: str, units: int) -> np.ndarray:
    """s_u = max over examples of z_u / sum_v z_v, z_u = mean |a_u| at the reader x ||reader weights of u||_1."""
    seen = []
    module = model.get_submodule(reader)
    h = module.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        for images, _ in data:
            model(images)
    h.remove()
    a = torch.cat(seen).abs().double()
    a = a.flatten(2).mean(-1) if a.dim() == 4 else a.reshape(a.shape[0], units, -1).mean(-1)
    w = module.weight.detach().abs().double()
    w = w.sum((0, 2, 3)) if w.dim() == 4 else w.view(w.shape[0], units, -1).sum((0, 2))
    z = a * w
    return (z / z.sum(1, keepdim=True)).max(0).values.numpy()


def test_layer_sampling_sensitivity_and_order(lenet, calib, fashion):
    x = fashion[0][:1]
    model = copy.deepcopy(lenet)
    with torch.no_grad():
        model.conv2.weight[[3, 7]] = 0.0  # conv2 units 3, 7 never fire: zero activity at fc1
        model.conv2.bias[[3, 7]] = -1.0
        model.fc2.weight[:, [5, 17, 40]] = 0.0  # fc1 units 5, 17, 40: zero reader weights
    ctx = context(model, x, LayerSampling(data=calib, seed=2, progress=False))
    again = context(model, x, LayerSampling(data=calib, seed=2, progress=False))
    other = context(model, x, LayerSampling(data=calib, seed=3, progress=False))
    res = fxprune.compile(model, x, "layer_sampling", 0.5, data=calib, seed=2, progress=False)
    planted = {"conv2": {3, 7}, "fc1": {5, 17, 40}}
    for gid, reader in LENET_READER.items():
        group = ctx.graph.group(gid)
        expect = explicit_sensitivity(model, calib, reader, group.units)
        np.testing.assert_allclose(sensitivities(ctx, group), expect, rtol=1e-6, atol=1e-12)
        dead = set(np.nonzero(expect == 0)[0].tolist())
        assert planted.get(gid, set()) <= dead
        order = ctx.method.order(ctx, group, group.units)
        assert sorted(order) == list(range(group.units))
        if dead:
            assert set(order[-len(dead):]) == dead, (gid, order)
        assert again.method.order(again, again.graph.group(gid), group.units) == order
        if len(dead) <= group.units // 2:
            assert not dead & set(res.plan[gid]), gid
    fc1_order = ctx.method.order(ctx, ctx.graph.group("fc1"), 120)
    assert other.method.order(other, other.graph.group("fc1"), 120) != fc1_order  # another seed


class TokenMLP(nn.Module):
    """Linear layers on (N, tokens, features): readers whose input has more than one row per example."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))).mean(1))


@pytest.mark.parametrize("method", BASELINES)
def test_baselines_on_token_inputs(method):
    """Regression (layer_sampling): a linear reader of (N, T, F) inputs crashed with an IndexError."""
    torch.manual_seed(0)
    model = TokenMLP().eval()
    data = [(torch.randn(6, 5, 8), torch.randint(0, 3, (6,))) for _ in range(2)]
    res = fxprune.compile(model, data[0][0][:1], method, 0.5, data=data, reweight=True, progress=False)
    assert res.report.validation.startswith("onnx ok")
    assert set(res.plan) == {"fc1", "fc2"}
    if method == "layer_sampling":
        ctx = context(model, data[0][0][:1], LayerSampling(data=data, progress=False))
        a = torch.cat([F.relu(model.fc1(x)) for x, _ in data]).detach().abs().double().mean(1)  # (N, 16)
        z = a * model.fc2.weight.detach().abs().double().sum(0)
        expect = (z / z.sum(1, keepdim=True)).max(0).values.numpy()
        np.testing.assert_allclose(sensitivities(ctx, ctx.graph.group("fc1")), expect, rtol=1e-6)
