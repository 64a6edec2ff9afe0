"""Rewrite: replace the GraphModule by its physically pruned version.

Needs: ``state.channel_graph`` and ``state.plan``. Guarantees: see
``fxprune.rewrite``; the new module carries the state (analysis of the
original, plan, timings) forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import fx

from fxprune.errors import PlanError
from fxprune.pipeline import Pass, require_state
from fxprune.rewrite import rewrite


@dataclass(frozen=True)
class Rewrite(Pass):
    """``compensate``: fold the constants removed units leave at their readers (``fxprune.rewrite``)."""

    name: ClassVar[str] = "rewrite"
    compensate: bool = True

    def run(self, gm: fx.GraphModule) -> fx.GraphModule:
        state = require_state(gm, self.name)
        if state.channel_graph is None or state.plan is None:
            raise PlanError("rewrite needs an analysis and a plan: run Analyze() and a method pass first")
        new = rewrite(gm, state.channel_graph, state.plan, compensate=self.compensate)
        new_state = new.meta["fxprune"]
        new_state.channel_graph = state.channel_graph
        new_state.timings = dict(state.timings)
        new_state.notes = list(state.notes) + new_state.notes
        return new
