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


class LossyCaptureError(TraceError):
    """Capturing the model would silently lose part of what it computes (a custom autograd
    Function's backward): no front end is tried after this one; the message says what to change."""


class InputError(FxpruneError, ValueError):
    """The user's example inputs or options do not fit the model or the API (only ever those:
    a failure of fxprune's own steps on inputs that fit is another error, e.g. RewriteError)."""


class UnsupportedOpError(FxpruneError):
    """Strict mode: an op has no channel rule."""


class PlanError(FxpruneError, ValueError):
    """A plan or budget is invalid or infeasible (unknown groups, bad units ...)."""


class RewriteError(FxpruneError):
    """The rewrite failed: a rule's rewrite raised, the pruned graph does not run, or a node's
    shape differs from the analysis' prediction. A bug of fxprune, not of the user's model or
    inputs; the message names the node, its rule and the shapes (``fxprune.rewrite_errors``)."""


class ValidationError(FxpruneError):
    """onnxruntime disagrees with the pruned GraphModule (or could not run it)."""

    def __init__(self, message: str, max_abs: float = float("nan"), max_rel: float = float("nan")):
        super().__init__(message)
        self.max_abs = max_abs
        self.max_rel = max_rel


class PassError(FxpruneError):
    """An unexpected exception inside a pass, re-raised with the pass's name."""


class UntrustedSourceError(InputError):
    """A file names a user class, and the caller did not allow importing it (no code was run)."""

    def __init__(self, message: str, class_name: str):
        super().__init__(message)
        self.class_name = class_name


class PickledFileError(InputError):
    """The file holds pickled Python objects; fxprune never unpickles them (no code was run)."""

    def __init__(self, message: str, globals_: list[str]):
        super().__init__(message)
        self.globals = globals_


class OutputError(FxpruneError, OSError):
    """An output file could not be written (disk full, quota, permissions ...); nothing of
    the write was published and its temporary files are gone. ``errno``/``filename`` are set."""

    def __init__(self, message: str, code: int | None = None, filename: str | None = None):
        super().__init__(message)
        self.errno = code
        self.filename = filename

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NonFiniteOutputError(ValidationError):
    """The torch model itself produces NaN/inf on the example inputs: nothing can be validated.
    ``where`` says which output and how many values."""

    def __init__(self, message: str, where: str = ""):
        super().__init__(message)
        self.where = where


class DistributedError(FxpruneError):
    """Under ``torch.distributed``: the ranks disagree (model, options, plan) or a rank's
    share of the data is empty or failed; raised on every rank, never a hang
    (``fxprune.distributed``)."""
