"""Helpers for the property tests of ``tests/test_properties.py``.

* plan drawing: hypothesis keep-sets per group, repaired so that no space of the
  group loses every element (``check_plan`` rejects such plans by design);
* the zero-produce reference model (the semantics a removed unit must have);
* output comparison with a scale-aware tolerance;
* state snapshots and a structural consistency check of every module of a
  rewritten GraphModule.
"""
from __future__ import annotations

import copy
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from hypothesis import strategies as st
from torch import fx, nn

from fxprune.graph import ChannelGraph, Group

RTOL = 1e-5
"""Allowed max abs difference, relative to ``max(1, output scale)``."""

Plan = dict[str, list[int]]


# ---------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------


def keep_sets(units: int) -> st.SearchStrategy[frozenset[int]]:
    """Kept units of one group: a random non-empty subset (keep-all included).

    Drawn as "how many to remove" plus a permutation, so every removal count is
    as likely as keep-all, and failures shrink towards removing few, low units.
    """
    return st.tuples(st.integers(0, units - 1), st.permutations(range(units))).map(
        lambda t: frozenset(t[1][t[0]:]))


def repair_keep(group: Group, kept: Iterable[int]) -> list[int]:
    """Add the first unit of every space of ``group`` the keep-set would leave empty."""
    out = set(kept)
    for key in group.spaces:
        unit = group.unit_index(key)
        if unit.size == 0 or (unit < 0).any():
            continue  # fixed elements always stay
        present = set(unit.tolist())
        if not present & out:
            out.add(min(present))
    return sorted(out)


def draw_plan(data: st.DataObject, groups: Sequence[Group], label: str = "") -> Plan:
    """Draw a repaired keep-set for every group in ``groups``."""
    plan: Plan = {}
    for g in groups:
        kept = data.draw(keep_sets(g.units), label=f"{label}keep[{g.id}]")
        plan[g.id] = repair_keep(g, kept)
    return plan


def removed_units(graph: ChannelGraph, plan: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    return {gid: sorted(set(range(graph.group(gid).units)) - set(kept)) for gid, kept in plan.items()}


def removes_something(graph: ChannelGraph, plan: Mapping[str, Sequence[int]]) -> bool:
    return any(removed_units(graph, plan).values())


# ---------------------------------------------------------------------------
# Reference models and comparison
# ---------------------------------------------------------------------------


def zero_produce(graph: ChannelGraph, plan: Mapping[str, Sequence[int]]) -> fx.GraphModule:
    """A deep copy of ``graph.gm`` with every ``produce`` slice of the removed units zeroed."""
    state = graph.gm.meta.pop("fxprune", None)
    try:
        gm = copy.deepcopy(graph.gm)
    finally:
        if state is not None:
            graph.gm.meta["fxprune"] = state
    tensors = dict(gm.named_parameters(remove_duplicate=False)) | dict(gm.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for gid, removed in removed_units(graph, plan).items():
            if not removed:
                continue
            for s in graph.group(gid).slices(removed):
                if s.role == "produce":
                    tensors[s.name].index_fill_(s.dim, s.index, 0.0)
    return gm


def run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = module(x)
    assert isinstance(out, torch.Tensor), f"expected a tensor output, got {type(out).__name__}"
    return out


def compare(actual: torch.Tensor, expected: torch.Tensor, what: str) -> float:
    """Assert equal shapes and max |diff| <= RTOL * max(1, scale); return the diff."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(expected).all(), f"{what}: reference output is not finite"
    assert torch.isfinite(actual).all(), f"{what}: output is not finite"
    diff = (actual - expected).abs().max().item() if actual.numel() else 0.0
    scale = max(1.0, expected.abs().max().item(), actual.abs().max().item())
    assert diff <= RTOL * scale, f"{what}: max abs diff {diff:.3g} > {RTOL:g} x {scale:.3g}"
    return diff


# ---------------------------------------------------------------------------
# State and structure
# ---------------------------------------------------------------------------


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_state_equal(before: Mapping[str, torch.Tensor], module: nn.Module, what: str) -> None:
    after = module.state_dict()
    assert set(after) == set(before), f"{what}: state_dict keys changed: {sorted(set(after) ^ set(before))[:5]}"
    for k, v in before.items():
        assert after[k].shape == v.shape and torch.equal(after[k], v), f"{what}: {k} changed"


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def expected_shapes(graph: ChannelGraph, plan: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Shape each parameter/buffer of ``graph.gm`` should have after the rewrite of ``plan``."""
    shapes = {k: list(v.shape) for k, v in graph.gm.state_dict().items()}
    cut: dict[tuple[str, int], set[int]] = {}
    for gid, removed in removed_units(graph, plan).items():
        if removed:
            for s in graph.group(gid).slices(removed):
                cut.setdefault((s.name, s.dim), set()).update(s.index.tolist())
    for (name, dim), idx in cut.items():
        shapes[name][dim] -= len(idx)
    return {k: tuple(v) for k, v in shapes.items()}


def module_problems(gm: nn.Module) -> list[str]:
    """Every disagreement between a module's attributes and its tensors (empty when consistent)."""
    from fxprune.nn import PrunedMultiheadAttention

    problems: list[str] = []

    def need(cond: bool, name: str, msg: str) -> None:
        if not cond:
            problems.append(f"{name} ({type(m).__name__}): {msg}")

    for name, m in gm.named_modules():
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            w = m.weight
            need(w.shape[0] == m.in_channels, name, f"weight {tuple(w.shape)} vs in_channels={m.in_channels}")
            need(w.shape[1] * m.groups == m.out_channels, name,
                 f"weight {tuple(w.shape)} x groups={m.groups} vs out_channels={m.out_channels}")
        elif isinstance(m, nn.modules.conv._ConvNd):
            w = m.weight
            need(w.shape[0] == m.out_channels, name, f"weight {tuple(w.shape)} vs out_channels={m.out_channels}")
            need(w.shape[1] * m.groups == m.in_channels, name,
                 f"weight {tuple(w.shape)} x groups={m.groups} vs in_channels={m.in_channels}")
            need(m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0, name,
                 f"channels {m.in_channels}/{m.out_channels} not divisible by groups={m.groups}")
            need(tuple(w.shape[2:]) == tuple(m.kernel_size), name, f"kernel {tuple(w.shape[2:])} vs {m.kernel_size}")
            if m.bias is not None:
                need(tuple(m.bias.shape) == (m.out_channels,), name, f"bias {tuple(m.bias.shape)}")
        elif isinstance(m, nn.Linear):
            need(tuple(m.weight.shape) == (m.out_features, m.in_features), name,
                 f"weight {tuple(m.weight.shape)} vs ({m.out_features}, {m.in_features})")
            if m.bias is not None:
                need(tuple(m.bias.shape) == (m.out_features,), name, f"bias {tuple(m.bias.shape)}")
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            for t in ("weight", "bias", "running_mean", "running_var"):
                v = getattr(m, t, None)
                if v is not None:
                    need(v.numel() == m.num_features, name, f"{t} has {v.numel()} != num_features={m.num_features}")
        elif isinstance(m, nn.LayerNorm):
            for t in ("weight", "bias"):
                v = getattr(m, t, None)
                if v is not None:
                    need(tuple(v.shape) == tuple(m.normalized_shape), name,
                         f"{t} {tuple(v.shape)} vs normalized_shape={tuple(m.normalized_shape)}")
        elif isinstance(m, nn.GroupNorm):
            need(m.num_channels % m.num_groups == 0, name, f"{m.num_channels} channels, {m.num_groups} groups")
            if m.weight is not None:
                need(m.weight.numel() == m.num_channels, name, f"weight {m.weight.numel()} vs {m.num_channels}")
        elif isinstance(m, nn.PReLU):
            need(m.weight.numel() == m.num_parameters, name, f"weight {m.weight.numel()} vs {m.num_parameters}")
        elif isinstance(m, nn.MultiheadAttention):
            e = m.embed_dim
            need(m.head_dim * m.num_heads == e, name, f"{m.num_heads} heads x {m.head_dim} != {e}")
            if m._qkv_same_embed_dim:
                need(tuple(m.in_proj_weight.shape) == (3 * e, e), name, f"in_proj_weight {tuple(m.in_proj_weight.shape)}")
            if m.in_proj_bias is not None:
                need(tuple(m.in_proj_bias.shape) == (3 * e,), name, f"in_proj_bias {tuple(m.in_proj_bias.shape)}")
            need(tuple(m.out_proj.weight.shape) == (e, e), name, f"out_proj {tuple(m.out_proj.weight.shape)}")
        elif isinstance(m, PrunedMultiheadAttention):
            inner = m.num_heads * m.head_dim
            for t in ("q", "k", "v"):
                w, b = getattr(m, f"{t}_weight"), getattr(m, f"{t}_bias")
                need(w.shape[0] == inner, name, f"{t}_weight {tuple(w.shape)} vs {m.num_heads}x{m.head_dim}")
                if b is not None:
                    need(tuple(b.shape) == (inner,), name, f"{t}_bias {tuple(b.shape)}")
            need(m.out_proj.in_features == inner, name, f"out_proj in_features {m.out_proj.in_features} vs {inner}")
    return problems


def unit_counts(group: Group, key) -> np.ndarray:
    """Elements per unit of ``group`` in space ``key`` (only units that occur there)."""
    unit = group.unit_index(key)
    counts = np.bincount(unit[unit >= 0], minlength=group.units)
    return counts[counts > 0]


def describe_group(graph: ChannelGraph, gid: str) -> str:
    """The line(s) of ``str(graph)`` for group ``gid`` (for failure messages)."""
    lines = str(graph).splitlines()
    out = []
    for i, line in enumerate(lines):
        parts = line.split()
        if parts and parts[0] == gid:
            out.append(line)
            if i + 1 < len(lines) and lines[i + 1].strip().startswith("why:"):
                out.append(lines[i + 1])
    return "\n".join(out)


__all__ = [
    "RTOL", "assert_state_equal", "compare", "describe_group", "draw_plan", "expected_shapes", "keep_sets",
    "module_problems", "param_count", "removed_units", "removes_something", "repair_keep", "run", "snapshot",
    "unit_counts", "zero_produce",
]
