"""``fxprune-trace``: inspect, prune and re-validate models from the command line.

    fxprune-trace groups   CHECKPOINT [--model NAME] [--input-shape 1,3,224,224] [--strict]
    fxprune-trace prune    CHECKPOINT --method l1 --sparsity 0.5 --out pruned.fxp [--onnx pruned.onnx]
    fxprune-trace validate pruned.fxp [--onnx pruned.onnx]

CHECKPOINT is a ``state_dict`` (with ``--model``), a ``tools/train.py`` checkpoint, a
``.fxp`` file written by ``fxprune.save`` or a pickled ``nn.Module`` (unpickled only
with ``--no-weights-only``; a ``.fxp`` naming a user class is rebuilt only with
``--trust-source``). Installed as the ``fxprune-trace`` console script; ``tools/trace``
runs the same ``main`` from a checkout.

Errors: bad input (missing/corrupt files, unknown names, shapes that do not fit,
bad options, missing output directories) ends with one line
``fxprune-trace: error: <what is wrong>; <how to fix>`` on stderr and exit code 2,
before any output file is written; an internal failure (``PassError`` or an
unexpected exception) ends with one line naming what failed and exit code 1
(``--debug`` shows the traceback instead). Outputs are written to temporary files
and moved into place only once everything succeeded.

Modules: ``parser`` (options and help) with ``values`` (option value parsers),
``checkpoints`` (reading CHECKPOINT, example inputs) with ``named_models``
(``--model NAME``), ``calibration`` (``--data``), ``outputs`` (writing files, ONNX
files, error measures), ``commands`` (``groups``, ``validate``) and ``prune``;
``errors`` holds the error kinds and message helpers; this module runs a command
and turns what it raises into the one-line message and exit code.
"""
from __future__ import annotations

import sys
import warnings
from typing import Sequence

from .calibration import DATASETS, check_data_spec, load_data
from .checkpoints import Loaded, example_inputs, load_checkpoint, load_state, torch_load
from .commands import cmd_groups, cmd_prune, cmd_validate
from .errors import PROG, CLIError, InternalError, describe, fail, one_line
from .named_models import build_named, check_model_name
from .outputs import PassDumper, max_abs_error, run_onnx_file
from .parser import build_parser
from .prune import compose_plan
from .values import parse_shape

__all__ = [
    "CLIError", "DATASETS", "InternalError", "Loaded", "PROG", "PassDumper", "build_named", "build_parser",
    "check_data_spec", "check_model_name", "cmd_groups", "cmd_prune", "cmd_validate", "compose_plan",
    "example_inputs", "load_checkpoint", "load_data", "load_state", "main", "max_abs_error", "parse_shape",
    "run_onnx_file", "torch_load",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fxprune-trace`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    with warnings.catch_warnings():  # a dependency's import-time warning never precedes the one-line error
        warnings.simplefilter("ignore")
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version, argparse errors (already printed, one line)
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    stage = ["starting"]
    try:
        with warnings.catch_warnings():
            if not args.debug:
                warnings.simplefilter("ignore")
            return int(args.func(args, stage) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place errors become messages
        if args.debug:
            raise (exc.__cause__ or exc) if isinstance(exc, InternalError) else exc
        message, code = report(exc, args.command, stage[0])
        fail(message)
        return code


def report(exc: Exception, command: str, stage: str) -> tuple[str, int]:
    """The one-line message and exit code for an error raised while running ``command``."""
    from fxprune.errors import OutputError
    from fxprune.errors import FxpruneError, PassError
    from fxprune.errors import NonFiniteOutputError

    if isinstance(exc, CLIError):
        return str(exc), 2
    if isinstance(exc, (OutputError, NonFiniteOutputError)):  # their messages say how to fix it
        return one_line(exc), 2
    if isinstance(exc, PassError):
        return f"{one_line(exc)}; rerun with --debug for the traceback and please report it", 1
    if isinstance(exc, FxpruneError):
        return f"{one_line(exc)}; {hint(exc, command)}", 2
    if isinstance(exc, InternalError):
        return f"{one_line(exc)}; rerun with --debug for the traceback", 1
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        return f"{exc.strerror or describe(exc)}{where} while {stage}; check the path and free space", 2
    return (f"unexpected {describe(exc)} while {stage}; rerun with --debug for the traceback and "
            f"please report it", 1)


def hint(exc: BaseException, command: str) -> str:
    """How to fix an ``FxpruneError`` that is not a ``PassError``."""
    from fxprune.errors import PlanError, TraceError, UnsupportedOpError, ValidationError

    if isinstance(exc, UnsupportedOpError):
        return "drop --strict to treat such ops as barriers"
    if isinstance(exc, TraceError):
        return "fxprune-trace needs a model torch.fx can trace; use the Python API (fxprune.trace's leaf_modules=/concrete_args=) otherwise"
    if isinstance(exc, ValidationError):
        return "onnxruntime disagrees with torch; loosen --rtol if the error is tiny, otherwise report it"
    if isinstance(exc, PlanError):
        return "check --sparsity, --round-to and --ignore"
    return f"see '{PROG} {command} --help'"
