#!/usr/bin/env python
"""Peak memory of pruning, above the model itself: fxprune vs Torch-Pruning, same run.

    python tools/bench_memory.py                       # -> tools/results/bench_memory.{json,md}
    python tools/bench_memory.py --models resnet18 --out /tmp/bm
    python tools/bench_memory.py --tp-python /tmp/tpvenv/bin/python   # Torch-Pruning from another venv

Each (model, tool) runs in a fresh subprocess: build the model (torchvision, ``weights=None``,
eval), collect garbage, reset the kernel's peak-RSS mark (``/proc/self/clear_refs``), note the
RSS, prune at sparsity 0.5 with L1 magnitude, read the peak RSS (``VmHWM``). Reported: peak RSS
above the RSS before pruning, in MB and as a multiple of the model's size (parameters + buffers).
Tools:

* ``fxprune`` — ``fxprune.compile(model, x, "l1", 0.5, validate=False)`` (trace, analyze, plan, rewrite);
* ``fxprune+validate`` — the same with ONNX export and the onnxruntime check (the default of ``compile``);
* ``torch-pruning`` — ``MetaPruner(model, x, MagnitudeImportance(p=1), pruning_ratio=0.5,
  ignored_layers=[classifier]).step()`` (prunes the model in place), when torch-pruning is
  importable by ``--tp-python`` (default: this interpreter).

Each tool first prunes a toy model in the same process (lazy imports are not counted).
The peak includes the activations of the forward passes each tool runs on a 1x3x224x224 input.
Linux only (procfs). JSON and Markdown written atomically; bad arguments: one ``error:`` line, exit 2.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

MODELS = ["resnet152", "vit_b_16", "vit_l_16"]
TOOLS = ["fxprune", "fxprune+validate", "torch-pruning"]
ROOT = Path(__file__).resolve().parents[1]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _classifier(model):
    import torch.nn as nn

    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return last


def _toy():
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def child(model_name: str, tool: str) -> dict:
    """Run one measurement in this process; returns the record."""
    import torch
    import torchvision

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if tool == "torch-pruning":
        import torch_pruning as tp

        def run(model, x):
            pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                          pruning_ratio=0.5, ignored_layers=[_classifier(model)])
            pruner.step()
            return sum(p.numel() for p in model.parameters())
    else:
        import fxprune

        def run(model, x):
            result = fxprune.compile(model, x, "l1", 0.5, validate=tool == "fxprune+validate")
            return result.report.params_after
    run(_toy(), torch.randn(1, 3, 16, 16))  # warm-up: lazy imports are not the pruning's memory
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    params_after = run(model, x)
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    above = (peak - before) * 1024
    return {"model": model_name, "tool": tool, "model_bytes": size, "peak_above_bytes": above,
            "peak_above_model": above / size, "seconds": seconds, "params_after": params_after}


def measure(model_name: str, tool: str, tp_python: str) -> dict:
    python = tp_python if tool == "torch-pruning" else sys.executable
    if tool == "torch-pruning":
        probe = subprocess.run([python, "-c", "import torch_pruning"], capture_output=True)
        if probe.returncode:
            return {"model": model_name, "tool": tool, "skipped": f"torch-pruning not importable by {python}"}
    proc = subprocess.run([python, str(Path(__file__).resolve()), "--child", model_name, tool],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"model": model_name, "tool": tool, "skipped": f"failed: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(records: list[dict], meta: dict) -> str:
    lines = ["# Peak memory of pruning, above the model", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}; machine: {meta['machine']}",
             f"- torch {meta['torch']}, torch-pruning {meta['torch_pruning']}; fxprune commit {meta['commit']}",
             "- each row: a fresh process; peak RSS (VmHWM) minus RSS just before pruning; L1 at sparsity 0.5, "
             "input 1x3x224x224, weights=None", "",
             "| model | model size | tool | peak above model | × model size | seconds | params after |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in records:
        if "skipped" in r:
            lines.append(f"| {r['model']} | | {r['tool']} | {r['skipped']} | | | |")
            continue
        lines.append(f"| {r['model']} | {r['model_bytes'] / 2**20:.0f} MB | {r['tool']} | "
                     f"{r['peak_above_bytes'] / 2**20:.0f} MB | {r['peak_above_model']:.2f}× | {r['seconds']:.1f} | "
                     f"{r['params_after']:,} |")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--tools", nargs="+", default=TOOLS, choices=TOOLS)
    parser.add_argument("--tp-python", default=sys.executable, help="interpreter that imports torch_pruning")
    parser.add_argument("--out", default=str(ROOT / "tools/results/bench_memory"), help="output path without suffix")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    import torch
    import torchvision

    unknown = [m for m in args.models if not hasattr(torchvision.models, m)]
    if unknown or not Path("/proc/self/clear_refs").exists():
        print(f"error: {'unknown torchvision model(s) ' + ', '.join(unknown) if unknown else 'needs Linux procfs'}",
              file=sys.stderr)
        return 2
    records = []
    for model_name in args.models:
        for tool in args.tools:
            rec = measure(model_name, tool, args.tp_python)
            records.append(rec)
            print(json.dumps(rec), flush=True)
    probe = subprocess.run([args.tp_python, "-c", "import torch_pruning as t; print(t.__version__)"],
                           capture_output=True, text=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    meta = {"command": "python tools/bench_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": f"{os.cpu_count()} CPUs, {platform.machine()}",
            "torch": torch.__version__, "torch_pruning": probe.stdout.strip() or "not installed",
            "commit": commit.stdout.strip() or "?"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out.with_suffix(".json"), json.dumps({"meta": meta, "records": records}, indent=1))
    _write_atomic(out.with_suffix(".md"), markdown(records, meta))
    print(markdown(records, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
