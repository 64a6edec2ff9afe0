"""The ``fxprune-trace`` sub-commands ``groups`` and ``validate`` (``prune`` lives in ``prune.py``).

Each ``cmd_*`` takes the parsed arguments and a one-element ``stage`` list that
it keeps pointing at what is being done (used in error messages), prints its
result on stdout and returns the exit code; problems are raised (see ``errors.py``).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .checkpoints import example_inputs, fxp_errors, load_checkpoint, pickled_fxp_error, shape_text
from .errors import PROG, CLIError, one_line
from .named_models import build_named, check_model_name, cli_kwargs, label
from .outputs import flatten, max_abs_error, run_onnx_file_batches
from .prune import cmd_prune
from .values import available_device

__all__ = ["cmd_groups", "cmd_prune", "cmd_validate"]


def cmd_groups(args: argparse.Namespace, stage: list[str]) -> int:
    """Print ``fxprune.analyze``'s channel-group report and the model's params and MACs."""
    import fxprune
    from fxprune.errors import UnsupportedOpError
    from fxprune.report import count_macs, count_params, human

    device = available_device(getattr(args, "device", "cpu"))
    stage[0] = "loading the checkpoint"
    loaded = load_checkpoint(args.checkpoint, args)
    loaded.model.to(device)  # the model read from CHECKPOINT is ours to move
    inputs = tuple(x.to(device) for x in example_inputs(loaded, args))
    stage[0] = "analysing the model"
    try:
        graph = fxprune.analyze(loaded.model, inputs, strict=args.strict, capture=args.capture)
    except UnsupportedOpError as exc:
        raise CLIError(f"{one_line(exc)}; drop --strict to treat such ops as barriers") from None
    params, macs = count_params(loaded.model), count_macs(loaded.model, inputs)
    print(graph)
    print()
    print(f"model: {loaded.label}, input {shape_text(inputs)}")
    print(f"params: {human(params)} ({params:,})   MACs: {human(macs)} ({macs:,})")
    return 0


def cmd_validate(args: argparse.Namespace, stage: list[str]) -> int:
    """Reload a .fxp file, re-validate it in onnxruntime and optionally compare an ONNX file."""
    import torch

    from fxprune.report import count_macs, count_params, human
    from fxprune.validate import validate

    stage[0] = "checking the options"
    device = available_device(getattr(args, "device", "cpu"))
    path = Path(args.file)
    if not path.exists():
        raise CLIError(f"no such file: {path}; check the FILE path")
    onnx = Path(args.onnx) if args.onnx else None
    if onnx is not None and not onnx.is_file():
        raise CLIError(f"no such file: {onnx}; check the --onnx path")
    if args.model is not None:
        check_model_name(args.model)

    stage[0] = f"reading {path}"
    payload = _read_fxp(path)
    if onnx is not None:
        stage[0] = f"checking that {onnx} was written with {path}"
        _check_onnx_pair(payload, onnx, path)
    original = build_named(args.model, cli_kwargs(args))[0] if args.model else None
    stage[0] = f"reloading {path} with fxprune.load"
    gm = _reload(path, original, trust_source=args.trust_source)
    gen = torch.Generator().manual_seed(args.seed)
    gm.to(device)  # reloaded here: ours to move; ONNX is exported from a CPU copy
    inputs = tuple(torch.randn(tuple(s), generator=gen).to(device) for s in payload["input_shapes"])
    params, macs = count_params(gm), count_macs(gm, inputs)
    name = label(payload["source"], gm) if args.model is None else args.model
    print(f"{path}: pruned {name}, input {shape_text(inputs)}, params {human(params)}, MACs {human(macs)}")
    _check_recorded_params(payload, params, path)

    stage[0] = "validating the reloaded model in onnxruntime"
    report = validate(gm, inputs, rtol=args.rtol)
    print(f"reloaded model vs onnxruntime (fresh export): {report}")
    if onnx is not None:
        stage[0] = f"running {onnx} in onnxruntime"
        _compare_onnx_file(onnx, path, gm, inputs, args.rtol)
    print("ok")
    return 0


def _read_fxp(path: Path) -> dict:
    """The checked payload of a .fxp file (``fxprune.io.read``); unreadable files are a CLIError."""
    from fxprune import io as fxio
    from fxprune.errors import InputError

    try:
        return fxio.read(path)
    except fxio.PickledFileError as exc:
        raise pickled_fxp_error(path, exc) from None
    except InputError as exc:
        raise CLIError(f"{one_line(exc)}; pass a .fxp file written by fxprune.save or '{PROG} prune'") from None


def _reload(path: Path, original: Any, trust_source: bool = False) -> Any:
    """``fxprune.load(path, model=original, trust_source=...)``; problems are one-line CLIErrors."""
    import fxprune

    with fxp_errors(path):
        return fxprune.load(path, model=original, trust_source=trust_source)


def _check_recorded_params(payload: dict, params: int, path: Path) -> None:
    """The reloaded model must have the parameter count recorded when the file was saved."""
    from fxprune.errors import ValidationError

    recorded = (payload.get("report") or {}).get("params_after")
    if recorded is not None and int(recorded) != params:
        raise ValidationError(f"{path} reloads with {params} parameters but recorded {recorded} when it was "
                              f"saved; pass the --model it was pruned from")


def _check_onnx_pair(payload: dict, onnx: Path, path: Path) -> None:
    """The ONNX file must be the one written with the .fxp file (``fxprune.io.check_onnx_pair``);
    a .fxp file that records no ONNX file is compared by its outputs only (a line says so)."""
    from fxprune import io as fxio
    from fxprune.errors import InputError

    try:
        recorded = fxio.check_onnx_pair(payload, onnx, str(path))
    except InputError as exc:
        raise CLIError(one_line(exc)) from None
    if not recorded:
        print(f"{onnx}: {path} records no ONNX file written with it; comparing their outputs only")


def _compare_onnx_file(onnx: Path, path: Path, gm: Any, inputs: tuple, rtol: float) -> None:
    """Run ``onnx`` in onnxruntime at the recorded batch size (and one more when its batch axis is
    dynamic), compare it with the reloaded model and print the verdict."""
    import torch

    from fxprune.errors import ValidationError

    err = tol = 0.0
    sizes = []
    for args, outs in run_onnx_file_batches(onnx, inputs, str(path)):
        with torch.no_grad():
            refs = flatten(gm(*args))
        run_err, scale = max_abs_error(refs, outs)
        err, tol = max(err, run_err), max(tol, rtol * max(1.0, scale))
        sizes.append(str(args[0].shape[0]) if args and args[0].dim() else "-")
    verdict = "ok" if err <= tol else "MISMATCH"
    print(f"{onnx} vs reloaded model: {verdict} max_abs={err:.3g} tol={tol:.3g} (batch {', '.join(sizes)})")
    if err > tol:
        raise ValidationError(f"{onnx} disagrees with the reloaded {path}: max abs error {err:.3g} > "
                              f"tolerance {tol:.3g}")
