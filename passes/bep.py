"""BEP: Bayesian Early Pruning during training (the ``bep`` method, issue #7).

"Pruning During Training by Network Efficacy Modeling": while the network trains, the
first-order Taylor saliency of every unit of every prunable group (App. A, eq. A1; a
group spanning several layers sums over its members, App. G.2) is measured every
``measure_every`` iterations on a fixed instrumentation subset (the first
``instrument_batches`` batches, taken once) and averaged into buckets of
``bucket_width`` iterations (App. G.1, ``fxprune.saliency_gp.bucket``). After a seed
period ``T_0`` (``seed_steps``) and then every ``step`` iterations, one multi-output GP
per group (``fxprune.saliency_gp.SaliencyGP``, warm-started from the previous step with
``select_units``) predicts the saliency at the end of training ``T``, and
``fxprune.bep_decision.decide`` (Algorithm 2, dynamic penalty ``lambda_t``) chooses the
units to keep. The model is then **rewritten physically** (``fxprune.rewrite``), so the
rest of training runs on the smaller model; the optimizer's state (SGD momentum, Adam
``exp_avg``/``exp_avg_sq``) is sliced in place to the kept rows. At ``T`` every group is
cut to exactly its final budget ``B_s`` (by the latest bucket of measured saliency).

Saliency of unit ``u``: ``|dL/dgate_u|`` with a gate (=1) shared by all tensors of the
unit (``fxprune.mask(..., learnable=True)``): ``dL/dgate_u = sum activation x gradient``
over the unit's tensors, averaged over the instrumentation batches. (A1 takes the
absolute value per sample and divides by the spatial size; per batch it is cheaper,
and the spatial size is a constant within a group, so decisions are unchanged.)

Decision units: the utility ``Delta`` (eq. 7) is compared with ``lambda_t (T - t)`` on
saliency rescaled per group so that its largest clipping bound (App. G.3) is 10, the
scale of the MOGP's data, instead of raw ``|a . dL/da|``, whose size depends on the
loss, the data and the layer; the ranking and the greedy top-``B_s`` are unchanged by
the scale, only the meaning of ``lam`` becomes model-independent. ``lambda_t`` follows
eq. 13 at the candidate mask (``fxprune.bep_decision``): ``lambda`` applies to the
first unit the budget cannot pay for and the penalty rises to 1 at twice that count.

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

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from tqdm.auto import tqdm

from fxprune.analysis import analyze
from fxprune.api import GroupReport, Report, Result
from fxprune.bep_decision import decide, penalty
from fxprune.budget import Budget, selectable_groups
from fxprune.cost import CostModel
from fxprune.errors import InputError, PlanError
from fxprune.graph import ChannelGraph
from fxprune.mask import gate_key, mask
from fxprune.optim_state import apply_optimizer_state, param_cuts, sliced_optimizer_state
from fxprune.pipeline import Pass
from fxprune.prepare import Prepared, register
from fxprune.report import count_macs, count_params
from fxprune.rewrite import _copy_graph_module, rewrite
from fxprune.saliency_gp import Preprocess, SaliencyGP, bucket
from fxprune.state import state_of
from fxprune.training import Hook, TrainConfig, make_optimizer, train_loop, train_config_from
from fxprune.validate import validate as onnx_validate

from .grasp import grasp_scores
from .taylor import _split_batch, _unit_gradient


#: ``predictor`` values: the multi-output GP of the paper, or (an ablation) the latest
#: bucket of measured saliency taken as the final one, with no uncertainty.
PREDICTORS: tuple[str, ...] = ("mogp", "last")

#: saliency is handed to the decision in units where the group's largest clipping bound
#: (1.3 x the 95th percentile of its most salient unit, App. G.3) is 10: the scale the
#: MOGP works in, so that ``lam`` means the same on every model, loss and group.
DECISION_SCALE: float = 10.0


def _positive_int(name: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"bep option {name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class BEP(Pass):
    """Options of the ``bep`` method (see module doc); also the pipeline pass.

    ``lam``: the Lagrange penalty lambda (lower: more training compute, less pruning
    early). ``step``: iterations between decisions (default ``T // 8``); ``seed_steps``:
    ``T_0`` (default ``step``); ``bucket_width`` (default ``max(measure_every, T_0 // 8)``).
    ``total_steps``: ``T`` for ``prepare`` + your own loop (``fit`` derives it).
    ``measure_to_end``: keep measuring saliency until ``T`` after every group reached ``B_s``
    (the later observations of ``fxprune.bep_plots.plot_saliency``; costs the extra passes).
    ``predictor="last"`` (an ablation) decides on the latest bucket of measured saliency
    instead of the MOGP's prediction of the final one.
    """

    sparsity: float = 0.5
    scope: str = "local"
    round_to: int = 1
    ignore: tuple[str, ...] = ()
    target_macs_ratio: float | None = None
    units: Mapping[str, int] | None = field(default=None, compare=False)
    lam: float = 1e-4
    lite: bool = False
    lite_factor: float = 2.0
    step: int | None = None
    seed_steps: int | None = None
    measure_every: int = 5
    bucket_width: int | None = None
    instrument_batches: int = 2
    num_latents: int = 4
    gp_iters: int = 30
    predictor: str = "mogp"
    measure_to_end: bool = False
    samples: int = 512
    total_steps: int | None = None
    seed: int = 0
    data: Iterable | None = field(default=None, compare=False, repr=False)
    loss_fn: Callable | None = field(default=None, compare=False, repr=False)
    train: Any = field(default=None, compare=False, repr=False)
    progress: bool = True
    name: ClassVar[str] = "bep"

    def __post_init__(self) -> None:
        Budget(self.sparsity, self.scope, self.round_to, self.ignore)  # checks
        if isinstance(self.ignore, str):
            object.__setattr__(self, "ignore", tuple(n for n in self.ignore.split(",") if n))
        object.__setattr__(self, "ignore", tuple(self.ignore))
        r = self.target_macs_ratio
        if r is not None and not (isinstance(r, (int, float)) and 0 < r <= 1):
            raise InputError(f"target_macs_ratio must be in (0, 1], got {r!r}")
        if not (isinstance(self.lam, (int, float)) and self.lam >= 0 and math.isfinite(self.lam)):
            raise InputError(f"bep option lam must be a number >= 0, got {self.lam!r}")
        if not (isinstance(self.lite_factor, (int, float)) and self.lite_factor >= 1):
            raise InputError(f"bep option lite_factor must be >= 1, got {self.lite_factor!r}")
        for name in ("step", "seed_steps", "bucket_width", "total_steps"):
            _positive_int(name, getattr(self, name))
        for name in ("measure_every", "instrument_batches", "gp_iters", "samples"):
            _positive_int(name, getattr(self, name), allow_none=False)
        if self.predictor not in PREDICTORS:
            raise InputError(f"bep option predictor must be one of {', '.join(PREDICTORS)}, got {self.predictor!r}")
        if not isinstance(self.num_latents, int) or self.num_latents < 0:
            raise InputError(f"bep option num_latents must be an integer >= 0, got {self.num_latents!r}")
        if self.train is not None and not isinstance(self.train, (TrainConfig, Mapping)):
            raise InputError(f"train must be a fxprune.TrainConfig or a dict of its fields, got {type(self.train).__name__}")

    def train_config(self) -> TrainConfig:
        """``train`` as a TrainConfig (a dict is completed with ``data`` and ``loss_fn``)."""
        return train_config_from("bep", self.train, self.data, self.loss_fn, self.progress)

    def run(self, gm: fx.GraphModule) -> fx.GraphModule:
        raise PlanError("bep trains and rewrites the model during training: use fxprune.compile(..., method='bep', "
                        "train=...) or fxprune.prepare(..., method='bep')")


# ----------------------------------------------------------------------------- budgets
def final_counts(graph: ChannelGraph, options: BEP, example_inputs: tuple) -> dict[str, int]:
    """``B_s`` per selectable group: from ``units``, ``target_macs_ratio`` or ``sparsity``."""
    groups = selectable_groups(graph, Budget(options.sparsity, options.scope, options.round_to, options.ignore))
    units = {g.id: g.units for g in groups}

    def rounded(n: int, total: int) -> int:
        r = options.round_to
        return min(total, int(math.ceil(n / r)) * r) if r > 1 and n > 0 else n

    if options.units is not None:
        unknown = sorted(set(options.units) - set(units))
        if unknown:
            raise PlanError(f"bep units: unknown or unprunable group(s) {', '.join(unknown)}; prunable: {', '.join(units)}")
        out = dict(units)
        for gid, n in options.units.items():
            if not isinstance(n, int) or n < 1 or n > units[gid]:
                raise PlanError(f"bep units: group {gid} must keep between 1 and {units[gid]} units, got {n!r} "
                                f"(a group with zero units would disconnect the model)")
            out[gid] = n
        return out
    if options.target_macs_ratio is None:
        return {gid: rounded(u - int(options.sparsity * u), u) for gid, u in units.items()}
    cost = CostModel.build(graph, example_inputs)
    full = cost.full("macs")
    goal = options.target_macs_ratio * full

    def counts(f: float) -> dict[str, int]:
        return {gid: rounded(max(1, int(math.ceil(f * u))), u) for gid, u in units.items()}

    floor = cost.macs(counts(0.0))
    if floor > goal:
        raise PlanError(f"target_macs_ratio={options.target_macs_ratio} cannot be reached without leaving a group with "
                        f"zero units: one unit per prunable group still keeps {floor / full:.2%} of the MACs")
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost.macs(counts(mid)) <= goal:
            lo = mid
        else:
            hi = mid
    return counts(lo)


# ----------------------------------------------------------------------------- helpers
class _Live(nn.Module):
    """Holds the current (shrinking) GraphModule, so that a training loop keeps one object."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__()
        self.gm = gm

    def forward(self, *args: Any) -> Any:
        return self.gm(*args)


# ----------------------------------------------------------------------------- prepared
@register("bep")
class BEPPrepared(Prepared):
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
        self._per_sample = lambda m: count_macs(m, self.example_inputs) / max(batch, 1)
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
        """Take the instrumentation batches, check the schedule, BEP-LITE's GraSP cut; once."""
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
        batches = []
        for i, b in enumerate(data):
            if i >= o.instrument_batches:
                break
            x, y = _split_batch(b)
            batches.append((tuple(t.detach().clone() for t in x), y.detach().clone() if isinstance(y, torch.Tensor) else y))
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
        inputs = self.example_inputs
        plan = {gid: [int(u) for u in a] for gid, a in self.alive.items() if len(a) < self.graph.group(gid).units}
        report = Report(count_params(self.graph.gm), count_params(pruned), count_macs(self.graph.gm, inputs),
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
        pruned.train(self.was_training)
        return Result(pruned, plan, report, self.graph, dict(self.source), [tuple(x.shape) for x in inputs])

    def trace(self) -> dict[str, Any]:
        """What the plots of ``fxprune.bep_plots`` need, JSON-ready: per group the bucketed
        saliency series over the original units (``values`` (U, buckets), NaN once a unit is
        pruned) and their ``times``; the schedule (``T``, ``seed_steps``, ``step``, the
        ``decisions``' iterations), ``final_units`` and the ``log``."""
        times = torch.tensor(self.times, dtype=torch.float64)
        groups = {}
        for gid, rows in self.measurements.items():
            if rows:
                bt, Y = bucket(times, torch.from_numpy(np.stack(rows, 1)), float(self.bucket_len))
                groups[gid] = {"times": bt.tolist(), "values": Y.tolist()}
        return {"T": self.T, "seed_steps": getattr(self, "seed_len", None), "step": getattr(self, "step_len", None),
                "decisions": [e["t"] for e in self.log if "lambda_t" in e], "groups": groups,
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

    # --- internals -------------------------------------------------------------------------
    def _pending(self) -> bool:
        return any(len(self.alive[g]) > self.final[g] for g in self.final)

    def _attach_counter(self) -> None:
        prepared = self

        def count(module: nn.Module, args: tuple) -> None:
            if module.training and torch.is_grad_enabled() and args and isinstance(args[0], torch.Tensor):
                n = args[0].shape[0] if args[0].dim() else 1
                prepared.flops += 6.0 * prepared._macs * n  # forward + backward ~ 3 forwards, 2 FLOPs per MAC
                prepared.dense_flops += 6.0 * prepared._dense_macs * n

        self._hook = self.module.register_forward_pre_hook(count)

    def _gated_module(self) -> fx.GraphModule:
        if self._gated is None:
            full = {gid: list(range(self.cur_graph.group(gid).units)) for gid in self._cur_ids()}
            self._gated = mask(self.module, self.cur_graph, full, learnable=True)
        return self._gated

    def _cur_ids(self) -> list[str]:
        ids = {g.id for g in self.cur_graph.prunable_groups}
        return [gid for gid in self.final if gid in ids]

    def _measure(self) -> None:
        start = time.perf_counter()
        gated = self._gated_module()
        gated.load_state_dict(self.module.state_dict(), strict=False)
        gated.eval()
        gates = {gid: gate.values for gid, gate in gated.fxprune_gates.items()}
        params = dict(gated.named_parameters())
        loss_fn = self._loss_fn()
        ids = self._cur_ids()
        sums = {gid: np.zeros(len(self.alive[gid])) for gid in ids}
        for x, y in self.instrument:
            gated.zero_grad(set_to_none=True)
            loss_fn(gated(*x), y).backward()
            self.instrument_flops += 6.0 * self._macs * (x[0].shape[0] if x[0].dim() else 1)
            for gid in ids:
                sums[gid] += np.abs(_unit_gradient(self.cur_graph.group(gid), gates[gate_key(gid)], params))
        for gid in self.final:
            row = np.full(self.graph.group(gid).units, np.nan)
            if gid in sums:
                value = sums[gid] / len(self.instrument)
                if not np.isfinite(value).all():
                    raise InputError(f"bep: the saliency of group {gid} is not finite at iteration {self.t} "
                                     f"(the loss or gradients diverged); lower the learning rate")
                row[self.alive[gid]] = value
            self.measurements[gid].append(row)
        self.times.append(float(self.t))
        self.timings["measure"] += time.perf_counter() - start

    def _loss_fn(self) -> Callable:
        return self.options.loss_fn or getattr(self, "_config_loss", None) or F.cross_entropy

    def _series(self, gid: str) -> tuple[torch.Tensor, torch.Tensor]:
        times = torch.tensor(self.times, dtype=torch.float64)
        Y = torch.from_numpy(np.stack(self.measurements[gid], 1)[self.alive[gid]])
        return bucket(times, Y, float(self.bucket_len))

    def _decide(self, optimizer) -> None:
        keep_local: dict[str, np.ndarray] = {}
        entry: dict[str, Any] = {"t": self.t, "lambda_t": {}, "units_before": self.units()}
        gen = torch.Generator().manual_seed(self.options.seed + self.t)
        for gid in self._cur_ids():
            U, Bs = len(self.alive[gid]), self.final[gid]
            if U <= Bs:
                continue
            times, Y = self._series(gid)
            if len(times) < 2:
                continue
            start = time.perf_counter()
            mean, cov, samples, upper = self._belief(gid, times, Y, gen)
            self.timings["mogp"] += time.perf_counter() - start
            start = time.perf_counter()
            if not (torch.isfinite(mean).all() and torch.isfinite(samples).all()):
                raise InputError(f"bep: the saliency model of group {gid} predicts non-finite saliency at "
                                 f"iteration {self.t}")
            norm = DECISION_SCALE / upper
            keep = decide(mean * norm, samples * norm, budget_final=Bs, budget_compute=self.budget_compute[gid],
                          lam=self.options.lam, t=self.t, T=self.T, prev_kept=U)
            # lambda_t of the first unit refused (or of one more unit when all were kept)
            entry["lambda_t"][gid] = penalty(self.options.lam, self.t, self.T, int(keep.sum()) + 1,
                                             self.budget_compute[gid])
            self.timings["decide"] += time.perf_counter() - start
            idx = torch.nonzero(keep).squeeze(1)
            self.predictions.append({"t": self.t, "group": gid, "units": self.alive[gid].tolist(),
                                     "mean": mean.tolist(), "std": cov.diagonal().clamp_min(0).sqrt().tolist(),
                                     "kept": self.alive[gid][idx.numpy()].tolist()})
            if gid in self.gp_state:
                self.gp_state[gid] = SaliencyGP.select_units(self.gp_state[gid], idx)
            if len(idx) < U:
                keep_local[gid] = idx.numpy()
        self._prune(keep_local, optimizer)
        entry["units"] = self.units()
        entry["train_flops"], entry["train_flops_ratio"] = self.flops, self.flops_ratio()
        self.log.append(entry)
        self._say(entry)

    def _belief(self, gid: str, times: torch.Tensor, Y: torch.Tensor, gen: torch.Generator):
        """``(mean, cov, samples, largest clipping bound)`` of ``s_T`` for group ``gid``; the
        MOGP's state is kept for the next decision's warm start."""
        if self.options.predictor == "last":
            mean = Y[:, -1].to(torch.float64)
            upper = float(Preprocess.fit(times, Y).upper.max())
            return mean, torch.zeros(len(mean), len(mean), dtype=torch.float64), mean[None], upper
        U = Y.shape[0]
        gp = SaliencyGP(times, Y, num_latents=min(self.options.num_latents, U))
        try:
            gp.fit(max_iter=self.options.gp_iters, init=self.gp_state.get(gid))
        except (RuntimeError, ValueError, KeyError):
            gp = SaliencyGP(times, Y, num_latents=min(self.options.num_latents, U))
            gp.fit(max_iter=self.options.gp_iters)
        mean, cov = gp.predict(float(self.T))
        samples = gp.sample(float(self.T), self.options.samples, generator=gen)
        self.gp_state[gid] = gp.state_dict()
        return mean, cov, samples, float(gp.preprocess.upper.max())

    def _final_prune(self, optimizer) -> None:
        keep_local = {}
        for gid in self._cur_ids():
            U, Bs = len(self.alive[gid]), self.final[gid]
            if U <= Bs:
                continue
            if self.times:
                _, Y = self._series(gid)
                score = Y[:, -1].numpy()
            else:
                score = np.zeros(U)
            order = np.lexsort((np.arange(U), -score))
            keep_local[gid] = np.sort(order[:Bs])
            self.gp_state.pop(gid, None)
        self._prune(keep_local, optimizer)
        missing = {g: (len(self.alive[g]), self.final[g]) for g in self.final if len(self.alive[g]) != self.final[g]}
        if missing:
            raise PlanError(f"bep: groups not at their final unit counts (have, want): {missing}")
        self._final_done = True
        entry = {"t": self.t, "final": True, "units": self.units(), "train_flops": self.flops,
                 "train_flops_ratio": self.flops_ratio()}
        self.log.append(entry)
        self._say(entry)

    def _prune(self, keep_local: Mapping[str, np.ndarray], optimizer) -> None:
        """Rewrite to ``keep_local`` (indices of the current model's units), re-analyse, slice the
        optimizer; all computed first, then committed (a failure leaves everything as it was)."""
        if not keep_local:
            return
        start = time.perf_counter()
        plan = {gid: [int(i) for i in idx] for gid, idx in keep_local.items()}
        old = self.module
        new = rewrite(old, self.cur_graph, plan)
        new.train(old.training)
        cuts = param_cuts(self.cur_graph, plan)
        new_graph = analyze(new, self.example_inputs)
        state_of(new_graph.gm).channel_graph = new_graph
        opt_update = sliced_optimizer_state(optimizer, old, new, cuts) if optimizer is not None else None
        alive = dict(self.alive)
        for gid, idx in keep_local.items():
            alive[gid] = self.alive[gid][idx]
        for gid, a in alive.items():
            if len(a) > self.final[gid] and not any(g.id == gid and g.units == len(a) for g in new_graph.prunable_groups):
                raise PlanError(f"bep: group {gid} cannot be followed after the rewrite (please report it)")
        # commit
        if self._hook is not None:
            self._hook.remove()
        self.module, self.cur_graph, self.alive, self._gated = new, new_graph, alive, None
        if opt_update is not None:
            apply_optimizer_state(optimizer, *opt_update)
        self._macs = self._per_sample(new)
        self._attach_counter()
        if self._live is not None:
            self._live.gm = new
        self.timings["rewrite"] += time.perf_counter() - start

    def _lite(self) -> None:
        """BEP-LITE: GraSP at initialisation to ``B_0 = ceil(lite_factor * B_s)`` units per group."""
        start = time.perf_counter()
        ids = self._cur_ids()
        groups = [self.cur_graph.group(g) for g in ids]
        scores = grasp_scores(self.module, self.cur_graph, groups, self.instrument, self._loss_fn())
        keep = {}
        for g in groups:
            b0 = min(g.units, max(self.final[g.id], int(math.ceil(self.options.lite_factor * self.final[g.id]))))
            if b0 < g.units:
                s = scores[g.id]
                keep[g.id] = np.sort(np.lexsort((np.arange(g.units), -s))[:b0])
        self._prune(keep, None)
        self.timings["lite"] = time.perf_counter() - start
        self.log.append({"t": 0, "lite": True, "units": self.units()})

    def _say(self, entry: dict[str, Any]) -> None:
        if not self.options.progress:
            return
        lam = entry.get("lambda_t") or {}
        lam_s = (" lambda_t " + ", ".join(f"{v:.2g}" for v in lam.values())) if lam else ""
        tqdm.write(f"bep t={entry['t']}/{self.T}: units " + " ".join(f"{g}={n}" for g, n in entry["units"].items())
                   + lam_s + f"; train FLOPs {entry.get('train_flops_ratio', 1.0):.1%} of dense")
