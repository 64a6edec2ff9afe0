"""Per-layer budget selection (paper Sec. 5.2) and the global-ranking budget."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import fxprune
import fxprune.models as zoo
from fxprune.budget import _top
from fxprune.cost import CostModel
from fxprune.errors import InputError
from fxprune.passes.submodular.layer_budget import (FRACTIONS, accuracy_curves, global_counts, keep_counts, monotone_envelope,
                                  select_budgets)
from fxprune.report import count_params


@dataclass
class FakeCost:
    """``fixed + sum_g weight_g * k_g`` (+ optional quadratic term), the CostModel interface."""

    units: dict
    weights: dict
    fixed: int = 100
    quadratic: dict | None = None

    def params(self, counts):
        k = {g: counts.get(g, u) for g, u in self.units.items()}
        q = sum(c * k[g] ** 2 for g, c in (self.quadratic or {}).items())
        return self.fixed + sum(self.weights[g] * k[g] for g in self.units) + q

    def macs(self, counts):
        return 2 * self.params(counts)

    @property
    def full_params(self):
        return self.params({})

    @property
    def full_macs(self):
        return self.macs({})


@dataclass
class FakeGroup:
    id: str
    units: int


def _curve(units: int, rng: np.random.Generator, noise: float = 0.05) -> list[tuple[int, float]]:
    ks = [k for k in keep_counts(units) if k < units]
    trend = 0.9 * (1 - np.exp(-5 * np.array(ks) / units))
    return [(k, float(a)) for k, a in zip(ks, trend + rng.normal(0, noise, len(ks)))]


# --- fractions, counts, curves --------------------------------------------------------
def test_fractions_and_keep_counts():
    assert FRACTIONS[:4] == (0.01, 0.05, 0.075, 0.1) and FRACTIONS[-1] == 1.0 and len(FRACTIONS) == 22
    assert keep_counts(20) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
    assert keep_counts(20, (0.15,)) == [3]  # 0.15 * 20 is 3.0000000000000004 in floating point
    assert keep_counts(6) == [1, 2, 3, 4, 5, 6]
    assert keep_counts(1) == [1] and keep_counts(0) == []
    for units in (7, 64, 512):
        ks = keep_counts(units)
        assert ks == sorted(set(ks)) and ks[0] >= 1 and ks[-1] == units
        for a in FRACTIONS:
            (k,) = keep_counts(units, (a,))
            assert k >= a * units - 1e-9 and (k == 1 or k - 1 < a * units - 1e-9)
    with pytest.raises(InputError):
        keep_counts(10, (0.0, 0.5))


def test_accuracy_curves_skips_full_count():
    groups = [FakeGroup("a", 10), FakeGroup("b", 3), FakeGroup("c", 1)]
    calls = []

    def evaluate(group, k):
        calls.append((group.id, k))
        return k / group.units

    curves = accuracy_curves(groups, evaluate, progress=False)
    assert curves["a"] == [(k, k / 10) for k in range(1, 10)]
    assert curves["b"] == [(1, 1 / 3), (2, 2 / 3)] and curves["c"] == []
    assert all(k < next(g.units for g in groups if g.id == gid) for gid, k in calls)
    assert len(calls) == len(set(calls)) == 11


# --- envelope ----------------------------------------------------------------------------
def test_envelope_examples():
    curve = [(1, 0.2), (2, 0.5), (3, 0.3), (4, 0.7), (5, 0.95), (6, 0.9)]
    assert monotone_envelope(curve, "lower") == [(1, 0.2), (2, 0.3), (3, 0.3), (4, 0.7), (5, 0.9), (6, 0.9)]
    env = monotone_envelope(curve)  # reference: cap at last, drop the dip at 3, interpolate
    assert [k for k, _ in env] == [1, 2, 3, 4, 5, 6]
    assert np.allclose([a for _, a in env], [0.2, 0.5, 0.6, 0.7, 0.9, 0.9])
    assert monotone_envelope([]) == []
    with pytest.raises(InputError):
        monotone_envelope(curve, "upper")


@pytest.mark.parametrize("seed", range(20))
def test_envelope_properties(seed):
    rng = np.random.default_rng(seed)
    ks = np.sort(rng.choice(np.arange(1, 100), size=rng.integers(1, 15), replace=False))
    raw = rng.uniform(0, 1, ks.size)
    curve = list(zip(ks.tolist(), raw.tolist()))
    for kind in ("interpolate", "lower"):
        env = np.array([a for _, a in monotone_envelope(curve, kind)])
        assert np.all(np.diff(env) >= -1e-12), kind
        assert env[-1] == pytest.approx(raw[-1])
    lower = np.array([a for _, a in monotone_envelope(curve, "lower")])
    assert np.all(lower <= raw + 1e-12)
    interp = np.array([a for _, a in monotone_envelope(curve, "interpolate")])
    capped = np.minimum(raw, raw[-1])
    assert np.all(interp >= capped - 1e-12) and np.all(interp <= raw[-1] + 1e-12)
    records = capped >= np.maximum.accumulate(capped)
    assert np.allclose(interp[records], capped[records])


# --- select_budgets ------------------------------------------------------------------------
def _brute_force_tau(curves, cost, target, original, kind="interpolate"):
    """Minimal tau over every candidate, choosing the smallest k with envelope >= original - tau."""
    envs = {g: monotone_envelope([p for p in c if p[0] < cost.units[g]] + [(cost.units[g], original)], kind)
            for g, c in curves.items()}
    budget = cost.full_params / target
    best = None
    for t in sorted({a for env in envs.values() for _, a in env}, reverse=True):
        counts = {g: next(k for k, a in env if a >= t) for g, env in envs.items()}
        if cost.params(counts) <= budget:
            best = (original - t, counts)
            break
    return best


@pytest.mark.parametrize("seed", range(8))
def test_select_budgets_minimal_tau_and_fits(seed):
    rng = np.random.default_rng(seed)
    units = {"a": 16, "b": 32, "c": 8, "d": 64}
    cost = FakeCost(units, {g: int(rng.integers(1, 50)) for g in units})
    curves = {g: _curve(u, rng) for g, u in units.items()}
    original = 0.9
    for target in (1.0, 1.3, 2.0, 4.0, 8.0):
        try:
            choice = select_budgets(curves, cost, target, original_accuracy=original)
        except InputError:
            smallest = {g: keep_counts(u)[0] for g, u in units.items()}
            assert cost.params(smallest) > cost.full_params / target
            continue
        tau, grid = _brute_force_tau(curves, cost, target, original)
        assert choice.tau == pytest.approx(tau) and choice.grid_counts == grid
        assert choice.cost == cost.params(choice.counts) <= cost.full_params / target
        assert choice.ratio == pytest.approx(cost.full_params / choice.cost) and choice.ratio >= target - 1e-12
        assert all(choice.counts[g] >= grid[g] for g in units)
        for g in units:  # leftover spent: no group can take one more unit
            if choice.counts[g] < units[g]:
                assert cost.params({**choice.counts, g: choice.counts[g] + 1}) > choice.budget
        if target == 1.0:
            assert choice.counts == units and choice.tau == 0


def test_select_budgets_small_case_by_exhaustion():
    """On two groups, no pair of grid counts with a smaller max-drop fits the budget."""
    units = {"a": 10, "b": 10}
    cost = FakeCost(units, {"a": 3, "b": 7}, fixed=10)
    curves = {"a": [(k, 0.5 + 0.04 * k) for k in range(1, 10)], "b": [(k, 0.1 * k) for k in range(1, 10)]}
    original = 0.95
    choice = select_budgets(curves, cost, 2.0, original_accuracy=original, leftover="none")
    envs = {g: dict(monotone_envelope(c + [(10, original)])) for g, c in curves.items()}
    feasible_drops = [
        max(original - envs["a"][ka], original - envs["b"][kb])
        for ka, kb in itertools.product(range(1, 11), repeat=2)
        if cost.params({"a": ka, "b": kb}) <= cost.full_params / 2
    ]
    assert choice.tau == pytest.approx(min(feasible_drops))
    assert choice.counts == choice.grid_counts


def test_leftover_with_nonlinear_cost_stays_within_budget():
    rng = np.random.default_rng(3)
    units = {"a": 40, "b": 40, "c": 12}
    cost = FakeCost(units, {"a": 5, "b": 1, "c": 9}, quadratic={"a": 2, "b": 3})
    curves = {g: _curve(u, rng) for g, u in units.items()}
    for target in (1.5, 2.5, 5.0):
        for measure in ("params", "macs"):
            choice = select_budgets(curves, cost, target, measure=measure, original_accuracy=0.9)
            assert choice.cost == getattr(cost, measure)(choice.counts) <= choice.budget
            assert choice.budget == pytest.approx(getattr(cost, f"full_{measure}") / target)


def test_leftover_order_is_largest_fraction_first():
    units = {"b": 10, "a": 10}
    cost = FakeCost(units, {"a": 1, "b": 1}, fixed=0)
    curves = {"b": [(k, 0.9 if k >= 2 else 0.1) for k in range(1, 10)],
              "a": [(k, 0.9 if k >= 5 else 0.1) for k in range(1, 10)]}
    choice = select_budgets(curves, cost, 2.0, original_accuracy=0.9)  # budget: 10 units
    assert choice.grid_counts == {"a": 5, "b": 2} and choice.tau == 0
    assert choice.counts == {"a": 8, "b": 2}  # the 3 units left go to a (kept fraction 0.5 > 0.2)
    none = select_budgets(curves, cost, 2.0, original_accuracy=0.9, leftover="none")
    assert none.counts == none.grid_counts == {"a": 5, "b": 2}


def test_select_budgets_errors():
    units = {"a": 10, "b": 10}
    cost = FakeCost(units, {"a": 1, "b": 1}, fixed=100)
    curves = {"a": [(1, 0.1), (5, 0.5)], "b": [(1, 0.1), (5, 0.5)]}
    with pytest.raises(InputError, match="ratio"):
        select_budgets(curves, cost, 0.5, original_accuracy=0.9)
    with pytest.raises(InputError, match="measure"):
        select_budgets(curves, cost, 2.0, measure="flops", original_accuracy=0.9)
    with pytest.raises(InputError, match=r"1\.176"):  # best reachable: 120 / 102
        select_budgets(curves, cost, 2.0, original_accuracy=0.9)
    with pytest.raises(InputError, match="unknown group"):
        select_budgets({"zz": [(1, 0.1)]}, cost, 1.05, original_accuracy=0.9)
    with pytest.raises(InputError, match="1..10"):
        select_budgets({"a": [(0, 0.1)]}, cost, 1.05, original_accuracy=0.9)
    with pytest.raises(InputError, match="leftover"):
        select_budgets(curves, cost, 1.05, original_accuracy=0.9, leftover="greedy")


def test_select_budgets_on_real_cost_model():
    model = zoo.get("lenet5", in_channels=1).eval()
    x = torch.randn(1, 1, 28, 28)
    graph = fxprune.analyze(model, (x,))
    cost = CostModel.build(graph, (x,))
    rng = np.random.default_rng(0)
    curves = {g.id: _curve(g.units, rng) for g in graph.prunable_groups}
    choice = select_budgets(curves, cost, 4.0, original_accuracy=0.9)
    plan = {gid: list(range(k)) for gid, k in choice.counts.items()}
    assert count_params(fxprune.rewrite(model, graph, plan)) == choice.cost <= cost.full_params / 4


# --- global_counts ----------------------------------------------------------------------------
@pytest.mark.parametrize("measure", ["params", "macs"])
def test_global_counts_resnet20(measure):
    model = zoo.get("resnet20", in_channels=1).eval()
    x = torch.randn(1, 1, 28, 28)
    graph = fxprune.analyze(model, (x,))
    cost = CostModel.build(graph, (x,))
    rng = np.random.default_rng(0)
    scores = {g.id: rng.random(g.units) for g in graph.prunable_groups}
    for target in (1.0, 2.0, 4.0):
        counts = global_counts(scores, cost, target, measure)
        assert all(1 <= counts[g.id] <= g.units for g in graph.prunable_groups)
        assert cost.cost(counts, measure) <= cost.full(measure) / target
        if target == 1.0:
            assert counts == {g.id: g.units for g in graph.prunable_groups}
    plan = {gid: _top(scores[gid], k) for gid, k in counts.items()}
    pruned = fxprune.rewrite(model, graph, plan)
    assert cost.params(counts) == count_params(pruned)


def test_global_counts_minimal_and_ordered():
    units = {"a": 4, "b": 3}
    cost = FakeCost(units, {"a": 2, "b": 5}, fixed=0)
    scores = {"a": np.array([0.1, 0.9, 0.4, 0.2]), "b": np.array([0.3, 0.05, 0.8])}
    # removal order (never a group's best): b1 0.05, a0 0.1, a3 0.2, b0 0.3, a2 0.4
    expected = [{"a": 4, "b": 3}, {"a": 4, "b": 2}, {"a": 3, "b": 2}, {"a": 2, "b": 2}, {"a": 2, "b": 1},
                {"a": 1, "b": 1}]
    for target_cost in range(cost.full_params, 6, -1):
        counts = global_counts(scores, cost, cost.full_params / target_cost)
        first_fit = next(c for c in expected if cost.params(c) <= target_cost)
        assert counts == first_fit
    with pytest.raises(InputError, match="ratio"):
        global_counts(scores, cost, cost.full_params / 6)


def test_global_counts_errors():
    cost = FakeCost({"a": 3}, {"a": 1})
    with pytest.raises(InputError):
        global_counts({"a": np.ones(2)}, cost, 1.0)
    with pytest.raises(InputError):
        global_counts({"b": np.ones(3)}, cost, 1.0)
    with pytest.raises(InputError):
        global_counts({"a": np.ones(3)}, cost, 0.9)
    with pytest.raises(InputError):
        global_counts({"a": np.array([1.0, np.nan, 0.0])}, cost, 1.0)
    with pytest.raises(InputError):
        global_counts({"a": np.ones(3)}, cost, 1.0, measure="latency")
