"""Reading CHECKPOINT: the four accepted kinds, and random example inputs that fit the model.

(a) a ``state_dict`` (needs ``--model``), (b) a ``tools/train.py`` checkpoint,
(c) a ``.fxp`` file written by ``fxprune.save``, (d) a pickled ``nn.Module``.
Every problem with the file is a ``CLIError``.

Security model: files are read with ``torch.load(weights_only=True)``; a file that
would need unpickling (d, or anything holding pickled objects) is refused, with no
code run, unless ``--no-weights-only`` is given (then a warning, and it must give an
``nn.Module``). A ``.fxp`` file is checked field by field and by its weights digest
(``fxprune.io``); the model it names is built from a registry (fxprune.models,
torchvision.models, timm), and a user class it names is imported only with
``--trust-source`` (importing runs that module's code; only an ``nn.Module``
subclass is instantiated) or replaced by ``--model NAME``.
"""
from __future__ import annotations

import argparse
import contextlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import CLIError, first_line, one_line, short, warn
from .named_models import NAMED_KINDS, build_named, check_model_name, cli_kwargs, default_shape, label, named_source

_MODULE_PREFIXES = ("torch.nn.modules.", "torch.fx.graph_module", "torchvision.models.", "fxprune.")


@dataclass
class Loaded:
    """A model read from CHECKPOINT and what is known about it."""

    model: Any  # nn.Module, in eval mode
    label: str  # for messages: "resnet18 (torchvision.models)"
    source: dict | None  # how fxprune.save should describe the original model (None: its class)
    shapes: list[tuple[int, ...]] | None  # default example-input shapes
    payload: dict | None = None  # the .fxp payload, for a pruned model
    original: Callable[[], Any] | None = None  # builds the unpruned definition (for fxprune.load)


# ---------------------------------------------------------------------------- reading the file


def _corrupt(path: Path, exc: BaseException) -> CLIError:
    """The error for a file torch.load cannot read at all."""
    return CLIError(f"{path} is not a readable PyTorch file (corrupt or truncated: {short(exc)}); "
                    f"save it again with torch.save")


def torch_load(path: Path, weights_only: bool = True) -> Any:
    """``torch.load(weights_only=True)``; a file of pickled objects is a CLIError (no code run)
    unless ``weights_only`` is False, and then it must be a pickled nn.Module (after a warning)."""
    import torch
    from fxprune.pickle_scan import pickle_globals, shown_globals

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        names = pickle_globals(path)
        if names is None:
            raise _corrupt(path, exc) from None
    except Exception as exc:  # noqa: BLE001 - zip/EOF/Key errors all mean a damaged file
        raise _corrupt(path, exc) from None
    if weights_only:
        raise CLIError(f"{path} holds pickled Python objects{shown_globals(names)}; unpickling runs code from "
                       f"the file, so it was not loaded and no code was run; pass --no-weights-only to unpickle "
                       f"it if you trust the file, or save a state_dict (torch.save(model.state_dict())) and "
                       f"pass --model")
    if not any(n.startswith(_MODULE_PREFIXES) for n in names):
        raise CLIError(f"{path} holds pickled objects that are not a model{shown_globals(names) or ' (unknown)'}; "
                       f"save a state_dict (torch.save(model.state_dict())) and pass --model")
    return _unpickle_module(path)


def _unpickle_module(path: Path) -> Any:
    """``torch.load(weights_only=False)`` after a warning; it must give an nn.Module."""
    import torch
    from torch import nn

    warn(f"{path} is a pickled model: --no-weights-only unpickles it, which runs code from the file; only "
         f"do so with files you trust (a state_dict with --model needs no unpickling)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"cannot unpickle the model in {path} ({first_line(exc)}); its classes must be "
                       f"importable here, or save a state_dict and pass --model") from None
    if not isinstance(obj, nn.Module):
        raise CLIError(f"{path} holds a pickled {type(obj).__name__}, not a model; save a state_dict "
                       f"and pass --model")
    return obj


def state_dict_of(obj: Any) -> dict | None:
    """The state_dict in ``obj`` (itself, or under a usual key), else None."""
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


def _listed(keys: list[str]) -> str:
    """The first two keys, with ``...`` when there are more."""
    return f"{', '.join(keys[:2])}{', ...' if len(keys) > 2 else ''}"


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
            parts.append(f"{len(missing)} missing key(s) ({_listed(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) ({_listed(unexpected)})")
        if wrong:
            k, have, want = wrong[0]
            parts.append(f"{len(wrong)} shape mismatch(es) ({k}: file {have}, model {want})")
        raise CLIError(f"{path} does not fit {what}: {'; '.join(parts)}; pass the --model (and "
                       f"--num-classes/--in-channels) the state_dict was saved from")
    model.load_state_dict(state)


# ---------------------------------------------------------------------------- the four kinds


def load_checkpoint(path_text: str, args: argparse.Namespace) -> Loaded:
    """Read CHECKPOINT in any of the four accepted forms (see the module doc)."""
    from fxprune import io as fxio
    from torch import nn

    path = Path(path_text)
    if not path.exists():
        raise CLIError(f"no such file: {path}; check the CHECKPOINT path")
    if path.is_dir():
        raise CLIError(f"{path} is a directory; pass a checkpoint file")
    if args.model is not None:
        check_model_name(args.model)
    kwargs = cli_kwargs(args)
    obj = torch_load(path, weights_only=getattr(args, "weights_only", True))
    if isinstance(obj, nn.Module):
        return _from_module(obj, args, kwargs)
    if isinstance(obj, dict) and obj.get("format") == fxio.FORMAT:
        return _from_fxp(obj, path, args, kwargs)
    if (isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "name" in obj["model"]
            and isinstance(obj.get("state_dict"), dict)):
        return _from_train_checkpoint(obj, path, args, kwargs)
    state = state_dict_of(obj)
    if state is not None:
        return _from_state_dict(state, path, args, kwargs)
    raise CLIError(f"{path} holds a {type(obj).__name__} that is not a model, a state_dict, a tools/train.py "
                   f"checkpoint or a .fxp file; pass one of those")


def _from_module(model: Any, args: argparse.Namespace, kwargs: dict) -> Loaded:
    """(d) a pickled nn.Module, described by --model or by its fxprune.models record."""
    from fxprune import io as fxio

    model = model.eval()
    if args.model is not None:
        source = named_source(args.model, kwargs)
    elif getattr(model, "_fxprune_name", None):
        source = fxio.model_source(model)
    else:
        source = None
    shapes = default_shape(source)
    if shapes is None and type(model).__module__.startswith("torchvision.models"):
        shapes = [(1, 3, 224, 224)]
    return Loaded(model, label(source, model), source, shapes, original=lambda: model)


def _from_fxp(obj: dict, path: Path, args: argparse.Namespace, kwargs: dict) -> Loaded:
    """(c) a .fxp file (fields and digest checked), reloaded on its original (or the --model) definition;
    a class it names is imported only with --trust-source."""
    from fxprune import io as fxio
    from fxprune.errors import InputError

    try:
        payload = fxio.check_payload(obj, str(path))
    except InputError as exc:
        raise CLIError(f"{one_line(exc)}; pass a .fxp file written by fxprune.save or 'fxprune-trace prune'") from None
    original: Callable[[], Any]
    if args.model is not None:
        def original() -> Any:
            return build_named(args.model, kwargs)[0]
        source = named_source(args.model, kwargs)
    else:
        source = dict(payload["source"])
        if kwargs and source["kind"] in NAMED_KINDS:
            source["kwargs"] = {**source["kwargs"], **kwargs}
        trust = bool(getattr(args, "trust_source", False))

        def original() -> Any:
            return fxio.build_model(source, trust_source=trust, where=str(path))
    with fxp_errors(path):
        gm = fxio.rebuild(payload, original(), str(path))
    shapes = [tuple(s) for s in payload["input_shapes"]]
    return Loaded(gm, f"pruned {label(source, None)}", source, shapes, payload=payload, original=original)


@contextlib.contextmanager
def fxp_errors(path: Path) -> Iterator[None]:
    """Errors of rebuilding the model of .fxp file ``path`` as one-line CLIErrors with a fix."""
    from fxprune.errors import InputError, PlanError
    from fxprune.errors import PickledFileError, UntrustedSourceError

    try:
        yield
    except UntrustedSourceError as exc:
        raise CLIError(f"{path} names the model class {exc.class_name!r}; rebuilding it would import "
                       f"{exc.class_name.partition(':')[0]!r} and run its code, so nothing was imported and no "
                       f"code was run; pass --trust-source if you trust the file, or --model NAME with the "
                       f"fxprune.models/torchvision.models name it was pruned from") from None
    except PickledFileError as exc:
        raise pickled_fxp_error(path, exc) from None
    except InputError as exc:
        raise CLIError(f"cannot rebuild the model {path} was pruned from ({one_line(exc)}); pass --model NAME "
                       f"with its fxprune.models/torchvision.models name") from None
    except PlanError as exc:
        raise CLIError(f"{one_line(exc)}; pass the --model (and --num-classes/--in-channels) {path} was "
                       f"pruned from") from None


def pickled_fxp_error(path: Path, exc: Any) -> CLIError:
    """The error for a pickled file where a .fxp file is expected (``fxprune.io.PickledFileError``)."""
    from fxprune.pickle_scan import shown_globals

    return CLIError(f"{path} holds pickled Python objects{shown_globals(exc.globals)}, not a .fxp file; .fxp "
                    f"files are plain data and are never unpickled, so no code was run (--no-weights-only "
                    f"applies to a groups/prune CHECKPOINT only); pass a .fxp file written by fxprune.save or "
                    f"'fxprune-trace prune'")


def _from_train_checkpoint(obj: dict, path: Path, args: argparse.Namespace, kwargs: dict) -> Loaded:
    """(b) a tools/train.py checkpoint: the model it names, with its weights."""
    name = obj["model"]["name"]
    if args.model is not None and args.model != name:
        raise CLIError(f"{path} is a checkpoint of {name} but --model {args.model} was given; "
                       f"drop --model (the checkpoint names its model)")
    model, source = build_named(name, {**dict(obj["model"].get("kwargs", {})), **kwargs})
    load_state(model, obj["state_dict"], path, label(source, model))
    cifar = bool((obj.get("meta") or {}).get("cifar_shape", False))
    return Loaded(model, label(source, model), source, default_shape(source, cifar))


def _from_state_dict(state: dict, path: Path, args: argparse.Namespace, kwargs: dict) -> Loaded:
    """(a) a plain state_dict, loaded into the --model it belongs to."""
    if args.model is None:
        raise CLIError(f"{path} is a state_dict, which does not say which model it belongs to; "
                       f"pass --model NAME (a fxprune.models or torchvision.models name)")
    model, source = build_named(args.model, kwargs)
    load_state(model, state, path, label(source, model))
    return Loaded(model, label(source, model), source, default_shape(source))


# ---------------------------------------------------------------------------- example inputs


def example_inputs(loaded: Loaded, args: argparse.Namespace) -> tuple:
    """Random example inputs (seeded) of --input-shape or the model's default shape; checked to fit."""
    import warnings

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
        raise CLIError(f"input shape {shown} does not fit {loaded.label} ({first_line(exc)}); "
                       f"pass --input-shape N,C,H,W that the model accepts") from None
    return inputs


def shape_text(inputs: tuple) -> str:
    """How messages show the input shapes: ``"1x3x224x224"`` (several joined with "and")."""
    return " and ".join("x".join(map(str, x.shape)) for x in inputs)
