"""Random: keep a uniformly random subset of units (the papers' sanity baseline).

Needs: ``Analyze``. Guarantees: ``state.plan`` under the budget, reproducible for a ``seed``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fxprune.scoring import ScorePass


@dataclass(frozen=True)
class Random(ScorePass):
    seed: int = 0
    name: ClassVar[str] = "random"

    def scores(self, gm, state, groups) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        return {g.id: rng.random(g.units) for g in groups}
