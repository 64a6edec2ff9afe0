#!/usr/bin/env python
"""Accuracy / compression / latency benchmark that every pruning method reports through.

    python tools/bench.py --model lenet5 --checkpoint checkpoints/lenet5.pt --method l1 \\
        --sparsities 0.25,0.5,0.75,0.9 --seeds 0,1,2 --finetune-epochs 0,1 \\
        --out tools/results/bench_l1_lenet5
    python tools/bench.py --model lenet5 --checkpoint checkpoints/lenet5.pt --method taylor \\
        --option scope=global --calibration 512 --out tools/results/bench_taylor_lenet5
    python tools/bench.py --model resnet56 --method l1 --sparsities 0.5 --no-accuracy \\
        --latency-runs 50 --out tools/results/bench_latency_resnet56      # no checkpoint needed

For every sparsity and seed, ``fxprune.compile(model, x, method, sparsity, **options)`` prunes
the model (``validate=False``; the pruned module is then checked with ``fxprune.validate`` so
that its ONNX bytes can be kept) and one record is written with

* accuracy before pruning, right after pruning (no fine-tuning), and after each requested number
  of fine-tuning epochs (``--finetune-epochs 0,1,3``: 0 is "no fine-tuning"; each setting
  fine-tunes its own copy of the *same* pruned model with ``tools/train.py``'s ``finetune``,
  Adam + cosine, the training data shuffled by a generator seeded with the run's seed);
* params and MACs before/after (``fxprune.report``), and their kept fractions;
* onnxruntime CPU latency before/after and the measured speedup. The original and the pruned
  ONNX models are timed *interleaved* (one run of each, alternately, ``--latency-runs`` times
  after 3 warm-up runs each; the medians are reported), so that a machine whose load changes
  during the benchmark slows both alike. ``--ort-threads`` (default 1) sets onnxruntime's
  intra-op threads (0 = onnxruntime's default);
* pruning seconds per pass from ``result.report.seconds`` (trace, analyze, the method, rewrite;
  ``prune_seconds`` is their sum), validation seconds, fine-tuning seconds per setting;
* ``train_flops``: for methods that consume data (their pass has a ``data`` option, e.g.
  taylor), every FLOP torch's ``FlopCounterMode`` counted while ``fxprune.compile`` ran (the
  method's forward/backward passes over the calibration data, plus a few single-example
  forwards for tracing and cost counting, < 1 % on lenet5 with 512 images); None for
  data-free methods (l1, random). ``finetune_flops``: FLOPs of one forward+backward training
  step measured on one batch, scaled to the images seen (optimizer arithmetic not counted).

Seeds: each run's seed goes to the method's ``seed`` option when it has one (random), to the
choice of calibration images (``fxprune.training.data.calibration(seed=...)``) for data-driven methods,
and to fine-tuning (``torch.manual_seed`` and the shuffling generator). l1 is deterministic, so
its no-fine-tuning accuracy has zero spread over seeds.

Data (``--data``): ``auto`` (default) evaluates on the full Fashion-MNIST test split (10 000
images) when the IDX files are found (``fxprune.training.data.available()``) and on the bundled
500-image test subset otherwise; ``fashion-mnist`` requires the files; ``bundled`` always uses
the subset. Fine-tuning and calibration use the training split (55 000 images, or
``--train-subset N`` of them, a fixed seeded choice shared by all seeds); without the files they
fall back to the bundled images themselves (train == eval: a smoke test, stated in the
outputs). ``--no-accuracy`` skips data, evaluation and fine-tuning (latency/compression only).

Outputs, each written atomically (temporary file + ``os.replace``): ``OUT.json`` (every run,
the per-sparsity summary, the exact command, date, machine, data scale), ``OUT.md`` (the
summary table with the command on top) and ``OUT.png`` (accuracy vs MACs kept, one line per
fine-tuning setting, error bars = std over seeds; with ``--no-accuracy``, measured speedup vs
MACs speedup). The plot needs matplotlib: ``pip install -e ".[bench]"`` (``--no-plot`` skips
it). Bad arguments end with one ``bench.py: error: ...`` line and exit code 2.

Importable (``importlib``, see tests/test_bench.py): :func:`build_parser`, :func:`run`
(``args -> results dict``, writes the files), :func:`main`.
"""
from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import datetime as _dt
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
FORMAT = 1
MNIST_MODELS = ("lenet5", "bep_cnn")  # zoo models that default to 1x28x28 inputs
PLOT_HINT = 'matplotlib is needed for the plot: pip install -e ".[bench]" (or pass --no-plot)'


class BenchError(ValueError):
    """A bad argument or missing requirement found after parsing (one ``error:`` line, exit 2)."""


# ============================================================================ helpers


def _train_module():
    """tools/train.py (not a package), loaded from its path once."""
    name = "fxprune_tools_train"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TOOLS / "train.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Create the folder if needed, then write atomically (``fxprune.atomic.atomic_write``)."""
    from fxprune.atomic import atomic_write as write_atomically

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value); (None, None) when empty."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt_seconds(s: float | None) -> str:
    """1.2e-5 -> '12 µs', 0.0123 -> '12.3 ms', 2.5 -> '2.50 s'."""
    if s is None:
        return "–"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1.0:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.2f} s"


def _pct(v: float | None, std: float | None = None) -> str:
    if v is None:
        return "–"
    return f"{v:.2%}" if std is None else f"{v:.2%} ± {std:.2%}"


def _git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("+dirty" if dirty else "")) if rev else None


def machine_info(torch_threads: int, ort_threads: int) -> dict[str, Any]:
    import onnxruntime

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__, "torch_threads": torch_threads,
        "ort_threads": ort_threads or "default",
    }
    try:
        import torchvision
        info["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    return info


def require_matplotlib():
    """The pyplot module (Agg backend), or BenchError saying how to install matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise BenchError(PLOT_HINT) from exc
    return plt


# ======================================================================= options


def parse_option(text: str) -> tuple[str, str]:
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def method_options(method: str, raw: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Turn ``--option key=value`` pairs into typed method options (checked against the pass).

    Values are Python literals when they parse as one (``0.5``, ``8``, ``True``, ``("fc3",)``),
    else strings; a comma-separated string for a tuple-typed option (``ignore=fc1,fc3``) becomes
    a tuple.
    """
    from fxprune.passes import METHODS

    if method not in METHODS:
        raise BenchError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
    fields = {f.name: f for f in dataclasses.fields(METHODS[method])}
    out: dict[str, Any] = {}
    for key, value in raw:
        if key not in fields:
            options = ", ".join(sorted(k for k in fields if k not in ("data", "sparsity")))
            raise BenchError(f"method {method!r} has no option {key!r}; options: {options}")
        if key in ("sparsity", "data"):
            raise BenchError(f"--option {key}=... is set by the benchmark (use --sparsities"
                             f"{'' if key == 'sparsity' else ' / --calibration'})")
        try:
            parsed: Any = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        if isinstance(parsed, str) and "tuple" in str(fields[key].type):
            parsed = tuple(p.strip() for p in parsed.split(",") if p.strip())
        if isinstance(parsed, list) and "tuple" in str(fields[key].type):
            parsed = tuple(parsed)
        out[key] = parsed
    return out


def method_traits(method: str) -> dict[str, bool]:
    from fxprune.passes import METHODS

    names = {f.name for f in dataclasses.fields(METHODS[method])}
    return {"data": "data" in names, "seed": "seed" in names, "progress": "progress" in names}


# ========================================================================== data


def _split_csv(text: str, kind: Callable[[str], Any], what: str) -> list[Any]:
    try:
        values = [kind(p.strip()) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: expected comma-separated {kind.__name__}s, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{what}: no values in {text!r}")
    return values


@dataclasses.dataclass
class Data:
    """Evaluation loader, fine-tuning dataset and calibration batches, with a description."""

    eval_loader: Any = None
    train_set: Any = None
    calibration: Callable[[int], list] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def load_data(args: argparse.Namespace, cifar_shape: bool, need_train: bool, need_calib: bool) -> Data:
    from torch.utils.data import DataLoader, TensorDataset

    from fxprune.training import data

    full = data.available(args.data_root)
    if args.data == "fashion-mnist" and not full:
        data.find_root(args.data_root)  # raises DataError saying how to get the files
    info: dict[str, Any] = {"mode": args.data, "full_data_available": full, "cifar_shape": cifar_shape}
    if args.data != "bundled" and full:
        test = data.load_fashion_mnist("test", cifar_shape=cifar_shape, root=args.data_root)
        info["eval"] = f"Fashion-MNIST test split, all {len(test)} images"
    else:
        test = data.bundled(cifar_shape=cifar_shape)
        info["eval"] = f"bundled Fashion-MNIST test subset ({len(test)} images, 50 per class)"
    info["eval_images"] = len(test)
    eval_loader = DataLoader(test, batch_size=1000)
    out = Data(eval_loader=eval_loader, info=info)
    if full:
        if need_train:
            loaders = data.loaders(args.batch_size, cifar_shape=cifar_shape, seed=0, root=args.data_root,
                                   train_subset=args.train_subset)
            out.train_set = loaders[0].dataset
            info["train"] = (f"Fashion-MNIST training split, {len(out.train_set)} images"
                             + (" (a fixed seeded subset: --train-subset)" if args.train_subset else ""))
            info["train_images"] = len(out.train_set)
        if need_calib:
            out.calibration = lambda seed: data.calibration(args.calibration, batch_size=args.batch_size,
                                                            cifar_shape=cifar_shape, seed=seed,
                                                            root=args.data_root)
            info["calibration"] = f"{args.calibration} seeded images of the training split"
            info["calibration_images"] = args.calibration
    else:
        smoke = data.bundled(cifar_shape=cifar_shape)
        x, y = smoke.tensors
        if need_train:
            n = min(args.train_subset or len(x), len(x))
            keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n].sort().values
            out.train_set = TensorDataset(x[keep], y[keep])
            info["train"] = (f"bundled subset ({n} images) - the Fashion-MNIST files are missing, "
                             f"so fine-tuning sees the evaluation images (smoke test only)")
            info["train_images"] = n
        if need_calib:
            def calib(seed: int) -> list:
                idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:args.calibration]
                return [(x[idx[i:i + args.batch_size]], y[idx[i:i + args.batch_size]])
                        for i in range(0, len(idx), args.batch_size)]
            out.calibration = calib
            info["calibration"] = (f"{min(args.calibration, len(x))} seeded images of the bundled "
                                   f"subset (the evaluation images: smoke test only)")
            info["calibration_images"] = min(args.calibration, len(x))
    return out


# ====================================================================== latency


def _ort_session(onnx_bytes: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def _feeds(session, args: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    # fxprune.validate names the inputs input_0, input_1, ...; unused inputs may be dropped
    by_name = {f"input_{i}": a for i, a in enumerate(args)}
    return {m.name: by_name.get(m.name, args[i] if i < len(args) else None).detach().cpu().numpy()
            for i, m in enumerate(session.get_inputs())}


def interleaved_latency(models: Sequence[bytes], args: tuple[torch.Tensor, ...], runs: int,
                        threads: int = 1, warmup: int = 3) -> list[dict[str, float]]:
    """Time ``models`` (ONNX bytes) alternately: per model the median, p25, p75 and min seconds."""
    sessions = [_ort_session(b, threads) for b in models]
    feeds = [_feeds(s, args) for s in sessions]
    for s, f in zip(sessions, feeds):
        for _ in range(warmup):
            s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    order = list(range(len(sessions)))
    for i in range(runs):
        for k in (order if i % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            sessions[k].run(None, feeds[k])
            times[k].append(time.perf_counter() - start)
    out = []
    for t in times:
        q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
        out.append({"median": statistics.median(t), "p25": q[0], "p75": q[2], "min": min(t)})
    return out


# ========================================================================= model


def build_model(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """(model in eval mode, constructor kwargs, description)."""
    import fxprune.models as zoo

    if args.model not in zoo.list():
        raise BenchError(f"unknown model {args.model!r}; choose from {', '.join(zoo.list())}")
    if args.checkpoint:
        if not os.path.isfile(args.checkpoint):
            raise BenchError(f"checkpoint not found: {args.checkpoint}")
        model, ckpt = _train_module().load_checkpoint(args.checkpoint)
        if ckpt["model"]["name"] != args.model:
            raise BenchError(f"{args.checkpoint} holds a {ckpt['model']['name']!r}, not {args.model!r}")
        kwargs = dict(ckpt["model"]["kwargs"])
        if args.in_channels and kwargs.get("in_channels") != args.in_channels:
            raise BenchError(f"--in-channels {args.in_channels} but the checkpoint has "
                             f"in_channels={kwargs.get('in_channels')}")
        meta = ckpt.get("meta", {})
        desc = {"source": f"checkpoint {args.checkpoint}", "checkpoint_test_acc": meta.get("test_acc"),
                "checkpoint_epochs": meta.get("epochs")}
    else:
        in_channels = args.in_channels or (1 if args.model in MNIST_MODELS else 3)
        kwargs = {"in_channels": in_channels, "num_classes": 10}
        torch.manual_seed(args.init_seed)
        model = zoo.get(args.model, **kwargs)
        desc = {"source": f"random init (torch.manual_seed({args.init_seed}))"}
    return model.eval(), kwargs, desc


# ====================================================================== one run


def _training_step_flops(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    """FLOPs of one forward+backward cross-entropy step on ``batch`` (no optimizer)."""
    from fxprune.flops import attention_fast_path_off, flop_counter

    work = copy.deepcopy(model).train()
    counter = flop_counter()  # counts every attention kernel, whichever ran
    with attention_fast_path_off(), counter:
        torch.nn.functional.cross_entropy(work(batch[0]), batch[1]).backward()
    return int(counter.get_total_flops())


def prune_once(model, x, method: str, sparsity: float, options: dict[str, Any], count_flops: bool):
    """``fxprune.compile`` (no validation) and the FLOPs it spent when ``count_flops``."""
    import fxprune
    from fxprune.flops import attention_fast_path_off, flop_counter

    if not count_flops:
        return fxprune.compile(model, x, method, sparsity, validate=False, **options), None
    counter = flop_counter()
    with attention_fast_path_off(), counter:
        result = fxprune.compile(model, x, method, sparsity, validate=False, **options)
    return result, int(counter.get_total_flops())


def run_one(ctx: dict[str, Any], sparsity: float, seed: int) -> dict[str, Any]:
    import fxprune
    from torch.utils.data import DataLoader

    args, model, x = ctx["args"], ctx["model"], ctx["x"]
    traits, data = ctx["traits"], ctx["data"]
    options = dict(ctx["options"])
    if traits["seed"] and "seed" not in options:
        options["seed"] = seed
    if traits["progress"] and "progress" not in options:
        options["progress"] = False
    if traits["data"]:
        options["data"] = data.calibration(seed)
    torch.manual_seed(seed)
    start = time.perf_counter()
    result, flops = prune_once(model, x, args.method, sparsity, options, traits["data"])
    compile_wall = time.perf_counter() - start
    report = result.report
    pruned = result.module.eval()
    check = fxprune.validate(pruned, (x,), rtol=args.rtol, keep_onnx=True)
    rec: dict[str, Any] = {
        "sparsity": sparsity, "seed": seed,
        "options": {k: v for k, v in options.items() if k != "data"},
        "params_before": report.params_before, "params_after": report.params_after,
        "macs_before": report.macs_before, "macs_after": report.macs_after,
        "params_kept": report.params_ratio, "macs_kept": report.macs_ratio,
        "macs_speedup": (1.0 / report.macs_ratio) if report.macs_ratio else None,
        "groups_pruned": sum(1 for g in report.groups if g.removed),
        "groups": len(report.groups), "units_removed": sum(g.removed for g in report.groups),
        "pass_seconds": dict(report.seconds),
        "prune_seconds": sum(report.seconds.values()),
        "compile_wall_seconds": compile_wall,
        "validation": {"ok": check.ok, "max_abs": check.max_abs, "tolerance": check.tolerance,
                       "exporter": check.exporter, "seconds": check.export_seconds + check.run_seconds},
        "warnings": list(report.warnings),
        "train_flops": flops,
    }
    if args.latency_runs:
        before, after = interleaved_latency([ctx["onnx_before"], check.onnx_bytes], (x,),
                                            args.latency_runs, args.ort_threads)
        rec.update(latency_before_s=before["median"], latency_after_s=after["median"],
                   speedup=before["median"] / after["median"],
                   latency_detail={"before": before, "after": after, "runs": args.latency_runs})
    else:
        rec.update(latency_before_s=None, latency_after_s=None, speedup=None)
    if not args.no_accuracy:
        ev = _train_module().evaluate
        rec["acc_before"] = ctx["acc_before"]
        rec["acc_pruned"] = ev(pruned, data.eval_loader)
        rec["acc_finetuned"], rec["finetune_seconds"], rec["finetune_flops"] = {}, {}, {}
        step_flops = None
        for epochs in args.finetune_epochs:
            if epochs == 0:
                continue
            work = copy.deepcopy(pruned)
            gen = torch.Generator().manual_seed(seed)
            loader = DataLoader(data.train_set, batch_size=args.batch_size, shuffle=True, generator=gen)
            if step_flops is None:
                batch = next(iter(DataLoader(data.train_set, batch_size=args.batch_size)))
                step_flops = _training_step_flops(pruned, batch) / len(batch[1])
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            _train_module().finetune(work, loader, epochs=epochs, lr=args.finetune_lr, seed=seed)
            rec["finetune_seconds"][str(epochs)] = time.perf_counter() - t0
            rec["acc_finetuned"][str(epochs)] = ev(work, data.eval_loader)
            rec["finetune_flops"][str(epochs)] = int(step_flops * len(data.train_set) * epochs)
    return rec


# ======================================================================= summary


def ft_settings(args: argparse.Namespace) -> list[int]:
    return [] if args.no_accuracy else list(args.finetune_epochs)


def accuracy_of(rec: dict[str, Any], epochs: int) -> float | None:
    if epochs == 0:
        return rec.get("acc_pruned")
    return (rec.get("acc_finetuned") or {}).get(str(epochs))


def summarize(runs: list[dict[str, Any]], settings: Sequence[int]) -> list[dict[str, Any]]:
    out = []
    for s in sorted({r["sparsity"] for r in runs}):
        rs = [r for r in runs if r["sparsity"] == s]
        row: dict[str, Any] = {"sparsity": s, "seeds": [r["seed"] for r in rs]}
        for key in ("macs_kept", "params_kept", "prune_seconds", "speedup", "macs_speedup"):
            row[key], row[key + "_std"] = mean_std([r.get(key) for r in rs])
        for key in ("macs_after", "params_after"):
            row[key] = rs[0][key]
        row["latency_before_s"] = _median([r.get("latency_before_s") for r in rs])
        row["latency_after_s"] = _median([r.get("latency_after_s") for r in rs])
        row["accuracy"] = {}
        for e in settings:
            m, sd = mean_std([accuracy_of(r, e) for r in rs])
            row["accuracy"][str(e)] = {"mean": m, "std": sd}
        row["finetune_seconds"] = {str(e): mean_std([(r.get("finetune_seconds") or {}).get(str(e))
                                                      for r in rs])[0] for e in settings if e}
        out.append(row)
    return out


def _ft_label(e: int) -> str:
    return "no FT" if e == 0 else f"FT {e} epoch{'s' if e != 1 else ''}"


def markdown(res: dict[str, Any]) -> str:
    cfg, model, data, machine = res["config"], res["model"], res["data"], res["machine"]
    settings = cfg["finetune_epochs"] if not cfg["no_accuracy"] else []
    title = f"# fxprune bench: {cfg['method']} on {cfg['model']}"
    lines = [title, "", "```", res["command"], "```", ""]
    opts = ", ".join(f"{k}={v!r}" for k, v in cfg["options"].items()) or "none"
    lines.append(f"- **Date** {res['date']} · **machine** {machine['cpu_count']} CPUs "
                 f"({machine['processor']}), torch {machine['torch']} ({machine['torch_threads']} thread(s)), "
                 f"onnxruntime {machine['onnxruntime']} ({machine['ort_threads']} intra-op thread(s))"
                 + (f", load average at start {machine['loadavg'][0]}" if machine.get("loadavg") else "")
                 + f" · total wall time {res['wall_seconds']:.0f} s.")
    lines.append(f"- **Model** {cfg['model']} ({model['source']}), input {model['input_shape']}: "
                 f"{model['params_human']} params, {model['macs_human']} MACs"
                 + (f", test accuracy {_pct(model.get('acc'))} on the evaluation set" if model.get("acc") is not None else "")
                 + f". **Method** {cfg['method']}, options: {opts}; seeds {cfg['seeds']}.")
    if cfg["no_accuracy"]:
        lines.append("- **Data** none (`--no-accuracy`: compression and latency only).")
    else:
        scale = f"- **Scale** evaluation on the {data['eval']}"
        if any(settings):
            scale += (f"; fine-tuning on the {data.get('train')}, Adam lr {cfg['finetune_lr']:g} "
                      f"(cosine), batch {cfg['batch_size']}, from the same pruned model for each setting")
        if data.get("calibration"):
            scale += f"; calibration: {data['calibration']}"
        lines.append(scale + ".")
        lines.append(f"- Accuracy: mean ± sample std over {len(cfg['seeds'])} seeds." if len(cfg["seeds"]) > 1
                     else f"- Accuracy: one seed ({cfg['seeds'][0]}), so no spread is shown.")
    if cfg["latency_runs"]:
        lines.append(f"- **Latency** onnxruntime CPU, batch {model['input_shape'][0]}, original and pruned "
                     f"ONNX models run interleaved, median of {cfg['latency_runs']} runs each per seed "
                     f"(3 warm-up runs); the table shows the median over seeds, the speedup is "
                     f"mean ± std of the per-seed before/after ratios. *MACs speedup* = MACs before / after.")
    lines.append(f"- *pruning s*: sum of fxprune.compile's per-pass seconds (trace, analyze, method, rewrite) "
                 f"after one untimed warm-up compile (the cold first compile took "
                 f"{model['cold_prune_seconds']:.2f} s).")
    lines.append("")
    header = ["sparsity", "MACs kept", "params kept"]
    header += [f"acc {_ft_label(e)}" for e in settings]
    if cfg["latency_runs"]:
        header += ["ORT latency before → after", "measured speedup", "MACs speedup"]
    header += ["pruning s"]
    if any(settings):
        header += [f"FT s ({_ft_label(e)})" for e in settings if e]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in res["summary"]:
        cells = [f"{row['sparsity']:g}", f"{row['macs_kept']:.1%}", f"{row['params_kept']:.1%}"]
        several = len(row["seeds"]) > 1  # a spread over one seed would read as "no noise"
        for e in settings:
            a = row["accuracy"][str(e)]
            cells.append(_pct(a["mean"], a["std"] if several else None))
        if cfg["latency_runs"]:
            cells.append(f"{fmt_seconds(row['latency_before_s'])} → {fmt_seconds(row['latency_after_s'])}")
            cells.append(("–" if not row["speedup"] else f"{row['speedup']:.2f}×"
                          + (f" ± {row['speedup_std']:.2f}" if several else "")))
            cells.append(f"{row['macs_speedup']:.2f}×")
        cells.append(f"{row['prune_seconds']:.2f}")
        cells += [f"{row['finetune_seconds'][str(e)]:.1f}" for e in settings if e]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if res.get("notes"):
        lines += [f"- {n}" for n in res["notes"]] + [""]
    lines.append(f"Per-run records (per-pass seconds, validation, FLOPs): `{os.path.basename(res['out'])}.json`; "
                 f"plot: `{os.path.basename(res['out'])}.png`.")
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: str) -> None:
    plt = require_matplotlib()
    cfg = res["config"]
    rows = res["summary"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    if not cfg["no_accuracy"]:
        xs = [r["macs_kept"] for r in rows]
        for e in cfg["finetune_epochs"]:
            ys = [r["accuracy"][str(e)]["mean"] for r in rows]
            es = [r["accuracy"][str(e)]["std"] for r in rows]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=_ft_label(e))
        if res["model"].get("acc") is not None:
            ax.axhline(res["model"]["acc"], color="grey", linestyle="--", linewidth=1, label="unpruned")
        ax.set_xlabel("MACs kept (fraction of the unpruned model)")
        ax.set_ylabel("top-1 accuracy")
        ax.set_xlim(0, 1.02)
        ax.set_title(f"{cfg['method']} on {cfg['model']} ({res['data']['eval_images']} test images, "
                     f"{len(cfg['seeds'])} seed(s))", fontsize=10)
    else:
        xs = [r["macs_speedup"] for r in rows]
        ys = [r["speedup"] for r in rows]
        es = [r["speedup_std"] for r in rows]
        top = max(xs + [y or 1.0 for y in ys]) * 1.1
        ax.plot([1, top], [1, top], color="grey", linestyle="--", linewidth=1, label="speedup = MACs reduction")
        if all(y is not None for y in ys):
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, linestyle="none", label="measured (onnxruntime)")
            for r, xv, yv in zip(rows, xs, ys):
                ax.annotate(f"s={r['sparsity']:g}", (xv, yv), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel("MACs before / after")
        ax.set_ylabel("onnxruntime latency before / after")
        ax.set_title(f"{cfg['method']} on {cfg['model']}: measured speedup vs MACs reduction", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png")
    try:
        atomic_write(path, write)
    finally:
        plt.close(fig)


def notes(res: dict[str, Any]) -> list[str]:
    """Plain observations worth flagging next to the table."""
    out = []
    cfg = res["config"]
    if cfg["latency_runs"]:
        for row in res["summary"]:
            if row["speedup"] and row["macs_speedup"] and row["speedup"] < 0.5 * row["macs_speedup"]:
                out.append(f"sparsity {row['sparsity']:g}: measured speedup {row['speedup']:.2f}× is well "
                           f"below the MACs reduction {row['macs_speedup']:.2f}× (per-op overhead dominates "
                           f"at this size: {fmt_seconds(row['latency_after_s'])} per batch)")
            if row["speedup"] and row["speedup"] < 1.0:
                out.append(f"sparsity {row['sparsity']:g}: the pruned model measured slower than the original")
    if not cfg["no_accuracy"] and not res["method_traits"]["seed"] and not res["method_traits"]["data"] \
            and len(cfg["seeds"]) > 1:
        out.append(f"{cfg['method']} does not depend on the seed: the no-fine-tuning accuracy is identical "
                   f"across seeds; seeds only change fine-tuning")
    if not res["data"].get("full_data_available", True) and not cfg["no_accuracy"]:
        out.append("the Fashion-MNIST files were not found: numbers are from the bundled 500-image subset")
    bad = [r for r in res["runs"] if not r["validation"]["ok"]]
    if bad:
        out.append(f"{len(bad)} run(s) failed the onnxruntime check (see JSON)")
    return out


# =========================================================================== run


def command_line(argv: Sequence[str]) -> str:
    script = os.path.relpath(os.path.abspath(__file__), os.getcwd())
    return "python " + " ".join(shlex.quote(a) for a in [script, *argv])


def write_outputs(res: dict[str, Any], with_plot: bool) -> list[str]:
    out = res["out"]
    res["notes"] = notes(res)
    atomic_write_text(out + ".json", json.dumps(res, indent=1, default=_json_default) + "\n")
    atomic_write_text(out + ".md", markdown(res))
    written = [out + ".json", out + ".md"]
    if with_plot and res["summary"]:
        plot(res, out + ".png")
        written.append(out + ".png")
    return written


def check_args(args: argparse.Namespace) -> None:
    if any(not 0.0 <= s < 1.0 for s in args.sparsities):
        raise BenchError(f"--sparsities must be in [0, 1), got {args.sparsities}")
    if any(e < 0 for e in args.finetune_epochs):
        raise BenchError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    if args.latency_runs < 0:
        raise BenchError("--latency-runs must be >= 0")
    if args.train_subset is not None and args.train_subset < 1:
        raise BenchError("--train-subset must be >= 1")
    if args.out in ("tools/results/bench_speed", str(TOOLS / "results" / "bench_speed")):
        raise BenchError("tools/results/bench_speed.* belongs to tools/bench_speed.py; choose another --out")


def run(args: argparse.Namespace, argv: Sequence[str] | None = None,
        log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run the benchmark described by ``args`` (from :func:`build_parser`); write and return results.
    ``--threads`` applies to this run only: torch's thread count is restored afterwards."""
    threads = torch.get_num_threads()
    try:
        return _run(args, argv, log)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, argv: Sequence[str] | None, log: Callable[[str], None] | None) -> dict[str, Any]:
    """:func:`run` without restoring the thread count."""
    import fxprune
    from fxprune.report import human

    log = log or (lambda s: None)
    wall0 = time.perf_counter()
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_plot:
        require_matplotlib()  # fail before the long part
    options = method_options(args.method, args.options)
    traits = method_traits(args.method)
    if args.out is None:
        args.out = os.path.join("tools", "results", f"bench_{args.method}_{args.model}")
    model, kwargs, desc = build_model(args)
    cifar_shape = kwargs.get("in_channels", 3) == 3
    need_train = not args.no_accuracy and any(args.finetune_epochs)
    data = (load_data(args, cifar_shape, need_train, traits["data"])
            if not args.no_accuracy or traits["data"] else Data(info={"mode": "none"}))
    if args.no_accuracy:
        data.info.update(eval="none (--no-accuracy)", eval_images=0)
    size = 32 if cifar_shape else 28
    shape = (args.latency_batch, kwargs.get("in_channels", 3), size, size)
    if data.eval_loader is not None:
        x = next(iter(data.eval_loader))[0][: args.latency_batch].contiguous()
        if x.shape[0] < args.latency_batch:
            raise BenchError(f"--latency-batch {args.latency_batch} is larger than the evaluation set")
    else:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x = x.clone()
    check = fxprune.validate(model, (x,), rtol=args.rtol, keep_onnx=True)
    from fxprune.report import count_macs, count_params
    params, macs = count_params(model), count_macs(model, (x,))
    model_info = {**desc, "name": args.model, "kwargs": kwargs, "input_shape": list(x.shape),
                  "params": params, "macs": macs, "params_human": human(params), "macs_human": human(macs),
                  "onnx_exporter": check.exporter}
    # one untimed compile first: the first call pays one-off costs (imports, caches) that would
    # otherwise land on the first run's pruning seconds
    warm = fxprune.compile(model, x, "l1", args.sparsities[0], validate=False)
    model_info["cold_prune_seconds"] = sum(warm.report.seconds.values())
    ctx = {"args": args, "model": model, "x": x, "traits": traits, "data": data, "options": options,
           "onnx_before": check.onnx_bytes}
    if not args.no_accuracy:
        ctx["acc_before"] = model_info["acc"] = _train_module().evaluate(model, data.eval_loader)
    log(f"{args.model}: {model_info['params_human']} params, {model_info['macs_human']} MACs, input "
        f"{tuple(x.shape)}" + (f", accuracy {model_info['acc']:.4f} on {data.info['eval']}" if 'acc' in model_info else ""))
    res: dict[str, Any] = {
        "format": FORMAT, "tool": "tools/bench.py",
        "command": command_line(argv if argv is not None else sys.argv[1:]),
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git": _git_revision(), "fxprune": fxprune.__version__,
        "machine": machine_info(torch.get_num_threads(), args.ort_threads),
        "config": {"model": args.model, "checkpoint": args.checkpoint, "method": args.method,
                   "options": options, "sparsities": args.sparsities, "seeds": args.seeds,
                   "finetune_epochs": ft_settings(args), "finetune_lr": args.finetune_lr,
                   "batch_size": args.batch_size, "train_subset": args.train_subset,
                   "calibration": args.calibration if traits["data"] else None,
                   "latency_runs": args.latency_runs, "latency_batch": args.latency_batch,
                   "ort_threads": args.ort_threads, "no_accuracy": args.no_accuracy, "data": args.data},
        "method_traits": traits, "data": data.info, "model": model_info, "out": args.out,
        "runs": [], "summary": [], "wall_seconds": 0.0,
    }
    for sparsity in args.sparsities:
        for seed in args.seeds:
            t0 = time.perf_counter()
            rec = run_one(ctx, sparsity, seed)
            rec["wall_seconds"] = time.perf_counter() - t0
            res["runs"].append(rec)
            parts = [f"s={sparsity:g} seed={seed}: MACs kept {rec['macs_kept']:.1%}"]
            if "acc_pruned" in rec:
                parts.append(f"acc {rec['acc_pruned']:.4f}" + "".join(
                    f" ft{e} {a:.4f}" for e, a in rec["acc_finetuned"].items()))
            if rec["speedup"]:
                parts.append(f"ORT {fmt_seconds(rec['latency_before_s'])} -> "
                             f"{fmt_seconds(rec['latency_after_s'])} ({rec['speedup']:.2f}x)")
            parts.append(f"prune {rec['prune_seconds']:.2f}s")
            if rec.get("finetune_seconds"):
                parts.append("ft " + ", ".join(f"{v:.1f}s" for v in rec["finetune_seconds"].values()))
            log(", ".join(parts) + f" [{rec['wall_seconds']:.1f}s]")
            res["summary"] = summarize(res["runs"], ft_settings(args))
            res["wall_seconds"] = time.perf_counter() - wall0
            write_outputs(res, with_plot=False)  # partial results survive an interruption
    res["wall_seconds"] = time.perf_counter() - wall0
    written = write_outputs(res, with_plot=not args.no_plot)
    log("wrote " + ", ".join(written) + f" in {res['wall_seconds']:.0f}s")
    return res


# =========================================================================== CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2
        self.exit(2, f"bench.py: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench.py", description="Accuracy / compression / onnxruntime-latency benchmark "
                "of an fxprune pruning method on a zoo model.")
    p.add_argument("--model", required=True, help="zoo name (fxprune.models.list())")
    p.add_argument("--checkpoint", default=None, help="tools/train.py checkpoint (else random init)")
    p.add_argument("--method", required=True, help="fxprune method (fxprune.passes.METHODS)")
    p.add_argument("--sparsities", type=lambda s: _split_csv(s, float, "--sparsities"), default=[0.5])
    p.add_argument("--seeds", type=lambda s: _split_csv(s, int, "--seeds"), default=[0])
    p.add_argument("--finetune-epochs", type=lambda s: _split_csv(s, int, "--finetune-epochs"), default=[0],
                   help="comma-separated; 0 = no fine-tuning (default: 0)")
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=128, help="fine-tuning and calibration batch size")
    p.add_argument("--option", dest="options", action="append", type=parse_option, default=[],
                   metavar="KEY=VALUE", help="method option, repeatable (scope=global, round_to=8, ignore=fc3)")
    p.add_argument("--data", choices=("auto", "fashion-mnist", "bundled"), default="auto")
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--train-subset", type=int, default=None, help="fine-tune on this many training images")
    p.add_argument("--calibration", type=int, default=512, help="calibration images for data-driven methods")
    p.add_argument("--latency-runs", type=int, default=20, help="onnxruntime runs per model (0: no latency)")
    p.add_argument("--latency-batch", type=int, default=1, help="batch size of the latency input")
    p.add_argument("--ort-threads", type=int, default=1, help="onnxruntime intra-op threads (0: its default)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: leave torch's default)")
    p.add_argument("--in-channels", type=int, default=None,
                   help="without --checkpoint: 1 (28x28) or 3 (CIFAR-shaped 32x32); default 1 for "
                   f"{'/'.join(MNIST_MODELS)}, else 3")
    p.add_argument("--init-seed", type=int, default=0, help="seed of the random init without --checkpoint")
    p.add_argument("--rtol", type=float, default=1e-4, help="onnxruntime check tolerance")
    p.add_argument("--no-accuracy", action="store_true", help="compression and latency only (no data)")
    p.add_argument("--no-plot", action="store_true", help="skip OUT.png (no matplotlib needed)")
    p.add_argument("--out", default=None, help="output path without extension "
                   "(default tools/results/bench_METHOD_MODEL)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from fxprune.errors import FxpruneError

    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    try:
        run(args, argv)
    except (BenchError, FxpruneError) as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
