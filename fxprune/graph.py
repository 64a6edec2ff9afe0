"""``ChannelGraph``: the groups of coupled channels, their units and parameter slices."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from .errors import PlanError
from .spaces import SpaceKey, SpaceTable

if TYPE_CHECKING:  # networkx is imported by ``to_networkx`` only: importing fxprune stays cheap
    import networkx as nx


@dataclass(frozen=True)
class ParamSlice:
    """Rows/columns of one parameter or buffer that belong to some units of a group.

    ``role``: ``"produce"`` (zeroing them zeroes the units downstream: conv/linear
    output rows, biases, BN affine/stats, parameters added or multiplied into the
    activations), ``"consume"`` (columns of layers that read the units, and slices
    that are irrelevant once the units are zero, e.g. the query/key rows of a
    removed attention head), ``"norm"`` (affine parameters of a normalisation
    over the channel dim).
    """

    name: str
    dim: int
    index: torch.Tensor
    role: str


def owner_name(key: SpaceKey) -> str:
    """Human name of a space: ``conv1.weight[0]``, ``layer1.0.relu:1``, ``heads of attn``."""
    if key[0] == "p":
        return f"{key[1]}[{key[2]}]"
    if key[0] == "a":
        return f"{key[2]} of {key[1]}"
    suffix = f".{key[2]}" if key[2] >= 0 else ""
    return f"{key[1]}{suffix}:{key[3]}"


class Group:
    """A connected set of channel spaces; its units are removed one at a time."""

    def __init__(self, graph: "ChannelGraph", gid: str, spaces: list[SpaceKey], unit_labels: np.ndarray,
                 fixed: int, reason: str | None):
        self._graph = graph
        self.id = gid
        self.spaces = spaces
        self.unit_labels = unit_labels
        self.units = int(unit_labels.shape[0])
        self.fixed_units = fixed
        self.prunable = self.units >= 2
        self.reason = None if self.prunable else (reason or "a single prunable unit")
        self.partial_reason = reason if self.prunable and fixed else None
        self.norm_members = [s for s in spaces if s in graph.norm_spaces]
        self._sorted_order = np.argsort(unit_labels, kind="stable")
        self._sorted_labels = unit_labels[self._sorted_order]

    @property
    def has_norm(self) -> bool:
        """True when pruning this group changes a normalisation's statistics."""
        return bool(self.norm_members)

    @property
    def param_spaces(self) -> list[SpaceKey]:
        return [s for s in self.spaces if s in self._graph.roles]

    def members(self) -> list[tuple[str, int, str]]:
        """(parameter name, dim, role) of every parameter member."""
        return [(s[1], s[2], self._graph.roles[s]) for s in self.param_spaces if s[0] == "p"]

    def unit_index(self, key: SpaceKey) -> np.ndarray:
        """Per element of space ``key``: its unit in this group, or -1 where it is fixed."""
        elems = self._graph.labels[self._graph.table.ids(key)]
        pos = np.searchsorted(self._sorted_labels, elems)
        pos = np.minimum(pos, max(self.units - 1, 0))
        hit = self.units > 0 and (self._sorted_labels[pos] == elems)
        return np.where(hit, self._sorted_order[pos], -1) if self.units else np.full(elems.shape, -1)

    def _check_units(self, units: Sequence[int]) -> np.ndarray:
        idx = np.asarray(list(units), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.units):
            raise PlanError(f"group {self.id!r} has units 0..{self.units - 1}, got {sorted(set(idx.tolist()))[:5]}...")
        return idx

    def slices(self, units: Sequence[int]) -> list[ParamSlice]:
        """Parameter slices that belong to ``units`` (indices in ``0..units-1``)."""
        labels = self.unit_labels[self._check_units(units)]
        table = self._graph.table
        out = []
        for key in self.param_spaces:
            if key[0] != "p":
                continue
            elems = self._graph.labels[table.ids(key)]
            index = np.nonzero(np.isin(elems, labels))[0]
            if index.size:
                out.append(ParamSlice(key[1], key[2], torch.from_numpy(index), self._graph.roles[key]))
        return out

    def summary(self) -> str:
        mods = []
        for name, _, role in self.members():
            owner = name.rsplit(".", 1)[0] if "." in name else name
            if owner not in mods:
                mods.append(owner)
        shown = ", ".join(mods[:3]) + (f" (+{len(mods) - 3})" if len(mods) > 3 else "")
        return shown

    def __repr__(self) -> str:
        return f"Group({self.id!r}, units={self.units}, prunable={self.prunable})"


class ChannelGraph:
    """Result of ``fxprune.analyze``: groups of coupled channels of one traced model."""

    def __init__(self, gm: Any, table: SpaceTable, labels: np.ndarray, roles: dict, barriers: dict,
                 norm_spaces: dict, unsupported: dict):
        self.gm = gm
        self.table = table
        self.labels = labels
        self.roles = roles
        self.barriers = barriers
        self.norm_spaces = norm_spaces
        self.unsupported = unsupported
        self.element_reasons: dict[SpaceKey, str] = {}
        self.groups: list[Group] = []
        self.removal: dict[str, Any] = {}  # group id -> fxprune.removal.GroupRemoval (set by the analysis)

    # --- construction -----------------------------------------------------------
    @classmethod
    def build(cls, an: Any) -> "ChannelGraph":
        table: SpaceTable = an.table
        labels = table.components()
        graph = cls(an.gm, table, labels, an.roles, an.barriers, an.norm_spaces, an.unsupported)
        n_labels = int(labels.max()) + 1 if labels.size else 0
        fixed = np.zeros(n_labels, dtype=bool)
        for key in an.barriers:
            fixed[labels[table.ids(key)]] = True
        for key, index, why in an.fixed_elements:
            fixed[labels[table.ids(key, index)]] = True
            graph.element_reasons.setdefault(key, why)
        has_param = np.zeros(n_labels, dtype=bool)
        for key in an.roles:
            has_param[labels[table.ids(key)]] = True
        used: set[str] = set()
        for spaces, unit_labels in graph._signature_classes(has_param):
            graph.groups.append(graph._make_group(spaces, unit_labels, fixed, used))
        graph.groups.sort(key=lambda g: (table.order[g.spaces[0]], g.id))
        return graph

    def _signature_classes(self, has_param: np.ndarray) -> list[tuple[list[SpaceKey], np.ndarray]]:
        """Units (labels with a parameter) grouped by the exact set of spaces they touch."""
        keys = list(self.table.sizes)
        sizes = np.fromiter((self.table.sizes[k] for k in keys), dtype=np.int64, count=len(keys))
        space_of_element = np.repeat(np.arange(len(keys)), sizes)
        keep = has_param[self.labels]
        pairs = np.sort(self.labels[keep] * len(keys) + space_of_element[keep])
        if not pairs.size:  # no unit holds a parameter (a model without weights)
            return []
        pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]
        pair_label, pair_space = pairs // len(keys), pairs % len(keys)
        starts = np.flatnonzero(np.r_[True, pair_label[1:] != pair_label[:-1]])
        bounds = np.r_[starts, pairs.size]
        classes: dict[bytes, list[int]] = {}
        for i, start in enumerate(starts):
            sig = pair_space[start:bounds[i + 1]]
            classes.setdefault(sig.tobytes(), []).append(int(pair_label[start]))
        order = self.table.order
        out = []
        for sig, label_list in classes.items():
            spaces = sorted((keys[j] for j in np.frombuffer(sig, dtype=np.int64)), key=lambda k: (order[k], str(k)))
            out.append((spaces, np.asarray(label_list, dtype=np.int64)))
        return out

    def _make_group(self, spaces: list[SpaceKey], unit_labels: np.ndarray, fixed: np.ndarray,
                    used: set[str]) -> Group:
        first = self.labels[self.table.ids(spaces[0])]
        in_group = np.isin(first, unit_labels)
        _, pos = np.unique(first[in_group], return_index=True)
        ordered = first[in_group][np.sort(pos)]  # units in the order of the group's first tensor
        prunable = ordered[~fixed[ordered]]
        n_fixed = int(ordered.size - prunable.size)
        reason = self._barrier_reason(spaces) if n_fixed else None
        return Group(self, self._unique_id(spaces, used), spaces, prunable, n_fixed, reason)

    def _barrier_reason(self, spaces: list[SpaceKey]) -> str:
        reasons: list[str] = []
        for s in spaces:
            for why in (self.barriers.get(s), self.element_reasons.get(s)):
                if why and why not in reasons:
                    reasons.append(why)
        if not reasons:
            return "units that no parameter produces or reads"
        more = f" (+{len(reasons) - 2} more)" if len(reasons) > 2 else ""
        return "; ".join(reasons[:2]) + more

    def _unique_id(self, spaces: list[SpaceKey], used: set[str]) -> str:
        params = [s for s in spaces if s[0] == "p" and self.roles.get(s) == "produce"]
        key = (params or [s for s in spaces if s in self.roles] or spaces)[0]
        base = key[1].rsplit(".", 1)[0] if key[0] == "p" and "." in key[1] else key[1]
        if not params:
            base += ".input"
        gid, n = base, 2
        while gid in used:
            gid, n = f"{base}#{n}", n + 1
        used.add(gid)
        return gid

    # --- queries ----------------------------------------------------------------
    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups)

    def group(self, gid: str) -> Group:
        for g in self.groups:
            if g.id == gid:
                return g
        raise PlanError(f"unknown group id {gid!r}; known ids: {', '.join(g.id for g in self.groups[:8])} ...")

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def removed_labels(self, plan: dict[str, Sequence[int]]) -> np.ndarray:
        """Boolean array over element labels: True where the plan removes the unit."""
        removed = np.zeros(int(self.labels.max()) + 1 if self.labels.size else 0, dtype=bool)
        for gid, kept in plan.items():
            g = self.group(gid)
            drop = np.ones(g.units, dtype=bool)
            drop[np.asarray(list(kept), dtype=np.int64)] = False
            removed[g.unit_labels[drop]] = True
        return removed

    def kept_index(self, key: SpaceKey, removed: np.ndarray) -> np.ndarray | None:
        """Indices of ``key`` the plan keeps, or None when it keeps them all."""
        elems = self.labels[self.table.ids(key)]
        keep = ~removed[elems]
        return None if keep.all() else np.nonzero(keep)[0]

    # --- presentation -----------------------------------------------------------
    def __str__(self) -> str:
        n_prunable = len(self.prunable_groups)
        total = sum(g.units for g in self.prunable_groups)
        lines = [f"ChannelGraph: {len(self.groups)} groups, {n_prunable} prunable, {total} prunable units"]
        width = max([len(g.id) for g in self.groups] + [5])
        lines.append(f"  {'group':<{width}}  {'units':>6}  {'fixed':>5}  status        members")
        for g in self.groups:
            status = "prunable" if g.prunable else "fixed"
            if g.prunable and g.has_norm:
                status = "prunable*"
            line = f"  {g.id:<{width}}  {g.units:>6}  {g.fixed_units:>5}  {status:<12}  {g.summary()}"
            why = g.reason or g.partial_reason
            if why:
                line += f"\n  {'':<{width}}  why: {why}"
            lines.append(line)
        if any(g.has_norm for g in self.groups):
            lines.append("  * pruning changes a normalisation's statistics (LayerNorm/GroupNorm/softmax/mean)")
        if self.unsupported:
            lines.append("  ops without a channel rule: " + ", ".join(f"{k} ({v})" for k, v in self.unsupported.items()))
        return "\n".join(lines)

    def to_networkx(self) -> nx.Graph:
        """Spaces as nodes (size, group, role, barrier), links as edges."""
        import networkx as nx

        g = nx.Graph()
        group_of = {s: grp.id for grp in self.groups for s in grp.spaces}
        for key, size in self.table.sizes.items():
            g.add_node(owner_name(key), size=size, group=group_of.get(key), role=self.roles.get(key),
                       barrier=self.barriers.get(key), norm=key in self.norm_spaces)
        for a, b in self.table.space_edges:
            if a != b:
                g.add_edge(owner_name(a), owner_name(b))
        return g
