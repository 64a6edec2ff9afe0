"""ActGrad / LayerActGrad: activation x gradient (Molchanov et al., ICLR 2017).

A unit's score is ``|dL/dm_u|`` for a gate ``m_u = 1`` on every tensor of the
unit, i.e. ``|sum of activation x gradient|`` over the unit's tensors,
averaged over calibration batches and normalised to unit l2 norm within each
group (the paper's "layerwise l2-normalisation"). ``actgrad`` ranks all units
of all groups together (a global budget); ``layer_actgrad`` keeps the best of
each group under per-layer budgets.

Needs: ``Analyze``; ``data`` with targets and ``loss_fn`` (default cross-entropy).
Guarantees: see fxprune.passes.submodular.layerwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from tqdm.auto import tqdm

from fxprune.passes.submodular.layerwise import LayerwiseContext, LayerwisePass
from fxprune.mask import gate_key, mask


def activation_gradient(ctx: LayerwiseContext, groups, desc: str) -> dict[str, np.ndarray]:
    """Mean over batches of ``|dL/dgate|`` per unit, l2-normalised per group."""
    gated = mask(ctx.original, ctx.graph, {g.id: list(range(g.units)) for g in groups}, learnable=True)
    gated.eval()
    gates = {gid: gate.values for gid, gate in gated.fxprune_gates.items()}
    totals = {g.id: np.zeros(g.units) for g in groups}
    loss_fn = ctx.loss_fn()
    batches = ctx.calibration
    for inputs, targets in tqdm(batches, desc=desc, disable=not ctx.method.progress, leave=False):
        gated.zero_grad(set_to_none=True)
        loss_fn(gated(*inputs), targets).backward()
        for g in groups:
            grad = gates[gate_key(g.id)].grad
            if grad is not None:
                totals[g.id] += grad.detach().abs().double().numpy() / len(batches)
    return {gid: s / max(np.linalg.norm(s), 1e-30) for gid, s in totals.items()}


@dataclass(frozen=True)
class ActGrad(LayerwisePass):
    name: ClassVar[str] = "actgrad"
    needs_targets: ClassVar[bool] = True
    ranks_globally: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.scope == "local":  # a global method: sparsity is a fraction of all units
            object.__setattr__(self, "scope", "global")
        super().__post_init__()

    def scores(self, ctx, groups):
        return activation_gradient(ctx, groups, self.name)


@dataclass(frozen=True)
class LayerActGrad(LayerwisePass):
    name: ClassVar[str] = "layer_actgrad"
    needs_targets: ClassVar[bool] = True

    def scores(self, ctx, groups):
        return activation_gradient(ctx, groups, self.name)
