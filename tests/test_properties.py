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

from typing import Iterator

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st
from torch import nn

import fxprune
from equivalence import (assert_state_equal, compare, describe_group, draw_plan, expected_shapes, module_problems,
                         param_count, removes_something, run, snapshot, unit_counts, zero_produce)
from strategies import Arch, architectures, block_kinds

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


@settings(max_examples=30, **SETTINGS)
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
    event(f"removes {group.units - len(plan[group.id])}/{group.units}")
    check_rewrite_equals_mask(arch, graph, plan)


@settings(max_examples=30, **SETTINGS)
@given(arch=architectures(), data=st.data())
def test_rewrite_equals_mask_all_groups(arch: Arch, data: st.DataObject) -> None:
    graph = analyze(arch)
    plan = draw_plan(data, exact_groups(graph))
    check_rewrite_equals_mask(arch, graph, plan)


# ---------------------------------------------------------------------------
# 2. zero the produce slices == rewrite
# ---------------------------------------------------------------------------


@settings(max_examples=30, **SETTINGS)
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


@settings(max_examples=30, **SETTINGS)
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


@settings(max_examples=40, **SETTINGS)
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


@settings(max_examples=25, **SETTINGS)
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
_ALWAYS_PRUNABLE = {"conv_bn_act", "residual", "concat", "split", "depthwise_separable", "squeeze_excite",
                    "manual_attention"}


def _block_index(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit() else None


def _check_kind_structure(kind: str, arch: Arch, graph: fxprune.ChannelGraph) -> None:
    blocks = arch.model.blocks
    if kind in _ALWAYS_PRUNABLE:
        owned = {_block_index(name) for g in graph.prunable_groups for name, _, role in g.members()
                 if role == "produce"}
        for i, block in enumerate(blocks):
            if not list(block.parameters()):
                continue  # pooling between blocks
            assert i in owned, f"block {i} ({kind}) has no prunable group:\n{graph}"
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
        for g in graph.prunable_groups:  # units stay rectangular through the shuffle's views
            for key in g.spaces:
                counts = unit_counts(g, key)
                assert counts.size == 0 or (counts == counts[0]).all(), \
                    f"{g.id}: units of {key} have {sorted(set(counts.tolist()))} elements:\n{graph}"
        for i, block in enumerate(blocks):
            shuffle = getattr(block, "shuffle", None)
            if shuffle is None or block.adapter is None or block.branch is not None:
                continue
            per_group = shuffle.channels // shuffle.groups
            if per_group <= shuffle.groups:
                continue  # the group dim is the largest factor: conservatively fixed
            name = f"blocks.{i}.adapter.conv.weight"
            owner = [g for g in graph.groups if (name, 0, "produce") in g.members()]
            assert len(owner) == 1 and owner[0].prunable, f"{name} rows should be prunable:\n{graph}"
            assert owner[0].units == per_group, f"shuffle of {shuffle.channels}/{shuffle.groups}:\n{graph}"
            assert (unit_counts(owner[0], ("p", name, 0)) == shuffle.groups).all()


@pytest.mark.parametrize("kind", block_kinds())
@settings(max_examples=8, **SETTINGS)
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
