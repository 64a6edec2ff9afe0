"""Analyze: find the groups of coupled channels.

Needs: a GraphModule from ``fxprune.trace``. Guarantees: ``state.channel_graph``
is set; the graph itself is unchanged (``modified`` is False).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import fx

from fxprune.analysis import Analyzer
from fxprune.pipeline import Pass, require_state


@dataclass(frozen=True)
class Analyze(Pass):
    strict: bool = False
    name: ClassVar[str] = "analyze"

    def run(self, gm: fx.GraphModule) -> fx.GraphModule:
        state = require_state(gm, self.name)
        state.channel_graph = Analyzer(gm, self.strict).run()
        return gm
