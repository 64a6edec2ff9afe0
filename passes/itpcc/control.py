"""ITPCC budgets: what a gate configuration costs, the gamma' feedback rule, the exact-target threshold.

``Target(measure, ratio)``: ``measure`` is ``"macs"``, ``"params"`` (kept / full, from
``fxprune.cost.CostModel``) or ``"units"`` (kept / all gated units).

``GammaController``: the paper balances the task loss and the compression term with one
weight gamma'; users give a cost target instead, and gamma' becomes the Lagrange multiplier
of ``cost <= target``, found by a PI rule on ``log gamma'`` run after every optimizer step::

    e_t           = clip((c_t - target) / target, -1, 1)       # > 0: too big, prune more
    I_{t+1}       = I_t + gain * e_t                           # integral (dual ascent)
    log gamma'_t  = I_t + p_gain * e_t                         # + proportional term

``c_t`` is the cost of the deterministic model (units with ``log_alpha < threshold``) that
each unit's ``log_alpha`` *predicts* ``horizon`` steps ahead, extrapolated with its velocity
(an exponential average of its per-step change). Why: a unit's ``log_alpha`` moves at a
bounded speed (Adam steps), so the cost reacts to gamma' with a lag; units still far below
the threshold move together (the noise is too small for the task to tell them apart) and
would all cross at once. The prediction sees a crossing coming, so gamma' is lowered before
too many units cross; the horizon shrinks to 0 over the last steps, so at the end the rule
controls the cost that is actually reached. Anti-windup: the integral only moves once
some unit is within ``band`` of the threshold or the predicted cost has left 1 (before that
no gamma' changes the cost, and an integral growing all that time would overshoot).

``target_threshold``: the largest threshold whose kept set costs at most the target
(binary search over the sorted ``log_alpha`` values; kept sets are nested in the
threshold, so the cost is monotone).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from fxprune.errors import InputError

MEASURES = ("macs", "params", "units")
HORIZON = 10  # steps of log_alpha extrapolation
BAND = 2.0  # the integral starts once a unit is this close to the threshold
VELOCITY_DECAY = 0.7  # exponential average of the per-step change of log_alpha


@dataclass(frozen=True)
class Target:
    """Keep ``ratio`` (in (0, 1]) of the model's ``measure``."""

    measure: str
    ratio: float

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise InputError(f"target measure must be one of {MEASURES}, got {self.measure!r}")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0.0 < self.ratio <= 1.0:
            raise InputError(f"target {self.measure} ratio must be in (0, 1], got {self.ratio!r}")

    def __str__(self) -> str:
        name = {"macs": "MACs", "params": "params", "units": "units"}[self.measure]
        return f"{name} {self.ratio:.1%}"


class GammaController:
    """The PI rule on ``log gamma'`` towards a cost target (see module doc)."""

    def __init__(self, target: Target, gamma: float, gain: float = 0.4, p_gain: float = 1.0,
                 horizon: int = HORIZON, band: float = BAND, gamma_min: float = 1e-10, gamma_max: float = 1e10):
        if not gamma > 0 or not gain > 0 or not p_gain >= 0:
            raise InputError(f"gamma and the gains must be positive, got {gamma!r}, {gain!r}, {p_gain!r}")
        self.target = target
        self.integral = math.log(gamma)
        self.gain, self.p_gain = gain, p_gain
        self.horizon, self.band = horizon, band
        self.bounds = (math.log(gamma_min), math.log(gamma_max))
        self.error = 0.0
        self.active = False
        self.previous: dict[str, np.ndarray] | None = None
        self.velocity: dict[str, np.ndarray] = {}

    @property
    def gamma(self) -> float:
        return math.exp(self._clamp(self.integral + self.p_gain * self.error))

    def _clamp(self, x: float) -> float:
        return min(max(x, self.bounds[0]), self.bounds[1])

    def predict(self, log_alphas: Mapping[str, np.ndarray], steps: int) -> dict[str, np.ndarray]:
        """Record the current ``log_alphas``; return them extrapolated ``steps`` ahead."""
        if self.previous is not None:
            for gid, la in log_alphas.items():
                change = la - self.previous[gid]
                self.velocity[gid] = VELOCITY_DECAY * self.velocity.get(gid, change) + (1 - VELOCITY_DECAY) * change
        self.previous = {gid: la.copy() for gid, la in log_alphas.items()}
        return {gid: la + steps * self.velocity.get(gid, 0.0) for gid, la in log_alphas.items()}

    def step(self, log_alphas: Mapping[str, np.ndarray], thresholds: Mapping[str, float],
             cost_of: Callable[[Mapping[str, np.ndarray]], float], steps_left: int) -> float:
        """One update from the gates' ``log_alphas``; ``cost_of`` maps log alphas to a cost
        ratio (units below their threshold kept). Returns the new gamma'."""
        predicted = self.predict(log_alphas, max(0, min(self.horizon, steps_left)))
        cost = cost_of(predicted)
        near = any((np.abs(la - thresholds[gid]) < self.band).any() for gid, la in log_alphas.items())
        self.active = self.active or near or cost < 1.0
        if self.active:
            self.error = max(-1.0, min(1.0, (cost - self.target.ratio) / self.target.ratio))
            self.integral = self._clamp(self.integral + self.gain * self.error)
        return self.gamma


def target_threshold(log_alphas: np.ndarray, cost_at: Callable[[float], float], target: float) -> float:
    """The largest threshold ``t`` (a midpoint between sorted ``log_alphas``) with ``cost_at(t) <= target``.

    ``cost_at`` must be non-decreasing in ``t``; if even the smallest kept set costs more,
    the smallest threshold is returned.
    """
    values = np.unique(np.asarray(log_alphas, dtype=np.float64))
    # candidate k keeps the k smallest log_alpha values: a threshold just above values[k-1]
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    lo, hi = 0, len(candidates) - 1
    while lo < hi:  # the answer is in [lo, hi]
        mid = (lo + hi + 1) // 2
        if cost_at(float(candidates[mid])) <= target:
            lo = mid
        else:
            hi = mid - 1
    return float(candidates[lo])
