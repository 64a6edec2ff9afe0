"""BEP: Bayesian Early Pruning during training (the ``bep`` method, issue #7).

"Pruning During Training by Network Efficacy Modeling": while the network trains, the
first-order Taylor saliency of every unit of every prunable group (App. A, eq. A1:
``|a . dL/da|`` per sample, averaged; a group spanning several layers sums over its
members, App. G.2) is measured every ``measure_every`` iterations on a fixed
instrumentation subset of ``instrument_samples`` samples (taken once, App. G.1;
``fxprune.passes.bep.saliency``) and averaged into buckets of ``bucket_width`` iterations
(``fxprune.passes.bep.saliency_gp.bucket``). After a seed period ``T_0`` (``seed_steps``)
and then every ``step`` iterations, one multi-output GP per group
(``fxprune.passes.bep.mogp.SaliencyMOGP``: Q latent GPs with zero prior mean and their own
exponential kernels, linearly mixed, sparse variational as the paper; warm-started from
the previous step with ``select_units``) predicts the saliency at the end of training
``T``, and ``fxprune.passes.bep.decision.decide`` (Algorithm 2, dynamic penalty
``lambda_t``) chooses the units to keep. The model is then **rewritten physically**
(``fxprune.rewrite``), so the rest of training runs on the smaller model; the
optimizer's state (SGD momentum, Adam ``exp_avg``/``exp_avg_sq``) is sliced in place to
the kept rows. At ``T`` every group is cut to exactly its final budget ``B_s`` (by the
latest bucket of measured saliency). Every decision records its forecast path (mean and
sd of a new bucket from its last observation to ``T``) in ``predictions``: the Fig. 3
coverage check reads the model the decision used.

Saliency of unit ``u`` and sample ``n``: ``|dL_n/dg_nu|`` with a per-sample gate (=1)
shared by all tensors of the unit (``fxprune.mask(..., learnable=True)`` made per
sample): ``dL_n/dg_nu = sum activation x gradient`` over the unit's tensors. Data go to
the model's device; the model is measured in eval mode.

Decision units: the utility ``Delta`` (eq. 7) is compared with ``lambda_t (T - t)`` on
saliency rescaled per group so that its largest clipping bound (App. G.3) is 10, the
scale of the MOGP's data, instead of raw ``|a . dL/da|``, whose size depends on the
loss, the data and the layer; the ranking and the greedy top-``B_s`` are unchanged by
the scale, only the meaning of ``lam`` becomes model-independent. ``lambda_t`` follows
eq. 13 at the candidate mask (``fxprune.passes.bep.decision``): ``lambda`` applies to the
first unit the budget cannot pay for and the penalty rises to 1 at twice that count.
``T - t`` in the penalty is a fraction of training (``penalty_time="fraction"``, the
default): with the fixed budget ``B_{t,c}`` the first decision can afford exactly ``B_s``
units, and counted in iterations the penalty of every lambda in the paper's range
(1e-2..1e-7) times thousands of iterations exceeds any utility of normalised saliency, so
every lambda cut straight to ``B_s`` (measured: ``tools/results/bep_lambda_sweep.md``);
as a fraction, lambda trades the expected saliency lost against the share of training
still to run, and the sweep changes what is kept and when (the paper's Table 3).

Budgets: ``B_s`` per group from ``target_macs_ratio`` (one uniform keep fraction found
by binary search with ``fxprune.cost.CostModel``), else ``units={gid: n}``, else
``sparsity``. Compute budget ``B_{t,c} = ||m_0||_0 T_0 + B_s (T - T_0)`` (Sec. 4.3),
spent by ``||m_t||_0`` every iteration. ``lite=True`` (BEP-LITE, Sec. 4.4) first prunes
at initialisation with GraSP to ``B_0 = ceil(lite_factor * B_s)`` units per group.

Use: ``fxprune.compile(model, x, method="bep", train=TrainConfig(...), target_macs_ratio=0.1)``
(train, finetune ``finetune_epochs``, validate), or a loop of your own::

    prepared = fxprune.prepare(model, x, method="bep", data=loader, total_steps=T, target_macs_ratio=0.1)
    model = prepared.module
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for x, y in batches:                               # T iterations
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        model, opt = prepared.step(opt)                # measure / decide / rewrite
    result = prepared.finalize()                       # exactly B_s units, validated

Errors (``fxprune.errors``): ``PlanError`` for a target leaving a group with zero units,
``InputError`` for ``step``/``seed_steps`` not shorter than training and for a
non-finite saliency. A failing step changes neither the module nor the optimizer; the
user's model is never modified.
"""
from __future__ import annotations

import time
from typing import Any, Iterable

import numpy as np
import torch
from torch import fx, nn

from fxprune.errors import InputError
from fxprune.graph import ChannelGraph
from fxprune.prepared import Prepared, register
from fxprune.report import count_macs, count_params
from fxprune.result import GroupReport, Report, Result
from fxprune.rewrite import _copy_graph_module
from fxprune.state import state_of
from fxprune.modes import restore_modes
from fxprune.training import Hook, TrainConfig, make_optimizer, train_loop
from fxprune.validate import validate as onnx_validate

from ..taylor import _split_batch
from .options import BEP, PREDICTORS, final_counts
from .saliency import inputs_for, take_subset
from .saliency_gp import bucket
from .steps import BEPSteps

__all__ = ["BEP", "BEPPrepared", "PREDICTORS", "final_counts"]


class _Live(nn.Module):
    """Holds the current (shrinking) GraphModule, so that a training loop keeps one object."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__()
        self.gm = gm

    def forward(self, *args: Any) -> Any:
        return self.gm(*args)


# ----------------------------------------------------------------------------- prepared
@register("bep")
class BEPPrepared(BEPSteps, Prepared):
    """Training-time BEP (see module doc); ``fxprune.prepare(..., method="bep")``."""

    options_class = BEP

    def __init__(self, graph: ChannelGraph, options: BEP, source: dict | None = None, was_training: bool = False):
        super().__init__(graph, options, source, was_training)
        self.final = final_counts(graph, options, self.example_inputs)  # B_s per tracked group
        self.alive = {gid: np.arange(graph.group(gid).units) for gid in self.final}  # original unit ids
        self.module = _copy_graph_module(graph.gm)
        self.module.train()
        self.cur_graph = graph
        self.t = 0
        self.T: int | None = options.total_steps
        self.instrument: list | None = None
        self.times: list[float] = []
        self.measurements: dict[str, list[np.ndarray]] = {gid: [] for gid in self.final}  # over original units, NaN dead
        self.gp_state: dict[str, dict] = {}
        self._paths: dict[str, dict] = {}
        self.budget_compute: dict[str, float] = {}
        self.log: list[dict[str, Any]] = []
        self.predictions: list[dict[str, Any]] = []
        self.flops = 0.0
        self.dense_flops = 0.0
        self.instrument_flops = 0.0
        self.timings.update({"measure": 0.0, "mogp": 0.0, "decide": 0.0, "rewrite": 0.0})
        self._started = False
        self._final_done = False
        self._gated: fx.GraphModule | None = None
        self._hook = None
        self._live: _Live | None = None
        batch = self.example_inputs[0].shape[0] if self.example_inputs and self.example_inputs[0].dim() else 1
        self._per_sample = lambda m: count_macs(m, inputs_for(m, self.example_inputs)) / max(batch, 1)
        self._dense_macs = self._per_sample(graph.gm)
        self._macs = self._dense_macs
        self._attach_counter()
        if options.data is not None and options.total_steps is not None:
            self.start(options.data, options.total_steps)

    # --- public ------------------------------------------------------------------------------
    def regularizer(self) -> torch.Tensor:
        return torch.zeros(())

    def parameter_groups(self, **kwargs: Any) -> list[dict[str, Any]]:
        return [{"params": list(self.module.parameters())}]

    def units(self) -> dict[str, int]:
        return {gid: len(a) for gid, a in self.alive.items()}

    def start(self, data: Iterable, total_steps: int) -> None:
        """Take the instrumentation subset, check the schedule, BEP-LITE's GraSP cut; once."""
        self.check_open("start")
        if self._started:
            return
        o = self.options
        self.T = int(total_steps)
        self.step_len = o.step or max(1, self.T // 8)
        self.seed_len = o.seed_steps or self.step_len
        if self.step_len > self.T:
            raise InputError(f"bep: step={self.step_len} iterations is longer than training (T={self.T} iterations)")
        if self.seed_len >= self.T:
            raise InputError(f"bep: the seed period seed_steps={self.seed_len} is not shorter than training "
                             f"(T={self.T} iterations)")
        self.bucket_len = o.bucket_width or max(o.measure_every, self.seed_len // 8)
        if self.seed_len // o.measure_every < 2:
            raise InputError(f"bep: the seed period ({self.seed_len} iterations) holds fewer than 2 saliency "
                             f"measurements (measure_every={o.measure_every})")
        batches = take_subset(data, o.instrument_samples, _split_batch)
        if not batches:
            raise InputError("bep: the data yielded no batches for the instrumentation subset")
        self.instrument = batches
        if o.lite:
            self._lite()
        else:
            self.log.append({"t": 0, "units": self.units()})
        n0 = self.units()
        self.budget_compute = {gid: n0[gid] * self.seed_len + self.final[gid] * (self.T - self.seed_len)
                               for gid in self.final}
        self._started = True

    def step(self, optimizer: torch.optim.Optimizer | None = None, *, data: Iterable | None = None,
             total_steps: int | None = None) -> tuple[fx.GraphModule, torch.optim.Optimizer | None]:
        """Call after every ``optimizer.step()``: counts the iteration, measures saliency every
        ``measure_every`` iterations, decides and rewrites every ``step`` iterations after
        ``T_0`` (the optimizer's params and state are swapped in place), cuts to exactly
        ``B_s`` at ``T``. Returns ``(module, optimizer)``: train the returned module."""
        self.check_open("step")
        if self._final_done:
            return self.module, optimizer
        if not self._started:
            src = data if data is not None else self.options.data
            T = total_steps or self.T
            if src is None or T is None:
                raise InputError("bep step: pass data=<batches> and total_steps=T to prepare() (or to the first step())")
            self.start(src, T)
        self.t += 1
        for gid, n in self.units().items():
            self.budget_compute[gid] -= n
        t, T = self.t, self.T
        if t >= T:
            self._final_prune(optimizer)
            return self.module, optimizer
        if t % self.options.measure_every == 0 and (self._pending() or self.options.measure_to_end):
            self._measure()
        if t >= self.seed_len and (t - self.seed_len) % self.step_len == 0 and self._pending():
            self._decide(optimizer)
        return self.module, optimizer

    def fit(self, config: TrainConfig) -> list[dict[str, Any]]:
        """The whole BEP training (``config.epochs``), pruning as it goes; the model ends with ``B_s`` units."""
        self.check_open("fit")
        if not isinstance(config, TrainConfig):
            raise InputError(f"fit needs a fxprune.TrainConfig, got {type(config).__name__}")
        per_epoch = config.steps_per_epoch()
        if not per_epoch:
            raise InputError("bep needs a loader with len() (or max_steps_per_epoch) to know T")
        T = config.epochs * per_epoch
        self._config_loss = config.loss_fn
        self.start(self.options.data if self.options.data is not None else config.loader, T)
        captured: dict[str, torch.optim.Optimizer] = {}

        def factory(groups, lr):
            captured["opt"] = make_optimizer(config, groups, lr)
            return captured["opt"]

        self._live = _Live(self.module)
        prepared = self

        class _BEPHook(Hook):
            name = "bep"

            def after_step(self, step: int, info: dict[str, Any] | None = None) -> None:
                prepared.step(captured["opt"])
                prepared._live.gm = prepared.module

            def postfix(self) -> dict[str, str]:
                return {"units": str(sum(prepared.units().values())), "flops": f"{prepared.flops_ratio():.0%}"}

            def end_epoch(self, record: dict[str, Any]) -> None:
                record["units"] = sum(prepared.units().values())
                record["train_flops_ratio"] = prepared.flops_ratio()

        start = time.perf_counter()
        records = train_loop(self._live, config.replace(optimizer=factory), hooks=[_BEPHook()], phase="bep")
        self.timings["train"] = time.perf_counter() - start
        if not self._final_done:
            self._final_prune(None)
        self.history += records
        return records

    def finalize(self, *, validate: bool = True, rtol: float = 1e-4) -> Result:
        """Cut every group to exactly ``B_s`` (if training did not reach ``T``), validate in
        onnxruntime, return a ``fxprune.Result`` whose plan is in the original model's units."""
        self.check_open("finalize")
        if not self._final_done:
            self._final_prune(None)
        self._finalized = True
        pruned = self.module
        pruned.eval()
        inputs = inputs_for(pruned, self.example_inputs)
        plan = {gid: [int(u) for u in a] for gid, a in self.alive.items() if len(a) < self.graph.group(gid).units}
        report = Report(count_params(self.graph.gm), count_params(pruned),
                        count_macs(self.graph.gm, inputs_for(self.graph.gm, self.example_inputs)),
                        count_macs(pruned, inputs),
                        groups=[GroupReport(g.id, g.units, len(self.alive.get(g.id, range(g.units))))
                                for g in self.graph.prunable_groups],
                        seconds=dict(self.timings))
        report.details = self.details(report)
        if validate:
            start = time.perf_counter()
            state_of(pruned).validation = onnx_validate(pruned, inputs, rtol=rtol)
            report.seconds["validate"] = time.perf_counter() - start
            report.validation = str(state_of(pruned).validation)
        state_of(pruned).plan = plan
        restore_modes(pruned, self.user_modes)
        return Result(pruned, plan, report, self.graph, dict(self.source), [tuple(x.shape) for x in inputs])

    def trace(self) -> dict[str, Any]:
        """What the plots of ``fxprune.passes.bep.plots`` need, JSON-ready: per group the bucketed
        saliency series over the original units (``values`` (U, buckets), NaN once a unit is
        pruned) and their ``times``; the schedule (``T``, ``seed_steps``, ``step``, the
        ``decisions``' iterations), ``final_units`` and the ``log``."""
        times = torch.tensor(self.times, dtype=torch.float64)
        groups = {}
        for gid, rows in self.measurements.items():
            if rows:
                bt, Y = bucket(times, torch.from_numpy(np.stack(rows, 1)), float(self.bucket_len))
                groups[gid] = {"times": bt.tolist(), "values": Y.tolist()}
        first = {p["group"]: {k: p[k] for k in ("t", "units", "path")} for p in self.predictions
                 if self.predictions and p["t"] == self.predictions[0]["t"] and p.get("path")}
        return {"T": self.T, "seed_steps": getattr(self, "seed_len", None), "step": getattr(self, "step_len", None),
                "decisions": [e["t"] for e in self.log if "lambda_t" in e], "groups": groups,
                "forecasts": first,
                "final_units": dict(self.final), "initial_units": {g: self.graph.group(g).units for g in self.final},
                "log": [dict(e) for e in self.log], "lam": self.options.lam, "lite": self.options.lite}

    def flops_ratio(self) -> float:
        return self.flops / self.dense_flops if self.dense_flops else 1.0

    def overhead(self) -> float:
        """MOGP fit + decision seconds as a fraction of the training wall time (``fit`` only)."""
        train = self.timings.get("train", 0.0)
        return (self.timings["mogp"] + self.timings["decide"]) / train if train else float("nan")

    def details(self, report: Report | None = None) -> dict[str, Any]:
        d = {"method": "bep", "lam": self.options.lam, "lite": self.options.lite, "T": self.T,
             "final_units": dict(self.final), "units": self.units(),
             "train_flops": self.flops, "dense_train_flops": self.dense_flops, "train_flops_ratio": self.flops_ratio(),
             "instrument_flops": self.instrument_flops, "overhead": self.overhead(),
             "log": [dict(r) for r in self.log], "history": [dict(r) for r in self.history]}
        if report is not None:
            d["reached"] = {"macs_ratio": report.macs_ratio, "params_ratio": report.params_ratio}
        d["summary"] = (f"bep: lambda {self.options.lam:g}{' (LITE)' if self.options.lite else ''}, units "
                        + ", ".join(f"{g} {n}" for g, n in self.units().items())
                        + f"; training FLOPs {self.flops_ratio():.1%} of dense; MOGP+decision "
                        + f"{self.timings['mogp'] + self.timings['decide']:.2f}s")
        return d
