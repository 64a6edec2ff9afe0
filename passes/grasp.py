"""GraSP at initialisation, structured: keep the units that preserve gradient flow.

GraSP (Wang et al. 2020) scores ``S = -theta * (H g)`` and removes the largest. Here
``theta`` is a gate (=1) shared by every tensor of a unit, ``g = dL/dgate`` and ``H g``
the Hessian-gradient product w.r.t. the gates (double backward through the gates:
``Hg = d(g . stop_grad(g)) / dgate``). The pass keeps the units with the largest
``-S = gate * Hg`` (summed over batches). Units without a gate path (computed inside a
leaf op) score 0.

Needs: ``Analyze``; ``data`` (an iterable of ``(inputs, targets)`` batches) and
``loss_fn`` (default cross-entropy). Guarantees: ``state.plan`` under the budget; the
model is unchanged. Also used by ``bep`` (BEP-LITE).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fxprune.distributed import all_reduce_scores
from fxprune.errors import InputError
from fxprune.mask import gate_key, mask
from fxprune.passes.scoring import ScorePass, model_device, to_device, to_numpy

from .taylor import _split_batch


def grasp_scores(gm, graph, groups, data, loss_fn=None, max_batches=None, progress=False) -> dict[str, np.ndarray]:
    """``{group id: sum over batches of gate * (H g)_u}`` (higher = keep; eval mode, model unchanged)."""
    device = model_device(gm)
    gated = mask(gm, graph, {g.id: list(range(g.units)) for g in groups}, learnable=True).to(device)
    gated.eval()
    gates = [gated.fxprune_gates[gate_key(g.id)].values for g in groups]
    loss_fn = loss_fn or F.cross_entropy
    totals = {g.id: np.zeros(g.units) for g in groups}
    seen = 0
    for i, batch in enumerate(tqdm(data, desc="grasp", disable=not progress, leave=False)):
        if max_batches is not None and i >= max_batches:
            break
        inputs, targets = to_device(_split_batch(batch), device)
        loss = loss_fn(gated(*inputs), targets)
        grads = torch.autograd.grad(loss, gates, create_graph=True, allow_unused=True)
        z = sum((g * g.detach()).sum() for g in grads if g is not None)
        if not isinstance(z, torch.Tensor) or not z.requires_grad:
            seen += 1
            continue
        hg = torch.autograd.grad(z, gates, allow_unused=True)
        for g, gate, h in zip(groups, gates, hg):
            if h is not None:
                totals[g.id] += to_numpy(gate.detach() * h)
        seen += 1
    totals = all_reduce_scores(totals, seen, "grasp's data")  # under torchrun: summed over the ranks' shards
    if not seen:
        raise InputError("grasp: data yielded no batches")
    return totals


@dataclass(frozen=True)
class GraSP(ScorePass):
    data: Iterable | None = field(default=None, compare=False)
    loss_fn: Callable | None = field(default=None, compare=False)
    max_batches: int | None = None
    progress: bool = True
    name: ClassVar[str] = "grasp"

    def scores(self, gm, state, groups) -> dict[str, np.ndarray]:
        if self.data is None:
            raise InputError("method 'grasp' needs data=<iterable of (inputs, targets) batches>")
        return grasp_scores(gm, state.channel_graph, groups, self.data, self.loss_fn, self.max_batches, self.progress)
