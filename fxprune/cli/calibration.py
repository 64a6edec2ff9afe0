"""Calibration data for ``prune --data``: a dataset name or a folder of ``.pt`` batches.

``fashion-mnist`` (``fxprune.training.data.calibration``) and ``bundled`` (the images shipped
with fxprune) give 1x28x28 images (3x32x32 padded); a folder holds
``(inputs, targets)`` batches saved with ``torch.save``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import CLIError, first_line

DATASETS = ("fashion-mnist", "bundled")
_BATCH = 128  # batch size of the bundled images


def check_data_spec(spec: str | None) -> None:
    """Raise CLIError unless ``spec`` is None, a dataset name or a folder with .pt files."""
    if spec is None or spec in DATASETS:
        return
    path = Path(spec)
    if not path.is_dir():
        raise CLIError(f"--data {spec!r} is neither a dataset name ({', '.join(DATASETS)}) nor a folder; "
                       f"pass one of the names or a folder of .pt files holding (inputs, targets) batches")
    if not any(path.glob("*.pt")):
        raise CLIError(f"--data folder {spec} has no .pt files; put (inputs, targets) batches saved with "
                       f"torch.save((x, y), 'NNN.pt') in it")


def load_data(spec: str, n: int, shape: tuple[int, ...]) -> list[tuple[Any, Any]]:
    """``n`` calibration samples from ``spec`` as ``(inputs, targets)`` batches of ``shape[1:]`` inputs."""
    if spec in DATASETS:
        return _dataset(spec, n, tuple(shape[1:]))
    return _folder(Path(spec), n, shape)


def _dataset(spec: str, n: int, sample: tuple[int, ...]) -> list[tuple[Any, Any]]:
    """``n`` samples of a named dataset, for model inputs of per-sample shape ``sample``."""
    from fxprune.training import data

    if sample not in ((1, 28, 28), (3, 32, 32)):
        raise CLIError(f"--data {spec} gives 1x28x28 (or padded 3x32x32) images but the model input is "
                       f"{'x'.join(map(str, sample))}; pass a folder of matching batches")
    cifar = sample == (3, 32, 32)
    if spec == "fashion-mnist":
        return data.calibration(n, cifar_shape=cifar)
    xs, ys = data.bundled(cifar_shape=cifar).tensors
    xs, ys = xs[:n], ys[:n]
    return [(xs[i:i + _BATCH].contiguous(), ys[i:i + _BATCH]) for i in range(0, len(xs), _BATCH)]


def _folder(folder: Path, n: int, shape: tuple[int, ...]) -> list[tuple[Any, Any]]:
    """The first ``n`` samples of the .pt batches in ``folder`` (in name order)."""
    batches, total = [], 0
    for f in sorted(folder.glob("*.pt")):
        x, y = _read_batch(f, shape)
        take = min(len(x), n - total)
        batches.append((x[:take].float(), y[:take]))
        total += take
        if total >= n:
            break
    return batches


def _read_batch(f: Path, shape: tuple[int, ...]) -> tuple[Any, Any]:
    """One ``(inputs, targets)`` batch file, checked to fit model inputs of ``shape``."""
    import torch

    try:
        batch = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"--data file {f} is not readable ({first_line(exc)}); save batches with "
                       f"torch.save((inputs, targets), path)") from None
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2
            and all(isinstance(t, torch.Tensor) for t in batch)):
        raise CLIError(f"--data file {f} does not hold an (inputs, targets) pair of tensors; save batches "
                       f"with torch.save((inputs, targets), path)")
    x, y = batch
    if tuple(x.shape[1:]) != tuple(shape[1:]):
        raise CLIError(f"--data file {f} has inputs of shape {tuple(x.shape)} but the model input is "
                       f"{shape}; pass batches of the model's input size")
    return x, y
