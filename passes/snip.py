"""SNIP at initialisation, structured: connection sensitivity of each unit.

A unit's score is ``sum over batches of |dL/dm_u|`` where ``m_u`` is a gate (=1) shared
by every tensor of the unit, i.e. ``|sum of activation x gradient|`` over the unit's
tensors (Lee et al. 2019, with the weight mask replaced by a unit gate). Units computed
inside a leaf op (attention heads) use ``|sum w * dL/dw|`` over their produce slices.

Needs: ``Analyze``; ``data`` (an iterable of ``(inputs, targets)`` batches) and
``loss_fn`` (default cross-entropy). Guarantees: ``state.plan`` under the budget; the
model is unchanged. Also used by ``bep``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable

import numpy as np
import torch.nn.functional as F
from tqdm.auto import tqdm

from fxprune.distributed import all_reduce_scores
from fxprune.errors import InputError
from fxprune.mask import gate_key, mask
from fxprune.passes.scoring import ScorePass, model_device, to_device

from .taylor import _split_batch, _unit_gradient


def snip_scores(gm, graph, groups, data, loss_fn=None, max_batches=None, progress=False) -> dict[str, np.ndarray]:
    """``{group id: sum over batches of |dL/dgate_u|}`` (eval mode, model unchanged)."""
    device = model_device(gm)
    gated = mask(gm, graph, {g.id: list(range(g.units)) for g in groups}, learnable=True).to(device)
    gated.eval()
    gates = {gid: gate.values for gid, gate in gated.fxprune_gates.items()}
    loss_fn = loss_fn or F.cross_entropy
    totals = {g.id: np.zeros(g.units) for g in groups}
    params = dict(gated.named_parameters())
    seen = 0
    for i, batch in enumerate(tqdm(data, desc="snip", disable=not progress, leave=False)):
        if max_batches is not None and i >= max_batches:
            break
        inputs, targets = to_device(_split_batch(batch), device)
        gated.zero_grad(set_to_none=True)
        loss_fn(gated(*inputs), targets).backward()
        for g in groups:
            totals[g.id] += np.abs(_unit_gradient(g, gates[gate_key(g.id)], params))
        seen += 1
    totals = all_reduce_scores(totals, seen, "snip's data")  # under torchrun: summed over the ranks' shards
    if not seen:
        raise InputError("snip: data yielded no batches")
    return totals


@dataclass(frozen=True)
class SNIP(ScorePass):
    data: Iterable | None = field(default=None, compare=False)
    loss_fn: Callable | None = field(default=None, compare=False)
    max_batches: int | None = None
    progress: bool = True
    name: ClassVar[str] = "snip"

    def scores(self, gm, state, groups) -> dict[str, np.ndarray]:
        if self.data is None:
            raise InputError("method 'snip' needs data=<iterable of (inputs, targets) batches>")
        return snip_scores(gm, state.channel_graph, groups, self.data, self.loss_fn, self.max_batches, self.progress)
