"""ActGrad / LayerActGrad: activation x gradient (Molchanov et al., ICLR 2017).

A unit's score is ``|dl_n/dm_u|`` for a gate ``m_u = 1`` on every tensor of the
unit, i.e. ``|sum of activation x gradient|`` over the unit's tensors and positions
for ONE sample ``n``, averaged over the calibration samples and normalised to unit
l2 norm within each group (the paper's "activations x gradients, averaged over the
training data, with layerwise l2-normalisation"; Molchanov et al. take the absolute
value per example). ``saliency="per_batch"`` keeps the earlier score: ``|dL/dm_u|`` of
each batch's mean loss, averaged over batches (see fxprune.passes.taylor.gate_saliency). ``actgrad`` ranks all units
of all groups together (a global budget); ``layer_actgrad`` keeps the best of
each group under per-layer budgets.

Needs: ``Analyze``; ``data`` with targets and ``loss_fn`` (default cross-entropy).
Guarantees: see fxprune.passes.submodular.layerwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fxprune.passes.submodular.layerwise import LayerwiseContext, LayerwisePass

from .taylor import check_saliency, gate_saliency


def activation_gradient(ctx: LayerwiseContext, groups, desc: str) -> dict[str, np.ndarray]:
    """Per-unit activation x gradient (``ctx.method.saliency``) on the calibration data, l2-normalised per group."""
    totals = gate_saliency(ctx.original, ctx.graph, groups, ctx.calibration, ctx.loss_fn(),
                           saliency=ctx.method.saliency, per_batch=np.abs, mean=True,
                           progress=ctx.method.progress, desc=desc, notes=ctx.notes)
    return {gid: s / max(np.linalg.norm(s), 1e-30) for gid, s in totals.items()}


@dataclass(frozen=True)
class _ActGradBase(LayerwisePass):
    saliency: str = "per_sample"  # or "per_batch" (the earlier score)
    needs_targets: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_saliency(self.saliency, self.name)
        super().__post_init__()


@dataclass(frozen=True)
class ActGrad(_ActGradBase):
    name: ClassVar[str] = "actgrad"
    ranks_globally: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.scope == "local":  # a global method: sparsity is a fraction of all units
            object.__setattr__(self, "scope", "global")
        super().__post_init__()

    def scores(self, ctx, groups):
        return activation_gradient(ctx, groups, self.name)


@dataclass(frozen=True)
class LayerActGrad(_ActGradBase):
    name: ClassVar[str] = "layer_actgrad"

    def scores(self, ctx, groups):
        return activation_gradient(ctx, groups, self.name)
