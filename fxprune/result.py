"""What a compile returns: ``Result`` (the pruned module, its plan, its ``Report``).

Core: built by ``fxprune.compile`` and by the training-time methods' ``finalize``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from torch import fx

from .report import format_table, human


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
    compensate: bool = True  # constants left by removed units folded into their readers (fxprune.rewrite)

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
        if self.details.get("front_end"):
            lines.append(self.details["front_end"])
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
