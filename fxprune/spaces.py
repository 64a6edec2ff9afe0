"""Channel spaces and the element-level links between them.

A *space* is one dimension of one tensor (a node output, one element of a tuple
output, a parameter or buffer) or a virtual index set a rule needs (attention
heads inside a leaf module). Its elements are indices ``0..size-1``. Rules link
elements of spaces; connected elements form a *unit* (removed together), and
spaces connected by any link form a *group*.

Space keys are tuples:

- ``("n", node_name, out_index, dim)``: a node's output (``out_index`` -1 for a
  plain tensor, ``i`` for element ``i`` of a tuple output);
- ``("p", qualified_name, dim)``: a parameter or buffer (also ``get_attr`` nodes);
- ``("a", node_name, tag)``: a virtual space owned by one node's rule.

Dimensions of size 1 have no space: they cannot lose an element, and
broadcasting against them relates nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SpaceKey = tuple

ROLES = ("produce", "consume", "norm")


@dataclass
class SpaceTable:
    """Registry of spaces (offsets into one global element numbering) and links."""

    sizes: dict[SpaceKey, int] = field(default_factory=dict)
    offsets: dict[SpaceKey, int] = field(default_factory=dict)
    order: dict[SpaceKey, int] = field(default_factory=dict)  # topological position
    total: int = 0
    _link_a: list[np.ndarray] = field(default_factory=list)
    _link_b: list[np.ndarray] = field(default_factory=list)
    space_edges: list[tuple[SpaceKey, SpaceKey]] = field(default_factory=list)

    def add(self, key: SpaceKey, size: int, position: int) -> SpaceKey:
        """Register ``key`` (idempotent) and return it."""
        if key not in self.offsets:
            self.sizes[key] = size
            self.offsets[key] = self.total
            self.order[key] = position
            self.total += size
        elif self.sizes[key] != size:
            raise AssertionError(f"space {key} registered with sizes {self.sizes[key]} and {size}")
        return key

    def ids(self, key: SpaceKey, index: np.ndarray | None = None) -> np.ndarray:
        """Global element ids of ``key`` (all, or at ``index``)."""
        start = self.offsets[key]
        if index is None:
            return np.arange(start, start + self.sizes[key], dtype=np.int64)
        return start + np.asarray(index, dtype=np.int64)

    def link(self, a: SpaceKey, b: SpaceKey, ia: np.ndarray | None = None, ib: np.ndarray | None = None) -> None:
        """Tie element ``ia[k]`` of ``a`` to element ``ib[k]`` of ``b`` (all, if omitted)."""
        ga, gb = self.ids(a, ia), self.ids(b, ib)
        if ga.shape != gb.shape:
            raise AssertionError(f"link between {a} and {b}: {ga.shape} vs {gb.shape} elements")
        if a != b or ia is not None:
            self._link_a.append(ga)
            self._link_b.append(gb)
        self.space_edges.append((a, b))

    def components(self) -> np.ndarray:
        """Element label array: elements with equal labels form one unit."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        if self.total == 0:
            return np.zeros(0, dtype=np.int64)
        a = np.concatenate(self._link_a) if self._link_a else np.zeros(0, dtype=np.int64)
        b = np.concatenate(self._link_b) if self._link_b else np.zeros(0, dtype=np.int64)
        adj = coo_matrix((np.ones(a.shape[0], dtype=np.int8), (a, b)), shape=(self.total, self.total))
        _, labels = connected_components(adj, directed=False)
        return labels.astype(np.int64)
