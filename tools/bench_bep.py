"""Benchmark BEP (issue #7): BEP at several lambdas, BEP-LITE and pruning at init
(Random / SNIP / GraSP) on the BEP CNN / Fashion-MNIST at MACs budgets ~91/96/99% pruned.

Every run trains from the same seeded initialisation for ``--epochs`` and reports test
accuracy, MACs/params after, training FLOPs (6 x forward MACs per sample, summed over
the iterations actually run, vs the dense network), wall time and, for BEP, the MOGP +
decision time as a share of training wall time. Results go to ``--out`` (JSON lines +
a markdown table); ``--plot`` draws saliency curves with the MOGP mean and 95% band
against later observations and the units per group over training (matplotlib optional).

Full run (slow on a CPU; data from ``fxprune.data``, offline ``--bundled`` for a smoke test)::

    python tools/bench_bep.py --model bep_cnn --budgets 0.09,0.04,0.01 --lams 1e-2,1e-4,1e-7 \
        --methods bep,bep_lite,random,snip,grasp --seeds 0,1,2 --epochs 20 --batch-size 32 \
        --out tools/results/bep --plot

Smoke: ``python tools/bench_bep.py --bundled --epochs 2 --budgets 0.2 --lams 1e-4 --seeds 0 --methods bep,snip``
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxprune  # noqa: E402
import fxprune.data  # noqa: E402
import fxprune.passes  # noqa: E402
import fxprune.models as zoo  # noqa: E402
from fxprune.passes.bep import final_counts  # noqa: E402
from fxprune.passes.grasp import grasp_scores  # noqa: E402
from fxprune.passes.snip import snip_scores  # noqa: E402
from fxprune.report import count_macs, count_params  # noqa: E402
from fxprune.training import TrainConfig, evaluate, train_loop  # noqa: E402


def data(args):
    if args.bundled:
        X, Y = fxprune.data.bundled().tensors
        n = len(X) * 4 // 5
        train = [(X[i:i + args.batch_size], Y[i:i + args.batch_size]) for i in range(0, n, args.batch_size)]
        test = [(X[n:], Y[n:])]
        return train, test
    import fxprune.data as fd
    train, _, test = fd.loaders(args.batch_size, seed=args.data_seed, train_subset=args.train_subset)
    return train, test


def pai(method, model, x, train, counts, seed, loss_fn=None):
    """Prune at init to ``counts`` units per group by random / snip / grasp scores."""
    graph = fxprune.analyze(model, x)
    groups = [graph.group(g) for g in counts]
    batches = [b for _, b in zip(range(4), train)]
    if method == "random":
        rng = np.random.default_rng(seed)
        scores = {g.id: rng.random(g.units) for g in groups}
    elif method == "snip":
        scores = snip_scores(model, graph, groups, batches, loss_fn)
    else:
        scores = grasp_scores(model, graph, groups, batches, loss_fn)
    plan = {g.id: sorted(np.argsort(-scores[g.id], kind="stable")[:counts[g.id]].tolist()) for g in groups}
    return fxprune.rewrite(model, graph, plan)


def run_one(args, method, budget, lam, seed, train, test):
    torch.manual_seed(seed)
    model = zoo.get(args.model, in_channels=1, num_classes=10)
    x = next(iter(train))[0][:2]
    cfg = TrainConfig(train, epochs=args.epochs, lr=args.lr, optimizer=args.optimizer,
                      progress=args.progress, max_steps_per_epoch=args.max_steps)
    dense_macs = count_macs(fxprune.trace(model, (x,)), (x,)) / 2
    start = time.perf_counter()
    rec = {"model": args.model, "method": method, "macs_budget": budget, "seed": seed, "epochs": args.epochs}
    if method in ("bep", "bep_lite"):
        prepared = fxprune.prepare(model, x, method="bep", target_macs_ratio=budget, lam=lam,
                                   lite=method == "bep_lite", step=args.step, seed_steps=args.seed_steps,
                                   measure_every=args.measure_every, bucket_width=args.bucket_width,
                                   num_latents=args.num_latents, progress=args.progress, seed=seed)
        prepared.fit(cfg)
        result = prepared.finalize(validate=True)
        net = result.module
        rec.update(lam=lam, train_flops_ratio=prepared.flops_ratio(), overhead=prepared.overhead(),
                   seconds_mogp=prepared.timings["mogp"], seconds_decide=prepared.timings["decide"],
                   units=prepared.units(), log=prepared.log, predictions=prepared.predictions if args.plot else None,
                   measurements={"times": prepared.times,
                                 "values": {g: np.stack(v, 1).tolist() for g, v in prepared.measurements.items()}}
                   if args.plot else None)
    else:
        graph = fxprune.analyze(model, x)
        opts = fxprune.passes.METHODS["bep"](target_macs_ratio=budget)
        counts = final_counts(graph, opts, (x,))
        net = pai(method, model, x, train, counts, seed)
        hist = train_loop(net, cfg, phase=method)
        steps = sum(h["steps"] for h in hist)
        macs = count_macs(net, (x,)) / 2
        rec.update(train_flops_ratio=macs / dense_macs, units=counts, steps=steps)
    rec["seconds"] = time.perf_counter() - start
    net.eval()
    rec["test_acc"] = evaluate(net, test)
    rec["macs_ratio"] = count_macs(net, (x,)) / 2 / dense_macs
    rec["params"] = count_params(net)
    return rec


def plot(records, out: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots", file=sys.stderr)
        return
    for i, rec in enumerate(r for r in records if r.get("predictions")):
        times = np.asarray(rec["measurements"]["times"])
        for p in rec["predictions"][:4]:
            values = np.asarray(rec["measurements"]["values"][p["group"]])
            fig, ax = plt.subplots(figsize=(6, 4))
            for j, u in enumerate(p["units"][:6]):
                line, = ax.plot(times, values[u], lw=0.8)
                m, s = p["mean"][j], p["std"][j]
                ax.errorbar([rec["log"][-1]["t"]], [m], yerr=[1.96 * s], color=line.get_color(), capsize=3, fmt="o")
            ax.axvline(p["t"], color="k", ls=":")
            ax.set(title=f"{rec['method']} {p['group']} decision at t={p['t']}", xlabel="iteration", ylabel="saliency")
            fig.savefig(out / f"saliency_{i}_{p['group']}_{p['t']}.png", dpi=120)
            plt.close(fig)
        fig, ax = plt.subplots(figsize=(6, 4))
        for g in rec["units"]:
            pts = [(e["t"], e["units"][g]) for e in rec["log"]]
            ax.step(*zip(*pts), where="post", label=g)
        ax.set(title=f"{rec['method']} lambda={rec.get('lam')} budget={rec['macs_budget']}", xlabel="iteration",
               ylabel="units", yscale="log")
        ax.legend()
        fig.savefig(out / f"units_{i}.png", dpi=120)
        plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bep_cnn")
    ap.add_argument("--budgets", default="0.09,0.04,0.01", help="MACs kept ratios (0.09 = 91%% pruned)")
    ap.add_argument("--lams", default="1e-2,1e-4,1e-7")
    ap.add_argument("--methods", default="bep,bep_lite,random,snip,grasp")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--max-steps", type=int, default=None, help="batches per epoch cap")
    ap.add_argument("--train-subset", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--optimizer", default="sgd")
    ap.add_argument("--step", type=int, default=None)
    ap.add_argument("--seed-steps", type=int, default=None)
    ap.add_argument("--measure-every", type=int, default=5)
    ap.add_argument("--bucket-width", type=int, default=None)
    ap.add_argument("--num-latents", type=int, default=4)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--bundled", action="store_true", help="use the 500 bundled images (offline smoke test)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--plot", action="store_true")
    ap.add_argument("--out", default="tools/results/bep")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = data(args)
    records = []
    with open(out / "runs.jsonl", "w") as f:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for budget in [float(b) for b in args.budgets.split(",")]:
                for method in args.methods.split(","):
                    lams = [float(v) for v in args.lams.split(",")] if method == "bep" else [float(args.lams.split(",")[0])]
                    for lam in lams:
                        rec = run_one(args, method, budget, lam, seed, train, test)
                        records.append(rec)
                        slim = {k: v for k, v in rec.items() if k not in ("log", "predictions", "measurements")}
                        f.write(json.dumps(slim, default=float) + "\n")
                        f.flush()
                        print(f"{method:9s} budget {budget:.3f} lam {rec.get('lam', '-')!s:6s} seed {seed}: "
                              f"acc {rec['test_acc']:.4f} MACs {rec['macs_ratio']:.3f} "
                              f"train FLOPs {rec['train_flops_ratio']:.3f} of dense "
                              f"{'MOGP+decision %.1f%% of wall ' % (100 * rec['overhead']) if 'overhead' in rec else ''}"
                              f"({rec['seconds']:.1f}s)")
    rows = ["| method | MACs budget | lambda | seed | test acc | MACs after | train FLOPs / dense | MOGP+dec % | s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        ov = f"{100 * r['overhead']:.1f}" if "overhead" in r and not math.isnan(r["overhead"]) else "-"
        rows.append(f"| {r['method']} | {r['macs_budget']} | {r.get('lam', '-')} | {r['seed']} | {r['test_acc']:.4f} | "
                    f"{r['macs_ratio']:.3f} | {r['train_flops_ratio']:.3f} | {ov} | {r['seconds']:.1f} |")
    (out / "summary.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    if args.plot:
        plot(records, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
