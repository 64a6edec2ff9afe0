"""LayerWeightNorm: keep the units with the largest l1 norm of their outgoing weights.

``weights="outgoing"`` (default, the reference: the submodular paper's Sec. 7 baseline,
"prunes neurons/channels with the lowest output weights l1-norm, in each layer"): a
unit's score is the mean ``|w|`` of the weights that READ it in the next layer(s) (the
group's consume slices: the next conv's input-channel slices, the next linear's
columns, every reader of a residual stream). ``weights="producing"``: the earlier
score, the mean ``|w|`` of the weights that produce the unit (its filters, as
``l1``; Li et al. 2017). Scores are compared within a group under per-layer budgets;
with ``reweight=True`` the readers get least-squares weights
(fxprune.passes.submodular.layerwise). A group no weight reads (its readers are
parameter-free ops only) is scored by its producing weights, noted in ``state.notes``.

Needs: ``Analyze`` (``data`` only to reweight). Guarantees: see fxprune.passes.submodular.layerwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fxprune.errors import InputError
from fxprune.passes.submodular.layerwise import LayerwisePass
from fxprune.passes.scoring import per_unit

from .magnitude import _magnitudes

WEIGHTS = ("outgoing", "producing")


def producing_norms(params: dict, group) -> np.ndarray:
    """Mean |w| of the weights producing each unit (biases/BN only when the group has no weight)."""
    s = per_unit(group, _magnitudes(params, 2))
    return s if s.any() else per_unit(group, _magnitudes(params, 1))


def outgoing_norms(params: dict, group) -> np.ndarray | None:
    """Mean |w| of the readers' weights for each unit, or None when no weight reads the group."""
    if not any(role == "consume" and params.get(name) is not None and params[name].dim() >= 2
               for name, _, role in group.members()):
        return None
    return per_unit(group, _magnitudes(params, 2), role="consume")


@dataclass(frozen=True)
class LayerWeightNorm(LayerwisePass):
    weights: str = "outgoing"  # or "producing" (the earlier score)
    name: ClassVar[str] = "layer_weightnorm"
    needs_data: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTS:
            raise InputError(f"{self.name}: weights must be one of {WEIGHTS}, got {self.weights!r}")
        super().__post_init__()

    def scores(self, ctx, groups):
        params = dict(ctx.original.named_parameters())
        out, fallback = {}, []
        for g in groups:
            s = outgoing_norms(params, g) if self.weights == "outgoing" else None
            if s is None:
                fallback += [g.id] if self.weights == "outgoing" else []
                s = producing_norms(params, g)
            out[g.id] = s
        if fallback:
            ctx.notes.append(f"{self.name}: no weight reads {', '.join(fallback)}: scored by producing weights")
        return out
