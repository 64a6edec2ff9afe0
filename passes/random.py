"""Random / LayerRandom: keep a uniformly random subset of units (the papers' sanity baselines).

``random`` ranks all units together (with ``compression=...`` the budget is
global, as the submodular paper's RANDOM; with ``sparsity`` it follows
``scope``, local by default); ``layer_random`` prunes each group under
per-layer budgets. Both reproducible for a ``seed``.

Needs: ``Analyze`` (``data`` only to reweight). Guarantees: see fxprune.passes.submodular.layerwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fxprune.passes.submodular.layerwise import LayerwisePass


def _random_scores(seed: int, groups) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.id: rng.random(g.units) for g in groups}


@dataclass(frozen=True)
class Random(LayerwisePass):
    name: ClassVar[str] = "random"
    needs_data: ClassVar[bool] = False
    ranks_globally: ClassVar[bool] = True

    def scores(self, ctx, groups):
        return _random_scores(self.seed, groups)


@dataclass(frozen=True)
class LayerRandom(LayerwisePass):
    name: ClassVar[str] = "layer_random"
    needs_data: ClassVar[bool] = False

    def scores(self, ctx, groups):
        return _random_scores(self.seed, groups)
