#!/usr/bin/env python
"""Speed benchmark of fxprune's core compiler (trace / analyze / plan / rewrite).

A benchmark, never a timed test: it prints a markdown table and writes
``tools/results/bench_speed.json`` and ``tools/results/bench_speed.md``.

For each torchvision ResNet (``weights=None``, eval, input 1x3x224x224) it times,
as the median of ``--repeats`` runs after ``--warmup`` untimed ones:

- fxprune: (a) ``fxprune.trace``, (b) ``Analyzer(gm, strict=False).run()``,
  (c) L1 plan selection at sparsity 0.5 (``fxprune.passes.L1.run``), (d)
  ``fxprune.rewrite``; it reports trace+analyze+rewrite, the number of graph
  nodes and the analysis time per node (which should stay roughly flat from
  resnet18 to resnet152);
- Torch-Pruning (optional, ``pip install torch-pruning``): a standalone
  ``tp.DependencyGraph().build_dependency(model, example_inputs=x)`` ("build",
  comparable to trace+analyze), and ``MetaPruner`` construction (L1
  ``MagnitudeImportance``, ``pruning_ratio=0.5``, final fc ignored, which builds
  its own dependency graph again) plus ``pruner.step()`` ("prune", what a
  Torch-Pruning user pays end to end), each on a fresh deepcopy of the model
  (Torch-Pruning edits in place; the deepcopy is not timed, while
  ``fxprune.trace`` copies the model inside its timing).

Both pruned models' MACs are counted with ``fxprune.report.count_macs`` and the
layers whose shapes differ, and the overlap of the removed output channels per
conv, are reported so the comparison is like for like.

    python tools/bench_speed.py                       # all five ResNets, 5 repeats
    python tools/bench_speed.py --models resnet18 resnet50 --repeats 3 --no-torch-pruning
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torchvision

import fxprune
from fxprune.analysis import Analyzer
from fxprune.passes import L1
from fxprune.report import count_macs, count_params
from fxprune.state import state_of

DEFAULT_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SPARSITY = 0.5
TARGET_MODEL, TARGET_SECONDS = "resnet50", 2.0
TARGET_RATIO = 2.0

FX_PHASES = ("trace", "analyze", "plan", "rewrite")
TP_PHASES = ("build", "init", "step")


# --- helpers ------------------------------------------------------------------------
def torch_pruning_module():
    """The ``torch_pruning`` module, or None when it is not installed."""
    try:
        import torch_pruning
    except ImportError:
        return None
    return torch_pruning


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run ``fn``; return (result, wall seconds, process CPU seconds)."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    t1, c1 = time.perf_counter(), time.process_time()
    return out, t1 - t0, c1 - c0


def _summary(samples: Sequence[float]) -> dict[str, Any]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": [round(s, 6) for s in samples]}


def _build_model(name: str) -> torch.nn.Module:
    return getattr(torchvision.models, name)(weights=None).eval()


def _conv_names(model: torch.nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


# --- fxprune --------------------------------------------------------------------
def _fxprune_once(model: torch.nn.Module, x: torch.Tensor) -> tuple[dict[str, float], dict[str, float], dict]:
    wall, cpu = {}, {}
    gm, wall["trace"], cpu["trace"] = _timed(lambda: fxprune.trace(model, x))
    graph, wall["analyze"], cpu["analyze"] = _timed(lambda: Analyzer(gm, strict=False).run())
    state = state_of(gm)
    state.channel_graph = graph
    _, wall["plan"], cpu["plan"] = _timed(lambda: L1(sparsity=SPARSITY).run(gm))
    plan = state.plan
    pruned, wall["rewrite"], cpu["rewrite"] = _timed(lambda: fxprune.rewrite(gm, graph, plan))
    return wall, cpu, {"gm": gm, "graph": graph, "plan": plan, "pruned": pruned}


def _fx_removed_out_channels(graph, plan) -> dict[str, set[int]]:
    """Conv name -> output channels fxprune's plan removes."""
    convs = {n for n, m in graph.gm.named_modules() if isinstance(m, torch.nn.Conv2d)}
    out: dict[str, set[int]] = {}
    for gid, kept in plan.items():
        group = graph.group(gid)
        removed = sorted(set(range(group.units)) - set(kept))
        if not removed:
            continue
        for sl in group.slices(removed):
            owner, _, attr = sl.name.rpartition(".")
            if attr == "weight" and sl.dim == 0 and owner in convs:
                out.setdefault(owner, set()).update(int(i) for i in sl.index.tolist())
    return out


# --- Torch-Pruning --------------------------------------------------------------
def _tp_pruner(tp, model: torch.nn.Module, x: torch.Tensor):
    """L1 MetaPruner at SPARSITY that leaves the final classifier (the last Linear, ResNet's fc) whole."""
    last_linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    return tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=SPARSITY, ignored_layers=last_linear,
    )


def _tp_once(tp, model: torch.nn.Module, x: torch.Tensor) -> tuple[dict[str, float], dict[str, float], dict]:
    wall, cpu = {}, {}
    m_build, m_prune = copy.deepcopy(model), copy.deepcopy(model)
    _, wall["build"], cpu["build"] = _timed(lambda: tp.DependencyGraph().build_dependency(m_build, example_inputs=x))
    pruner, wall["init"], cpu["init"] = _timed(lambda: _tp_pruner(tp, m_prune, x))
    _, wall["step"], cpu["step"] = _timed(pruner.step)
    return wall, cpu, {"pruned": m_prune}


def _tp_removed_out_channels(tp, model: torch.nn.Module, x: torch.Tensor) -> dict[str, set[int]]:
    """Conv name -> output channels Torch-Pruning removes (an untimed interactive run)."""
    m = copy.deepcopy(model)
    names = _conv_names(m)
    out: dict[str, set[int]] = {}
    for group in _tp_pruner(tp, m, x).step(interactive=True):
        for item in group:
            dep = item.dep
            name = names.get(id(dep.target.module))
            if name is not None and getattr(dep.handler, "__name__", "") == "prune_out_channels":
                out.setdefault(name, set()).update(int(i) for i in item.idxs)
        group.prune()
    return out


def _compare_pruned(original: torch.nn.Module, fx_model: torch.nn.Module, tp_model: torch.nn.Module,
                    fx_removed: dict[str, set[int]], tp_removed: dict[str, set[int]]) -> dict[str, Any]:
    """Which layers the two pruned models disagree on, and how alike their channel choices are."""
    orig = {k: tuple(v.shape) for k, v in original.state_dict().items()}
    fxs = {k: tuple(v.shape) for k, v in fx_model.state_dict().items()}
    tps = {k: tuple(v.shape) for k, v in tp_model.state_dict().items()}
    differ = sorted(k for k in orig if k in fxs and k in tps and fxs[k] != tps[k])
    only_fx = sorted(k for k in orig if fxs.get(k, orig[k]) != orig[k] and tps.get(k) == orig[k])
    only_tp = sorted(k for k in orig if tps.get(k, orig[k]) != orig[k] and fxs.get(k) == orig[k])
    convs = sorted(set(fx_removed) | set(tp_removed))
    jaccard = []
    for c in convs:
        a, b = fx_removed.get(c, set()), tp_removed.get(c, set())
        jaccard.append(len(a & b) / len(a | b) if a | b else 1.0)
    return {
        "params_with_different_shapes": differ[:20],
        "n_params_with_different_shapes": len(differ),
        "pruned_only_by_fxprune": only_fx[:20],
        "pruned_only_by_torch_pruning": only_tp[:20],
        "convs_out_pruned_fxprune": len(fx_removed),
        "convs_out_pruned_torch_pruning": len(tp_removed),
        "convs_same_removed_count": sum(len(fx_removed.get(c, ())) == len(tp_removed.get(c, ())) for c in convs),
        "removed_channel_jaccard_mean": float(np.mean(jaccard)) if jaccard else None,
        "removed_channel_jaccard_min": float(np.min(jaccard)) if jaccard else None,
        "n_convs_compared": len(convs),
    }


# --- one model --------------------------------------------------------------------
class _Series:
    """Per-phase wall/CPU samples of one tool."""

    def __init__(self, phases: Sequence[str]):
        self.phases = tuple(phases)
        self.wall: dict[str, list[float]] = {p: [] for p in phases}
        self.cpu: dict[str, list[float]] = {p: [] for p in phases}

    def add(self, wall: dict[str, float], cpu: dict[str, float]) -> None:
        for p in self.phases:
            self.wall[p].append(wall[p])
            self.cpu[p].append(cpu[p])

    def total(self, phases: Sequence[str]) -> dict[str, Any]:
        n = len(self.wall[self.phases[0]])
        out = _summary([sum(self.wall[p][i] for p in phases) for i in range(n)])
        out["cpu"] = _summary([sum(self.cpu[p][i] for p in phases) for i in range(n)])
        return out

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {p: _summary(self.wall[p]) for p in self.phases}
        out["cpu_median"] = {p: statistics.median(self.cpu[p]) for p in self.phases}
        return out


def bench_model(name: str, repeats: int = 5, warmup: int = 1, torch_pruning: bool = True,
                log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark one torchvision model; returns a JSON-able record (seconds).

    fxprune and Torch-Pruning repeats alternate, so both tools see the same background load.
    """
    log = log or (lambda s: None)
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    torch.manual_seed(0)
    model = _build_model(name)
    x = torch.randn(1, 3, 224, 224)
    rec: dict[str, Any] = {"model": name, "input_shape": list(x.shape), "repeats": repeats, "warmup": warmup,
                           "loadavg_1min_start": (_loadavg() or [None])[0]}

    tp = torch_pruning_module() if torch_pruning else None
    if not torch_pruning:
        rec["torch_pruning"] = {"skipped": "disabled with --no-torch-pruning"}
    elif tp is None:
        rec["torch_pruning"] = {"skipped": "torch-pruning is not installed (pip install torch-pruning)"}

    fx_series, tp_series, copies = _Series(FX_PHASES), _Series(TP_PHASES), []
    fx_last = tp_last = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Torch-Pruning warns about unwrapped parameters etc.
        for i in range(-warmup, repeats):
            gc.collect()
            wall, cpu, fx_last = _fxprune_once(model, x)
            if i >= 0:
                fx_series.add(wall, cpu)
                log(f"  {name} fxprune repeat {i + 1}/{repeats}: "
                    + ", ".join(f"{p} {wall[p]:.3f}" for p in FX_PHASES))
            if tp is None:
                continue
            try:
                gc.collect()
                _, t_copy, _ = _timed(lambda: copy.deepcopy(model))
                wall, cpu, tp_last = _tp_once(tp, model, x)
            except Exception as exc:  # a failing column must not lose the others
                rec["torch_pruning"] = {"skipped": f"Torch-Pruning failed: {type(exc).__name__}: {exc}"}
                tp = None
                continue
            if i >= 0:
                tp_series.add(wall, cpu)
                copies.append(t_copy)
                log(f"  {name} torch-pruning repeat {i + 1}/{repeats}: "
                    + ", ".join(f"{p} {wall[p]:.3f}" for p in TP_PHASES))

    gm, graph, plan, pruned = fx_last["gm"], fx_last["graph"], fx_last["plan"], fx_last["pruned"]
    nodes = len(gm.graph.nodes)
    fx = fx_series.summary()
    fx["trace_analyze_rewrite"] = fx_series.total(("trace", "analyze", "rewrite"))
    fx["end_to_end"] = fx_series.total(FX_PHASES)
    rec["nodes"] = nodes
    rec["groups"] = len(graph.groups)
    rec["prunable_groups"] = len(graph.prunable_groups)
    rec["planned_groups"] = len(plan)
    rec["analyze_us_per_node"] = fx["analyze"]["median"] / nodes * 1e6
    rec["analyze_us_per_node_min"] = fx["analyze"]["min"] / nodes * 1e6
    rec["fxprune"] = fx
    rec["loadavg_1min_end"] = (_loadavg() or [None])[0]
    rec["macs_before"] = count_macs(model, (x,))
    rec["params_before"] = count_params(model)
    rec["fxprune_macs_after"] = count_macs(pruned, (x,))
    rec["fxprune_params_after"] = count_params(pruned)
    if tp is not None:
        try:
            rec["torch_pruning"] = _tp_record(tp, model, x, tp_series, copies, tp_last["pruned"], fx, pruned,
                                              graph, plan)
        except Exception as exc:
            rec["torch_pruning"] = {"skipped": f"Torch-Pruning failed: {type(exc).__name__}: {exc}"}
    return rec


def _tp_record(tp, model, x, series: _Series, copies, tp_pruned, fx, fx_pruned, graph, plan) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp_removed = _tp_removed_out_channels(tp, model, x)
    out: dict[str, Any] = series.summary()
    out["prune"] = series.total(("init", "step"))  # MetaPruner(...) + step(): what a Torch-Pruning user pays
    out["deepcopy_untimed"] = _summary(copies)
    out["version"] = getattr(tp, "__version__", "?")
    out["macs_after"] = count_macs(tp_pruned, (x,))
    out["params_after"] = count_params(tp_pruned)
    out["ratio_prune_vs_fxprune_end_to_end"] = out["prune"]["median"] / fx["end_to_end"]["median"]
    out["ratio_prune_vs_fxprune_end_to_end_min"] = out["prune"]["min"] / fx["end_to_end"]["min"]
    out["ratio_prune_vs_fxprune_end_to_end_cpu"] = out["prune"]["cpu"]["median"] / fx["end_to_end"]["cpu"]["median"]
    out["ratio_build_vs_fxprune_trace_analyze"] = (
        out["build"]["median"] / (fx["trace"]["median"] + fx["analyze"]["median"]))
    out["comparison"] = _compare_pruned(model, fx_pruned, tp_pruned, _fx_removed_out_channels(graph, plan), tp_removed)
    return out


# --- report -----------------------------------------------------------------------
def machine_info(threads: int) -> dict[str, Any]:
    cpu_model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu_model)
    except OSError:
        pass
    tp = torch_pruning_module()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "fxprune": fxprune.__version__,
        "torch_pruning": getattr(tp, "__version__", "?") if tp is not None else None,
        "platform": platform.platform(),
    }


def source_state() -> dict[str, Any]:
    """The fxprune commit benchmarked and the files modified on top of it (others edit concurrently)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fxprune", "passes"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "modified": []}
    return {"commit": head or None, "modified": sorted(ln[3:] for ln in dirty if ln.strip())}


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _s(v: float) -> str:
    return f"{v:.3f}"


def _mm(summary: dict[str, Any]) -> str:
    return f"{summary['median']:.3f} ({summary['min']:.3f})"


def _g(n: int) -> str:
    return f"{n / 1e9:.3f}G"


def render_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# fxprune speed benchmark",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}",
        f"- machine: {m['cpu_count']} CPUs (affinity {m['cpu_affinity']}, {m['cpu_model']}), "
        f"torch {m['torch']} ({m['torch_threads']} threads), torchvision {m['torchvision']}, "
        f"python {m['python']}, torch-pruning {m['torch_pruning'] or 'not installed'}",
        f"- fxprune source: commit {result['source']['commit']}"
        + (f", with uncommitted changes to {', '.join(result['source']['modified'])}" if result["source"]["modified"]
           else ", clean"),
        f"- load average (1, 5, 15 min) at start {result['loadavg_start']}, at end {result['loadavg_end']}",
        f"- {result['repeats']} repeats after {result['warmup']} warm-up, fxprune and Torch-Pruning alternating; "
        "times are wall-clock medians in seconds, (min) where shown; the ratio's (…) is min over min; "
        "'load' is the 1-minute load average before→after each model (2 CPUs: above 2 means other jobs "
        "competed for the CPU); "
        f"input 1x3x224x224, L1 at sparsity {SPARSITY}",
        "",
    ]
    recs = result["records"]
    header = ["model", "load", "nodes", "trace", "analyze", "plan (L1)", "rewrite", "trace+analyze+rewrite",
              "analyze µs/node", "fx end-to-end"]
    with_tp = any("skipped" not in r["torch_pruning"] for r in recs)
    if with_tp:
        header += ["TP build", "TP prune (init+step)", "TP prune / fx e2e", "MACs before", "fx MACs after",
                   "TP MACs after"]
    else:
        header += ["MACs before", "fx MACs after"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for r in recs:
        fx = r["fxprune"]
        load = f"{r.get('loadavg_1min_start')}→{r.get('loadavg_1min_end')}"
        row = [r["model"], load, str(r["nodes"])] + [_s(fx[p]["median"]) for p in FX_PHASES] + [
            _mm(fx["trace_analyze_rewrite"]), f"{r['analyze_us_per_node']:.0f}", _mm(fx["end_to_end"])]
        tp = r["torch_pruning"]
        if with_tp:
            if "skipped" in tp:
                row += ["—", "—", "—", _g(r["macs_before"]), _g(r["fxprune_macs_after"]), "—"]
            else:
                row += [_s(tp["build"]["median"]), _mm(tp["prune"]),
                        f"{tp['ratio_prune_vs_fxprune_end_to_end']:.2f}× "
                        f"({tp['ratio_prune_vs_fxprune_end_to_end_min']:.2f}×)", _g(r["macs_before"]),
                        _g(r["fxprune_macs_after"]), _g(tp["macs_after"])]
        else:
            row += [_g(r["macs_before"]), _g(r["fxprune_macs_after"])]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines += cpu_table(recs, with_tp)
    lines.append("")
    lines += summary_lines(result)
    return "\n".join(lines) + "\n"


def cpu_table(recs: list[dict[str, Any]], with_tp: bool) -> list[str]:
    """Process CPU seconds (all threads), medians: robust to other jobs when --threads 1."""
    header = ["CPU s (median)", "trace", "analyze", "plan (L1)", "rewrite", "fx end-to-end"]
    if with_tp:
        header += ["TP build", "TP init", "TP step", "TP prune (init+step)", "TP prune / fx e2e (CPU)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in recs:
        fx = r["fxprune"]
        row = [r["model"]] + [_s(fx["cpu_median"][p]) for p in FX_PHASES] + [_s(fx["end_to_end"]["cpu"]["median"])]
        tp = r["torch_pruning"]
        if with_tp and "skipped" in tp:
            row += ["—"] * 5
        elif with_tp:
            row += [_s(tp["cpu_median"][p]) for p in TP_PHASES] + [
                _s(tp["prune"]["cpu"]["median"]), f"{tp['ratio_prune_vs_fxprune_end_to_end_cpu']:.2f}×"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def summary_lines(result: dict[str, Any]) -> list[str]:
    recs = result["records"]
    lines = []
    target = next((r for r in recs if r["model"] == TARGET_MODEL), None)
    if target is not None:
        t = target["fxprune"]["trace_analyze_rewrite"]
        ok = "meets" if t["median"] < TARGET_SECONDS else "MISSES"
        lines.append(f"- {TARGET_MODEL} trace+analyze+rewrite: median {t['median']:.3f} s (min {t['min']:.3f}, "
                     f"max {t['max']:.3f}); {ok} the < {TARGET_SECONDS:g} s target.")
    series = ", ".join(f"{r['model']} {r['analyze_us_per_node']:.0f}" for r in recs)
    lines.append(f"- analysis µs per graph node (median): {series}.")
    series = ", ".join(f"{r['model']} {r['analyze_us_per_node_min']:.0f}" for r in recs)
    lines.append(f"- analysis µs per graph node (min): {series}.")
    per_node = [r["analyze_us_per_node"] for r in recs]
    if len(per_node) > 1:
        lines.append(f"  max/min of the series: {max(per_node) / min(per_node):.2f} (1.0 = perfectly flat).")
    ratios = [(r["model"], r["torch_pruning"]["ratio_prune_vs_fxprune_end_to_end"],
               r["torch_pruning"]["ratio_build_vs_fxprune_trace_analyze"],
               r["torch_pruning"]["ratio_prune_vs_fxprune_end_to_end_min"],
               r["torch_pruning"]["ratio_prune_vs_fxprune_end_to_end_cpu"])
              for r in recs if "skipped" not in r["torch_pruning"]]
    if ratios:
        lines.append("- Torch-Pruning prune (MetaPruner init + step) / fxprune end-to-end "
                     "(trace+analyze+plan+rewrite), wall median (min over min) [CPU median]: "
                     + ", ".join(f"{m} {a:.2f}× ({c:.2f}×) [{cpu:.2f}×]" for m, a, _, c, cpu in ratios)
                     + f" (target ≥ {TARGET_RATIO:g}×; > 1 means fxprune is faster).")
        lines.append("- Torch-Pruning DependencyGraph build / fxprune trace+analyze: "
                     + ", ".join(f"{m} {b:.2f}×" for m, _, b, _, _ in ratios) + ".")
        lines.append("- Like for like:")
        for r in recs:
            tp = r["torch_pruning"]
            if "skipped" in tp:
                continue
            c = tp["comparison"]
            same_macs = "same" if tp["macs_after"] == r["fxprune_macs_after"] else "DIFFERENT"
            jac = c["removed_channel_jaccard_mean"]
            overlap = ("n/a" if jac is None else
                       f"{jac:.2f} (min {c['removed_channel_jaccard_min']:.2f})")
            lines.append(
                f"  - {r['model']}: MACs after {r['fxprune_macs_after']:,} (fxprune) vs {tp['macs_after']:,} "
                f"(Torch-Pruning), {same_macs}; params {r['fxprune_params_after']:,} vs {tp['params_after']:,}; "
                f"{c['n_params_with_different_shapes']} tensors differ in shape; convs with pruned outputs "
                f"{c['convs_out_pruned_fxprune']} vs {c['convs_out_pruned_torch_pruning']}, same removed count in "
                f"{c['convs_same_removed_count']}/{c['n_convs_compared']}; mean Jaccard of the removed output "
                f"channels per conv {overlap}.")
            if c["params_with_different_shapes"]:
                lines.append(f"    differing tensors (first 20): {', '.join(c['params_with_different_shapes'])}")
    skipped = {r["torch_pruning"]["skipped"] for r in recs if "skipped" in r["torch_pruning"]}
    for why in sorted(skipped):
        lines.append(f"- Torch-Pruning column skipped: {why}.")
    lines += [f"- {n}" for n in result.get("notes", [])]
    return lines


NOTES = [
    "fxprune end-to-end = trace + analyze + L1 plan + rewrite (no validation, no Pipeline fingerprints); "
    "`fxprune.trace` deep-copies the model inside its timing.",
    "Torch-Pruning 'build' = a standalone `tp.DependencyGraph().build_dependency(model, example_inputs=x)`; "
    "'prune' = `MetaPruner(model, x, MagnitudeImportance(p=1), pruning_ratio=0.5, ignored_layers=[fc])` "
    "(which builds its own dependency graph again) + `pruner.step()`, on a fresh deepcopy of the model each "
    "repeat; the deepcopy is not timed (its median is `deepcopy_untimed` in the JSON). The ratio compares "
    "'prune' (not build + prune, which would count the dependency graph twice).",
    "Scores differ by design: fxprune's L1 is the mean |w| of the weights that produce a unit (conv/linear rows), "
    "Torch-Pruning's MagnitudeImportance(p=1) averages |w| over the whole group (producers, BN affine, and the "
    "input columns of the consumers) with mean normalisation, so the chosen channels can differ even where the "
    "pruned layers and counts agree (see the per-model comparison and its Jaccard overlap).",
    "Per-repeat samples, min/max and process CPU times are in the JSON; other jobs may share the CPU.",
]


def _atomic_write(path: Path, text: str) -> None:
    """Create the folder if needed, then write ``text`` atomically (``fxprune.atomic.atomic_write``)."""
    from fxprune.atomic import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def run(models: Sequence[str], repeats: int, warmup: int, torch_pruning: bool, command: str,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    threads = torch.get_num_threads()
    result: dict[str, Any] = {
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(threads),
        "source": source_state(),
        "loadavg_start": _loadavg(),
        "repeats": repeats,
        "warmup": warmup,
        "sparsity": SPARSITY,
        "target": {"model": TARGET_MODEL, "trace_analyze_rewrite_s": TARGET_SECONDS, "tp_ratio": TARGET_RATIO},
        "notes": NOTES,
        "records": [],
    }
    if torch_pruning and torch_pruning_module() is None:
        log("note: torch-pruning is not installed (pip install torch-pruning): skipping its column")
    for name in models:
        log(f"benchmarking {name} ...")
        result["records"].append(bench_model(name, repeats, warmup, torch_pruning, log=log))
    result["loadavg_end"] = _loadavg()
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                    help="torchvision model names (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per model; the median is reported")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per model and tool")
    ap.add_argument("--no-torch-pruning", action="store_true", help="skip the Torch-Pruning column")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where the results go (default: tools/results)")
    ap.add_argument("--name", default="bench_speed",
                    help="basename of the result files, e.g. bench_speed.threads1 (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if not args.name or os.sep in args.name:
        ap.error("--name must be a plain file basename")
    unknown = [m for m in args.models if not callable(getattr(torchvision.models, m, None))]
    if unknown:
        ap.error(f"unknown torchvision model(s): {', '.join(unknown)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = " ".join(shlex.quote(a) for a in ["python", "tools/bench_speed.py", *argv])
    result = run(args.models, args.repeats, args.warmup, not args.no_torch_pruning, command)
    md = render_markdown(result)
    _atomic_write(args.out_dir / f"{args.name}.json", json.dumps(result, indent=2) + "\n")
    _atomic_write(args.out_dir / f"{args.name}.md", md)
    print()
    print(md)
    return result


if __name__ == "__main__":
    main()
