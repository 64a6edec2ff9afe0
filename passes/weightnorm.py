"""LayerWeightNorm: keep the units with the largest l1 norm of their filters (Li et al., ICLR 2017).

The score of a unit is the mean ``|w|`` of the weights that produce it (as
``l1``), compared within its group under per-layer budgets; with
``reweight=True`` the readers get least-squares weights (fxprune.passes.submodular.layerwise).

Needs: ``Analyze`` (``data`` only to reweight). Guarantees: see fxprune.passes.submodular.layerwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fxprune.passes.submodular.layerwise import LayerwisePass
from fxprune.passes.scoring import per_unit

from .magnitude import _magnitudes


@dataclass(frozen=True)
class LayerWeightNorm(LayerwisePass):
    name: ClassVar[str] = "layer_weightnorm"
    needs_data: ClassVar[bool] = False

    def scores(self, ctx, groups):
        params = dict(ctx.original.named_parameters())
        out = {}
        for g in groups:
            s = per_unit(g, _magnitudes(params, 2))
            out[g.id] = s if s.any() else per_unit(g, _magnitudes(params, 1))
        return out
