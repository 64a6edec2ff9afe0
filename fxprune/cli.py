"""``fxprune-trace``: inspect, prune and re-validate models from the command line.

    fxprune-trace groups   CHECKPOINT [--model NAME] [--input-shape 1,3,224,224] [--strict]
    fxprune-trace prune    CHECKPOINT --method l1 --sparsity 0.5 --out pruned.fxp [--onnx pruned.onnx]
    fxprune-trace validate pruned.fxp [--onnx pruned.onnx]

CHECKPOINT is a ``state_dict`` (with ``--model``), a ``tools/train.py`` checkpoint, a
``.fxp`` file written by ``fxprune.save`` or a pickled ``nn.Module`` (unpickled only
after a warning). Installed as the ``fxprune-trace`` console script; ``tools/trace``
runs the same ``main`` from a checkout.

Errors: bad input (missing/corrupt files, unknown names, shapes that do not fit,
bad options, missing output directories) ends with one line
``fxprune-trace: error: <what is wrong>; <how to fix>`` on stderr and exit code 2,
before any output file is written; an internal failure (``PassError`` or an
unexpected exception) ends with one line naming what failed and exit code 1
(``--debug`` shows the traceback instead). Outputs are written to temporary files
and moved into place only once everything succeeded.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import os
import pickle
import re
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

PROG = "fxprune-trace"
DATASETS = ("fashion-mnist", "bundled")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# ============================================================================ errors


class CLIError(Exception):
    """A problem with the command line or its input files: one line, exit code 2."""


class InternalError(Exception):
    """Something fxprune should have handled: one line, exit code 1."""


def _one_line(text: object) -> str:
    return " ".join(_ANSI.sub("", str(text)).split())


def _describe(exc: BaseException) -> str:
    text = _one_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in _ANSI.sub("", str(exc)).strip().splitlines() if ln.strip()]
    head = lines[0].strip() if lines else ""
    return f"{type(exc).__name__}: {head}" if head else type(exc).__name__


def _short(exc: BaseException, limit: int = 160) -> str:
    """``_first_line`` cut after its first sentence (torch's loader messages run on)."""
    text = _first_line(exc)
    cut = text.find(". ")
    text = text[:cut + 1] if cut > 0 else text
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr, flush=True)


# ============================================================================ argument parsing


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option shows its default (or that it is required), also where the default is None."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if getattr(action, "default_text", None):
            return f"{text} (default: {action.default_text})"
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text:
            return text
        if action.required:
            return f"{text} (required)"
        return f"{text} (default: {_show_default(action.default)})"


def _show_default(value: Any) -> str:
    if value is None:
        return "none"
    if value is False:
        return "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return str(value).replace("%", "%%")


class _Parser(argparse.ArgumentParser):
    """argparse errors as one line (exit code 2), in the fxprune-trace format."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{PROG}: error: {_one_line(message)}; see '{self.prog} --help'\n")


def _float_in(lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not lo <= value < hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo:g}, {hi:g}), got {text}")
        return value
    return parse


def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``1x3x224x224``) -> ``(1, 3, 224, 224)``."""
    parts = [p.strip() for p in re.split(r"[,x]", text.strip())]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(
            f"input shape must be comma-separated positive integers such as 1,3,224,224, got {text!r}")
    return shape


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _methods() -> list[str]:
    from fxprune.passes import METHODS

    return sorted(METHODS)


def build_parser() -> argparse.ArgumentParser:
    """The ``fxprune-trace`` parser (sub-commands ``groups``, ``prune``, ``validate``)."""
    from fxprune import __version__

    model_opts = argparse.ArgumentParser(add_help=False)
    g = model_opts.add_argument_group("model")
    g.add_argument("--model", metavar="NAME", help=(
        "model to build: a fxprune.models name (lenet5, resnet20, ...) or a torchvision.models name "
        "(built with weights=None); required for a plain state_dict, else it overrides the name recorded "
        "in the file")).default_text = "the name recorded in the file"
    g.add_argument("--num-classes", metavar="N", type=_int_at_least(1),
                   help="num_classes passed to the model's constructor").default_text = "the model's own"
    g.add_argument("--in-channels", metavar="N", type=_int_at_least(1),
                   help="in_channels passed to a fxprune.models constructor").default_text = "the model's own"

    shape_opt = argparse.ArgumentParser(add_help=False)
    shape_opt.add_argument("--input-shape", metavar="N,C,H,W", type=parse_shape,
                           help="shape of the (random, seeded) example input").default_text = (
        "1,3,224,224 for torchvision models; 1,C,28,28 for fxprune.models with C=in_channels "
        "(1,C,32,32 for --cifar-shape training checkpoints); the recorded shapes for a .fxp file; "
        "required otherwise")

    run_opts = argparse.ArgumentParser(add_help=False)
    run_opts.add_argument("--seed", type=int, default=0,
                          help="seed of the random example inputs and of --method random")
    run_opts.add_argument("--debug", action="store_true",
                          help="show Python warnings and re-raise errors with their traceback")

    checkpoint_help = (
        "a state_dict saved with torch.save(model.state_dict()) (needs --model), a tools/train.py "
        "checkpoint, a .fxp file written by fxprune.save / 'fxprune-trace prune', or a pickled "
        "nn.Module saved with torch.save(model) (unpickling runs code from the file: a warning is "
        "printed first)")

    parser = _Parser(
        prog=PROG, formatter_class=_Formatter,
        description=_wrap("Structured pruning with fxprune: inspect a model's channel groups, prune it "
                    "into a smaller validated model, re-validate saved results in onnxruntime."))
    parser.add_argument("--version", action="version", version=f"%(prog)s (fxprune {__version__})",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "groups", parents=[model_opts, shape_opt, run_opts], formatter_class=_Formatter,
        help="print the channel-group report and the model's params/MACs",
        description=_wrap("Print fxprune.analyze's channel-group report (groups of coupled channels, their "
                    "units, what is prunable and why not) and the model's parameters and MACs."))
    p.add_argument("checkpoint", metavar="CHECKPOINT", help=checkpoint_help)
    p.add_argument("--strict", action="store_true",
                   help="fail on ops without a channel rule instead of treating them as barriers")
    p.set_defaults(func=cmd_groups)

    p = sub.add_parser(
        "prune", parents=[model_opts, shape_opt, run_opts], formatter_class=_Formatter,
        help="prune a model, validate it in onnxruntime, write .fxp (and .onnx)",
        description=_wrap("Prune CHECKPOINT with fxprune.compile (traced, analysed, pruned, rewritten and "
                    "checked against onnxruntime), write the result with fxprune.save (reload it "
                    "with fxprune.load or 'fxprune-trace validate') and optionally as ONNX, and "
                    "print params, MACs, onnxruntime latency and the validation error before and "
                    "after. Nothing is written unless everything succeeded."))
    p.add_argument("checkpoint", metavar="CHECKPOINT", help=checkpoint_help)
    p.add_argument("--method", default="l1", choices=_methods(),
                   help="pruning method (taylor needs --data)")
    p.add_argument("--sparsity", type=_float_in(0.0, 1.0), default=0.5,
                   help="fraction of the units of each group (local) or of all groups (global) to remove, in [0, 1)")
    p.add_argument("--scope", choices=("local", "global"), default="local",
                   help="local: the same fraction in every group; global: units compete across groups")
    p.add_argument("--round-to", type=_int_at_least(1), default=1, metavar="N",
                   help="make every kept channel count a multiple of N")
    p.add_argument("--ignore", type=_names, default=(), metavar="NAME,...",
                   help="comma-separated module names whose channels stay whole (e.g. fc)")
    p.add_argument("--data", metavar="NAME_OR_DIR", help=(
        "calibration data for methods that need it (taylor): 'fashion-mnist' (fxprune.data.calibration; "
        "needs the Fashion-MNIST files), 'bundled' (the 500 images shipped with fxprune) or a folder of "
        ".pt files each holding an (inputs, targets) batch (default: none)"))
    p.add_argument("--calibration-size", type=_int_at_least(1), default=512, metavar="N",
                   help="number of calibration samples taken from --data")
    p.add_argument("--out", metavar="FILE.fxp", required=True,
                   help="where to write the pruned model (fxprune.save format); its directory must exist")
    p.add_argument("--onnx", metavar="FILE.onnx",
                   help="also write the pruned model as ONNX here; its directory must exist (default: none)")
    p.add_argument("--latency-runs", type=_int_at_least(0), default=20, metavar="N",
                   help="onnxruntime runs whose median latency is reported before and after (0 skips it)")
    p.add_argument("--dump-passes", metavar="DIR", help=(
        "write DIR/NN_<pass>.py with the graph code after every pass; DIR is created (with its "
        "parents) if it does not exist, and the dumps of the passes that ran stay there when a "
        "later step fails (default: none)"))
    p.add_argument("--rtol", type=_positive_float, default=1e-4,
                   help="onnxruntime validation tolerance, relative to the largest output magnitude")
    p.add_argument("--strict", action="store_true",
                   help="fail on ops without a channel rule instead of treating them as barriers")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "validate", parents=[model_opts, run_opts], formatter_class=_Formatter,
        help="reload a .fxp file and re-validate it in onnxruntime",
        description=_wrap("Reload FILE with fxprune.load, export it again and compare it with onnxruntime on "
                    "random inputs of the recorded shapes (fixed --seed); with --onnx, also run that "
                    "ONNX file in onnxruntime and compare it with the reloaded model."))
    p.add_argument("file", metavar="FILE", help="a .fxp file written by fxprune.save / 'fxprune-trace prune'")
    p.add_argument("--onnx", metavar="FILE.onnx",
                   help="an ONNX file to compare with the reloaded model (default: none)")
    p.add_argument("--rtol", type=_positive_float, default=1e-4,
                   help="tolerance, relative to the largest output magnitude")
    p.set_defaults(func=cmd_validate)

    parser.epilog = _overview(sub)
    return parser


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=78)


def _overview(sub: argparse._SubParsersAction) -> str:
    """Every sub-command's options with their defaults, for ``fxprune-trace --help``."""
    lines = ["commands and their options:"]
    for name, sp in sub.choices.items():
        positionals = " ".join(a.metavar or a.dest for a in sp._actions if not a.option_strings)
        lines.append(f"  {PROG} {name} {positionals}")
        for a in sp._actions:
            if not a.option_strings or a.default is argparse.SUPPRESS:
                continue
            opt = a.option_strings[-1]
            shown = getattr(a, "default_text", None) or _show_default(a.default)
            value = "required" if a.required else f"default: {shown}"
            choices = f" {{{','.join(a.choices)}}}" if a.choices else ""
            lines.append(f"      {opt}{choices} ({value})")
    lines.append(f"run '{PROG} COMMAND --help' for what each option does.")
    lines.append("errors: one line on stderr; exit code 2 for bad input, 1 for an internal failure.")
    return "\n".join(lines)


# ============================================================================ loading models


@dataclass
class Loaded:
    """A model read from CHECKPOINT and what is known about it."""

    model: Any  # nn.Module, in eval mode
    label: str  # for messages: "resnet18 (torchvision.models)"
    source: dict | None  # how fxprune.save should describe the original model (None: its class)
    shapes: list[tuple[int, ...]] | None  # default example-input shapes
    payload: dict | None = None  # the .fxp payload, for a pruned model
    original: Callable[[], Any] | None = None  # builds the unpruned definition (for fxprune.load)


def _zoo_names() -> list[str]:
    from fxprune import models as zoo

    return zoo.list()


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models()


def check_model_name(name: str) -> None:
    """Raise CLIError for a name that is neither in fxprune.models nor in torchvision.models."""
    if name in _zoo_names() or name in _torchvision_names():
        return
    close = difflib.get_close_matches(name, _zoo_names() + _torchvision_names(), n=3)
    guess = f" (did you mean {', '.join(close)}?)" if close else ""
    raise CLIError(f"unknown model {name!r}{guess}; pass --model with a fxprune.models name "
                   f"({', '.join(_zoo_names())}) or a torchvision.models name (see "
                   f"torchvision.models.list_models())")


def build_named(name: str, kwargs: dict) -> tuple[Any, dict]:
    """Build zoo/torchvision model ``name``; returns (model in eval mode, its fxprune.save source)."""
    check_model_name(name)
    kwargs = dict(kwargs)
    if name in _zoo_names():
        from fxprune import models as zoo

        kind = "fxprune.models"
        try:
            model = zoo.get(name, **kwargs)
        except TypeError as exc:
            raise CLIError(f"cannot build {name} with {kwargs}: {_first_line(exc)}; "
                           f"check --num-classes/--in-channels") from None
    else:
        import torchvision

        kind = "torchvision.models"
        if "in_channels" in kwargs:
            raise CLIError(f"--in-channels applies to fxprune.models only; torchvision model {name} "
                           f"takes 3-channel input, drop --in-channels")
        try:
            model = torchvision.models.get_model(name, weights=None, **kwargs)
        except Exception as exc:  # noqa: BLE001 - constructors raise many types
            raise CLIError(f"cannot build torchvision model {name} with {kwargs}: {_first_line(exc)}; "
                           f"check --num-classes") from None
    return model.eval(), {"kind": kind, "name": name, "kwargs": kwargs}


def _named_source(name: str, kwargs: dict) -> dict:
    kind = "fxprune.models" if name in _zoo_names() else "torchvision.models"
    return {"kind": kind, "name": name, "kwargs": dict(kwargs)}


def _cli_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {}
    if getattr(args, "num_classes", None) is not None:
        kwargs["num_classes"] = args.num_classes
    if getattr(args, "in_channels", None) is not None:
        kwargs["in_channels"] = args.in_channels
    return kwargs


def _default_shape(source: dict | None, cifar_shape: bool = False) -> list[tuple[int, ...]] | None:
    if not source:
        return None
    if source["kind"] == "torchvision.models":
        return [(1, 3, 224, 224)]
    if source["kind"] == "fxprune.models":
        size = 32 if cifar_shape else 28
        return [(1, int(source.get("kwargs", {}).get("in_channels", 3)), size, size)]
    return None


_MODULE_PREFIXES = ("torch.nn.modules.", "torch.fx.graph_module", "torchvision.models.", "fxprune.")


def _pickled_globals(path: Path, exc: BaseException) -> list[str]:
    """Classes/functions a pickle refers to, read without unpickling."""
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - legacy (non-zip) format: the error names the first one
        return re.findall(r"GLOBAL ([\w.]+)", _ANSI.sub("", str(exc)))


def torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a pickled nn.Module only after a one-line warning."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise CLIError(f"{path} is not a readable PyTorch file (corrupt or truncated: {_short(exc)}); "
                           f"save it again with torch.save") from None
        names = _pickled_globals(path, exc)
        if not any(n.startswith(_MODULE_PREFIXES) for n in names):
            shown = ", ".join(names[:3]) or "unknown objects"
            raise CLIError(f"{path} holds pickled objects that are not a model ({shown}); save a state_dict "
                           f"(torch.save(model.state_dict())) and pass --model") from None
    except Exception as exc:  # noqa: BLE001 - zip/EOF/Key errors all mean a damaged file
        raise CLIError(f"{path} is not a readable PyTorch file (corrupt or truncated: {_short(exc)}); "
                       f"save it again with torch.save") from None
    _warn(f"{path} is a pickled model: unpickling it runs code from the file, so only continue with "
          f"files you trust (a state_dict with --model needs no unpickling)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"cannot unpickle the model in {path} ({_first_line(exc)}); its classes must be "
                       f"importable here, or save a state_dict and pass --model") from None
    from torch import nn

    if not isinstance(obj, nn.Module):
        raise CLIError(f"{path} holds a pickled {type(obj).__name__}, not a model; save a state_dict "
                       f"and pass --model")
    return obj


def _state_dict_of(obj: Any) -> dict | None:
    import torch

    def is_sd(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())

    if is_sd(obj):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if is_sd(obj.get(key)):
                return obj[key]
    return None


def load_state(model: Any, state: dict, path: Path, what: str) -> None:
    """``model.load_state_dict(state)`` with a one-line description of any mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) ({', '.join(missing[:2])}{', ...' if len(missing) > 2 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) ({', '.join(unexpected[:2])}"
                         f"{', ...' if len(unexpected) > 2 else ''})")
        if wrong:
            k, have, want = wrong[0]
            parts.append(f"{len(wrong)} shape mismatch(es) ({k}: file {have}, model {want})")
        raise CLIError(f"{path} does not fit {what}: {'; '.join(parts)}; pass the --model (and "
                       f"--num-classes/--in-channels) the state_dict was saved from")
    model.load_state_dict(state)


def _label(source: dict | None, model: Any) -> str:
    if source and source.get("kind") in ("fxprune.models", "torchvision.models"):
        kwargs = ", ".join(f"{k}={v}" for k, v in source.get("kwargs", {}).items())
        return f"{source['name']}{f'({kwargs})' if kwargs else ''} ({source['kind']})"
    return type(model).__name__ if model is not None else "model"


def load_checkpoint(path_text: str, args: argparse.Namespace) -> Loaded:
    """Read CHECKPOINT in any of the four accepted forms (see the module doc)."""
    import fxprune
    from fxprune import io as fxio
    from fxprune.errors import InputError, PlanError

    path = Path(path_text)
    if not path.exists():
        raise CLIError(f"no such file: {path}; check the CHECKPOINT path")
    if path.is_dir():
        raise CLIError(f"{path} is a directory; pass a checkpoint file")
    if args.model is not None:
        check_model_name(args.model)
    kwargs = _cli_kwargs(args)
    obj = torch_load(path)

    from torch import nn

    if isinstance(obj, nn.Module):  # (d) pickled module
        model = obj.eval()
        if args.model is not None:
            source = _named_source(args.model, kwargs)
        elif getattr(model, "_fxprune_name", None):
            source = fxio.model_source(model)
        else:
            source = None
        shapes = _default_shape(source)
        if shapes is None and type(model).__module__.startswith("torchvision.models"):
            shapes = [(1, 3, 224, 224)]
        return Loaded(model, _label(source, model), source, shapes, original=lambda: model)

    if isinstance(obj, dict) and obj.get("format") == fxio.FORMAT:  # (c) .fxp
        original: Callable[[], Any]
        if args.model is not None:
            def original() -> Any:
                return build_named(args.model, kwargs)[0]
            source = _named_source(args.model, kwargs)
        else:
            source = dict(obj["source"])
            if kwargs and source.get("kind") in ("fxprune.models", "torchvision.models"):
                source["kwargs"] = {**source.get("kwargs", {}), **kwargs}

            def original() -> Any:
                return fxio.build_model(source)
        try:
            gm = fxprune.load(path, model=original())
        except InputError as exc:
            raise CLIError(f"cannot rebuild the model {path} was pruned from ({_one_line(exc)}); "
                           f"pass --model NAME with its fxprune.models/torchvision.models name") from None
        except PlanError as exc:
            raise CLIError(f"{_one_line(exc)}; pass the --model (and --num-classes/--in-channels) "
                           f"{path} was pruned from") from None
        shapes = [tuple(s) for s in obj["input_shapes"]]
        return Loaded(gm, f"pruned {_label(source, None)}", source, shapes, payload=obj, original=original)

    if (isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "name" in obj["model"]
            and isinstance(obj.get("state_dict"), dict)):  # (b) tools/train.py checkpoint
        name = obj["model"]["name"]
        if args.model is not None and args.model != name:
            raise CLIError(f"{path} is a checkpoint of {name} but --model {args.model} was given; "
                           f"drop --model (the checkpoint names its model)")
        model, source = build_named(name, {**dict(obj["model"].get("kwargs", {})), **kwargs})
        load_state(model, obj["state_dict"], path, _label(source, model))
        cifar = bool((obj.get("meta") or {}).get("cifar_shape", False))
        return Loaded(model, _label(source, model), source, _default_shape(source, cifar))

    state = _state_dict_of(obj)
    if state is not None:  # (a) state_dict
        if args.model is None:
            raise CLIError(f"{path} is a state_dict, which does not say which model it belongs to; "
                           f"pass --model NAME (a fxprune.models or torchvision.models name)")
        model, source = build_named(args.model, kwargs)
        load_state(model, state, path, _label(source, model))
        return Loaded(model, _label(source, model), source, _default_shape(source))

    raise CLIError(f"{path} holds a {type(obj).__name__} that is not a model, a state_dict, a tools/train.py "
                   f"checkpoint or a .fxp file; pass one of those")


def example_inputs(loaded: Loaded, args: argparse.Namespace) -> tuple:
    """Random example inputs (seeded) of --input-shape or the model's default shape; checked to fit."""
    import torch

    if args.input_shape is not None:
        shapes = [args.input_shape]
    elif loaded.shapes:
        shapes = loaded.shapes
    else:
        raise CLIError(f"--input-shape is required for {loaded.label} (no default input size is known); "
                       f"pass e.g. --input-shape 1,3,224,224")
    gen = torch.Generator().manual_seed(args.seed)
    inputs = tuple(torch.randn(s, generator=gen) for s in shapes)
    shown = " and ".join(",".join(map(str, s)) for s in shapes)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded.model.eval()(*inputs)
    except Exception as exc:  # noqa: BLE001 - any failure means the shape does not fit
        raise CLIError(f"input shape {shown} does not fit {loaded.label} ({_first_line(exc)}); "
                       f"pass --input-shape N,C,H,W that the model accepts") from None
    return inputs


# ============================================================================ data


def check_data_spec(spec: str | None) -> None:
    if spec is None or spec in DATASETS:
        return
    path = Path(spec)
    if not path.is_dir():
        raise CLIError(f"--data {spec!r} is neither a dataset name ({', '.join(DATASETS)}) nor a folder; "
                       f"pass one of the names or a folder of .pt files holding (inputs, targets) batches")
    if not any(path.glob("*.pt")):
        raise CLIError(f"--data folder {spec} has no .pt files; put (inputs, targets) batches saved with "
                       f"torch.save((x, y), 'NNN.pt') in it")


def load_data(spec: str, n: int, shape: tuple[int, ...]) -> list[tuple[Any, Any]]:
    """``n`` calibration samples from ``spec`` as ``(inputs, targets)`` batches of ``shape[1:]`` inputs."""
    import torch

    from fxprune import data

    sample = tuple(shape[1:])
    if spec in DATASETS:
        if sample not in ((1, 28, 28), (3, 32, 32)):
            raise CLIError(f"--data {spec} gives 1x28x28 (or padded 3x32x32) images but the model input is "
                           f"{'x'.join(map(str, sample))}; pass a folder of matching batches")
        cifar = sample == (3, 32, 32)
        if spec == "fashion-mnist":
            return data.calibration(n, cifar_shape=cifar)
        xs, ys = data.bundled(cifar_shape=cifar).tensors
        xs, ys = xs[:n], ys[:n]
        return [(xs[i:i + 128].contiguous(), ys[i:i + 128]) for i in range(0, len(xs), 128)]
    batches, total = [], 0
    for f in sorted(Path(spec).glob("*.pt")):
        try:
            batch = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise CLIError(f"--data file {f} is not readable ({_first_line(exc)}); save batches with "
                           f"torch.save((inputs, targets), path)") from None
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2
                and all(isinstance(t, torch.Tensor) for t in batch)):
            raise CLIError(f"--data file {f} does not hold an (inputs, targets) pair of tensors; save batches "
                           f"with torch.save((inputs, targets), path)")
        x, y = batch
        if tuple(x.shape[1:]) != sample:
            raise CLIError(f"--data file {f} has inputs of shape {tuple(x.shape)} but the model input is "
                           f"{shape}; pass batches of the model's input size")
        take = min(len(x), n - total)
        batches.append((x[:take].float(), y[:take]))
        total += take
        if total >= n:
            break
    return batches


# ============================================================================ outputs


def _check_output(path_text: str | None, option: str) -> Path | None:
    if path_text is None:
        return None
    path = Path(path_text)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"{option} {path}: directory {parent} does not exist; create it or choose another path")
    if path.is_dir():
        raise CLIError(f"{option} {path} is a directory; pass a file path")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"{option} {path}: directory {parent} is not writable; choose another path")
    return path


def _temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.fxprune-trace.tmp")


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished temporary file into place with the usual permissions (mkstemp makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, final)


class PassDumper:
    """``compile`` callback writing ``DIR/NN_<pass>.py`` with the graph code after every pass."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.done: list[str] = []

    def __call__(self, name: str, result: Any, seconds: float) -> None:
        self.done.append(name)
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "pass"
        path = self.folder / f"{len(self.done):02d}_{safe}.py"
        text = (f"# fxprune-trace --dump-passes: graph code after pass {len(self.done)} {name!r} "
                f"(modified={result.modified}, {seconds:.3f}s)\n{result.graph_module.code}")
        path.write_text(text)


# ============================================================================ comparisons


def _flatten(out: Any) -> list:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flatten(v)]
    return []


def max_abs_error(refs: Sequence, outs: Sequence) -> tuple[float, float]:
    """(max |ref - out|, max |ref|) over matching outputs; CLIError when counts/shapes differ."""
    import numpy as np

    if len(refs) != len(outs):
        raise CLIError(f"{len(outs)} outputs where the model has {len(refs)}; compare files of the same model")
    err = scale = 0.0
    for i, (ref, out) in enumerate(zip(refs, outs)):
        ref = ref.detach().double().numpy() if hasattr(ref, "detach") else np.asarray(ref, dtype=np.float64)
        out = out.detach().double().numpy() if hasattr(out, "detach") else np.asarray(out, dtype=np.float64)
        if ref.shape != out.shape:
            raise CLIError(f"output {i} has shape {out.shape} where the model gives {ref.shape}; compare "
                           f"files of the same model")
        if ref.size:
            err = max(err, float(np.abs(ref - out).max()))
            scale = max(scale, float(np.abs(ref).max()))
    return err, scale


def run_onnx_file(path: Path, inputs: tuple, recorded_by: str) -> list:
    """Run an ONNX file in onnxruntime (CPU) on ``inputs``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"{path} is not a loadable ONNX model ({_first_line(exc)}); pass the file written by "
                       f"'{PROG} prune --onnx'") from None
    metas = session.get_inputs()
    if len(metas) != len(inputs):
        raise CLIError(f"{path} takes {len(metas)} input(s) but {recorded_by} records {len(inputs)}; pass the "
                       f"ONNX file exported with it")
    feeds = {}
    for meta, x in zip(metas, inputs):
        want = [d if isinstance(d, int) else None for d in meta.shape]
        if len(want) != x.dim() or any(w is not None and w != s for w, s in zip(want, x.shape)):
            raise CLIError(f"{path} expects input {meta.name!r} of shape {tuple(meta.shape)} but {recorded_by} "
                           f"records {tuple(x.shape)}; pass the ONNX file exported with it")
        feeds[meta.name] = x.detach().numpy()
    try:
        return session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"onnxruntime cannot run {path} ({_first_line(exc)}); pass the file written by "
                       f"'{PROG} prune --onnx'") from None


# ============================================================================ commands


def _shape_text(inputs: tuple) -> str:
    return " and ".join("x".join(map(str, x.shape)) for x in inputs)


def cmd_groups(args: argparse.Namespace, stage: list[str]) -> int:
    import fxprune
    from fxprune.errors import UnsupportedOpError
    from fxprune.report import count_macs, count_params, human

    stage[0] = "loading the checkpoint"
    loaded = load_checkpoint(args.checkpoint, args)
    inputs = example_inputs(loaded, args)
    stage[0] = "analysing the model"
    try:
        graph = fxprune.analyze(loaded.model, inputs, strict=args.strict)
    except UnsupportedOpError as exc:
        raise CLIError(f"{_one_line(exc)}; drop --strict to treat such ops as barriers") from None
    params, macs = count_params(loaded.model), count_macs(loaded.model, inputs)
    print(graph)
    print()
    print(f"model: {loaded.label}, input {_shape_text(inputs)}")
    print(f"params: {human(params)} ({params:,})   MACs: {human(macs)} ({macs:,})")
    return 0


def _method_options(args: argparse.Namespace) -> dict:
    from fxprune.passes import METHODS

    fields = {f.name for f in dataclasses.fields(METHODS[args.method])}
    options: dict[str, Any] = {"scope": args.scope, "round_to": args.round_to, "ignore": args.ignore}
    if "seed" in fields:
        options["seed"] = args.seed
    if "progress" in fields:
        options["progress"] = sys.stderr.isatty()
    return options


def compose_plan(first: dict[str, list[int]], second: dict[str, list[int]],
                 units_after_first: dict[str, int]) -> dict[str, list[int]]:
    """Express "prune by ``first``, then prune the result by ``second``" as one plan on the original.

    Group ids are module names, which rewrite keeps, and units keep their order; a group of the
    pruned model with ``k`` units whose id is in ``first`` is that original group's ``k`` kept units.
    """
    plan = {gid: sorted(kept) for gid, kept in first.items()}
    for gid, kept in second.items():
        base = plan.get(gid)
        if base is None:
            base = list(range(units_after_first[gid]))
        elif len(base) != units_after_first[gid]:
            raise InternalError(f"cannot express the re-pruned model as one plan on the original: group {gid!r} "
                                f"has {units_after_first[gid]} units after the first pruning, the file kept "
                                f"{len(base)}; prune the original checkpoint instead")
        plan[gid] = [base[i] for i in kept]
    return plan


def cmd_prune(args: argparse.Namespace, stage: list[str]) -> int:
    import torch

    import fxprune
    from fxprune.errors import FxpruneError, UnsupportedOpError, ValidationError
    from fxprune.passes import METHODS
    from fxprune.report import format_table, human
    from fxprune.state import state_of
    from fxprune.validate import ort_latency, save_onnx, validate

    stage[0] = "checking the options"
    needs_data = "data" in {f.name for f in dataclasses.fields(METHODS[args.method])}
    if needs_data and args.data is None:
        raise CLIError(f"method {args.method!r} needs calibration data; pass --data fashion-mnist, --data "
                       f"bundled or --data DIR (a folder of (inputs, targets) .pt batches)")
    out = _check_output(args.out, "--out")
    onnx = _check_output(args.onnx, "--onnx")
    if onnx is not None and onnx.resolve() == out.resolve():
        raise CLIError("--out and --onnx name the same file; pass two different paths")
    dump = Path(args.dump_passes) if args.dump_passes else None
    if dump is not None and dump.exists() and not dump.is_dir():
        raise CLIError(f"--dump-passes {dump} exists and is not a directory; pass a directory path")
    check_data_spec(args.data)
    if args.data is not None and not needs_data:
        _warn(f"--data is not used by method {args.method!r}")

    stage[0] = "loading the checkpoint"
    loaded = load_checkpoint(args.checkpoint, args)
    inputs = example_inputs(loaded, args)
    options = _method_options(args)
    if needs_data:
        stage[0] = "loading the calibration data"
        options["data"] = load_data(args.data, args.calibration_size, tuple(inputs[0].shape))

    torch.manual_seed(args.seed)
    dumper = PassDumper(dump)
    stage[0] = "pruning"
    try:
        result = fxprune.compile(loaded.model, inputs, args.method, args.sparsity, validate=True,
                                 rtol=args.rtol, strict=args.strict, callback=dumper, **options)
    except UnsupportedOpError as exc:
        raise CLIError(f"{_one_line(exc)}; drop --strict to treat such ops as barriers") from None
    except FxpruneError:
        raise
    except Exception as exc:  # noqa: BLE001 - outside any pass (trace, cost counting)
        after = f" after pass(es) {', '.join(dumper.done)}" if dumper.done else ""
        raise InternalError(f"pruning failed{after}: {_describe(exc)}") from exc
    pruned = result.module
    after_report = state_of(pruned).validation if state_of(pruned) is not None else None

    stage[0] = "measuring the original model in onnxruntime"
    try:
        before_report = validate(loaded.model, inputs, rtol=args.rtol, keep_onnx=True, raise_on_mismatch=False)
    except ValidationError as exc:
        _warn(f"the original model could not be checked in onnxruntime: {_one_line(exc)}")
        before_report = None

    tmp_out = _temp_path(out)
    tmp_onnx = _temp_path(onnx) if onnx is not None else None
    try:
        pruned_bytes = None
        if onnx is not None:
            stage[0] = f"writing {onnx}"
            save_onnx(pruned, inputs, tmp_onnx)
            pruned_bytes = tmp_onnx.read_bytes()
        elif args.latency_runs:
            pruned_bytes = validate(pruned, inputs, rtol=args.rtol, keep_onnx=True).onnx_bytes

        latency = ("-", "-", "")
        if args.latency_runs:
            stage[0] = "measuring onnxruntime latency"
            after_s = ort_latency(pruned_bytes, inputs, runs=args.latency_runs)
            before_s = (ort_latency(before_report.onnx_bytes, inputs, runs=args.latency_runs)
                        if before_report is not None else None)
            latency = (f"{before_s * 1e3:.2f} ms" if before_s is not None else "-", f"{after_s * 1e3:.2f} ms",
                       f"{after_s / before_s:.1%}" if before_s else "")

        stage[0] = f"writing {out}"
        save_result = result
        source = loaded.source
        if loaded.payload is not None:  # a .fxp pruned again: one plan on the original
            units = {g.id: g.units for g in result.graph.groups}
            save_result = dataclasses.replace(result, plan=compose_plan(loaded.payload["plan"], result.plan, units))
        named = source is not None and source.get("kind") in ("fxprune.models", "torchvision.models")
        if named:
            fxprune.save(save_result, tmp_out, model_name=source["name"], model_kwargs=source.get("kwargs"))
        else:
            if source is not None:
                save_result = dataclasses.replace(save_result, source=source)
            fxprune.save(save_result, tmp_out)

        stage[0] = f"reloading {out} with fxprune.load"
        _check_reload(tmp_out, out, pruned, inputs, loaded, named)

        _publish(tmp_out, out)
        if onnx is not None:
            _publish(tmp_onnx, onnx)
    finally:
        for tmp in (tmp_out, tmp_onnx):
            if tmp is not None and tmp.exists():
                tmp.unlink()

    rep = result.report
    pruned_groups = [g for g in rep.groups if g.removed]
    budget = f"sparsity {args.sparsity:g}, {args.scope}" + (f", round_to {args.round_to}" if args.round_to > 1 else "")
    print(f"{loaded.label}: {args.method} ({budget}) on input {_shape_text(inputs)}: "
          f"{len(pruned_groups)} of {len(rep.groups)} prunable groups pruned "
          f"({sum(g.removed for g in pruned_groups)} units removed)")
    pct = lambda a, b: f"{a / b:.1%}" if b else ""  # noqa: E731
    err = lambda r: f"{r.max_abs:.3g}" if r is not None else "-"  # noqa: E731
    rows = [
        ("params", human(rep.params_before), human(rep.params_after), pct(rep.params_after, rep.params_before)),
        ("MACs", human(rep.macs_before), human(rep.macs_after), pct(rep.macs_after, rep.macs_before)),
        (f"onnxruntime latency (median of {args.latency_runs})" if args.latency_runs
         else "onnxruntime latency (--latency-runs 0)", *latency),
        ("max |onnxruntime - torch|", err(before_report), err(after_report), ""),
    ]
    print(format_table(rows, header=("", "before", "after", "after/before")))
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in rep.seconds.items()))
    for w in rep.warnings:
        _warn(w)
    written = [f"{out} ({human(out.stat().st_size)}B)"]
    if onnx is not None:
        written.append(f"{onnx} ({human(onnx.stat().st_size)}B)")
    if dump is not None:
        written.append(f"{len(dumper.done)} pass dumps in {dump}")
    print("wrote " + ", ".join(written))
    return 0


def _check_reload(tmp: Path, final: Path, pruned: Any, inputs: tuple, loaded: Loaded, named: bool) -> None:
    """The written file must reload (``fxprune.load``) into the model just pruned.

    A file that names a zoo/torchvision model must reload by itself; one that records a class
    (a pickled module) may need ``model=`` (a warning says so) but must then reload exactly.
    """
    import torch

    import fxprune
    from fxprune.errors import FxpruneError

    with torch.no_grad():
        want = _flatten(pruned.eval()(*inputs))

    def reload_error(model: Any = None) -> str | None:
        try:
            gm = fxprune.load(tmp, model=model)
            with torch.no_grad():
                err, scale = max_abs_error(want, _flatten(gm(*inputs)))
        except (FxpruneError, CLIError) as exc:
            return _one_line(exc).replace(str(tmp), str(final))
        return None if err <= 1e-5 * max(1.0, scale) else f"it reloads with outputs off by {err:.3g}"

    problem = reload_error()
    if problem is None:
        return
    if named or loaded.original is None:
        raise InternalError(f"{final} does not reload with fxprune.load ({problem}); please report this fxprune bug")
    second = reload_error(copy.deepcopy(loaded.original()))
    if second is not None:
        raise InternalError(f"{final} does not reload with fxprune.load(path, model=<the unpruned model>) "
                            f"({second}); please report this fxprune bug")
    _warn(f"fxprune.load cannot rebuild the original model of {final} by itself ({problem}); load it with "
          f"fxprune.load(path, model=<the unpruned model>), or pass --model NAME to record a "
          f"fxprune.models/torchvision.models name")


def cmd_validate(args: argparse.Namespace, stage: list[str]) -> int:
    import torch

    import fxprune
    from fxprune import io as fxio
    from fxprune.errors import InputError, PlanError, ValidationError
    from fxprune.report import count_macs, count_params, human
    from fxprune.validate import validate

    stage[0] = "checking the options"
    path = Path(args.file)
    if not path.exists():
        raise CLIError(f"no such file: {path}; check the FILE path")
    onnx = Path(args.onnx) if args.onnx else None
    if onnx is not None and not onnx.is_file():
        raise CLIError(f"no such file: {onnx}; check the --onnx path")
    if args.model is not None:
        check_model_name(args.model)

    stage[0] = f"reading {path}"
    try:
        payload = fxio.read(path)
    except InputError as exc:
        raise CLIError(f"{_one_line(exc)}; pass a .fxp file written by fxprune.save or '{PROG} prune'") from None
    source = payload["source"]
    original = build_named(args.model, _cli_kwargs(args))[0] if args.model else None
    stage[0] = f"reloading {path} with fxprune.load"
    try:
        gm = fxprune.load(path, model=original)
    except InputError as exc:
        raise CLIError(f"cannot rebuild the model {path} was pruned from ({_one_line(exc)}); pass --model NAME "
                       f"with its fxprune.models/torchvision.models name") from None
    except PlanError as exc:
        raise CLIError(f"{_one_line(exc)}; pass the --model (and --num-classes/--in-channels) {path} was "
                       f"pruned from") from None
    gen = torch.Generator().manual_seed(args.seed)
    inputs = tuple(torch.randn(tuple(s), generator=gen) for s in payload["input_shapes"])
    params, macs = count_params(gm), count_macs(gm, inputs)
    label = _label(source, gm) if args.model is None else args.model
    print(f"{path}: pruned {label}, input {_shape_text(inputs)}, params {human(params)}, MACs {human(macs)}")
    recorded = (payload.get("report") or {}).get("params_after")
    if recorded is not None and int(recorded) != params:
        raise ValidationError(f"{path} reloads with {params} parameters but recorded {recorded} when it was "
                              f"saved; pass the --model it was pruned from")

    stage[0] = "validating the reloaded model in onnxruntime"
    report = validate(gm, inputs, rtol=args.rtol)
    print(f"reloaded model vs onnxruntime (fresh export): {report}")

    if onnx is not None:
        stage[0] = f"running {onnx} in onnxruntime"
        outs = run_onnx_file(onnx, inputs, str(path))
        with torch.no_grad():
            refs = _flatten(gm(*inputs))
        err, scale = max_abs_error(refs, outs)
        tol = args.rtol * max(1.0, scale)
        verdict = "ok" if err <= tol else "MISMATCH"
        print(f"{onnx} vs reloaded model: {verdict} max_abs={err:.3g} tol={tol:.3g}")
        if err > tol:
            raise ValidationError(f"{onnx} disagrees with the reloaded {path}: max abs error {err:.3g} > "
                                  f"tolerance {tol:.3g}")
    print("ok")
    return 0


# ============================================================================ main


def _hint(exc: BaseException, command: str) -> str:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fxprune-trace`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, argparse errors (already printed, one line)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)

    from fxprune.errors import FxpruneError, PassError

    stage = ["starting"]
    try:
        with warnings.catch_warnings():
            if not args.debug:
                warnings.simplefilter("ignore")
            return int(args.func(args, stage) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except CLIError as exc:
        if args.debug:
            raise
        _fail(str(exc))
        return 2
    except PassError as exc:
        if args.debug:
            raise
        _fail(f"{_one_line(exc)}; rerun with --debug for the traceback and please report it")
        return 1
    except FxpruneError as exc:
        if args.debug:
            raise
        _fail(f"{_one_line(exc)}; {_hint(exc, args.command)}")
        return 2
    except InternalError as exc:
        if args.debug:
            raise (exc.__cause__ or exc)
        _fail(f"{_one_line(exc)}; rerun with --debug for the traceback")
        return 1
    except OSError as exc:
        if args.debug:
            raise
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        _fail(f"{exc.strerror or _describe(exc)}{where} while {stage[0]}; check the path and free space")
        return 2
    except Exception as exc:  # noqa: BLE001 - the one place unexpected errors are reported
        if args.debug:
            raise
        _fail(f"unexpected {_describe(exc)} while {stage[0]}; rerun with --debug for the traceback and "
              f"please report it")
        return 1


def _fail(message: str) -> None:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr, flush=True)


if __name__ == "__main__":  # pragma: no cover - python -m fxprune.cli
    sys.exit(main())
