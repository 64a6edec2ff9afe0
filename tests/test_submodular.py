"""The ``submodular`` pass (passes/submodular.py) checked against explicit computations.

Every reconstruction here is recomputed from scratch: consumer inputs come from
forward hooks on the user's model, conv features from ``F.unfold`` (checked
against the conv itself), least squares from ``torch.linalg.lstsq`` in float64,
and the sequential variants from a naive loop of full forwards, so that the
Gram-space greedy (fxprune.passes.submodular.greedy), the streamed Grams (fxprune.passes.submodular.features), the
node-by-node executor (fxprune.passes.submodular.stepper) and the zeroing of live values are all
compared with the definitions rather than with themselves.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from conftest import assert_same_state, state_snapshot
from fxprune.consumers import CONVS, group_consumers
from fxprune.errors import InputError
from fxprune.passes.submodular.greedy import least_squares_weights, reweighted_selection
from fxprune.passes.submodular.layerwise import LayerwiseContext, collect_problems
from fxprune.passes import Analyze, Submodular
from fxprune.pipeline import Pipeline
from fxprune.state import state_of


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def calib(fashion):
    """256 calibration images in two batches of 128, with labels."""
    images, labels = fashion
    return [(images[i:i + 128], labels[i:i + 128]) for i in (0, 128)]


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


# ---------------------------------------------------------------- explicit reconstruction helpers

def explicit_inputs(model: nn.Module, names: list[str], data) -> dict[str, torch.Tensor]:
    """The input of each named module over all batches (concatenated), from an eval forward."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, args, n=n: seen[n].append(args[0].detach().clone())) for n in names]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in data:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return {n: torch.cat(v) for n, v in seen.items()}


def explicit_features(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(rows, weight columns) float64: a conv's unfolded input, a linear layer's input."""
    x = x.double()
    if isinstance(module, nn.Conv2d):
        assert module.groups == 1 and module.padding_mode == "zeros"
        u = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        return u.transpose(1, 2).reshape(-1, u.shape[1])
    assert isinstance(module, nn.Linear)
    return x.reshape(-1, module.in_features)


def weight_columns(module: nn.Module) -> torch.Tensor:
    """The layer as a matrix acting on ``explicit_features``: (weight columns, outputs) float64."""
    w = module.weight.detach().double()
    return w.reshape(w.shape[0], -1).t()


def unit_columns(module: nn.Module, units: np.ndarray, kept) -> list[int]:
    """Weight columns of the units ``kept`` (in that order), unit-major as fxprune lays them out."""
    per = math.prod(module.kernel_size) if isinstance(module, CONVS) else 1
    return [int(ch) * per + j for u in kept for ch in np.nonzero(units == u)[0] for j in range(per)]


def check_unfold(module: nn.Module, x: torch.Tensor) -> None:
    """The explicit features times the weight matrix are the layer (without bias)."""
    B = explicit_features(module, x)
    out = (F.conv2d(x.double(), module.weight.double(), None, module.stride, module.padding, module.dilation)
           if isinstance(module, nn.Conv2d) else F.linear(x.double(), module.weight.double()))
    rows = out.flatten(2).transpose(1, 2).reshape(-1, out.shape[1]) if out.dim() == 4 else out
    torch.testing.assert_close(B @ weight_columns(module), rows, rtol=1e-10, atol=1e-10)


def lstsq(B: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """The minimum-norm least-squares solution; B may only lose rank through all-zero (dead) columns,
    whose rows of the solution are then 0."""
    live = B.abs().amax(0) > 0
    assert int(torch.linalg.matrix_rank(B)) == int(live.sum()), "test data must give a unique solution"
    return torch.linalg.lstsq(B, Y, driver="gelsd").solution


def block_index(kept, block: int) -> torch.Tensor:
    return torch.tensor([u * block + i for u in kept for i in range(block)], dtype=torch.long)


def context(model: nn.Module, x: torch.Tensor, method) -> tuple[torch.fx.GraphModule, LayerwiseContext]:
    """A traced, analysed copy of ``model`` and the layer-wise context ``method`` works in."""
    gm = fxprune.trace(model, x)
    Analyze()(gm)
    return gm, LayerwiseContext(method, gm, state_of(gm))


def run_method(model: nn.Module, x: torch.Tensor, method) -> torch.fx.GraphModule:
    """trace -> Analyze -> method, without rewriting: the full-size work model the pass returns."""
    return Pipeline([Analyze(), method])(fxprune.trace(model, x)).graph_module


def zero_removed_produce(model: nn.Module, group, kept) -> None:
    removed = sorted(set(range(group.units)) - set(kept))
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for s in group.slices(removed) if removed else []:
            if s.role == "produce":
                tensors[s.name].index_fill_(s.dim, s.index, 0.0)


def assert_state_close(a: dict, b: dict, rtol: float = 1e-4) -> None:
    assert set(a) == set(b)
    for k in a:
        scale = max(1.0, float(b[k].abs().max())) if b[k].numel() else 1.0
        diff = float((a[k].double() - b[k].double()).abs().max()) if b[k].numel() else 0.0
        assert diff <= rtol * scale, f"{k}: max diff {diff:.3g} (scale {scale:.3g})"


# ---------------------------------------------------------------- a model with a concat reader

class CatNet(nn.Module):
    """Group ``a`` is read by conv ``c`` (next to ``b``'s channels, units -1) and, pooled and
    flattened, by linear ``d``: two consumers of different kinds and one with foreign columns."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 6, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.c = nn.Conv2d(10, 8, 3, padding=1, stride=2)
        self.d = nn.Linear(6 * 2 * 2, 5)
        self.fc = nn.Linear(8 + 5, 3)

    def forward(self, x):
        a = F.relu(self.a(x))
        b = F.relu(self.b(x))
        c = F.relu(self.c(torch.cat([a, b], 1))).mean((2, 3))
        d = F.relu(self.d(F.avg_pool2d(a, 4).flatten(1)))
        return self.fc(torch.cat([c, d], 1))


# ---------------------------------------------------------------- 1. multi-consumer derivation

@pytest.mark.parametrize("case", ["resnet20", "catnet"])
def test_multi_consumer_objective_and_write(case, resnet):
    """yy - tr(C_S^T W_S) is the sum of the per-consumer least-squares residuals, and write()
    puts each consumer's own least-squares solution into its weight (fxprune.passes.submodular.features)."""
    gen = torch.Generator().manual_seed(0)
    if case == "resnet20":
        model, gid, n_consumers = resnet, "conv1", 5
        data = [torch.randn(2, 1, 28, 28, generator=gen) for _ in range(2)]
    else:
        torch.manual_seed(0)
        model, gid, n_consumers = CatNet().eval(), "a", 2
        data = [torch.randn(64, 1, 8, 8, generator=gen) for _ in range(2)]
    gm, ctx = context(model, data[0][:1], Submodular(data=data, groups=(gid,), progress=False))
    group = ctx.graph.group(gid)
    consumers = ctx.consumers[gid].consumers
    assert len(consumers) == n_consumers
    problem = collect_problems(gm, ctx.groups, ctx, ctx.calibration)[gid]
    assert [lay.consumer.module for lay in problem.layouts] == [c.module for c in consumers]
    G, C, yy = problem.gram_data()
    b = problem.block

    # explicit per-consumer problems, on the user's model
    inputs = explicit_inputs(model, [c.module for c in consumers], data)
    explicit = []
    for c in consumers:
        mod = model.get_submodule(c.module)
        check_unfold(mod, inputs[c.module])
        Bfull = explicit_features(mod, inputs[c.module])
        gcols = unit_columns(mod, c.units, range(group.units))
        Y = Bfull[:, gcols] @ weight_columns(mod)[gcols]  # what the group contributes to the layer
        explicit.append((c, mod, Bfull, Y))
    assert abs(yy - sum(float(Y.square().sum()) for *_, Y in explicit)) <= 1e-9 * yy

    rng = np.random.default_rng(0)
    subsets = [sorted(rng.choice(group.units, size=s, replace=False).tolist()) for s in (1, 3, group.units // 2)]
    subsets += [rng.permutation(group.units)[:group.units - 1].tolist(), list(range(group.units))]
    before = state_snapshot(gm)
    for S in subsets:
        W = least_squares_weights(G, C, S, b)
        value = yy - float((C[block_index(S, b)] * W).sum())
        residual, solutions = 0.0, []
        for c, mod, Bfull, Y in explicit:
            BS = Bfull[:, unit_columns(mod, c.units, S)]
            sol = lstsq(BS, Y)
            residual += float((Y - BS @ sol).square().sum())
            solutions.append(sol)
        assert value == pytest.approx(residual, rel=1e-6, abs=1e-9 * yy), S

        # (b) GroupProblem.write scatters each consumer's own solution
        gm.load_state_dict(before)
        problem.write(S, W)
        after = gm.state_dict()
        touched = {c.weight for c in consumers}
        for k in before:
            if k not in touched:
                assert torch.equal(after[k], before[k]), f"{k} changed"
        for (c, mod, _, _), sol in zip(explicit, solutions):
            new = after[c.weight].reshape(mod.weight.shape[0], -1)
            old = before[c.weight].reshape(mod.weight.shape[0], -1)
            kept_cols = unit_columns(mod, c.units, S)
            removed = [u for u in range(group.units) if u not in S]
            removed_cols = unit_columns(mod, c.units, removed)
            foreign = np.setdiff1d(np.arange(new.shape[1]), kept_cols + removed_cols)
            torch.testing.assert_close(new[:, kept_cols].double(), sol.t(), rtol=1e-5,
                                       atol=1e-6 * float(sol.abs().max()))
            assert not new[:, removed_cols].any()
            assert torch.equal(new[:, foreign], old[:, foreign])
            if case == "catnet" and c.module == "c":
                assert foreign.size == 4 * 9  # b's channels: untouched
    gm.load_state_dict(before)


# ---------------------------------------------------------------- 2. LayerInChange == explicit least squares

def test_layer_variant_is_explicit_least_squares(lenet, calib, fashion):
    x = fashion[0][:1]
    res = fxprune.compile(lenet, x, "submodular", 0.5, variant="layer", data=calib, progress=False)
    graph = res.graph
    inputs = explicit_inputs(lenet, ["conv2", "fc1"], calib)
    for gid, reader, reader_group in [("conv1", "conv2", "conv2"), ("conv2", "fc1", "fc1")]:
        group = graph.group(gid)
        (c,) = group_consumers(graph, group).consumers
        assert c.module == reader
        mod = lenet.get_submodule(reader)
        B = explicit_features(mod, inputs[reader])
        gcols = unit_columns(mod, c.units, range(group.units))
        Y = B[:, gcols] @ weight_columns(mod)[gcols]
        k = group.units - group.units // 2
        naive = reweighted_selection(B[:, gcols], Y, k, block=len(gcols) // group.units)
        assert res.plan[gid] == sorted(naive.kept)

        kept = res.plan[gid]
        sol = lstsq(B[:, unit_columns(mod, c.units, kept)], Y)  # (kept cols, outputs)
        new = res.module.get_submodule(reader).weight.detach().double()
        new = new.reshape(new.shape[0], -1)
        expect = sol.t()[res.plan[reader_group]]  # the reader's own outputs are pruned too
        assert new.shape == expect.shape
        torch.testing.assert_close(new, expect, rtol=1e-5, atol=1e-5 * float(expect.abs().max()))
        original = weight_columns(mod)[unit_columns(mod, c.units, kept)].t()[res.plan[reader_group]]
        assert (new - original).abs().max() > 1e-3  # really reweighted


class InplaceNet(nn.Module):
    """``b`` reads ``a`` before an in-place ReLU rewrites it; ``c`` reads it after."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 4, 3, padding=1)
        self.c = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        a = self.a(x)
        b = self.b(a)
        a = F.relu(a, inplace=True)
        return self.fc(b.mean((2, 3)) + self.c(a).mean((2, 3)))


@pytest.mark.parametrize("variant", ["layer", "asym"])
def test_features_are_taken_before_later_in_place_ops(variant):
    """Regression: hooked consumer inputs were kept by reference, so an in-place op after the
    consumer changed its features before the Grams were accumulated."""
    torch.manual_seed(0)
    model = InplaceNet().eval()
    data = [torch.randn(32, 1, 8, 8)]
    res = fxprune.compile(model, data[0][:1], "submodular", 0.5, variant=variant, data=data, groups=("a",),
                          progress=False)
    kept = res.plan["a"]
    assert len(kept) == 3
    inputs = explicit_inputs(model, ["b", "c"], data)
    assert (inputs["b"] < 0).any() and not (inputs["c"] < 0).any()
    for name in ("b", "c"):
        mod = model.get_submodule(name)
        B = explicit_features(mod, inputs[name])
        sol = lstsq(B[:, unit_columns(mod, np.arange(6), kept)], B @ weight_columns(mod))
        new = res.module.get_submodule(name).weight.detach().double().reshape(4, -1)
        torch.testing.assert_close(new, sol.t(), rtol=1e-5, atol=1e-5 * float(sol.abs().max()))


# ---------------------------------------------------------------- 3. sequential variants vs a naive loop

def naive_sequential(model: nn.Module, x: torch.Tensor, data, gids, variant: str, reweight: bool = True,
                     sparsity: float = 0.5):
    """SeqInChange / AsymInChange by definition: for every group in reading order, full forwards
    of the partly pruned model (B) and of the original (A), explicit greedy, write, zero."""
    graph = fxprune.analyze(model, x)
    original = copy.deepcopy(model).eval()
    work = copy.deepcopy(model).eval()
    position = {n.name: i for i, n in enumerate(graph.gm.graph.nodes)}
    csets = {gid: group_consumers(graph, graph.group(gid)) for gid in gids}
    plan = {}
    for gid in sorted(gids, key=lambda g: min(position[c.node] for c in csets[g].consumers)):
        group = graph.group(gid)
        (c,) = csets[gid].consumers
        mod = work.get_submodule(c.module)
        gcols = unit_columns(mod, c.units, range(group.units))
        B = explicit_features(mod, explicit_inputs(work, [c.module], data)[c.module])[:, gcols]
        A = explicit_features(mod, explicit_inputs(original, [c.module], data)[c.module])[:, gcols] \
            if variant == "asym" else B
        Y = A @ weight_columns(mod)[gcols]
        sel = reweighted_selection(B, Y, group.units - int(sparsity * group.units), block=len(gcols) // group.units)
        if reweight:
            with torch.no_grad():
                flat = mod.weight.view(mod.weight.shape[0], -1)
                flat[:, gcols] = 0.0
                flat[:, unit_columns(mod, c.units, sel.kept)] = sel.weights.t().to(flat.dtype)
        zero_removed_produce(work, group, sel.kept)
        plan[gid] = sorted(sel.kept)
    return plan, work


@pytest.mark.parametrize("case", ["lenet-asym", "lenet-seq", "resnet20-asym", "resnet20-seq",
                                  "lenet-seq-noreweight", "resnet20-asym-noreweight"])
def test_sequential_variants_match_naive(case, lenet, resnet, calib, fashion):
    name, variant, *rest = case.split("-")
    reweight = not rest
    if name == "lenet":
        model, data = lenet, [(b[0][:64], b[1][:64]) for b in calib]
        gids = [g.id for g in fxprune.analyze(model, data[0][0][:1]).prunable_groups]
    else:
        gen = torch.Generator().manual_seed(2)
        model, data = resnet, [torch.randn(6, 1, 28, 28, generator=gen) for _ in range(2)]
        gids = [g.id for g in fxprune.analyze(model, data[0][:1]).prunable_groups
                if g.id.endswith(".conv1") and g.id != "conv1"]
        assert len(gids) == 9
    x = (data[0][0] if name == "lenet" else data[0])[:1]
    before = state_snapshot(model)
    work = run_method(model, x, Submodular(variant=variant, reweight=reweight, data=data, groups=tuple(gids),
                                           progress=False))
    plan = state_of(work).plan
    naive_plan, naive_work = naive_sequential(model, x, data, gids, variant, reweight)
    assert plan == naive_plan
    assert_state_close(work.state_dict(), naive_work.state_dict(), rtol=1e-4)
    assert_same_state(before, model)


def test_seq_and_asym_differ_from_layer(lenet, calib, fashion):
    """The sequential variants see the earlier pruning: their plans are not the layer-wise one."""
    x = fashion[0][:1]
    plans = {v: fxprune.compile(lenet, x, "submodular", 0.5, variant=v, data=calib, progress=False).plan
             for v in ("layer", "seq", "asym")}
    assert plans["layer"]["conv1"] == plans["seq"]["conv1"] == plans["asym"]["conv1"]  # first group: same data
    assert plans["layer"] != plans["asym"] and plans["layer"] != plans["seq"]


# ---------------------------------------------------------------- 4. rewrite == mask after reweighting

@pytest.mark.parametrize("case", ["lenet-asym", "resnet20-asym", "resnet20-layer"])
def test_compiled_equals_work_model_and_mask(case, lenet, resnet, calib, fashion):
    name, variant = case.split("-")
    if name == "lenet":
        model, data, xs = lenet, calib, fashion[0][256:320]
    else:
        gen = torch.Generator().manual_seed(3)
        model, data = resnet, [torch.randn(6, 1, 28, 28, generator=gen) for _ in range(2)]
        xs = torch.randn(8, 1, 28, 28, generator=gen)
    x = xs[:1]
    res = fxprune.compile(model, x, "submodular", 0.5, variant=variant, data=data, progress=False)
    assert res.report.validation and res.report.validation.startswith("onnx ok")
    work = run_method(model, x, Submodular(variant=variant, data=data, progress=False))
    state = state_of(work)
    assert state.plan == res.plan
    graph = state.channel_graph
    # the work model carries the reweighted values and zero produce slices for removed units
    tensors = dict(work.named_parameters()) | dict(work.named_buffers())
    for gid, kept in res.plan.items():
        removed = sorted(set(range(graph.group(gid).units)) - set(kept))
        for s in graph.group(gid).slices(removed) if removed else []:
            if s.role == "produce":
                assert not tensors[s.name].index_select(s.dim, s.index).any(), f"{gid}: {s.name} not zeroed"
    masked = fxprune.mask(work, graph, res.plan)
    with torch.no_grad():
        out, want_work, want_mask = res.module(xs), work(xs), masked(xs)
        plain = model(xs)
    scale = float(want_work.abs().max())
    torch.testing.assert_close(out, want_work, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(out, want_mask, rtol=1e-4, atol=1e-5 * scale)
    assert (out - plain).abs().max() > 1e-4  # it was pruned


# ---------------------------------------------------------------- 5. reweighting helps

def test_reweighting_improves_accuracy(lenet, calib, fashion):
    """Measured (256 calibration images, sparsity 0.5, 500 bundled images): asym 85.4% with
    reweighting vs 21.4% without; layer_weightnorm 79.6% reweighted vs 25.2% plain (= l1)."""
    images, labels = fashion
    x = images[:1]
    acc = {}
    for method, reweight in [("submodular", True), ("submodular", False),
                             ("layer_weightnorm", True), ("layer_weightnorm", False)]:
        res = fxprune.compile(lenet, x, method, 0.5, data=calib, reweight=reweight, progress=False)
        acc[method, reweight] = accuracy(res.module, images, labels)
    assert acc["submodular", True] > acc["submodular", False] + 0.3
    assert acc["layer_weightnorm", True] > acc["layer_weightnorm", False] + 0.3
    assert acc["submodular", True] > 0.75


# ---------------------------------------------------------------- 6. budgets

@pytest.mark.parametrize("budget,allocation", [("params", "uniform"), ("params", "accuracy"),
                                               ("macs", "uniform"), ("macs", "accuracy")])
def test_compression_budgets(budget, allocation, lenet, calib, fashion):
    x = fashion[0][:1]
    res = fxprune.compile(lenet, x, "submodular", compression=2, budget=budget, allocation=allocation,
                          data=calib, verification=calib, progress=False)
    ratio = res.report.params_ratio if budget == "params" else res.report.macs_ratio
    assert ratio <= 0.5
    assert ratio > 0.3  # not pruned far beyond the target
    notes = state_of(res.module).notes
    if allocation == "accuracy":
        assert any("tau=" in n and "compression 2" in n for n in notes), notes
    else:
        assert not any("tau=" in n for n in notes)
        # one keep fraction f for every group: k = ceil(f * units)
        units = {g.id: g.units for g in res.graph.prunable_groups}
        lo = max((len(k) - 1) / units[g] for g, k in res.plan.items())
        hi = min(len(k) / units[g] for g, k in res.plan.items())
        assert lo < hi + 1e-12, res.plan


@pytest.mark.parametrize("method", ["actgrad", "random"])
def test_global_methods_meet_compression_by_one_ranking(method, lenet, calib, fashion):
    from fxprune.passes import METHODS

    x = fashion[0][:1]
    res = fxprune.compile(lenet, x, method, compression=2, data=calib, seed=4, progress=False)
    assert res.report.params_ratio <= 0.5
    _, ctx = context(lenet, x, METHODS[method](compression=2, data=calib, seed=4, progress=False))
    scores = ctx.cached_scores(ctx.method)
    kept_scores, removed_scores = [], []
    for gid, kept in res.plan.items():
        s = np.asarray(scores[gid])
        order = np.lexsort((np.arange(s.size), -s))
        assert kept == sorted(order[:len(kept)].tolist()), gid  # each group keeps its top units
        kept_scores += s[order[1:len(kept)]].tolist()  # a group's best unit is never removed
        removed_scores += s[order[len(kept):]].tolist()
    assert removed_scores and max(removed_scores) <= min(kept_scores)  # one threshold for all groups
    assert len({len(k) / len(scores[g]) for g, k in res.plan.items()}) > 1  # not uniform


@pytest.mark.parametrize("method,options", [("submodular", {"allocation": "uniform"}),
                                            ("submodular", {"allocation": "accuracy"}),
                                            ("random", {}), ("actgrad", {})])
def test_unreachable_compression_raises(method, options, lenet, calib, fashion):
    before = state_snapshot(lenet)
    with pytest.raises(InputError, match="cannot be reached"):
        fxprune.compile(lenet, fashion[0][:1], method, compression=1e6, data=calib, verification=calib,
                        progress=False, **options)
    assert_same_state(before, lenet)


# ---------------------------------------------------------------- 7. bad input

class TwoReaders(nn.Module):
    """Group ``c`` is read by a grouped conv and ``h`` is followed by a LayerNorm: both left whole;
    ``a`` (read by ``c`` after a depthwise conv) and ``g`` (read by ``d``) are plain."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c = nn.Conv2d(8, 16, 3, padding=1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.d = nn.Conv2d(16, 12, 3, padding=1)
        self.h = nn.Linear(12, 20)
        self.norm = nn.LayerNorm(20)
        self.fc = nn.Linear(20, 10)

    def forward(self, x):
        x = F.relu(self.dw(F.relu(self.a(x))))
        x = F.relu(self.g(F.relu(self.c(x))))
        x = F.relu(self.d(x)).mean((2, 3))
        return self.fc(self.norm(F.relu(self.h(x))))


def test_unsupported_readers_are_skipped_and_noted():
    torch.manual_seed(0)
    model = TwoReaders().train()
    before = state_snapshot(model)
    x = torch.randn(1, 1, 12, 12)
    data = [torch.randn(16, 1, 12, 12) for _ in range(2)]
    res = fxprune.compile(model, x, "submodular", 0.5, data=data, progress=False)
    notes = state_of(res.module).notes
    assert any("group c left whole" in n and "grouped conv" in n for n in notes), notes
    assert any("group h left whole" in n and "normalisation" in n for n in notes), notes
    assert set(res.plan) == {"a", "g", "d"}
    assert {g.id: g.kept for g in res.report.groups if g.kept < g.units} == {"a": 4, "g": 4, "d": 6}
    assert res.report.validation.startswith("onnx ok")
    assert_same_state(before, model)
    assert model.training and res.module.training
    # without reweighting nor features, a magnitude baseline still prunes them
    res = fxprune.compile(model, x, "layer_weightnorm", 0.5, progress=False)
    assert {"c", "h"} <= set(res.plan)
    assert_same_state(before, model)


@pytest.mark.parametrize("options,match", [
    ({"data": []}, "is empty"),
    ({"data": [torch.randn(4, 3, 28, 28)]}, r"shape \(4, 3, 28, 28\).*example input"),
    ({"data": [(torch.randn(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)),
               (torch.full((4, 1, 28, 28), float("nan")), torch.zeros(4, dtype=torch.long))]},
     "batch 1 contains NaN"),
    ({"data": [torch.zeros(0, 1, 28, 28)]}, "is empty"),
    ({}, "data is needed"),
    ({"variant": "greedy"}, "variant must be one of"),
    ({"epsilon": 1.0}, r"epsilon must be in \[0, 1\)"),
    ({"epsilon": -0.1}, r"epsilon must be in \[0, 1\)"),
    ({"scope": "global"}, "scope='local'"),
    ({"groups": ("conv2", "conv9")}, "groups not in the model: conv9"),
    ({"compression": 0.5}, "compression must be"),
    ({"budget": "flops"}, "budget must be one of"),
    ({"allocation": "greedy"}, "allocation must be one of"),
    ({"compression": 2, "allocation": "accuracy"}, "verification data"),
])
def test_bad_input_raises_and_leaves_model_unchanged(options, match, lenet, calib, fashion):
    opts = dict(options) if match == "data is needed" else {"data": calib, **options}
    model = copy.deepcopy(lenet).train()
    before = state_snapshot(model)
    with pytest.raises(InputError, match=match):
        fxprune.compile(model, fashion[0][:1], "submodular", 0.5, progress=False, **opts)
    assert_same_state(before, model)
    assert model.training


def test_nan_features_raise(lenet, fashion):
    """Finite inputs whose features overflow are reported as bad calibration data, not as a crash."""
    model = copy.deepcopy(lenet)
    before = state_snapshot(model)
    with pytest.raises(InputError, match="NaN/inf"):
        fxprune.compile(model, fashion[0][:1], "submodular", 0.5, data=[fashion[0][:8] * 1e38], progress=False)
    assert_same_state(before, model)


def test_user_model_unchanged_after_every_variant(resnet, fashion):
    model = copy.deepcopy(resnet).train()
    before = state_snapshot(model)
    gen = torch.Generator().manual_seed(5)
    data = [torch.randn(4, 1, 28, 28, generator=gen)]
    for variant, reweight in (("layer", True), ("seq", False), ("asym", True)):
        res = fxprune.compile(model, torch.randn(2, 1, 28, 28, generator=gen), "submodular", 0.5,
                              variant=variant, reweight=reweight, data=data, validate=False, progress=False)
        assert res.module.training
        assert_same_state(before, model)
        assert model.training


# ---------------------------------------------------------------- 8. Stochastic-Greedy through the pass

def test_stochastic_greedy_reproducible_and_within_budget(lenet, calib, fashion):
    x = fashion[0][:1]

    def run(seed, **kw):
        return fxprune.compile(lenet, x, "submodular", 0.5, epsilon=0.5, seed=seed, data=calib, progress=False, **kw)

    first, again = run(0), run(0)
    assert first.plan == again.plan
    for k, v in first.module.state_dict().items():
        assert torch.equal(v, again.module.state_dict()[k])
    plans = [first.plan] + [run(s).plan for s in (1, 2, 3)]
    assert len({repr(sorted(p.items())) for p in plans}) > 1
    greedy = fxprune.compile(lenet, x, "submodular", 0.5, data=calib, progress=False).plan
    assert any(p != greedy for p in plans)
    units = {g.id: g.units for g in first.graph.prunable_groups}
    for plan in plans:
        assert {g: len(k) for g, k in plan.items()} == {g: u - u // 2 for g, u in units.items()}
    res = run(7, compression=2, allocation="uniform")
    assert res.report.params_ratio <= 0.5
    assert res.plan == run(7, compression=2, allocation="uniform").plan
