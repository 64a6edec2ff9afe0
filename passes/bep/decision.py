"""The pruning decision of Bayesian Early Pruning (BEP, Algorithm 2 and Sec. 4.5).

Pure functions on tensors; the belief ``p(s_T | s_1:t)`` comes from
``fxprune.passes.bep.saliency_gp.SaliencyGP`` (``predict`` for the mean, ``sample`` for the
Monte-Carlo samples). Notation of the paper:

* ``T``: total number of training iterations; ``t``: the current one (``t < T``).
* ``s_T``: saliency of the group's units after training; ``mu_T|1:t`` its predictive
  mean (``mean``) and ``samples`` draws from ``p(s_T | s_1:t)``.
* ``m_t``: the pruning mask chosen now, ``m_{t-1}`` the previous one; ``||m||_0`` the
  number of kept units (``prev_kept``).
* ``B_s``: sparsity budget, the number of units the trained network may keep
  (``budget_final``).
* ``B_{t,c}``: the compute budget left from iteration ``t`` to ``T`` in unit-iterations
  (``budget_compute``); keeping ``||m_t||_0`` units until ``T`` costs ``(T - t)||m_t||_0``.
* ``rho_T(m, B_s) = max_{m_T <= m, ||m_T||_0 <= B_s} m_T . s_T``: the best total final
  saliency of at most ``B_s`` units of ``m`` (a greedy top-``B_s`` selection).
* ``Delta(a, m_t) = E[rho_T(e_a v m_t, B_s) - rho_T(m_t, B_s)]`` (eq. 7): the utility
  of adding unit ``a`` to ``m_t``.
* ``lambda``: the user's Lagrange multiplier (``lam``); ``lambda_t = lambda^(1 - e(t))``
  (eq. 12) with ``e(t) = (T - t)||m_t||_0 / B_{t,c} - 1`` (eq. 13).

Which mask ``e(t)`` reads: eq. 13 writes ``||m_t||_0``, the mask being built. ``decide``
evaluates it at the candidate mask ``m_t v e_a`` for every unit ``a`` past the
affordable ones, so the penalty grows as the loop keeps units beyond what the budget
pays for: ``e = 0`` (``lambda_t = lambda``) at the first unaffordable unit, ``e = 1``
(``lambda_t = 1``) at twice the affordable count. Reading ``m_{t-1}`` instead (the mask
known before the loop) makes ``e(T_0) = ||m_0||_0 / B_s - 1``, which is above 1 as soon
as fewer than half the units are to survive: ``lambda_t`` is then 1 whatever ``lambda``,
and the first decision cuts straight to ``B_s`` -- ``lambda`` would have no effect at
the high sparsities the paper reports (its Table 3 shows that it does).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from fxprune.errors import InputError

#: bounds of the penalty error e(t); see ``penalty_error``.
E_CLIP: tuple[float, float] = (-1.0, 1.0)


def _count(prev_kept: int | Tensor) -> int:
    return int(prev_kept.sum()) if isinstance(prev_kept, Tensor) else int(prev_kept)


def penalty_error(t: float, T: float, prev_kept: int | Tensor, budget_compute: float,
                  clip: tuple[float, float] = E_CLIP) -> float:
    """``e(t) = (T - t)||m_t||_0 / B_{t,c} - 1`` (eq. 13), clipped to ``clip``.

    ``prev_kept``: the mask (or its count) whose cost is measured; ``decide`` passes the
    candidate mask (module doc). ``e(t) >= -1`` holds by construction;
    the paper states no upper bound, and this clips at ``+1`` so that the exponent
    ``1 - e(t)`` of eq. 12 stays in ``[0, 2]``: ``lambda_t`` stays between ``lambda^2``
    and ``1`` for ``lambda < 1`` instead of overflowing to ``lambda^-k`` when training is
    far over budget. An exhausted budget (``B_{t,c} <= 0``) counts as ``e = +inf``.
    """
    if budget_compute <= 0:
        e = math.inf
    else:
        e = (T - t) * _count(prev_kept) / budget_compute - 1.0
    return min(max(e, clip[0]), clip[1])


def penalty(lam: float, t: float, T: float, prev_kept: int | Tensor, budget_compute: float,
            clip: tuple[float, float] = E_CLIP) -> float:
    """Dynamic penalty ``lambda_t = lambda^(1 - e(t))`` (Sec. 4.5, eq. 12).

    Needs ``lam >= 0``. ``0^0`` is 1 (the limit of ``lambda^0``): at ``e(t) = 1`` the
    penalty is 1 whatever ``lambda``.
    """
    if lam < 0:
        raise InputError(f"lambda must be non-negative, got {lam}")
    return float(lam) ** (1.0 - penalty_error(t, T, prev_kept, budget_compute, clip))


def greedy_value(samples: Tensor, mask: Tensor, budget_final: int) -> Tensor:
    """``rho_T(m, B_s)`` for every sample: the sum of the ``B_s`` largest positive
    saliencies among the units of ``mask``. ``samples`` (n, U), ``mask`` (U,) bool;
    returns (n,)."""
    kept = samples[:, mask].clamp_min(0)
    k = min(budget_final, kept.shape[1])
    return kept.topk(k, dim=1).values.sum(1) if k > 0 else samples.new_zeros(samples.shape[0])


def utility(samples: Tensor, unit: int, mask: Tensor, budget_final: int) -> float:
    """``Delta(a, m_t)`` of eq. 7 by Monte-Carlo over ``samples`` (n, U) of ``p(s_T | s_1:t)``,
    each scored by the greedy top-``B_s`` selection ``greedy_value``. Needs
    ``mask[unit]`` False. Guarantees a value ``>= 0``."""
    with_unit = mask.clone()
    with_unit[unit] = True
    gain = greedy_value(samples, with_unit, budget_final) - greedy_value(samples, mask, budget_final)
    return float(gain.mean())


class _TopK:
    """Per-sample ``B_s`` largest positive saliencies of the units kept so far (zeros
    fill empty slots), so that ``Delta(a, m) = E[max(s_a - A_m, 0)]`` with ``A_m`` the
    smallest slot (App. C, eq. C3), updated in ``O(n B_s)`` per added unit."""

    def __init__(self, samples: Tensor, kept: Tensor, budget_final: int) -> None:
        values = torch.cat([samples[:, kept].clamp_min(0),
                            samples.new_zeros(samples.shape[0], budget_final)], dim=1)
        self.top = values.topk(budget_final, dim=1).values

    def utility(self, s: Tensor) -> float:
        if self.top.shape[1] == 0:
            return 0.0
        return float((s - self.top.min(1).values).clamp_min(0).mean())

    def add(self, s: Tensor) -> None:
        if self.top.shape[1] == 0:
            return
        low, where = self.top.min(1)
        rows = torch.nonzero(s > low).squeeze(1)
        self.top[rows, where[rows]] = s[rows]


def _check(mean: Tensor, samples: Tensor, budget_final: int, t: float, T: float,
           prev_kept: int | Tensor) -> Tensor:
    """Validates the inputs of ``decide``; returns the candidate mask ``m_{t-1}``."""
    if mean.dim() != 1 or samples.dim() != 2 or samples.shape[1] != mean.shape[0]:
        raise InputError(f"need mean (U,) and samples (n, U), got {tuple(mean.shape)} and {tuple(samples.shape)}")
    if budget_final < 0 or not t < T:
        raise InputError(f"need budget_final >= 0 and t < T, got {budget_final}, t={t}, T={T}")
    if isinstance(prev_kept, Tensor):
        if prev_kept.shape != mean.shape:
            raise InputError("prev_kept as a mask must have the shape of mean")
        return prev_kept.bool()
    return torch.ones_like(mean, dtype=torch.bool)


def decide(mean: Tensor, samples: Tensor, *, budget_final: int, budget_compute: float, lam: float,
           t: float, T: float, prev_kept: int | Tensor, clip: tuple[float, float] = E_CLIP,
           penalty_horizon: float | None = None) -> Tensor:
    """One BEP pruning decision (Algorithm 2, lines 10-20, with the hard floor of Sec. 4.3).

    Needs: ``mean`` (U,) = ``mu_T|1:t``; ``samples`` (n, U) from ``p(s_T | s_1:t)`` in the
    same units; ``prev_kept`` = ``m_{t-1}``, either a bool mask (U,) (units outside it
    stay pruned: ``m_t <= m_{t-1}``) or the count ``||m_{t-1}||_0`` when every one of
    the U units is still alive. Units are visited in descending ``mean`` (ties by
    index); unit ``a`` is kept if ``||m_t||_0 < B_s`` (hard floor), else if
    ``B_{t,c} - (T - t)||m_t||_0 > 0`` (still affordable), else if ``Delta(a, m_t) >
    lambda_t (T - t)`` with ``lambda_t`` evaluated at the candidate ``||m_t v e_a||_0``;
    the first unit failing all three ends the loop. ``penalty_horizon`` replaces ``T - t``
    in that penalty only (the pass gives ``(T - t) / T``, ``BEP.penalty_time``); the
    affordability test always counts iterations. ``Delta`` is in the units of
    ``samples``: the pass feeds saliency normalised per group (``passes/bep.py``).

    Guarantees: a bool mask ``m_t`` (U,), ``m_t <= m_{t-1}``, with at least
    ``min(B_s, ||m_{t-1}||_0)`` units; the kept units are the top of the order by mean.
    """
    alive = _check(mean, samples, budget_final, t, T, prev_kept)
    horizon = T - t
    scale = horizon if penalty_horizon is None else float(penalty_horizon)
    order = [int(a) for a in torch.argsort(-mean, stable=True) if alive[a]]
    keep = torch.zeros_like(alive)
    top: _TopK | None = None
    for count, a in enumerate(order):
        if count < budget_final or budget_compute - horizon * count > 0:
            keep[a] = True
            continue
        if top is None:
            top = _TopK(samples, keep, budget_final)
        s = samples[:, a]
        if top.utility(s) > penalty(lam, t, T, count + 1, budget_compute, clip) * scale:
            keep[a] = True
            top.add(s)
        else:
            break
    return keep
