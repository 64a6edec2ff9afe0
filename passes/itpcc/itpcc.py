"""ITPCC: information-bottleneck gates on coupled channels (the ``itpcc`` method).

One variational gate ``z_s = mu_s + eps * sigma_s`` per unit ``s`` of every gateable
group (a residual stage's channel has one gate however many layers it spans), placed
where the units enter conv/linear layers (``itpcc_gates``). Training adds

    R = (gamma' / N_b) * sum_s |SCS_s| * log(1 + mu_s^2 / sigma_s^2)          (eq. 20)

to the task loss: ``|SCS_s|`` is the number of conv/linear output channels (filters)
the unit spans (``itpcc_gates.scs_sizes``), ``N_b`` the number of mini-batches per epoch
(so R summed over an epoch counts once; option ``num_batches``). A unit is removed when
``log_alpha = log sigma^2 - log mu^2 >= threshold``; the kept units' ``mu`` is folded into
the consumers' weights, so the finalized model computes what the gated model computes in
eval mode. gamma' is driven towards a target (``target_macs_ratio``,
``target_params_ratio``, else ``1 - sparsity`` of the gated units) by the feedback rule of
``itpcc_control``; ``adapt_gamma=False`` keeps gamma' fixed (the paper's setting).

Design (see also ``itpcc_gates`` and ``itpcc_control``):

- Gates sit where the units enter the next conv/linear layers (every consumer of the
  group, one shared parameter set per unit), not on every tensor: a continuous gate on
  conv -> BN -> ReLU would compound and could not be folded. Groups read by anything
  else, or with normalisation members, stay whole and are reported.
- The gate ``N(mu, sigma^2)`` is stored as ``(mu, log_alpha)``, ``sigma^2 = alpha mu^2``:
  the same distribution and regulariser, but the KL term moves ``log_alpha`` only. In
  the ``(mu, log sigma^2)`` form it also drags ``mu`` to 0, which a BN after the consumer
  makes free for the task, and whole groups collapse at once. The gates get their own
  Adam (betas 0.5, 0.999; ``gate_optimizer="same"`` puts them in the weights' optimizer at
  the fixed ``lr_gates`` instead, the paper's setting), so ``log_alpha`` moves at a
  bounded speed that the gamma' rule can steer.
- gamma' / N_b starts at 1e-3 (``gamma`` overrides) and follows the PI rule of
  ``itpcc_control``; ``threshold="target"`` picks the threshold that meets the target
  exactly at finalize instead of 0.

Needs: ``Analyze``, and training data: ``train=TrainConfig(...)`` (or a dict of its
fields with ``data=`` batches). Guarantees (as a pass): the state's GraphModule holds
the trained, folded weights and ``state.plan`` the kept units; run ``Rewrite`` next.
``fxprune.prepare(model, x, "itpcc", **options)`` gives the same steps one at a time
and ``fxprune.compile(model, x, "itpcc", train=...)`` adds fine-tuning and validation.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping

import numpy as np
import torch
from torch import fx

from fxprune.modes import restore_modes
from fxprune.result import GroupReport, Report, Result
from fxprune.budget import _repair_empty, check_ignore
from fxprune.consumers import ConsumerSet, group_consumers
from fxprune.cost import CostModel
from fxprune.errors import InputError, PlanError
from fxprune.graph import ChannelGraph
from fxprune.pipeline import Pass, require_state
from fxprune.plan import check_plan
from fxprune.prepared import Prepared, register
from fxprune.report import count_macs, count_params
from fxprune.rewrite import _copy_graph_module, rewrite
from fxprune.state import state_of
from fxprune.training import Hook, TrainConfig, train_loop, train_config_from
from fxprune.validate import validate as onnx_validate

from ..scoring import model_device
from .control import GammaController, Target, target_threshold
from .gates import GateSet, fold_gates, insert_gates, scs_sizes

DEFAULT_WEIGHT = 1e-3  # gamma' / N_b when no gamma is given: the regulariser's weight per step and filter
TOLERANCE = 0.05  # a reached cost further than this (relative) from the target gets a warning


@dataclass(frozen=True)
class ITPCC(Pass):
    """Options of the ``itpcc`` method (see module doc); also the pipeline pass.

    ``threshold``: a number, or ``"target"`` (the largest threshold meeting the target).
    ``scope`` is accepted for the common budget options and not used: gates compete
    across groups by their ``log_alpha``. ``gamma`` is the initial gamma'.
    """

    sparsity: float = 0.5
    scope: str = "local"
    round_to: int = 1
    ignore: tuple[str, ...] = ()
    target_macs_ratio: float | None = None
    target_params_ratio: float | None = None
    adapt_gamma: bool = True
    gamma: float | None = None
    gamma_gain: float = 0.4
    gamma_p: float = 1.0
    lr_gates: float = 0.1
    gate_optimizer: str = "adam"
    threshold: float | str = 0.0
    init_mu: float = 1.0
    init_log_sigma2: float = -9.0
    num_batches: int | None = None
    seed: int = 0
    data: Iterable | None = field(default=None, compare=False, repr=False)
    loss_fn: Callable | None = field(default=None, compare=False, repr=False)
    train: Any = field(default=None, compare=False, repr=False)
    progress: bool = True
    name: ClassVar[str] = "itpcc"

    def __post_init__(self) -> None:
        if isinstance(self.ignore, str):
            object.__setattr__(self, "ignore", tuple(n for n in self.ignore.split(",") if n))
        object.__setattr__(self, "ignore", tuple(self.ignore))
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) \
                or not 0.0 <= self.sparsity < 1.0:
            raise InputError(f"sparsity must be in [0, 1), got {self.sparsity!r}")
        if self.scope not in ("local", "global"):
            raise InputError(f"scope must be 'local' or 'global', got {self.scope!r}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise InputError(f"round_to must be a positive integer, got {self.round_to!r}")
        for name in ("gamma", "gamma_gain", "lr_gates", "gamma_p"):
            value = getattr(self, name)
            if (value is None and name == "gamma") or (name == "gamma_p" and value == 0):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                    or not math.isfinite(value):
                raise InputError(f"itpcc option {name} must be a positive number, got {value!r}")
        if self.gate_optimizer not in ("adam", "same"):
            raise InputError(f"gate_optimizer must be 'adam' or 'same', got {self.gate_optimizer!r}")
        if self.target_macs_ratio is not None and self.target_params_ratio is not None:
            raise InputError("give at most one of target_macs_ratio and target_params_ratio")
        self.target()  # checks the ratio
        if not (self.threshold == "target" or (isinstance(self.threshold, (int, float))
                                               and not isinstance(self.threshold, bool)
                                               and math.isfinite(self.threshold))):
            raise InputError(f"threshold must be a number or 'target', got {self.threshold!r}")
        if not (isinstance(self.init_mu, (int, float)) and self.init_mu != 0 and math.isfinite(self.init_mu)):
            raise InputError(f"init_mu must be a non-zero number, got {self.init_mu!r}")
        if not (isinstance(self.init_log_sigma2, (int, float)) and math.isfinite(self.init_log_sigma2)):
            raise InputError(f"init_log_sigma2 must be a number, got {self.init_log_sigma2!r}")
        if self.num_batches is not None and (isinstance(self.num_batches, bool) or not isinstance(self.num_batches, int)
                                             or self.num_batches < 1):
            raise InputError(f"num_batches must be a positive integer, got {self.num_batches!r}")
        if self.train is not None and not isinstance(self.train, (TrainConfig, Mapping)):
            raise InputError(f"train must be a fxprune.TrainConfig or a dict of its fields, got {type(self.train).__name__}")

    def target(self) -> Target:
        """The cost target gamma' is driven to."""
        if self.target_macs_ratio is not None:
            return Target("macs", self.target_macs_ratio)
        if self.target_params_ratio is not None:
            return Target("params", self.target_params_ratio)
        return Target("units", 1.0 - self.sparsity)

    def train_config(self) -> TrainConfig:
        """``train`` as a TrainConfig (a dict is completed with ``data`` and ``loss_fn``)."""
        return train_config_from("itpcc", self.train, self.data, self.loss_fn, self.progress)

    def run(self, gm: fx.GraphModule) -> fx.GraphModule:
        state = require_state(gm, self.name)
        if state.channel_graph is None:
            raise PlanError("itpcc needs the channel analysis: run Analyze() before it")
        prepared = ITPCCPrepared(state.channel_graph, self)
        prepared.fit(self.train_config())
        threshold = prepared.resolve_threshold(None)
        plan, folded = prepared.folded_model(threshold)
        gm.load_state_dict(folded.state_dict())
        state.plan = plan
        state.notes.append(prepared.summary(threshold, plan))
        return gm


class _PruningHook(Hook):
    """Adds the regulariser to every step, steps the gates' own optimizer, updates gamma'."""

    name = "reg"

    def __init__(self, prepared: "ITPCCPrepared", controller: GammaController | None,
                 gate_opt: torch.optim.Optimizer | None):
        self.prepared, self.controller, self.gate_opt = prepared, controller, gate_opt
        self.ratio = prepared.cost_ratio()

    def extra_loss(self, model) -> torch.Tensor:
        return self.prepared.regularizer()

    def after_step(self, step: int, info: dict[str, Any]) -> None:
        p = self.prepared
        if self.gate_opt is not None:
            self.gate_opt.step()
            self.gate_opt.zero_grad(set_to_none=True)
        las = p.log_alphas()
        self.ratio = p.cost_ratio(p.masks_at(las))
        if self.controller is not None:
            left = info["total_steps"] - step - 1 if info["total_steps"] else self.controller.horizon
            p.gamma = self.controller.step(las, {gid: gs.threshold for gid, gs in p.gates.items()},
                                           lambda pred: p.cost_ratio(p.masks_at(pred)), left)

    def postfix(self) -> dict[str, str]:
        return {"gamma": f"{self.prepared.gamma:.2e}", self.prepared.target.measure: f"{self.ratio:.3f}"}

    def end_epoch(self, record: dict[str, Any]) -> None:
        p = self.prepared
        counts = p.counts(p.keep_masks())
        record["gamma"] = p.gamma
        record["units_kept"] = sum(counts.values())
        record["units"] = sum(gs.units for gs in p.gates.values())
        record["macs_ratio"] = p.cost.macs(counts) / p.cost.full_macs
        record["params_ratio"] = p.cost.params(counts) / p.cost.full_params


@register("itpcc")
class ITPCCPrepared(Prepared):
    """The model with ITPCC gates (see module doc); ``fxprune.prepare(..., method="itpcc")``."""

    options_class = ITPCC

    def __init__(self, graph: ChannelGraph, options: ITPCC, source: dict | None = None,
                 was_training: bool = False):
        super().__init__(graph, options, source, was_training)
        check_ignore(graph, options.ignore)
        self.sets, self.ungated = self._gateable(graph, options)
        if not self.sets:
            why = "; ".join(f"{gid}: {r}" for gid, r in list(self.ungated.items())[:3]) or "no prunable group"
            raise InputError(f"itpcc: nothing to gate in this model ({why}); see fxprune.analyze")
        gen = torch.Generator().manual_seed(options.seed)
        params = dict(graph.gm.named_parameters())
        self.gates: dict[str, GateSet] = {
            gid: GateSet(cs.group.units, scs_sizes(cs.group, params), options.init_mu, options.init_log_sigma2,
                         generator=gen) for gid, cs in self.sets.items()}
        self.module = insert_gates(graph.gm, self.sets, self.gates).to(model_device(graph.gm))  # gates where the model is
        self.module.train(was_training)
        self.cost = CostModel.build(graph)
        self.target = options.target()
        self.num_batches = options.num_batches or 1
        self.gamma = float(options.gamma) if options.gamma is not None else DEFAULT_WEIGHT * self.num_batches

    @staticmethod
    def _gateable(graph: ChannelGraph, options: ITPCC) -> tuple[dict[str, ConsumerSet], dict[str, str]]:
        sets, ungated = {}, {}
        ignored = lambda g: any(n == i or n.startswith(i + ".") for n, _, _ in g.members() for i in options.ignore)  # noqa: E731
        for g in graph.prunable_groups:
            if ignored(g):
                continue
            cs = group_consumers(graph, g)
            if g.has_norm:
                ungated[g.id] = "pruning it changes a normalisation's statistics"
            elif not cs.supported:
                ungated[g.id] = cs.reason or "no conv/linear layer reads it"
            else:
                sets[g.id] = cs
        return sets, ungated

    # --- the regulariser and the optimizer groups ----------------------------------------
    @property
    def scs(self) -> dict[str, np.ndarray]:
        """|SCS_s| per unit of every gated group (see ``itpcc_gates.scs_sizes``)."""
        return {gid: gs.scs.detach().cpu().numpy().copy() for gid, gs in self.gates.items()}

    def regularizer(self, num_batches: int | None = None) -> torch.Tensor:
        """``(gamma' / N_b) * sum_s |SCS_s| * log(1 + mu_s^2 / sigma_s^2)`` (eq. 20)."""
        n_b = num_batches or self.num_batches
        total = sum((gs.scs * gs.kl()).sum() for gs in self.gates.values())
        return total * (self.gamma / n_b)

    def gate_parameters(self) -> list[torch.nn.Parameter]:
        return [p for gs in self.gates.values() for p in (gs.mu, gs.log_alpha)]

    def parameter_groups(self, lr_gates: float | None = None) -> list[dict[str, Any]]:
        """Optimizer groups: the weights, then the gates at their own fixed lr (no weight decay)."""
        lr_gates = self.options.lr_gates if lr_gates is None else lr_gates
        if not isinstance(lr_gates, (int, float)) or not lr_gates > 0:
            raise InputError(f"lr_gates must be a positive number, got {lr_gates!r}")
        gates = self.gate_parameters()
        ids = {id(p) for p in gates}
        weights = [p for p in self.module.parameters() if id(p) not in ids]
        return [{"params": weights},
                {"params": gates, "lr": float(lr_gates), "weight_decay": 0.0, "fixed_lr": True}]

    # --- the gate configuration and its cost ------------------------------------------------
    def log_alphas(self) -> dict[str, np.ndarray]:
        with torch.no_grad():
            return {gid: gs.log_alpha.detach().cpu().double().numpy() for gid, gs in self.gates.items()}

    def keep_masks(self, threshold: float | None = None) -> dict[str, np.ndarray]:
        """Kept units of every gated group at ``threshold`` (default: the gates' own; >= 1 each)."""
        return self.masks_at(self.log_alphas(), threshold)

    def masks_at(self, las: Mapping[str, np.ndarray], threshold: float | None = None) -> dict[str, np.ndarray]:
        """Keep masks ``log_alpha < threshold`` (at least one unit per group) for given log alphas."""
        out = {}
        for gid, la in las.items():
            t = self.gates[gid].threshold if threshold is None else threshold
            keep = la < t
            if not keep.any():
                keep[int(np.argmin(la))] = True
            out[gid] = keep
        return out

    def counts(self, masks: Mapping[str, np.ndarray]) -> dict[str, int]:
        """Kept units per group of keep masks."""
        return {gid: int(np.sum(m)) for gid, m in masks.items()}

    def cost_ratio(self, masks: Mapping[str, np.ndarray] | None = None) -> float:
        """The target's measure of a keep configuration (default: the current one), relative to the full model."""
        counts = self.counts(self.keep_masks() if masks is None else masks)
        if self.target.measure == "units":
            return sum(counts.values()) / sum(gs.units for gs in self.gates.values())
        return self.cost.cost(counts, self.target.measure) / self.cost.full(self.target.measure)

    def plan(self, threshold: float) -> dict[str, list[int]]:
        """Kept units per gated group at ``threshold``, rounded up to ``round_to`` with the
        lowest-``log_alpha`` units, never emptying a tensor."""
        las = self.log_alphas()
        plan = {}
        for gid, keep in self.keep_masks(threshold).items():
            kept = set(np.flatnonzero(keep).tolist())
            want = min(len(las[gid]), -(-len(kept) // self.options.round_to) * self.options.round_to)
            for u in np.argsort(las[gid], kind="stable"):
                if len(kept) >= want:
                    break
                kept.add(int(u))
            plan[gid] = sorted(kept)
        plan = _repair_empty(self.graph, plan, {gid: -la for gid, la in las.items()})
        return check_plan(self.graph, plan)

    def resolve_threshold(self, threshold: float | str | None) -> float:
        threshold = self.options.threshold if threshold is None else threshold
        if threshold == "target":
            la = np.concatenate(list(self.log_alphas().values()))
            return target_threshold(la, lambda t: self.cost_ratio(self._plan_masks(self.plan(t))), self.target.ratio)
        if not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise InputError(f"threshold must be a number or 'target', got {threshold!r}")
        return float(threshold)

    def _plan_masks(self, plan: Mapping[str, list[int]]) -> dict[str, np.ndarray]:
        out = {}
        for gid, gs in self.gates.items():
            m = np.zeros(gs.units, dtype=bool)
            m[plan[gid]] = True
            out[gid] = m
        return out

    # --- training ----------------------------------------------------------------------------
    def fit(self, config: TrainConfig) -> list[dict[str, Any]]:
        """The pruning phase: ``config.epochs`` of task loss + regulariser, gamma' driven to the target."""
        self.check_open("fit")
        if not isinstance(config, TrainConfig):
            raise InputError(f"fit needs a fxprune.TrainConfig, got {type(config).__name__}")
        self.num_batches = self.options.num_batches or config.steps_per_epoch() or 1
        if self.options.gamma is None and not self.history:  # gamma' / N_b starts at DEFAULT_WEIGHT
            self.gamma = DEFAULT_WEIGHT * self.num_batches
        controller = GammaController(self.target, self.gamma, self.options.gamma_gain, self.options.gamma_p) \
            if self.options.adapt_gamma else None
        groups, gate_opt = self.parameter_groups(), None
        if self.options.gate_optimizer == "adam":  # the gates' own optimizer, stepped by the hook
            gate_opt = torch.optim.Adam(groups.pop()["params"], lr=self.options.lr_gates, betas=(0.5, 0.999))
        start = time.perf_counter()
        records = train_loop(self.module, config, param_groups=groups, hooks=[_PruningHook(self, controller, gate_opt)],
                             phase="prune")
        self.timings[self.method] = self.timings.get(self.method, 0.0) + time.perf_counter() - start
        self.history += records
        return records

    # --- finalize -----------------------------------------------------------------------------
    def folded_model(self, threshold: float) -> tuple[dict[str, list[int]], fx.GraphModule]:
        """(plan, a copy of the analysed model with the trained weights and ``mu * keep`` folded in)."""
        plan = self.plan(threshold)
        folded = _copy_graph_module(self.graph.gm)
        trained = self.module.state_dict()
        folded.load_state_dict({k: trained[k].detach().cpu() for k in folded.state_dict()})
        masks = self._plan_masks(plan)
        scales = {gid: gs.mu.detach().cpu() * torch.as_tensor(masks[gid], dtype=torch.float32)
                  for gid, gs in self.gates.items()}
        fold_gates(folded, self.sets, scales)
        for gid, gs in self.gates.items():  # the gated model now computes exactly the folded one
            gs.threshold, gs.frozen = threshold, True
            gs.keep.copy_(torch.as_tensor(masks[gid]))
        return plan, folded

    def finalize(self, threshold: float | str | None = None, *, validate: bool = True, rtol: float = 1e-4) -> Result:
        """Remove the units with ``log_alpha >= threshold`` (default the ``threshold`` option,
        0.0; ``"target"``: the largest threshold meeting the target), fold the kept ``mu``
        into the consumers, rewrite, validate in onnxruntime. Once per Prepared."""
        self.check_open("finalize")
        t = self.resolve_threshold(threshold)
        start = time.perf_counter()
        plan, folded = self.folded_model(t)
        self._finalized = True
        self.timings["fold"] = time.perf_counter() - start
        start = time.perf_counter()
        pruned = rewrite(folded, self.graph, plan)
        self.timings["rewrite"] = time.perf_counter() - start
        inputs = self.example_inputs
        report = Report(count_params(self.graph.gm), count_params(pruned), count_macs(self.graph.gm, inputs),
                        count_macs(pruned, inputs),
                        groups=[GroupReport(g.id, g.units, len(plan.get(g.id, range(g.units))))
                                for g in self.graph.prunable_groups],
                        seconds=dict(self.timings))
        report.warnings += [f"itpcc: group {gid} stays whole: {why}" for gid, why in self.ungated.items()]
        report.details = self.details(t, plan, report)
        reached = report.details["reached"][f"{self.target.measure}_ratio"]
        aimed = self.options.adapt_gamma or threshold == "target" or self.options.threshold == "target"
        if aimed and abs(reached - self.target.ratio) > TOLERANCE * self.target.ratio:
            report.warnings.append(f"itpcc: reached {reached:.1%}, the target is {self.target}; train longer "
                                   f"(the gates move at lr_gates per step) or finalize(threshold='target')")
        if validate:
            start = time.perf_counter()
            state_of(pruned).validation = onnx_validate(pruned, inputs, rtol=rtol)
            report.seconds["validate"] = time.perf_counter() - start
            report.validation = str(state_of(pruned).validation)
        restore_modes(pruned, self.user_modes)
        return Result(pruned, plan, report, self.graph, dict(self.source), [tuple(x.shape) for x in inputs])

    def details(self, threshold: float, plan: dict[str, list[int]], report: Report) -> dict[str, Any]:
        masks = self._plan_masks(plan)
        units = sum(gs.units for gs in self.gates.values())
        kept = sum(int(m.sum()) for m in masks.values())
        d = {"method": self.method, "target": {"measure": self.target.measure, "ratio": self.target.ratio},
             "threshold": threshold, "gamma": self.gamma, "num_batches": self.num_batches,
             "reached": {"macs_ratio": report.macs_ratio, "params_ratio": report.params_ratio,
                         "units_ratio": kept / units},
             "gated_groups": sorted(self.gates), "ungated_groups": dict(self.ungated),
             "history": [dict(r) for r in self.history]}
        d["summary"] = self.summary(threshold, plan, report)
        return d

    def summary(self, threshold: float, plan: dict[str, list[int]], report: Report | None = None) -> str:
        """One line: target, reached cost, threshold, final gamma', gated groups."""
        masks = self._plan_masks(plan)
        reached = {"units": sum(int(m.sum()) for m in masks.values()) / sum(gs.units for gs in self.gates.values())}
        if report is not None:
            reached.update(macs=report.macs_ratio, params=report.params_ratio)
        else:
            reached[self.target.measure] = self.cost_ratio(masks)
        return (f"itpcc: target {self.target}, reached {reached[self.target.measure]:.1%} (threshold {threshold:g}, "
                f"gamma' {self.gamma:.3g}); {len(self.gates)} groups gated, {len(self.ungated)} whole")
