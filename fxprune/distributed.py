"""Thin helpers over ``torch.distributed`` for data-parallel pruning under ``torchrun``.

Nothing here communicates by itself: every function is one or two collectives of
``torch.distributed`` (gloo on CPU, NCCL on GPU). Without an initialised process group of
more than one process every helper is a no-op, so the methods call them unconditionally.

Rules the callers follow (and that make a bug fail instead of hang):

* every rank calls the same collectives in the same order: a check that fails on one rank
  is first agreed on (``raise_together``, ``check_shard``, ``agree``) and then raised on
  every rank as a ``DistributedError``;
* collectives time out: ``init_from_env`` passes ``timeout=`` to ``init_process_group``
  (default ``DEFAULT_TIMEOUT``); gloo enforces it on every collective, NCCL through its
  watchdog (``TORCH_NCCL_ASYNC_ERROR_HANDLING``, on by default), which aborts the process.
* tensors travel on the backend's device (CPU for gloo, the current CUDA device for NCCL)
  and come back on the caller's device.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

from fxprune.errors import DistributedError

DEFAULT_TIMEOUT = timedelta(minutes=10)
"""Collective timeout of ``init_from_env`` (a rank stuck longer than this fails the run)."""

_MESSAGE_BYTES = 512  # an error message travels as a fixed-size byte tensor (truncated)
_DIGEST_WORDS = 4  # a sha256 digest as 4 int64 words


_local_depth = 0  # > 0 inside ``local_only()``


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process (outside ``local_only``)."""
    return _local_depth == 0 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def local_only() -> Iterator[None]:
    """Inside the block fxprune ignores the process group: for pruning on one rank of a
    distributed job (the other ranks do not call fxprune, so no collective may run)."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that prints and writes files."""
    return world()[0] == 0


def init_from_env(backend: str | None = None, timeout: timedelta = DEFAULT_TIMEOUT) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR`` ...).

    Needs: the environment of ``torchrun`` (nothing to do when ``WORLD_SIZE`` is unset or 1).
    ``backend`` defaults to NCCL when CUDA is available, else gloo; with NCCL the process
    uses GPU ``LOCAL_RANK``. Guarantees: returns ``is_distributed()``; a group that is
    already initialised is left as it is.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return is_distributed()
    if not dist.is_available():
        raise DistributedError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timeout)
    return is_distributed()


def close() -> None:
    """Leave the process group (after a barrier), if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def comm_device() -> torch.device:
    """Where the backend's collectives take tensors: the current CUDA device for NCCL, else CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------- reductions and broadcasts

def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks, on ``tensor``'s device and dtype (``tensor`` itself
    in a single process). Every rank must pass a tensor of the same shape and dtype."""
    if not is_distributed():
        return tensor
    buf = tensor.detach().to(comm_device()).contiguous().clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(tensor.device)


def all_reduce_sum_many(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``all_reduce_sum`` of several tensors in one collective (same dtype for all; float64
    keeps counts exact below 2**53). Returns the sums, each on its input's device and shape."""
    if not is_distributed() or not tensors:
        return list(tensors)
    dtype = tensors[0].dtype
    if any(t.dtype != dtype for t in tensors):
        raise DistributedError("all_reduce_sum_many needs tensors of one dtype")
    flat = torch.cat([t.detach().reshape(-1).to(comm_device()) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].view(t.shape).to(t.device))
        start += t.numel()
    return out


def broadcast_tensor(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``tensor`` on every rank (same shape and dtype on every rank needed)."""
    if not is_distributed():
        return tensor
    buf = tensor.detach().to(comm_device()).contiguous().clone()
    dist.broadcast(buf, src=src)
    return buf.to(tensor.device)


def broadcast_bytes(data: bytes, src: int = 0) -> bytes:
    """Rank ``src``'s ``data`` on every rank (the length travels first)."""
    if not is_distributed():
        return data
    size = broadcast_tensor(torch.tensor([len(data)], dtype=torch.int64), src)
    buf = torch.zeros(int(size), dtype=torch.uint8)
    if world()[0] == src:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else buf
    return bytes(broadcast_tensor(buf, src).cpu().numpy().tobytes())


def broadcast_plan(plan: dict[str, list[int]], src: int = 0) -> dict[str, list[int]]:
    """Rank ``src``'s plan (group id -> kept units) on every rank, as JSON (no pickle)."""
    if not is_distributed():
        return plan
    text = json.dumps({g: [int(u) for u in units] for g, units in plan.items()}, sort_keys=True)
    return {g: list(units) for g, units in json.loads(broadcast_bytes(text.encode(), src)).items()}


# ---------------------------------------------------------------- agreement checks

def _gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """``tensor`` of every rank (rank order), on CPU."""
    buf = tensor.to(comm_device()).contiguous()
    out = [torch.empty_like(buf) for _ in range(world()[1])]
    dist.all_gather(out, buf)
    return [t.cpu() for t in out]


def _digest(value: str | bytes) -> torch.Tensor:
    raw = value.encode() if isinstance(value, str) else value
    words = torch.frombuffer(bytearray(hashlib.sha256(raw).digest()), dtype=torch.int64)
    return words.clone()[:_DIGEST_WORDS]


def agree(value: str | bytes, what: str, hint: str = "") -> None:
    """Raise ``DistributedError`` on every rank unless every rank passed the same ``value``.

    One all-gather of a 32-byte digest; the message names the ranks that differ from rank 0.
    """
    if not is_distributed():
        return
    digests = _gather(_digest(value))
    differ = [r for r, d in enumerate(digests) if not torch.equal(d, digests[0])]
    if differ:
        raise DistributedError(f"ranks disagree on {what}: rank(s) {differ} differ from rank 0"
                               + (f"; {hint}" if hint else ""))


def raise_together(error: BaseException | None, what: str) -> None:
    """Make a failure of one rank the failure of all: every rank passes its own error (or None).

    Guarantees: returns only when no rank failed; otherwise every rank raises — a failed rank
    its own error, the others a ``DistributedError`` quoting the first failed rank's message.
    """
    if not is_distributed():
        if error is not None:
            raise error
        return
    text = "" if error is None else f"{type(error).__name__}: {error}"
    raw = text.encode()[:_MESSAGE_BYTES]
    local = torch.zeros(_MESSAGE_BYTES + 1, dtype=torch.uint8)
    local[0] = error is not None
    if raw:
        local[1:1 + len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    failed = [(r, t) for r, t in enumerate(_gather(local)) if int(t[0])]
    if not failed:
        return
    if error is not None:
        raise error
    rank, msg = failed[0][0], bytes(failed[0][1][1:].cpu().numpy().tobytes()).rstrip(b"\0").decode(errors="replace")
    raise DistributedError(f"{what} failed on rank {rank} (ranks {[r for r, _ in failed]} failed): {msg}")


def check_shard(rows: int, what: str) -> None:
    """Raise ``DistributedError`` on every rank when some rank's shard of ``what`` has no rows."""
    if not is_distributed():
        return
    counts = [int(t[0]) for t in _gather(torch.tensor([int(rows)], dtype=torch.int64))]
    empty = [r for r, n in enumerate(counts) if n <= 0]
    if empty:
        raise DistributedError(f"{what}: rank(s) {empty} have an empty shard (rows per rank: {counts}); "
                               f"give every rank at least one batch")


def shard(items: Sequence[Any], rank: int | None = None, size: int | None = None) -> list[Any]:
    """This rank's share of ``items``: every ``size``-th item from position ``rank``."""
    r, n = world()
    r, n = (r if rank is None else rank), (n if size is None else size)
    return list(items)[r::n]


# ---------------------------------------------------------------- fingerprints

def model_structure(model: torch.nn.Module) -> str:
    """The graph's code (for a GraphModule) and every parameter's and buffer's name, shape, dtype."""
    code = getattr(model, "code", type(model).__qualname__)
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return code + "\n" + "\n".join(f"{n} {tuple(t.shape)} {t.dtype}" for n, t in tensors)


def model_values(model: torch.nn.Module) -> bytes:
    """A sha256 of every parameter's and buffer's bytes (copied to CPU one tensor at a time)."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


def options_text(options: Any, skip: Sequence[str] = ("progress",)) -> str:
    """The options of a dataclass pass that decide its result: the fields that take part in
    ``==`` (data, loss functions and caches are ``compare=False``), minus ``skip``."""
    fields = [f for f in dataclasses.fields(options) if f.compare and f.name not in skip]
    return type(options).__qualname__ + "(" + ", ".join(f"{f.name}={getattr(options, f.name)!r}" for f in fields) + ")"


def check_consistent(model: torch.nn.Module, options: Any, what: str) -> None:
    """Raise ``DistributedError`` on every rank unless all ranks hold the same model (graph,
    shapes and weights) and the same options of ``what``; a no-op in a single process."""
    if not is_distributed():
        return
    agree(model_structure(model), f"the model given to {what} (graph or parameter shapes)")
    agree(model_values(model), f"the weights of the model given to {what}",
          "load the same checkpoint (or seed the initialisation) on every rank")
    agree(options_text(options), f"the options of {what}", f"this rank has {options_text(options)}")


def all_reduce_scores(scores: dict[str, Any], rows: int, what: str) -> dict[str, Any]:
    """Per-unit score sums ``{group id: numpy vector}`` summed over the ranks (one collective),
    after ``check_shard(rows, what)``; ``scores`` itself in a single process.

    Needs: every rank passes the same keys in the same order (same model, same groups).
    """
    if not is_distributed():
        return scores
    check_shard(rows, what)
    keys = list(scores)
    agree(repr([(k, len(scores[k])) for k in keys]), f"the groups scored by {what}")
    summed = all_reduce_sum_many([torch.as_tensor(scores[k], dtype=torch.float64) for k in keys])
    return {k: s.cpu().numpy() for k, s in zip(keys, summed)}


def all_reduce_sums(sums: dict[str, torch.Tensor], count: int, what: str) -> tuple[dict[str, torch.Tensor], int]:
    """Per-group sums and the number of samples summed, totalled over the ranks (one collective
    after ``check_shard(count, what)``), each sum on its own device; unchanged in one process.

    For means that must equal one process on the union of the shards: divide after this.
    """
    if not is_distributed():
        return sums, count
    check_shard(count, what)
    keys = list(sums)
    agree(repr([(k, tuple(sums[k].shape)) for k in keys]), f"the groups measured by {what}")
    parts = [sums[k].to(torch.float64) for k in keys]
    summed = all_reduce_sum_many(parts + [torch.tensor([float(count)], dtype=torch.float64, device=
                                                       parts[0].device if parts else "cpu")])
    return {k: s.to(sums[k].dtype) for k, s in zip(keys, summed[:-1])}, int(summed[-1].item())
