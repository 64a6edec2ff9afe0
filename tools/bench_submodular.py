#!/usr/bin/env python
"""Benchmarks of the ``submodular`` method (El Halabi et al., ICLR 2022) and its baselines.

    python tools/bench_submodular.py accuracy      # LeNet-5 / Fashion-MNIST table + plot
    python tools/bench_submodular.py speed         # pruning time per phase: LeNet-5, ResNet-56

``accuracy`` reproduces the paper's Fig. 1 (left) setting on Fashion-MNIST (our stand-in
for MNIST): the bundled LeNet-5 checkpoint, compression ratios (parameters) 2..32, 512
calibration images (4 x 128 from the training split, a new draw per seed), no
fine-tuning, every method with and without reweighting, per-layer budgets chosen on
2000 images of the verification split (Sec. 5.2; ``actgrad`` and ``random`` rank globally), top-1
on the 10k test split. The per-layer accuracy curves are computed once per
(method, reweighting, seed) and reused for every ratio. Writes OUT.{json,md,png}.

``speed`` times ``fxprune.compile`` with AsymInChange at compression 2 with one keep
fraction for every pruned group: ResNet-56 (1x28x28, the 27 residual-branch first
convs as in the paper) and LeNet-5, 512 calibration images, seconds per phase.

Bad arguments end with one ``error:`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

TOOLS = Path(__file__).resolve().parent
VARIANTS = {"asym": "AsymInChange", "seq": "SeqInChange", "layer": "LayerInChange"}
BASELINES = ("actgrad", "layer_actgrad", "layer_weightnorm", "layer_sampling", "layer_greedy_fs",
             "random", "layer_random")
DEFAULT_METHODS = tuple(VARIANTS) + BASELINES
CHECKPOINT = TOOLS.parent / "fxprune" / "assets" / "lenet5_fashion_mnist.pt"


def _bench():
    """tools/bench.py, for its output helpers."""
    name = "fxprune_tools_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TOOLS / "bench.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def method_call(name: str) -> tuple[str, dict[str, Any]]:
    """(fxprune method, options) for a benchmark method name (``asym`` -> submodular variant).

    A name may carry options after ``:``, joined by ``+``: ``actgrad:saliency=per_batch``,
    ``layer_greedy_fs:rescale=false+batches=first`` (true/false become booleans)."""
    name, _, extra = name.partition(":")
    options: dict[str, Any] = {}
    for pair in filter(None, extra.split("+")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"method option {pair!r} must be KEY=VALUE (e.g. actgrad:saliency=per_batch)")
        options[key] = {"true": True, "false": False}.get(value.lower(), value)
    if name in VARIANTS:
        return "submodular", {"variant": name, **options}
    return name, options


def _order(name: str) -> int:
    """Table order: DEFAULT_METHODS' order by base method (options after ``:`` sort next to it)."""
    base = name.partition(":")[0]
    return DEFAULT_METHODS.index(base) if base in DEFAULT_METHODS else 99


def label(name: str) -> str:
    return VARIANTS.get(name, name)


# ================================================================ accuracy


def load_lenet5() -> torch.nn.Module:
    from fxprune.demo import load_bundled_model

    return load_bundled_model().eval()


def evaluate(model: torch.nn.Module, batches) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            correct += int((model(x).argmax(-1) == y).sum())
            total += len(y)
    return correct / total


def split_batches(ds, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = ds.tensors
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def accuracy_run(args: argparse.Namespace) -> dict[str, Any]:
    import fxprune
    from fxprune.training import data

    model = load_lenet5()
    verify = split_batches(data.load_fashion_mnist("verify"), 1000)
    vx, vy = torch.cat([b[0] for b in verify]), torch.cat([b[1] for b in verify])
    verify = [(vx[i:i + 1000], vy[i:i + 1000]) for i in range(0, args.verification, 1000)]
    test = split_batches(data.load_fashion_mnist("test"), 1000)
    x = verify[0][0][:2]
    original = evaluate(model, test)
    runs = []
    total = len(args.methods) * len(args.reweight) * len(args.seeds)
    done = 0
    for name in args.methods:
        method, base = method_call(name)
        for rw in args.reweight:
            for seed in args.seeds:
                calib = data.calibration(args.calibration, seed=seed)
                cache: dict = {}
                for c in args.compressions:
                    start = time.perf_counter()
                    result = fxprune.compile(model, x, method, compression=c, budget="params", reweight=rw,
                                             data=calib, verification=verify, seed=seed, curve_cache=cache,
                                             progress=False, **base)
                    seconds = time.perf_counter() - start
                    runs.append({"method": name, "reweight": rw, "seed": seed, "compression": c,
                                 "accuracy": evaluate(result.module, test),
                                 "params_ratio": result.report.params_ratio,
                                 "macs_ratio": result.report.macs_ratio, "seconds": seconds})
                done += 1
                print(f"[{done}/{total}] {label(name)} reweight={rw} seed={seed}: "
                      + ", ".join(f"{r['compression']}x {r['accuracy']:.3f}" for r in runs[-len(args.compressions):]),
                      flush=True)
    return {"original_accuracy": original, "runs": runs}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    mean_std = _bench().mean_std
    keys = sorted({(r["method"], r["reweight"], r["compression"]) for r in runs},
                  key=lambda k: (_order(k[0]), k[0], not k[1], k[2]))
    out = []
    for method, rw, c in keys:
        sel = [r for r in runs if (r["method"], r["reweight"], r["compression"]) == (method, rw, c)]
        acc, std = mean_std([r["accuracy"] for r in sel])
        secs, _ = mean_std([r["seconds"] for r in sel])
        ratio, _ = mean_std([1 / r["params_ratio"] for r in sel])
        out.append({"method": method, "reweight": rw, "compression": c, "accuracy": acc, "std": std,
                    "reached": ratio, "seconds": secs, "n": len(sel)})
    return out


def markdown(res: dict[str, Any]) -> str:
    comps = res["compressions"]
    lines = [f"# submodular vs baselines: LeNet-5 on Fashion-MNIST, no fine-tuning", "",
             f"Command: `{res['command']}`", "",
             f"Scale: {res['scale']}", "",
             f"Original test accuracy: {res['original_accuracy']:.2%}. Cells: mean ± std test accuracy "
             f"over seeds {res['seeds']} (compression = original params / pruned params).", ""]
    header = "| method | reweight | " + " | ".join(f"{c}x" for c in comps) + " |"
    lines += [header, "|" + "---|" * (2 + len(comps))]
    rows: dict[tuple, dict] = {}
    for s in res["summary"]:
        rows.setdefault((s["method"], s["reweight"]), {})[s["compression"]] = s
    for (method, rw), cells in rows.items():
        vals = [f"{cells[c]['accuracy']:.1%} ± {cells[c]['std']:.1%}" if c in cells else "" for c in comps]
        lines.append(f"| {label(method)} | {'yes' if rw else 'no'} | " + " | ".join(vals) + " |")
    lines += ["", "Findings (computed from the table):", ""] + [f"- {f}" for f in res["findings"]]
    lines += ["", f"Machine: {res['machine']}", f"Wall time: {res['wall_seconds']:.0f} s", ""]
    return "\n".join(lines)


def findings(summary: list[dict[str, Any]], comps: Sequence[float]) -> list[str]:
    """The paper's three claims checked on the table (numbers in each line)."""
    acc = {(s["method"], s["reweight"], s["compression"]): s["accuracy"] for s in summary}
    methods = sorted({s["method"] for s in summary}, key=lambda m: (_order(m), m))
    out = []
    for m in methods:
        diffs = [acc[(m, True, c)] - acc[(m, False, c)] for c in comps if (m, True, c) in acc and (m, False, c) in acc]
        if diffs:
            wins = sum(d > 0 for d in diffs)
            out.append(f"reweighting vs not, {label(m)}: better at {wins}/{len(diffs)} ratios "
                       f"(mean {sum(diffs) / len(diffs):+.1%}, range {min(diffs):+.1%}..{max(diffs):+.1%})")
    high = [c for c in comps if c >= 8]
    for c in high:
        ours = {v: acc.get((v, True, c)) for v in VARIANTS}
        base = {b: acc.get((b, True, c)) for b in BASELINES if (b, True, c) in acc}
        if base and all(v is not None for v in ours.values()):
            best_b = max(base, key=base.get)
            worst_v = min(ours, key=ours.get)
            out.append(f"{c}x, reweighted: worst InChange variant {label(worst_v)} {ours[worst_v]:.1%} vs best "
                       f"baseline {best_b} {base[best_b]:.1%} -> "
                       f"{'InChange variants ahead' if ours[worst_v] > base[best_b] else 'NOT all ahead'}")
    for c in comps:
        a, s, l_ = (acc.get((v, True, c)) for v in ("asym", "seq", "layer"))
        if None not in (a, s, l_):
            order = "holds" if a >= s >= l_ else "does not hold"
            out.append(f"{c}x, reweighted: Asym {a:.1%}, Seq {s:.1%}, Layer {l_:.1%} -> Asym >= Seq >= Layer {order}")
    return out


def plot(res: dict[str, Any], path: str) -> None:
    plt = _bench().require_matplotlib()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, rw in zip(axes, (True, False)):
        for m in res["methods"]:
            pts = [s for s in res["summary"] if s["method"] == m and s["reweight"] == rw]
            if pts:
                ax.errorbar([p["compression"] for p in pts], [p["accuracy"] for p in pts],
                            yerr=[p["std"] for p in pts], marker="o", capsize=3, label=label(m),
                            linewidth=2.2 if m in VARIANTS else 1.0)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("compression (params original / pruned)")
        ax.set_title(f"LeNet-5, Fashion-MNIST, {'with' if rw else 'without'} reweighting")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (no fine-tuning)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=110)
    _bench().atomic_write(path, write)
    plt.close(fig)


# ================================================================ speed


def speed_case(model_name: str, calib, groups_filter, compression: float, threads: int) -> dict[str, Any]:
    import fxprune
    from fxprune.models import get

    if model_name == "lenet5":
        model = load_lenet5()
    else:
        model = get(model_name, in_channels=1).eval()
    x = calib[0][0][:2]
    graph = fxprune.analyze(model, (x,))
    groups = tuple(g.id for g in graph.prunable_groups if groups_filter(g.id))
    start = time.perf_counter()
    result = fxprune.compile(model, x, "submodular", variant="asym", compression=compression, budget="params",
                             allocation="uniform", data=calib, groups=groups, progress=False)
    total = time.perf_counter() - start
    return {"model": model_name, "groups": len(groups), "calibration": sum(len(b[0]) for b in calib),
            "compression_reached": 1 / result.report.params_ratio, "seconds": total,
            "phases": dict(result.report.seconds), "threads": threads}


def speed_run(args: argparse.Namespace) -> dict[str, Any]:
    from fxprune.training import data

    calib = data.calibration(args.calibration) if data.available() else \
        _bundled_calibration(args.calibration)
    inner = lambda gid: gid.startswith("layer") and gid.endswith(".conv1")  # noqa: E731
    cases = [speed_case("lenet5", calib, lambda gid: True, 2.0, args.threads),
             speed_case("resnet56", calib, inner, 2.0, args.threads)]
    return {"cases": cases}


def _bundled_calibration(n: int):
    from fxprune.training.data import bundled

    return split_batches(bundled(), 128)[: max(1, n // 128)]


def speed_markdown(res: dict[str, Any]) -> str:
    lines = ["# submodular (AsymInChange) pruning time", "", f"Command: `{res['command']}`", "",
             "Compression 2 (parameters), one keep fraction for every pruned group, float64 Grams, "
             f"torch threads {res['threads']}. Paper (Table 4/5, CPU): ResNet-56 AsymInChange at "
             "compression ~2: 2h13m.", "",
             "| model | groups | calibration | reached | total s | phases (s) |", "|---|---|---|---|---|---|"]
    for c in res["cases"]:
        phases = ", ".join(f"{k} {v:.2f}" for k, v in c["phases"].items())
        lines.append(f"| {c['model']} | {c['groups']} | {c['calibration']} | {c['compression_reached']:.2f}x | "
                     f"{c['seconds']:.2f} | {phases} |")
    lines += ["", f"Machine: {res['machine']}", ""]
    return "\n".join(lines)


# ================================================================ main


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2
        self.exit(2, f"bench_submodular.py: error: {message}\n")


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(v) for v in text.split(",") if v]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench_submodular.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("accuracy", help="LeNet-5 accuracy table")
    a.add_argument("--methods", type=_csv(str), default=list(DEFAULT_METHODS))
    a.add_argument("--compressions", type=_csv(float), default=[2.0, 4.0, 8.0, 16.0, 32.0])
    a.add_argument("--seeds", type=_csv(int), default=[0, 1, 2, 3, 4])
    a.add_argument("--reweight", type=_csv(lambda v: {"yes": True, "no": False}[v]), default=[True, False],
                   help="yes,no")
    a.add_argument("--calibration", type=int, default=512)
    a.add_argument("--verification", type=int, default=2000,
                   help="verification images (of the 5k split) for the per-layer budget curves")
    a.add_argument("--no-plot", action="store_true")
    a.add_argument("--out", default=str(TOOLS / "results" / "submodular_lenet5"))
    s = sub.add_parser("speed", help="pruning time per phase")
    s.add_argument("--calibration", type=int, default=512)
    s.add_argument("--out", default=str(TOOLS / "results" / "submodular_speed"))
    for q in (a, s):
        q.add_argument("--threads", type=int, default=1, help="torch threads")
    return p


def check(args: argparse.Namespace) -> None:
    from fxprune.training import data
    from fxprune.passes import METHODS

    if args.mode == "accuracy":
        unknown = [m for m in args.methods if m.partition(":")[0] not in VARIANTS and m.partition(":")[0] not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {', '.join(DEFAULT_METHODS)}")
        if any(c < 1 for c in args.compressions):
            raise ValueError("--compressions must be >= 1")
        if not data.available():
            raise ValueError("Fashion-MNIST is needed: apt-get install dataset-fashion-mnist (or set FXPRUNE_DATA)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from fxprune.errors import FxpruneError

    warnings.filterwarnings("ignore", category=UserWarning)
    bench = _bench()
    torch.set_num_threads(args.threads)
    try:
        check(args)
        start = time.perf_counter()
        res: dict[str, Any] = {"command": bench.command_line(argv).replace("bench.py", "bench_submodular.py"),
                               "machine": bench.machine_info(args.threads, 1), "threads": args.threads}
        if args.mode == "accuracy":
            res.update(accuracy_run(args))
            res.update(methods=args.methods, compressions=args.compressions, seeds=args.seeds,
                       method_options={m: dict(zip(("method", "options"), method_call(m))) for m in args.methods},
                       scale=f"LeNet-5 (bundled checkpoint), {args.calibration} calibration images, "
                             f"{args.verification} verification images (Fashion-MNIST verify split) for the per-layer budgets, 10k test images, no fine-tuning")
            res["summary"] = summarize(res["runs"])
            res["findings"] = findings(res["summary"], args.compressions)
            res["wall_seconds"] = time.perf_counter() - start
            text = markdown(res)
            if not args.no_plot:
                plot(res, args.out + ".png")
        else:
            res.update(speed_run(args))
            text = speed_markdown(res)
        import json

        bench.atomic_write_text(args.out + ".json", json.dumps(res, indent=1, default=str) + "\n")
        bench.atomic_write_text(args.out + ".md", text)
        print(text)
    except (ValueError, FxpruneError) as e:
        print(f"bench_submodular.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
