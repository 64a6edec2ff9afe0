"""What ``BEPPrepared`` does inside a training step: count the training FLOPs, measure
saliency on the instrumentation batches, forecast it (MOGP, or the latest bucket),
decide the units to keep, and rewrite the model with its optimizer state sliced.

``BEPSteps`` is a mixin of ``BEPPrepared`` (``bep.py``), which owns the state these
methods read and write (``module``, ``cur_graph``, ``alive``, ``measurements``, ``log`` ...).
Every rewrite is computed first and committed last: a failure leaves all as it was.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from tqdm.auto import tqdm

from fxprune.analysis import analyze
from fxprune.distributed import all_reduce_sums, broadcast_tensor
from fxprune.errors import InputError, PlanError
from fxprune.mask import mask
from fxprune.rewrite import rewrite
from fxprune.state import state_of
from fxprune.training.optim_state import apply_optimizer_state, param_cuts, sliced_optimizer_state

from ..grasp import grasp_scores
from .decision import decide, penalty
from .mogp import SaliencyMOGP
from .options import PAPER_LATENTS
from .saliency import accumulate_saliency, device_of, finish_saliency, inputs_for, per_sample_gates
from .saliency_gp import Preprocess, bucket

#: saliency is handed to the decision in units where the group's largest clipping bound
#: (1.3 x the 95th percentile of its most salient unit, App. G.3) is 10: the scale the
#: MOGP works in, so that ``lam`` means the same on every model, loss and group.
DECISION_SCALE: float = 10.0


def _preprocess_of(state: Mapping[str, torch.Tensor]) -> Preprocess:
    """The App. G.3 map stored in a ``SaliencyMOGP`` state (a warm start keeps it)."""
    return Preprocess(state["preprocess_upper"], state["preprocess_flipped"])


def _forecast_path(gp: SaliencyMOGP, times: torch.Tensor, T: float, points: int = 24) -> dict[str, Any]:
    """The decision's own forecast from its last observed bucket to ``T`` (a new bucket's
    mean and sd, noise included), JSON-ready: what the Fig. 3 coverage check reads."""
    grid = torch.linspace(float(times[-1]), T, points, dtype=torch.float64)
    mean, std = gp.predict_path(grid, observation_noise=True)
    return {"grid": grid.tolist(), "mean": mean.tolist(), "std": std.tolist()}


class Untracked(PlanError):
    """Groups that the analysis of the rewritten model no longer finds prunable at their new
    count (so BEP could not prune them further to ``B_s``)."""

    def __init__(self, groups: list[str]) -> None:
        super().__init__(f"bep: group(s) {', '.join(groups)} cannot be followed after the rewrite")
        self.groups = groups


class BEPSteps:
    """Measurement, decision and rewrite steps of ``BEPPrepared`` (see module doc)."""

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
            gated = mask(self.module, self.cur_graph, full, learnable=True).to(device_of(self.module))
            self._gated = per_sample_gates(gated) if self.options.saliency == "per_sample" else gated
        return self._gated

    def _cur_ids(self) -> list[str]:
        ids = {g.id for g in self.cur_graph.prunable_groups}
        return [gid for gid in self.final if gid in ids]

    def _measure(self) -> None:
        """One saliency measurement (eq. A1 on the instrumentation subset) of every live unit."""
        start = time.perf_counter()
        gated = self._gated_module()
        gated.load_state_dict(self.module.state_dict(), strict=False)
        gated.eval()
        ids = self._cur_ids()
        sums, count = accumulate_saliency(gated, [self.cur_graph.group(g) for g in ids], self.instrument,
                                          self._loss_fn(), self.options.saliency)
        sums, count = all_reduce_sums(sums, count, "bep's instrumentation data")  # one process: unchanged
        values = finish_saliency(sums, count)
        gated.zero_grad(set_to_none=True)
        self.instrument_flops += 6.0 * self._macs * sum(x[0].shape[0] if x[0].dim() else 1 for x, _ in self.instrument)
        for gid in self.final:
            row = np.full(self.graph.group(gid).units, np.nan)
            if gid in values:
                value = values[gid].detach().cpu().numpy()
                if not np.isfinite(value).all():
                    raise InputError(f"bep: the saliency of group {gid} is not finite at iteration {self.t} "
                                     f"(the loss or gradients diverged); lower the learning rate")
                row[self.alive[gid]] = value
            self.measurements[gid].append(row)
        self.times.append(float(self.t))
        self.timings["measure"] += time.perf_counter() - start

    def _latents(self, gid: str, units: int) -> int:
        """Q for group ``gid``: the option, else the paper's per layer type (conv 12, dense 4)."""
        q = self.options.num_latents
        if q is None:
            group = self.graph.group(gid)
            params = dict(self.graph.gm.named_parameters())
            conv = any(s.role == "produce" and s.name in params and params[s.name].dim() > 2
                       for s in group.slices(range(group.units)))
            q = PAPER_LATENTS["conv" if conv else "dense"]
        return max(1, min(q, units))

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
        means: dict[str, torch.Tensor] = {}
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
            horizon = (self.T - self.t) / self.T if self.options.penalty_time == "fraction" else None
            keep = decide(mean * norm, samples * norm, budget_final=Bs, budget_compute=self.budget_compute[gid],
                          lam=self.options.lam, t=self.t, T=self.T, prev_kept=U, penalty_horizon=horizon)
            keep = broadcast_tensor(keep.to(torch.uint8)).bool()  # under torchrun: rank 0 decides for all
            # lambda_t of the first unit refused (or of one more unit when all were kept)
            entry["lambda_t"][gid] = penalty(self.options.lam, self.t, self.T, int(keep.sum()) + 1,
                                             self.budget_compute[gid])
            self.timings["decide"] += time.perf_counter() - start
            idx = torch.nonzero(keep).squeeze(1)
            means[gid] = mean
            self.predictions.append({"t": self.t, "group": gid, "units": self.alive[gid].tolist(),
                                     "mean": mean.tolist(), "std": cov.diagonal().clamp_min(0).sqrt().tolist(),
                                     "kept": self.alive[gid][idx.cpu().numpy()].tolist(),
                                     "path": self._paths.pop(gid, None)})
            if gid in self.gp_state:
                self.gp_state[gid] = SaliencyMOGP.select_units(self.gp_state[gid], idx)
            if len(idx) < U:
                keep_local[gid] = idx.cpu().numpy()
        self._prune_followable(keep_local, means, optimizer, entry)
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
        Q = self._latents(gid, Y.shape[0])
        init = self.gp_state.get(gid)
        iters = self.options.gp_iters if init is None else max(1, self.options.gp_iters // 3)
        gp = SaliencyMOGP(times, Y, Q, time_scale=float(self.T), inducing=self.options.inducing,
                          preprocess=None if init is None else _preprocess_of(init), kernel=self.options.kernel)
        try:
            gp.fit(max_iter=iters, init=init)
        except (RuntimeError, ValueError, KeyError):
            gp = SaliencyMOGP(times, Y, Q, time_scale=float(self.T), inducing=self.options.inducing,
                              kernel=self.options.kernel)
            gp.fit(max_iter=self.options.gp_iters)
        mean, cov = gp.predict(float(self.T))
        samples = gp.sample(float(self.T), self.options.samples, generator=gen)
        self.gp_state[gid] = gp.state_dict()
        self._paths[gid] = _forecast_path(gp, times, float(self.T))
        return mean, cov, samples, float(gp.preprocess.upper.max())

    def _prune_followable(self, keep_local: dict[str, np.ndarray], means: Mapping[str, torch.Tensor], optimizer,
                          entry: dict[str, Any]) -> None:
        """``_prune``; a group that the analysis could no longer follow at its decided count (a
        rule that stops seeing it as prunable there) is cut to its final count ``B_s`` by the
        decision's predicted mean instead, and named in ``entry["cut_to_final"]``."""
        try:
            self._prune(keep_local, optimizer)
        except Untracked as exc:
            for gid in exc.groups:
                score = means[gid].cpu().numpy()
                keep_local[gid] = np.sort(np.lexsort((np.arange(len(score)), -score))[:self.final[gid]])
                self.gp_state.pop(gid, None)
            entry["cut_to_final"] = sorted(exc.groups)
            self._prune(keep_local, optimizer)

    def _final_prune(self, optimizer) -> None:
        keep_local = {}
        for gid in self._cur_ids():
            U, Bs = len(self.alive[gid]), self.final[gid]
            if U <= Bs:
                continue
            if self.times:
                _, Y = self._series(gid)
                score = Y[:, -1].cpu().numpy()
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
        new_graph = analyze(new, inputs_for(new, self.example_inputs))
        state_of(new_graph.gm).channel_graph = new_graph
        opt_update = sliced_optimizer_state(optimizer, old, new, cuts) if optimizer is not None else None
        alive = dict(self.alive)
        for gid, idx in keep_local.items():
            alive[gid] = self.alive[gid][idx]
        lost = [gid for gid, a in alive.items() if len(a) > self.final[gid]
                and not any(g.id == gid and g.units == len(a) for g in new_graph.prunable_groups)]
        if lost:
            raise Untracked(lost)
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
        device = device_of(self.module)
        batches = [(tuple(t.to(device) for t in x), y.to(device) if isinstance(y, torch.Tensor) else y)
                   for x, y in self.instrument]
        scores = grasp_scores(self.module, self.cur_graph, groups, batches, self._loss_fn())
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
