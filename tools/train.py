#!/usr/bin/env python
"""Train a zoo model on Fashion-MNIST; also the training helpers the benchmarks import.

    python tools/train.py lenet5                                   # -> checkpoints/lenet5.{pt,json}
    python tools/train.py bep_cnn --epochs 6 --threads 1     # busy shared CPU: 1 thread is faster
    python tools/train.py resnet20 --cifar-shape --optimizer sgd --lr 0.1 --weight-decay 5e-4
    python tools/train.py lenet5 --data bundled --epochs 1 --out /tmp/smoke.pt   # no data files

The model is ``fxprune.models.get(MODEL, in_channels=1|3, num_classes=10)`` (3 channels and
32x32 images with ``--cifar-shape``). Each epoch shows a tqdm bar, then evaluates verification
and test accuracy. At the end it writes, atomically,

* ``--out`` (default ``checkpoints/MODEL.pt``): ``{"model": {"name", "kwargs"}, "state_dict",
  "meta"}`` with only tensors and plain Python values, so ``torch.load(path, weights_only=True)``
  reads it and :func:`load_checkpoint` rebuilds the model without pickled code;
* the same path with ``.json``: the curve (per-epoch loss, train/verify/test accuracy, seconds,
  learning rate), device, threads, arguments and final accuracies.

Importable (``importlib`` or ``sys.path``): :func:`train` (this tool's options on the one loop,
``fxprune.training.train_loop``), :func:`evaluate` (``fxprune.training.evaluate``), :func:`finetune`
(any ``nn.Module``, including a pruned ``torch.fx.GraphModule``), :func:`save_checkpoint`,
:func:`load_checkpoint`. Bad arguments and missing data end with one ``train.py: error: ...``
line and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from fxprune.training import Hook, TrainConfig, evaluate, train_loop

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "none")
CHECKPOINT_FORMAT = 1


# ======================================================================= helpers


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU; anything else as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    return device


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def make_optimizer(params: Iterable[torch.Tensor], name: str = "adam", lr: float = 1e-3,
                   momentum: float = 0.9, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD (Nesterov when ``momentum > 0``), Adam or AdamW."""
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, total_steps: int
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LR factor: cosine to 0, step (x0.1 at 50% and 75%), or constant."""
    total = max(1, total_steps)
    if schedule == "cosine":
        fn = lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total))  # noqa: E731
    elif schedule == "step":
        fn = lambda s: 0.1 ** ((s >= 0.5 * total) + (s >= 0.75 * total))  # noqa: E731
    elif schedule == "none":
        fn = lambda s: 1.0  # noqa: E731
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return torch.optim.lr_scheduler.LambdaLR(opt, fn)


def _hflip(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip.view(-1, *[1] * (x.dim() - 1)).to(x.device), x.flip(-1), x)


class _Flipped:
    """``loader`` with half of each batch's images flipped horizontally (same length)."""

    def __init__(self, loader: Iterable, gen: torch.Generator | None):
        self.loader, self.gen = loader, gen

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self):
        for x, y in self.loader:
            yield _hflip(x, self.gen), y


class _EpochHook(Hook):
    """Steps the tool's LR schedule after every optimizer step; adds ``train_acc`` and
    ``<name>_acc`` per ``eval_loaders`` entry to each epoch's record, logs it, calls ``on_epoch``."""

    name = "tool"

    def __init__(self, sched: list, eval_loaders: Mapping[str, Iterable], device: torch.device,
                 epochs: int, log: Callable[[str], None] | None, on_epoch: Callable[[dict], None] | None):
        self.sched, self.eval_loaders, self.device = sched, eval_loaders, device
        self.epochs, self.log, self.on_epoch, self.model = epochs, log, on_epoch, None

    def after_step(self, step: int, info: dict[str, Any] | None = None) -> None:
        self.sched[0].step()

    def end_epoch(self, record: dict[str, Any]) -> None:
        record.pop(self.name, None)
        record["train_acc"] = record["acc"]
        for name, loader in self.eval_loaders.items():
            record[f"{name}_acc"] = evaluate(self.model, loader, self.device)
        if self.log is not None:
            self.log("epoch {epoch}/{n}: loss {loss:.4f} train {train_acc:.4f}".format(n=self.epochs, **record)
                     + "".join(f" {k[:-4]} {v:.4f}" for k, v in record.items()
                               if k.endswith("_acc") and k != "train_acc"))
        if self.on_epoch is not None:
            self.on_epoch(record)


def train(model: nn.Module, train_loader: Iterable, *, epochs: int = 10, optimizer: str = "adam",
          lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0,
          schedule: str = "cosine", device: str | torch.device | None = "auto",
          eval_loaders: Mapping[str, Iterable] | None = None, label_smoothing: float = 0.0,
          hflip: bool = False, seed: int | None = None, progress: bool = True,
          log: Callable[[str], None] | None = print,
          on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train ``model`` in place with cross-entropy (``fxprune.training.train_loop``); returns
    one record per epoch.

    Each record has ``epoch, loss`` (mean training loss), ``train_acc`` (on the fly, with
    dropout and augmentation active), ``<name>_acc`` for every ``eval_loaders`` entry (e.g.
    ``{"verify": ..., "test": ...}``), ``lr`` (at the epoch's end) and ``seconds`` (training +
    evaluation). ``hflip`` flips half of each batch horizontally. The model is moved to
    ``device`` and left there, in train mode.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    dev = pick_device(device)
    model.to(dev).train()
    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = 1
    sched: list = []  # the schedule of the optimizer train_loop builds (it steps it, not train_loop)

    def build(groups: list[dict], base_lr: float) -> torch.optim.Optimizer:
        opt = make_optimizer([p for g in groups for p in g["params"]], optimizer, base_lr, momentum, weight_decay)
        for g in opt.param_groups:
            g["fixed_lr"] = True  # train_loop leaves the lr to this tool's schedule
        sched.append(make_scheduler(opt, schedule, epochs * steps_per_epoch))
        return opt

    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    loader = _Flipped(train_loader, gen) if hflip else train_loader
    config = TrainConfig(loader, loss_fn=nn.CrossEntropyLoss(label_smoothing=label_smoothing), epochs=epochs,
                         optimizer=build, lr=lr, schedule="none", device=dev, progress=progress, log=lambda line: None)
    hook = _EpochHook(sched, eval_loaders or {}, dev, epochs, log, on_epoch)
    hook.model = model
    history = train_loop(model, config, hooks=[hook]) if epochs else []
    model.train()
    return history


def finetune(model: nn.Module, loader: Iterable, epochs: int = 1, lr: float = 1e-3, *,
             optimizer: str = "adam", schedule: str = "cosine", momentum: float = 0.9,
             weight_decay: float = 0.0, device: str | torch.device | None = None,
             progress: bool = False, log: Callable[[str], None] | None = None, **kwargs) -> nn.Module:
    """Fine-tune any ``nn.Module`` (e.g. a pruned ``torch.fx.GraphModule``) in place; returns it.

    ``device`` defaults to the model's current device. Extra keyword arguments go to
    :func:`train` (``eval_loaders``, ``hflip``, ``label_smoothing``, ``seed``, ...). The model
    is returned in eval mode.
    """
    dev = _model_device(model) if device is None else device
    train(model, loader, epochs=epochs, optimizer=optimizer, lr=lr, momentum=momentum,
          weight_decay=weight_decay, schedule=schedule, device=dev, progress=progress, log=log,
          **kwargs)
    return model.eval()


# ==================================================================== checkpoints


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Create the folder if needed, then write atomically (``fxprune.io.atomic_write``)."""
    from fxprune.io import atomic_write

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, write)


def save_checkpoint(path: str, model: nn.Module, name: str, kwargs: Mapping[str, Any],
                    meta: Mapping[str, Any] | None = None) -> None:
    """Atomically write ``{"format", "model": {"name", "kwargs"}, "state_dict", "meta"}``.

    ``kwargs`` and ``meta`` must hold plain values (numbers, strings, lists, dicts) so that
    ``torch.load(path, weights_only=True)`` can read the file.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {"format": CHECKPOINT_FORMAT, "model": {"name": name, "kwargs": dict(kwargs)},
            "state_dict": state, "meta": dict(meta or {})}
    _atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a zoo model from a :func:`save_checkpoint` file; returns ``(model.eval(), ckpt)``."""
    import fxprune.models as zoo

    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    model = zoo.get(ckpt["model"]["name"], **ckpt["model"]["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def write_json(path: str, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    _atomic_write(path, write)


def json_path(checkpoint: str) -> str:
    """``checkpoints/x.pt`` -> ``checkpoints/x.json``."""
    root, ext = os.path.splitext(checkpoint)
    return (root if ext else checkpoint) + ".json"


# ============================================================================ CLI


class UsageError(ValueError):
    """A bad command-line argument found after parsing (unknown model, no CUDA, ...)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2
        self.exit(2, f"train.py: error: {message}\n")


def _positive(kind):
    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {s!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v
    return parse


def _non_negative_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a float, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="train.py", description="Train an fxprune zoo model on Fashion-MNIST.")
    p.add_argument("model", help="zoo name (fxprune.models.list()), e.g. lenet5, bep_cnn")
    p.add_argument("--epochs", type=_positive(int), default=10)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    p.add_argument("--lr", type=_positive(float), default=None,
                   help="default 1e-3 for adam/adamw, 0.05 for sgd")
    p.add_argument("--momentum", type=_non_negative_float, default=0.9, help="sgd only")
    p.add_argument("--weight-decay", type=_non_negative_float, default=0.0)
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    p.add_argument("--batch-size", type=_positive(int), default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=_positive(int), default=None,
                   help="train on this many (seeded) training images")
    p.add_argument("--cifar-shape", action="store_true",
                   help="3x32x32 inputs (2 px padding, channel repeat) for CIFAR-shaped models")
    p.add_argument("--hflip", action="store_true", help="random horizontal flips while training")
    p.add_argument("--label-smoothing", type=_non_negative_float, default=0.0)
    p.add_argument("--out", default=None, help="checkpoint path (default checkpoints/MODEL.pt)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=_positive(int), default=None, help="torch.set_num_threads; on a shared, oversubscribed CPU 1 is often several "
                   "times faster than the default")
    p.add_argument("--data", choices=("full", "bundled"), default="full",
                   help="bundled: the 500 bundled test images for train AND eval (smoke tests only)")
    p.add_argument("--data-root", default=None, help="folder with the IDX files (else $FXPRUNE_DATA, "
                   "then /usr/share/datasets/fashion-mnist)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


def _data(args) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from fxprune.training import data

    if args.data == "bundled":
        ds = data.bundled(cifar_shape=args.cifar_shape)
        gen = torch.Generator().manual_seed(args.seed)
        return {"train": DataLoader(ds, batch_size=args.batch_size, shuffle=True, generator=gen),
                "eval": {"test": DataLoader(ds, batch_size=512)}}
    tr, ve, te = data.loaders(args.batch_size, cifar_shape=args.cifar_shape, seed=args.seed,
                              root=args.data_root, train_subset=args.train_subset)
    return {"train": tr, "eval": {"verify": ve, "test": te}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train per ``args`` (from :func:`build_parser`), write checkpoint + JSON; return the summary.

    Raises :class:`UsageError` for bad arguments and ``fxprune.training.data.DataError`` for missing data,
    both before any training.
    """
    import fxprune.models as zoo
    from fxprune.training import data

    if args.threads:
        torch.set_num_threads(args.threads)
    if not hasattr(zoo, "get"):
        raise UsageError("fxprune.models has no get() yet (the model zoo is not installed)")
    names = list(zoo.list()) if hasattr(zoo, "list") else []
    if names and args.model not in names:
        raise UsageError(f"unknown model {args.model!r}; choose from {', '.join(names)}")
    lr = args.lr if args.lr is not None else (0.05 if args.optimizer == "sgd" else 1e-3)
    try:
        device = pick_device(args.device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.data == "bundled" and args.train_subset is not None:
        raise UsageError("--train-subset does not apply to --data bundled")
    out = args.out or os.path.join("checkpoints", f"{args.model}.pt")
    loaders = _data(args)  # before building the model: missing data fails fast
    kwargs = {"in_channels": 3 if args.cifar_shape else 1, "num_classes": 10}
    torch.manual_seed(args.seed)
    model = zoo.get(args.model, **kwargs)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {n_params:,} parameters, {len(loaders['train'].dataset):,} training images, "
          f"device {device}, {torch.get_num_threads()} threads, lr {lr}", flush=True)
    t0 = time.perf_counter()
    history = train(model, loaders["train"], epochs=args.epochs, optimizer=args.optimizer, lr=lr,
                    momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
                    device=device, eval_loaders=loaders["eval"], label_smoothing=args.label_smoothing,
                    hflip=args.hflip, seed=args.seed, progress=not args.no_progress,
                    log=lambda s: print(s, flush=True))
    seconds = time.perf_counter() - t0
    final = history[-1]
    summary = {
        "model": args.model, "kwargs": kwargs, "parameters": n_params, "epochs": args.epochs,
        "test_acc": final.get("test_acc"), "verify_acc": final.get("verify_acc"),
        "seconds": seconds, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "data": args.data, "cifar_shape": args.cifar_shape, "lr": lr,
        "args": vars(args), "history": history, "checkpoint": out,
    }
    meta = {k: summary[k] for k in ("epochs", "test_acc", "verify_acc", "seconds", "device", "data",
                                    "cifar_shape", "lr")}
    meta.update(optimizer=args.optimizer, schedule=args.schedule, seed=args.seed,
                normalize={"mean": data.MEAN, "std": data.STD})
    save_checkpoint(out, model, args.model, kwargs, meta)
    write_json(json_path(out), summary)
    print(f"wrote {out} ({os.path.getsize(out) / 1024:.0f} KiB) and {json_path(out)}; "
          f"test accuracy {final.get('test_acc', float('nan')):.4f} in {seconds:.0f}s", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fxprune.errors import FxpruneError

    try:
        run(args)
    except (UsageError, FxpruneError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
