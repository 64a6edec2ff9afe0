"""Layer-wise pruning: the framework of the ``submodular`` method and its baselines.

It lives beside ``submodular`` because the other layer-wise methods are that paper's
baselines (El Halabi et al., ICLR 2022, Sec. 7): ``actgrad``, ``greedy_fs``, ``random``,
``sampling`` and ``weightnorm`` import it from ``fxprune.passes.submodular.layerwise``.

A layer-wise method orders the units of each group (most useful first) and
keeps a prefix of that order. How many units each group keeps comes from

* ``sparsity`` (the fraction removed per group, or over all groups with
  ``scope="global"``), or
* ``compression=c`` (original size / pruned size, in ``budget="params"|"macs"``):
  methods that rank units globally (``actgrad``, ``random``) remove the
  lowest-ranked units until the target is met; per-layer methods use
  ``allocation="accuracy"`` (the paper's Sec. 5.2: per-group accuracy curves on
  ``verification`` data, binary search on the accuracy drop) or
  ``allocation="uniform"`` (one keep fraction for every group). The curves
  cost one verification pass per (group, fraction); pass the same dict as
  ``curve_cache`` to runs that differ only in the target to compute them once.

With ``reweight=True`` the layers that read a pruned group get new weights
for the kept units, the least-squares fit of what they computed before
(``min ||A W - B_S W~||``, fxprune.passes.submodular.features); removed units' weights are
dropped as usual. Groups whose readers are not plain conv/linear layers, or
that feed a normalisation over channels, are left whole and listed in
``state.notes`` when reweighting or features are needed.

Needs: ``Analyze``; ``data`` (calibration batches; targets for methods that
use the loss). Guarantees: ``state.plan`` meets the budget; the returned
GraphModule carries the reweighted weights (removed units' produce slices are
zeroed, so ``mask == rewrite`` still holds); the input GraphModule is unchanged.
"""
from __future__ import annotations

import json

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from fxprune.distributed import agree, all_reduce_sum
from fxprune.budget import Budget, _global_counts, _keep_count, _repair_empty, selectable_groups
from .calibration import Batches
from fxprune.consumers import ConsumerSet, group_consumers
from fxprune.errors import InputError, PlanError
from .features import ConsumerLayout, GroupProblem
from fxprune.graph import ChannelGraph, Group
from fxprune.mask import mask
from fxprune.pipeline import Pass, require_state
from fxprune.plan import check_plan
from fxprune.rewrite import _copy_graph_module
from fxprune.passes.scoring import model_device, to_device
from fxprune.state import State

MEASURES = ("params", "macs")
ALLOCATIONS = ("accuracy", "uniform")


@dataclass(frozen=True)
class LayerwisePass(Pass):
    sparsity: float = 0.5
    scope: str = "local"
    round_to: int = 1
    ignore: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()  # only these group ids (default: every selectable group)
    compression: float | None = None
    budget: str = "params"
    allocation: str = "accuracy"
    reweight: bool = False
    data: Iterable | None = field(default=None, compare=False)
    verification: Iterable | None = field(default=None, compare=False)
    loss_fn: Callable | None = field(default=None, compare=False)
    curve_cache: dict | None = field(default=None, compare=False)  # reuse per-layer curves across targets
    max_batches: int | None = None
    seed: int = 0
    progress: bool = True
    name: ClassVar[str] = "layerwise"
    needs_data: ClassVar[bool] = True  # calibration data even without reweighting
    needs_targets: ClassVar[bool] = False
    needs_features: ClassVar[bool] = False  # orders units from consumer features
    ranks_globally: ClassVar[bool] = False  # compression is met by a global ranking

    def __post_init__(self) -> None:
        Budget(self.sparsity, self.scope, self.round_to, self.ignore)  # validates
        if self.compression is not None and not (isinstance(self.compression, (int, float)) and self.compression >= 1):
            raise InputError(f"compression must be a number >= 1 (original size / pruned size), got {self.compression!r}")
        if self.budget not in MEASURES:
            raise InputError(f"budget must be one of {MEASURES}, got {self.budget!r}")
        if self.allocation not in ALLOCATIONS:
            raise InputError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        for name in ("ignore", "groups"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(n for n in value.split(",") if n)
            object.__setattr__(self, name, tuple(value))

    @property
    def uses_data(self) -> bool:
        """Whether this configuration reads calibration data."""
        return self.needs_data or self.reweight or self.needs_features or self.needs_targets

    # --- what methods implement ------------------------------------------------------
    def scores(self, ctx: "LayerwiseContext", groups: list[Group]) -> dict[str, np.ndarray]:
        """Per-unit scores (higher = keep) on the unpruned model."""
        raise NotImplementedError

    def order(self, ctx: "LayerwiseContext", group: Group, k: int) -> list[int]:
        """Units of ``group``, most useful first, on ``ctx.work`` (the first ``k`` are kept)."""
        s = ctx.cached_scores(self)[group.id]
        return np.lexsort((np.arange(s.size), -np.asarray(s, dtype=np.float64))).tolist()

    def prune(self, ctx: "LayerwiseContext", counts: dict[str, int]) -> dict[str, list[int]]:
        """Keep ``counts[g]`` units of every group; layer-wise methods order on the unpruned model."""
        plan = {}
        for g in ctx.groups:
            kept = self.order(ctx, g, counts[g.id])[:counts[g.id]]
            ctx.apply(g, kept, ctx.layerwise_problem(g) if self.reweight else None)
            self.adjust_readers(ctx, ctx.work, g, kept)
            plan[g.id] = sorted(kept)
        return plan

    def adjust_readers(self, ctx: "LayerwiseContext", model: fx.GraphModule, group: Group, kept: list[int]) -> None:
        """Change the weights reading ``group`` in ``model`` once it keeps ``kept`` (default: nothing;
        LayerGreedyFS rescales them). Applied to the pruned model and to the per-layer accuracy curves."""

    # --- the pass -----------------------------------------------------------------------
    def run(self, gm: fx.GraphModule) -> fx.GraphModule:
        state = require_state(gm, self.name)
        if state.channel_graph is None:
            raise PlanError(f"{self.name} needs the channel analysis: run Analyze() before it")
        ctx = LayerwiseContext(self, gm, state)
        if self.uses_data:
            ctx.calibration  # fail early on bad data
        if not ctx.groups:
            state.plan = {}
            return gm
        with ctx.timed("budget"):
            counts = self._counts(ctx)
        plan = self.prune(ctx, counts)
        for g in (g for g in ctx.groups if g.id in plan):  # a later group's reweighting may rewrite zeroed rows
            zero_removed_produce(ctx.work, g, plan[g.id])
        repaired = check_plan(ctx.graph, _repair_empty(ctx.graph, {k: list(v) for k, v in plan.items()},
                                                       _rank_scores(plan, ctx.groups)))
        if repaired != plan:  # a unit added back so that no tensor is emptied: its weights stay zero
            ctx.notes.append(f"{self.name}: units added back so that no tensor is left empty: "
                             + ", ".join(g for g in repaired if repaired[g] != plan.get(g)))
        out = ctx.work
        out.meta["fxprune"] = state
        agree(json.dumps(repaired, sort_keys=True, default=int), f"the plan of {self.name}")  # under torchrun
        state.plan = repaired
        state.notes.extend(ctx.notes)
        for phase, seconds in ctx.seconds.items():
            state.timings[f"{self.name}.{phase}"] = seconds
        return out

    def _counts(self, ctx: "LayerwiseContext") -> dict[str, int]:
        groups = ctx.groups
        if self.compression is None:
            budget = Budget(self.sparsity, self.scope, self.round_to, self.ignore)
            if self.scope == "global":
                return _global_counts(groups, ctx.cached_scores(self), budget)
            return {g.id: _keep_count(g.units, g.units - int(self.sparsity * g.units), self.round_to) for g in groups}
        from .layer_budget import accuracy_curves, global_counts, select_budgets

        cost = ctx.cost_model()
        if self.ranks_globally:
            counts = global_counts(ctx.cached_scores(self), cost, float(self.compression), self.budget)
        elif self.allocation == "uniform":
            counts = uniform_counts(groups, cost, float(self.compression), self.budget)
        else:
            cache = self.curve_cache if self.curve_cache is not None else {}
            if "curves" not in cache:
                cache["original"] = ctx.accuracy(ctx.original)
                cache["curves"] = accuracy_curves(groups, ctx.prune_one_and_evaluate, progress=self.progress)
            original, curves = cache["original"], cache["curves"]
            choice = select_budgets(curves, cost, float(self.compression), measure=self.budget,
                                    original_accuracy=original)
            counts = dict(choice.counts)
            ctx.notes.append(f"{self.name}: per-layer budgets for compression {self.compression} "
                             f"({self.budget}): accuracy drop tau={choice.tau:.4f}")
        return {g.id: int(counts.get(g.id, g.units)) for g in groups}


def _rank_scores(plan: dict[str, list[int]], groups: list[Group]) -> dict[str, np.ndarray]:
    out = {}
    for g in groups:
        s = np.zeros(g.units)
        s[plan[g.id]] = 1.0
        out[g.id] = s
    return out


def _chosen(groups: list[Group], only: tuple[str, ...], graph: ChannelGraph) -> list[Group]:
    if not only:
        return groups
    known = {g.id for g in graph.groups}
    unknown = [gid for gid in only if gid not in known]
    if unknown:
        raise InputError(f"groups not in the model: {', '.join(unknown)}; see fxprune.analyze(model, inputs)")
    return [g for g in groups if g.id in set(only)]


def uniform_counts(groups: list[Group], cost, target_ratio: float, measure: str) -> dict[str, int]:
    """One keep fraction for every group: the largest that meets ``target_ratio``."""
    limit = (cost.full_params if measure == "params" else cost.full_macs) / target_ratio
    measure_fn = cost.params if measure == "params" else cost.macs

    def counts(frac: float) -> dict[str, int]:
        return {g.id: max(1, int(math.ceil(frac * g.units))) for g in groups}

    lo, hi = 0.0, 1.0
    if measure_fn(counts(lo)) > limit:
        raise InputError(f"compression {target_ratio} cannot be reached by pruning these groups "
                         f"(keeping one unit each gives {cost_ratio(cost, counts(lo), measure):.2f}x)")
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if measure_fn(counts(mid)) <= limit else (lo, mid)
    return counts(lo)


def cost_ratio(cost, counts: dict[str, int], measure: str) -> float:
    full = cost.full_params if measure == "params" else cost.full_macs
    now = cost.params(counts) if measure == "params" else cost.macs(counts)
    return full / max(now, 1)


class LayerwiseContext:
    """What a layer-wise method works with: groups, calibration data, the model being pruned."""

    def __init__(self, method: LayerwisePass, gm: fx.GraphModule, state: State):
        self.method = method
        self.graph: ChannelGraph = state.channel_graph
        self.state = state
        self.original = gm
        self.work = _copy_graph_module(gm)
        self.notes: list[str] = []
        self._scores: dict[str, np.ndarray] | None = None
        self._problems: dict[str, GroupProblem] = {}
        self._cost = None
        self.seconds: dict[str, float] = {}
        budget = Budget(method.sparsity, method.scope, method.round_to, method.ignore)
        need_consumers = method.reweight or method.needs_features
        self.consumers: dict[str, ConsumerSet] = {}
        self.groups = []
        for g in _chosen(selectable_groups(self.graph, budget), method.groups, self.graph):
            cset = group_consumers(self.graph, g)
            why = cset.reason or ("pruning changes a normalisation over the channels" if g.has_norm else None)
            if need_consumers and why:
                self.notes.append(f"{method.name}: group {g.id} left whole: {why}")
                continue
            self.consumers[g.id] = cset
            self.groups.append(g)
        self._calibration = None
        self._verification = None

    @contextmanager
    def timed(self, phase: str):
        """Add the time spent in the block to ``self.seconds[phase]`` (reported per pass)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    # --- data ---------------------------------------------------------------------------
    @property
    def calibration(self) -> Batches:
        if self._calibration is None:
            m = self.method
            self._calibration = Batches.from_data(m.data, self.state.example_inputs, what=f"{m.name}'s data",
                                                  max_batches=m.max_batches, need_targets=m.needs_targets)
        return self._calibration

    @property
    def verification(self) -> Batches:
        if self._verification is None:
            self._verification = Batches.from_data(self.method.verification, self.state.example_inputs,
                                                   what=f"{self.method.name}'s verification data (allocation='accuracy')",
                                                   need_targets=True)
        return self._verification

    def cached_scores(self, method: LayerwisePass) -> dict[str, np.ndarray]:
        if self._scores is None:
            self._scores = method.scores(self, self.groups)
        return self._scores

    def cost_model(self):
        if self._cost is None:
            from fxprune.cost import CostModel

            self._cost = CostModel.build(self.graph, self.state.example_inputs)
        return self._cost

    def loss_fn(self) -> Callable:
        return self.method.loss_fn or F.cross_entropy

    # --- features -----------------------------------------------------------------------
    def layouts(self, group: Group, model: fx.GraphModule) -> list[ConsumerLayout]:
        return [ConsumerLayout.build(c, model.get_submodule(c.module), group.units)
                for c in self.consumers[group.id].consumers]

    def layerwise_problem(self, group: Group) -> GroupProblem:
        """The least-squares data of ``group`` on the unpruned model (all groups in one pass)."""
        if group.id not in self._problems:
            with self.timed("features+gram"):
                self._problems.update(collect_problems(self.original, self.groups, self, self.calibration))
        return self._problems[group.id]

    # --- applying a decision ------------------------------------------------------------
    def apply(self, group: Group, kept: list[int], problem: GroupProblem | None,
              weights: torch.Tensor | None = None) -> None:
        """Prune ``group`` to ``kept`` in the work model (zero its produce slices) and, given a
        problem, write the least-squares weights of the kept units into its consumers."""
        if problem is not None:
            from .greedy import least_squares_weights

            G, C, _ = problem.gram_data()
            w = weights if weights is not None else least_squares_weights(G, C, list(kept), problem.block)
            work_problem = GroupProblem(self.layouts(group, self.work), group.units)
            work_problem.write(list(kept), w)
        zero_removed_produce(self.work, group, list(kept))

    # --- evaluation ---------------------------------------------------------------------
    def accuracy(self, model: torch.nn.Module) -> float:
        correct = total = 0
        was = model.training
        model.eval()
        device = model_device(model)
        with torch.no_grad():
            for inputs, targets in self.verification:
                out = model(*to_device(inputs, device))
                correct += int((out.argmax(-1) == targets.to(out.device)).sum())
                total += int(targets.numel())
        model.train(was)
        correct, total = all_reduce_sum(torch.tensor([correct, total], dtype=torch.float64)).tolist()  # torchrun
        return correct / max(total, 1)

    def prune_one_and_evaluate(self, group: Group, k: int) -> float:
        """Verification accuracy with only ``group`` pruned to ``k`` units (reweighted if asked)."""
        kept = self.method.order(self, group, k)[:k]
        # every tensor of the group gated (the per-layer accuracy curve does not need folded constants)
        masked = mask(self.original, self.graph, {group.id: kept}, compensate=False).to(model_device(self.original))
        if self.method.reweight:
            from .greedy import least_squares_weights

            problem = self.layerwise_problem(group)
            G, C, _ = problem.gram_data()
            w = least_squares_weights(G, C, list(kept), problem.block)
            GroupProblem(self.layouts(group, masked), group.units).write(list(kept), w)
        self.method.adjust_readers(self, masked, group, list(kept))
        return self.accuracy(masked)


def zero_removed_produce(gm: fx.GraphModule, group: Group, kept: list[int]) -> None:
    """Zero the produce slices of ``group``'s units not in ``kept`` in ``gm``, in place, on the
    tensors' own device (fxprune.mask's helper indexes with CPU indices)."""
    removed = sorted(set(range(group.units)) - set(kept))
    if not removed:
        return
    tensors = dict(gm.named_parameters(remove_duplicate=False)) | dict(gm.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for s in group.slices(removed):
            t = tensors.get(s.name)
            if s.role == "produce" and t is not None:
                t.index_fill_(s.dim, s.index.to(t.device), 0.0)


def consumer_inputs(model: fx.GraphModule, modules: list[str], batches: Batches):
    """Yield, per calibration batch, ``{module: its input}`` from an eval-mode forward of ``model``."""
    seen: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(name).register_forward_pre_hook(
        lambda m, args, name=name: seen.__setitem__(name, args[0].detach().clone())) for name in dict.fromkeys(modules)]
    was = model.training
    model.eval()
    device = model_device(model)
    try:
        with torch.no_grad():
            for inputs in batches.inputs:
                seen.clear()
                model(*to_device(inputs, device))
                yield dict(seen)
    finally:
        for h in handles:
            h.remove()
        model.train(was)


def collect_inputs(model: fx.GraphModule, consumers: list, batches: Batches) -> list[list[torch.Tensor]]:
    """Per batch, the inputs of ``consumers`` (in order) in ``model``."""
    return [[seen[c.module] for c in consumers] for seen in consumer_inputs(model, [c.module for c in consumers], batches)]


def collect_problems(model: fx.GraphModule, groups: list[Group], ctx: LayerwiseContext,
                     batches: Batches) -> dict[str, GroupProblem]:
    """One forward pass per batch of ``model`` accumulating every group's Gram data."""
    problems = {g.id: GroupProblem(ctx.layouts(g, model), g.units) for g in groups}
    modules = [c.module for g in groups for c in ctx.consumers[g.id].consumers]
    for seen in consumer_inputs(model, modules, batches):
        for g in groups:
            problems[g.id].add([seen[c.module] for c in ctx.consumers[g.id].consumers])
    return problems
