"""Shared machinery of score-and-select methods (l1, random, taylor ...)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import fx

from fxprune.tensors import module_device
from fxprune.budget import Budget, select, selectable_groups
from fxprune.distributed import agree
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
        agree(json.dumps(state.plan, sort_keys=True, default=int), f"the plan of {self.name}",  # under torchrun
              "its scores are not summed over the ranks: prune on one rank (fxprune.distributed.local_only)")
        return gm


def per_unit(group: Group, values_by_slice, role: str = "produce") -> np.ndarray:
    """Sum ``values_by_slice(param, dim) -> per-index vector`` over the group's ``role`` weights
    (``"produce"``: the weights computing the units; ``"consume"``: the readers' weights for them).

    Returns the per-unit mean over the contributing elements (comparable across groups).
    """
    total = np.zeros(group.units)
    count = np.zeros(group.units)
    for key in group.param_spaces:
        if key[0] != "p" or group._graph.roles[key] != role:
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


# --- devices ------------------------------------------------------------------------------
model_device = module_device  # the methods' name for it


def to_device(obj, device: torch.device):
    """``obj`` (a tensor, or tuples/lists/dicts of them) with every tensor on ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A float64 numpy copy of ``t`` from any device."""
    return t.detach().to(dtype=torch.float64).cpu().numpy()
