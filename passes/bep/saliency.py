"""BEP's saliency measurement (App. A, eq. A1) on a fixed instrumentation subset (App. G.1).

Eq. A1 scores unit ``c`` by the mean over the samples ``d`` of ``|sum_j a_dj dL_d/da_dj|``:
the absolute value is taken **per sample**, then averaged. The unit's activations are
read through a gate ``g`` (=1) on every tensor of the unit (``fxprune.mask(...,
learnable=True)``): ``dL/dg = sum_j a_j dL/da_j``. Here the gate is made per sample
(``PerSampleGates``: a ``(N, U)`` tensor of ones) so that one backward pass of the batch
gives every sample's ``dL/dg_n`` at once: with a loss that is a mean over the batch (the
default ``F.cross_entropy``) the gradient of ``g_n`` is ``(1/N) dL_n/dg_n``, so it is
multiplied by ``N``. (A loss summed over the batch would scale every measurement by
``N``, the same constant for every unit; the GP's preprocessing and the decision's
per-group normalisation remove it. A1's ``1/(W H)`` is a constant per group, left out for
the same reason.) Samples are independent because the model is measured in ``eval()``
mode (batch-norm running statistics, no dropout).

``saliency="per_batch"`` keeps the cheaper ``|sum_batch a dL/da|`` (the gate shared by the
batch), averaged over the batches: a different quantity, named so.

The accumulation is in one function, ``accumulate_saliency`` (sums over the subset and the
sample count), and the mean in another, ``finish_saliency``: a data-parallel run
all-reduces the sums and counts between the two.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import fx, nn

from fxprune.errors import InputError
from fxprune.graph import Group
from fxprune.mask import Gate, gate_key

#: ``saliency`` option values: eq. A1 per sample, or the per-batch variant.
SALIENCY_MODES: tuple[str, ...] = ("per_sample", "per_batch")


class PerSampleGate(Gate):
    """A ``Gate`` whose values are per sample: ``group_gate.sample_values`` (N, U) when set."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = getattr(self.group_gate, "sample_values", None)
        if values is None:
            return super().forward(x)
        if x.dim() == 0 or x.shape[0] != values.shape[0]:
            raise InputError(f"bep per-sample saliency needs the batch on dim 0 of every gated tensor (got shape "
                             f"{tuple(x.shape)} for a batch of {values.shape[0]}); use saliency='per_batch'")
        extended = torch.cat([values, values.new_ones(values.shape[0], 1)], dim=1)
        shape = [1] * self.ndim
        shape[0], shape[self.dim] = values.shape[0], -1
        return x * extended[:, self.index].view(shape)


def per_sample_gates(gated: fx.GraphModule) -> fx.GraphModule:
    """Make every gate of ``gated`` (a learnable ``fxprune.mask``, owned by the caller) a
    ``PerSampleGate``; returns the same module."""
    for m in gated.modules():
        if type(m) is Gate:
            m.__class__ = PerSampleGate
    return gated


def device_of(module: nn.Module) -> torch.device:
    """The device of the module's first parameter (CPU for a module without parameters)."""
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def inputs_for(module: nn.Module, inputs: tuple) -> tuple:
    """``inputs`` (a tuple of tensors) on ``module``'s device."""
    device = device_of(module)
    return tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs)


def _gated_groups(gated: fx.GraphModule, ids: Sequence[str]) -> dict[str, nn.Module]:
    used = {id(m.group_gate) for m in gated.modules() if isinstance(m, Gate)}
    gates = {gid: gated.fxprune_gates[gate_key(gid)] for gid in ids}
    missing = [gid for gid, g in gates.items() if id(g) not in used]
    if missing:
        raise InputError(f"bep saliency: group(s) {', '.join(missing)} have no gated tensor (units computed inside a "
                         f"leaf op); BEP cannot measure their saliency")
    return gates


def accumulate_saliency(gated: fx.GraphModule, groups: Sequence[Group], batches: Iterable[tuple[tuple, Any]],
                        loss_fn: Callable, mode: str = "per_sample") -> tuple[dict[str, torch.Tensor], int]:
    """Sums of eq. A1's per-sample ``|a . dL/da|`` (or, ``mode="per_batch"``, of the per-batch
    ``|sum a . dL/da|``) over ``batches``, per group: ``({gid: (U,) float64 on the model's
    device}, count)`` with ``count`` the samples (or batches) summed. The mean is
    ``finish_saliency``; a distributed run all-reduces sums and count in between.

    Needs ``gated``: a learnable ``fxprune.mask`` of the model (made ``PerSampleGate`` by
    ``per_sample_gates`` for ``per_sample``), in eval mode; batches ``(inputs tuple, target)``
    on any device (moved to the model's). Leaves parameter gradients set.
    """
    if mode not in SALIENCY_MODES:
        raise InputError(f"bep option saliency must be one of {', '.join(SALIENCY_MODES)}, got {mode!r}")
    device = device_of(gated)
    gates = _gated_groups(gated, [g.id for g in groups])
    sums = {g.id: torch.zeros(g.units, dtype=torch.float64, device=device) for g in groups}
    count = 0
    for x, y in batches:
        x = tuple(t.to(device) for t in x)
        y = y.to(device) if isinstance(y, torch.Tensor) else y
        n = x[0].shape[0] if x and x[0].dim() else 1
        gated.zero_grad(set_to_none=True)
        if mode == "per_sample":
            for gid, gate in gates.items():
                gate.sample_values = torch.ones(n, len(sums[gid]), device=device, requires_grad=True)
        try:
            loss_fn(gated(*x), y).backward()
            for gid, gate in gates.items():
                if mode == "per_sample":
                    sums[gid] += (n * gate.sample_values.grad).abs().sum(0).double()
                else:
                    sums[gid] += gate.values.grad.abs().double()
        finally:
            for gate in gates.values():
                gate.sample_values = None
        count += n if mode == "per_sample" else 1
    return sums, count


def finish_saliency(sums: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """The mean saliency per group from ``accumulate_saliency``'s sums (on the CPU)."""
    if count < 1:
        raise InputError("bep saliency: the instrumentation subset is empty")
    return {gid: (s / count).cpu() for gid, s in sums.items()}


def take_subset(data: Iterable, samples: int, split: Callable) -> list[tuple[tuple, Any]]:
    """The first ``samples`` samples of ``data`` (batches of (inputs, target)), detached copies
    re-batched as they came (the last batch cut): the fixed instrumentation subset."""
    out, have = [], 0
    for b in data:
        if have >= samples:
            break
        x, y = split(b)
        n = x[0].shape[0] if x and x[0].dim() else 1
        k = min(n, samples - have)
        cut = (lambda t: t[:k]) if k < n else (lambda t: t)
        out.append((tuple(cut(t).detach().clone() for t in x),
                    cut(y).detach().clone() if isinstance(y, torch.Tensor) else y))
        have += k
    return out
