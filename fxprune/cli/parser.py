"""The ``fxprune-trace`` argument parser: sub-commands, options, help formatting.

Every option's help shows its default (or that it is required); argparse errors
are printed as one line with exit code 2; ``fxprune-trace --help`` ends with an
overview of every sub-command's options.
"""
from __future__ import annotations

import argparse
import textwrap
from typing import Any

from .commands import cmd_groups, cmd_prune, cmd_validate
from .errors import PROG, one_line
from .values import device_name, float_in, int_at_least, key_value, names, parse_shape, positive_float

CHECKPOINT_HELP = (
    "a state_dict saved with torch.save(model.state_dict()) (needs --model), a tools/train.py "
    "checkpoint, a .fxp file written by fxprune.save / 'fxprune-trace prune', or a pickled "
    "nn.Module saved with torch.save(model) (only with --no-weights-only: unpickling runs code "
    "from the file)")
CAPTURE_HELP = ("front end: 'fx' (torch.fx symbolic tracing), 'export' (torch.export, non-strict; fixed to the "
                "example shapes and eval mode) or 'auto' (fx, then export where fx cannot trace) (default: auto)")
STRICT_HELP = "fail on ops without a channel rule instead of treating them as barriers"


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option shows its default (or that it is required), also where the default is None."""

    def _get_help_string(self, action: argparse.Action) -> str:
        """The option's help with ``(default: ...)`` or ``(required)`` appended."""
        text = action.help or ""
        if getattr(action, "default_text", None):
            return f"{text} (default: {action.default_text})"
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text:
            return text
        if action.required:
            return f"{text} (required)"
        return f"{text} (default: {show_default(action.default)})"


def show_default(value: Any) -> str:
    """How a default value reads in help texts (None -> "none", False -> "off", lists joined)."""
    if value is None:
        return "none"
    if value is False:
        return "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return str(value).replace("%", "%%")


class Parser(argparse.ArgumentParser):
    """argparse errors as one line (exit code 2), in the fxprune-trace format."""

    def error(self, message: str):  # noqa: D401 - argparse API
        """Exit with ``fxprune-trace: error: <message>; see '<prog> --help'`` (exit code 2)."""
        self.exit(2, f"{PROG}: error: {one_line(message)}; see '{self.prog} --help'\n")


def wrap(text: str) -> str:
    """A description paragraph wrapped at 78 columns."""
    return textwrap.fill(text, width=78)


def methods() -> list[str]:
    """The names of the pruning methods (``fxprune.passes.METHODS``), sorted."""
    from fxprune.passes import METHODS

    return sorted(METHODS)


def build_parser() -> argparse.ArgumentParser:
    """The ``fxprune-trace`` parser (sub-commands ``groups``, ``prune``, ``validate``)."""
    from fxprune.version import __version__

    model, shape, run = _model_options(), _shape_option(), _run_options()
    checkpoint_trust, fxp_trust = _trust_options(unpickle=True), _trust_options(unpickle=False)
    parser = Parser(
        prog=PROG, formatter_class=Formatter,
        description=wrap("Structured pruning with fxprune: inspect a model's channel groups, prune it "
                         "into a smaller validated model, re-validate saved results in onnxruntime."))
    parser.add_argument("--version", action="version", version=f"%(prog)s (fxprune {__version__})",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    _add_groups(sub, [model, shape, run, checkpoint_trust])
    _add_prune(sub, [model, shape, run, checkpoint_trust])
    _add_validate(sub, [model, run, fxp_trust])
    parser.epilog = overview(sub)
    return parser


def _model_options() -> argparse.ArgumentParser:
    """Parent parser: ``--model``, ``--num-classes``, ``--in-channels``."""
    opts = argparse.ArgumentParser(add_help=False)
    g = opts.add_argument_group("model")
    g.add_argument("--model", metavar="NAME", help=(
        "model to build: a fxprune.models name (lenet5, resnet20, ...) or a torchvision.models name "
        "(built with weights=None); required for a plain state_dict, else it overrides the name recorded "
        "in the file")).default_text = "the name recorded in the file"
    g.add_argument("--num-classes", metavar="N", type=int_at_least(1),
                   help="num_classes passed to the model's constructor").default_text = "the model's own"
    g.add_argument("--in-channels", metavar="N", type=int_at_least(1),
                   help="in_channels passed to a fxprune.models constructor").default_text = "the model's own"
    return opts


def _shape_option() -> argparse.ArgumentParser:
    """Parent parser: ``--input-shape``."""
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument("--input-shape", metavar="N,C,H,W", type=parse_shape,
                      help="shape of the (random, seeded) example input").default_text = (
        "1,3,224,224 for torchvision models; 1,C,28,28 for fxprune.models with C=in_channels "
        "(1,C,32,32 for --cifar-shape training checkpoints); the recorded shapes for a .fxp file; "
        "required otherwise")
    return opts


def _run_options() -> argparse.ArgumentParser:
    """Parent parser: ``--seed``, ``--debug``."""
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument("--seed", type=int, default=0,
                      help="seed of the random example inputs and of --method random")
    opts.add_argument("--debug", action="store_true",
                      help="show Python warnings and re-raise errors with their traceback")
    opts.add_argument("--device", type=device_name, default="cpu", metavar="DEVICE",
                      help="torch device the model, the data and the torch side of validation run on "
                           "(cpu, cuda, cuda:1 ...); ONNX is exported from CPU copies and files hold CPU tensors")
    return opts


def _trust_options(unpickle: bool) -> argparse.ArgumentParser:
    """Parent parser: ``--trust-source`` and, for a CHECKPOINT, ``--no-weights-only``."""
    opts = argparse.ArgumentParser(add_help=False)
    g = opts.add_argument_group("trust (what a file may make fxprune-trace run)")
    g.add_argument("--trust-source", action="store_true", help=(
        "let a .fxp file that names a user model class ('module:qualname') import that module, which runs "
        "its code, and build the class (only an nn.Module subclass is ever instantiated); without it such a "
        "file is refused and nothing is imported (or pass --model NAME)"))
    if unpickle:
        g.add_argument("--no-weights-only", dest="weights_only", action="store_false", help=(
            "let CHECKPOINT be a pickled nn.Module: torch.load(weights_only=False), which runs code from "
            "the file, so only for files you trust; without it a file that needs unpickling is refused and "
            "no code is run")).default_text = "off: torch.load(weights_only=True)"
    return opts


def _add_groups(sub: argparse._SubParsersAction, parents: list) -> None:
    """The ``groups`` sub-command."""
    p = sub.add_parser(
        "groups", parents=parents, formatter_class=Formatter,
        help="print the channel-group report and the model's params/MACs",
        description=wrap("Print fxprune.analyze's channel-group report (groups of coupled channels, their "
                         "units, what is prunable and why not) and the model's parameters and MACs."))
    p.add_argument("checkpoint", metavar="CHECKPOINT", help=CHECKPOINT_HELP)
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    p.add_argument("--capture", choices=("auto", "fx", "export"), default="auto", help=CAPTURE_HELP)
    p.set_defaults(func=cmd_groups)


def _add_prune(sub: argparse._SubParsersAction, parents: list) -> None:
    """The ``prune`` sub-command."""
    p = sub.add_parser(
        "prune", parents=parents, formatter_class=Formatter,
        help="prune a model, validate it in onnxruntime, write .fxp (and .onnx)",
        description=wrap("Prune CHECKPOINT with fxprune.compile (traced, analysed, pruned, rewritten and "
                         "checked against onnxruntime), write the result with fxprune.save (reload it "
                         "with fxprune.load or 'fxprune-trace validate') and optionally as ONNX, and "
                         "print params, MACs, onnxruntime latency and the validation error before and "
                         "after. Nothing is written unless everything succeeded."))
    p.add_argument("checkpoint", metavar="CHECKPOINT", help=CHECKPOINT_HELP)
    _add_budget_options(p)
    _add_output_options(p)
    p.add_argument("--rtol", type=positive_float, default=1e-4,
                   help="onnxruntime validation tolerance, relative to the largest output magnitude")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    p.add_argument("--capture", choices=("auto", "fx", "export"), default="auto", help=CAPTURE_HELP)
    p.add_argument("--no-compensate", dest="compensate", action="store_false", help=(
        "drop the constants removed units leave at the layers reading them (sigmoid(0), x + 1 ...) instead of "
        "folding them into those layers' biases; the pruned model then no longer equals the original with the "
        "removed units zeroed"))
    p.set_defaults(func=cmd_prune)


def _add_budget_options(p: argparse.ArgumentParser) -> None:
    """``prune``: method, sparsity, scope, rounding, ignored modules, calibration data."""
    p.add_argument("--method", default="l1", choices=methods(),
                   help="pruning method (taylor and itpcc need --data)")
    p.add_argument("--sparsity", type=float_in(0.0, 1.0), default=0.5,
                   help="fraction of the units of each group (local) or of all groups (global) to remove, in [0, 1)")
    p.add_argument("--scope", choices=("local", "global"), default="local",
                   help="local: the same fraction in every group; global: units compete across groups")
    p.add_argument("--round-to", type=int_at_least(1), default=1, metavar="N",
                   help="make every kept channel count a multiple of N")
    p.add_argument("--ignore", type=names, default=(), metavar="NAME,...",
                   help="comma-separated module names whose channels stay whole (e.g. fc)")
    p.add_argument("--data", metavar="NAME_OR_DIR", help=(
        "calibration data for methods that need it (taylor; itpcc trains on it): 'fashion-mnist' (fxprune.training.data.calibration; "
        "needs the Fashion-MNIST files), 'bundled' (the 500 images shipped with fxprune) or a folder of "
        ".pt files each holding an (inputs, targets) batch (default: none)"))
    p.add_argument("--calibration-size", type=int_at_least(1), default=512, metavar="N",
                   help="number of calibration samples taken from --data")
    p.add_argument("--option", dest="options", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="a method option, repeatable (values are Python literals or strings), e.g. for itpcc "
                        "target_macs_ratio=0.5; methods that train (itpcc) also take fxprune.TrainConfig fields "
                        "(epochs=3, finetune_epochs=1, lr=0.01, optimizer=adam ...) and train on --data")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    """``prune``: output files, latency runs, pass dumps."""
    p.add_argument("--out", metavar="FILE.fxp", required=True,
                   help="where to write the pruned model (fxprune.save format); its directory must exist")
    p.add_argument("--onnx", metavar="FILE.onnx",
                   help="also write the pruned model as ONNX here; its directory must exist (default: none)")
    p.add_argument("--static-shapes", action="store_true", help=(
        "export ONNX with every shape fixed to the example input's, instead of a dynamic 'batch' axis on "
        "dim 0 of every input and output (checked in onnxruntime at two batch sizes)"))
    p.add_argument("--latency-runs", type=int_at_least(0), default=20, metavar="N",
                   help="onnxruntime runs whose median latency is reported before and after (0 skips it)")
    p.add_argument("--dump-passes", metavar="DIR", help=(
        "write DIR/NN_<pass>.py with the graph code after every pass; DIR is created (with its "
        "parents) if it does not exist, and the dumps of the passes that ran stay there when a "
        "later step fails (default: none)"))


def _add_validate(sub: argparse._SubParsersAction, parents: list) -> None:
    """The ``validate`` sub-command."""
    p = sub.add_parser(
        "validate", parents=parents, formatter_class=Formatter,
        help="reload a .fxp file and re-validate it in onnxruntime",
        description=wrap("Reload FILE with fxprune.load, export it again and compare it with onnxruntime on "
                         "random inputs of the recorded shapes (fixed --seed); with --onnx, also run that "
                         "ONNX file in onnxruntime and compare it with the reloaded model."))
    p.add_argument("file", metavar="FILE", help="a .fxp file written by fxprune.save / 'fxprune-trace prune'")
    p.add_argument("--onnx", metavar="FILE.onnx",
                   help="an ONNX file to compare with the reloaded model (default: none)")
    p.add_argument("--rtol", type=positive_float, default=1e-4,
                   help="tolerance, relative to the largest output magnitude")
    p.set_defaults(func=cmd_validate)


def overview(sub: argparse._SubParsersAction) -> str:
    """Every sub-command's options with their defaults, for ``fxprune-trace --help``."""
    lines = ["commands and their options:"]
    for name, sp in sub.choices.items():
        positionals = " ".join(a.metavar or a.dest for a in sp._actions if not a.option_strings)
        lines.append(f"  {PROG} {name} {positionals}")
        for a in sp._actions:
            if not a.option_strings or a.default is argparse.SUPPRESS:
                continue
            opt = a.option_strings[-1]
            shown = getattr(a, "default_text", None) or show_default(a.default)
            value = "required" if a.required else f"default: {shown}"
            choices = f" {{{','.join(a.choices)}}}" if a.choices else ""
            lines.append(f"      {opt}{choices} ({value})")
    lines.append(f"run '{PROG} COMMAND --help' for what each option does.")
    lines.append("errors: one line on stderr; exit code 2 for bad input, 1 for an internal failure.")
    return "\n".join(lines)
