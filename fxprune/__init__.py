"""fxprune: a structured-pruning compiler for PyTorch on torch.fx graphs.

    result = fxprune.compile(model, example_inputs, method="l1", sparsity=0.5)
    result.module   # physically smaller GraphModule, checked by onnxruntime
"""
from __future__ import annotations

from .analysis import analyze
from .api import Report, Result, compile
from .errors import (DistributedError, FxpruneError, InputError, LossyCaptureError, NonFiniteOutputError,
                     OutputError, PassError, PickledFileError, PlanError, RewriteError, TraceError,
                     UnsupportedOpError, UntrustedSourceError, ValidationError)
from .graph import ChannelGraph, Group, ParamSlice
from .io import load, save
from .mask import mask
from .pipeline import Pass, Pipeline
from .prepare import Prepared, prepare
from .rewrite import rewrite
from .trace import trace
from .training import TrainConfig
from .validate import ValidationReport, validate
from .version import __version__


__all__ = [
    "ChannelGraph", "DistributedError", "FxpruneError", "Group", "InputError", "LossyCaptureError", "NonFiniteOutputError", "OutputError", "ParamSlice", "Pass", "PassError", "Pipeline",
    "PickledFileError", "PlanError", "Report", "Result", "RewriteError", "TraceError", "UnsupportedOpError", "UntrustedSourceError", "ValidationError",
    "ValidationReport", "analyze", "compile", "load", "mask", "rewrite", "save", "trace", "validate",
    "Prepared", "TrainConfig", "prepare",
    "__version__",
]
