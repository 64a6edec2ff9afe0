"""The default job, offline: prune the bundled Fashion-MNIST LeNet-5 and check it.

    python -m fxprune.demo [--method submodular] [--sparsity 0.5]

Loads the bundled checkpoint (LeNet-5 trained by this project on Fashion-MNIST,
89.7% test accuracy) and the 500 bundled test images, prints the channel-group
report, prunes with the data-efficient ``submodular`` method (AsymInChange with
reweighting, no fine-tuning; its calibration data are the first 300 bundled
images, without labels — the least-squares reweighting needs more images than
kept input features, 200 for fc1 here, or it overfits them), validates the
result in onnxruntime and prints accuracy on the other 200 images, parameters, MACs and onnxruntime CPU latency
(median of 50 runs) before and after. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

import fxprune
import fxprune.models as zoo
from fxprune.training.data import bundled
from fxprune.report import format_table, human
from fxprune.validate import ort_latency, validate

CALIBRATION = 300  # bundled images used as calibration data; accuracy is measured on the rest
CHECKPOINT = Path(__file__).resolve().parent / "assets" / "lenet5_fashion_mnist.pt"


def load_bundled_model() -> nn.Module:
    """The bundled LeNet-5 (a weights-only checkpoint: name, kwargs, state_dict)."""
    ckpt = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    model = zoo.get(ckpt["model"]["name"], **ckpt["model"]["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (model(images).argmax(1) == labels).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--method", default="submodular", help="pruning method (fxprune.passes.METHODS)")
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of units removed per group")
    args = parser.parse_args(argv)
    model = load_bundled_model()
    data = bundled()
    images, labels = data.tensors
    x = images[:1]
    calib, images, labels = _batches(images[:CALIBRATION], labels[:CALIBRATION]), images[CALIBRATION:], labels[CALIBRATION:]
    try:
        print(fxprune.analyze(model, x), "\n")
        options = {"data": calib} if _uses_data(args.method) else {}
        result = fxprune.compile(model, x, method=args.method, sparsity=args.sparsity, **options)
    except fxprune.FxpruneError as exc:
        print(f"fxprune-demo: error: {exc}", file=sys.stderr)
        return 2
    lat0 = ort_latency(validate(model, (x,), keep_onnx=True).onnx_bytes, (x,), runs=50)
    lat1 = ort_latency(validate(result.module, (x,), keep_onnx=True).onnx_bytes, (x,), runs=50)
    acc0, acc1 = accuracy(model, images, labels), accuracy(result.module, images, labels)
    r = result.report
    print(format_table([
        (f"accuracy ({len(labels)} held-out bundled test images)", f"{acc0:.1%}", f"{acc1:.1%}", f"{acc1 - acc0:+.1%}"),
        ("params", human(r.params_before), human(r.params_after), f"{r.params_ratio:.1%}"),
        ("MACs", human(r.macs_before), human(r.macs_after), f"{r.macs_ratio:.1%}"),
        ("onnxruntime latency (median of 50)", f"{lat0 * 1e6:.0f} us", f"{lat1 * 1e6:.0f} us", f"{lat1 / lat0:.1%}"),
    ], header=(f"lenet5 / Fashion-MNIST, {args.method}, sparsity {args.sparsity}", "before", "after", "change")))
    print("\nseconds per pass: " + ", ".join(f"{k} {v:.2f}" for k, v in r.seconds.items()))
    print(r.validation)
    print("(no fine-tuning; the submodular table: tools/results/submodular_lenet5.md; "
          "fine-tuning: tools/results/bench_l1_lenet5.md)")
    return 0


def _uses_data(method: str) -> bool:
    from fxprune.passes import METHODS

    cls = METHODS.get(method)
    if cls is None:
        return False
    if hasattr(cls, "needs_data"):
        return bool(cls.needs_data or cls.needs_features or cls.needs_targets)
    return any(f == "data" for f in getattr(cls, "__dataclass_fields__", {}))


def _batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int = 100) -> list:
    return [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(labels), batch_size)]


if __name__ == "__main__":
    sys.exit(main())
