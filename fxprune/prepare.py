"""``fxprune.prepare``: a model made ready for a training-time method (``itpcc``, ``bep``).

    prepared = fxprune.prepare(model, x, method="itpcc", target_macs_ratio=0.5)
    prepared.fit(fxprune.TrainConfig(loader, epochs=3))      # or your own loop:
    #   loss = loss_fn(prepared.module(x), y) + prepared.regularizer()
    #   opt = torch.optim.SGD(prepared.parameter_groups(lr_gates=2e-3), lr=0.03, momentum=0.9)
    result = prepared.finalize()                             # physically smaller, validated

Needs: a model, example inputs and a registered method (``fxprune.prepared.register``;
methods register when ``fxprune.passes`` is imported). Guarantees: see ``fxprune.prepared``.
``method_pass`` builds any method's options (``fxprune.compile`` uses it too).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from torch import nn

from .errors import InputError
from .io import model_source
from .prepared import PREPARED, Prepared, register
from .state import state_of
from .trace import trace

__all__ = ["PREPARED", "Prepared", "method_pass", "prepare", "register", "trained_methods"]


def trained_methods() -> dict[str, type["Prepared"]]:
    """The registered training-time methods (importing ``fxprune.passes`` registers fxprune's)."""
    import fxprune.passes  # noqa: F401

    return PREPARED


def method_pass(method: str, options: dict[str, Any]):
    """Instantiate the pass for ``method`` with ``options`` (unknown ones are an InputError)."""
    from .passes import METHODS

    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
    cls = METHODS[method]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"method {method!r} has no option(s) {', '.join(unknown)}; options: {', '.join(sorted(known))}")
    return cls(**options)


def prepare(model: nn.Module, example_inputs: Any, method: str = "itpcc", *, strict: bool = False,
            leaf_modules=(), concrete_args: dict | None = None, capture: str = "auto", **options: Any) -> Prepared:
    """Trace and analyse a copy of ``model`` and insert ``method``'s gates (see module doc)."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    methods = trained_methods()
    if method not in methods:
        raise InputError(f"prepare() takes a training-time method ({', '.join(sorted(methods))}), got {method!r}; "
                         f"use fxprune.compile for the others")
    opts = method_pass(method, options)
    return _prepare(model, example_inputs, method, opts, strict, leaf_modules, concrete_args, capture)


def _prepare(model: nn.Module, inputs: Any, method: str, opts: Any, strict: bool, leaf_modules,
             concrete_args: dict | None, capture: str = "auto") -> Prepared:
    from .analysis import Analyzer

    start = time.perf_counter()
    gm = trace(model, inputs, leaf_modules=leaf_modules, concrete_args=concrete_args, capture=capture)
    traced = time.perf_counter()
    graph = Analyzer(gm, strict).run()
    state_of(gm).channel_graph = graph
    analysed = time.perf_counter()
    prepared = PREPARED[method](graph, opts, model_source(model), model.training)
    prepared.timings = {"trace": traced - start, "analyze": analysed - traced, **prepared.timings}
    return prepared
