"""Cost accounting for fxprune reports: parameters, MACs and plain-text tables.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (which counts
matmul/conv/attention-like ops only, 2 FLOPs per multiply-accumulate) and are
reported as ``total_flops // 2``. ``fxprune.flops`` adds a formula for every fused
attention kernel and turns off the opaque MultiheadAttention fast path while
counting, so the figure does not depend on which kernel torch picks.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import InputError
from .flops import attention_fast_path_off, flop_counter
from .modes import eval_mode

__all__ = [
    "Cost",
    "count_macs",
    "count_params",
    "eval_mode",
    "format_table",
    "human",
    "measure",
]

_UNITS = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def _as_tuple(example_inputs: object) -> tuple:
    """Accept a single tensor or a tuple/list of inputs; return a tuple."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise InputError(
        f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}"
    )


def count_params(module: torch.nn.Module) -> int:
    """Number of unique parameter elements (shared parameters counted once; no buffers)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def count_macs(module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> int:
    """Multiply-accumulates of one eval-mode forward pass on ``example_inputs``.

    Runs under ``torch.no_grad()``; the module's train/eval flags are restored.
    The count is the same whichever attention kernel runs (see ``fxprune.flops``).
    """
    args = _as_tuple(example_inputs)
    counter = flop_counter()
    with eval_mode(module), torch.no_grad(), attention_fast_path_off(), counter:
        module(*args)
    return int(counter.get_total_flops()) // 2


@dataclass(frozen=True)
class Cost:
    """Static cost of a model: parameter count and MACs for one forward pass."""

    params: int
    macs: int

    def __str__(self) -> str:
        return f"params {human(self.params)}, MACs {human(self.macs)}"


def measure(module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> Cost:
    """Parameter count and MACs of ``module`` on ``example_inputs``."""
    return Cost(params=count_params(module), macs=count_macs(module, example_inputs))


def human(n: float) -> str:
    """Short human-readable number: 512 -> "512", 11689512 -> "11.69M", 1.82e9 -> "1.82G"."""
    value = float(n)
    for scale, suffix in _UNITS:
        scaled = round(abs(value) / scale, 2)
        if scaled >= 1.0:
            sign = "-" if value < 0 else ""
            return f"{sign}{scaled:.2f}{suffix}"
    if value.is_integer():
        return str(int(value))
    return f"{value:.3g}"


def format_table(
    rows: Sequence[Sequence[str]],
    header: Sequence[str] | None = ("", "before", "after"),
) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned.

    ``header=None`` omits the header and its rule line. All rows (and the header)
    must have the same number of cells.
    """
    lines = [tuple(str(c) for c in r) for r in rows]
    if header is not None:
        lines.insert(0, tuple(str(c) for c in header))
    if not lines:
        return ""
    ncols = len(lines[0])
    if any(len(r) != ncols for r in lines):
        raise InputError(f"format_table: every row needs {ncols} cells")
    widths = [max(len(r[i]) for r in lines) for i in range(ncols)]
    out = [_format_row(r, widths) for r in lines]
    if header is not None:
        out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _format_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    """One aligned table row (first cell left-aligned, others right-aligned)."""
    parts = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
    return "  ".join(parts).rstrip()
