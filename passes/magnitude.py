"""L1 magnitude: a unit's score is the mean |w| of the weights that produce it.

Needs: ``Analyze``. Guarantees: ``state.plan`` under the budget. Producer
weights are the produce-role slices of weight tensors (conv/linear rows,
attention projection rows), summed over every member of the group (a residual
stage's channel scores over all its convs); biases and BN are not weights
unless a group has nothing else (e.g. a class token). Scores are means per
element so that ``scope="global"`` compares layers fairly.

    before: conv1 = Conv2d(3, 64) ... after (sparsity=0.5): conv1 = Conv2d(3, 32) ...
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fxprune.passes.scoring import ScorePass, per_unit, reduce_except, to_numpy


def _magnitudes(params: dict, min_ndim: int):
    def magnitude(name: str, dim: int):
        t = params.get(name)
        if t is None or t.dim() < min_ndim:
            return None, 0
        return to_numpy(reduce_except(t.detach(), dim)), t.numel() // t.shape[dim]

    return magnitude


@dataclass(frozen=True)
class L1(ScorePass):
    name: ClassVar[str] = "l1"

    def scores(self, gm, state, groups) -> dict[str, np.ndarray]:
        params = dict(gm.named_parameters())
        out = {}
        for g in groups:
            s = per_unit(g, _magnitudes(params, 2))
            out[g.id] = s if s.any() else per_unit(g, _magnitudes(params, 1))
        return out
