"""Taylor: first-order estimate of the loss change when a unit is removed.

A unit ``u`` has a gate ``m_u`` (=1) on every tensor of the unit, so ``dL/dm_u`` is
the activation x gradient ``sum a * dL/da`` over all the unit's tensors and positions.

* ``saliency="per_sample"`` (default, the reference: eq. A1 of the BEP paper,
  after Molchanov et al. 2017): the mean over samples ``n`` of ``|dl_n/dm_u|``, the
  absolute value taken per sample before averaging (``l_n`` the loss of sample ``n``).
  The spatial sum is not divided by ``W x H`` as in A1: the gate derivative is the
  quantity that estimates removing the unit everywhere it appears.
* ``saliency="per_batch"``: the earlier score, ``sum over batches of (dL/dm_u)^2``
  with ``L`` the batch loss (Molchanov et al. 2019's gate form).

Units computed inside a leaf op (attention heads) have no gated activation: both modes
use ``(sum w * dL/dw)`` over their produce slices, per batch (noted in ``state.notes``).

Needs: ``Analyze``; ``data`` (an iterable of ``(inputs, targets)`` batches, batch on dim 0)
and ``loss_fn(outputs, targets)`` (default cross-entropy) that AVERAGES over the batch
(PyTorch's ``reduction='mean'``). Runs in eval mode with a tqdm bar, on the model's
device. Guarantees: ``state.plan`` under the budget; the model is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fxprune.distributed import all_reduce_sums, check_consistent
from fxprune.errors import InputError
from fxprune.mask import Gate, gate_key, mask
from fxprune.passes.scoring import ScorePass, model_device, to_device, to_numpy

SALIENCIES = ("per_sample", "per_batch")


def _split_batch(batch: Any) -> tuple[tuple[torch.Tensor, ...], Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        return ((x,) if isinstance(x, torch.Tensor) else tuple(x)), y
    raise InputError("taylor needs batches of (inputs, targets); got " + type(batch).__name__)


def check_saliency(saliency: str, method: str) -> None:
    """Raise ``InputError`` unless ``saliency`` is one of ``SALIENCIES``."""
    if saliency not in SALIENCIES:
        raise InputError(f"{method}: saliency must be one of {SALIENCIES}, got {saliency!r}")


class SaliencySums:
    """Per-group running sums of a per-unit saliency and how many terms (samples or batches)
    were added: the ONE place a gate saliency accumulates. Under torchrun ``gate_saliency``
    all-reduces ``totals`` and ``terms`` before ``result``."""

    def __init__(self, groups, device: torch.device):
        self.totals = {g.id: torch.zeros(g.units, dtype=torch.float64, device=device) for g in groups}
        self.terms = 0

    def add(self, gid: str, values: torch.Tensor) -> None:
        self.totals[gid] += values.detach().to(device=self.totals[gid].device, dtype=torch.float64)

    def result(self, mean: bool) -> dict[str, np.ndarray]:
        """``{group id: sum (or mean over terms)}`` as float64 numpy arrays on the CPU."""
        # totals and terms are already summed over the ranks (gate_saliency)
        scale = 1.0 / max(self.terms, 1) if mean else 1.0
        return {gid: to_numpy(t) * scale for gid, t in self.totals.items()}


class PerSampleGateGradients:
    """Per-sample gate derivatives ``dl_n/dm_u`` of one ``(inputs, targets)`` batch in one backward.

    ``a_n`` affects the loss only through sample ``n`` (eval mode), so the activation
    gradient of ``sum_n l_n`` is per sample; hooks on the gates' inputs and outputs give
    ``sum over positions of a_n * dl_n/da_n`` per unit. Tensors without a batch dim
    (broadcast parameters) add their batch-summed term split evenly over samples.
    """

    def __init__(self, gated: torch.nn.Module, groups):
        self.units = {gate_key(g.id): g.units for g in groups}
        self.current: dict[str, torch.Tensor] = {}
        self.rows = 0
        owners = {id(gated.fxprune_gates[k]): k for k in self.units}
        self.handles = [m.register_forward_hook(self._hook(owners[id(m.group_gate)]))
                        for m in gated.modules() if isinstance(m, Gate) and id(m.group_gate) in owners]

    def _hook(self, key: str):
        def hook(module: Gate, args, out: torch.Tensor) -> None:
            if isinstance(out, torch.Tensor) and out.requires_grad:
                x = args[0].detach()
                out.register_hook(lambda grad: self._add(key, module, x, grad))
        return hook

    def _add(self, key: str, gate: Gate, x: torch.Tensor, grad: torch.Tensor) -> None:
        term = (x * grad).to(torch.float64)
        n, units = self.rows, self.units[key]
        if term.dim() >= 2 and gate.dim != 0 and term.shape[0] == n:
            per_index = term.movedim(gate.dim, 1).reshape(n, term.shape[gate.dim], -1).sum(-1)
        else:  # no batch dim: the batch-summed term, shared evenly
            dims = [d for d in range(term.dim()) if d != gate.dim]
            per_index = (term.sum(dim=dims) if dims else term).expand(n, -1) / n
        per_unit = per_index.new_zeros(n, units + 1).index_add_(1, gate.index.to(term.device), per_index)
        self.current[key] = self.current.get(key, 0) + per_unit[:, :units]

    def batch(self, gated: torch.nn.Module, inputs, targets, loss_fn: Callable) -> dict[str, torch.Tensor]:
        """``{gate key: (samples, units)}`` of ``dl_n/dm_u``; leaves ``dsum_n l_n/dparam`` in ``.grad``."""
        self.rows = int(inputs[0].shape[0])
        self.current = {}
        gated.zero_grad(set_to_none=True)
        (loss_fn(gated(*inputs), targets) * self.rows).backward()  # a 'mean' loss -> sum_n l_n
        return dict(self.current)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def gate_saliency(gm, graph, groups, data: Iterable, loss_fn: Callable | None = None, *, saliency: str = "per_sample",
                  per_batch: Callable[[np.ndarray], np.ndarray] = np.abs, mean: bool = True,
                  max_batches: int | None = None, progress: bool = False, desc: str = "saliency",
                  notes: list[str] | None = None) -> dict[str, np.ndarray]:
    """Per-unit saliency of every group of ``groups`` (eval mode, on ``gm``'s device, ``gm`` unchanged).

    ``per_sample``: mean over samples of ``|dl_n/dm_u|``. ``per_batch``: the sum (``mean=True``:
    the mean) over batches of ``per_batch(dL/dm_u)``. Raises ``InputError`` on no batches.
    """
    check_saliency(saliency, desc)
    device = model_device(gm)
    gated = mask(gm, graph, {g.id: list(range(g.units)) for g in groups}, learnable=True).to(device)
    gated.eval()
    gates = {gid: gate.values for gid, gate in gated.fxprune_gates.items()}
    params = dict(gated.named_parameters())
    loss_fn = loss_fn or F.cross_entropy
    sums = SaliencySums(groups, device)
    recorder = PerSampleGateGradients(gated, groups) if saliency == "per_sample" else None
    fallback: set[str] = set()
    try:
        for i, batch in enumerate(tqdm(data, desc=desc, disable=not progress, leave=False)):
            if max_batches is not None and i >= max_batches:
                break
            inputs, targets = to_device(_split_batch(batch), device)
            if recorder is None:
                gated.zero_grad(set_to_none=True)
                loss_fn(gated(*inputs), targets).backward()
                for g in groups:
                    sums.add(g.id, torch.from_numpy(per_batch(_unit_gradient(g, gates[gate_key(g.id)], params))))
                sums.terms += 1
                continue
            per_sample = recorder.batch(gated, inputs, targets, loss_fn)
            for g in groups:
                key = gate_key(g.id)
                if key in per_sample:
                    sums.add(g.id, per_sample[key].abs().sum(0))
                else:  # no gated activation (a leaf op's units): the batch term, as a per-sample share
                    fallback.add(g.id)
                    sums.add(g.id, torch.from_numpy(np.abs(_unit_gradient(g, gates[key], params))))
            sums.terms += recorder.rows
    finally:
        if recorder is not None:
            recorder.close()
    sums.totals, sums.terms = all_reduce_sums(sums.totals, sums.terms, f"{desc}'s data")  # over torchrun ranks
    if not sums.terms:
        raise InputError(f"{desc}: data yielded no batches")
    if fallback and notes is not None:
        notes.append(f"{desc}: groups without a gated activation scored per batch: {', '.join(sorted(fallback))}")
    return sums.result(mean or saliency == "per_sample")


@dataclass(frozen=True)
class Taylor(ScorePass):
    data: Iterable | None = field(default=None, compare=False)
    loss_fn: Callable | None = field(default=None, compare=False)
    max_batches: int | None = None
    saliency: str = "per_sample"
    progress: bool = True
    name: ClassVar[str] = "taylor"

    def __post_init__(self) -> None:
        check_saliency(self.saliency, self.name)

    def scores(self, gm, state, groups) -> dict[str, np.ndarray]:
        if self.data is None:
            raise InputError("method 'taylor' needs data=<iterable of (inputs, targets) batches>")
        check_consistent(gm, self, self.name)  # same model and options on every torchrun rank
        return gate_saliency(gm, state.channel_graph, groups, self.data, self.loss_fn, saliency=self.saliency,
                             per_batch=np.square, mean=False, max_batches=self.max_batches,
                             progress=self.progress, desc=self.name, notes=state.notes)


def _unit_gradient(group, gate: torch.Tensor, params: dict) -> np.ndarray:
    """``dL/dm_u`` of the last backward (float64, CPU): the gate's gradient, or for units
    without a gated tensor ``sum w * dL/dw`` over their produce slices."""
    if gate.grad is not None and gate.grad.abs().sum() > 0:
        return to_numpy(gate.grad)
    out = np.zeros(group.units)
    for s in group.slices(range(group.units)):
        p = params.get(s.name)
        if s.role != "produce" or p is None or p.grad is None:
            continue
        contrib = (p.detach() * p.grad).sum(dim=[d for d in range(p.dim()) if d != s.dim]) if p.dim() > 1 else p.detach() * p.grad
        unit = group.unit_index(("p", s.name, s.dim))
        ok = unit >= 0
        out += np.bincount(unit[ok], weights=to_numpy(contrib)[ok], minlength=group.units)
    return out
