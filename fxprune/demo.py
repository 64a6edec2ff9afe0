"""The default job, offline: analyse, prune, validate and time a bundled model.

    python -m fxprune.demo [--model resnet18] [--method l1] [--sparsity 0.5]

The default model is torchvision's ResNet-18 built with ``weights=None`` and a
fixed seed (nothing is downloaded). It prints the channel-group report, prunes,
checks the result in onnxruntime and prints a before/after table with
onnxruntime CPU latency (median of 20 runs).
"""
from __future__ import annotations

import argparse
import sys

import torch
import torchvision

import fxprune
from fxprune.report import format_table, human
from fxprune.validate import ort_latency, validate


def _report_lines(graph: fxprune.ChannelGraph, limit: int) -> str:
    lines = str(graph).splitlines()
    if len(lines) <= limit:
        return "\n".join(lines)
    return "\n".join(lines[:limit] + [f"  ... ({len(lines) - limit} more lines; print(fxprune.analyze(...)) for all)"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="torchvision model name (default: resnet18)")
    parser.add_argument("--method", default="l1", help="pruning method (default: l1)")
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of units removed (default: 0.5)")
    parser.add_argument("--size", type=int, default=224, help="input height/width (default: 224)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    x = torch.randn(1, 3, args.size, args.size)
    try:
        graph = fxprune.analyze(model, x)
        print(_report_lines(graph, 30), "\n")
        result = fxprune.compile(model, x, method=args.method, sparsity=args.sparsity)
    except fxprune.FxpruneError as exc:
        print(f"fxprune-demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    before = validate(model, (x,), keep_onnx=True)
    after = validate(result.module, (x,), keep_onnx=True)
    lat0, lat1 = ort_latency(before.onnx_bytes, (x,)), ort_latency(after.onnx_bytes, (x,))
    r = result.report
    print(format_table([
        ("params", human(r.params_before), human(r.params_after), f"{r.params_ratio:.1%}"),
        ("MACs", human(r.macs_before), human(r.macs_after), f"{r.macs_ratio:.1%}"),
        ("onnxruntime latency", f"{lat0 * 1e3:.1f} ms", f"{lat1 * 1e3:.1f} ms", f"{lat1 / lat0:.1%}"),
    ], header=(f"{args.model} {args.method} sparsity={args.sparsity}", "before", "after", "after/before")))
    print("\nseconds per pass: " + ", ".join(f"{k} {v:.2f}" for k, v in r.seconds.items()))
    print(r.validation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
