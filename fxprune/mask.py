"""Masks: the same model with a 0/1 gate on every tensor of each masked group.

Needs: the ChannelGraph of a traced model and a plan. Guarantees: every node
output that carries a unit of a planned group is multiplied, along that dim, by
its unit's gate (1 for kept units and for elements outside the group), and
the produce slices of removed units are zeroed too, which also silences units
computed inside leaf modules (attention heads). With ``compensate`` (the default)
only the producers' outputs are gated, so constants that removed units leave
downstream (``sigmoid(0)``) flow on as in the reference model. For groups without
normalisation members, ``mask(...)(x) == rewrite(...)(x)`` with the same ``compensate``.
With ``learnable=True`` the gates are one ``nn.Parameter`` per group (shared by all its tensors), for training-time methods.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import fx, nn

from .graph import ChannelGraph, Group
from .plan import check_plan
from .tensors import module_device
from .rewrite import _copy_graph_module, adopt_weights
from .state import attach_state, state_of


class GroupGate(nn.Module):
    """The gate values of one group, one per unit."""

    def __init__(self, values: torch.Tensor, learnable: bool):
        super().__init__()
        self.values = nn.Parameter(values.clone(), requires_grad=learnable)


class Gate(nn.Module):
    """Multiplies one dim of a tensor by its units' gates (elements of no unit get 1)."""

    def __init__(self, group_gate: GroupGate, index: torch.Tensor, dim: int, ndim: int):
        super().__init__()
        self.group_gate = group_gate
        self.register_buffer("index", index)
        self.dim, self.ndim = dim, ndim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = self.group_gate.values
        extended = torch.cat([values, values.new_ones(1)])
        shape = [1] * self.ndim
        shape[self.dim] = -1
        return x * extended[self.index].view(shape)


def _insert_gate(gm: fx.GraphModule, node: fx.Node, gate: Gate, name: str) -> None:
    gm.add_submodule(name, gate)
    with gm.graph.inserting_after(node):
        gated = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(gated, delete_user_cb=lambda user: user is not gated)
    gated.meta = dict(node.meta)


def mask(model_or_gm: nn.Module, graph: ChannelGraph, plan: Mapping[str, Sequence[int]], *,
         learnable: bool = False, compensate: bool = True) -> fx.GraphModule:
    """A copy of the analysed model with gates implementing ``plan`` (see module doc)."""
    weights = adopt_weights(graph, model_or_gm)
    plan = check_plan(graph, plan)
    gm = _copy_graph_module(graph.gm)
    if weights is not None:
        gm.load_state_dict(weights)
    nodes = {n.name: n for n in gm.graph.nodes}
    device = module_device(gm)
    gates = nn.ModuleDict()
    for gid, kept in plan.items():
        group = graph.group(gid)
        values = torch.zeros(group.units, device=device)
        values[list(kept)] = 1.0
        group_gate = GroupGate(values, learnable)
        gates[gate_key(gid)] = group_gate
        for key in _gated_spaces(graph, group, learnable, compensate):
            node = nodes[key[1]]
            if node.op in ("placeholder", "output"):
                continue
            ndim = len(node.meta["tensor_meta"].shape)
            unit = group.unit_index(key)
            index = torch.from_numpy(np.where(unit < 0, group.units, unit)).to(device)
            _insert_gate(gm, node, Gate(group_gate, index, key[3], ndim), f"fxprune_gate_{len(gates)}_{key[1]}_{key[3]}")
        if not learnable:  # also silences units computed inside leaf ops (attention heads)
            _zero_removed_produce(gm, group, kept)
    gm.add_submodule("fxprune_gates", gates)
    gm.graph.lint()
    gm.recompile()
    state = attach_state(gm, state_of(graph.gm).example_inputs)
    state.plan = plan
    return gm


def _gated_spaces(graph: ChannelGraph, group: Group, learnable: bool, compensate: bool) -> list:
    """The node spaces that get a gate: every one, or (exact removal) only the producers' outputs,
    so that what the removed units leave downstream (``sigmoid(0)``) flows on as in the rewrite."""
    spaces = [k for k in group.spaces if k[0] == "n" and k[2] == -1]
    removal = graph.removal.get(group.id)
    if learnable or not compensate or removal is None:
        return spaces
    at_origins = [k for k in spaces if k[1] in set(removal.origins)]
    return at_origins or spaces


def gate_key(gid: str) -> str:
    """Name of a group's gate in ``gm.fxprune_gates``."""
    return gid.replace(".", "_").replace("#", "_")


def _zero_removed_produce(gm: fx.GraphModule, group: Group, kept: Sequence[int]) -> None:
    removed = sorted(set(range(group.units)) - set(kept))
    if not removed:
        return
    with torch.no_grad():
        for s in group.slices(removed):
            if s.role == "produce":
                t = gm.get_parameter(s.name) if _is_param(gm, s.name) else gm.get_buffer(s.name)
                t.index_fill_(s.dim, s.index.to(t.device), 0.0)


def _is_param(gm: nn.Module, name: str) -> bool:
    try:
        gm.get_parameter(name)
        return True
    except AttributeError:
        return False
