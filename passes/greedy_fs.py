"""LayerGreedyFS: greedy forward selection on the loss (Ye et al., ICML 2020).

Groups are pruned one after another in graph order. For each, all its units
are switched off, then the unit whose return lowers the loss most on one
calibration batch is switched back on, until ``k`` are on (a unit is never
added twice, as in the authors' code). Earlier groups stay pruned while later
ones are chosen. Cost: about ``k x units`` forward passes on one batch per group.

Needs: ``Analyze``; ``data`` with targets; ``loss_fn`` (default cross-entropy).
Guarantees: see fxprune.passes.submodular.layerwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from fxprune.passes.submodular.layerwise import LayerwiseContext, LayerwisePass
from fxprune.mask import gate_key, mask


@dataclass(frozen=True)
class LayerGreedyFS(LayerwisePass):
    name: ClassVar[str] = "layer_greedy_fs"
    needs_targets: ClassVar[bool] = True

    def order(self, ctx: LayerwiseContext, group, k: int) -> list[int]:
        """The full forward-selection order (its first ``k`` are the greedy choice of ``k``)."""
        cache = ctx.__dict__.setdefault("_fs_orders", {})
        key = (group.id, ctx.__dict__.get("_fs_round", 0))
        if key not in cache:
            cache[key] = forward_selection(ctx, group, group.units)
        return cache[key]

    def prune(self, ctx: LayerwiseContext, counts: dict[str, int]) -> dict[str, list[int]]:
        ctx.__dict__["_fs_round"] = 1  # orders from now on see the earlier groups pruned
        return super().prune(ctx, counts)


def forward_selection(ctx: LayerwiseContext, group, k: int, chunk: int = 32) -> list[int]:
    """Greedy forward selection of ``k`` units of ``group`` on the first calibration batch.

    The losses of all candidates of a step are computed together with ``torch.func.vmap``
    over the gate values (``chunk`` candidates per call); a plain loop when vmap fails.
    """
    gated = mask(ctx.work, ctx.graph, {group.id: list(range(group.units))}, learnable=False)
    gated.eval()
    gate = gated.fxprune_gates[gate_key(group.id)].values
    aliases = [n for n, t in gated.named_parameters(remove_duplicate=False) if t is gate]
    inputs, targets = ctx.calibration.batches[0]
    loss_fn = ctx.loss_fn()

    def loss_of(values: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(gated, {a: values for a in aliases}, inputs), targets)

    on = torch.zeros(group.units)
    chosen: list[int] = []
    with torch.no_grad():
        for _ in tqdm(range(k), desc=f"greedy_fs {group.id}", disable=not ctx.method.progress, leave=False):
            candidates = [u for u in range(group.units) if on[u] == 0]
            trial = on.repeat(len(candidates), 1)
            trial[torch.arange(len(candidates)), torch.tensor(candidates)] = 1.0
            losses = _losses(loss_of, trial, chunk)
            best = candidates[int(torch.argmin(losses))]  # first minimum: lowest index on ties
            chosen.append(best)
            on[best] = 1.0
    return chosen


def _losses(loss_of, trial: torch.Tensor, chunk: int) -> torch.Tensor:
    try:
        return torch.cat([vmap(loss_of)(trial[i:i + chunk]) for i in range(0, len(trial), chunk)])
    except Exception:  # an op without a batching rule: evaluate one candidate at a time
        return torch.stack([loss_of(v) for v in trial])
