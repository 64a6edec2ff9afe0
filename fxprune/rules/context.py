"""What a rule sees while the analysis visits one node (``RuleContext``)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import fx, nn

from ..spaces import SpaceKey, SpaceTable


def tensor_meta_shapes(node: fx.Node) -> list[tuple[int, ...]] | tuple[int, ...] | None:
    """The output shape of ``node`` (a tuple), a list of shapes for tuple outputs, or None."""
    meta = node.meta.get("tensor_meta")
    if meta is None:
        return None
    if hasattr(meta, "shape"):
        return tuple(meta.shape)
    if isinstance(meta, (tuple, list)):
        return [tuple(m.shape) if hasattr(m, "shape") else None for m in meta]
    return None


def tensor_aliases(gm: torch.nn.Module) -> dict[str, str]:
    """Every name of a shared parameter/buffer -> its first name (``named_parameters`` order)."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, tensor in [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]:
        canonical = first.setdefault(id(tensor), name)
        if canonical != name:
            out[name] = canonical
    return out


def node_shape(node: Any) -> tuple[int, ...] | None:
    """Shape of a single-tensor node (None for non-tensors and tuple outputs)."""
    if not isinstance(node, fx.Node):
        return None
    shapes = tensor_meta_shapes(node)
    return shapes if isinstance(shapes, tuple) else None


class RuleContext:
    """Per-node helper handed to a rule's ``analyze``.

    Rules call ``same``/``link`` to relate dims, ``param`` for module parameters,
    ``norm`` for dims a normalisation reduces over, ``cover`` for dims they handle
    without relating them, and ``barrier`` for dims that must stay whole.
    """

    def __init__(self, analyzer: Any, node: fx.Node, position: int):
        self.an = analyzer
        self.node = node
        self.position = position
        self.table: SpaceTable = analyzer.table
        self.covered: set[SpaceKey] = set()

    # --- lookup -----------------------------------------------------------------
    @property
    def module(self) -> nn.Module:
        return self.an.modules[self.node.target]

    def shape(self, x: Any) -> tuple[int, ...] | None:
        return node_shape(x)

    @property
    def out_shape(self) -> tuple[int, ...] | None:
        return node_shape(self.node)

    def space(self, x: Any, dim: int, out_index: int = -1) -> SpaceKey | None:
        """The space of dim ``dim`` of tensor node ``x`` (None for size-1 dims/non-tensors)."""
        return self.an.space_of(x, dim, out_index)

    def out(self, dim: int, out_index: int = -1) -> SpaceKey | None:
        return self.an.space_of(self.node, dim, out_index)

    def out_dims(self, out_index: int = -1) -> list[SpaceKey | None]:
        shapes = tensor_meta_shapes(self.node)
        shape = shapes if out_index == -1 else shapes[out_index]
        return [self.an.space_of(self.node, d, out_index) for d in range(len(shape))]

    def dims(self, x: Any) -> list[SpaceKey | None]:
        shape = node_shape(x)
        return [] if shape is None else [self.an.space_of(x, d) for d in range(len(shape))]

    def param(self, attr: str, dim: int, role: str) -> SpaceKey | None:
        """Space of dim ``dim`` of parameter/buffer ``attr`` of this node's module."""
        qualname = self.an.canonical(f"{self.node.target}.{attr}")
        owner, _, leaf = attr.rpartition(".")
        tensor = getattr(self.module.get_submodule(owner) if owner else self.module, leaf, None)
        if not isinstance(tensor, torch.Tensor) or tensor.shape[dim] < 2:
            return None
        key = self.table.add(("p", qualname, dim), tensor.shape[dim], self.position)
        self.an.set_role(key, role)
        self.covered.add(key)
        return key

    def virtual(self, tag: str, size: int) -> SpaceKey | None:
        """A space owned by this node (e.g. attention heads inside a leaf module)."""
        if size < 2:
            return None
        key = self.table.add(("a", self.node.name, tag), size, self.position)
        self.covered.add(key)
        return key

    # --- relations --------------------------------------------------------------
    def same(self, a: SpaceKey | None, b: SpaceKey | None) -> None:
        """Element i of ``a`` is element i of ``b`` (no-op when either is size 1)."""
        if a is None or b is None:
            return
        self.table.link(a, b)
        self.covered.update((a, b))

    def link(self, a: SpaceKey | None, b: SpaceKey | None, ia: Sequence[int] | np.ndarray, ib: Sequence[int] | np.ndarray) -> None:
        """Element ``ia[k]`` of ``a`` is element ``ib[k]`` of ``b``."""
        if a is None or b is None:
            return
        self.table.link(a, b, np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64))
        self.covered.update((a, b))

    def cover(self, *spaces: SpaceKey | None) -> None:
        self.covered.update(s for s in spaces if s is not None)

    def norm(self, space: SpaceKey | None) -> None:
        """``space`` is reduced over by a normalisation: pruning it changes statistics."""
        if space is not None:
            self.an.norm_spaces.setdefault(space, self.node.format_node())
            self.covered.add(space)

    def role(self, space: SpaceKey | None, role: str) -> None:
        """Give ``space`` a role; a view of a parameter (``w.t()``) passes it on to the parameter."""
        if space is not None:
            self.an.set_role(space, role)
            source = parameter_behind(self.an, space)
            if source is not None:
                self.an.set_role(source, role)

    def fix(self, space: SpaceKey | None, index: Sequence[int], why: str) -> None:
        """Elements ``index`` of ``space`` must stay (e.g. read by an integer index)."""
        if space is not None:
            self.an.fixed_elements.append((space, np.asarray(index, dtype=np.int64), f"{self.node.name}: {why}"))
            self.covered.add(space)

    def barrier(self, space: SpaceKey | None, why: str) -> None:
        if space is not None:
            self.an.add_barrier(space, f"{self.node.name}: {why}")
            self.covered.add(space)


VIEWS = {"t", "transpose", "permute", "contiguous", "to", "float", "half", "double", "detach", "clone",
         torch.t, torch.transpose, torch.permute}


def parameter_behind(an: Any, space: SpaceKey) -> SpaceKey | None:
    """The parameter space that node space ``space`` is a (transposed) view of, if any."""
    if space[0] != "n" or space[2] != -1:
        return None
    node, dim = an.nodes.get(space[1]), space[3]
    while node is not None and node.op != "get_attr":
        if node.target not in VIEWS or not node.args or not isinstance(node.args[0], fx.Node):
            return None
        dim = _source_dim(node, dim)
        if dim is None:
            return None
        node = node.args[0]
    if node is None:
        return None
    key = ("p", an.canonical(node.target), dim)
    return key if key in an.table.sizes else None


def _source_dim(node: fx.Node, dim: int) -> int | None:
    """Which input dim output dim ``dim`` of a view-like op reads."""
    shape = node_shape(node)
    if shape is None:
        return None
    n = len(shape)
    if node.target in ("t", torch.t):
        return n - 1 - dim
    if node.target in ("transpose", torch.transpose):
        a, b = (d % n for d in node.args[1:3]) if len(node.args) >= 3 else (None, None)
        return None if a is None else (b if dim == a else a if dim == b else dim)
    if node.target in ("permute", torch.permute):
        dims = node.args[1:] if node.target == "permute" else node.args[1]
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        return dims[dim] % n if all(isinstance(d, int) for d in dims) else None
    return dim
