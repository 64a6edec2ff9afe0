"""Validate: export to ONNX, run onnxruntime, compare with the GraphModule.

Needs: a GraphModule with state (example inputs). Guarantees: ``state.validation``
holds the report, or ``ValidationError`` is raised with the max abs/rel error; NaN/inf
outputs are a ``NonFiniteOutputError`` saying whether the model before pruning (the
analysed original) already produces them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import fx

from fxprune.pipeline import Pass, require_state
from fxprune.validate import NonFiniteOutputError, restate_non_finite, validate


@dataclass(frozen=True)
class Validate(Pass):
    rtol: float = 1e-4
    name: ClassVar[str] = "validate"

    def run(self, gm: fx.GraphModule) -> fx.GraphModule:
        state = require_state(gm, self.name)
        try:
            state.validation = validate(gm, state.example_inputs, rtol=self.rtol)
        except NonFiniteOutputError as exc:
            original = state.channel_graph.gm if state.channel_graph is not None else None
            raise restate_non_finite(exc, original, state.example_inputs) from None
        return gm
