"""Plans: ``dict[group_id, list[int]]`` of the units each group KEEPS.

``check_plan`` turns every way a plan can be wrong into a ``PlanError`` that
names the group; groups absent from a plan keep all their units.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .errors import PlanError
from .graph import ChannelGraph
from .spaces import SpaceKey
from .graph import owner_name

Plan = dict[str, list[int]]


def check_plan(graph: ChannelGraph, plan: Mapping[str, Sequence[int]]) -> Plan:
    """Validate ``plan`` against ``graph`` and return a normalised copy (sorted unit lists)."""
    if not isinstance(plan, Mapping):
        raise PlanError(f"a plan is a dict of group id -> kept units, got {type(plan).__name__}")
    out: Plan = {}
    for gid, kept in plan.items():
        group = graph.group(gid)
        try:
            units = [int(u) for u in kept]
        except (TypeError, ValueError) as exc:
            raise PlanError(f"group {gid!r}: kept units must be integers ({exc})") from None
        if len(set(units)) != len(units):
            dup = sorted({u for u in units if units.count(u) > 1})
            raise PlanError(f"group {gid!r}: duplicate units {dup[:5]}")
        if not units:
            raise PlanError(f"group {gid!r}: a plan must keep at least one unit")
        bad = [u for u in units if not 0 <= u < group.units]
        if bad:
            raise PlanError(f"group {gid!r} has units 0..{group.units - 1}; out of range: {bad[:5]}")
        if len(units) < group.units and not group.prunable:
            raise PlanError(f"group {gid!r} is not prunable: {group.reason}")
        out[gid] = sorted(units)
    _check_no_empty_space(graph, out)
    return out


def _check_no_empty_space(graph: ChannelGraph, plan: Plan) -> None:
    removed = graph.removed_labels(plan)
    for gid in plan:
        for key in graph.group(gid).spaces:
            if not (~removed[graph.labels[graph.table.ids(key)]]).any():
                raise PlanError(f"group {gid!r}: the plan removes every element of {owner_name(key)}")


def empty_spaces(graph: ChannelGraph, plan: Plan) -> list[SpaceKey]:
    """Spaces a plan would leave empty (used by budgets to repair selections)."""
    removed = graph.removed_labels(plan)
    return [
        key for gid in plan for key in graph.group(gid).spaces
        if not (~removed[graph.labels[graph.table.ids(key)]]).any()
    ]


def unit_of_label(graph: ChannelGraph) -> dict[int, tuple[str, int]]:
    """Element label -> (group id, unit index)."""
    return {int(label): (g.id, u) for g in graph.groups for u, label in enumerate(g.unit_labels)}


def full_plan(graph: ChannelGraph) -> Plan:
    """The identity plan: every prunable group keeps every unit."""
    return {g.id: list(range(g.units)) for g in graph.prunable_groups}


def removed_counts(graph: ChannelGraph, plan: Plan) -> dict[str, int]:
    return {gid: graph.group(gid).units - len(kept) for gid, kept in plan.items()}


def as_index(units: Sequence[int]) -> np.ndarray:
    return np.asarray(list(units), dtype=np.int64)
