"""ITPCC's variational gates: one per unit of a group, applied where the units enter conv/linear layers.

Needs: a ChannelGraph and groups whose readers are plain conv/linear layers
(``fxprune.consumers.group_consumers(...).supported``) and that have no
normalisation members. Guarantees: ``insert_gates`` returns a copy of the analysed
GraphModule with one ``GateSet`` per group (parameters ``mu`` and ``log_sigma2``, one
entry per unit, shared by every layer that reads the group) and one parameter-free
``ConsumerGate`` in front of each consumer, multiplying its input channels (conv) or
features (linear) by their unit's gate. Nothing else reads the group's activations
(that is what ``supported`` means), so a gate of 0 removes the unit exactly, and a
gate ``g`` folds exactly into the consumer's input columns (``fold_gates``).

In training mode a gate set draws ``z = mu + eps * sigma`` with ``eps ~ N(0, 1)`` per
sample and unit, once per forward (its graph node runs before every consumer); in
eval mode it is deterministic, ``mu * keep`` with ``keep = log_alpha < threshold``
(``log_alpha = log sigma^2 - log mu^2``; at least one unit kept) or, once frozen, the
keep mask of the final plan.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from fxprune.consumers import CONVS, ConsumerSet
from fxprune.graph import Group
from fxprune.mask import gate_key
from fxprune.rewrite import _copy_graph_module

ROOT = "fxprune_itpcc"  # ModuleDict of the GateSets in the prepared module
EPS = 1e-12


class GateSet(nn.Module):
    """The variational gates of one group: parameters ``mu`` and ``log_alpha``, buffer ``scs``.

    The gate distribution is the paper's ``N(mu, sigma^2)``, stored as ``(mu, log_alpha)``
    with ``sigma^2 = alpha * mu^2``: the regulariser depends on ``alpha`` only, so the
    optimizer moves the noise-to-signal ratio directly and the KL term does not drag the
    scale of ``mu`` (to which the task is nearly blind when a BN follows the consumer)
    towards 0. ``log_sigma2`` and ``set_`` give the ``(mu, log sigma^2)`` view.
    """

    def __init__(self, units: int, scs: np.ndarray, init_mu: float = 1.0, init_log_sigma2: float = -9.0,
                 init_noise: float = 0.01, generator: torch.Generator | None = None):
        super().__init__()
        jitter = lambda: init_noise * torch.randn(units, generator=generator)  # noqa: E731
        self.mu = nn.Parameter(init_mu + jitter())
        self.log_alpha = nn.Parameter(init_log_sigma2 - math.log(init_mu ** 2) + jitter())
        self.register_buffer("scs", torch.as_tensor(scs, dtype=torch.float32))
        self.register_buffer("keep", torch.ones(units, dtype=torch.bool))
        self.threshold = 0.0
        self.frozen = False

    @property
    def units(self) -> int:
        return int(self.mu.shape[0])

    @property
    def log_sigma2(self) -> torch.Tensor:
        """``log sigma^2 = log_alpha + log mu^2`` per unit."""
        return self.log_alpha + torch.log(self.mu.pow(2) + EPS)

    @torch.no_grad()
    def set_(self, mu: torch.Tensor | float | None = None, log_sigma2: torch.Tensor | float | None = None) -> None:
        """Set ``mu`` and/or ``log sigma^2`` (``log_alpha`` follows), in place."""
        log_sigma2 = self.log_sigma2.detach().clone() if log_sigma2 is None else log_sigma2
        if mu is not None:
            self.mu.copy_(torch.as_tensor(mu, dtype=self.mu.dtype).expand_as(self.mu))
        self.log_alpha.copy_(torch.as_tensor(log_sigma2, dtype=self.mu.dtype).expand_as(self.mu)
                             - torch.log(self.mu.pow(2) + EPS))

    def kl(self) -> torch.Tensor:
        """``log(1 + mu^2 / sigma^2) = log(1 + 1 / alpha)`` per unit (eq. 18 of the ITPCC supplement)."""
        return F.softplus(-self.log_alpha)

    def keep_mask(self) -> torch.Tensor:
        """Units kept in eval mode: the frozen plan, else ``log_alpha < threshold`` (at least one)."""
        if self.frozen:
            return self.keep
        with torch.no_grad():
            la = self.log_alpha
            keep = la < self.threshold
            if not keep.any():
                keep = keep.clone()
                keep[int(torch.argmin(la))] = True
        return keep

    def forward(self, ref: torch.Tensor | None) -> torch.Tensor:
        """Gate values, ``batch x units`` in training mode, ``1 x units`` in eval mode."""
        if self.training and not self.frozen:
            batch = ref.shape[0] if isinstance(ref, torch.Tensor) and ref.dim() else 1
            eps = torch.randn(batch, self.units, device=self.mu.device, dtype=self.mu.dtype)
            return self.mu * (1.0 + eps * torch.exp(0.5 * self.log_alpha))  # = mu + eps * sigma
        return (self.mu * self.keep_mask().to(self.mu.dtype)).unsqueeze(0)

    def extra_repr(self) -> str:
        return f"units={self.units}, threshold={self.threshold}, frozen={self.frozen}"


class ConsumerGate(nn.Module):
    """Multiplies one dim of a consumer's input by its units' gates (elements of no unit: 1)."""

    def __init__(self, index: np.ndarray, dim: int, ndim: int):
        super().__init__()
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long))
        self.dim, self.ndim = dim, ndim

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        values = torch.cat([z, z.new_ones(z.shape[0], 1)], dim=1)[:, self.index]
        if values.shape[0] not in (1, x.shape[0]):
            values = values[:1]
        shape = [values.shape[0]] + [1] * (self.ndim - 1)
        shape[self.dim] = values.shape[1]
        return x * values.view(shape)


def scs_sizes(group: Group, params: dict[str, torch.Tensor]) -> np.ndarray:
    """|SCS_s| per unit: the conv/linear output channels (filters) the unit spans.

    Counted over the group's produce-role weights with at least 2 dims (conv,
    linear, attention projections): one per output row that belongs to the unit, so
    a channel of a residual stage counts every conv writing into the stage and a
    channel inside a block counts 1. Units without such weights count their produce
    slices of any kind (at least 1).
    """
    def count(min_ndim: int) -> np.ndarray:
        total = np.zeros(group.units)
        for name, dim, role in group.members():
            p = params.get(name)
            if role != "produce" or p is None or p.dim() < min_ndim:
                continue
            unit = group.unit_index(("p", name, dim))
            total += np.bincount(unit[unit >= 0], minlength=group.units)
        return total

    sizes = count(2)
    return np.where(sizes > 0, sizes, np.maximum(count(0), 1))


def _reference_input(gm: fx.GraphModule) -> fx.Node | None:
    for node in gm.graph.nodes:
        if node.op == "placeholder" and isinstance(node.meta.get("tensor_meta"), object) \
                and hasattr(node.meta.get("tensor_meta"), "shape"):
            return node
    return None


def insert_gates(graph_gm: fx.GraphModule, sets: dict[str, ConsumerSet], gate_sets: dict[str, GateSet]
                 ) -> fx.GraphModule:
    """A copy of ``graph_gm`` with ``gate_sets[gid]`` in front of every consumer of ``sets[gid]``."""
    gm = _copy_graph_module(graph_gm)
    root = nn.ModuleDict({gate_key(gid): gs for gid, gs in gate_sets.items()})
    gm.add_submodule(ROOT, root)
    nodes = {n.name: n for n in gm.graph.nodes}
    ref = _reference_input(gm)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    z_nodes: dict[str, fx.Node] = {}
    anchor = placeholders[-1]
    for gid in gate_sets:
        with gm.graph.inserting_after(anchor):
            anchor = z_nodes[gid] = gm.graph.call_module(f"{ROOT}.{gate_key(gid)}", (ref,))
    modules = dict(gm.named_modules())
    count = 0
    for gid, cset in sets.items():
        for c in cset.consumers:
            node = nodes[c.node]
            x = node.args[0]
            ndim = len(x.meta["tensor_meta"].shape)
            dim = 1 if isinstance(modules[c.module], CONVS) else ndim - 1
            index = np.where(c.units < 0, cset.group.units, c.units)
            name = f"{ROOT}_gate_{count}"
            count += 1
            gm.add_submodule(name, ConsumerGate(index, dim, ndim))
            with gm.graph.inserting_before(node):
                gated = gm.graph.call_module(name, (x, z_nodes[gid]))
            gated.meta = dict(x.meta)
            node.replace_input_with(x, gated)
    gm.graph.lint()
    gm.recompile()
    return gm


def fold_gates(gm: fx.GraphModule, sets: dict[str, ConsumerSet], scales: dict[str, torch.Tensor]) -> None:
    """Multiply every consumer's input columns by ``scales[gid]`` of their unit, in place."""
    params = dict(gm.named_parameters())
    with torch.no_grad():
        for gid, cset in sets.items():
            if gid not in scales:
                continue
            ext = torch.cat([scales[gid].detach().to(torch.float64), torch.ones(1, dtype=torch.float64)])
            for c in cset.consumers:
                w = params[c.weight]
                per_column = ext[torch.as_tensor(np.where(c.units < 0, cset.group.units, c.units))].to(w.device)
                shape = [1] * w.dim()
                shape[1] = -1
                w.copy_((w.double() * per_column.view(shape)).to(w.dtype))


def gate_sets_of(module: nn.Module) -> dict[str, GateSet]:
    """The GateSets of a prepared module, by ModuleDict key."""
    return dict(module.get_submodule(ROOT).items())


def trained_weights(prepared_gm: fx.GraphModule, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The prepared module's tensors called ``names`` (the original model's state_dict keys)."""
    state = prepared_gm.state_dict()
    return {k: state[k] for k in names}
