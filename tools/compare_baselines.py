"""Summarise the reference-baseline run (JSON) and the stopped previous-definition run (log) side by side.

    python tools/compare_baselines.py REF.json PREV.log OUT   # -> OUT.json, OUT.md

A one-off summary for the change of the baselines' definitions (its command is in the results file).
"""
import json, re, statistics, sys
ref_path, prev_log, out = sys.argv[1:4]
ref = json.load(open(ref_path))
rows = {}
for r in ref["runs"]:
    rows.setdefault((r["method"], r["reweight"], r["compression"]), []).append(r["accuracy"])
pat = re.compile(r"^\[\d+/\d+\] (\S+) reweight=(True|False) seed=(\d+): (.*)$")
prev = {}
for line in open(prev_log):
    m = pat.match(line.strip())
    if not m:
        continue
    for cell in m.group(4).split(", "):
        c, acc = cell.split("x ")
        prev.setdefault((m.group(1), m.group(2) == "True", float(c)), []).append(float(acc))
PREVIOUS = {"actgrad": "actgrad:saliency=per_batch", "layer_actgrad": "layer_actgrad:saliency=per_batch",
            "layer_weightnorm": "layer_weightnorm:weights=producing",
            "layer_greedy_fs": "layer_greedy_fs:rescale=false+batches=first"}
comps = ref["compressions"]
old = json.load(open("tools/results/submodular_lenet5.json"))  # the committed table: previous code, seed 0
committed = {}
for r in old["runs"]:
    committed.setdefault((r["method"], r["reweight"], r["compression"]), []).append(r["accuracy"])
def cell(v):
    if not v:
        return "–"
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.1%} ± {sd:.1%} (n={len(v)})"
lines = ["# Reference vs previous baseline definitions: LeNet-5 / Fashion-MNIST, no fine-tuning", "",
         f"Reference rows: `{ref['command']}` (uncommitted working tree on top of 3bbca10, 2026-12-01).",
         "Previous rows: `python tools/bench_submodular.py accuracy --methods \"actgrad:saliency=per_batch,"
         "layer_actgrad:saliency=per_batch,layer_weightnorm:weights=producing,layer_greedy_fs:rescale=false+batches=first\" "
         "--seeds 0,1,2,3,4 --verification 1000` stopped after 14 of 40 runs (CPU shared; deadline), "
         "accuracies taken from its progress log (3 decimals).", "",
         "Committed-table rows: tools/results/submodular_lenet5.json (`python tools/bench_submodular.py accuracy --seeds 0 --verification 1000`, the previous code, seed 0 only).", "",
         f"Scale: {ref['scale']}. Cells: mean ± sd test accuracy over seeds (n = seeds).", "",
         "| method | reweight | definition | " + " | ".join(f"{c:g}x" for c in comps) + " |",
         "|---|---|---|" + "---|" * len(comps)]
summary = []
for method in PREVIOUS:
    for rw in (True, False):
        for name, src, what in ((method, rows, "reference (default)"), (PREVIOUS[method], prev, "previous"),
                                (method, committed, "committed table (previous code)")):
            vals = [src.get((name, rw, float(c)), []) for c in comps]
            if not any(vals):
                continue
            lines.append(f"| {method} | {'yes' if rw else 'no'} | {what}: `{name}` | " + " | ".join(cell(v) for v in vals) + " |")
            summary.append({"method": method, "run_name": name, "definition": what, "reweight": rw,
                            "cells": {str(c): v for c, v in zip(comps, vals)}})
json.dump({"reference": ref_path, "previous_log": prev_log, "summary": summary}, open(out + ".json", "w"), indent=1)
open(out + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
