"""Taylor: first-order estimate of the loss change when a unit is removed.

A unit's importance is ``sum over batches of (dL/dm_u)^2`` where ``m_u`` is a
gate (=1) on every tensor of the unit, i.e. the activation x gradient summed
over all the unit's tensors (Molchanov et al. 2019). Units computed inside a
leaf op (attention heads) use ``(sum w * dL/dw)^2`` over their produce slices.

Needs: ``Analyze``; ``data`` (an iterable of ``(inputs, targets)`` batches) and
``loss_fn(outputs, targets)`` (default cross-entropy). Runs in eval mode with a
tqdm bar. Guarantees: ``state.plan`` under the budget; the model is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fxprune.errors import InputError
from fxprune.mask import gate_key, mask
from fxprune.passes.scoring import ScorePass


def _split_batch(batch: Any) -> tuple[tuple[torch.Tensor, ...], Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        return ((x,) if isinstance(x, torch.Tensor) else tuple(x)), y
    raise InputError("taylor needs batches of (inputs, targets); got " + type(batch).__name__)


@dataclass(frozen=True)
class Taylor(ScorePass):
    data: Iterable | None = field(default=None, compare=False)
    loss_fn: Callable | None = field(default=None, compare=False)
    max_batches: int | None = None
    progress: bool = True
    name: ClassVar[str] = "taylor"

    def scores(self, gm, state, groups) -> dict[str, np.ndarray]:
        if self.data is None:
            raise InputError("method 'taylor' needs data=<iterable of (inputs, targets) batches>")
        graph = state.channel_graph
        gated = mask(gm, graph, {g.id: list(range(g.units)) for g in groups}, learnable=True)
        gated.eval()
        gates = {gid: gate.values for gid, gate in gated.fxprune_gates.items()}
        loss_fn = self.loss_fn or F.cross_entropy
        totals = {g.id: np.zeros(g.units) for g in groups}
        params = dict(gated.named_parameters())
        for i, batch in enumerate(tqdm(self.data, desc="taylor", disable=not self.progress, leave=False)):
            if self.max_batches is not None and i >= self.max_batches:
                break
            inputs, targets = _split_batch(batch)
            gated.zero_grad(set_to_none=True)
            loss_fn(gated(*inputs), targets).backward()
            for g in groups:
                totals[g.id] += _unit_gradient(g, gates[gate_key(g.id)], params) ** 2
        return totals


def _unit_gradient(group, gate: torch.Tensor, params: dict) -> np.ndarray:
    if gate.grad is not None and gate.grad.abs().sum() > 0:
        return gate.grad.detach().double().numpy()
    out = np.zeros(group.units)
    for s in group.slices(range(group.units)):
        p = params.get(s.name)
        if s.role != "produce" or p is None or p.grad is None:
            continue
        contrib = (p.detach() * p.grad).sum(dim=[d for d in range(p.dim()) if d != s.dim]) if p.dim() > 1 else p.detach() * p.grad
        unit = group.unit_index(("p", s.name, s.dim))
        ok = unit >= 0
        out += np.bincount(unit[ok], weights=contrib.double().numpy()[ok], minlength=group.units)
    return out
