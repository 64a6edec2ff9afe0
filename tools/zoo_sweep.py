#!/usr/bin/env python
"""The "torchvision zoo" benchmark: compile every torchvision classifier with fxprune.

For each model of ``torchvision.models.list_models(module=torchvision.models)`` with at
most ``--max-params`` parameters (default 300M, counted on the meta device), run ONE
subprocess (``python tools/zoo_sweep.py --one NAME``) so a crash or hang of one model
cannot take down the sweep. The child:

* builds ``get_model(name, weights=None).eval()`` under ``torch.manual_seed(0)``, fills
  parameters torchvision initialises to exactly zero (classifier heads, biases, some
  final-BN gammas) with ``normal_(0, 0.02)`` and randomises BatchNorm running stats a
  little so that BN shifts matter;
* runs ``fxprune.compile(m, x, method="l1", sparsity=0.5)`` (validated by onnxruntime)
  and records params/MACs before/after, seconds per pass, the validation line;
* checks "never silently wrong": for the plan's groups without normalisation members,
  (a) ``rewrite(sub_plan)(x) == mask(sub_plan)(x)`` and (b) the original model with the
  ``produce`` slices of the removed units zeroed equals ``rewrite(sub_plan)(x)``, both
  within ``1e-4 * max(1, max|output|)``;
* prints one JSON line (prefixed with ``ZOO_SWEEP_RECORD``) that the parent parses.

The parent writes ``<out>.json`` (records + summary) and ``<out>.md`` (a table), both
atomically, after every model (so partial results survive an interrupted sweep).

    python tools/zoo_sweep.py                       # full sweep -> tools/results/zoo_sweep.{json,md}
    python tools/zoo_sweep.py --models resnet18,vgg11 --timeout 300 --out /tmp/zs
    python tools/zoo_sweep.py --one resnet18        # one child, prints its JSON record
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
import warnings
from typing import Any

MARKER = "ZOO_SWEEP_RECORD "
DEFAULT_OUT = os.path.join("tools", "results", "zoo_sweep")
MACS_TARGET = 0.30  # the bar: MACs fall by at least 30% at sparsity 0.5
EQ_RTOL = 1e-4  # equivalence tolerance: EQ_RTOL * max(1, max|output|)
PHASES = ("trace", "analyze", "l1", "rewrite", "validate")  # columns of the table ("-" if absent)
TINY_CONSTANT = 1e-4  # a parameter whose elements all equal some |c| <= this counts as "zero-initialised"


# ============================================================================ child


def _quiet_warnings() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")


def input_size(name: str, size: int | None) -> int:
    """Spatial input size: ``size`` if given, else 299 for inception_v3 and 224 otherwise."""
    if size:
        return size
    return 299 if name == "inception_v3" else 224


def build_model(name: str, seed: int = 0):
    """``get_model(name, weights=None).eval()`` with zero-initialised tensors and BN stats randomised.

    Parameters whose elements are all zero, or all one tiny constant (ConvNeXt's
    ``layer_scale`` = 1e-6, which would make every residual branch, and so every check
    of it, invisible), are refilled with ``normal_(0, 0.02)``; BN running means get
    ``normal_(0, 0.1)`` and running variances ``uniform_(0.5, 1.5)``. Returns the model
    and the names of the refilled parameters.
    """
    import torch
    from torch import nn
    from torchvision.models import get_model

    torch.manual_seed(seed)
    m = get_model(name, weights=None).eval()
    refilled = []
    with torch.no_grad():
        for pname, p in m.named_parameters():
            if p.numel() and not p.is_floating_point():
                continue
            if p.numel() and float(p.flatten()[0].abs()) <= TINY_CONSTANT and bool((p == p.flatten()[0]).all()):
                p.normal_(0.0, 0.02)
                refilled.append(pname)
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
                if mod.running_mean is not None:
                    mod.running_mean.normal_(0.0, 0.1)
                if mod.running_var is not None:
                    mod.running_var.uniform_(0.5, 1.5)
    return m, refilled


def _max_diff(a: Any, b: Any) -> float:
    from fxprune.validate import flatten_outputs

    fa, fb = flatten_outputs(a), flatten_outputs(b)
    if len(fa) != len(fb):
        raise RuntimeError(f"{len(fa)} outputs vs {len(fb)} outputs")
    worst = 0.0
    for x, y in zip(fa, fb):
        if x.shape != y.shape:
            raise RuntimeError(f"output shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        d = (x.detach().double() - y.detach().double()).abs()
        if d.numel():
            if not bool(d.isfinite().all()):
                return float("inf")
            worst = max(worst, float(d.max()))
    return worst


def _scale(out: Any) -> float:
    from fxprune.validate import flatten_outputs

    vals = [float(t.detach().abs().max()) for t in flatten_outputs(out) if t.numel()]
    return max(vals) if vals else 0.0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def zero_produce(gm, graph, plan: dict) -> Any:
    """Deep copy of ``gm`` with every ``produce`` slice of the units ``plan`` removes zeroed."""
    import torch
    from fxprune.rewrite import _copy_graph_module

    z = _copy_graph_module(gm)
    params = dict(z.named_parameters())
    with torch.no_grad():
        for gid, kept in plan.items():
            group = graph.group(gid)
            removed = sorted(set(range(group.units)) - set(int(u) for u in kept))
            if not removed:
                continue
            for s in group.slices(removed):
                if s.role != "produce":
                    continue
                t = z.get_parameter(s.name) if s.name in params else z.get_buffer(s.name)
                t.index_fill_(s.dim, s.index.to(torch.long), 0.0)
    return z


def equivalence_checks(res, x) -> dict[str, Any]:
    """mask==rewrite and zero-produce==rewrite on the plan's groups without norm members."""
    import torch
    import fxprune

    graph = res.graph
    gm = graph.gm
    plan = res.plan or {}
    removed_any = {gid: kept for gid, kept in plan.items() if len(kept) < graph.group(gid).units}
    sub_plan = {gid: kept for gid, kept in plan.items() if not graph.group(gid).has_norm}
    sub_removed = {gid: kept for gid, kept in sub_plan.items() if len(kept) < graph.group(gid).units}
    rec: dict[str, Any] = {
        "groups_in_plan": len(plan),
        "groups_pruned": len(removed_any),
        "groups_pruned_with_norm": len(removed_any) - len(sub_removed),
        "groups_checked": len(sub_removed),
        "units_removed_checked": sum(graph.group(g).units - len(k) for g, k in sub_removed.items()),
    }
    with torch.no_grad():
        gm.eval()
        ref = gm(x)
        try:
            rewritten = fxprune.rewrite(gm, graph, sub_plan).eval()
            out_rw = rewritten(x)
        except Exception as exc:  # noqa: BLE001 -- a failure here is a finding, not a crash
            err = f"rewrite(sub_plan) raised {type(exc).__name__}: {_first_line(exc)}"
            rec.update(mask_eq_rewrite=False, mask_error=err, zero_produce_eq_rewrite=False, zero_error=err)
            return rec
        scale = _scale(out_rw)
        tol = EQ_RTOL * max(1.0, scale)
        rec.update(output_scale=scale, original_output_scale=_scale(ref), eq_tolerance=tol)
        # how much pruning changed the output: a check whose diffs are far below this can see an error
        try:
            rec["rewrite_vs_original_max_abs"] = _max_diff(ref, out_rw)
        except RuntimeError:
            pass
        try:
            masked = fxprune.mask(gm, graph, sub_plan).eval()
            d = _max_diff(masked(x), out_rw)
            rec.update(mask_max_abs=d, mask_rel=d / max(scale, 1e-30), mask_eq_rewrite=bool(d <= tol))
        except Exception as exc:  # noqa: BLE001
            rec.update(mask_eq_rewrite=False, mask_error=f"{type(exc).__name__}: {_first_line(exc)}")
        try:
            zeroed = zero_produce(gm, graph, sub_plan).eval()
            d = _max_diff(zeroed(x), out_rw)
            rec.update(zero_max_abs=d, zero_rel=d / max(scale, 1e-30), zero_produce_eq_rewrite=bool(d <= tol))
        except Exception as exc:  # noqa: BLE001
            rec.update(zero_produce_eq_rewrite=False, zero_error=f"{type(exc).__name__}: {_first_line(exc)}")
    return rec


def run_one(name: str, size: int | None = None, sparsity: float = 0.5, method: str = "l1",
            seed: int = 0) -> dict[str, Any]:
    """Everything the sweep measures for one model; never raises (errors go into the record)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _run_one(name, size, sparsity, method, seed)


def _run_one(name: str, size: int | None, sparsity: float, method: str, seed: int) -> dict[str, Any]:
    import torch
    import fxprune
    from fxprune.errors import FxpruneError, PassError
    from fxprune.state import state_of

    t_start = time.perf_counter()
    hw = input_size(name, size)
    rec: dict[str, Any] = {"model": name, "input": [1, 3, hw, hw], "method": method, "sparsity": sparsity}
    try:
        m, refilled = build_model(name, seed)
    except Exception as exc:  # noqa: BLE001
        rec.update(status="bug", stage="build", error_type=type(exc).__name__, error=_first_line(exc),
                   traceback=traceback.format_exc()[-4000:], total_s=time.perf_counter() - t_start)
        return rec
    rec["params"] = sum(p.numel() for p in m.parameters())
    rec["refilled_zero_tensors"] = len(refilled)
    rec["refilled_examples"] = refilled[:3]
    torch.manual_seed(seed)
    x = torch.randn(1, 3, hw, hw)
    rec["build_s"] = time.perf_counter() - t_start

    t0 = time.perf_counter()
    try:
        res = fxprune.compile(m, x, method=method, sparsity=sparsity)
    except Exception as exc:  # noqa: BLE001
        rec["compile_s"] = time.perf_counter() - t0
        rec["total_s"] = time.perf_counter() - t_start
        rec.update(stage="compile", error_type=type(exc).__name__, error=_first_line(exc))
        if isinstance(exc, FxpruneError) and not isinstance(exc, PassError):
            rec["status"] = "refused"
            for attr in ("max_abs", "max_rel"):
                if hasattr(exc, attr):
                    rec[f"validate_{attr}"] = float(getattr(exc, attr))
        else:  # PassError wraps an unexpected exception inside a pass: a bug, not a refusal
            rec["status"] = "bug"
            rec["traceback"] = traceback.format_exc()[-4000:]
        return rec
    rec["compile_s"] = time.perf_counter() - t0
    r = res.report
    rec.update(
        params_before=r.params_before, params_after=r.params_after,
        macs_before=r.macs_before, macs_after=r.macs_after,
        macs_reduction=1.0 - r.macs_ratio, params_reduction=1.0 - r.params_ratio,
        seconds={k: float(v) for k, v in r.seconds.items()},
        validation=r.validation, warnings=list(r.warnings),
        groups_prunable=len(r.groups), groups_pruned_report=sum(1 for g in r.groups if g.removed),
    )
    rec["macs_ok"] = bool(rec["macs_reduction"] >= MACS_TARGET)
    st = state_of(res.module)
    v = getattr(st, "validation", None) if st is not None else None
    rec["validated"] = bool(v is not None and v.ok)
    if v is not None:
        rec.update(validate_max_abs=float(v.max_abs), validate_max_rel=float(v.max_rel),
                   validate_tolerance=float(v.tolerance), exporter=v.exporter)

    t1 = time.perf_counter()
    try:
        rec.update(equivalence_checks(res, x))
    except Exception as exc:  # noqa: BLE001
        rec.update(mask_eq_rewrite=False, zero_produce_eq_rewrite=False,
                   check_error=f"{type(exc).__name__}: {_first_line(exc)}",
                   traceback=traceback.format_exc()[-4000:])
    rec["checks_s"] = time.perf_counter() - t1
    rec["total_s"] = time.perf_counter() - t_start
    ok = rec["validated"] and rec["macs_ok"] and rec.get("mask_eq_rewrite") and rec.get("zero_produce_eq_rewrite")
    rec["status"] = "ok" if ok else "check-failed"
    if not ok:
        rec["reason"] = failure_reason(rec)
    return rec


def failure_reason(rec: dict[str, Any]) -> str:
    why = []
    if not rec.get("validated"):
        why.append("not validated")
    if not rec.get("macs_ok"):
        why.append(f"MACs fell only {rec.get('macs_reduction', 0):.1%}")
    for key, err, diff, label in (("mask_eq_rewrite", "mask_error", "mask_max_abs", "mask!=rewrite"),
                                  ("zero_produce_eq_rewrite", "zero_error", "zero_max_abs", "zero-produce!=rewrite")):
        if not rec.get(key):
            detail = rec.get(err) or (f"max abs {rec[diff]:.3g} > tol {rec.get('eq_tolerance', 0):.3g}"
                                      if diff in rec else "not run")
            why.append(f"{label} ({detail})")
    if rec.get("check_error"):
        why.append(f"checks raised {rec['check_error']}")
    return "; ".join(why)


def child_main(args: argparse.Namespace) -> int:
    _quiet_warnings()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    rec = run_one(args.one, size=args.size, sparsity=args.sparsity, method=args.method)
    sys.stdout.flush()
    print(MARKER + json.dumps(rec, default=_json_default), flush=True)
    return 0


def _json_default(o: Any) -> Any:
    try:
        return float(o)
    except Exception:  # noqa: BLE001
        return repr(o)


# ============================================================================ parent


def candidate_models(max_params: int, only: list[str] | None = None) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(kept, skipped) lists of (name, params); params counted on the meta device where possible."""
    import torch
    import torchvision
    from torchvision.models import get_model, list_models

    names = list_models(module=torchvision.models)
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise SystemExit(f"unknown model(s): {', '.join(unknown)}")
        names = [n for n in names if n in only]
    kept, skipped = [], []
    for n in names:
        try:
            with torch.device("meta"):
                m = get_model(n, weights=None)
        except Exception:  # noqa: BLE001 -- some builders compute on tensors: build on CPU
            m = get_model(n, weights=None)
        count = sum(p.numel() for p in m.parameters())
        del m
        (kept if count <= max_params else skipped).append((n, count))
    return kept, skipped


def run_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--sparsity", str(args.sparsity),
           "--method", args.method]
    if args.size:
        cmd += ["--size", str(args.size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return {"model": name, "status": "timeout", "error": f"no result within {args.timeout:g} s",
                "total_s": time.perf_counter() - t0, "stderr_tail": tail[-2000:]}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            try:
                rec = json.loads(line[len(MARKER):])
            except json.JSONDecodeError as exc:
                return {"model": name, "status": "crash", "error": f"unparsable record: {exc}", "total_s": wall}
            rec["child_wall_s"] = wall
            return rec
    return {"model": name, "status": "crash", "error": f"child exited with code {proc.returncode} and no record",
            "returncode": proc.returncode, "total_s": wall, "stderr_tail": proc.stderr[-3000:]}


def summarize(records: list[dict[str, Any]], skipped: list[tuple[str, int]], command: str, total_s: float,
              planned: int) -> dict[str, Any]:
    import torch
    import torchvision

    def count(pred) -> int:
        return sum(1 for r in records if pred(r))

    compiled = [r for r in records if r.get("status") in ("ok", "check-failed")]
    return {
        "command": command,
        "models_planned": planned,
        "models_done": len(records),
        "pruned": len(compiled),
        "validated": count(lambda r: r.get("validated")),
        "macs_reduction_ge_30pct": count(lambda r: r.get("macs_ok")),
        "mask_eq_rewrite": count(lambda r: r.get("mask_eq_rewrite")),
        "zero_produce_eq_rewrite": count(lambda r: r.get("zero_produce_eq_rewrite")),
        "both_equivalence_checks": count(lambda r: r.get("mask_eq_rewrite") and r.get("zero_produce_eq_rewrite")),
        "all_checks_ok": count(lambda r: r.get("status") == "ok"),
        "check_failed": count(lambda r: r.get("status") == "check-failed"),
        "refused": count(lambda r: r.get("status") == "refused"),
        "bugs": count(lambda r: r.get("status") == "bug"),
        "crashed": count(lambda r: r.get("status") == "crash"),
        "timeouts": count(lambda r: r.get("status") == "timeout"),
        "skipped_over_max_params": [{"model": n, "params": p} for n, p in skipped],
        "total_s": total_s,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _human(n: float | None) -> str:
    if n is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return f"{n:.0f}"


def _fmt_diff(rec: dict, ok_key: str, diff_key: str, err_key: str) -> str:
    if ok_key not in rec:
        return "-"
    mark = "ok" if rec[ok_key] else "**FAIL**"
    groups = f" ({rec['groups_checked']}/{rec['groups_pruned']} groups)" if "groups_checked" in rec else ""
    if diff_key in rec:
        return f"{mark} {rec[diff_key]:.1e}{groups}"
    return f"{mark} ({rec.get(err_key, 'error')})" if not rec[ok_key] else mark + groups


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def status_text(rec: dict[str, Any]) -> str:
    st = rec.get("status", "?")
    if st == "ok":
        return "ok"
    if st == "check-failed":
        return f"**check failed**: {rec.get('reason', '')}"
    if st == "refused":
        return f"refused: {rec.get('error_type')}: {rec.get('error', '')}"
    if st == "bug":
        return f"**BUG** ({rec.get('stage', '?')}): {rec.get('error_type')}: {rec.get('error', '')}"
    return f"**{st}**: {rec.get('error', '')}"


def markdown(records: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    s = summary
    lines = [
        "# fxprune torchvision zoo sweep",
        "",
        "Command:",
        "",
        "```",
        s["command"],
        "```",
        "",
        f"torch {s['torch']}, torchvision {s['torchvision']}, python {s['python']}, {s['platform']}; "
        f"method l1, sparsity 0.5, one subprocess per model; total {s['total_s'] / 60:.1f} min.",
        "",
        f"- models: {s['models_done']} of {s['models_planned']} done "
        f"({len(s['skipped_over_max_params'])} skipped for > max params: "
        f"{', '.join(d['model'] for d in s['skipped_over_max_params']) or 'none'})",
        f"- pruned: {s['pruned']}, validated by onnxruntime: {s['validated']}, "
        f"MACs reduced >= 30%: {s['macs_reduction_ge_30pct']}",
        f"- mask == rewrite: {s['mask_eq_rewrite']}, zero-produce == rewrite: {s['zero_produce_eq_rewrite']}, "
        f"both: {s['both_equivalence_checks']}; all checks ok: {s['all_checks_ok']}",
        f"- check failed: {s['check_failed']}, refused: {s['refused']}, bugs: {s['bugs']}, "
        f"crashed: {s['crashed']}, timeouts: {s['timeouts']}",
        "",
        "Equivalence checks use the plan's groups without normalisation members, tolerance "
        f"{EQ_RTOL:g} x max(1, max|output|); the diff shown is the max abs difference, then "
        "(groups checked / groups the plan prunes). Seconds per phase come from `res.report.seconds`; "
        "total s includes building the model and the equivalence checks.",
        "",
        "| model | params | MACs before→after | MACs reduction | validate max err | mask==rewrite | zero-produce "
        "| s trace/analyze/l1/rewrite/validate | total s | status/reason |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        sec = r.get("seconds") or {}
        phases = "/".join(f"{sec[p]:.1f}" if p in sec else "-" for p in PHASES) if sec else "-"
        macs = (f"{_human(r.get('macs_before'))}→{_human(r.get('macs_after'))}"
                if "macs_before" in r else "-")
        red = f"{r['macs_reduction']:.1%}" if "macs_reduction" in r else "-"
        if "macs_ok" in r and not r["macs_ok"]:
            red += " (<30%)"
        val = f"{r['validate_max_abs']:.1e}" if "validate_max_abs" in r else "-"
        total = f"{r['total_s']:.1f}" if isinstance(r.get("total_s"), (int, float)) else "-"
        row = [r["model"], _human(r.get("params")), macs, red, val,
               _fmt_diff(r, "mask_eq_rewrite", "mask_max_abs", "mask_error"),
               _fmt_diff(r, "zero_produce_eq_rewrite", "zero_max_abs", "zero_error"),
               phases, total, status_text(r)]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    weak = [r for r in records if "rewrite_vs_original_max_abs" in r and "eq_tolerance" in r
            and r["rewrite_vs_original_max_abs"] < 10 * r["eq_tolerance"]]
    huge = [r for r in records if r.get("output_scale", 0) > 1e3]
    if weak or huge or any(r.get("groups_checked") == 0 for r in records):
        lines += ["", "Notes:", ""]
        for r in records:
            if r.get("groups_checked") == 0:
                lines.append(f"- {r['model']}: no pruned group without norm members, the equivalence checks are vacuous")
        for r in huge:
            lines.append(f"- {r['model']}: outputs reach {r['output_scale']:.2g} (random init, BN not calibrated), so "
                         f"the absolute diffs are large; relative to the output: mask "
                         f"{r.get('mask_rel', float('nan')):.1e}, zero-produce {r.get('zero_rel', float('nan')):.1e}")
        for r in weak:
            lines.append(f"- {r['model']}: pruning moved the output by only {r['rewrite_vs_original_max_abs']:.1e} "
                         f"(tolerance {r['eq_tolerance']:.1e}): the equivalence checks have little signal")
    slow = sorted((r for r in records if isinstance(r.get("total_s"), (int, float))), key=lambda r: -r["total_s"])[:5]
    if slow:
        lines += ["", "Slowest: " + ", ".join(f"{r['model']} {r['total_s']:.0f}s" for r in slow)]
    lines.append("")
    return "\n".join(lines)


def atomic_write(path: str, text: str) -> None:
    """Create the folder if needed, then write ``text`` atomically (``fxprune.atomic.atomic_write``)."""
    from pathlib import Path

    from fxprune.atomic import atomic_write as write_atomically

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda tmp: Path(tmp).write_text(text))


def write_outputs(out: str, records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    atomic_write(out + ".json", json.dumps({"summary": summary, "records": records}, indent=1,
                                           default=_json_default) + "\n")
    atomic_write(out + ".md", markdown(records, summary))


def parent_main(args: argparse.Namespace, argv: list[str]) -> int:
    _quiet_warnings()
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(os.path.abspath(__file__))] + argv)
    only = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    start = time.perf_counter()
    kept, skipped = candidate_models(args.max_params, only)
    params = dict(kept)
    print(f"{len(kept)} models to sweep ({len(skipped)} over {args.max_params:,} params skipped: "
          f"{', '.join(n for n, _ in skipped)})", flush=True)
    records: dict[str, dict] = {}
    order = [n for n, _ in kept]

    def flush() -> None:
        done = [records[n] for n in order if n in records]
        write_outputs(args.out, done, summarize(done, skipped, command, time.perf_counter() - start, len(order)))

    def finished(i: int, name: str, rec: dict) -> None:
        rec.setdefault("params", params[name])
        records[name] = rec
        extra = "" if rec.get("status") == "ok" else (
            rec.get("reason") or ": ".join(str(rec[k]) for k in ("error_type", "error") if rec.get(k)))
        red = f" MACs -{rec['macs_reduction']:.1%}" if "macs_reduction" in rec else ""
        print(f"[{len(records)}/{len(order)}] {name}: {rec.get('status')}{red} "
              f"{rec.get('total_s', 0):.1f}s {extra}".rstrip(), flush=True)
        flush()

    if args.jobs <= 1:
        for i, name in enumerate(order):
            finished(i, name, run_child(name, args))
    else:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(run_child, n, args): (i, n) for i, n in enumerate(order)}
            for fut in concurrent.futures.as_completed(futures):
                i, name = futures[fut]
                finished(i, name, fut.result())
    flush()
    print(f"wrote {args.out}.json and {args.out}.md", flush=True)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help="comma-separated subset of model names")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per model (default 600)")
    p.add_argument("--out", default=DEFAULT_OUT, help="output prefix: writes <out>.json and <out>.md")
    p.add_argument("--jobs", type=int, default=1, help="models run concurrently (default 1)")
    p.add_argument("--max-params", type=int, default=300_000_000, help="skip larger models (default 300M)")
    p.add_argument("--size", type=int, default=None, help="input H=W (default 224, inception_v3 299)")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--method", default="l1")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in each child (0: torch default)")
    p.add_argument("--rerender", action="store_true", help="only rewrite <out>.md from <out>.json")
    p.add_argument("--one", metavar="NAME", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.one:
        return child_main(args)
    if args.rerender:
        with open(args.out + ".json") as f:
            data = json.load(f)
        atomic_write(args.out + ".md", markdown(data["records"], data["summary"]))
        return 0
    return parent_main(args, argv)


if __name__ == "__main__":
    sys.exit(main())
