"""Shared machinery of score-and-select methods (l1, random, taylor ...)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import fx

from fxprune.budget import Budget, select, selectable_groups
from fxprune.errors import PlanError
from fxprune.graph import ChannelGraph, Group
from fxprune.pipeline import Pass, require_state
from fxprune.state import State


@dataclass(frozen=True)
class ScorePass(Pass):
    """Scores every unit of every selectable group, then keeps the best under the budget.

    Needs: the state's ChannelGraph (run ``Analyze`` first). Guarantees: ``state.plan``
    holds a checked plan; groups that are ignored or unprunable are absent from it.
    """

    sparsity: float = 0.5
    scope: str = "local"
    round_to: int = 1
    ignore: tuple[str, ...] = ()
    name: ClassVar[str] = "score"

    @property
    def budget(self) -> Budget:
        return Budget(self.sparsity, self.scope, self.round_to, self.ignore)

    def scores(self, gm: fx.GraphModule, state: State, groups: list[Group]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def run(self, gm: fx.GraphModule) -> fx.GraphModule:
        state = require_state(gm, self.name)
        graph: ChannelGraph | None = state.channel_graph
        if graph is None:
            raise PlanError(f"{self.name} needs the channel analysis: run Analyze() before it")
        budget = self.budget
        groups = selectable_groups(graph, budget)
        scores = self.scores(gm, state, groups) if groups else {}
        state.plan = select(graph, scores, budget)
        return gm


def per_unit(group: Group, values_by_slice) -> np.ndarray:
    """Sum ``values_by_slice(param, dim) -> per-index vector`` over the group's produce weights.

    Returns the per-unit mean over the contributing elements (comparable across groups).
    """
    total = np.zeros(group.units)
    count = np.zeros(group.units)
    for key in group.param_spaces:
        if key[0] != "p" or group._graph.roles[key] != "produce":
            continue
        vec, n_per_index = values_by_slice(key[1], key[2])
        if vec is None:
            continue
        unit = group.unit_index(key)
        ok = unit >= 0
        total += np.bincount(unit[ok], weights=vec[ok], minlength=group.units)
        count += np.bincount(unit[ok], minlength=group.units) * n_per_index
    return total / np.maximum(count, 1)


def reduce_except(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of |t| over every dim but ``dim``."""
    dims = [d for d in range(t.dim()) if d != dim]
    return t.abs().sum(dim=dims) if dims else t.abs()
