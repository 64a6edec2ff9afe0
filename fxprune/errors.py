"""The one error hierarchy of fxprune.

Every failure fxprune reports is an ``FxpruneError``; callers can catch that one
class. ``PassError`` wraps an unexpected exception raised inside a pass, naming the
pass and the passes that ran before it.
"""
from __future__ import annotations


class FxpruneError(Exception):
    """Base class of every error fxprune raises on purpose."""


class TraceError(FxpruneError):
    """The model could not be traced to a torch.fx graph."""


class InputError(FxpruneError, ValueError):
    """Example inputs or options do not fit the model or the API."""


class UnsupportedOpError(FxpruneError):
    """Strict mode: an op has no channel rule."""


class PlanError(FxpruneError, ValueError):
    """A plan or budget is invalid or infeasible (unknown groups, bad units ...)."""


class RewriteError(FxpruneError):
    """The rewritten graph disagrees with the shapes the analysis predicted."""


class ValidationError(FxpruneError):
    """onnxruntime disagrees with the pruned GraphModule (or could not run it)."""

    def __init__(self, message: str, max_abs: float = float("nan"), max_rel: float = float("nan")):
        super().__init__(message)
        self.max_abs = max_abs
        self.max_rel = max_rel


class PassError(FxpruneError):
    """An unexpected exception inside a pass, re-raised with the pass's name."""
