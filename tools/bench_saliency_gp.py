#!/usr/bin/env python
"""Benchmark of BEP's saliency MOGP (``fxprune.passes.bep.saliency_gp.SaliencyGP``) on CPU.

    OMP_NUM_THREADS=1 python tools/bench_saliency_gp.py                 # U in 64,256,512; T in 20,100
    OMP_NUM_THREADS=2 python tools/bench_saliency_gp.py --threads 2 --units 512,2048 --times 100

For every group size U and number of time points T it builds U synthetic saliency curves
(random non-negative mixtures of 4 exponential decays plus an asymptote and 5 % noise,
measured at T equally spaced times), then times, after one untimed warm-up run:

* ``fit``: construction (App. G.3 preprocessing) + ``fit(max_iter=--iters)`` by L-BFGS from
  the data-driven start (a cold start: the worst case of a pruning step);
* ``predict``: ``predict(t_final)`` of ``s_T`` at twice the last observed time;
* ``sample``: ``sample(t_final, --samples)``, and ``decide``: one ``bep_decision.decide``
  on those samples (half of the units as the sparsity budget).

This is a benchmark, not a test: it prints one row per (U, T) and asserts nothing.
"""
from __future__ import annotations

import argparse
import time

import torch

from fxprune.passes.bep.decision import decide
from fxprune.passes.bep.saliency_gp import SaliencyGP


def curves(U: int, T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Times (T,) and saliency (U, T): mixtures of 4 latent exponential decays + noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(1, 40, T, dtype=torch.float64)
    rates = torch.tensor([2.0, 5.0, 10.0, 30.0], dtype=torch.float64)
    mix = torch.rand(U, 4, generator=g, dtype=torch.float64)
    Y = 0.2 * torch.rand(U, 1, generator=g, dtype=torch.float64) + mix @ torch.exp(-t[None] / rates[:, None])
    Y = Y + 0.05 * Y.mean() * torch.randn(U, T, generator=g, dtype=torch.float64)
    return t, 1e-3 * Y.clamp_min(0)


def run(U: int, T: int, args: argparse.Namespace) -> dict[str, float]:
    t, Y = curves(U, T)
    t_final = 2 * float(t[-1])
    start = time.perf_counter()
    model = SaliencyGP(t, Y, num_latents=min(args.latents, U))
    fit = model.fit(max_iter=args.iters)
    fitted = time.perf_counter()
    mean, _ = model.predict(t_final)
    predicted = time.perf_counter()
    samples = model.sample(t_final, args.samples, generator=torch.Generator().manual_seed(0))
    sampled = time.perf_counter()
    mask = decide(mean, samples, budget_final=U // 2, budget_compute=(T // 2) * U * 0.75,
                  lam=1e-4, t=T // 2, T=T, prev_kept=U)
    decided = time.perf_counter()
    return dict(fit=fitted - start, predict=predicted - fitted, sample=sampled - predicted,
                decide=decided - sampled, iterations=fit.iterations, evaluations=fit.evaluations,
                nll=fit.nll, kept=int(mask.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", default="64,256,512", help="group sizes U (default 64,256,512)")
    parser.add_argument("--times", default="20,100", help="time points T (default 20,100)")
    parser.add_argument("--latents", type=int, default=12, help="latent GPs Q (default 12, the paper's conv setting)")
    parser.add_argument("--iters", type=int, default=50, help="L-BFGS iterations (default 50)")
    parser.add_argument("--samples", type=int, default=10000, help="samples of s_T for the decision (default 10000)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run(32, 10, args)                                                # warm-up
    print(f"torch {torch.__version__}, {args.threads} thread(s), Q={args.latents}, "
          f"{args.iters} L-BFGS iterations max, {args.samples} samples")
    print(f"{'U':>5} {'T':>4} | {'fit s':>7} {'iters':>5} {'evals':>5} {'nll/obs':>8} | "
          f"{'predict s':>9} {'fit+pred s':>10} | {'sample s':>8} {'decide s':>8} {'kept':>5}")
    for U in (int(u) for u in args.units.split(",")):
        for T in (int(t) for t in args.times.split(",")):
            r = run(U, T, args)
            print(f"{U:>5} {T:>4} | {r['fit']:>7.2f} {r['iterations']:>5} {r['evaluations']:>5} {r['nll']:>8.3f} | "
                  f"{r['predict']:>9.3f} {r['fit'] + r['predict']:>10.2f} | {r['sample']:>8.3f} {r['decide']:>8.3f} "
                  f"{r['kept']:>5}", flush=True)


if __name__ == "__main__":
    main()
