"""Fast cost of a plan from its kept counts, without rewriting the model.

``CostModel.build(graph, example_inputs)`` measures the full model once; then
``params(counts)`` and ``macs(counts)`` give, in microseconds, what
``fxprune.report.count_params`` / ``count_macs`` would report for the model that
``fxprune.rewrite`` builds from any plan keeping ``counts[gid]`` units of each
group (absent groups keep all their units).

How it works. A channel space (one dim of one tensor, see ``fxprune.spaces``) may
hold elements of several groups (after ``cat``) and fixed elements. Every unit of
a group spans the same spaces (that is how groups are formed), so a space keeps
``fixed + sum_g elements_per_unit[g] * counts[g]`` elements. Both costs are sums
of *terms* ``base * prod(kept(s) / size(s) for s in spaces)``:

- params: one term per unique parameter, ``base = numel``, ``spaces`` = its dims.
  Exact (parameters are sliced along exactly these spaces).
- MACs: each graph node's MACs are measured once with ``FlopCounterMode`` (the
  counter ``count_macs`` uses) and scaled by the kept fractions of the sizes its
  MACs are proportional to:

  ========================================  ===========================================  =====
  node                                      MACs proportional to                         exact
  ========================================  ===========================================  =====
  Conv1d/2d/3d, ``F.conv*`` (any groups)    output numel x weight dim 1 (in/groups)      yes
  ConvTranspose*, ``F.conv_transpose*``     input numel x weight dim 1 (out/groups)      yes
  Linear, ``F.linear``                      output numel x weight dim 1 (in features)    yes
  mm / bmm / matmul / ``@`` / addmm /       output numel x last dim of the left operand  yes
  baddbmm
  ``F.scaled_dot_product_attention``        q numel x S  +  output numel x S             yes
  anything else that carries MACs (leaf     output numel x last dim of first input       no
  attention modules, einsum, ...)
  ========================================  ===========================================  =====

  Depthwise convs keep ``groups == channels``: their weight dim 1 has size 1, so
  only the output channels scale, as in the rewritten conv. The approximate rows
  are listed in ``CostModel.approximate`` (node names): a leaf module doing
  attention is scaled like one projection, which is exact neither for its
  projections (when embed and head widths are pruned apart) nor for its
  attention matmuls. Every attention kernel is counted, whichever torch picks
  (``fxprune.flops``: fused scaled-dot-product kernels get a formula, the fused
  MultiheadAttention fast path is off while measuring).

``counts`` values may also be the kept units themselves (a plan, or use
``counts_of(plan)``). Units of a group usually have the same width in every
space; where they do not (a grouped conv after ``cat`` of unequal inputs; never
in the zoo) a count is costed with the mean width and the space is listed in
``CostModel.approximate``, while kept units are costed exactly.
Parameters counted are those of the analysed GraphModule; a rewrite that swaps a
module for one with different parameters (``PrunedMultiheadAttention``) may differ.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import InputError
from .flops import attention_fast_path_off, flop_counter
from .graph import ChannelGraph
from .report import eval_mode
from .rules.context import tensor_meta_shapes
from .spaces import SpaceKey
from .state import state_of

__all__ = ["CostModel", "counts_of", "measure_node_macs"]

_CONV = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}
_CONV_T = {F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d}
_MATMUL = {torch.matmul, operator.matmul, torch.mm, torch.bmm, "matmul", "mm", "bmm", "__matmul__"}
_ADDMM = {torch.addmm, torch.baddbmm, "addmm", "baddbmm"}


def counts_of(plan: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Kept counts of a plan: ``{gid: len(kept units)}``."""
    return {gid: len(kept) for gid, kept in plan.items()}


@dataclass(frozen=True)
class _Term:
    """``base * prod(kept(s) / size(s))`` over ``spaces`` (indices into the space list)."""

    base: int
    spaces: tuple[int, ...]


@dataclass
class CostModel:
    """Params and MACs of a pruned model as functions of the kept count of every group.

    Needs: ``counts`` maps group ids of the analysed graph to a kept count in
    ``1..units`` (a non-prunable group only to its full count) or to the kept
    units; absent groups keep all. ``InputError`` otherwise.
    Guarantees: ``params(counts)`` / ``macs(counts)`` equal ``count_params`` /
    ``count_macs`` (on the inputs given to ``build``) of ``fxprune.rewrite`` for any
    plan with these counts, except on the nodes and spaces in ``approximate``.
    Both are non-decreasing in every count.
    """

    units: dict[str, int]
    prunable: dict[str, bool]
    full_params: int
    full_macs: int
    approximate: list[str] = field(default_factory=list)
    _sizes: np.ndarray = field(default=None, repr=False)
    _fixed: np.ndarray = field(default=None, repr=False)
    _per_unit: np.ndarray = field(default=None, repr=False)  # spaces x groups, elements per unit
    _group_ids: list[str] = field(default_factory=list, repr=False)
    _gindex: dict[str, int] = field(default_factory=dict, repr=False)
    _param_terms: list[_Term] = field(default_factory=list, repr=False)
    _mac_terms: list[_Term] = field(default_factory=list, repr=False)
    _widths: dict[int, list[tuple[int, np.ndarray]]] = field(default_factory=dict, repr=False)
    node_macs: dict[str, int] = field(default_factory=dict, repr=False)  # full model, per graph node

    # --- construction -----------------------------------------------------------
    @classmethod
    def build(cls, graph: ChannelGraph, example_inputs: Any = None) -> "CostModel":
        """Measure ``graph``'s model once on ``example_inputs`` (default: the analysed inputs)."""
        inputs = _inputs(graph, example_inputs)
        builder = _Builder(graph)
        param_terms = builder.param_terms()
        node_macs = measure_node_macs(graph.gm, inputs)
        mac_terms = [t for name, macs in node_macs.items() for t in builder.mac_terms(name, macs)]
        model = cls(
            units={g.id: g.units for g in graph.groups},
            prunable={g.id: g.prunable for g in graph.groups},
            full_params=sum(t.base for t in param_terms),
            full_macs=sum(node_macs.values()),
            approximate=builder.approximate,
            _group_ids=[g.id for g in graph.groups],
            _gindex={g.id: i for i, g in enumerate(graph.groups)},
            _param_terms=param_terms,
            _mac_terms=mac_terms,
            node_macs=node_macs,
        )
        model._sizes, model._fixed, model._per_unit = builder.space_arrays()
        model._widths = builder.widths
        return model

    # --- queries ----------------------------------------------------------------
    def params(self, counts: Mapping[str, int | Sequence[int]]) -> int:
        """Parameter count of the model pruned to ``counts`` (or to a plan)."""
        return self._total(self._param_terms, counts)

    def macs(self, counts: Mapping[str, int | Sequence[int]]) -> int:
        """MACs (one forward on the build inputs) of the model pruned to ``counts`` (or a plan)."""
        return self._total(self._mac_terms, counts)

    def cost(self, counts: Mapping[str, int | Sequence[int]], measure: str = "params") -> int:
        """``params`` or ``macs`` by name."""
        return getattr(self, _check_measure(measure))(counts)

    def full(self, measure: str = "params") -> int:
        """Cost of the unpruned model."""
        return getattr(self, f"full_{_check_measure(measure)}")

    def kept_sizes(self, counts: Mapping[str, int | Sequence[int]]) -> np.ndarray:
        """Kept elements of every costed space (in build order).

        A value may be a count or the kept units themselves (a plan): units are
        needed only to be exact where units of a group differ in width.
        """
        k = np.array([self.units[g] for g in self._group_ids], dtype=np.float64)
        exact = []
        for gid, value in counts.items():
            gi, n, units = self._parse(gid, value)
            k[gi] = n
            if units is not None and gi in self._widths:
                exact.append((gi, units))
        kept = self._fixed + self._per_unit @ k
        for gi, units in exact:
            for s, width in self._widths[gi]:
                kept[s] += width[units].sum() - self._per_unit[s, gi] * units.size
        return kept

    def _parse(self, gid: str, value: Any) -> tuple[int, int, np.ndarray | None]:
        """(group index, kept count, kept units or None) of one ``counts`` entry."""
        if gid not in self._gindex:
            raise InputError(f"unknown group id {gid!r} in counts")
        units = None
        if not isinstance(value, (int, np.integer)):
            array = np.asarray(value)
            if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
                raise InputError(f"group {gid!r}: expected a kept count or a list of kept units, got {value!r}")
            units = np.unique(array.astype(np.int64))
            if units.size != array.size or (units.size and not 0 <= units[0] <= units[-1] < self.units[gid]):
                raise InputError(f"group {gid!r}: kept units must be distinct indices in 0..{self.units[gid] - 1}")
            value = units.size
        low = 1 if self.prunable[gid] else self.units[gid]
        if not low <= value <= self.units[gid]:
            raise InputError(f"group {gid!r}: kept count must be in {low}..{self.units[gid]}, got {value}")
        return self._gindex[gid], int(value), units

    def _total(self, terms: list[_Term], counts: Mapping[str, int | Sequence[int]]) -> int:
        kept = [int(round(v)) for v in self.kept_sizes(counts)]
        sizes = self._sizes
        total = 0
        for t in terms:
            num, den = t.base, 1
            for s in t.spaces:
                num *= kept[s]
                den *= int(sizes[s])
            total += (2 * num + den) // (2 * den)  # nearest integer; den divides num unless approximate
        return total


def _check_measure(measure: str) -> str:
    if measure not in ("params", "macs"):
        raise InputError(f"measure must be 'params' or 'macs', got {measure!r}")
    return measure


def _inputs(graph: ChannelGraph, example_inputs: Any) -> tuple:
    if example_inputs is None:
        state = state_of(graph.gm)
        if state is None:
            raise InputError("CostModel.build needs example_inputs (the graph carries none)")
        return tuple(state.example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


# --- measuring ------------------------------------------------------------------
class _MacRecorder(fx.Interpreter):
    """Runs a GraphModule, recording each node's MACs from one shared FlopCounterMode."""

    def __init__(self, gm: fx.GraphModule, counter: FlopCounterMode):
        super().__init__(gm)
        self.counter = counter
        self.macs: dict[str, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        before = self.counter.get_total_flops()
        out = super().run_node(n)
        self.macs[n.name] = int(self.counter.get_total_flops() - before) // 2
        return out


def measure_node_macs(gm: fx.GraphModule, inputs: tuple) -> dict[str, int]:
    """MACs of every node of ``gm`` for one eval-mode forward on ``inputs`` (as ``count_macs``)."""
    counter = flop_counter()
    recorder = _MacRecorder(gm, counter)
    with eval_mode(gm), torch.no_grad(), attention_fast_path_off(), counter:
        recorder.run(*inputs)
    return recorder.macs


# --- terms and spaces -----------------------------------------------------------
class _Builder:
    """Collects the spaces that terms use and how many elements each group puts in them."""

    def __init__(self, graph: ChannelGraph):
        self.graph = graph
        self.modules = dict(graph.gm.named_modules())
        self.nodes = {n.name: n for n in graph.gm.graph.nodes}
        self.index: dict[SpaceKey, int] = {}
        self.approximate: list[str] = []
        self.widths: dict[int, list[tuple[int, np.ndarray]]] = {}
        self.groups_of: dict[SpaceKey, list[int]] = {}
        for gi, g in enumerate(graph.groups):
            for s in g.spaces:
                self.groups_of.setdefault(s, []).append(gi)

    def space(self, key: SpaceKey) -> int | None:
        """Index of ``key`` (registered on first use); None for a dim without a space."""
        if key not in self.graph.table.sizes:
            return None
        if key not in self.index:
            self.index[key] = len(self.index)
        return self.index[key]

    def spaces(self, keys: list[SpaceKey]) -> tuple[int, ...]:
        return tuple(i for k in keys if (i := self.space(k)) is not None)

    def param_terms(self) -> list[_Term]:
        return [
            _Term(p.numel(), self.spaces([("p", name, d) for d in range(p.dim())]))
            for name, p in self.graph.gm.named_parameters()
        ]

    # MACs ---------------------------------------------------------------------
    def mac_terms(self, name: str, macs: int) -> list[_Term]:
        """The terms of node ``name`` whose full-model MACs are ``macs`` (see the module table)."""
        node = self.nodes[name]
        if not macs:
            return []
        if _target_in(node, {F.scaled_dot_product_attention}):
            terms = self._sdpa_terms(node, macs)
            if terms is not None:
                return terms
        keys = self._exact_keys(node)
        if keys is None:
            self.approximate.append(name)
            keys = self._out_keys(node) + self._last_dim(_first_tensor_arg(node))
        return [_Term(macs, self.spaces(keys))]

    def _exact_keys(self, node: fx.Node) -> list[SpaceKey] | None:
        if node.op == "call_module":
            mod = self.modules[node.target]
            weight1 = [("p", f"{node.target}.weight", 1)]
            if isinstance(mod, nn.modules.conv._ConvTransposeNd):
                return self._out_keys(node.args[0]) + weight1
            if isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
                return self._out_keys(node) + weight1
            return None
        if _target_in(node, _CONV | {F.linear}):
            return self._out_keys(node) + self._dim_key(_arg(node, 1, "weight"), 1)
        if _target_in(node, _CONV_T):
            return self._out_keys(node.args[0]) + self._dim_key(_arg(node, 1, "weight"), 1)
        if _target_in(node, _MATMUL):
            return self._out_keys(node) + self._last_dim(node.args[0])
        if _target_in(node, _ADDMM):
            return self._out_keys(node) + self._last_dim(node.args[1])
        return None

    def _sdpa_terms(self, node: fx.Node, macs: int) -> list[_Term] | None:
        q, k, v = (_arg(node, i, n) for i, n in enumerate(("query", "key", "value")))
        qs, ks, vs = (_shape(x) for x in (q, k, v))
        if not (qs and ks and vs) or len(qs) < 2 or qs[:-2] != vs[:-2] or qs[:-2] != ks[:-2]:
            return None
        batch = int(np.prod(qs[:-2]))
        m1, m2 = batch * qs[-2] * ks[-2] * qs[-1], batch * qs[-2] * ks[-2] * vs[-1]
        if m1 + m2 != macs:
            return None
        seq = self._dim_key(k, len(ks) - 2)
        return [_Term(m1, self.spaces(self._out_keys(q) + seq)), _Term(m2, self.spaces(self._out_keys(node) + seq))]

    def _out_keys(self, node: Any) -> list[SpaceKey]:
        shape = _shape(node)
        return [] if shape is None else [k for d in range(len(shape)) for k in self._dim_key(node, d)]

    def _last_dim(self, node: Any) -> list[SpaceKey]:
        shape = _shape(node)
        return [] if not shape else self._dim_key(node, len(shape) - 1)

    @staticmethod
    def _dim_key(node: Any, dim: int) -> list[SpaceKey]:
        if not isinstance(node, fx.Node):
            return []
        return [("p", node.target, dim) if node.op == "get_attr" else ("n", node.name, -1, dim)]

    # space arrays ---------------------------------------------------------------
    def space_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(size, fixed elements, elements per unit of each group) of every registered space."""
        groups = self.graph.groups
        n = len(self.index)
        sizes = np.zeros(n)
        fixed = np.zeros(n)
        per_unit = np.zeros((n, len(groups)))
        for key, i in self.index.items():
            sizes[i] = fixed[i] = self.graph.table.sizes[key]
            for gi in self.groups_of.get(key, []):
                g = groups[gi]
                unit = g.unit_index(key)
                width = np.bincount(unit[unit >= 0], minlength=g.units)
                if g.units and width.min() != width.max():
                    self.approximate.append(f"space {key} (units of {g.id!r} differ in width: exact for plans only)")
                    self.widths.setdefault(gi, []).append((i, width))
                per_unit[i, gi] = width.mean() if g.units else 0.0
                fixed[i] -= width.sum()
        return sizes, fixed, per_unit


def _target_in(node: fx.Node, targets: set) -> bool:
    if node.op not in ("call_function", "call_method"):
        return False
    try:
        return node.target in targets
    except TypeError:  # unhashable target
        return False


def _arg(node: fx.Node, i: int, name: str) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(name)


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    shapes = tensor_meta_shapes(node)
    return shapes if isinstance(shapes, tuple) else None


def _first_tensor_arg(node: fx.Node) -> Any:
    return next((a for a in node.all_input_nodes if _shape(a) is not None), None)
