"""Property tests of fxprune's key invariant on random architectures (``tests/strategies.py``).

For every prunable group WITHOUT normalisation members and any keep-set:

* ``rewrite(gm, graph, plan)(x) == mask(gm, graph, plan)(x)``  (one group, and all at once);
* ``rewrite(...)(x) == zero_produce(gm, plan)(x)``, where ``zero_produce`` zeroes the
  ``produce`` slices of the removed units in a deep copy of ``graph.gm``.

Plus structural properties of the rewrite (parameter count, predicted tensor
shapes, consistent module attributes, no mutation of ``graph.gm`` or the user's
model), groups WITH norm members (LayerNorm in attention: must run, keep the
output shape, stay finite) and one test per block kind of the strategy.

Tolerance: max abs diff <= 1e-5 x max(1, output scale).
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st
from torch import nn

import fxprune
from equivalence import (assert_state_equal, compare, describe_group, draw_plan, expected_shapes, module_problems,
                         param_count, removes_something, repair_keep, run, snapshot, unit_counts, zero_produce)
from strategies import Arch, ManualAttention, ShuffleBlock, architectures, block_kinds

_SCALE = float(os.environ.get("FXPRUNE_PROPERTY_SCALE", "1"))


def examples(n: int) -> int:
    """``n`` examples, times ``$FXPRUNE_PROPERTY_SCALE`` (e.g. 10 for a long soak run)."""
    return max(1, round(n * _SCALE))


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def analyze(arch: Arch) -> fxprune.ChannelGraph:
    graph = fxprune.analyze(arch.model, arch.example_input)
    note(str(graph))
    return graph


def exact_groups(graph: fxprune.ChannelGraph) -> list[fxprune.Group]:
    return [g for g in graph.prunable_groups if not g.has_norm]


def norm_groups(graph: fxprune.ChannelGraph) -> list[fxprune.Group]:
    return [g for g in graph.prunable_groups if g.has_norm]


def _context(graph: fxprune.ChannelGraph, plan: dict) -> str:
    removed = {gid: graph.group(gid).units - len(kept) for gid, kept in plan.items()}
    lines = [describe_group(graph, gid) for gid, n in removed.items() if n]
    return f"plan={plan}\n" + "\n".join(lines)


def check_rewrite_equals_mask(arch: Arch, graph: fxprune.ChannelGraph, plan: dict) -> torch.Tensor:
    x = arch.example_input
    pruned = run(fxprune.rewrite(graph.gm, graph, plan), x)
    masked = run(fxprune.mask(graph.gm, graph, plan), x)
    try:
        compare(pruned, masked, "rewrite vs mask")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_context(graph, plan)}") from None
    if not removes_something(graph, plan):  # keep-all: the rewrite is the identity
        compare(pruned, run(arch.model, x), "keep-all rewrite vs model")
    return pruned


# ---------------------------------------------------------------------------
# 1. rewrite == mask
# ---------------------------------------------------------------------------


@settings(max_examples=examples(30), **SETTINGS)
@given(arch=architectures(), data=st.data())
def test_rewrite_equals_mask_one_group(arch: Arch, data: st.DataObject) -> None:
    graph = analyze(arch)
    groups = exact_groups(graph)
    if not groups:
        event("no exact group")
        check_rewrite_equals_mask(arch, graph, {})
        return
    group = data.draw(st.sampled_from(groups), label="group")
    plan = draw_plan(data, [group])
    removed = group.units - len(plan[group.id])
    event("removes " + ("none" if not removed else "all but one" if removed == group.units - 1 else "some"))
    check_rewrite_equals_mask(arch, graph, plan)


@settings(max_examples=examples(30), **SETTINGS)
@given(arch=architectures(), data=st.data())
def test_rewrite_equals_mask_all_groups(arch: Arch, data: st.DataObject) -> None:
    graph = analyze(arch)
    plan = draw_plan(data, exact_groups(graph))
    check_rewrite_equals_mask(arch, graph, plan)


# ---------------------------------------------------------------------------
# 2. zero the produce slices == rewrite
# ---------------------------------------------------------------------------


@settings(max_examples=examples(30), **SETTINGS)
@given(arch=architectures(), data=st.data(), one=st.booleans())
def test_zero_produce_equals_rewrite(arch: Arch, data: st.DataObject, one: bool) -> None:
    graph = analyze(arch)
    groups = exact_groups(graph)
    if one and groups:
        groups = [data.draw(st.sampled_from(groups), label="group")]
    plan = draw_plan(data, groups)
    x = arch.example_input
    pruned = run(fxprune.rewrite(graph.gm, graph, plan), x)
    zeroed = run(zero_produce(graph, plan), x)
    try:
        compare(pruned, zeroed, "rewrite vs zero-produce")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_context(graph, plan)}") from None
    # zeroing is a real change whenever the rewrite is: the reference is not the unpruned model by accident
    if not removes_something(graph, plan):
        compare(zeroed, run(arch.model, x), "zero-produce of nothing vs model")


# ---------------------------------------------------------------------------
# 3. structure of the rewrite; nothing is mutated
# ---------------------------------------------------------------------------


def _weight_bias_pairs(module: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, m in module.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm,
                          nn.GroupNorm)) and getattr(m, "bias", None) is not None and m.weight is not None:
            if not isinstance(m, nn.modules.conv._ConvTransposeNd):
                pairs.append((prefix + "weight", prefix + "bias"))
        if isinstance(m, nn.MultiheadAttention) and m.in_proj_bias is not None and m.in_proj_weight is not None:
            pairs.append((prefix + "in_proj_weight", prefix + "in_proj_bias"))
    return pairs


@settings(max_examples=examples(30), **SETTINGS)
@given(arch=architectures(), data=st.data())
def test_rewrite_structure(arch: Arch, data: st.DataObject) -> None:
    model_before = snapshot(arch.model)
    graph = analyze(arch)
    gm_before = snapshot(graph.gm)
    code_before = graph.gm.code
    # analyze traces a copy with the model's weights
    for k, v in gm_before.items():
        assert k in model_before and torch.equal(v, model_before[k]), f"analyze changed {k}"

    groups = data.draw(st.lists(st.sampled_from(graph.prunable_groups), unique_by=lambda g: g.id), label="groups") \
        if graph.prunable_groups else []
    plan = draw_plan(data, groups)
    x = arch.example_input
    rewritten = fxprune.rewrite(graph.gm, graph, plan)
    masked = fxprune.mask(graph.gm, graph, plan)
    out = run(rewritten, x)
    run(masked, x)

    assert_state_equal(gm_before, graph.gm, "graph.gm after rewrite/mask")
    assert graph.gm.code == code_before, "graph.gm's code changed"
    assert_state_equal(model_before, arch.model, "user model after analyze/rewrite/mask")
    assert out.shape == run(arch.model, x).shape
    assert torch.isfinite(out).all()

    problems = module_problems(rewritten)
    assert not problems, "inconsistent modules after rewrite:\n" + "\n".join(problems)
    assert not module_problems(masked), module_problems(masked)

    before, after = param_count(graph.gm), param_count(rewritten)
    if removes_something(graph, plan):
        assert after < before, f"parameter count {before} -> {after} although units were removed: {plan}"
    else:
        assert after == before

    # every parameter/buffer that keeps its name has the shape the plan's slices predict
    want = expected_shapes(graph, plan)
    got = rewritten.state_dict()
    for name, shape in want.items():
        if name in got:
            assert tuple(got[name].shape) == shape, f"{name}: {tuple(got[name].shape)}, slices predict {shape}"


@settings(max_examples=examples(40), **SETTINGS)
@given(arch=architectures())
def test_bias_follows_weight_rows(arch: Arch) -> None:
    """Output rows of a weight and the entries of its bias are always in the same units."""
    graph = analyze(arch)
    table, labels = graph.table, graph.labels
    checked = 0
    for w, b in _weight_bias_pairs(graph.gm):
        kw, kb = ("p", w, 0), ("p", b, 0)
        if kw not in table.sizes or kb not in table.sizes:
            assert (kw in table.sizes) == (kb in table.sizes), f"only one of {w}[0], {b}[0] is a space"
            continue
        lw, lb = labels[table.ids(kw)], labels[table.ids(kb)]
        assert np.array_equal(lw, lb), f"{w} rows and {b} are in different units:\n{graph}"
        checked += 1
    assert checked > 0 or not _weight_bias_pairs(graph.gm)


# ---------------------------------------------------------------------------
# 4. groups with normalisation members
# ---------------------------------------------------------------------------

_NORM_KINDS = ["conv_bn_act", "residual", "mha_attention", "manual_attention"]


@settings(max_examples=examples(25), **SETTINGS)
@given(arch=architectures(kinds=_NORM_KINDS, min_blocks=2, max_blocks=4), data=st.data())
def test_norm_groups_rewrite_runs(arch: Arch, data: st.DataObject) -> None:
    graph = analyze(arch)
    groups = norm_groups(graph)
    assume(groups)
    plan = draw_plan(data, groups + exact_groups(graph))
    x = arch.example_input
    rewritten = fxprune.rewrite(graph.gm, graph, plan)
    out = run(rewritten, x)
    assert out.shape == run(arch.model, x).shape
    assert torch.isfinite(out).all(), "rewrite of a norm group is not finite"
    masked_out = run(fxprune.mask(graph.gm, graph, plan), x)
    assert torch.isfinite(masked_out).all()
    problems = module_problems(rewritten)
    assert not problems, "\n".join(problems)
    if removes_something(graph, {g.id: plan[g.id] for g in groups}):
        assert param_count(rewritten) < param_count(graph.gm)
        # LayerNorms of a pruned norm group normalise the kept channels only
        widths = {n: m.normalized_shape for n, m in rewritten.named_modules() if isinstance(m, nn.LayerNorm)}
        originals = {n: m.normalized_shape for n, m in graph.gm.named_modules() if isinstance(m, nn.LayerNorm)}
        assert widths != originals


# ---------------------------------------------------------------------------
# 5. each block kind on its own
# ---------------------------------------------------------------------------

# kinds where every block has a prunable group with one of its own parameters as producer
_ALWAYS_PRUNABLE = {"conv_bn_act", "residual", "concat", "depthwise_separable", "squeeze_excite"}
# a later split may cut a narrow branch into one-channel pieces; the last block's branch only feeds the head
_LAST_PRUNABLE = {"split"}


def _block_index(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit() else None


def _check_kind_structure(kind: str, arch: Arch, graph: fxprune.ChannelGraph) -> None:
    blocks = arch.model.blocks
    if kind in _ALWAYS_PRUNABLE | _LAST_PRUNABLE:
        owned = {_block_index(name) for g in graph.prunable_groups for name, _, role in g.members()
                 if role == "produce"}
        with_params = [i for i, block in enumerate(blocks) if list(block.parameters())]  # not pooling
        for i in with_params if kind in _ALWAYS_PRUNABLE else with_params[-1:]:
            assert i in owned, f"block {i} ({kind}) has no prunable group:\n{graph}"
    if kind == "manual_attention":
        for i, block in enumerate(blocks):
            if not isinstance(block, ManualAttention):
                continue
            # fused qkv reshapes to (3, heads, head_dim): its largest factor (the more major on ties) carries the
            # units, and the qkv dim of size 3 is indexed by integers, so heads/head_dim must beat 3 to be prunable
            if block.fused and max(block.heads, block.head_dim) <= 3:
                continue
            owned = [g for g in graph.prunable_groups if any(_block_index(n) == i for n, _, _ in g.members())
                     and not g.has_norm]
            assert owned, f"attention block {i} has no prunable head/head-dim group:\n{graph}"
    if kind == "mha_attention":
        for i, block in enumerate(blocks):
            attn = getattr(block, "attn", None)
            if not isinstance(attn, nn.MultiheadAttention) or attn.num_heads < 2:
                continue
            name = f"blocks.{i}.attn.in_proj_weight"
            heads = [g for g in graph.groups if any(m[0] == name and m[1] == 0 for m in g.members())]
            assert len(heads) == 1, f"{name} rows are in {len(heads)} groups:\n{graph}"
            assert heads[0].prunable and heads[0].units == attn.num_heads, f"heads of blocks.{i}.attn:\n{graph}"
    if kind == "channel_shuffle":
        # units are rectangular through each shuffle: on the (groups, channels per group) grid of the channels the
        # shuffle's first view splits, every unit is a product set (so the view and the transpose stay valid)
        views = [n for n in graph.gm.graph.nodes if n.op == "call_method" and n.target in ("view", "reshape")
                 and any(k.rsplit(".", 1)[-1] == "shuffle" for k in n.meta.get("nn_module_stack", {}))
                 and len(n.meta["tensor_meta"].shape) == 5]
        assert len(views) == sum(isinstance(b, ShuffleBlock) for b in blocks), "expected one 5-d view per shuffle"
        for view in views:
            grid = tuple(view.meta["tensor_meta"].shape[1:3])
            key = ("n", view.args[0].name, -1, 1)
            for g in graph.prunable_groups:
                if key not in g.spaces:
                    continue
                unit = g.unit_index(key).reshape(grid)
                for u in set(unit[unit >= 0].tolist()):
                    cells = unit == u
                    rect = np.outer(cells.any(1), cells.any(0))
                    assert np.array_equal(cells, rect), f"{g.id}: unit {u} is not rectangular on {view.name}:\n{unit}"
        shuffles = [(i, b) for i, b in enumerate(blocks) if isinstance(b, ShuffleBlock)]
        for (i, block), (_, after) in zip(shuffles, shuffles[1:] + [(None, None)]):
            shuffle = block.shuffle
            if block.adapter is None or block.branch is not None:
                continue
            if after is not None and after.adapter is None:
                continue  # two shuffles in a row permute differently: their units merge
            per_group = shuffle.channels // shuffle.groups
            if per_group == shuffle.groups:
                continue  # both factors are largest: the view is a barrier
            # the larger factor carries the units: channel j of every group, or whole groups
            units, size = (per_group, shuffle.groups) if per_group > shuffle.groups else (shuffle.groups, per_group)
            name = f"blocks.{i}.adapter.conv.weight"
            owner = [g for g in graph.groups if (name, 0, "produce") in g.members()]
            assert len(owner) == 1 and owner[0].prunable, f"{name} rows should be prunable:\n{graph}"
            assert owner[0].units == units, f"shuffle of {shuffle.channels}/{shuffle.groups}:\n{graph}"
            assert (unit_counts(owner[0], ("p", name, 0)) == size).all(), f"{name}: units of {size} rows:\n{graph}"


@pytest.mark.parametrize("kind", block_kinds())
@settings(max_examples=examples(8), **SETTINGS)
@given(data=st.data())
def test_each_block_kind(kind: str, data: st.DataObject) -> None:
    arch = data.draw(architectures(kinds=[kind], min_blocks=1, max_blocks=3), label="arch")
    assert set(arch.kinds) == {kind}
    graph = analyze(arch)
    _check_kind_structure(kind, arch, graph)
    # the exact groups of this pattern: rewrite == mask == zero-produce
    plan = draw_plan(data, exact_groups(graph), label="exact ")
    pruned = check_rewrite_equals_mask(arch, graph, plan)
    compare(pruned, run(zero_produce(graph, plan), arch.example_input), "rewrite vs zero-produce")
    # and everything at once, norm groups included: runs, right shape, finite, consistent modules
    full = dict(plan) | draw_plan(data, norm_groups(graph), label="norm ")
    rewritten = fxprune.rewrite(graph.gm, graph, full)
    out = run(rewritten, arch.example_input)
    assert out.shape == pruned.shape and torch.isfinite(out).all()
    assert not module_problems(rewritten), module_problems(rewritten)


# ---------------------------------------------------------------------------
# 6. regression tests: minimal models of the bugs these properties found (one-head
#    MultiheadAttention, x.size() shuffle with whole-group units, a one-channel slice
#    of multi-channel units), next to controls of the same pattern
# ---------------------------------------------------------------------------


class _Attention(nn.Module):
    """Linear -> nn.MultiheadAttention -> Linear on (2, 5, 4) tokens."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, heads, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.lin(x)
        return self.fc(self.attn(t, t, t, need_weights=False)[0])


class _Shuffle(nn.Module):
    """Conv -> channel shuffle (torchvision style, sizes from x.size(), or literal) -> GAP -> Linear."""

    def __init__(self, channels: int, groups: int, literal: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 1)
        self.fc = nn.Linear(channels, 2)
        self.channels, self.groups, self.literal = channels, groups, literal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.literal:
            x = x.view(2, self.groups, self.channels // self.groups, 4, 4).transpose(1, 2).contiguous()
            x = x.view(2, self.channels, 4, 4)
        else:
            b, c, h, w = x.size()
            x = x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
        return self.fc(x.mean((2, 3)))


class _SliceOfOne(nn.Module):
    """A one-channel slice ``x[:, :1]`` of a conv output (grouped or not), cat back with the rest."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1, groups=groups)
        self.left = nn.Conv2d(1, 2, 1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        y = torch.cat([self.left(x[:, :1]), x[:, 1:]], 1)
        return self.fc(y.mean((2, 3)))


def _check_every_group(model: nn.Module, x: torch.Tensor) -> None:
    """For every exact group: remove its first unit, or keep only its last: rewrite == mask == zero-produce."""
    torch.manual_seed(0)
    model.eval()
    graph = fxprune.analyze(model, x)
    groups = exact_groups(graph)
    assert groups, str(graph)
    for g in groups:
        for kept in (range(1, g.units), [g.units - 1]):
            plan = {g.id: repair_keep(g, kept)}
            pruned = run(fxprune.rewrite(graph.gm, graph, plan), x)
            where = f"{type(model).__name__}, {_context(graph, plan)}"
            compare(pruned, run(fxprune.mask(graph.gm, graph, plan), x), f"rewrite vs mask: {where}")
            compare(pruned, run(zero_produce(graph, plan), x), f"rewrite vs zero-produce: {where}")
    for w, b in _weight_bias_pairs(graph.gm):
        keys = ("p", w, 0), ("p", b, 0)
        if all(k in graph.table.sizes for k in keys):
            a, c = (graph.labels[graph.table.ids(k)] for k in keys)
            assert np.array_equal(a, c), f"{w} rows and {b} are in different units:\n{graph}"


def test_two_head_mha_control() -> None:
    _check_every_group(_Attention(heads=2), torch.randn(2, 5, 4))


def test_one_head_mha() -> None:
    _check_every_group(_Attention(heads=1), torch.randn(2, 5, 4))


@pytest.mark.parametrize("channels,groups", [(8, 2), (8, 4), (12, 4)])
def test_literal_shuffle_control(channels: int, groups: int) -> None:
    _check_every_group(_Shuffle(channels, groups, literal=True), torch.randn(2, 3, 4, 4))


def test_size_derived_shuffle_control() -> None:
    _check_every_group(_Shuffle(18, 3, literal=False), torch.randn(2, 3, 4, 4))  # 6 channels per group > 3 groups


@pytest.mark.parametrize("channels,groups", [(8, 4), (4, 4)])
def test_size_derived_shuffle_whole_groups(channels: int, groups: int) -> None:
    _check_every_group(_Shuffle(channels, groups, literal=False), torch.randn(2, 3, 4, 4))


def test_slice_of_one_control() -> None:
    _check_every_group(_SliceOfOne(groups=1), torch.randn(2, 4, 4, 4))


def test_slice_of_one_grouped() -> None:
    _check_every_group(_SliceOfOne(groups=2), torch.randn(2, 4, 4, 4))
