"""``fxprune.prepare``: a model made ready for a training-time method (``itpcc``; ``bep`` later).

    prepared = fxprune.prepare(model, x, method="itpcc", target_macs_ratio=0.5)
    prepared.fit(fxprune.TrainConfig(loader, epochs=3))      # or your own loop:
    #   loss = loss_fn(prepared.module(x), y) + prepared.regularizer()
    #   opt = torch.optim.SGD(prepared.parameter_groups(lr_gates=2e-3), lr=0.03, momentum=0.9)
    result = prepared.finalize()                             # physically smaller, validated

Needs: a model, example inputs and a registered method (``register``; methods register
when ``fxprune.passes`` is imported). Guarantees: ``Prepared.module`` is a traced copy
with the method's learnable gates; the user's model is never modified; ``finalize``
returns a ``fxprune.Result`` (like ``compile``) and can be called once.
``compile_trained`` is ``fxprune.compile`` for these methods: prepare -> fit (pruning
phase) -> finalize (fold + rewrite) -> fine-tune (gates gone: the pruned model) -> validate.
"""
from __future__ import annotations

import time
from typing import Any, Callable, ClassVar

import torch
from torch import fx, nn
from torch.fx.passes.infra.pass_base import PassResult

from .errors import InputError
from .io import model_source
from .state import state_of
from .trace import as_input_tuple, trace
from .training import TrainConfig, finetune
from .validate import validate as onnx_validate

PREPARED: dict[str, type["Prepared"]] = {}


def register(name: str) -> Callable[[type["Prepared"]], type["Prepared"]]:
    """Class decorator: ``prepare(..., method=name)`` builds this ``Prepared`` subclass."""
    def deco(cls: type["Prepared"]) -> type["Prepared"]:
        cls.method = name
        PREPARED[name] = cls
        return cls
    return deco


def trained_methods() -> dict[str, type["Prepared"]]:
    """The registered training-time methods (importing ``fxprune.passes`` registers fxprune's)."""
    import fxprune.passes  # noqa: F401

    return PREPARED


class Prepared:
    """A traced copy of a model with a method's learnable gates; see the module doc.

    Subclasses set ``module`` and implement ``regularizer``, ``parameter_groups``,
    ``fit`` and ``finalize``; ``options_class`` is the method's options dataclass.
    """

    method: ClassVar[str] = ""
    options_class: ClassVar[type] = object

    def __init__(self, graph: Any, options: Any, source: dict | None = None, was_training: bool = False):
        self.graph = graph
        self.options = options
        self.source = dict(source or {})
        self.was_training = was_training
        self.example_inputs: tuple[torch.Tensor, ...] = tuple(state_of(graph.gm).example_inputs)
        self.module: fx.GraphModule | None = None
        self.history: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self._finalized = False

    @property
    def finalized(self) -> bool:
        return self._finalized

    def check_open(self, what: str) -> None:
        if self._finalized:
            raise InputError(f"{what}: finalize() was already called on this prepared model; "
                             f"call fxprune.prepare again to start over")

    def regularizer(self) -> torch.Tensor:
        raise NotImplementedError

    def parameter_groups(self, **kwargs: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    def fit(self, config: TrainConfig) -> list[dict[str, Any]]:
        raise NotImplementedError

    def finalize(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "finalized" if self._finalized else "open"
        return f"<{type(self).__name__} method={self.method!r} {state}>"


def _options(method: str, options: dict[str, Any]) -> Any:
    from .api import method_pass

    return method_pass(method, options)


def prepare(model: nn.Module, example_inputs: Any, method: str = "itpcc", *, strict: bool = False,
            leaf_modules=(), concrete_args: dict | None = None, **options: Any) -> Prepared:
    """Trace and analyse a copy of ``model`` and insert ``method``'s gates (see module doc)."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    methods = trained_methods()
    if method not in methods:
        raise InputError(f"prepare() takes a training-time method ({', '.join(sorted(methods))}), got {method!r}; "
                         f"use fxprune.compile for the others")
    opts = _options(method, options)
    return _prepare(model, as_input_tuple(example_inputs), method, opts, strict, leaf_modules, concrete_args)


def _prepare(model: nn.Module, inputs: tuple, method: str, opts: Any, strict: bool, leaf_modules,
             concrete_args: dict | None) -> Prepared:
    from .analysis import Analyzer

    start = time.perf_counter()
    gm = trace(model, inputs, leaf_modules=leaf_modules, concrete_args=concrete_args)
    traced = time.perf_counter()
    graph = Analyzer(gm, strict).run()
    state_of(gm).channel_graph = graph
    analysed = time.perf_counter()
    prepared = PREPARED[method](graph, opts, model_source(model), model.training)
    prepared.timings = {"trace": traced - start, "analyze": analysed - traced, **prepared.timings}
    return prepared


def compile_trained(model: nn.Module, example_inputs: Any, method: str, options: dict[str, Any], *,
                    validate: bool = True, rtol: float = 1e-4, strict: bool = False, leaf_modules=(),
                    concrete_args: dict | None = None, callback=None) -> Any:
    """``fxprune.compile`` for a training-time method (see module doc); returns a Result."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = as_input_tuple(example_inputs)
    opts = _options(method, options)
    config = opts.train_config()
    prepared = _prepare(model, inputs, method, opts, strict, leaf_modules, concrete_args)
    _notify(callback, "analyze", prepared.graph.gm, prepared.timings["analyze"])
    prepared.fit(config)
    _notify(callback, method, prepared.module, prepared.timings.get(method, 0.0))
    result = prepared.finalize(validate=False)
    _notify(callback, "rewrite", result.module, result.report.seconds.get("rewrite", 0.0))
    report = result.report
    if config.finetune_epochs:
        start = time.perf_counter()
        report.details["finetune"] = finetune(result.module, config)
        report.seconds["finetune"] = time.perf_counter() - start
        _notify(callback, "finetune", result.module, report.seconds["finetune"])
    result.module.cpu()
    if validate:
        start = time.perf_counter()
        state_of(result.module).validation = onnx_validate(result.module.eval(), inputs, rtol=rtol)
        report.seconds["validate"] = time.perf_counter() - start
        report.validation = str(state_of(result.module).validation)
        _notify(callback, "validate", result.module, report.seconds["validate"])
    state = state_of(result.module)
    state.channel_graph = prepared.graph
    state.timings = dict(report.seconds)
    result.module.train(model.training)
    return result


def _notify(callback, name: str, gm: fx.GraphModule, seconds: float) -> None:
    if callback is not None:
        callback(name, PassResult(gm, True), seconds)
