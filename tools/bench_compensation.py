#!/usr/bin/env python
"""What exact removal (bias compensation) changes, without fine-tuning.

    python tools/bench_compensation.py                    # -> tools/results/bench_compensation.{json,md}
    python tools/bench_compensation.py --sparsity 0.5 --out /tmp/bc

For each model, ``fxprune.compile(model, x, method="l1", sparsity=S)`` is run twice, with
``compensate=True`` (the default: constants that removed units leave at their readers, e.g.
``sigmoid(0) = 0.5``, are folded into the readers' biases, so the pruned model equals the
original with the removed produce slices zeroed) and ``compensate=False`` (those constants are
dropped). Reported per model: how many readers got a fold, accuracy (or, for an untrained model,
top-1 agreement with the original) and the relative L2 distance of the logits from the original's.

Models:

* ``lenet5`` — the bundled Fashion-MNIST LeNet-5 (ReLU), evaluated on the 500 bundled images;
* ``lenet5_sigmoid`` — the same architecture with sigmoid activations (LeCun's original choice),
  trained here for ``--epochs`` on ``--train-subset`` Fashion-MNIST training images when the
  dataset is installed (``apt-get install dataset-fashion-mnist``), else on the bundled images
  (train == eval, stated in the output), evaluated like ``lenet5``;
* ``mobilenet_v3_small`` — torchvision, ``weights=None`` (hard-swish, hard-sigmoid SE gates),
  seeded random weights with randomised BN statistics; top-1 agreement with the unpruned model on
  ``--images`` random 3x224x224 inputs.

Both JSON and Markdown are written atomically. Bad arguments: one ``error:`` line, exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.demo import load_bundled_model
from fxprune.state import state_of
from fxprune.training import data as fdata


class LeNet5Sigmoid(nn.Module):
    """LeNet-5 (``fxprune.models.lenet5`` layout) with sigmoid activations."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(torch.sigmoid(self.conv1(x)), 2)
        x = F.max_pool2d(torch.sigmoid(self.conv2(x)), 2)
        x = torch.sigmoid(self.fc1(torch.flatten(x, 1)))
        return self.fc3(torch.sigmoid(self.fc2(x)))


def _train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=gen).split(128):
            opt.zero_grad()
            F.cross_entropy(model(images[idx]), labels[idx]).backward()
            opt.step()
    return model.eval()


def _bundled() -> tuple[torch.Tensor, torch.Tensor]:
    ds = fdata.bundled()
    return ds.tensors[0], ds.tensors[1]


def _sigmoid_lenet(epochs: int, subset: int) -> tuple[nn.Module, str]:
    torch.manual_seed(0)
    if fdata.available():
        batches = fdata.calibration(subset, batch_size=subset)
        x, y = batches[0]
        scale = f"trained {epochs} epoch(s) on {subset} Fashion-MNIST training images"
    else:
        x, y = _bundled()
        scale = f"trained {epochs} epoch(s) on the 500 bundled images (dataset not installed: train == eval)"
    return _train(LeNet5Sigmoid(), x, y, epochs), scale


def _mobilenet() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(b) for b in x.split(64)])


def _measure(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None, sparsity: float) -> dict:
    reference = _logits(model, x)
    row = {"reference_accuracy": None if labels is None else float((reference.argmax(1) == labels).float().mean())}
    for compensate in (True, False):
        result = fxprune.compile(model, x[:2], method="l1", sparsity=sparsity, compensate=compensate)
        out = _logits(result.module.eval(), x)
        key = "on" if compensate else "off"
        target = labels if labels is not None else reference.argmax(1)
        row[f"{key}_top1"] = float((out.argmax(1) == target).float().mean())
        row[f"{key}_rel_l2"] = float((out - reference).norm() / reference.norm())
        row[f"{key}_folds"] = sum("folded" in n or "one-channel conv" in n for n in state_of(result.module).notes)
    return row


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    images, labels = _bundled()
    rows = []
    start = time.perf_counter()
    lenet = load_bundled_model()
    rows.append({"model": "lenet5", "metric": "accuracy (500 bundled images)", "scale": "bundled checkpoint",
                 **_measure(lenet, images, labels, args.sparsity)})
    sig, scale = _sigmoid_lenet(args.epochs, args.train_subset)
    rows.append({"model": "lenet5_sigmoid", "metric": "accuracy (500 bundled images)", "scale": scale,
                 **_measure(sig, images, labels, args.sparsity)})
    x = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    rows.append({"model": "mobilenet_v3_small", "metric": f"top-1 agreement with the original ({args.images} "
                 "random inputs)", "scale": "weights=None, seeded, BN stats randomised",
                 **_measure(_mobilenet(), x, None, args.sparsity)})
    return {"command": "python tools/bench_compensation.py " + " ".join(sys.argv[1:]), "sparsity": args.sparsity,
            "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__, "rows": rows}


def markdown(results: dict) -> str:
    lines = [f"# Exact removal: compensate on vs off (l1, sparsity {results['sparsity']}, no fine-tuning)", "",
             f"`{results['command']}` (torch {results['torch']}, {results['seconds']} s)", "",
             "| model | metric | original | compensate on | compensate off | folds | rel. L2 on / off | scale |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        ref = "1.000" if r["reference_accuracy"] is None else f"{r['reference_accuracy']:.3f}"
        lines.append(f"| {r['model']} | {r['metric']} | {ref} | {r['on_top1']:.3f} | {r['off_top1']:.3f} | "
                     f"{r['on_folds']} | {r['on_rel_l2']:.3f} / {r['off_rel_l2']:.3f} | {r['scale']} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=3, help="training epochs of lenet5_sigmoid")
    p.add_argument("--train-subset", type=int, default=10000, help="training images for lenet5_sigmoid")
    p.add_argument("--images", type=int, default=128, help="random inputs for mobilenet_v3_small")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="tools/results/bench_compensation")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 < args.sparsity < 1.0 or args.epochs < 1 or args.images < 1 or args.train_subset < 1:
        print("bench_compensation.py: error: need 0 < --sparsity < 1 and positive --epochs/--images/--train-subset",
              file=sys.stderr)
        return 2
    from fxprune.atomic import atomic_write

    results = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(out) + ".json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    atomic_write(str(out) + ".md", lambda tmp: Path(tmp).write_text(markdown(results)))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
