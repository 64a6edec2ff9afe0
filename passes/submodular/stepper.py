"""Run a GraphModule node by node over a fixed set of batches, pausing where asked.

Needs: a traced GraphModule and its input batches. Guarantees: ``run_until(node)``
executes every node before ``node`` (in graph order) on every batch and keeps
only values that later nodes still read, so ``value(name)`` returns a live
tensor per batch. Weights changed between calls take effect for the nodes not
yet run. Sequential pruning uses this to prune layer after layer with one
forward pass in total instead of one per layer.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import fx


class Stepper:
    def __init__(self, gm: fx.GraphModule, batches: Sequence[tuple[torch.Tensor, ...]]):
        self.gm = gm
        self.nodes = list(gm.graph.nodes)
        self.position = 0
        self.interpreters = []
        for inputs in batches:
            interp = fx.Interpreter(gm, garbage_collect_values=False)
            interp.env = {}
            interp.args_iter = iter(inputs)
            self.interpreters.append(interp)
        self._last_use = _last_uses(self.nodes)

    def run_until(self, name: str | None) -> None:
        """Execute nodes up to (excluding) ``name``; None runs to the output."""
        with torch.no_grad():
            while self.position < len(self.nodes):
                node = self.nodes[self.position]
                if node.name == name or node.op == "output":
                    return
                for interp in self.interpreters:
                    interp.env[node] = interp.run_node(node)
                    for dead in self._last_use.get(node, ()):
                        interp.env.pop(dead, None)
                self.position += 1

    def values(self, name: str) -> list[Any]:
        """The live value of node ``name`` for every batch."""
        node = next(n for n in self.nodes if n.name == name)
        return [interp.env[node] for interp in self.interpreters]

    def live(self) -> list[fx.Node]:
        """Nodes whose values are held (already run and read later)."""
        return list(self.interpreters[0].env) if self.interpreters else []

    def set_values(self, name: str, values: list[Any]) -> None:
        node = next(n for n in self.nodes if n.name == name)
        for interp, v in zip(self.interpreters, values):
            interp.env[node] = v


def _last_uses(nodes: list[fx.Node]) -> dict[fx.Node, list[fx.Node]]:
    """For each node, the values whose last reader it is."""
    last: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        for inp in node.all_input_nodes:
            last[inp] = node
    out: dict[fx.Node, list[fx.Node]] = {}
    for value, user in last.items():
        out.setdefault(user, []).append(value)
    return out
