"""LayerSampling: keep units sampled by their sensitivity (after Liebenwein et al., ICLR 2020).

The sensitivity of a unit is the largest share, over calibration examples, it
takes of its readers' input: ``s_u = max_x z_u(x) / sum_v z_v(x)`` with
``z_u(x) = mean |a_u(x)| * ||W_u||_1`` (the unit's mean absolute activation at
a reader times the l1 norm of the reader's weights for it, summed over
readers). Units are drawn without replacement with probability proportional
to ``s`` (Gumbel top-k, reproducible for a ``seed``); the first ``k`` drawn
are kept. Simplifications: one sensitivity per unit from the reader inputs
(the paper bounds the per-output-neuron sensitivity), and our per-layer budget
selection instead of the paper's own allocation.

Needs: ``Analyze``; ``data``. Guarantees: see fxprune.passes.submodular.layerwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from fxprune.consumers import CONVS
from fxprune.passes.scoring import model_device, to_numpy
from fxprune.passes.submodular.layerwise import LayerwiseContext, LayerwisePass, consumer_inputs


def _unit_activity(x: torch.Tensor, module, units: np.ndarray, n_units: int) -> torch.Tensor:
    """(examples, units): mean |activation| of each unit's channels/features at one reader."""
    a = x.abs().double()
    per_feature = a.flatten(2).mean(-1) if isinstance(module, CONVS) else a.reshape(a.shape[0], -1, a.shape[-1]).mean(1)
    ok, index = _unit_index(units, a.device)
    out = torch.zeros(a.shape[0], n_units, dtype=torch.float64, device=a.device)
    count = torch.bincount(index, minlength=n_units).clamp(min=1).double()
    return out.index_add_(1, index, per_feature[:, ok]) / count


def _weight_norms(module, units: np.ndarray, n_units: int) -> torch.Tensor:
    w = module.weight.detach().abs().double().transpose(0, 1).reshape(len(units), -1).sum(1)
    ok, index = _unit_index(units, w.device)
    return torch.zeros(n_units, dtype=torch.float64, device=w.device).index_add_(0, index, w[ok])


def _unit_index(units: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of the indices that belong to a unit, their unit numbers) on ``device``."""
    ok = torch.from_numpy(units >= 0).to(device)
    return ok, torch.from_numpy(np.where(units >= 0, units, 0)).to(device)[ok]


def sensitivities(ctx: LayerwiseContext, group) -> np.ndarray:
    consumers = ctx.consumers[group.id].consumers
    modules = {c.module: ctx.original.get_submodule(c.module) for c in consumers}
    best = torch.zeros(group.units, dtype=torch.float64, device=model_device(ctx.original))
    for seen in consumer_inputs(ctx.original, list(modules), ctx.calibration):
        z = sum(_unit_activity(seen[c.module], modules[c.module], c.units, group.units)
                * _weight_norms(modules[c.module], c.units, group.units) for c in consumers)
        share = z / z.sum(1, keepdim=True).clamp(min=1e-30)
        best = torch.maximum(best, share.max(0).values)
    return to_numpy(best)


@dataclass(frozen=True)
class LayerSampling(LayerwisePass):
    name: ClassVar[str] = "layer_sampling"
    needs_features: ClassVar[bool] = True

    def scores(self, ctx, groups):
        rng = np.random.default_rng(self.seed)
        out = {}
        for g in groups:
            s = sensitivities(ctx, g)
            gumbel = -np.log(-np.log(rng.uniform(1e-12, 1.0, g.units)))
            with np.errstate(divide="ignore"):
                out[g.id] = np.where(s > 0, np.log(np.maximum(s, 1e-300)) + gumbel, -np.inf)
        return out
