#!/usr/bin/env python
"""BEP benchmark (issue #7): Bayesian Early Pruning at several lambdas and BEP-LITE vs pruning
at initialisation (Random / SNIP / GraSP) and dense training, on ``bep_cnn`` / Fashion-MNIST
at inference-MACs budgets of ~91/96/99% pruned (the paper's Table 3 layout).

    python tools/bench_bep.py run --epochs 6 --seeds 0,1,2 --shard 0/2 &    # two processes,
    python tools/bench_bep.py run --epochs 6 --seeds 0,1,2 --shard 1/2 &    # one core each
    python tools/bench_bep.py run --epochs 6 --methods bep_last --tag last- # ablation rows
    python tools/bench_bep.py trace --epochs 6 --methods bep --budgets 0.04 --lams 1e-4 --seeds 0
    python tools/bench_bep.py report                                         # table + plots
    python tools/bench_bep.py sweep --out DIR --also DIR2                    # the lambda sweep
    python tools/bench_bep.py run --bundled --batch-size 8 --epochs 2 --budgets 0.2 --seeds 0 \\
        --out /tmp/bep_smoke && python tools/bench_bep.py report --out /tmp/bep_smoke     # smoke test

Protocol, per seed (model initialisation and data order both seeded): every method trains
``bep_cnn`` from the same initialisation for ``--epochs`` on the training split with SGD
(Nesterov momentum 0.9, cosine learning rate from ``--lr``), batch ``--batch-size``:

* **dense**: the unpruned network (the reference row).
* **bep** (one row per ``--lams``): ``fxprune.prepare(method="bep", target_macs_ratio=b)`` +
  ``fit``; the model is rewritten smaller at every decision and ends with exactly the
  budget's units.
* **bep_lite**: the same with ``lite=True`` (GraSP at initialisation to 2 B_s units per
  group first), lambda = the first of ``--lams``.
* **bep_last** (an ablation, not in the default ``--methods``): BEP's schedule deciding on
  the latest bucket of measured saliency instead of the MOGP's prediction.
* **random / snip / grasp**: prune at initialisation to the same per-group unit counts as
  BEP's final ones, then train the small network.

Reported per run: test accuracy (official test split), MACs after / dense, training FLOPs
(6 x forward MACs per sample over the iterations run) / dense training, the saliency
instrumentation's FLOPs, wall seconds and BEP's MOGP + decision time as a share of the
training wall time. ``run`` appends one JSON line per finished run to
``OUT/runs-<tag><shard>.jsonl`` and skips runs already there (resumable; several shards run
in parallel); ``trace`` makes one BEP run that keeps measuring saliency to the end and saves
``OUT/trace.json``; ``report`` aggregates every ``runs-*.jsonl`` into ``OUT/summary.md`` (mean +- sd
over seeds) and draws ``OUT/accuracy.png``, ``OUT/units.png`` and ``OUT/saliency.png`` (the
paper's Fig. 3: one group's saliency with the MOGP's predictive mean and 95% band against
the later observations, from ``OUT/trace.json``). Threads
default to 1 per process (a shared 2-core CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fxprune  # noqa: E402
import fxprune.training.data as fdata  # noqa: E402
import fxprune.models as zoo  # noqa: E402
import fxprune.passes  # noqa: E402
from fxprune.passes.bep.plots import MissingDependency, coverage, plot_saliency, plot_units, pyplot  # noqa: E402
from fxprune.atomic import atomic_write  # noqa: E402
from fxprune.passes.bep import final_counts  # noqa: E402
from fxprune.passes.grasp import grasp_scores  # noqa: E402
from fxprune.passes.snip import snip_scores  # noqa: E402
from fxprune.report import count_macs, count_params  # noqa: E402
from fxprune.training import TrainConfig, evaluate, train_loop  # noqa: E402

PAI = ("random", "snip", "grasp")
METHOD_ORDER = ("dense", "random", "snip", "grasp", "bep", "bep_lite", "bep_last")
BEP_METHODS = ("bep", "bep_lite", "bep_last")


# ----------------------------------------------------------------------------- runs
def configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run of the benchmark, seed outermost (so that a cut-short benchmark has whole seeds)."""
    methods = args.methods.split(",")
    lams = [float(v) for v in args.lams.split(",")]
    out = []
    for seed in (int(s) for s in args.seeds.split(",")):
        if "dense" in methods:
            out.append({"method": "dense", "macs_budget": 1.0, "lam": None, "seed": seed})
        for budget in (float(b) for b in args.budgets.split(",")):
            for method in methods:
                if method == "bep":
                    out += [{"method": "bep", "macs_budget": budget, "lam": lam, "seed": seed} for lam in lams]
                elif method != "dense":
                    out.append({"method": method, "macs_budget": budget,
                                "lam": lams[0] if method in BEP_METHODS else None, "seed": seed})
    return out


def key(rec: dict[str, Any]) -> tuple:
    return rec["method"], float(rec["macs_budget"]), rec.get("lam"), int(rec["seed"])


def data(args: argparse.Namespace, seed: int):
    """(train, test) loaders; the training order is seeded by the run's seed."""
    if args.bundled:
        X, Y = fdata.bundled().tensors
        n = len(X) * 4 // 5
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=g)
        train = [(X[order[i:i + args.batch_size]], Y[order[i:i + args.batch_size]])
                 for i in range(0, n, args.batch_size)]
        return train, [(X[n:], Y[n:])]
    train, _, test = fdata.loaders(args.batch_size, seed=seed, train_subset=args.train_subset)
    return train, test


def prune_at_init(method: str, model: torch.nn.Module, x: torch.Tensor, train, counts: dict[str, int],
                  seed: int) -> torch.nn.Module:
    """``model`` rewritten at initialisation to ``counts`` units per group by random / SNIP / GraSP."""
    graph = fxprune.analyze(model, x)
    groups = [graph.group(g) for g in counts]
    batches = [b for _, b in zip(range(4), train)]
    if method == "random":
        rng = np.random.default_rng(seed)
        scores = {g.id: rng.random(g.units) for g in groups}
    elif method == "snip":
        scores = snip_scores(model, graph, groups, batches)
    else:
        scores = grasp_scores(model, graph, groups, batches)
    plan = {g.id: sorted(np.argsort(-scores[g.id], kind="stable")[:counts[g.id]].tolist()) for g in groups}
    return fxprune.rewrite(model, graph, plan)


def run_one(args: argparse.Namespace, cfg: dict[str, Any], trace: bool = False) -> tuple[dict[str, Any], dict | None]:
    """One run: its record, and (``trace``: BEP measuring to the end) its saliency trace."""
    method, budget, seed = cfg["method"], cfg["macs_budget"], cfg["seed"]
    train, test = data(args, seed)
    torch.manual_seed(seed)
    model = zoo.get(args.model, in_channels=1, num_classes=10)
    x = next(iter(train))[0][:2]
    config = TrainConfig(train, epochs=args.epochs, lr=args.lr, progress=args.progress,
                         max_steps_per_epoch=args.max_steps)
    dense_macs = count_macs(fxprune.trace(model, (x,)), (x,)) / 2
    rec: dict[str, Any] = dict(cfg, model=args.model, epochs=args.epochs, train_images=len(train.dataset)
                               if hasattr(train, "dataset") else sum(len(b[1]) for b in train),
                               options=bep_options(args) if method in BEP_METHODS else {}, commit=_commit())
    saved = None
    start = time.perf_counter()
    if method in BEP_METHODS:
        prepared = fxprune.prepare(model, x, method="bep", target_macs_ratio=budget, lam=cfg["lam"],
                                   lite=method == "bep_lite", predictor="last" if method == "bep_last" else "mogp",
                                   progress=args.progress, seed=seed, measure_to_end=trace, **bep_options(args))
        prepared.fit(config)
        net = prepared.finalize(validate=True).module
        dense = prepared.dense_flops
        rec.update(train_flops_ratio=prepared.flops_ratio(), instrument_flops_ratio=prepared.instrument_flops / dense,
                   overhead=prepared.overhead(), seconds_mogp=prepared.timings["mogp"],
                   seconds_decide=prepared.timings["decide"], seconds_train=prepared.timings["train"],
                   units=prepared.units(), log=[_slim(e) for e in prepared.log])
        if trace:
            saved = dict(prepared.trace(), **cfg)
    else:
        if method == "dense":
            net = model
        else:
            graph = fxprune.analyze(model, x)
            counts = final_counts(graph, fxprune.passes.METHODS["bep"](target_macs_ratio=budget), (x,))
            net = prune_at_init(method, model, x, train, counts, seed)
        train_loop(net, config, phase=method)
        rec.update(train_flops_ratio=count_macs(net, (x,)) / 2 / dense_macs, instrument_flops_ratio=0.0)
    rec["seconds"] = time.perf_counter() - start
    net.eval()
    rec["test_acc"] = evaluate(net, test)
    rec["macs_ratio"] = count_macs(net, (x,)) / 2 / dense_macs
    rec["params"] = count_params(net)
    return rec, saved


def bep_options(args: argparse.Namespace) -> dict[str, Any]:
    """The BEP options this benchmark sets from its command line (recorded in every run)."""
    return {"step": args.step, "seed_steps": args.seed_steps, "measure_every": args.measure_every,
            "num_latents": args.num_latents, "instrument_samples": args.instrument_samples,
            "gp_iters": args.gp_iters, "inducing": args.inducing, "samples": args.samples,
            "penalty_time": args.penalty_time, "kernel": args.kernel}


def _slim(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k in ("t", "units", "lambda_t", "train_flops_ratio", "final", "lite")}


def _commit() -> str:
    """The checked-out commit, with ``+dirty`` when the tree has uncommitted changes."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    return head + ("+dirty" if dirty.strip() else "")


def load_runs(out: Path) -> list[dict[str, Any]]:
    """Every finished run in ``out/runs-*.jsonl`` (a line cut short by a kill is skipped)."""
    runs = {}
    for path in sorted(out.glob("runs-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            runs[key(rec)] = rec
    return list(runs.values())


def cmd_run(args: argparse.Namespace) -> int:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index, count = (int(v) for v in args.shard.split("/"))
    todo = [c for i, c in enumerate(configs(args)) if i % count == index]
    done = {key(r) for r in load_runs(out)}
    with open(out / f"runs-{args.tag}{index}of{count}.jsonl", "a") as f:
        for cfg in todo:
            if key(cfg) in done:
                continue
            rec, _ = run_one(args, cfg)
            rec["command"] = "python tools/bench_bep.py " + shlex.join(sys.argv[1:])
            f.write(json.dumps(rec, default=float) + "\n")
            f.flush()
            print(_line(rec), flush=True)
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    """One BEP run (the first of ``--methods``, ``--budgets``, ``--lams``, ``--seeds``) that keeps
    measuring saliency to the end: ``OUT/trace.json`` for the Fig. 3 plot of ``report``."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    method = args.methods.split(",")[0]
    if method not in BEP_METHODS:
        print(f"bench_bep trace: the first of --methods must be one of {', '.join(BEP_METHODS)}", file=sys.stderr)
        return 2
    cfg = {"method": method, "macs_budget": float(args.budgets.split(",")[0]), "lam": float(args.lams.split(",")[0]),
           "seed": int(args.seeds.split(",")[0])}
    rec, trace = run_one(args, cfg, trace=True)
    trace["record"] = rec
    trace["command"] = "python tools/bench_bep.py " + shlex.join(sys.argv[1:])
    atomic_write(out / "trace.json", lambda p: Path(p).write_text(json.dumps(trace, default=float)))
    print(_line(rec), flush=True)
    return 0


def _line(r: dict[str, Any]) -> str:
    lam = "-" if r.get("lam") is None else f"{r['lam']:g}"
    extra = f" MOGP+decision {100 * r['overhead']:.1f}% of training wall" if "overhead" in r else ""
    return (f"{r['method']:8s} budget {r['macs_budget']:.2f} lam {lam:5s} seed {r['seed']}: acc {r['test_acc']:.4f} "
            f"MACs {r['macs_ratio']:.3f} train FLOPs {r['train_flops_ratio']:.3f}{extra} ({r['seconds']:.0f}s)")


# ----------------------------------------------------------------------------- report
def _rows(runs: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    seen = sorted({(r["method"], r.get("lam")) for r in runs},
                  key=lambda ml: (METHOD_ORDER.index(ml[0]) if ml[0] in METHOD_ORDER else 99, -(ml[1] or 0)))
    return seen


def _stat(values: list[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    m = float(np.mean(values))
    return (fmt.format(m) + (" ± " + fmt.format(float(np.std(values, ddof=1))) if len(values) > 1 else "")
            + f" ({len(values)})")


def table(runs: list[dict[str, Any]]) -> str:
    """Table 3's layout: one row per method (and lambda), per budget test accuracy (%, mean ±
    sd over seeds, seed count in brackets) and training FLOPs / dense."""
    budgets = sorted({r["macs_budget"] for r in runs if r["method"] != "dense"}, reverse=True) or [1.0]
    head = "| method | lambda | " + " | ".join(f"{100 * (1 - b):.0f}% pruned: acc % | train FLOPs" for b in budgets) + " |"
    lines = [head, "|---|---|" + "---|---|" * len(budgets)]
    for method, lam in _rows(runs):
        cells = []
        for b in budgets:
            sel = [r for r in runs if r["method"] == method and r.get("lam") == lam
                   and (method == "dense" or r["macs_budget"] == b)]
            cells += [_stat([100 * r["test_acc"] for r in sel]),
                      _stat([r["train_flops_ratio"] for r in sel], "{:.3f}") if sel else "-"]
        lines.append(f"| {method} | {'-' if lam is None else f'{lam:g}'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(runs: list[dict[str, Any]]) -> str:
    bep = [r for r in runs if "overhead" in r and r["method"] != "bep_last"]  # bep_last fits no MOGP
    if not bep:
        return ""
    lines = ["| runs | MOGP+decision % of training wall (mean, max) | MOGP s | decision s | training s | "
             "instrumentation FLOPs / dense training | reached MACs / budget (max) |", "|---|---|---|---|---|---|---|"]
    ov = [100 * r["overhead"] for r in bep]
    lines.append(f"| {len(bep)} | {np.mean(ov):.2f}, {np.max(ov):.2f} | {np.mean([r['seconds_mogp'] for r in bep]):.1f} | "
                 f"{np.mean([r['seconds_decide'] for r in bep]):.2f} | {np.mean([r['seconds_train'] for r in bep]):.0f} | "
                 f"{np.mean([r['instrument_flops_ratio'] for r in bep]):.3f} | "
                 f"{max(r['macs_ratio'] / r['macs_budget'] for r in bep):.3f} |")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out)
    runs = load_runs(out)
    if not runs:
        print(f"bench_bep: no runs in {out}/runs-*.jsonl", file=sys.stderr)
        return 2
    r0 = runs[0]
    scale = (f"Scale: `{r0['model']}`, {r0['train_images']} training images, {r0['epochs']} epochs "
             f"(batch {args.batch_size}), SGD; accuracy on the 10,000-image test split.")
    commands = sorted({r.get("command", "") for r in runs})
    text = ["# BEP on Fashion-MNIST (issue #7)", "", scale, "", "Commands: " + "; ".join(f"`{c}`" for c in commands),
            "then `python tools/bench_bep.py report --out " + str(args.out) + "`.", "",
            table(runs), "", "Cost of BEP's saliency model (all BEP and BEP-LITE runs; MOGP s and decision s are per run):", "", cost_table(runs), ""]
    if (out / "trace.json").exists():
        text += forecast_lines(json.loads((out / "trace.json").read_text()))
    atomic_write(out / "summary.md", lambda p: Path(p).write_text("\n".join(text)))
    print("\n".join(text))
    try:
        plot_accuracy(runs, out / "accuracy.png")
        plot_runs_units(runs, out / "units.png")
        if (out / "trace.json").exists():
            plot_saliency(json.loads((out / "trace.json").read_text()), out / "saliency.png")
    except MissingDependency as exc:
        print(f"bench_bep: {exc}: no plots", file=sys.stderr)
    return 0


def forecast_lines(trace: dict[str, Any]) -> list[str]:
    """How well the first decision's MOGP forecast the end of training, per group of <= 64 units."""
    lines = [f"Forecast check (`{trace['command']}`): the MOGP fitted at the first decision (t={trace['decisions'][0]} "
             f"of T={trace['T']}); units that survived to T whose last measured saliency lies inside the predicted "
             f"95% band at T:", ""]
    for gid, g in trace["groups"].items():
        if len(g["values"]) <= 64:
            inside, alive = coverage(trace, gid)
            lines.append(f"- {gid}: {inside} of {alive}")
    return lines + [""]


def plot_accuracy(runs: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy vs MACs pruned (left) and vs training FLOPs (right), mean and sd over seeds."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, lam in _rows(runs):
        label = method + (f" λ={lam:g}" if method == "bep" else "")
        sel = [r for r in runs if r["method"] == method and r.get("lam") == lam]
        if method == "dense":
            acc = [100 * r["test_acc"] for r in sel]
            left.axhline(np.mean(acc), color="k", ls=":", label=f"dense ({np.mean(acc):.1f}%)")
            continue
        budgets = sorted({r["macs_budget"] for r in sel}, reverse=True)
        acc = [[100 * r["test_acc"] for r in sel if r["macs_budget"] == b] for b in budgets]
        flops = [np.mean([r["train_flops_ratio"] for r in sel if r["macs_budget"] == b]) for b in budgets]
        x = [100 * (1 - b) for b in budgets]
        line = left.errorbar(x, [np.mean(a) for a in acc], yerr=[np.std(a) for a in acc], marker="o", capsize=3,
                             label=label)
        right.plot(flops, [np.mean(a) for a in acc], marker="o", color=line[0].get_color(), label=label)
    means = [100 * np.mean([r["test_acc"] for r in runs if (r["method"], r.get("lam"), r["macs_budget"]) == c])
             for c in {(r["method"], r.get("lam"), r["macs_budget"]) for r in runs}]
    floor = min(m for m in means if m >= np.median(means) - 15) - 2    # a collapsed run is left off the axes
    for ax in (left, right):
        ax.set_ylim(bottom=floor)
    left.set(xlabel="inference MACs pruned (%)", ylabel="test accuracy (%)",
             title=f"accuracy at the MACs budget (axis from {floor:.0f}%)")
    right.set(xscale="log", xlabel="training FLOPs / dense training", ylabel="test accuracy (%)",
              title="accuracy vs training cost")
    left.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def plot_runs_units(runs: list[dict[str, Any]], path: Path) -> None:
    """``fxprune.passes.bep.plots.plot_units`` for every BEP run of the first seed at the tightest budget."""
    seed = min(r["seed"] for r in runs)
    bep = [r for r in runs if r.get("log") and r["seed"] == seed]
    if not bep:
        return
    budget = min(r["macs_budget"] for r in bep)
    bep = sorted((r for r in bep if r["macs_budget"] == budget), key=lambda r: (r["method"], -(r["lam"] or 0)))
    graph = fxprune.analyze(zoo.get(bep[0]["model"], in_channels=1, num_classes=10), torch.zeros(1, 1, 28, 28))
    initial = {g.id: g.units for g in graph.prunable_groups}
    panels = [(f"{r['method']} λ={r['lam']:g}", {"final_units": r["units"], "log": r["log"], "initial_units": initial})
              for r in bep]
    plot_units(panels, path, f"units per group over training ({100 * (1 - budget):.0f}% MACs pruned, seed {seed})")


def cmd_sweep(args: argparse.Namespace) -> int:
    """The lambda sweep: for every BEP run in ``--out`` and the ``--also`` folders, the units kept
    after each decision and the training FLOPs, into ``tools/results/bep_lambda_sweep.{json,md}``."""
    runs = [r for d in [args.out] + [a for a in args.also.split(",") if a] for r in load_runs(Path(d))
            if r["method"] in ("bep", "bep_last")]
    if not runs:
        print(f"bench_bep: no BEP runs in {args.out}", file=sys.stderr)
        return 2
    rows = []
    for r in sorted(runs, key=lambda r: (-r["macs_budget"], r["method"], r.get("options", {}).get("penalty_time", ""),
                                         -(r["lam"] or 0), r["seed"])):
        decisions = [e for e in r.get("log", []) if "lambda_t" in e or e.get("final")]
        rows.append({"method": r["method"], "penalty_time": r.get("options", {}).get("penalty_time"), "lam": r["lam"],
                     "seed": r["seed"], "budget": r["macs_budget"], "test_acc": r["test_acc"],
                     "train_flops_ratio": r["train_flops_ratio"],
                     "units": [(e["t"], sum(e["units"].values())) for e in decisions],
                     "per_group": [(e["t"], e["units"]) for e in decisions], "command": r.get("command"),
                     "commit": r.get("commit"), "options": r.get("options")})
    stem = ROOT / "tools" / "results" / "bep_lambda_sweep"
    atomic_write(stem.with_suffix(".json"), lambda p: Path(p).write_text(json.dumps(rows, indent=1, default=float)))
    r0 = runs[0]
    lines = ["# BEP: does lambda change what is kept and when?", "",
             f"Scale: `{r0['model']}`, {r0['train_images']} training images, {r0['epochs']} epochs; BEP options "
             f"{json.dumps(r0.get('options'))} (penalty_time as in the table); commit {r0.get('commit')}. Commands: "
             + "; ".join(f"`{c}`" for c in sorted({r['command'] for r in rows if r['command']})), "",
             "Units kept (all groups) after each decision `t: units`, the final cut at T last; training FLOPs / dense.", "",
             "| MACs budget | method | T - t counted as | lambda | seed | units after each decision | train FLOPs | "
             "test acc % |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        units = ", ".join(f"{t}: {n}" for t, n in r["units"])
        lam = "-" if r["lam"] is None else f"{r['lam']:g}"
        lines.append(f"| {r['budget']:g} | {r['method']} | {r['penalty_time']} | {lam} | {r['seed']} | {units} | "
                     f"{r['train_flops_ratio']:.3f} | {100 * r['test_acc']:.2f} |")
    atomic_write(stem.with_suffix(".md"), lambda p: Path(p).write_text("\n".join(lines) + "\n"))
    print("\n".join(lines))
    return 0


# ----------------------------------------------------------------------------- cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["run", "trace", "report", "sweep"])
    ap.add_argument("--model", default="bep_cnn")
    ap.add_argument("--budgets", default="0.09,0.04,0.01", help="inference MACs kept (0.09 = 91%% pruned)")
    ap.add_argument("--lams", default="1e-2,1e-4,1e-7")
    ap.add_argument("--methods", default="dense,bep,bep_lite,random,snip,grasp")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--max-steps", type=int, default=None, help="cap on batches per epoch")
    ap.add_argument("--train-subset", type=int, default=None, help="training images (default: the whole split)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--step", type=int, default=None, help="iterations between BEP decisions (default T/8)")
    ap.add_argument("--seed-steps", type=int, default=None, help="BEP's seed period T_0 (default: step)")
    ap.add_argument("--measure-every", type=int, default=20)
    ap.add_argument("--num-latents", type=int, default=None, help="Q per group (default: the paper's, conv 12 dense 4)")
    ap.add_argument("--instrument-samples", type=int, default=512, help="saliency measurement subset")
    ap.add_argument("--gp-iters", type=int, default=200, help="Adam steps of the MOGP's ELBO")
    ap.add_argument("--inducing", type=int, default=60, help="inducing points per latent")
    ap.add_argument("--samples", type=int, default=10000, help="Monte-Carlo samples of s_T")
    ap.add_argument("--penalty-time", default="fraction", choices=["fraction", "iterations"])
    ap.add_argument("--kernel", default="exponential+constant+drift")
    ap.add_argument("--shard", default="0/1", help="i/n: run every n-th configuration starting at i")
    ap.add_argument("--tag", default="", help="prefix of this run's file name, runs-TAG<i>of<n>.jsonl")
    ap.add_argument("--bundled", action="store_true", help="the 500 bundled images (offline smoke test)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", default="tools/results/bep")
    ap.add_argument("--also", default="", help="sweep: more result folders, comma-separated")
    args = ap.parse_args(argv)
    return {"run": cmd_run, "trace": cmd_trace, "report": cmd_report, "sweep": cmd_sweep}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
