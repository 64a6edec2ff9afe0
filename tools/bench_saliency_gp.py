#!/usr/bin/env python
"""Benchmark of BEP's saliency MOGP (``fxprune.passes.bep.saliency_gp.SaliencyGP``) on CPU.

    OMP_NUM_THREADS=1 python tools/bench_saliency_gp.py                 # U in 64,256,512; T in 20,100
    OMP_NUM_THREADS=2 python tools/bench_saliency_gp.py --threads 2 --units 512,2048 --times 100
    python tools/bench_saliency_gp.py trace       # the bundled saliency trace (fxprune/assets)
    python tools/bench_saliency_gp.py calibrate   # coverage + held-out likelihood on that trace

``trace`` and ``calibrate``: see ``saliency_trace`` and ``calibrate`` below. Timing (no
sub-command) is the original benchmark:

For every group size U and number of time points T it builds U synthetic saliency curves
(random non-negative mixtures of 4 exponential decays plus an asymptote and 5 % noise,
measured at T equally spaced times), then times, after one untimed warm-up run:

* ``fit``: construction (App. G.3 preprocessing) + ``fit(max_iter=--iters)`` from the
  data-driven start (a cold start: the worst case of a pruning step) of BEP's LMC model
  (``--model lmc``, Adam on the ELBO) or the previous exact ICM model (``--model icm``, L-BFGS);
* ``predict``: ``predict(t_final)`` of ``s_T`` at twice the last observed time;
* ``sample``: ``sample(t_final, --samples)``, and ``decide``: one ``bep_decision.decide``
  on those samples (half of the units as the sparsity budget).

This is a benchmark, not a test: it prints one row per (U, T) and asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fxprune.passes.bep.decision import decide  # noqa: E402
from fxprune.passes.bep.saliency_gp import SaliencyGP  # noqa: E402


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
    if args.model == "lmc":
        from fxprune.passes.bep.mogp import SaliencyMOGP

        model = SaliencyMOGP(t, Y, min(args.latents, U), time_scale=t_final, inducing=args.inducing)
    else:
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
                decide=decided - sampled, iterations=fit.iterations, evaluations=getattr(fit, "evaluations", fit.iterations),
                nll=fit.nll, kept=int(mask.sum()))


ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "fxprune" / "assets" / "bep_saliency_trace.npz"


def saliency_trace(out: Path = TRACE, epochs: int = 10, batch: int = 20, every: int = 2, samples: int = 100,
                   width: int = 10, seed: int = 0) -> dict[str, object]:
    """A real saliency trace of the dense seed period: ``lenet5`` trained on the first 400
    bundled Fashion-MNIST images (SGD lr 0.05, momentum 0.9, batch ``batch``, ``epochs``),
    BEP's own measurement (eq. A1 per sample on the first ``samples`` images, every
    ``every`` iterations, ``predictor="last"`` and a seed period covering the whole run, so
    nothing is pruned), bucketed by ``width`` iterations. Saved as ``out`` (npz: ``times``,
    one ``Y:<group>`` (U, buckets) per group, ``meta`` JSON)."""
    import fxprune
    import fxprune.models as zoo
    from fxprune.atomic import atomic_write
    from fxprune.training.data import bundled

    torch.manual_seed(seed)
    X, Yl = bundled().tensors
    data = [(X[i:i + batch], Yl[i:i + batch]) for i in range(0, 400, batch)]
    T = epochs * len(data)
    model = zoo.get("lenet5", in_channels=1)
    prepared = fxprune.prepare(model, X[:2], method="bep", data=data, total_steps=T + 1, seed_steps=T, step=T,
                               measure_every=every, bucket_width=width, instrument_samples=samples,
                               predictor="last", progress=False)
    net = prepared.module
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        for x, y in data:
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            net, opt = prepared.step(opt)
    trace = prepared.trace()
    times = next(iter(trace["groups"].values()))["times"]
    arrays = {f"Y:{g}": np.asarray(v["values"], dtype=np.float64) for g, v in trace["groups"].items()}
    meta = {"model": "lenet5", "data": "bundled Fashion-MNIST, images 0..399", "epochs": epochs, "batch": batch,
            "iterations": T, "measure_every": every, "instrument_samples": samples, "bucket_width": width,
            "seed": seed, "saliency": "eq. A1 per sample", "command": "python tools/bench_saliency_gp.py trace"}
    atomic_write(out, lambda p: np.savez_compressed(open(p, "wb"), times=np.asarray(times), meta=json.dumps(meta),
                                                    **arrays))
    return meta


def load_trace(path: Path = TRACE) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    """``(times (K,), {group: (U, K)}, meta)`` of a trace saved by ``saliency_trace``."""
    with np.load(path) as z:
        groups = {k[2:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("Y:")}
        return torch.from_numpy(z["times"]), groups, json.loads(str(z["meta"]))


def held_out(model, times: torch.Tensor, Y: torch.Tensor) -> dict[str, float]:
    """Coverage of the 95% band (noise included) and mean log-density per value of ``Y`` (U, S),
    both in model space: held-out data clipped and scaled with the training data's map (App. G.3)."""
    mean, std = model.predict_path(times, observation_noise=True)
    pre = model.preprocess
    z_mean, z_std = pre.offset[:, None] + pre.slope[:, None] * mean, std * pre.slope.abs()[:, None]
    inside = ((pre.transform(Y) - z_mean).abs() <= 1.96 * z_std)
    try:
        density = model.log_prob(times, Y) / Y.numel()
    except ValueError:  # a covariance that is not numerically positive definite
        density = float("nan")
    return {"inside": int(inside.sum()), "total": int(inside.numel()),
            "coverage": float(inside.double().mean()), "log_density": density}


MODELS = ("lmc_exponential+constant+drift", "lmc_exponential+constant", "lmc_exponential", "icm_constant_mean")


def fit_model(name: str, times: torch.Tensor, Y: torch.Tensor, group: str, T: float, iters: int = 200,
              inducing: int = 60):
    """One of ``MODELS`` fitted on ``(times, Y)``: BEP's LMC (zero mean, Q per layer type: 12
    conv, 4 dense) with either kernel, or the previous ICM (learned constant mean per unit,
    one kernel shared by Q=4 latents, exact, L-BFGS). ``T``: the end of training (BEP's time scale)."""
    from fxprune.passes.bep.mogp import SaliencyMOGP
    from fxprune.passes.bep.saliency_gp import SaliencyGP

    if name.startswith("lmc_"):
        q = min(12 if group.startswith("conv") else 4, Y.shape[0])
        model = SaliencyMOGP(times, Y, q, time_scale=T, inducing=inducing,
                             kernel=name[4:])
        model.fit(max_iter=iters)
        return model
    model = SaliencyGP(times, Y, num_latents=min(4, Y.shape[0]))
    model.fit(max_iter=50)
    return model


def calibrate(fit_buckets: int = 12, next_buckets: int = 4, iters: int = 150, inducing: int = 20,
              path: Path = TRACE) -> list[dict[str, object]]:
    """Per group of the bundled trace and model of ``MODELS``: fit on the first ``fit_buckets``
    buckets (the seed period), score the next ``next_buckets`` ("next") and every later
    bucket ("all")."""
    times, groups, meta = load_trace(path)
    k = fit_buckets
    rows = []
    for gid, Y in groups.items():
        for name in MODELS:
            start = time.perf_counter()
            model = fit_model(name, times[:k], Y[:, :k], gid, float(meta["iterations"]), iters, inducing)
            row = {"group": gid, "units": Y.shape[0], "model": name, "fit_buckets": k, "next_buckets": next_buckets,
                   "later_buckets": len(times) - k, "seconds": time.perf_counter() - start}
            for span, end in (("next", k + next_buckets), ("all", len(times))):
                row[span] = held_out(model, times[k:end], Y[:, k:end])
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def cmd_calibrate(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    rows = calibrate(args.fit_buckets, args.next_buckets, args.iters, args.inducing)
    from fxprune.atomic import atomic_write

    command = "python tools/bench_saliency_gp.py " + shlex.join(sys.argv[1:])
    _, _, meta = load_trace()
    out = ROOT / "tools" / "results" / "saliency_gp_calibration"
    atomic_write(out.with_suffix(".json"), lambda p: Path(p).write_text(
        json.dumps({"command": command, "trace": meta, "rows": rows}, indent=1)))
    r0 = rows[0]
    lines = ["# Calibration of BEP's saliency MOGP on a real trace", "",
             f"Command: `{command}` (trace: `{meta['command']}`: {meta['model']}, {meta['data']}, {meta['iterations']} "
             f"dense iterations, {meta['saliency']} on {meta['instrument_samples']} samples every "
             f"{meta['measure_every']} iterations, buckets of {meta['bucket_width']}). Fit on the first "
             f"{r0['fit_buckets']} buckets (the seed period), scored on the next {r0['next_buckets']} buckets "
             f"(\"next\") and on all {r0['later_buckets']} later ones (\"all\"): held-out bucket measurements inside "
             f"the 95% predictive band (noise included) and mean log-density per value, both in model space "
             f"(App. G.3's map of the fit data; higher is better). LMC: BEP's model, "
             f"{args.iters} Adam steps, {args.inducing} inducing points.", "",
             "| group | units | model | next: inside 95% | next: log-dens. | all: inside 95% | all: log-dens. | fit s |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(h: dict) -> str:
        return f"{h['inside']}/{h['total']} ({h['coverage']:.1%})"

    for r in rows:
        lines.append(f"| {r['group']} | {r['units']} | {r['model']} | {cell(r['next'])} | {r['next']['log_density']:.3f} | "
                     f"{cell(r['all'])} | {r['all']['log_density']:.3f} | {r['seconds']:.1f} |")
    for name in MODELS:
        sel = [r for r in rows if r["model"] == name]
        tot = {span: {"inside": sum(r[span]["inside"] for r in sel), "total": sum(r[span]["total"] for r in sel)}
               for span in ("next", "all")}
        for h in tot.values():
            h["coverage"] = h["inside"] / h["total"]
        lines.append(f"| **all groups** | {sum(r['units'] for r in sel)} | {name} | {cell(tot['next'])} | "
                     f"{np.nanmean([r['next']['log_density'] for r in sel]):.3f} | {cell(tot['all'])} | "
                     f"{np.nanmean([r['all']['log_density'] for r in sel]):.3f} | |")
    atomic_write(out.with_suffix(".md"), lambda p: Path(p).write_text("\n".join(lines) + "\n"))
    print("\n".join(lines))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("trace", "calibrate"):
        ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        ap.add_argument("command")
        ap.add_argument("--fit-buckets", type=int, default=12)
        ap.add_argument("--next-buckets", type=int, default=4)
        ap.add_argument("--iters", type=int, default=150)
        ap.add_argument("--inducing", type=int, default=20)
        ap.add_argument("--threads", type=int, default=1)
        args = ap.parse_args()
        if args.command == "trace":
            torch.set_num_threads(args.threads)
            print(json.dumps(saliency_trace()))
        else:
            cmd_calibrate(args)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", default="64,256,512", help="group sizes U (default 64,256,512)")
    parser.add_argument("--times", default="20,100", help="time points T (default 20,100)")
    parser.add_argument("--latents", type=int, default=12, help="latent GPs Q (default 12, the paper's conv setting)")
    parser.add_argument("--model", choices=["lmc", "icm"], default="lmc",
                        help="lmc: BEP's SaliencyMOGP (Adam steps); icm: the previous exact ICM model (L-BFGS)")
    parser.add_argument("--inducing", type=int, default=60, help="lmc: inducing points per latent (default 60)")
    parser.add_argument("--iters", type=int, default=50, help="L-BFGS iterations or Adam steps (default 50)")
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
