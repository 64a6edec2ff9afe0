#!/usr/bin/env python
"""ITPCC vs L1 at the same MACs and the same training epochs (issue #6's paper claim), on Fashion-MNIST.

    python tools/bench_itpcc.py --model resnet20 --targets 0.5,0.33 --seeds 0,1,2 \\
        --base-epochs 8 --prune-epochs 4 --finetune-epochs 4 --train-subset 10000
    python tools/bench_itpcc.py --model resnet20 --data bundled --base-epochs 1 --prune-epochs 1 \\
        --finetune-epochs 1 --seeds 0 --targets 0.5 --out /tmp/smoke        # offline smoke test

Protocol, per model: one base model (``--checkpoint`` of ``tools/train.py``, else trained here
for ``--base-epochs`` with SGD and cached under ``checkpoints/``; 1x28x28 inputs). For every
seed and MACs target ``t``:

* **itpcc**: ``fxprune.prepare(base, method="itpcc", target_macs_ratio=t)``, ``--prune-epochs``
  of training with the gates (weights: SGD at ``--prune-lr``, cosine), ``finalize()`` at
  threshold 0 (the controller's own result, no exact-threshold trick), then
  ``--finetune-epochs`` of the pruned model at ``--finetune-lr`` (cosine).
* **l1**: L1 (local scope) at the sparsity whose MACs are closest to what itpcc reached, then
  the same weight-optimizer schedule: ``--prune-epochs`` at ``--prune-lr`` and
  ``--finetune-epochs`` at ``--finetune-lr`` on the pruned model. Both methods train for the
  same number of epochs on the same batches (same seed) after the base model.

Test accuracy is on the official test split (``--test-subset`` first images). Writes
``OUT.json`` (every run with its per-epoch log), ``OUT.md`` (the table, the command at its
top) and ``OUT.png`` (accuracy vs MACs kept), atomically; partial results survive an
interruption. Threads default to 1 (a shared 2-core CPU).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fxprune  # noqa: E402
import fxprune.api  # noqa: E402
import fxprune.models as zoo  # noqa: E402
import fxprune.report  # noqa: E402
from fxprune.training import data as fdata  # noqa: E402
from fxprune.training import TrainConfig, evaluate, train_loop  # noqa: E402


def _tool(name: str):
    """tools/<name>.py loaded as a module (for its helpers)."""
    key = f"fxprune_tools_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "tools" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


bench = _tool("bench")
BenchError = bench.BenchError
METHODS = ("itpcc", "l1", "itpcc_structure")  # the last only with --ablation


# ====================================================================== data and base


def loaders(args: argparse.Namespace, seed: int) -> tuple[Any, Any]:
    """(train loader shuffled by ``seed``, test batches)."""
    from torch.utils.data import DataLoader, Subset

    if args.data == "bundled":
        ds = fdata.bundled()
        train = DataLoader(ds, batch_size=args.batch_size, shuffle=True,
                           generator=torch.Generator().manual_seed(seed))
        return train, DataLoader(ds, batch_size=500)
    train, _, test = fdata.loaders(args.batch_size, seed=seed, train_subset=args.train_subset)
    if args.test_subset:
        test = DataLoader(Subset(test.dataset, range(min(args.test_subset, len(test.dataset)))), batch_size=1000)
    return train, test


def base_model(args: argparse.Namespace, log) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The unpruned model: loaded, cached, or trained here (SGD, cosine) and cached."""
    train_tool = _tool("train")
    if args.checkpoint:
        model, ckpt = train_tool.load_checkpoint(args.checkpoint)
        return model.eval(), {"checkpoint": args.checkpoint, "meta": ckpt.get("meta", {})}
    cache = ROOT / "checkpoints" / (f"itpcc_base_{args.model}_{args.data}_{args.train_subset or 'all'}_"
                                    f"e{args.base_epochs}_lr{args.base_lr:g}.pt")
    if cache.is_file() and not args.retrain_base:
        model, ckpt = train_tool.load_checkpoint(str(cache))
        log(f"base model: {cache} (cached)")
        return model.eval(), {"checkpoint": str(cache.relative_to(ROOT)), "meta": ckpt.get("meta", {})}
    torch.manual_seed(0)
    model = zoo.get(args.model, in_channels=1, num_classes=10)
    train, _ = loaders(args, 0)
    start = time.perf_counter()
    history = train_loop(model, TrainConfig(train, epochs=args.base_epochs, lr=args.base_lr, weight_decay=args.weight_decay,
                                            progress=args.progress, log=log), phase="base")
    meta = {"epochs": args.base_epochs, "lr": args.base_lr, "seconds": time.perf_counter() - start,
            "history": history}
    os.makedirs(cache.parent, exist_ok=True)
    train_tool.save_checkpoint(str(cache), model, args.model, {"in_channels": 1, "num_classes": 10}, meta)
    return model.eval(), {"checkpoint": str(cache.relative_to(ROOT)), "meta": meta}


# ============================================================================ one run


def config(args: argparse.Namespace, train: Any, epochs: int, lr: float, finetune_epochs: int = 0) -> TrainConfig:
    return TrainConfig(train, epochs=epochs, finetune_epochs=finetune_epochs, lr=lr, finetune_lr=args.finetune_lr,
                       weight_decay=args.weight_decay, momentum=0.9, optimizer="sgd", progress=args.progress,
                       max_steps_per_epoch=args.max_steps, log=lambda s: None)


def run_structure(args, base, x, train, test, plan: dict[str, list[int]], seed: int) -> dict[str, Any]:
    """Ablation: itpcc's plan applied to the base weights, then l1's schedule (structure vs training)."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    graph = fxprune.analyze(base, x)
    module = fxprune.rewrite(base, graph, plan).train()
    result = fxprune.api.Result(module, plan, fxprune.api.Report(
        fxprune.report.count_params(base), fxprune.report.count_params(module), fxprune.report.count_macs(base, (x,)),
        fxprune.report.count_macs(module, (x,))), graph)
    acc_pruned = evaluate(module, test)
    logs = {"prune": train_loop(module, config(args, train, args.prune_epochs, args.prune_lr),
                                phase="train") if args.prune_epochs else [],
            "finetune": train_loop(module, config(args, train, args.finetune_epochs, args.finetune_lr),
                                   phase="finetune") if args.finetune_epochs else []}
    return _record("itpcc_structure", result, acc_pruned, evaluate(module, test), time.perf_counter() - start, x, logs)


def run_itpcc(args, base, x, train, test, target: float, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    start = time.perf_counter()
    prepared = fxprune.prepare(base, x, "itpcc", target_macs_ratio=target, seed=seed, progress=args.progress)
    prune_log = prepared.fit(config(args, train, args.prune_epochs, args.prune_lr))
    result = prepared.finalize(validate=False)
    acc_pruned = evaluate(result.module, test)
    ft_log = train_loop(result.module, config(args, train, args.finetune_epochs, args.finetune_lr),
                        phase="finetune") if args.finetune_epochs else []
    return _record("itpcc", result, acc_pruned, evaluate(result.module, test), time.perf_counter() - start, x,
                   {"prune": prune_log, "finetune": ft_log, "threshold": result.report.details["threshold"],
                    "gamma": result.report.details["gamma"], "warnings": result.report.warnings,
                    "plan": result.plan})


def matching_sparsity(base, x, macs_ratio: float) -> tuple[float, Any]:
    """L1 (local) sparsity whose MACs ratio is closest to ``macs_ratio`` (bisection)."""
    lo, hi = 0.0, 0.95
    best = None
    for _ in range(12):
        mid = (lo + hi) / 2
        result = fxprune.compile(base, x, "l1", mid, validate=False)
        if best is None or abs(result.report.macs_ratio - macs_ratio) < abs(best[1].report.macs_ratio - macs_ratio):
            best = (mid, result)
        lo, hi = (mid, hi) if result.report.macs_ratio > macs_ratio else (lo, mid)
    return best


def run_l1(args, base, x, train, test, macs_ratio: float, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    start = time.perf_counter()
    sparsity, result = matching_sparsity(base, x, macs_ratio)
    module = result.module.train()
    acc_pruned = evaluate(module, test)
    logs = {"sparsity": sparsity}
    logs["prune"] = train_loop(module, config(args, train, args.prune_epochs, args.prune_lr),
                               phase="train") if args.prune_epochs else []
    logs["finetune"] = train_loop(module, config(args, train, args.finetune_epochs, args.finetune_lr),
                                  phase="finetune") if args.finetune_epochs else []
    return _record("l1", result, acc_pruned, evaluate(module, test), time.perf_counter() - start, x, logs)


def _record(method: str, result, acc_pruned: float, acc: float, seconds: float, x, logs: dict) -> dict[str, Any]:
    module = result.module.eval()
    check = fxprune.validate(module, (x,), raise_on_mismatch=False)
    rep = result.report
    return {"method": method, "macs_ratio": rep.macs_ratio, "params_ratio": rep.params_ratio,
            "macs_after": rep.macs_after, "acc_pruned": acc_pruned, "acc": acc, "seconds": seconds,
            "onnx_ok": bool(check.ok), "plan_units": {g: len(k) for g, k in result.plan.items()}, **logs}


# ============================================================================ outputs


def summarize(runs: list[dict[str, Any]], targets: Sequence[float]) -> list[dict[str, Any]]:
    rows = []
    for t in targets:
        row: dict[str, Any] = {"target": t}
        for method in METHODS:
            sel = [r for r in runs if r["target"] == t and r["method"] == method]
            macs, _ = bench.mean_std([r["macs_ratio"] for r in sel])
            acc, std = bench.mean_std([r["acc"] for r in sel])
            pre, _ = bench.mean_std([r["acc_pruned"] for r in sel])
            row[method] = {"macs_ratio": macs, "acc": acc, "acc_std": std, "acc_pruned": pre, "runs": len(sel)}
        a, b = row["itpcc"]["acc"], row["l1"]["acc"]
        row["itpcc_minus_l1"] = None if a is None or b is None else a - b
        rows.append(row)
    return rows


def markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    lines = [f"# ITPCC vs L1 on {cfg['model']} / Fashion-MNIST", "", "```", res["command"], "```", "",
             f"Base model: {res['base']['checkpoint']} (test accuracy {res['base']['acc']:.2%}). "
             f"Each method trains {cfg['prune_epochs']} + {cfg['finetune_epochs']} epochs after it "
             f"(itpcc: pruning phase + fine-tuning; l1: the same schedule on the L1-pruned model); "
             f"{res['data']}; seeds {cfg['seeds']}.", "",
             "| MACs target | itpcc MACs kept | l1 MACs kept | itpcc acc (after pruning phase) | "
             "itpcc acc (final) | l1 acc (pruned, no training) | l1 acc (final) | itpcc − l1 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["summary"]:
        i, l1 = r["itpcc"], r["l1"]
        diff = r["itpcc_minus_l1"]
        lines.append(f"| {r['target']:.0%} | {bench._pct(i['macs_ratio'])} | {bench._pct(l1['macs_ratio'])} | "
                     f"{bench._pct(i['acc_pruned'])} | {bench._pct(i['acc'], i['acc_std'])} | "
                     f"{bench._pct(l1['acc_pruned'])} | {bench._pct(l1['acc'], l1['acc_std'])} | "
                     f"{'–' if diff is None else f'{diff * 100:+.2f} pt'} |")
    if any(r["itpcc_structure"]["runs"] for r in res["summary"]):
        lines += ["", "Ablation (`--ablation`): itpcc's plan applied to the base weights and trained with l1's "
                  "schedule, i.e. itpcc's structure without its noisy pruning phase:", "",
                  "| MACs target | itpcc structure, trained like l1 | l1 | difference |", "|---|---|---|---|"]
        for r in res["summary"]:
            a, b = r["itpcc_structure"], r["l1"]
            if a["acc"] is not None and b["acc"] is not None:
                lines.append(f"| {r['target']:.0%} | {bench._pct(a['acc'], a['acc_std'])} | "
                             f"{bench._pct(b['acc'], b['acc_std'])} | {(a['acc'] - b['acc']) * 100:+.2f} pt |")
    lines += ["", "Accuracies: mean ± std over seeds on the test images; MACs kept: mean over seeds.", ""]
    lines += [f"- {n}" for n in res["notes"]]
    lines.append(f"\nWall time {res['wall_seconds']:.0f} s on {res['machine'].get('cpu_count')} CPUs "
                 f"({res['machine'].get('torch_threads')} torch thread(s)); git {res['git']}.")
    return "\n".join(lines) + "\n"


def notes(res: dict[str, Any]) -> list[str]:
    out = []
    for r in res["summary"]:
        d = r["itpcc_minus_l1"]
        if d is not None:
            verdict = "higher" if d > 0 else "not higher"
            out.append(f"target {r['target']:.0%}: itpcc final accuracy is {verdict} than l1's "
                       f"({r['itpcc']['acc']:.2%} vs {r['l1']['acc']:.2%}, {d * 100:+.2f} pt)")
        miss = [x for x in res["runs"] if x["method"] == "itpcc" and x["target"] == r["target"]
                and abs(x["macs_ratio"] - r["target"]) > 0.05 * r["target"]]
        if miss:
            reached = ", ".join(f"{x['macs_ratio']:.1%}" for x in miss)
            out.append(f"target {r['target']:.0%}: {len(miss)} itpcc run(s) ended more than 5% from the target "
                       f"({reached})")
    bad = [x for x in res["runs"] if not x["onnx_ok"]]
    if bad:
        out.append(f"{len(bad)} run(s) failed the onnxruntime check")
    return out


def plot(res: dict[str, Any], path: str) -> None:
    plt = bench.require_matplotlib()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for method, marker in (("itpcc", "o"), ("l1", "s"), ("itpcc_structure", "^")):
        if not any(r["method"] == method for r in res["runs"]):
            continue
        xs = [r["macs_ratio"] for r in res["runs"] if r["method"] == method]
        ys = [r["acc"] for r in res["runs"] if r["method"] == method]
        ax.scatter(xs, ys, marker=marker, alpha=0.35, label=f"{method} (runs)")
        rows = [r[method] for r in res["summary"] if r[method]["acc"] is not None]
        ax.errorbar([r["macs_ratio"] for r in rows], [r["acc"] for r in rows], yerr=[r["acc_std"] for r in rows],
                    marker=marker, capsize=3, label=f"{method} (mean ± std)")
    ax.axhline(res["base"]["acc"], color="grey", linestyle="--", linewidth=1, label="unpruned")
    ax.set_xlabel("MACs kept (fraction of the unpruned model)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"ITPCC vs L1, {res['config']['model']} / Fashion-MNIST, same epochs", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        bench.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def write(res: dict[str, Any], with_plot: bool) -> list[str]:
    res["summary"] = summarize(res["runs"], res["config"]["targets"])
    res["notes"] = notes(res)
    out = res["out"]
    bench.atomic_write_text(out + ".json", json.dumps(res, indent=1, default=bench._json_default) + "\n")
    bench.atomic_write_text(out + ".md", markdown(res))
    if with_plot and res["runs"]:
        plot(res, out + ".png")
        return [out + ".json", out + ".md", out + ".png"]
    return [out + ".json", out + ".md"]


# ================================================================================ run


def run(args: argparse.Namespace, argv: Sequence[str], log=print) -> dict[str, Any]:
    wall = time.perf_counter()
    torch.set_num_threads(args.threads)
    if not args.no_plot:
        bench.require_matplotlib()
    if args.data != "bundled" and not fdata.available():
        raise BenchError("the Fashion-MNIST files are missing (see fxprune.training.data); pass --data bundled for a smoke test")
    out = args.out or f"tools/results/itpcc_{args.model}"
    base, base_info = base_model(args, log)
    train0, test = loaders(args, 0)
    x = next(iter(test))[0][:1].clone()
    base_info["acc"] = evaluate(base, test)
    log(f"{args.model}: base test accuracy {base_info['acc']:.4f}")
    res: dict[str, Any] = {
        "tool": "tools/bench_itpcc.py",
        "command": "python " + " ".join(shlex.quote(a) for a in ["tools/bench_itpcc.py", *argv]),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "git": bench._git_revision(),
        "machine": bench.machine_info(torch.get_num_threads(), 1), "config": vars(args) | {"out": out},
        "data": ("bundled 500 images for training and test" if args.data == "bundled" else
                 f"{len(train0.dataset)} training images, {len(test.dataset)} test images"),
        "base": base_info, "out": out, "runs": [], "wall_seconds": 0.0,
    }
    for seed in args.seeds:
        train, _ = loaders(args, seed)
        for target in args.targets:
            it = run_itpcc(args, base, x, train, test, target, seed) | {"target": target, "seed": seed}
            res["runs"].append(it)
            l1 = run_l1(args, base, x, train, test, it["macs_ratio"], seed) | {"target": target, "seed": seed}
            res["runs"].append(l1)
            if args.ablation:
                ab = run_structure(args, base, x, train, test, it["plan"], seed) | {"target": target, "seed": seed}
                res["runs"].append(ab)
                log(f"seed {seed} target {target:.0%}: itpcc structure trained like l1: acc {ab['acc']:.4f}")
            log(f"seed {seed} target {target:.0%}: itpcc MACs {it['macs_ratio']:.1%} acc {it['acc_pruned']:.4f}"
                f" -> {it['acc']:.4f} ({it['seconds']:.0f}s); l1 MACs {l1['macs_ratio']:.1%} acc "
                f"{l1['acc_pruned']:.4f} -> {l1['acc']:.4f} ({l1['seconds']:.0f}s)")
            res["wall_seconds"] = time.perf_counter() - wall
            write(res, with_plot=False)
    res["wall_seconds"] = time.perf_counter() - wall
    written = write(res, with_plot=not args.no_plot)
    log("wrote " + ", ".join(written))
    return res


def _csv(kind):
    def parse(text: str):
        try:
            values = [kind(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"no values in {text!r}")
        return values
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_itpcc.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="resnet20", help="zoo model (1x28x28 inputs)")
    p.add_argument("--checkpoint", help="tools/train.py checkpoint of the base model (else trained here)")
    p.add_argument("--targets", type=_csv(float), default=[0.5, 0.33], help="MACs kept by itpcc")
    p.add_argument("--seeds", type=_csv(int), default=[0, 1, 2])
    p.add_argument("--data", choices=("fashion-mnist", "bundled"), default="fashion-mnist")
    p.add_argument("--train-subset", type=int, default=None, help="training images (seeded subset)")
    p.add_argument("--test-subset", type=int, default=None, help="first N official test images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--base-epochs", type=int, default=8)
    p.add_argument("--base-lr", type=float, default=0.1)
    p.add_argument("--retrain-base", action="store_true", help="ignore a cached base model")
    p.add_argument("--prune-epochs", type=int, default=4, help="itpcc pruning phase (l1: first training epochs)")
    p.add_argument("--prune-lr", type=float, default=0.01)
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch (smoke tests)")
    p.add_argument("--ablation", action="store_true",
                   help="also train itpcc's plan from the base weights with l1's schedule")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true", help="tqdm bars")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--out", default=None, help="output path without extension (default tools/results/itpcc_MODEL)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        run(args, argv)
    except (BenchError, fxprune.FxpruneError) as exc:
        print(f"bench_itpcc.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
