"""The layers that read a group: where its units enter the next linear maps.

Needs: a ChannelGraph. Guarantees: for a group, either the list of its
``Consumer`` layers (``nn.Conv1d/2d/3d`` with ``groups == 1`` and ``nn.Linear``
modules whose weight's input dim carries the group's units) or a reason why the
group has some other reader (grouped conv, attention, a functional op with
weights ...). Reconstruction methods (``submodular``) and consumer-side gates
(``itpcc``) work on the first kind and report the second.

A consumer's input columns are laid out as the layer sees them: for a conv,
``in_channels x prod(kernel_size)`` columns of the unfolded input (channel
major, as ``torch.nn.functional.unfold`` orders them); for a linear layer, its
``in_features``. ``units`` gives, per input channel (conv) or feature (linear),
the unit of the group it carries, or -1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import fx, nn

from .graph import ChannelGraph, Group

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class Consumer:
    """One conv/linear layer reading a group's units."""

    node: str  # fx node name of the call_module
    module: str  # qualified module name
    weight: str  # its weight's parameter name
    units: np.ndarray  # per input channel (conv) / feature (linear): unit of the group, or -1

    @property
    def block(self) -> int:
        """Input elements of this layer per unit of the group (features per channel x kernel)."""
        counts = np.bincount(self.units[self.units >= 0])
        return int(counts.max()) if counts.size else 0


@dataclass(frozen=True)
class ConsumerSet:
    """The consumers of one group, or why it has readers that are not plain conv/linear."""

    group: Group
    consumers: list[Consumer]
    reason: str | None = None

    @property
    def supported(self) -> bool:
        return self.reason is None and bool(self.consumers)


def _module_nodes(gm: fx.GraphModule) -> dict[str, list[fx.Node]]:
    out: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            out.setdefault(node.target, []).append(node)
    return out


def _plain_layer(module: nn.Module) -> bool:
    if isinstance(module, CONVS):
        return module.groups == 1
    return isinstance(module, nn.Linear)


def group_consumers(graph: ChannelGraph, group: Group) -> ConsumerSet:
    """The conv/linear layers whose input carries ``group`` (see module doc)."""
    gm = graph.gm
    modules = dict(gm.named_modules())
    nodes_of = _module_nodes(gm)
    consumers = []
    for name, dim, role in group.members():
        if role != "consume":
            continue
        owner, _, attr = name.rpartition(".")
        module = modules.get(owner)
        why = _unsupported(module, owner, attr, dim, nodes_of)
        if why:
            return ConsumerSet(group, [], why)
        units = group.unit_index(("p", name, dim))
        consumers.append(Consumer(nodes_of[owner][0].name, owner, name, units))
    if not consumers:
        return ConsumerSet(group, [], "no conv/linear layer reads this group")
    for c in consumers:
        counts = np.bincount(c.units[c.units >= 0], minlength=group.units)
        if counts.min() != counts.max():
            return ConsumerSet(group, [], f"{c.module} reads the units with unequal widths")
    return ConsumerSet(group, consumers)


def _unsupported(module: nn.Module | None, owner: str, attr: str, dim: int,
                 nodes_of: dict[str, list[fx.Node]]) -> str | None:
    if module is None or attr != "weight":
        return f"{owner or attr}.{attr} reads the group and is not a conv/linear weight"
    if not _plain_layer(module):
        kind = "grouped conv" if isinstance(module, CONVS) else type(module).__name__
        return f"{owner} ({kind}) reads the group; only ungrouped conv and linear layers are handled"
    if dim != 1:
        return f"{owner} reads the group along weight dim {dim}"
    if len(nodes_of.get(owner, [])) != 1:
        return f"{owner} is called {len(nodes_of.get(owner, []))} times"
    return None
