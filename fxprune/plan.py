"""Plans: ``dict[group_id, list[int]]`` of the units each group KEEPS.

``check_plan`` turns every way a plan can be wrong into a ``PlanError`` that
names the group; groups absent from a plan keep all their units.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from .errors import PlanError
from .graph import ChannelGraph, owner_name
from .spaces import SpaceKey

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
    for key in empty_spaces(graph, plan):
        gid = next(g.id for g in graph.groups if g.id in plan and key in g.spaces)
        raise PlanError(f"group {gid!r}: the plan removes every element of {owner_name(key)}")


def empty_spaces(graph: ChannelGraph, plan: Plan) -> list[SpaceKey]:
    """Spaces a plan would leave empty (used by budgets to repair selections)."""
    removed = graph.removed_labels(plan)
    return [
        key for gid in plan for key in graph.group(gid).spaces
        if not (~removed[graph.labels[graph.table.ids(key)]]).any()
    ]
