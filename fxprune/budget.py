"""Budgets: turn per-unit scores into a plan (kept units per group).

``Budget(sparsity, scope, round_to, ignore)``: ``sparsity`` is the fraction of
units removed; ``scope="local"`` removes that fraction from every prunable
group, ``"global"`` removes that fraction of all units, ranking each unit by
its score relative to its group's mean (so layers with different weight scales
compete fairly); ``round_to=N`` makes kept counts multiples of N (rounded up);
``ignore`` names modules whose channels stay whole. Every group keeps at least
one unit, and no tensor is left empty.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .graph import ChannelGraph, Group
from .plan import Plan, check_plan, empty_spaces


@dataclass(frozen=True)
class Budget:
    sparsity: float = 0.5
    scope: str = "local"
    round_to: int = 1
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity < 1.0:
            raise InputError(f"sparsity must be in [0, 1), got {self.sparsity!r}")
        if self.scope not in ("local", "global"):
            raise InputError(f"scope must be 'local' or 'global', got {self.scope!r}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise InputError(f"round_to must be a positive integer, got {self.round_to!r}")
        if isinstance(self.ignore, str):
            object.__setattr__(self, "ignore", tuple(n for n in self.ignore.split(",") if n))
        object.__setattr__(self, "ignore", tuple(self.ignore))


def check_ignore(graph: ChannelGraph, ignore: tuple[str, ...]) -> None:
    """Every ignored name must be a module (or parameter owner) of the model."""
    names = {n for n, _ in graph.gm.named_modules()}
    unknown = [n for n in ignore if n not in names]
    if unknown:
        raise InputError(f"ignore names not in the model: {', '.join(unknown)}")


def _ignored(group: Group, ignore: tuple[str, ...]) -> bool:
    return any(name == i or name.startswith(i + ".") for name, _, _ in group.members() for i in ignore)


def selectable_groups(graph: ChannelGraph, budget: Budget) -> list[Group]:
    check_ignore(graph, budget.ignore)
    return [g for g in graph.prunable_groups if not _ignored(g, budget.ignore)]


def _keep_count(units: int, kept: int, round_to: int) -> int:
    kept = max(1, kept)
    if round_to > 1:
        kept = min(units, int(math.ceil(kept / round_to)) * round_to)
    return kept


def _top(scores: np.ndarray, k: int) -> list[int]:
    order = np.lexsort((np.arange(scores.size), -scores))  # high score first, ties by index
    return sorted(order[:k].tolist())


def select(graph: ChannelGraph, scores: dict[str, np.ndarray], budget: Budget) -> Plan:
    """The plan keeping the highest-scored units under ``budget``."""
    groups = [g for g in selectable_groups(graph, budget) if g.id in scores]
    if budget.scope == "local":
        counts = {g.id: _keep_count(g.units, g.units - int(budget.sparsity * g.units), budget.round_to) for g in groups}
    else:
        counts = _global_counts(groups, scores, budget)
    plan = {g.id: _top(np.asarray(scores[g.id], dtype=np.float64), counts[g.id]) for g in groups}
    return check_plan(graph, _repair_empty(graph, plan, scores))


def _global_counts(groups: list[Group], scores: dict[str, np.ndarray], budget: Budget) -> dict[str, int]:
    rel = []
    for g in groups:
        s = np.asarray(scores[g.id], dtype=np.float64)
        mean = s.mean() if s.size and s.mean() > 0 else 1.0
        rel.extend((v / mean, g.id) for v in s)
    n_remove = int(budget.sparsity * len(rel))
    removed = {g.id: 0 for g in groups}
    units = {g.id: g.units for g in groups}
    for _, gid in sorted(rel, key=lambda t: t[0]):
        if n_remove == 0:
            break
        if units[gid] - removed[gid] > 1:
            removed[gid] += 1
            n_remove -= 1
    return {gid: _keep_count(units[gid], units[gid] - removed[gid], budget.round_to) for gid in units}


def _repair_empty(graph: ChannelGraph, plan: Plan, scores: dict[str, np.ndarray]) -> Plan:
    """Add back the best unit of any tensor the plan would empty (e.g. one cat input)."""
    for _ in range(len(plan) * 8):
        empty = empty_spaces(graph, plan)
        if not empty:
            return plan
        key = empty[0]
        group = next(g for g in graph.groups if key in g.spaces)
        units = np.unique(group.unit_index(key))
        units = units[units >= 0]
        best = units[np.argmax(np.asarray(scores[group.id])[units])]
        plan[group.id] = sorted(set(plan[group.id]) | {int(best)})
    return plan
