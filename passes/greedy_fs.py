"""LayerGreedyFS: greedy forward selection on the loss (Ye et al., ICML 2020).

Groups are pruned one after another in graph order. For each, all its units
are switched off, then the unit whose return lowers the loss most is switched
back on, until ``k`` are on (a unit is never added twice, as in the authors'
code). Earlier groups stay pruned while later ones are chosen. Cost: about
``k x units`` forward passes on one batch per group.

"Reference" is the method as the submodular paper ran it (its Sec. 7 and App. C:
"the version implemented in the code of Ye et al., 2020a"; the selection problem
written out in its App. B), which these defaults follow:

* ``rescale=True``: the readers' weights of a group of ``n`` units are scaled by
  ``n / |S|`` for the chosen set ``S`` (``A W`` replaced by ``n A Diag(alpha) W`` with
  ``alpha_i = 1/|S|`` on ``S``): a candidate's loss is measured with the scale of
  ``S + {u}`` and the pruned model keeps the ``n / k`` scale on its readers (unless
  ``reweight=True``, whose least-squares weights replace it). ``rescale=False``: plain 0/1 removal.
* ``batches="random"``: every step of the selection is scored on a calibration batch
  drawn at random (reproducible for ``seed``), as the authors' code draws a
  mini-batch per step; ``batches="first"``: every step on the first batch.

Needs: ``Analyze``; ``data`` with targets; ``loss_fn`` (default cross-entropy).
Guarantees: see fxprune.passes.submodular.layerwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from fxprune.errors import InputError
from fxprune.mask import gate_key, mask
from fxprune.passes.scoring import model_device, to_device
from fxprune.passes.submodular.layerwise import LayerwiseContext, LayerwisePass

BATCH_CHOICES = ("random", "first")


@dataclass(frozen=True)
class LayerGreedyFS(LayerwisePass):
    rescale: bool = True
    batches: str = "random"
    name: ClassVar[str] = "layer_greedy_fs"
    needs_targets: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.batches not in BATCH_CHOICES:
            raise InputError(f"{self.name}: batches must be one of {BATCH_CHOICES}, got {self.batches!r}")
        super().__post_init__()

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

    def adjust_readers(self, ctx: LayerwiseContext, model, group, kept: list[int]) -> None:
        """The pruned model's readers of ``group`` carry the ``n / k`` scale (``rescale=True``, no reweighting)."""
        if self.rescale and not self.reweight and kept:
            scale_readers(model, group, group.units / len(kept))


def step_batch_indices(seed: int, group_position: int, steps: int, n_batches: int, how: str) -> list[int]:
    """Which calibration batch scores each selection step of the ``group_position``-th group."""
    if how == "first" or n_batches == 1:
        return [0] * steps
    rng = np.random.default_rng([seed, group_position])
    return rng.integers(0, n_batches, size=steps).tolist()


def reader_slices(model: torch.nn.Module, group) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    """``(parameter, dim, index)`` of every weight of ``model`` that reads ``group`` (its consume slices)."""
    params = dict(model.named_parameters())
    out = []
    for s in group.slices(range(group.units)):
        p = params.get(s.name)
        if s.role == "consume" and p is not None and p.dim() >= 2:
            out.append((p, s.dim, s.index.to(p.device)))
    return out


def scale_readers(model: torch.nn.Module, group, factor: float) -> None:
    """Multiply the readers' weights of ``group`` in ``model`` by ``factor`` in place."""
    ReaderScale(model, group).set(factor)


class ReaderScale:
    """Sets the readers' weights of ``group`` in ``model`` to ``factor`` x their values at construction."""

    def __init__(self, model: torch.nn.Module, group):
        self.slices = [(p, dim, index, p.detach().index_select(dim, index).clone())
                       for p, dim, index in reader_slices(model, group)]

    def set(self, factor: float) -> None:
        with torch.no_grad():
            for p, dim, index, original in self.slices:
                p.index_copy_(dim, index, original * factor)


def forward_selection(ctx: LayerwiseContext, group, k: int, chunk: int = 32) -> list[int]:
    """Greedy forward selection of ``k`` units of ``group`` (see the module doc for the options).

    The losses of all candidates of a step are computed together with ``torch.func.vmap``
    over the gate values (``chunk`` candidates per call); a plain loop when vmap fails.
    """
    method: LayerGreedyFS = ctx.method
    device = model_device(ctx.work)
    gated = mask(ctx.work, ctx.graph, {group.id: list(range(group.units))}, learnable=False).to(device)
    gated.eval()
    gate = gated.fxprune_gates[gate_key(group.id)].values
    aliases = [n for n, t in gated.named_parameters(remove_duplicate=False) if t is gate]
    batches = ctx.calibration.batches
    ids = [g.id for g in ctx.groups]
    position = ids.index(group.id) if group.id in ids else 0
    which = step_batch_indices(method.seed, position, k, len(batches), method.batches)
    loss_fn = ctx.loss_fn()
    readers = ReaderScale(gated, group) if getattr(method, "rescale", False) else None

    on = torch.zeros(group.units, device=device)
    chosen: list[int] = []
    with torch.no_grad():
        for step in tqdm(range(k), desc=f"greedy_fs {group.id}", disable=not method.progress, leave=False):
            inputs, targets = to_device(batches[which[step]], device)

            def loss_of(values: torch.Tensor) -> torch.Tensor:
                return loss_fn(functional_call(gated, {a: values for a in aliases}, inputs), targets)

            if readers is not None:  # the scale n / |S + {u}| of every candidate of this step
                readers.set(group.units / (len(chosen) + 1))
            candidates = [u for u in range(group.units) if on[u] == 0]
            trial = on.repeat(len(candidates), 1)
            trial[torch.arange(len(candidates), device=device), torch.tensor(candidates, device=device)] = 1.0
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
