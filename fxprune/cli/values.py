"""Value parsers for ``fxprune-trace`` options (argparse ``type=`` callables).

Each raises ``argparse.ArgumentTypeError`` with a message that says what was
expected, which argparse turns into the one-line usage error.
"""
from __future__ import annotations

import argparse
import re
from typing import Callable


def float_in(lo: float, hi: float) -> Callable[[str], float]:
    """A parser for a number in ``[lo, hi)``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not lo <= value < hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo:g}, {hi:g}), got {text}")
        return value
    return parse


def int_at_least(lo: int) -> Callable[[str], int]:
    """A parser for an integer ``>= lo``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value
    return parse


def positive_float(text: str) -> float:
    """A number ``> 0``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``1x3x224x224``) -> ``(1, 3, 224, 224)``."""
    parts = [p.strip() for p in re.split(r"[,x]", text.strip())]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(
            f"input shape must be comma-separated positive integers such as 1,3,224,224, got {text!r}")
    return shape


def names(text: str) -> tuple[str, ...]:
    """``"fc, conv1"`` -> ``("fc", "conv1")`` (empty entries dropped)."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def key_value(text: str) -> tuple[str, str]:
    """``"target_macs_ratio=0.5"`` -> ``("target_macs_ratio", "0.5")``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE such as target_macs_ratio=0.5, got {text!r}")
    return key.strip(), value.strip()


def device_name(text: str) -> str:
    """A torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps`` ...), checked for syntax only
    (``available_device`` checks that this machine has it)."""
    import torch

    try:
        torch.device(text.strip())
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a torch device such as cpu, cuda or cuda:0, got {text!r}") from None
    return text.strip()


def available_device(text: str):
    """``torch.device(text)`` when this machine has it; else a CLIError (exit code 2)."""
    import torch

    from .errors import CLIError

    device = torch.device(text)
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    ok = backend is not None and hasattr(backend, "is_available") and backend.is_available()
    if ok and device.index is not None and hasattr(backend, "device_count"):
        ok = device.index < backend.device_count()
    if not ok:
        raise CLIError(f"--device {text}: this machine has no such device; pass --device cpu")
    return device
