"""Train/eval modes of every submodule, saved and restored by qualified name.

``module.train(flag)`` sets one mode everywhere; models are often mixed (a frozen
BatchNorm in eval inside a model in training). These helpers keep each
submodule's own mode across tracing, shape propagation, rewriting and validation.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


def modes_of(module: nn.Module) -> dict[str, bool]:
    """``{qualified name: training}`` for ``module`` and every submodule ("" is the root)."""
    return {name: m.training for name, m in module.named_modules(remove_duplicate=False)}


def restore_modes(module: nn.Module, modes: dict[str, bool]) -> nn.Module:
    """Give every submodule of ``module`` the mode ``modes`` records under its name; a submodule
    the record does not name (one the rewrite added) takes its parent's mode. Returns ``module``."""
    given: dict[str, bool] = {}
    for name, sub in module.named_modules(remove_duplicate=False):  # parents come before children
        parent = given.get(name.rpartition(".")[0], module.training)
        sub.training = given[name] = modes.get(name, parent)
    return module


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block; every submodule's own mode is restored afterwards."""
    saved = modes_of(module)
    module.eval()
    try:
        yield module
    finally:
        restore_modes(module, saved)
