"""LayerGreedyFS: greedy forward selection on the loss (Ye et al., ICML 2020).

Groups are pruned one after another in graph order. For each, all its units
are switched off, then the unit whose return lowers the loss most on one
calibration batch is switched back on, until ``k`` are on (a unit is never
added twice, as in the authors' code). Earlier groups stay pruned while later
ones are chosen. Cost: about ``k x units`` forward passes on one batch per group.

Needs: ``Analyze``; ``data`` with targets; ``loss_fn`` (default cross-entropy).
Guarantees: see fxprune.layerwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from fxprune.layerwise import LayerwiseContext, LayerwisePass
from fxprune.mask import gate_key, mask


@dataclass(frozen=True)
class LayerGreedyFS(LayerwisePass):
    name: ClassVar[str] = "layer_greedy_fs"
    needs_targets: ClassVar[bool] = True

    def order(self, ctx: LayerwiseContext, group, k: int) -> list[int]:
        cache = ctx.__dict__.setdefault("_fs_orders", {})
        key = (group.id, id(ctx.work), ctx.__dict__.get("_fs_round", 0))
        if key in cache and len(cache[key]) >= k:
            return cache[key] + [u for u in range(group.units) if u not in set(cache[key])]
        chosen = forward_selection(ctx, group, k)
        cache[key] = chosen
        return chosen + [u for u in range(group.units) if u not in set(chosen)]

    def prune(self, ctx: LayerwiseContext, counts: dict[str, int]) -> dict[str, list[int]]:
        ctx.__dict__["_fs_round"] = 1  # orders from now on see the earlier groups pruned
        plan = {}
        for g in ctx.groups:
            kept = self.order(ctx, g, counts[g.id])[:counts[g.id]]
            ctx.apply(g, kept, ctx.layerwise_problem(g) if self.reweight else None)
            plan[g.id] = sorted(kept)
        return plan


def forward_selection(ctx: LayerwiseContext, group, k: int) -> list[int]:
    """Greedy forward selection of ``k`` units of ``group`` on the first calibration batch."""
    gated = mask(ctx.work, ctx.graph, {group.id: list(range(group.units))}, learnable=False)
    gated.eval()
    gate = gated.fxprune_gates[gate_key(group.id)].values
    inputs, targets = ctx.calibration.batches[0]
    loss_fn = ctx.loss_fn()
    chosen: list[int] = []
    with torch.no_grad():
        gate.zero_()
        for _ in tqdm(range(k), desc=f"greedy_fs {group.id}", disable=not ctx.method.progress, leave=False):
            best, best_loss = -1, float("inf")
            for u in range(group.units):
                if u in chosen:
                    continue
                gate[u] = 1.0
                loss = float(loss_fn(gated(*inputs), targets))
                gate[u] = 0.0
                if loss < best_loss:
                    best, best_loss = u, loss
            chosen.append(best)
            gate[best] = 1.0
    return chosen
