"""``fxprune.compile``: trace -> analyze -> method -> rewrite -> validate, in one call.

A training-time method (``trained_methods``) goes through ``compile_trained``: prepare -> fit
(pruning phase) -> finalize (fold + rewrite) -> fine-tune -> validate.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.infra.pass_base import PassResult

from .modes import modes_of, restore_modes
from .errors import InputError
from .io import model_source
from .pipeline import Pipeline
from .prepare import _prepare, method_pass, trained_methods
from .report import count_macs, count_params
from .result import GroupReport, Report, Result
from .state import state_of
from .inputs import split_inputs
from .trace import trace
from .training import finetune
from .validate import validate as onnx_validate

__all__ = ["GroupReport", "Report", "Result", "compile", "compile_trained", "method_pass"]


def compile(model: nn.Module, example_inputs: Any, method: str = "l1", sparsity: float = 0.5, *,
            validate: bool = True, rtol: float = 1e-4, strict: bool = False, leaf_modules=(),
            concrete_args: dict | None = None, callback=None, compensate: bool = True, capture: str = "auto",
            **options: Any) -> Result:
    """Prune ``model`` with ``method`` and return the smaller, validated GraphModule.

    ``capture`` picks the front end (``fxprune.trace``): ``"auto"`` (torch.fx, then
    torch.export where fx fails), ``"fx"`` or ``"export"``; the report says which ran and why.

    ``options`` go to the method (``scope``, ``round_to``, ``ignore``, ``data``,
    ``loss_fn``, ``seed`` ...). The user's model is not modified and keeps its mode;
    the returned module is in the same train/eval mode. ``compensate=False`` drops the
    constants removed units leave at their readers instead of folding them (``fxprune.rewrite``).
    """
    from .passes import Analyze, Rewrite, Validate

    if method in trained_methods():  # prepare -> train -> finalize -> fine-tune -> validate
        return compile_trained(model, example_inputs, method, {"sparsity": sparsity, **options}, validate=validate,
                               rtol=rtol, strict=strict, leaf_modules=leaf_modules,
                               concrete_args=concrete_args, callback=callback, capture=capture)
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    split_inputs(example_inputs)
    chosen = method_pass(method, {"sparsity": sparsity, **options})
    modes = modes_of(model)
    start = time.perf_counter()
    gm = trace(model, example_inputs, leaf_modules=leaf_modules, concrete_args=concrete_args, capture=capture)
    state_of(gm).timings["trace"] = time.perf_counter() - start
    inputs = state_of(gm).example_inputs  # in forward's order, as the GraphModule takes them
    before = _cost(gm, inputs)
    passes = [Analyze(strict=strict), chosen, Rewrite(compensate=compensate)]
    passes += [Validate(rtol=rtol)] if validate else []
    out = Pipeline(passes, callback=callback)(gm).graph_module
    state = state_of(out)
    after = _cost(out, inputs)
    restore_modes(out, modes)
    report = Report(before[0], after[0], before[1], after[1],
                    groups=[GroupReport(g.id, g.units, len(state.plan.get(g.id, range(g.units))))
                            for g in state.channel_graph.prunable_groups],
                    seconds=dict(state.timings),
                    validation=str(state.validation) if state.validation is not None else None,
                    compensate=compensate)
    report.details["front_end"] = front_end_of(state.notes)
    if not state.channel_graph.prunable_groups:
        report.warnings.append("nothing is prunable in this model: returned unchanged; see fxprune.analyze")
    return Result(out, state.plan, report, state.channel_graph, model_source(model),
                  [tuple(x.shape) for x in inputs])


def front_end_of(notes: list[str]) -> str | None:
    """The ``front end: ...`` note ``fxprune.trace`` leaves (None when absent)."""
    return next((n for n in notes if n.startswith("front end:")), None)


def _cost(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    return count_params(gm), count_macs(gm, inputs)


def compile_trained(model: nn.Module, example_inputs: Any, method: str, options: dict[str, Any], *,
                    validate: bool = True, rtol: float = 1e-4, strict: bool = False, leaf_modules=(),
                    concrete_args: dict | None = None, callback=None, capture: str = "auto") -> Any:
    """``fxprune.compile`` for a training-time method (see module doc); returns a Result."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    split_inputs(example_inputs)
    opts = method_pass(method, options)
    config = opts.train_config()
    prepared = _prepare(model, example_inputs, method, opts, strict, leaf_modules, concrete_args, capture)
    inputs = prepared.example_inputs  # in forward's order, as the GraphModule takes them
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
    restore_modes(result.module, modes_of(model))
    return result


def _notify(callback, name: str, gm: fx.GraphModule, seconds: float) -> None:
    if callback is not None:
        callback(name, PassResult(gm, True), seconds)
