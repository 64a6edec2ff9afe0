"""Cross-pass state carried on a GraphModule as ``gm.meta["fxprune"]``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx


@dataclass
class State:
    """What passes hand to each other: inputs, the analysis, the plan, timings."""

    example_inputs: tuple[torch.Tensor, ...]  # what the GraphModule takes, positionally in forward's order
    channel_graph: Any = None  # ChannelGraph, once analysed
    plan: dict[str, list[int]] | None = None
    validation: Any = None  # ValidationReport, once validated
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def state_of(gm: torch.nn.Module) -> State | None:
    meta = getattr(gm, "meta", None)
    return meta.get("fxprune") if isinstance(meta, dict) else None


def attach_state(gm: fx.GraphModule, example_inputs: tuple[torch.Tensor, ...]) -> State:
    state = State(example_inputs=tuple(example_inputs))
    gm.meta["fxprune"] = state
    return state
