"""Calibration and verification batches, checked once against the example inputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch

from fxprune.distributed import check_shard, raise_together
from fxprune.errors import InputError


@dataclass
class Batches:
    """A list of ``(inputs, targets)`` batches held in memory (targets may be None)."""

    batches: list[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]

    @classmethod
    def from_data(cls, data: Iterable | None, example_inputs: tuple[torch.Tensor, ...], *, what: str,
                  max_batches: int | None = None, need_targets: bool = False) -> "Batches":
        """Read ``data`` (batches of inputs, or of ``(inputs, targets)``) and check every shape.

        Under ``torch.distributed`` ``data`` is this rank's shard (``max_batches`` per rank):
        a bad batch or an empty shard on any rank raises on every rank (``DistributedError``
        on the others), so that no rank waits in a later collective.
        """
        out, error = [], None
        try:
            out = _read(data, example_inputs, what, max_batches, need_targets)
        except InputError as exc:
            error = exc
        raise_together(error, f"reading {what}")
        check_shard(sum(b[0][0].shape[0] for b in out), what)
        if not out:
            raise InputError(f"{what} is empty")
        return cls(out)

    @property
    def inputs(self) -> list[tuple[torch.Tensor, ...]]:
        return [b[0] for b in self.batches]

    @property
    def rows(self) -> int:
        return sum(b[0][0].shape[0] for b in self.batches)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _read(data: Iterable | None, example_inputs: tuple[torch.Tensor, ...], what: str, max_batches: int | None,
          need_targets: bool) -> list[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]:
    """The checked batches of ``data`` (at most ``max_batches``); InputError on a bad one."""
    if data is None:
        raise InputError(f"{what} is needed: pass an iterable of (inputs, targets) batches")
    out = []
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        inputs, targets = _split(batch, len(example_inputs))
        _check_shapes(inputs, example_inputs, what, i)
        if need_targets and targets is None:
            raise InputError(f"{what} batch {i} has no targets; this method needs (inputs, targets) batches")
        out.append((inputs, targets))
    return out


def _split(batch: Any, n_inputs: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return (batch,), None
    if isinstance(batch, (tuple, list)):
        if n_inputs == 1 and len(batch) == 2 and isinstance(batch[0], torch.Tensor):
            return (batch[0],), batch[1]
        if len(batch) == 2 and isinstance(batch[0], (tuple, list)):
            return tuple(batch[0]), batch[1]
        if len(batch) == n_inputs and all(isinstance(t, torch.Tensor) for t in batch):
            return tuple(batch), None
    raise InputError(f"a batch must be inputs or (inputs, targets); got {type(batch).__name__}")


def _check_shapes(inputs: tuple[torch.Tensor, ...], example: tuple[torch.Tensor, ...], what: str, i: int) -> None:
    if len(inputs) != len(example):
        raise InputError(f"{what} batch {i} has {len(inputs)} inputs, the model takes {len(example)}")
    for x, ref in zip(inputs, example):
        if not isinstance(x, torch.Tensor) or x.shape[1:] != ref.shape[1:]:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"{what} batch {i} has shape {got}; the example input is "
                             f"{tuple(ref.shape)} (any batch size, same other dims)")
        if x.shape[0] == 0:
            raise InputError(f"{what} batch {i} is empty")
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise InputError(f"{what} batch {i} contains NaN/inf")
