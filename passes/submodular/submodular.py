"""Submodular: greedy reweighted-input-change pruning (El Halabi et al., ICLR 2022).

For every group, keep the ``k`` units whose features best reconstruct what the
layers reading the group computed before, and give those layers new weights
for the kept units (the least-squares fit): greedy maximisation of the weakly
submodular ``F(S) = ||Y||^2 - min_W ||Y - B_S W||^2`` (fxprune.passes.submodular.greedy, in Gram
space: cost independent of the number of calibration rows). Variants (Sec. 5.1):

* ``variant="layer"`` (LayerInChange): every group on the unpruned model's
  features, ``Y = A W`` with ``B = A``;
* ``"seq"`` (SeqInChange): groups in graph order, ``B`` from the model with
  the earlier groups already pruned and reweighted, ``Y = B W``;
* ``"asym"`` (AsymInChange, default): like ``seq`` but the target is the
  unpruned model's ``Y = A W``, so errors do not accumulate.

The sequential variants run the model node by node once over the calibration
data (fxprune.passes.submodular.stepper), pausing at each group's reader, instead of one forward
per group. Features come from a conv reader's unfolded input (its kernel,
stride, padding, dilation) or a linear reader's input (after flatten, a
channel's block is its ``H*W`` features); a group read by several layers sums
their objectives (fxprune.passes.submodular.features). Activations are collected in ``eval()``
mode (the authors' code collected them in train mode). ``reweight=False``
selects the same way but keeps the original weights. ``epsilon > 0`` uses
Stochastic-Greedy. Budgets and the other options: fxprune.passes.submodular.layerwise.

Needs: ``Analyze``; ``data`` (calibration batches, no labels needed, e.g. 4 x 128
images). Guarantees: ``state.plan``; the returned model carries the new weights.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from fxprune.distributed import broadcast_bytes, broadcast_tensor, check_consistent, is_distributed, is_main
from fxprune.errors import InputError
from .greedy import Selection, gram_selection, least_squares_weights, reweighted_selection
from .layerwise import LayerwiseContext, LayerwisePass, collect_inputs
from fxprune.mask import _zero_removed_produce
from .features import GroupProblem
from .stepper import Stepper
from fxprune.rewrite import _copy_graph_module

VARIANTS = ("layer", "seq", "asym")

__all__ = ["Submodular", "Selection", "reweighted_selection", "gram_selection", "least_squares_weights"]


@dataclass(frozen=True)
class Submodular(LayerwisePass):
    variant: str = "asym"
    reweight: bool = True
    epsilon: float = 0.0
    name: ClassVar[str] = "submodular"
    needs_features: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise InputError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.scope != "local":
            raise InputError("submodular gains are not comparable across groups: use scope='local', "
                             "or compression=... for per-layer budgets")
        if not isinstance(self.epsilon, (int, float)) or not 0.0 <= self.epsilon < 1.0:
            raise InputError(f"epsilon must be in [0, 1), got {self.epsilon!r}")

    def run(self, gm):
        """The layer-wise pass; under ``torch.distributed`` first checks that every rank holds the
        same model and options (``DistributedError`` on every rank otherwise)."""
        check_consistent(gm, self, self.name)
        return super().run(gm)

    def _select(self, problem: GroupProblem, k: int) -> Selection:
        """Greedy on the (rank-summed) Grams; under ``torch.distributed`` rank 0's selection is
        broadcast, so every rank keeps and writes exactly the same units and weights."""
        G, C, yy = problem.gram_data()
        generator = torch.Generator(device=G.device).manual_seed(self.seed) if self.epsilon > 0 else None
        sel = gram_selection(G, C, yy, k, block=problem.block, epsilon=self.epsilon, generator=generator)
        return broadcast_selection(sel)

    def order(self, ctx: LayerwiseContext, group, k: int) -> list[int]:
        """Greedy order on the unpruned model (the full order is cached when it is deterministic)."""
        cache = ctx.__dict__.setdefault("_greedy_orders", {})
        if self.epsilon == 0 and group.id in cache:
            return cache[group.id]
        full = group.units if self.epsilon == 0 else k
        kept = self._select(ctx.layerwise_problem(group), full).kept
        order = kept + [u for u in range(group.units) if u not in set(kept)]
        if self.epsilon == 0:
            cache[group.id] = order
        return order

    def prune(self, ctx: LayerwiseContext, counts: dict[str, int]) -> dict[str, list[int]]:
        if self.variant == "layer":
            plan = {}
            for g in _bar(ctx.groups, self, "submodular (layer)"):
                problem = ctx.layerwise_problem(g)
                with ctx.timed("all-reduce"):  # a no-op in one process; waits for the slowest rank
                    problem.all_reduce()
                with ctx.timed("greedy"):
                    sel = self._select(problem, counts[g.id])
                with ctx.timed("reweight"):
                    ctx.apply(g, sel.kept, problem if self.reweight else None, weights=sel.weights)
                plan[g.id] = sorted(sel.kept)
            return plan
        return SequentialRun(self, ctx).prune(counts)


def _bar(groups: list, method: Submodular, desc: str):
    """A tqdm bar over ``groups`` (features, Grams, greedy and reweighting of each), on rank 0 only."""
    return tqdm(groups, desc=desc, unit="group", leave=False, disable=not (method.progress and is_main()))


def broadcast_selection(sel: Selection) -> Selection:
    """Rank 0's kept units and least-squares weights on every rank (``sel`` in one process)."""
    if not is_distributed():
        return sel
    kept = json.loads(broadcast_bytes(json.dumps([int(u) for u in sel.kept]).encode()))
    rows = len(kept) * (sel.weights.shape[0] // max(len(sel.kept), 1))
    weights = sel.weights if len(kept) == len(sel.kept) else sel.weights.new_zeros(rows, sel.weights.shape[1])
    return dataclasses.replace(sel, kept=kept, weights=broadcast_tensor(weights))


class SequentialRun:
    """SeqInChange / AsymInChange: one node-by-node pass, pruning each group at its reader."""

    def __init__(self, method: Submodular, ctx: LayerwiseContext):
        self.method, self.ctx = method, ctx
        inputs = ctx.calibration.inputs
        self.work = Stepper(ctx.work, inputs)
        self.original = Stepper(_copy_graph_module(ctx.original), inputs) if method.variant == "asym" else None
        self.position = {n.name: i for i, n in enumerate(ctx.work.graph.nodes)}
        for stepper in filter(None, (self.work, self.original)):
            stepper.gm.eval()

    def prune(self, counts: dict[str, int]) -> dict[str, list[int]]:
        ctx, plan = self.ctx, {}
        first = {g.id: min(self.position[c.node] for c in ctx.consumers[g.id].consumers) for g in ctx.groups}
        for g in _bar(sorted(ctx.groups, key=lambda g: first[g.id]), self.method, f"submodular ({self.method.variant})"):
            problem = self._problem(g)
            with ctx.timed("all-reduce"):  # a no-op in one process; waits for the slowest rank
                problem.all_reduce()
            with ctx.timed("greedy"):
                sel = self.method._select(problem, counts[g.id])
            with ctx.timed("reweight"):
                if self.method.reweight:
                    problem.write(sel.kept, sel.weights)
                _zero_removed_produce(ctx.work, g, sel.kept)
                self._zero_live(g, sel.kept)
            plan[g.id] = sorted(sel.kept)
        return plan

    def _problem(self, group) -> GroupProblem:
        consumers = self.ctx.consumers[group.id].consumers
        problem = GroupProblem(self.ctx.layouts(group, self.ctx.work), group.units)
        first = min(consumers, key=lambda c: self.position[c.node])
        with self.ctx.timed("forward"):
            for stepper in filter(None, (self.work, self.original)):
                stepper.run_until(first.node)
        if len(consumers) > 1:
            with self.ctx.timed("forward+gram"):
                return self._problem_by_hooks(group, problem)
        node = self._input_node(first.node)
        work = self.work.values(node)
        orig = self.original.values(node) if self.original else [None] * len(work)
        with self.ctx.timed("gram"):
            for b, a in zip(work, orig):
                problem.add([b], None if a is None else [a])
        return problem

    def _input_node(self, name: str) -> str:
        node = next(n for n in self.ctx.work.graph.nodes if n.name == name)
        return node.args[0].name

    def _problem_by_hooks(self, group, problem: GroupProblem) -> GroupProblem:
        """Several readers: full forwards of the current (partly pruned) and original models."""

        consumers = self.ctx.consumers[group.id].consumers
        work = collect_inputs(self.ctx.work, consumers, self.ctx.calibration)
        orig = collect_inputs(self.original.gm, consumers, self.ctx.calibration) if self.original else None
        for i, b in enumerate(work):
            problem.add(b, None if orig is None else orig[i])
        return problem

    def _zero_live(self, group, kept: list[int]) -> None:
        removed = np.setdiff1d(np.arange(group.units), np.asarray(kept, dtype=np.int64))
        spaces = set(group.spaces)
        for node in self.work.live():
            values = self.work.values(node.name)
            if not isinstance(values[0], torch.Tensor):
                continue
            for dim in range(values[0].dim()):
                key = ("n", node.name, -1, dim)
                if key not in spaces:
                    continue
                drop = torch.from_numpy(np.isin(group.unit_index(key), removed))
                keep = (~drop).to(values[0].dtype).view([-1 if d == dim else 1 for d in range(values[0].dim())])
                values = [v * keep.to(v.device) for v in values]
            self.work.set_values(node.name, values)
