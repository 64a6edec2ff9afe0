"""Per-layer budget selection (the paper's Sec. 5.2, after Kuzmin et al. 2019 Sec. 3.4.1).

Given a target compression ratio ``c = full cost / pruned cost`` (in params or
MACs, see ``fxprune.cost.CostModel``), choose how many units every group keeps:

1. ``accuracy_curves``: for every group and every fraction ``alpha`` in
   ``FRACTIONS``, the method prunes *only that group* to ``k = keep_counts(...)``
   units and measures accuracy on a verification set (``evaluate(group, k)``).
2. ``monotone_envelope`` makes each curve non-decreasing in ``k``.
3. ``select_budgets`` finds the smallest accuracy drop ``tau`` such that giving
   every group the smallest ``k`` whose envelope accuracy is at least
   ``original - tau`` fits the budget ``full / c``; then spends what is left of the
   budget the way the reference code does (fill groups, largest kept fraction first).

``global_counts`` is the budget of global methods (one ranking of all units).
Nothing here knows how a group is pruned: methods supply ``evaluate`` or scores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from fxprune.distributed import agree
from fxprune.errors import InputError

__all__ = [
    "FRACTIONS", "BudgetChoice", "accuracy_curves", "global_counts", "keep_counts",
    "monotone_envelope", "select_budgets",
]

#: Kept fractions tried per group (the paper's App. G): 0.01, 0.05, 0.075, 0.1, 0.15, ..., 0.95, 1.0.
FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.075) + tuple(round(0.05 * i, 2) for i in range(2, 21))

Curve = list[tuple[int, float]]


class CostLike(Protocol):
    """What the selection needs of a cost model (``fxprune.cost.CostModel`` is one)."""

    units: Mapping[str, int]
    full_params: int
    full_macs: int

    def params(self, counts: Mapping[str, int]) -> int: ...

    def macs(self, counts: Mapping[str, int]) -> int: ...


class GroupLike(Protocol):
    id: str
    units: int


@dataclass(frozen=True)
class BudgetChoice:
    """Result of ``select_budgets``.

    ``counts``: kept units per group of the curves (after spending the leftover);
    ``grid_counts``: the counts the binary search chose (envelope grid points);
    ``tau``: the minimal accuracy drop, ``threshold = original_accuracy - tau``;
    ``cost``/``ratio``: cost of ``counts`` and ``full / cost``; ``budget = full / target_ratio``.
    """

    counts: dict[str, int]
    grid_counts: dict[str, int]
    tau: float
    threshold: float
    cost: int
    ratio: float
    budget: float
    target_ratio: float
    measure: str


# --- curves -----------------------------------------------------------------------
def keep_counts(units: int, fractions: Sequence[float] = FRACTIONS) -> list[int]:
    """Sorted distinct kept counts ``k = min(units, max(1, ceil(alpha * units)))``.

    Rounding up (the reference floors, ``int(alpha * n)``, then clamps to 1) keeps
    at least the fraction ``alpha`` and never zero units; ``alpha * units`` is
    rounded to 9 decimals first so that e.g. ``0.15 * 20`` gives 3, not 4.
    """
    if any(not 0.0 < a <= 1.0 for a in fractions):
        raise InputError(f"fractions must be in (0, 1], got {list(fractions)}")
    if units < 1:
        return []
    return sorted({min(units, max(1, math.ceil(round(a * units, 9)))) for a in fractions})


def accuracy_curves(groups: Sequence[GroupLike], evaluate: Callable[[GroupLike, int], float],
                    fractions: Sequence[float] = FRACTIONS, progress: bool = True) -> dict[str, Curve]:
    """``{gid: [(k, accuracy), ...]}`` for every ``k < units`` of ``keep_counts``.

    ``evaluate(group, k)`` prunes only ``group`` to ``k`` units and returns the
    verification accuracy. ``k == units`` is not evaluated: it is the original
    accuracy, which ``select_budgets`` adds. A tqdm bar counts the evaluations.
    """
    todo = [(g, k) for g in groups for k in keep_counts(g.units, fractions) if k < g.units]
    curves: dict[str, Curve] = {g.id: [] for g in groups}
    with tqdm(total=len(todo), desc="per-layer accuracy", unit="eval", disable=not progress) as bar:
        for group, k in todo:
            bar.set_postfix_str(f"{group.id} k={k}", refresh=False)
            curves[group.id].append((k, float(evaluate(group, k))))
            bar.update()
    return curves


def monotone_envelope(curve: Sequence[tuple[int, float]], kind: str = "interpolate") -> Curve:
    """A non-decreasing version of ``curve`` (points ``(k, accuracy)``) at the same ``k``.

    The last point (largest ``k``, normally the unpruned count) is the reference.

    - ``"interpolate"`` (the reference's ``monotone_envelope``): values are first
      capped at the last point's; points below an earlier point are dropped and
      replaced by linear interpolation (in ``k``) between the kept neighbours.
      Guarantees ``min(raw, last) <= env <= last``, and ``env == raw`` at every
      point that is at least every earlier point. Optimistic at a dip.
    - ``"lower"``: ``env(k_i) = min(raw(k_j) for j >= i)``, the largest
      non-decreasing curve below the points: ``env <= raw``, so a ``k`` chosen
      with it has measured accuracy at least the threshold (conservative).
    """
    points = sorted((int(k), float(a)) for k, a in curve)
    if not points:
        return []
    ks = np.array([p[0] for p in points], dtype=np.float64)
    acc = np.array([p[1] for p in points])
    if kind == "lower":
        env = np.minimum.accumulate(acc[::-1])[::-1]
    elif kind == "interpolate":
        env = _interpolated(ks, np.minimum(acc, acc[-1]))
    else:
        raise InputError(f"envelope kind must be 'interpolate' or 'lower', got {kind!r}")
    return [(p[0], float(e)) for p, e in zip(points, env)]


def _interpolated(ks: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Keep running-record points, interpolate the others (last point is a record: it is the cap)."""
    record = acc >= np.maximum.accumulate(acc)
    return np.interp(ks, ks[record], acc[record])


# --- selection --------------------------------------------------------------------
def select_budgets(curves: Mapping[str, Sequence[tuple[int, float]]], cost: CostLike, target_ratio: float, *,
                   measure: str = "params", original_accuracy: float, envelope: str = "interpolate",
                   leftover: str = "reference") -> BudgetChoice:
    """Per-group kept counts meeting ``cost <= full / target_ratio`` with the least accuracy drop.

    Needs: ``curves`` from ``accuracy_curves`` (groups of ``cost.units``; groups
    absent keep all units), ``original_accuracy`` of the unpruned model.
    Guarantees: ``tau`` is the minimal drop such that choosing, per group, the
    smallest evaluated ``k`` with envelope accuracy ``>= original - tau`` fits the
    budget (exact: the search runs over the finitely many envelope values);
    ``leftover="reference"`` then raises groups, largest kept fraction first, each
    as far as the budget allows (``"none"``: no raise). The result always fits.
    ``InputError`` for ``target_ratio < 1``, an unknown measure, unknown groups, or a
    target that even every group at its smallest ``k`` cannot reach (the message
    gives the best ratio reachable).
    """
    cost_of, full = _cost_function(cost, measure)
    budget = full / _check_ratio(target_ratio)
    agree(repr((sorted((g, list(c)) for g, c in curves.items()), float(original_accuracy))),
          "the per-layer accuracy curves", "give every rank the same verification data "
          "(verification accuracy is not summed over the ranks)")
    envs = {gid: _full_envelope(gid, c, cost, original_accuracy, envelope) for gid, c in curves.items()}

    smallest = {gid: env[0][0] for gid, env in envs.items()}
    if cost_of(smallest) > budget:
        best = full / max(cost_of(smallest), 1)
        raise InputError(f"target ratio {target_ratio} ({measure}) cannot be reached: with every group at its "
                         f"smallest kept count the ratio is {best:.4g}")
    threshold = _best_threshold(envs, cost_of, budget) if envs else float(original_accuracy)
    grid = _choose(envs, threshold)
    counts = _spend_leftover(grid, cost, cost_of, budget, leftover)
    spent = cost_of(counts)
    return BudgetChoice(counts=counts, grid_counts=grid, tau=max(0.0, original_accuracy - threshold),
                        threshold=threshold, cost=spent, ratio=full / spent if spent else math.inf,
                        budget=budget, target_ratio=float(target_ratio), measure=measure)


def _full_envelope(gid: str, curve: Sequence[tuple[int, float]], cost: CostLike, original: float,
                   kind: str) -> Curve:
    """The envelope of ``curve`` with the unpruned point ``(units, original)`` appended."""
    if gid not in cost.units:
        raise InputError(f"curve for unknown group {gid!r}")
    units = cost.units[gid]
    bad = [k for k, _ in curve if not 1 <= k <= units]
    if bad:
        raise InputError(f"group {gid!r}: curve counts must be in 1..{units}, got {bad[:5]}")
    points = [(k, a) for k, a in curve if k < units] + [(units, original)]
    return monotone_envelope(points, kind)


def _choose(envs: Mapping[str, Curve], threshold: float) -> dict[str, int]:
    """Per group, the smallest ``k`` whose envelope accuracy is ``>= threshold`` (else the largest)."""
    return {gid: next((k for k, a in env if a >= threshold), env[-1][0]) for gid, env in envs.items()}


def _best_threshold(envs: Mapping[str, Curve], cost_of: Callable, budget: float) -> float:
    """The largest envelope accuracy whose ``_choose`` fits the budget (its lowest always fits)."""
    values = sorted({a for env in envs.values() for _, a in env})
    lo, hi = 0, len(values) - 1  # values[lo] fits (the caller checked the smallest counts)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost_of(_choose(envs, values[mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return values[lo]


def _spend_leftover(counts: dict[str, int], cost: CostLike, cost_of: Callable, budget: float,
                    leftover: str) -> dict[str, int]:
    """Raise groups, largest kept fraction first (ties: curve order), each as far as the budget allows.

    The reference adds ``floor(remaining / cost of one unit)`` units; searching
    the largest feasible count instead stays exact when a group's cost is not
    linear in its count (a conv whose input and output are in the same group).
    """
    if leftover == "none":
        return dict(counts)
    if leftover != "reference":
        raise InputError(f"leftover must be 'reference' or 'none', got {leftover!r}")
    out = dict(counts)
    order = sorted(out, key=lambda g: -out[g] / cost.units[g])  # stable sort keeps curve order on ties
    for gid in order:
        lo, hi = out[gid], cost.units[gid]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if cost_of({**out, gid: mid}) <= budget:
                lo = mid
            else:
                hi = mid - 1
        out[gid] = lo
    return out


# --- global methods ---------------------------------------------------------------
def global_counts(scores: Mapping[str, np.ndarray], cost: CostLike, target_ratio: float,
                  measure: str = "params") -> dict[str, int]:
    """Kept counts when all units of all groups compete on one score scale.

    Needs: ``scores[gid]`` with one (already per-layer normalised) score per unit.
    Units are removed lowest score first (ties: higher index first, as
    ``fxprune.budget`` keeps lower indices), never a group's best unit; the number
    removed is the smallest (binary search) whose cost fits ``full / target_ratio``.
    Guarantees: every group keeps >= 1 unit, ``cost <= budget``, and the kept units
    are each group's top-``count`` by score. ``InputError`` when removing every
    removable unit still misses the target (the message gives the best ratio).
    """
    cost_of, full = _cost_function(cost, measure)
    budget = full / _check_ratio(target_ratio)
    gids = list(scores)
    owner, _ = _removal_order(gids, scores, cost)
    units = np.array([cost.units[g] for g in gids])

    def counts(n: int) -> dict[str, int]:
        removed = np.bincount(owner[:n], minlength=len(gids))
        return {g: int(u - r) for g, u, r in zip(gids, units, removed)}

    if cost_of(counts(owner.size)) > budget:
        best = full / max(cost_of(counts(owner.size)), 1)
        raise InputError(f"target ratio {target_ratio} ({measure}) cannot be reached: keeping one unit per "
                         f"group gives ratio {best:.4g}")
    lo, hi = 0, owner.size
    while lo < hi:
        mid = (lo + hi) // 2
        if cost_of(counts(mid)) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return counts(lo)


def _removal_order(gids: list[str], scores: Mapping[str, np.ndarray], cost: CostLike) -> tuple[np.ndarray, np.ndarray]:
    """(group position, unit index) of every removable unit, lowest score first."""
    owner, index, value = [], [], []
    for gi, gid in enumerate(gids):
        if gid not in cost.units:
            raise InputError(f"scores for unknown group {gid!r}")
        s = np.asarray(scores[gid], dtype=np.float64)
        if s.shape != (cost.units[gid],) or not np.isfinite(s).all():
            raise InputError(f"group {gid!r}: expected {cost.units[gid]} finite scores, got shape {s.shape}")
        keep_first = np.lexsort((np.arange(s.size), -s))[:1]  # the unit fxprune.budget keeps first
        rest = np.setdiff1d(np.arange(s.size), keep_first)
        owner.append(np.full(rest.size, gi))
        index.append(rest)
        value.append(s[rest])
    owner_a, index_a, value_a = (np.concatenate(x) if x else np.zeros(0, dtype=np.int64) for x in (owner, index, value))
    order = np.lexsort((-index_a, owner_a, value_a))  # by score, then group order, then higher index first
    return owner_a[order].astype(np.int64), index_a[order].astype(np.int64)


# --- helpers ----------------------------------------------------------------------
def _cost_function(cost: CostLike, measure: str) -> tuple[Callable[[Mapping[str, int]], int], int]:
    if measure not in ("params", "macs"):
        raise InputError(f"measure must be 'params' or 'macs', got {measure!r}")
    return getattr(cost, measure), getattr(cost, f"full_{measure}")


def _check_ratio(target_ratio: float) -> float:
    if not isinstance(target_ratio, (int, float)) or not math.isfinite(target_ratio) or target_ratio < 1:
        raise InputError(f"target_ratio must be a finite number >= 1 (full cost / pruned cost), got {target_ratio!r}")
    return float(target_ratio)
