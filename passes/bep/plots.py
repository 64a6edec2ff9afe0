"""Plots of a BEP run (issue #7), from ``BEPPrepared.trace()`` (a JSON-ready dict).

* ``plot_saliency``: the paper's Fig. 3 -- one group's saliency series, the predictive
  mean and 95% band that the first decision's multi-output GP forecast from there to the
  end of training, and the later observations of the units that survived.
* ``plot_units``: units per group over training, one panel per run.

Needs matplotlib (``pip install "fxprune[plot]"``); without it ``MissingDependency`` says
so. Files are written atomically (``fxprune.atomic.atomic_write``).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch

from fxprune.errors import InputError
from fxprune.atomic import atomic_write


class MissingDependency(InputError):
    """An optional dependency (matplotlib) is not installed."""


def pyplot():
    """matplotlib's pyplot with the Agg backend, or ``MissingDependency``."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependency('the BEP plots need matplotlib: pip install "fxprune[plot]"') from None
    return plt


def _save(fig: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def forecast(trace: Mapping[str, Any], group: str) -> dict[str, torch.Tensor]:
    """The forecast of ``group``'s saliency that the first decision's MOGP made (stored by
    ``BEPPrepared`` in ``trace["forecasts"]``: the model the decision used, not a refit),
    from its last observed bucket to ``T``: ``times``, ``values`` (U, buckets) over the
    original units, ``seen`` (bool per bucket), ``grid``, ``mean`` and ``std`` (U, points;
    NaN for units not alive at the decision) of a new (noisy) bucket measurement,
    comparable with the later observations."""
    if not trace.get("decisions"):
        raise InputError("the trace holds no BEP decision (nothing was pruned by the saliency model)")
    if group not in trace["groups"]:
        raise InputError(f"group {group!r} has no saliency series; groups: {', '.join(trace['groups'])}")
    stored = (trace.get("forecasts") or {}).get(group)
    if not stored or not stored.get("path"):
        raise InputError(f"group {group!r} has no stored MOGP forecast (predictor='last', or no decision fitted it)")
    times = torch.tensor(trace["groups"][group]["times"], dtype=torch.float64)
    values = torch.tensor(trace["groups"][group]["values"], dtype=torch.float64)
    seen = (times <= float(stored["t"])) & torch.isfinite(values).all(0)
    path = stored["path"]
    grid = torch.tensor(path["grid"], dtype=torch.float64)
    mean = torch.full((values.shape[0], len(grid)), float("nan"), dtype=torch.float64)
    std = mean.clone()
    units = torch.tensor(stored["units"], dtype=torch.long)
    mean[units] = torch.tensor(path["mean"], dtype=torch.float64)
    std[units] = torch.tensor(path["std"], dtype=torch.float64)
    return {"times": times, "values": values, "seen": seen, "grid": grid, "mean": mean, "std": std}


def coverage(trace: Mapping[str, Any], group: str) -> tuple[int, int]:
    """``(inside, survivors)``: how many units that survived to the end have their last
    measured bucket inside the 95% band (observation noise included) that the first
    decision's MOGP predicted for ``T``."""
    f = forecast(trace, group)
    last = f["values"][:, -1]
    alive = torch.isfinite(last) & torch.isfinite(f["mean"][:, -1])
    inside = (last - f["mean"][:, -1]).abs() <= 1.96 * f["std"][:, -1]
    return int((inside & alive).sum()), int(alive.sum())


def plot_saliency(trace: Mapping[str, Any], path: str | os.PathLike, group: str | None = None,
                  units_shown: int = 6) -> str:
    """Fig. 3 for ``group`` (default: the largest group of at most 64 units, whose joint
    prediction stays cheap): half the units shown survived (their later observations are
    dots; a run with ``measure_to_end=True`` has them), half were pruned at the first
    decision. Returns the group plotted."""
    plt = pyplot()
    sizes = {g: len(v["values"]) for g, v in trace["groups"].items()}
    group = group or max(sizes, key=lambda g: (sizes[g] <= 64, sizes[g] if sizes[g] <= 64 else -sizes[g]))
    f = forecast(trace, group)
    values, seen = f["values"], f["seen"]
    survivors = [u for u in range(values.shape[0]) if torch.isfinite(values[u, -1])]
    pruned = [u for u in range(values.shape[0]) if u not in survivors]
    half = min(len(survivors), units_shown // 2)
    shown = survivors[:half] + pruned[:units_shown - half]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for u in shown:
        line, = ax.plot(f["times"][seen], values[u, seen], lw=1.2)
        color = line.get_color()
        later = ~seen & torch.isfinite(values[u])
        ax.plot(f["times"][later], values[u, later], "o", ms=3, color=color)
        ax.plot(f["grid"], f["mean"][u], "--", color=color)
        ax.fill_between(f["grid"], f["mean"][u] - 1.96 * f["std"][u], f["mean"][u] + 1.96 * f["std"][u],
                        color=color, alpha=0.15)
    t1 = trace["decisions"][0]
    ax.axvline(t1, color="k", ls=":", lw=0.8)
    ax.set(xlabel="iteration", ylabel="Taylor saliency")
    ax.set_title(f"group {group}: MOGP fitted up to the first decision (t={t1})\nsolid: data it saw; dashed and band: "
                 f"predictive mean and 95% of a measurement; dots: later observations of surviving units", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return group


def plot_units(runs: Sequence[tuple[str, Mapping[str, Any]]], path: str | os.PathLike, title: str = "") -> None:
    """Units per group (log scale) over training iterations, one panel per ``(label, trace)``;
    a log that starts at the first decision gets the trace's ``initial_units`` at t = 0."""
    if not runs:
        raise InputError("plot_units needs at least one run")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs), 3.6), sharey=True, squeeze=False)
    for ax, (label, trace) in zip(axes[0], runs):
        for gid in trace["final_units"]:
            pts = [(e["t"], e["units"][gid]) for e in trace["log"] if gid in e.get("units", {})]
            if (not pts or pts[0][0] > 0) and "initial_units" in trace:
                pts.insert(0, (0, trace["initial_units"][gid]))
            ax.step(*zip(*pts), where="post", label=gid)
        ax.set(title=label, xlabel="iteration", yscale="log")
    axes[0][0].set_ylabel("units")
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
