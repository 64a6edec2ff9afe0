"""``fxprune.compile``: trace -> analyze -> method -> rewrite -> validate, in one call."""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from .errors import InputError
from .io import model_source
from .pipeline import Pipeline
from .report import count_macs, count_params, format_table, human
from .state import state_of
from .trace import as_input_tuple, trace


@dataclass
class GroupReport:
    id: str
    units: int
    kept: int

    @property
    def removed(self) -> int:
        return self.units - self.kept


@dataclass
class Report:
    """What a compile did: costs before/after, per-group kept/removed, seconds per pass."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    groups: list[GroupReport] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    validation: str | None = None
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # method-specific (itpcc: target, reached, log)

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["macs_ratio"], d["params_ratio"] = self.macs_ratio, self.params_ratio
        return d

    def __str__(self) -> str:
        rows = [
            ("params", human(self.params_before), human(self.params_after), f"{self.params_ratio:.1%}"),
            ("MACs", human(self.macs_before), human(self.macs_after), f"{self.macs_ratio:.1%}"),
        ]
        lines = [format_table(rows, header=("", "before", "after", "after/before"))]
        pruned = [g for g in self.groups if g.removed]
        lines.append(f"groups pruned: {len(pruned)} of {len(self.groups)} "
                     f"({sum(g.removed for g in pruned)} units removed)")
        lines.append("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in self.seconds.items()))
        if self.validation:
            lines.append(self.validation)
        if self.details.get("summary"):
            lines.append(self.details["summary"])
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


@dataclass
class Result:
    """``module`` (the pruned GraphModule), ``plan`` (kept units per group, JSON-able), ``report``."""

    module: fx.GraphModule
    plan: dict[str, list[int]]
    report: Report
    graph: Any  # the ChannelGraph of the original model
    source: dict[str, Any] = field(default_factory=dict)  # how to rebuild the original (fxprune.save)
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)

    def plan_json(self) -> str:
        return json.dumps(self.plan, sort_keys=True)


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


def compile(model: nn.Module, example_inputs: Any, method: str = "l1", sparsity: float = 0.5, *,
            validate: bool = True, rtol: float = 1e-4, strict: bool = False, leaf_modules=(),
            concrete_args: dict | None = None, callback=None, **options: Any) -> Result:
    """Prune ``model`` with ``method`` and return the smaller, validated GraphModule.

    ``options`` go to the method (``scope``, ``round_to``, ``ignore``, ``data``,
    ``loss_fn``, ``seed`` ...). The user's model is not modified and keeps its mode;
    the returned module is in the same train/eval mode.
    """
    from .passes import Analyze, Rewrite, Validate
    from .prepare import compile_trained, trained_methods

    if method in trained_methods():  # prepare -> train -> finalize -> fine-tune -> validate
        return compile_trained(model, example_inputs, method, {"sparsity": sparsity, **options}, validate=validate,
                               rtol=rtol, strict=strict, leaf_modules=leaf_modules,
                               concrete_args=concrete_args, callback=callback)
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = as_input_tuple(example_inputs)
    chosen = method_pass(method, {"sparsity": sparsity, **options})
    was_training = model.training
    start = time.perf_counter()
    gm = trace(model, inputs, leaf_modules=leaf_modules, concrete_args=concrete_args)
    state_of(gm).timings["trace"] = time.perf_counter() - start
    before = _cost(gm, inputs)
    passes = [Analyze(strict=strict), chosen, Rewrite()] + ([Validate(rtol=rtol)] if validate else [])
    out = Pipeline(passes, callback=callback)(gm).graph_module
    state = state_of(out)
    after = _cost(out, inputs)
    out.train(was_training)
    report = Report(before[0], after[0], before[1], after[1],
                    groups=[GroupReport(g.id, g.units, len(state.plan.get(g.id, range(g.units))))
                            for g in state.channel_graph.prunable_groups],
                    seconds=dict(state.timings),
                    validation=str(state.validation) if state.validation is not None else None)
    if not state.channel_graph.prunable_groups:
        report.warnings.append("nothing is prunable in this model: returned unchanged; see fxprune.analyze")
    return Result(out, state.plan, report, state.channel_graph, model_source(model),
                  [tuple(x.shape) for x in inputs])


def _cost(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    return count_params(gm), count_macs(gm, inputs)
