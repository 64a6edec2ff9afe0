"""The ``bep`` method's options (``BEP``, also its pipeline pass) and its budgets.

``final_counts`` gives ``B_s``, the units every group keeps at the end of training: from
``units={gid: n}``, ``target_macs_ratio`` (one uniform keep fraction found by binary
search with ``fxprune.cost.CostModel``) or ``sparsity``. The method itself: ``bep.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping

from torch import fx

from fxprune.budget import Budget, selectable_groups
from fxprune.cost import CostModel
from fxprune.errors import InputError, PlanError
from fxprune.graph import ChannelGraph
from fxprune.pipeline import Pass
from fxprune.training import TrainConfig, train_config_from

#: the latent kernels of ``fxprune.passes.bep.mogp`` (kept here so that options load no gpytorch).
KERNELS: tuple[str, ...] = ("exponential+constant+drift", "exponential+constant", "exponential")

#: ``predictor`` values: the multi-output GP of the paper, or (an ablation) the latest
#: bucket of measured saliency taken as the final one, with no uncertainty.
PREDICTORS: tuple[str, ...] = ("mogp", "last")
#: ``penalty_time`` values: the unit of ``T - t`` in the penalty ``lambda_t (T - t)`` (see ``BEP``).
PENALTY_TIMES: tuple[str, ...] = ("fraction", "iterations")
#: the paper's latent functions per layer type (App. G.1): 12 for convolutions, 4 for dense layers.
PAPER_LATENTS: dict[str, int] = {"conv": 12, "dense": 4}

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

    Saliency (App. A, G.1): eq. A1, ``|a . dL/da|`` per sample averaged over a fixed
    instrumentation subset of ``instrument_samples`` samples (the first ones the data
    yields, taken once at the start: a random subset with a shuffled loader), measured
    every ``measure_every`` iterations. The paper measured 3 times per epoch on 40% of the
    training set (more compute than the training itself); the CPU default, 512 samples
    every 20 iterations, costs about 0.8 x the training FLOPs at batch 32 (reported as
    ``instrument_flops``). ``saliency="per_batch"`` measures ``|sum_batch a . dL/da|`` instead.

    Saliency model (Sec. 4.2, 5, G.1): ``num_latents`` latent GPs per group (``None``: the
    paper's 12 for a group produced by convolutions, 4 for dense layers; capped at the
    group's units), ``inducing`` variational inducing points per latent (paper: 60),
    ``gp_iters`` Adam steps of the ELBO (a warm-started refit uses a third),
    ``samples`` Monte-Carlo samples of ``s_T`` for the utility (paper: 10,000).
    ``kernel``: each latent's kernel, ``"exponential+constant+drift"`` (default: the paper's
    exponential kernel plus a constant and a Matern-1/2 drift, so that the predictive
    variance neither vanishes at large t nor stays flat over the horizon; chosen by held-out
    coverage on a real trace, ``tools/results/saliency_gp_calibration.md``),
    ``"exponential+constant"`` or ``"exponential"`` (the paper's alone).

    ``penalty_time``: the unit of ``T - t`` in ``Delta > lambda_t (T - t)`` (Algorithm 2).
    ``"fraction"`` (default) counts it as a fraction of training, ``(T - t) / T``, which
    with saliency normalised per group (module doc of ``bep.py``) makes ``lam`` a
    dimensionless trade-off whose range 1e-2..1e-7 (the paper's Table 3) changes what is
    kept; ``"iterations"`` is the literal reading, under which lambda is multiplied by
    thousands of iterations and every lambda of that range cuts to ``B_s`` at once.

    ``measure_to_end``: keep measuring saliency until ``T`` after every group reached ``B_s``
    (the later observations of ``fxprune.passes.bep.plots.plot_saliency``; costs the extra passes).
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
    measure_every: int = 20
    bucket_width: int | None = None
    instrument_samples: int = 512
    saliency: str = "per_sample"
    num_latents: int | None = None
    inducing: int = 60
    kernel: str = "exponential+constant+drift"
    gp_iters: int = 200
    predictor: str = "mogp"
    penalty_time: str = "fraction"
    measure_to_end: bool = False
    samples: int = 10000
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
        for name in ("measure_every", "instrument_samples", "gp_iters", "samples", "inducing"):
            _positive_int(name, getattr(self, name), allow_none=False)
        _positive_int("num_latents", self.num_latents)
        if self.inducing < 2:
            raise InputError(f"bep option inducing must be >= 2, got {self.inducing!r}")
        for name, allowed in (("predictor", PREDICTORS), ("penalty_time", PENALTY_TIMES), ("kernel", KERNELS),
                              ("saliency", ("per_sample", "per_batch"))):
            if getattr(self, name) not in allowed:
                raise InputError(f"bep option {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.train is not None and not isinstance(self.train, (TrainConfig, Mapping)):
            raise InputError(f"train must be a fxprune.TrainConfig or a dict of its fields, got {type(self.train).__name__}")

    def train_config(self) -> TrainConfig:
        """``train`` as a TrainConfig (a dict is completed with ``data`` and ``loss_fn``)."""
        return train_config_from("bep", self.train, self.data, self.loss_fn, self.progress)

    def run(self, gm: fx.GraphModule) -> fx.GraphModule:
        raise PlanError("bep trains and rewrites the model during training: use fxprune.compile(..., method='bep', "
                        "train=...) or fxprune.prepare(..., method='bep')")


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

