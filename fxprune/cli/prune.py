"""``fxprune-trace prune``: prune CHECKPOINT, check it, write ``.fxp`` (and ``.onnx``), print a summary.

Order of work: check the options and output paths (an output may not be the checkpoint, nor
an existing device node, FIFO, socket or directory), load the model (and calibration data),
check that it gives finite outputs, ``fxprune.compile``, measure the original in onnxruntime,
then write every output to a temporary file, reload the ``.fxp`` with ``fxprune.load`` and
only then move the files into place.

Publish order: the ``.fxp`` first, then the ``.onnx``. The ``.fxp`` records the sha256 of the
ONNX file written with it, so a crash that no handler can catch (SIGKILL, power loss) between
the two renames leaves the new ``.fxp`` beside the old ``.onnx`` and ``validate --onnx`` says
they were not written together. The other order could leave a new ``.onnx`` beside an old
``.fxp`` written before the digest was recorded: a mismatch nothing could detect. SIGTERM and
SIGINT are held back during the renames (``fxprune.atomic``), so they never split the pair.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .calibration import check_data_spec, load_data
from .checkpoints import Loaded, example_inputs, load_checkpoint, shape_text
from .errors import CLIError, InternalError, describe, one_line, warn
from .named_models import NAMED_KINDS
from .outputs import PassDumper, check_output, flatten, max_abs_error, same_file, write_together
from .values import available_device


@dataclass
class Outputs:
    """Where ``prune`` writes: the .fxp file, the optional ONNX file and pass-dump folder."""

    out: Path
    onnx: Path | None
    dump: Path | None


def cmd_prune(args: argparse.Namespace, stage: list[str]) -> int:
    """Run ``prune``; ``stage[0]`` always says what is being done (for error messages). Under
    ``torchrun`` every rank prunes its share of ``--data``; rank 0 alone validates and writes."""
    import torch

    from fxprune import distributed

    stage[0] = "checking the options"
    needs_data = _needs_data(args.method)
    where = _check_options(args, needs_data)

    device = available_device(getattr(args, "device", "cpu"))
    stage[0] = "joining the torchrun process group"
    distributed.init_from_env(backend="nccl" if device.type == "cuda" else "gloo")  # no-op without torchrun
    stage[0] = "loading the checkpoint"
    loaded = load_checkpoint(args.checkpoint, args)
    loaded.model.to(device)  # the model read from CHECKPOINT is ours to move
    inputs = tuple(x.to(device) for x in example_inputs(loaded, args))
    stage[0] = "running the model on the example inputs"
    _require_finite_outputs(loaded, inputs)
    options = method_options(args)
    if needs_data:
        stage[0] = "loading the calibration data"
        options["data"] = distributed.shard(load_data(args.data, args.calibration_size, tuple(inputs[0].shape)))

    torch.manual_seed(args.seed)
    dumper = PassDumper(where.dump)
    stage[0] = "pruning"
    result = _compile(loaded, inputs, args, options, dumper)
    if distributed.is_distributed():  # every rank holds the same result: rank 0 alone checks, writes, prints
        main = distributed.is_main()
        distributed.close()
        if not main:
            return 0

    stage[0] = "measuring the original model in onnxruntime"
    before = _validate_original(loaded, inputs, args)
    loaded.model.cpu()  # files, ONNX export and latency from CPU tensors
    result.module.cpu()
    inputs = tuple(x.cpu() for x in inputs)
    latency, exported = _write_outputs(result, loaded, inputs, before, args, where, stage)
    _print_summary(result, loaded, inputs, before, latency, args, where, dumper, exported)
    return 0


def _needs_data(method: str) -> bool:
    """Whether ``method`` takes calibration data (a ``data`` option)."""
    from fxprune.passes import METHODS

    cls = METHODS[method]
    if "data" not in {f.name for f in dataclasses.fields(cls)}:
        return False
    if hasattr(cls, "needs_data"):  # layer-wise methods: some need data only to reweight
        return bool(cls.needs_data or cls.needs_features or cls.needs_targets)
    return True


def _check_options(args: argparse.Namespace, needs_data: bool) -> Outputs:
    """Everything about the options that can be checked before loading anything."""
    if needs_data and args.data is None:
        raise CLIError(f"method {args.method!r} needs calibration data; pass --data fashion-mnist, --data "
                       f"bundled or --data DIR (a folder of (inputs, targets) .pt batches)")
    out = check_output(args.out, "--out", inputs=[args.checkpoint])
    onnx = check_output(args.onnx, "--onnx", inputs=[args.checkpoint])
    if onnx is not None and same_file(onnx, out):
        raise CLIError("--out and --onnx name the same file; pass two different paths")
    dump = Path(args.dump_passes) if args.dump_passes else None
    if dump is not None and dump.exists() and not dump.is_dir():
        raise CLIError(f"--dump-passes {dump} exists and is not a directory; pass a directory path")
    check_data_spec(args.data)
    if args.data is not None and not needs_data:
        warn(f"--data is not used by method {args.method!r}")
    return Outputs(out, onnx, dump)


def method_options(args: argparse.Namespace) -> dict:
    """The options ``fxprune.compile`` passes to the method, from the command line."""
    from fxprune.passes import METHODS

    fields = {f.name for f in dataclasses.fields(METHODS[args.method])}
    options: dict[str, Any] = {"scope": args.scope, "round_to": args.round_to, "ignore": args.ignore}
    if "seed" in fields:
        options["seed"] = args.seed
    if "progress" in fields:
        options["progress"] = sys.stderr.isatty()
    options.update(extra_options(args.method, getattr(args, "options", [])))
    return options


def extra_options(method: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs as typed options of ``method`` (TrainConfig fields go to
    ``train`` for methods that train)."""
    import ast

    from fxprune.passes import METHODS
    from fxprune.training import TrainConfig

    fields = {f.name for f in dataclasses.fields(METHODS[method])} - {"data", "train", "loss_fn", "name"}
    train_fields = TrainConfig.fields() - {"loader", "loss_fn", "eval_loader", "log"} \
        if "train" in {f.name for f in dataclasses.fields(METHODS[method])} else set()
    out: dict[str, Any] = {}
    for key, text in pairs:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        if key in fields:
            out[key] = value
        elif key in train_fields:
            out.setdefault("train", {})[key] = value
        else:
            known = ", ".join(sorted(fields | train_fields))
            raise CLIError(f"--option {key}: method {method!r} has no such option; options: {known}")
    return out


def _compile(loaded: Loaded, inputs: tuple, args: argparse.Namespace, options: dict, dumper: PassDumper) -> Any:
    """``fxprune.compile`` with validation; failures outside any pass become InternalError."""
    import fxprune
    from fxprune.errors import FxpruneError, UnsupportedOpError

    try:
        return fxprune.compile(loaded.model, inputs, args.method, args.sparsity, validate=True,
                               rtol=args.rtol, strict=args.strict, callback=dumper,
                               compensate=getattr(args, "compensate", True),
                               capture=getattr(args, "capture", "auto"), **options)
    except UnsupportedOpError as exc:
        raise CLIError(f"{one_line(exc)}; drop --strict to treat such ops as barriers") from None
    except FxpruneError:
        raise
    except Exception as exc:  # noqa: BLE001 - outside any pass (trace, cost counting)
        after = f" after pass(es) {', '.join(dumper.done)}" if dumper.done else ""
        raise InternalError(f"pruning failed{after}: {describe(exc)}") from exc


def _require_finite_outputs(loaded: Loaded, inputs: tuple) -> None:
    """The unpruned model must give finite outputs on the example inputs: NaN/inf can never be
    validated. (A model that fails to run is left to ``fxprune.compile`` to report.)"""
    import torch

    from fxprune.report import eval_mode
    from fxprune.validate import flatten_outputs, non_finite

    try:
        with eval_mode(loaded.model), torch.no_grad():
            outputs = flatten_outputs(loaded.model(*inputs))
    except Exception:  # noqa: BLE001 - reported with context by the trace in fxprune.compile
        return
    where = non_finite(outputs)
    if where:
        raise CLIError(f"the model already produces NaN/inf on the example inputs ({where}), before any "
                       f"pruning; check the checkpoint's weights for NaN/inf (and --input-shape)")


def _validate_original(loaded: Loaded, inputs: tuple, args: argparse.Namespace) -> Any:
    """The original model's onnxruntime report (with its ONNX bytes), None if it cannot be exported."""
    from fxprune.errors import ValidationError
    from fxprune.validate import validate

    try:
        return validate(loaded.model, inputs, rtol=args.rtol, keep_onnx=True, raise_on_mismatch=False,
                        dynamic_batch=not args.static_shapes)
    except ValidationError as exc:
        warn(f"the original model could not be checked in onnxruntime: {one_line(exc)}")
        return None


def _write_outputs(result: Any, loaded: Loaded, inputs: tuple, before: Any, args: argparse.Namespace,
                   where: Outputs, stage: list[str]) -> tuple[tuple[str, str, str], Any]:
    """Write the .fxp and ONNX files (all or nothing; see the module doc for the order), measuring
    latency in between; returns the latency row's cells (before, after, after/before) and the
    pruned model's ONNX report (None when neither --onnx nor latency runs asked for it)."""
    import hashlib

    latency = ("-", "-", "")
    exported = None
    if where.onnx is not None or args.latency_runs:
        stage[0] = "exporting the pruned model to ONNX"
        exported = _export_pruned(result.module, inputs, args, where)

    def work(tmp_out: Path, tmp_onnx: Path | None) -> None:
        """Fill the temporary files; ``write_together`` publishes them when this returns."""
        nonlocal latency
        onnx_record = None
        if tmp_onnx is not None:
            stage[0] = f"writing {where.onnx}"
            tmp_onnx.write_bytes(exported.onnx_bytes)
            onnx_record = (hashlib.sha256(exported.onnx_bytes).hexdigest(), where.onnx.name)
        if args.latency_runs:
            stage[0] = "measuring onnxruntime latency"
            latency = _latency(exported, before, inputs, args.latency_runs)
        stage[0] = f"writing {where.out}"
        named = _save(result, loaded, tmp_out, onnx_record)
        stage[0] = f"reloading {where.out} with fxprune.load"
        check_reload(tmp_out, where.out, result.module, inputs, loaded, named,
                     trust_source=bool(getattr(args, "trust_source", False)))

    stage[0] = f"writing {where.out}" + (f" and {where.onnx}" if where.onnx is not None else "")
    write_together([where.out, where.onnx], work)
    return latency, exported


def _export_pruned(pruned: Any, inputs: tuple, args: argparse.Namespace, where: Outputs) -> Any:
    """The pruned model exported to ONNX and checked in onnxruntime (its report, with the bytes):
    a dynamic batch axis unless --static-shapes (a warning says why when the model needs fixed shapes)."""
    from fxprune.validate import validate

    report = validate(pruned, inputs, rtol=args.rtol, keep_onnx=True, dynamic_batch=not args.static_shapes)
    if report.note and where.onnx is not None:
        warn(f"{where.onnx}: {report.note}")
    return report


def _latency(exported: Any, before: Any, inputs: tuple, runs: int) -> tuple[str, str, str]:
    """Median onnxruntime latency of the original and the pruned model, as table cells."""
    from fxprune.validate import ort_latency

    after_s = ort_latency(exported.onnx_bytes, inputs, runs=runs, input_names=exported.input_names)
    before_s = (ort_latency(before.onnx_bytes, inputs, runs=runs, input_names=before.input_names)
                if before is not None else None)
    return (f"{before_s * 1e3:.2f} ms" if before_s is not None else "-", f"{after_s * 1e3:.2f} ms",
            f"{after_s / before_s:.1%}" if before_s else "")


def _save(result: Any, loaded: Loaded, path: Path, onnx_record: tuple[str, str] | None = None) -> bool:
    """``fxprune.save`` the result (a re-pruned .fxp as one plan on the original model), recording
    ``onnx_record`` (sha256, file name) of the ONNX file written with it; returns whether the file
    names a zoo/torchvision model."""
    import fxprune

    onnx = {"onnx_sha256": onnx_record[0], "onnx_file": onnx_record[1]} if onnx_record else {}
    save_result = result
    source = loaded.source
    if loaded.payload is not None:  # a .fxp pruned again: one plan on the original
        units = {g.id: g.units for g in result.graph.groups}
        save_result = dataclasses.replace(result, plan=compose_plan(loaded.payload["plan"], result.plan, units))
    named = source is not None and source.get("kind") in NAMED_KINDS
    if named:
        fxprune.save(save_result, path, model_name=source["name"], model_kwargs=source.get("kwargs"), **onnx)
    else:
        if source is not None:
            save_result = dataclasses.replace(save_result, source=source)
        fxprune.save(save_result, path, **onnx)
    return named


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


def check_reload(tmp: Path, final: Path, pruned: Any, inputs: tuple, loaded: Loaded, named: bool, *,
                 trust_source: bool = False) -> None:
    """The written file must reload (``fxprune.load``) into the model just pruned.

    A file that names a zoo/torchvision model must reload by itself; one that records a class
    (a pickled module) may need ``model=`` or ``trust_source`` (a warning says so) but must then
    reload exactly; ``trust_source`` is the user's ``--trust-source``.
    """
    import torch

    with torch.no_grad():
        want = flatten(pruned.eval()(*inputs))
    problem = _reload_error(tmp, final, want, inputs, trust_source=trust_source)
    if problem is None:
        return
    if named or loaded.original is None:
        raise InternalError(f"{final} does not reload with fxprune.load ({problem}); please report this fxprune bug")
    second = _reload_error(tmp, final, want, inputs, copy.deepcopy(loaded.original()))
    if second is not None:
        raise InternalError(f"{final} does not reload with fxprune.load(path, model=<the unpruned model>) "
                            f"({second}); please report this fxprune bug")
    warn(f"fxprune.load cannot rebuild the original model of {final} by itself ({problem}); load it with "
         f"fxprune.load(path, model=<the unpruned model>), or pass --model NAME to record a "
         f"fxprune.models/torchvision.models name")


def _reload_error(tmp: Path, final: Path, want: list, inputs: tuple, model: Any = None, *,
                  trust_source: bool = False) -> str | None:
    """Why ``fxprune.load(tmp, model=model, trust_source=...)`` does not give outputs ``want`` (None if it does)."""
    import torch

    import fxprune
    from fxprune.errors import FxpruneError

    try:
        gm = fxprune.load(tmp, model=model, trust_source=trust_source)
        with torch.no_grad():
            err, scale = max_abs_error(want, flatten(gm(*inputs)))
    except (FxpruneError, CLIError) as exc:
        return one_line(exc).replace(str(tmp), str(final))
    return None if err <= 1e-5 * max(1.0, scale) else f"it reloads with outputs off by {err:.3g}"


def _print_summary(result: Any, loaded: Loaded, inputs: tuple, before: Any, latency: tuple[str, str, str],
                   args: argparse.Namespace, where: Outputs, dumper: PassDumper, exported: Any) -> None:
    """What was pruned, the before/after table, timings, warnings and the files written."""
    from fxprune.report import format_table, human

    rep = result.report
    pruned_groups = [g for g in rep.groups if g.removed]
    targets = [f"{k}={v}" for k, v in extra_options(args.method, getattr(args, "options", [])).items()
               if k.startswith("target_") or k == "compression"]
    budget = (", ".join(targets) if targets else f"sparsity {args.sparsity:g}") + f", {args.scope}" \
        + (f", round_to {args.round_to}" if args.round_to > 1 else "")
    print(f"{loaded.label}: {args.method} ({budget}) on input {shape_text(inputs)}: "
          f"{len(pruned_groups)} of {len(rep.groups)} prunable groups pruned "
          f"({sum(g.removed for g in pruned_groups)} units removed)")
    print(format_table(_summary_rows(result, before, latency, args), header=("", "before", "after", "after/before")))
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in rep.seconds.items()))
    if rep.details.get("summary"):  # training-time methods: target and what was reached
        print(rep.details["summary"])
    for w in rep.warnings:
        warn(w)
    written = [f"{where.out} ({human(where.out.stat().st_size)}B)"]
    if where.onnx is not None:
        batch = "dynamic batch" if exported.dynamic_batch else "fixed shapes"
        written.append(f"{where.onnx} ({human(where.onnx.stat().st_size)}B, {batch})")
    if where.dump is not None:
        written.append(f"{len(dumper.done)} pass dumps in {where.dump}")
    print("wrote " + ", ".join(written))


def _summary_rows(result: Any, before: Any, latency: tuple[str, str, str], args: argparse.Namespace) -> list:
    """The rows of the before/after table: params, MACs, latency, onnxruntime error."""
    from fxprune.report import human
    from fxprune.state import state_of

    rep, state = result.report, state_of(result.module)
    after = state.validation if state is not None else None

    def pct(a: float, b: float) -> str:
        return f"{a / b:.1%}" if b else ""

    def err(r: Any) -> str:
        return f"{r.max_abs:.3g}" if r is not None else "-"

    return [
        ("params", human(rep.params_before), human(rep.params_after), pct(rep.params_after, rep.params_before)),
        ("MACs", human(rep.macs_before), human(rep.macs_after), pct(rep.macs_after, rep.macs_before)),
        (f"onnxruntime latency (median of {args.latency_runs})" if args.latency_runs
         else "onnxruntime latency (--latency-runs 0)", *latency),
        ("max |onnxruntime - torch|", err(before), err(after), ""),
    ]
