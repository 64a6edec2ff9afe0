#!/usr/bin/env python
"""The zoo benchmarks: compile every torchvision classifier, or a representative timm subset, with fxprune.

``--zoo torchvision`` (default): every model of ``torchvision.models.list_models`` with at
most ``--max-params`` parameters (default 300M, counted on the meta device).
``--zoo timm``: ``TIMM_MODELS``, the smallest model of each timm architecture family (a
module of ``timm.models``) under 32M parameters and an input side of at most 320, built
with ``timm.create_model(name, pretrained=False)`` at its ``pretrained_cfg`` input size
(``--list-timm`` recomputes that list). ``--models`` picks any names of the zoo.

One subprocess per model (``python tools/zoo_sweep.py --one NAME``), so a crash or hang of
one model cannot take down the sweep. The child:

* builds the model in eval mode under ``torch.manual_seed(0)``, refills parameters
  initialised to one tiny constant (zero heads and biases, zero final-BN gammas,
  layer-scale 1e-6) with ``normal_(0, 0.02)`` and randomises BatchNorm running stats;
* runs ``fxprune.compile(m, x, method="l1", sparsity=0.5)`` (validated by onnxruntime)
  and records params/MACs before/after, seconds per pass, the validation line;
* checks "never silently wrong": the traced graph computes what the model computes; for
  the plan's groups without normalisation members, (a) ``rewrite(sub_plan)(x) ==
  mask(sub_plan)(x)`` and (b) the original model with the ``produce`` slices of the
  removed units zeroed equals ``rewrite(sub_plan)(x)``; (c) the public API with the
  user's own model object: ``rewrite(model, graph, plan)`` equals the compiled module and
  ``mask(model, graph, sub_plan)`` equals (a)'s rewrite, and the model is left untouched;
  all within ``1e-4 * max(1, max|output|)``. A check that fails numerically is localised
  to one group of the plan by bisection where one group alone shows it;
* classifies every failure (``record["failures"]``): ``wrong`` (an oracle differs),
  ``refused`` (a named fxprune error, with the party it blames and whether that is
  right: the sweep's inputs run the model eagerly and its plans come from fxprune, so an
  ``InputError`` or ``PlanError`` blames the user wrongly) or ``crash`` (any other
  exception, or ``PassError``: a defect);
* prints one JSON line (prefixed with ``ZOO_SWEEP_RECORD``) that the parent parses.

The parent writes ``<out>.json`` (records + summary, with the failures grouped by cause)
and ``<out>.md`` (a table), both atomically, after every model.

    python tools/zoo_sweep.py                       # torchvision -> tools/results/zoo_sweep.{json,md}
    python tools/zoo_sweep.py --zoo timm --timeout 120   # -> tools/results/zoo_sweep_timm.{json,md}
    python tools/zoo_sweep.py --models resnet18,vgg11 --timeout 300 --out /tmp/zs
    python tools/zoo_sweep.py --zoo timm --one resnet10t   # one child, prints its JSON record
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import traceback
import warnings
from typing import Any, Callable

MARKER = "ZOO_SWEEP_RECORD "
ZOOS = ("torchvision", "timm")
DEFAULT_OUT = {"torchvision": os.path.join("tools", "results", "zoo_sweep"),
               "timm": os.path.join("tools", "results", "zoo_sweep_timm")}
MACS_TARGET = 0.30  # the torchvision issue's bar: MACs fall by at least 30% at sparsity 0.5
EQ_RTOL = 1e-4  # equivalence tolerance: EQ_RTOL * max(1, max|output|)
PHASES = ("trace", "analyze", "l1", "rewrite", "validate")  # columns of the table ("-" if absent)
TINY_CONSTANT = 1e-4  # a parameter whose elements all equal some |c| <= this counts as "zero-initialised"
TIMM_MAX_PARAMS = 32_000_000  # the selection rule of TIMM_MODELS (see timm_selection)
TIMM_MAX_SIDE = 320
LOCALISE_MAX_STEPS = 48  # rewrites spent localising a wrong check to a few groups

# (family = module of timm.models, model, parameters): the smallest model of each family with
# at most TIMM_MAX_PARAMS parameters and an input side of at most TIMM_MAX_SIDE, timm's unit-test
# configs (test_*) left out; ties by name. ``--list-timm`` recomputes it (~12 min: it builds every
# timm model on the meta device). Families with no such model (timm 1.0.31): beit, csatv2,
# deepseek_vit, gemma4_vit, hieradet_sam2, inception_resnet_v2, inception_v4, mobilenetv5,
# naflexvit, nasnet, pnasnet, qwen3_vit, vgg, vision_transformer_sam.
TIMM_MODELS: tuple[tuple[str, str, int], ...] = (
    ("byoanet", "halonet_h1", 8100056),
    ("byobnet", "mobileone_s1", 4825192),
    ("cait", "cait_xxs24_224", 11956264),
    ("coat", "coat_tiny", 5498540),
    ("convit", "convit_tiny", 5710512),
    ("convmixer", "convmixer_768_32", 21110248),
    ("convnext", "convnext_zepto_rms", 2155656),
    ("cpubone", "cpubone_nano", 6519700),
    ("crossvit", "crossvit_tiny_240", 7014800),
    ("cspnet", "cs3darknet_focus_s", 3274728),
    ("cspnext", "cspnext_tiny", 2733700),
    ("davit", "davit_tiny", 28360168),
    ("deit", "deit_tiny_patch16_224", 5717416),
    ("densenet", "densenet121", 7978856),
    ("dla", "dla46x_c", 1068440),
    ("dpn", "dpn48b", 9126226),
    ("edgenext", "edgenext_xx_small", 1327216),
    ("efficientformer", "efficientformer_l1", 12289928),
    ("efficientformer_v2", "efficientformerv2_s0", 3600256),
    ("efficientnet", "mobilenetv2_035", 1677128),
    ("efficientvim", "efficientvim_m1", 6679458),
    ("efficientvit_mit", "efficientvit_b0", 3410008),
    ("efficientvit_msra", "efficientvit_m0", 2349436),
    ("eva", "vit_tiny_patch16_dinov3_qkvb", 5489664),
    ("fasternet", "fasternet_t0", 3905500),
    ("fastvit", "fastvit_t8", 4026232),
    ("focalnet", "focalnet_tiny_srf", 28427116),
    ("gcvit", "gcvit_xxtiny", 11995428),
    ("ghostnet", "ghostnet_050", 2587292),
    ("hardcorenas", "hardcorenas_b", 5176544),
    ("hgnet", "hgnetv2_b0", 5996550),
    ("hiera", "hiera_tiny_224", 27910216),
    ("hrnet", "hrnet_w18_small", 13187464),
    ("iformer", "iformer_t", 2886456),
    ("inception_next", "inception_next_atto", 4156520),
    ("inception_v3", "inception_v3", 23834568),
    ("lcnetv2", "lcnetv2_small", 4128552),
    ("levit", "levit_128s", 7777058),
    ("lowformer", "lowformer_b0", 14100472),
    ("mambaout", "mambaout_femto", 7304536),
    ("maxxvit", "maxvit_pico_rw_256", 7457996),
    ("metaformer", "poolformerv2_s12", 11891712),
    ("mlp_mixer", "gmlp_ti16_224", 5867328),
    ("mobilenetv3", "mobilenetv3_small_050", 1593224),
    ("mobilevit", "mobilevit_xxs", 1272024),
    ("mvitv2", "mvitv2_tiny", 24173320),
    ("nest", "nest_tiny", 17057608),
    ("nextvit", "nextvit_small", 31763368),
    ("nfnet", "nf_regnet_b0", 8764288),
    ("pit", "pit_ti_224", 4847272),
    ("pvt_v2", "pvt_v2_b0", 3666760),
    ("rdnet", "rdnet_tiny", 23863008),
    ("regnet", "regnetx_002", 2684792),
    ("repghost", "repghostnet_050", 2313968),
    ("repvit", "repvit_m1", 5485248),
    ("res2net", "res2next50", 24671464),
    ("resnest", "resnest14d", 10611688),
    ("resnet", "resnet10t", 5435488),
    ("resnetv2", "resnetv2_18", 11687720),
    ("rexnet", "rexnet_100", 4796873),
    ("selecsls", "selecsls42", 30354952),
    ("senet", "legacy_seresnet18", 11778592),
    ("sequencer", "sequencer2d_s", 27651688),
    ("shvit", "shvit_s1", 6330808),
    ("sknet", "skresnet18", 11958056),
    ("starnet", "starnet_s050", 542728),
    ("swiftformer", "swiftformer_xs", 3475360),
    ("swin_transformer", "swin_tiny_patch4_window7_224", 28288354),
    ("swin_transformer_v2", "swinv2_tiny_window16_256", 28347154),
    ("swin_transformer_v2_cr", "swinv2_cr_tiny_224", 28332124),
    ("tiny_vit", "tiny_vit_5m_224", 12082725),
    ("tnt", "tnt_s_legacy_patch16_224", 23755336),
    ("tresnet", "tresnet_m", 31389032),
    ("twins", "twins_svt_small", 24060776),
    ("visformer", "visformer_tiny", 10321368),
    ("vision_transformer", "vit_tiny_patch16_224", 5717416),
    ("vision_transformer_hybrid", "vit_tiny_r_s16_p8_224", 6337704),
    ("vision_transformer_relpos", "vit_srelpos_small_patch16_224", 21973486),
    ("vitamin", "vitamin_small_224", 22173376),
    ("volo", "volo_d1_224", 26632040),
    ("vovnet", "ese_vovnet19b_slim_dw", 1897752),
    ("xception", "legacy_xception", 22855952),
    ("xception_aligned", "xception41p", 26907752),
    ("xcit", "xcit_nano_12_p8_224", 3049016),
)


# ============================================================================ child: models


def _quiet_warnings() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")


def input_size(name: str, size: int | None) -> int:
    """torchvision's spatial input size: ``size`` if given, else 299 for inception_v3 and 224 otherwise."""
    if size:
        return size
    return 299 if name == "inception_v3" else 224


def input_shape(name: str, size: int | None, zoo: str, model: Any) -> list[int]:
    """[1, C, H, W]: timm's ``pretrained_cfg["input_size"]`` (H=W=``size`` if given), torchvision's ``input_size``."""
    if zoo == "timm":
        channels, height, width = model.pretrained_cfg["input_size"]
        return [1, channels, size or height, size or width]
    side = input_size(name, size)
    return [1, 3, side, side]


def construct(name: str, zoo: str = "torchvision") -> Any:
    """The untrained model ``name`` of ``zoo`` (nothing is downloaded)."""
    if zoo == "timm":
        import timm

        return timm.create_model(name, pretrained=False)
    from torchvision.models import get_model

    return get_model(name, weights=None)


def build_model(name: str, seed: int = 0, zoo: str = "torchvision"):
    """``construct(name, zoo).eval()`` with zero-initialised tensors refilled and BN stats randomised.

    Parameters whose elements are all zero, or all one tiny constant (ConvNeXt's
    ``layer_scale`` = 1e-6, which would make every residual branch, and so every check
    of it, invisible), are refilled with ``normal_(0, 0.02)``; BN running means get
    ``normal_(0, 0.1)`` and running variances ``uniform_(0.5, 1.5)``. Returns the model
    and the names of the refilled parameters.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    m = construct(name, zoo).eval()
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


# ============================================================================ child: comparisons


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


def _all_finite(out: Any) -> bool:
    from fxprune.validate import flatten_outputs

    return all(bool(t.detach().isfinite().all()) for t in flatten_outputs(out) if t.is_floating_point())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ============================================================================ child: failures

# (error class, the party it blames, whether that party is the user): most specific class first
BLAMES = (
    ("NonFiniteOutputError", "the model's own outputs (NaN/inf)", True),
    ("ValidationError", "fxprune (onnxruntime disagrees with the pruned module)", False),
    ("InputError", "the user's example inputs or options", True),
    ("PlanError", "the user's plan or model object", True),
    ("TraceError", "the model's code (torch.fx cannot trace it)", True),
    ("UnsupportedOpError", "fxprune (an op without a rule, strict mode)", False),
    ("RewriteError", "fxprune (a rule's rewrite or shape prediction)", False),
)
NODE_PATTERNS = (re.compile(r"%(\w+)"), re.compile(r"\bnode '?([A-Za-z_]\w*)'?"))


def _blame(exc: BaseException) -> tuple[str, bool, str]:
    """(party blamed, whether it is the user, the class that decided) for a named fxprune error."""
    names = [k.__name__ for k in type(exc).__mro__]
    for cls, party, user in BLAMES:
        if cls in names:
            return party, user, cls
    return "fxprune", False, names[0]


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while (nxt := exc.__cause__ or exc.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        exc = nxt
    return exc


def _frames(exc: BaseException) -> list[traceback.FrameSummary]:
    return list(traceback.extract_tb(exc.__traceback__))


def _short(frame: traceback.FrameSummary) -> str:
    parts = frame.filename.replace(os.sep, "/").split("/")
    return f"{'/'.join(parts[-2:])}:{frame.lineno} in {frame.name}"


def _raise_sites(exc: BaseException) -> dict[str, str]:
    """``where``: the innermost frame in fxprune (or its passes) of ``exc``, else of its root
    cause; ``raised_at``: the innermost frame of the root cause (the original exception)."""
    import fxprune

    root = os.path.dirname(os.path.dirname(os.path.abspath(fxprune.__file__)))
    ours = tuple(os.path.join(root, d) + os.sep for d in ("fxprune", "passes"))
    deepest = _frames(_root_cause(exc)) or _frames(exc)
    out = {"raised_at": _short(deepest[-1])} if deepest else {}
    for frame in [*reversed(_frames(exc)), *reversed(deepest)]:
        if os.path.abspath(frame.filename).startswith(ours):
            out["where"] = f"{os.path.relpath(frame.filename, root)}:{frame.lineno} in {frame.name}"
            break
    return out


def classify_error(check: str, exc: BaseException, outputs_finite: bool = True) -> dict[str, Any]:
    """A failure record for ``exc`` raised by ``check``: ``refused`` (a named fxprune error, with
    the party it blames and ``blame_ok``) or ``crash`` (``PassError`` or any other exception).

    Needs: the sweep's inputs ran the model eagerly (so they fit) and its plans came from
    fxprune, so a refusal blaming the user's inputs, plan or model object blames wrongly;
    a TraceError is taken at its word; NonFiniteOutputError is right iff the eager outputs
    were not finite.
    """
    from fxprune.errors import FxpruneError, PassError

    text = _first_line(exc)
    fail: dict[str, Any] = {"check": check, "error_type": type(exc).__name__, "error": text[:500]}
    stage = re.match(r"\[pass ([\w-]+)\] ", text)
    if stage:
        fail["stage"] = stage.group(1)
    for pattern in NODE_PATTERNS:
        if (m := pattern.search(str(exc))) is not None:
            fail["node"] = m.group(1)
            break
    fail.update(_raise_sites(exc))
    if isinstance(exc, PassError) or not isinstance(exc, FxpruneError):
        fail.update(kind="crash", blame="fxprune (an unexpected exception: a defect)", blame_ok=False)
        root = _root_cause(exc)
        if root is not exc:
            fail["cause"] = f"{type(root).__name__}: {_first_line(root)}"[:500]
        return fail
    party, blames_user, decided_by = _blame(exc)
    ok = not blames_user or decided_by == "TraceError" or (decided_by == "NonFiniteOutputError" and not outputs_finite)
    fail.update(kind="refused", blame=party, blame_ok=bool(ok))
    return fail


def wrong_failure(check: str, detail: str, **numbers: float) -> dict[str, Any]:
    """A ``wrong`` failure: ``check``'s oracle differs (``detail`` says how)."""
    return {"check": check, "kind": "wrong", "error": detail, "blame": "fxprune (a silently wrong model)",
            "blame_ok": False, **numbers}


def add_failure(rec: dict[str, Any], failure: dict[str, Any]) -> None:
    rec.setdefault("failures", []).append(failure)


def outcome(failures: list[dict[str, Any]]) -> str:
    """The worst failure: silently-wrong > crash > misblamed (a refusal blaming the wrong party) > refused."""
    kinds = {f["kind"] for f in failures}
    if "wrong" in kinds:
        return "silently-wrong"
    if "crash" in kinds:
        return "crash"
    if any(f["kind"] == "refused" and not f.get("blame_ok") for f in failures):
        return "misblamed"
    return "refused" if kinds else "ok"


# ============================================================================ child: checks


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


def _compare(rec: dict[str, Any], check: str, keys: tuple[str, str, str], run: Callable[[], Any], want: Any,
             tol: float, outputs_finite: bool) -> Any:
    """Run ``run()`` and compare its output with ``want``.

    Records ``keys`` = (ok key, max-abs key, error key); a difference over ``tol`` (or other
    output shapes) is a ``wrong`` failure, an exception a classified one. Returns the output
    (None when ``run`` raised).
    """
    ok_key, diff_key, err_key = keys
    got = _attempt(rec, check, (ok_key, err_key), run, outputs_finite)
    if got is None:
        return None
    try:
        d = _max_diff(got, want)
    except RuntimeError as exc:  # other output count or shapes
        rec.update({ok_key: False, err_key: str(exc)})
        add_failure(rec, wrong_failure(check, str(exc)))
        return got
    rec.update({ok_key: bool(d <= tol), diff_key: d})
    if d > tol:
        add_failure(rec, wrong_failure(check, f"max abs {d:.3g} > tolerance {tol:.3g}", max_abs=d, tolerance=tol))
    return got


def _attempt(rec: dict[str, Any], check: str, keys: tuple[str, str], run: Callable[[], Any],
             outputs_finite: bool) -> Any:
    """``run()``, or None after recording ``keys`` = (ok key: False, error key) and a classified failure."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 -- a failure here is a finding, not a crash
        rec.update({keys[0]: False, keys[1]: f"{type(exc).__name__}: {_first_line(exc)}"})
        add_failure(rec, classify_error(check, exc, outputs_finite))
        return None


def plan_parts(res) -> tuple[dict, dict, dict]:
    """(plan, the groups that remove units, those of them without norm members: the checked plan)."""
    graph, plan = res.graph, dict(res.plan or {})
    removed = {gid: kept for gid, kept in plan.items() if len(kept) < graph.group(gid).units}
    sub_plan = {gid: kept for gid, kept in plan.items() if not graph.group(gid).has_norm}
    return plan, removed, sub_plan


def equivalence_checks(res, x, model: Any = None, reference: Any = None, outputs_finite: bool = True) -> dict[str, Any]:
    """The traced graph == the model (``reference`` = ``model(x)``), mask==rewrite and
    zero-produce==rewrite on the plan's groups without norm members, and, with ``model``,
    the public API on the user's model object (``user_api_checks``). Never raises for a
    finding: failures go to ``rec["failures"]``."""
    import torch
    import fxprune

    graph, gm = res.graph, res.graph.gm
    plan, removed_any, sub_plan = plan_parts(res)
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
        if reference is not None:
            tol = EQ_RTOL * max(1.0, _scale(reference))
            _compare(rec, "trace==model", ("trace_eq_model", "trace_max_abs", "trace_error"), lambda: ref,
                     reference, tol, outputs_finite)
        out_rw = _attempt(rec, "rewrite(gm, graph, sub_plan)", ("sub_rewrite_ok", "sub_rewrite_error"),
                          lambda: fxprune.rewrite(gm, graph, sub_plan).eval()(x), outputs_finite)
        if out_rw is None:
            err = f"rewrite(sub_plan) raised {rec['sub_rewrite_error']}"
            rec.update(mask_eq_rewrite=False, mask_error=err, zero_produce_eq_rewrite=False, zero_error=err)
        else:
            _oracle_checks(rec, res, x, sub_plan, ref, out_rw, outputs_finite)
        if model is not None:
            user_api_checks(rec, model, res, x, sub_plan, out_rw, outputs_finite)
    return rec


def _oracle_checks(rec: dict, res, x, sub_plan: dict, ref: Any, out_rw: Any, outputs_finite: bool) -> None:
    """mask==rewrite and zero-produce==rewrite (each localised to a group when it fails)."""
    import fxprune

    graph, gm = res.graph, res.graph.gm
    scale = _scale(out_rw)
    tol = EQ_RTOL * max(1.0, scale)
    rec.update(output_scale=scale, original_output_scale=_scale(ref), eq_tolerance=tol)
    # how much pruning changed the output: a check whose diffs are far below this can see an error
    try:
        rec["rewrite_vs_original_max_abs"] = _max_diff(ref, out_rw)
    except RuntimeError:
        pass
    checks = (("mask==rewrite", ("mask_eq_rewrite", "mask_max_abs", "mask_error"), "mask_rel",
               lambda p: fxprune.mask(gm, graph, p).eval()),
              ("zero-produce==rewrite", ("zero_produce_eq_rewrite", "zero_max_abs", "zero_error"), "zero_rel",
               lambda p: zero_produce(gm, graph, p).eval()))
    for check, keys, rel_key, reference_of in checks:
        _compare(rec, check, keys, lambda ref=reference_of: ref(sub_plan)(x), out_rw, tol, outputs_finite)
        if keys[1] in rec:
            rec[rel_key] = rec[keys[1]] / max(scale, 1e-30)
        failure = next((f for f in rec.get("failures", []) if f["check"] == check and f["kind"] == "wrong"), None)
        if failure is not None:
            failure["localised"] = localise(res, x, sub_plan, reference_of, tol)


def user_api_checks(rec: dict, model: Any, res, x, sub_plan: dict, out_rw: Any, outputs_finite: bool) -> None:
    """The README's API on the user's own model object: ``rewrite(model, graph, plan)`` ==
    the compiled module, ``mask(model, graph, sub_plan)`` == ``rewrite(gm, graph, sub_plan)``,
    and neither touches the model (state and mode)."""
    import torch
    import fxprune

    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    compiled = res.module.eval()(x)
    tol = EQ_RTOL * max(1.0, _scale(compiled))
    _compare(rec, "rewrite(model, graph, plan)==compiled", ("user_rewrite_eq", "user_rewrite_max_abs",
             "user_rewrite_error"), lambda: fxprune.rewrite(model, res.graph, res.plan).eval()(x), compiled, tol,
             outputs_finite)
    if out_rw is not None:
        tol = EQ_RTOL * max(1.0, _scale(out_rw))
        _compare(rec, "mask(model, graph, sub_plan)==rewrite", ("user_mask_eq", "user_mask_max_abs",
                 "user_mask_error"), lambda: fxprune.mask(model, res.graph, sub_plan).eval()(x), out_rw, tol,
                 outputs_finite)
    after = model.state_dict()
    changed = sorted(set(before) ^ set(after)) or [k for k in before if not torch.equal(before[k], after[k])]
    if model.training != was_training:
        changed.append("(train/eval mode)")
    rec["user_model_untouched"] = not changed
    if changed:
        add_failure(rec, wrong_failure("the user's model is untouched", f"changed: {', '.join(changed[:5])}"))


# ============================================================================ child: localisation


def localise(res, x, sub_plan: dict, reference_of: Callable[[dict], Any], tol: float) -> dict[str, Any]:
    """Where a failing oracle check goes wrong: a small set of ``sub_plan``'s groups that fails
    by itself (``minimal_failing``, at most LOCALISE_MAX_STEPS rewrites), their parameters and
    ops, and the first node at which the reference (on the kept elements) and the rewrite of
    that set disagree."""
    import torch
    import fxprune

    graph, gm = res.graph, res.graph.gm

    def fails(gids: list[str]) -> bool:
        part = {g: sub_plan[g] for g in gids}
        try:
            with torch.no_grad():
                return _max_diff(reference_of(part)(x), fxprune.rewrite(gm, graph, part).eval()(x)) > tol
        except Exception:  # noqa: BLE001 -- a part that cannot be checked does not localise
            return False

    pruned = [g for g, kept in sub_plan.items() if len(kept) < graph.group(g).units]
    gids = minimal_failing(fails, pruned)
    out: dict[str, Any] = {"groups": gids, "minimal": len(gids) < len(pruned),
                           "members": [describe_group(graph, g) for g in gids[:3]]}
    part = {g: sub_plan[g] for g in gids}
    try:
        out["first_divergence"] = first_divergence(res, x, part, reference_of(part), tol)
    except Exception as exc:  # noqa: BLE001
        out["first_divergence_error"] = f"{type(exc).__name__}: {_first_line(exc)}"
    return out


def minimal_failing(fails: Callable[[list[str]], bool], gids: list[str],
                    budget: int = LOCALISE_MAX_STEPS) -> list[str]:
    """A subset of ``gids`` (given ``fails(gids)``) that still fails: bisection to one group
    first, then dropping chunks of 8, 4, 2 and 1 groups while the rest still fails; stops
    after ``budget`` calls of ``fails`` with the smallest failing set found."""
    calls = 0

    def still_fails(part: list[str]) -> bool:
        nonlocal calls
        calls += 1
        return fails(part)

    current = list(gids)
    while len(current) > 1 and calls < budget:  # bisection: one half fails alone
        half = len(current) // 2
        failing = next((p for p in (current[:half], current[half:]) if calls < budget and still_fails(p)), None)
        if failing is None:
            break
        current = failing
    for size in (8, 4, 2, 1):  # only groups together fail: drop what is not needed
        i = 0
        while i < len(current) and len(current) > 1 and calls < budget:
            trial = current[:i] + current[i + size:]
            if trial and still_fails(trial):
                current = trial
            else:
                i += size
    return current


def _op_name(node: Any, modules: dict) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return "." + str(node.target)
    return node.op


def describe_group(graph, gid: str) -> dict[str, Any]:
    """A group's units, parameter members and the ops of its node spaces (first 16)."""
    group = graph.group(gid)
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    modules = dict(graph.gm.named_modules())
    ops: list[str] = []
    for key in group.spaces:
        if key[0] == "n" and key[1] in nodes:
            label = f"{key[1]}:{_op_name(nodes[key[1]], modules)}"
            if label not in ops:
                ops.append(label)
    params = [f"{name}[{dim}]:{role}" for name, dim, role in group.members()]
    return {"units": group.units, "params": params[:8], "params_total": len(params), "ops": ops[:16],
            "ops_total": len(ops)}


def _node_values(gm, x) -> dict[str, Any]:
    """Every node's output on ``x`` (fx.Interpreter), by node name."""
    import torch
    from torch import fx

    values: dict[str, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            values[n.name] = out
            return out

    with torch.no_grad():
        Recorder(gm).run(x)
    return values


def first_divergence(res, x, part: dict, reference_gm, tol: float) -> dict[str, Any] | None:
    """The first node (graph order) whose output in ``reference_gm``, restricted to the elements
    ``part`` keeps, differs from the same node of ``rewrite(gm, graph, part)`` by over ``tol``."""
    import torch
    import fxprune

    graph = res.graph
    rewritten = fxprune.rewrite(graph.gm, graph, part).eval()
    got = _node_values(rewritten, x)
    want = _node_values(reference_gm, x)
    removed = graph.removed_labels(part)
    modules = dict(reference_gm.named_modules())
    for node in reference_gm.graph.nodes:
        a, b = want.get(node.name), got.get(node.name)
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            continue
        a = _kept_view(graph, node.name, a, removed)
        if a.shape != b.shape:
            continue
        d = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
        if d > tol or d != d:
            inputs = [f"{n.name}:{_op_name(n, modules)}" for n in node.all_input_nodes]
            return {"node": node.name, "op": _op_name(node, modules), "inputs": inputs[:6], "max_abs": d}
    return None


def _kept_view(graph, name: str, value: Any, removed: Any) -> Any:
    """``value`` (node ``name``'s full-size output) restricted to the elements the plan keeps."""
    import torch

    for dim in range(value.dim()):
        key = ("n", name, -1, dim)
        if key in graph.table.sizes:
            idx = graph.kept_index(key, removed)
            if idx is not None:
                value = value.index_select(dim, torch.as_tensor(idx, dtype=torch.long))
    return value


# ============================================================================ child: one model


def run_one(name: str, size: int | None = None, sparsity: float = 0.5, method: str = "l1",
            seed: int = 0, zoo: str = "torchvision") -> dict[str, Any]:
    """Everything the sweep measures for one model; never raises (errors go into the record)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _run_one(name, size, sparsity, method, seed, zoo)


def _run_one(name: str, size: int | None, sparsity: float, method: str, seed: int, zoo: str) -> dict[str, Any]:
    import torch

    t_start = time.perf_counter()
    rec: dict[str, Any] = {"model": name, "zoo": zoo, "method": method, "sparsity": sparsity}
    try:
        m, refilled = build_model(name, seed, zoo)
        rec["input"] = input_shape(name, size, zoo, m)
        torch.manual_seed(seed)
        x = torch.randn(*rec["input"])
        with torch.no_grad():
            reference = m(x)
    except Exception as exc:  # noqa: BLE001 -- the model itself does not run: not fxprune's failure
        rec.update(status="bug", stage="build", error_type=type(exc).__name__, error=_first_line(exc),
                   traceback=traceback.format_exc()[-4000:], total_s=time.perf_counter() - t_start)
        return rec
    rec["params"] = sum(p.numel() for p in m.parameters())
    rec["refilled_zero_tensors"] = len(refilled)
    rec["refilled_examples"] = refilled[:3]
    rec["outputs_finite"] = finite = _all_finite(reference)
    rec["build_s"] = time.perf_counter() - t_start
    res = _compile(rec, m, x, sparsity, method, finite)
    if res is not None:
        _check(rec, res, m, x, reference, zoo, finite)
    rec["total_s"] = time.perf_counter() - t_start
    rec["outcome"] = outcome(rec.get("failures", []))
    return rec


def _compile(rec: dict[str, Any], m: Any, x: Any, sparsity: float, method: str, finite: bool) -> Any:
    """``fxprune.compile`` and its report into ``rec``; None (and a classified failure) if it raised."""
    import fxprune
    from fxprune.state import state_of

    t0 = time.perf_counter()
    try:
        res = fxprune.compile(m, x, method=method, sparsity=sparsity)
    except Exception as exc:  # noqa: BLE001
        rec["compile_s"] = time.perf_counter() - t0
        failure = classify_error("compile", exc, finite)
        failure.setdefault("stage", "trace" if failure["kind"] == "refused" else "?")
        add_failure(rec, failure)
        rec.update(stage="compile", error_type=type(exc).__name__, error=_first_line(exc))
        rec["status"] = "bug" if failure["kind"] == "crash" else "refused"
        if failure["kind"] == "crash":
            rec["traceback"] = traceback.format_exc()[-4000:]
        for attr in ("max_abs", "max_rel"):
            if hasattr(exc, attr):
                rec[f"validate_{attr}"] = float(getattr(exc, attr))
        return None
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
    return res


def _check(rec: dict[str, Any], res: Any, m: Any, x: Any, reference: Any, zoo: str, finite: bool) -> None:
    """The equivalence and user-API checks of a compiled model, and its status."""
    t1 = time.perf_counter()
    try:
        checks = equivalence_checks(res, x, model=m, reference=reference, outputs_finite=finite)
        failures = checks.pop("failures", [])
        rec.update(checks)
        for failure in failures:
            add_failure(rec, failure)
    except Exception as exc:  # noqa: BLE001 -- the checks themselves broke
        rec.update(mask_eq_rewrite=False, zero_produce_eq_rewrite=False,
                   check_error=f"{type(exc).__name__}: {_first_line(exc)}",
                   traceback=traceback.format_exc()[-4000:])
        add_failure(rec, classify_error("checks", exc, finite))
    rec["checks_s"] = time.perf_counter() - t1
    macs_ok = rec["macs_ok"] or zoo != "torchvision"  # the 30% bar is the torchvision issue's
    ok = rec["validated"] and macs_ok and not rec.get("failures")
    rec["status"] = "ok" if ok else "check-failed"
    if not ok:
        rec["reason"] = failure_reason(rec, macs_ok)


def failure_reason(rec: dict[str, Any], macs_ok: bool = True) -> str:
    why = []
    if not rec.get("validated"):
        why.append("not validated")
    if not macs_ok:
        why.append(f"MACs fell only {rec.get('macs_reduction', 0):.1%}")
    for f in rec.get("failures", []):
        what = f"{f['error_type']}: {f['error']}" if "error_type" in f else f["error"]
        why.append(f"{f['check']} {f['kind']} ({what})")
    return "; ".join(why)


def child_main(args: argparse.Namespace) -> int:
    _quiet_warnings()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    rec = run_one(args.one, size=args.size, sparsity=args.sparsity, method=args.method, zoo=args.zoo)
    sys.stdout.flush()
    print(MARKER + json.dumps(rec, default=_json_default), flush=True)
    return 0


def _json_default(o: Any) -> Any:
    try:
        return float(o)
    except Exception:  # noqa: BLE001
        return repr(o)


# ============================================================================ parent: model lists


def _count_params(build: Callable[[], Any]) -> int:
    """Parameters of ``build()``, built on the meta device where the builder allows it."""
    import torch

    try:
        with torch.device("meta"):
            m = build()
    except Exception:  # noqa: BLE001 -- some builders compute on tensors: build on CPU
        m = build()
    return sum(p.numel() for p in m.parameters())


def candidate_models(max_params: int, only: list[str] | None = None,
                     zoo: str = "torchvision") -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(kept, skipped) lists of (name, params) of ``zoo`` (``only``: those names, in zoo order)."""
    if zoo == "timm":
        return timm_candidates(max_params, only)
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
        count = _count_params(lambda n=n: get_model(n, weights=None))
        (kept if count <= max_params else skipped).append((n, count))
    return kept, skipped


def timm_candidates(max_params: int,
                    only: list[str] | None = None) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """TIMM_MODELS (or ``only``, any timm names, in the order given) split by ``max_params``."""
    if only:
        import timm

        known = set(timm.list_models())
        unknown = [n for n in only if n not in known]
        if unknown:
            raise SystemExit(f"unknown timm model(s): {', '.join(unknown)}")
        listed = {name: params for _, name, params in TIMM_MODELS}
        pairs = [(n, listed.get(n) or _count_params(lambda n=n: timm.create_model(n, pretrained=False))) for n in only]
    else:
        pairs = [(name, params) for _, name, params in TIMM_MODELS]
    return [p for p in pairs if p[1] <= max_params], [p for p in pairs if p[1] > max_params]


def timm_selection(per_family: int = 1, max_params: int = TIMM_MAX_PARAMS,
                   max_side: int = TIMM_MAX_SIDE) -> list[tuple[str, str, int]]:
    """TIMM_MODELS's rule: per module of timm.models (sorted), the ``per_family`` smallest
    models (params, then name) with at most ``max_params`` parameters and an input side of at
    most ``max_side``, timm's unit-test configs (``test_*``) left out. Builds every timm model
    on the meta device (~12 min)."""
    import timm

    chosen = []
    for family in sorted(timm.list_modules()):
        sizes = []
        for name in sorted(timm.list_models(module=family)):
            if name.startswith("test_"):
                continue
            params = _count_params(lambda name=name: timm.create_model(name, pretrained=False))
            side = max(timm.get_pretrained_cfg(name).input_size[1:]) if timm.get_pretrained_cfg(name) else 224
            if params <= max_params and side <= max_side:
                sizes.append((params, name))
        chosen += [(family, name, params) for params, name in sorted(sizes)[:per_family]]
    return chosen


# ============================================================================ parent: children


def preload(zoo: str) -> None:
    """Import what every child needs once, in the parent, so that forked children start warm
    (and all run the code as it was when the sweep started)."""
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    import fxprune  # noqa: F401
    import fxprune.passes  # noqa: F401 -- compile imports the passes lazily
    import fxprune.validate  # noqa: F401
    if zoo == "timm":
        import timm  # noqa: F401


def run_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The record of one model, measured in a forked child (POSIX) or a fresh interpreter;
    a timeout, or a child that dies without a record, is a record too."""
    t0 = time.perf_counter()
    if hasattr(os, "fork") and not args.spawn:
        rec = _forked_record(name, args)
    else:
        rec = _spawned_record(name, args)
    rec.setdefault("model", name)
    rec.setdefault("zoo", args.zoo)
    rec["child_wall_s"] = time.perf_counter() - t0
    rec.setdefault("total_s", rec["child_wall_s"])
    if rec.get("status") in ("timeout", "crash"):
        rec["outcome"] = rec["status"]
    return rec


def _timeout_record(args: argparse.Namespace, tail: str = "") -> dict[str, Any]:
    return {"status": "timeout", "error": f"no result within {args.timeout:g} s", "stderr_tail": tail[-2000:]}


def _forked_child(name: str, args: argparse.Namespace, conn: Any) -> None:
    try:
        _quiet_warnings()
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        rec = run_one(name, size=args.size, sparsity=args.sparsity, method=args.method, zoo=args.zoo)
        conn.send(json.dumps(rec, default=_json_default))
    finally:
        conn.close()
        os._exit(0)  # no atexit handlers or finalisers of the parent's modules


def _forked_record(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_forked_child, args=(name, args, send))
    proc.start()
    send.close()
    try:
        if not recv.poll(args.timeout):
            return _timeout_record(args)
        return json.loads(recv.recv())
    except (EOFError, OSError, json.JSONDecodeError) as exc:
        proc.join(5)
        return {"status": "crash", "error": f"child exited with code {proc.exitcode} and no record "
                                            f"({type(exc).__name__})", "returncode": proc.exitcode}
    finally:
        recv.close()
        if proc.is_alive():
            proc.kill()
        proc.join()


def _spawned_record(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--zoo", args.zoo,
           "--sparsity", str(args.sparsity), "--method", args.method]
    if args.size:
        cmd += ["--size", str(args.size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        tail = exc.stderr or b""
        return _timeout_record(args, tail.decode(errors="replace") if isinstance(tail, bytes) else tail)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            try:
                return json.loads(line[len(MARKER):])
            except json.JSONDecodeError as exc:
                return {"status": "crash", "error": f"unparsable record: {exc}"}
    return {"status": "crash", "error": f"child exited with code {proc.returncode} and no record",
            "returncode": proc.returncode, "stderr_tail": proc.stderr[-3000:]}


# ============================================================================ parent: summary


def _cause_key(failure: dict[str, Any]) -> str:
    """What failures with one cause share: kind, check, error type and the error's first line
    with numbers, quoted names and node names blanked (the pass prefix dropped)."""
    text = re.sub(r"^\[pass [\w-]+\] ", "", failure.get("error", ""))
    text = re.sub(r"\S*/\S*|\b[A-Z][a-z0-9]+[A-Z]\w*|\bin \w+:|(?<=trace )\w+", "_", text)  # paths, names
    text = re.sub(r"'[^']*'|\"[^\"]*\"|%\w+|\d+(\.\d+)?(e[-+]?\d+)?", "_", text)[:160]
    return " | ".join((failure["kind"], failure["check"], failure.get("error_type", "-"), text))


def failures_by_cause(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every failure of ``records``, grouped by ``_cause_key``: the models, one example error,
    the raise sites, nodes and localised ops seen (most models first)."""
    causes: dict[str, dict[str, Any]] = {}
    for rec in records:
        for f in rec.get("failures") or _child_failure(rec):
            c = causes.setdefault(_cause_key(f), {
                "kind": f["kind"], "check": f["check"], "error_type": f.get("error_type", "-"),
                "blame": f.get("blame"), "blame_ok": f.get("blame_ok"), "example": f.get("error", ""),
                "models": [], "where": [], "nodes": []})
            if rec["model"] not in c["models"]:
                c["models"].append(rec["model"])
            for value, into in ((f.get("where"), "where"), (_failure_node(f, rec["model"]), "nodes")):
                if value and value not in c[into]:
                    c[into].append(value)
    return sorted(causes.values(), key=lambda c: (-len(c["models"]), c["kind"], c["check"]))


def _child_failure(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """A timeout, or a child that died without a record, as a failure (none otherwise)."""
    if rec.get("status") not in ("timeout", "crash"):
        return []
    return [{"kind": rec["status"], "check": "the whole model", "error_type": "-", "error": rec.get("error", ""),
             "blame": "fxprune (no answer: a defect)" if rec["status"] == "crash" else "-", "blame_ok": False}]


def _failure_node(failure: dict[str, Any], model: str) -> str | None:
    """``model: node (op)``: the error's node, or where a wrong check first diverges."""
    loc = failure.get("localised") or {}
    first = loc.get("first_divergence")
    if first:
        groups = loc.get("groups") or []
        where = f" with group(s) {', '.join(groups[:3])}" if groups and loc.get("minimal") else ""
        return f"{model}: first differs at {first['node']} ({first['op']} <- {', '.join(first['inputs'][:3])}){where}"
    if failure.get("node"):
        return f"{model}: {failure['node']}"
    return None


def summarize(records: list[dict[str, Any]], skipped: list[tuple[str, int]], command: str, total_s: float,
              planned: int, zoo: str = "torchvision") -> dict[str, Any]:
    import torch
    import torchvision

    def count(pred) -> int:
        return sum(1 for r in records if pred(r))

    def models_with(pred) -> list[str]:
        return [r["model"] for r in records if pred(r)]

    compiled = [r for r in records if r.get("status") in ("ok", "check-failed")]
    outcomes = [r.get("outcome") or ("ok" if r.get("status") == "ok" else r.get("status")) for r in records]
    misblamed = [{"model": r["model"], "check": f["check"], "error_type": f["error_type"], "blame": f["blame"],
                  "error": f["error"]}
                 for r in records for f in r.get("failures", []) if f["kind"] == "refused" and not f["blame_ok"]]
    return {
        "command": command,
        "zoo": zoo,
        "models_planned": planned,
        "models_done": len(records),
        "pruned": len(compiled),
        "validated": count(lambda r: r.get("validated")),
        "macs_reduction_ge_30pct": count(lambda r: r.get("macs_ok")),
        "mask_eq_rewrite": count(lambda r: r.get("mask_eq_rewrite")),
        "zero_produce_eq_rewrite": count(lambda r: r.get("zero_produce_eq_rewrite")),
        "both_equivalence_checks": count(lambda r: r.get("mask_eq_rewrite") and r.get("zero_produce_eq_rewrite")),
        "trace_eq_model": count(lambda r: r.get("trace_eq_model")),
        "user_rewrite_eq": count(lambda r: r.get("user_rewrite_eq")),
        "user_mask_eq": count(lambda r: r.get("user_mask_eq")),
        "all_checks_ok": count(lambda r: r.get("status") == "ok"),
        "check_failed": count(lambda r: r.get("status") == "check-failed"),
        "refused": count(lambda r: r.get("status") == "refused"),
        "bugs": count(lambda r: r.get("status") == "bug"),
        "crashed": count(lambda r: r.get("status") == "crash"),
        "timeouts": count(lambda r: r.get("status") == "timeout"),
        "outcomes": {o: outcomes.count(o) for o in sorted(set(outcomes), key=str)},
        "silently_wrong_models": models_with(lambda r: r.get("outcome") == "silently-wrong"),
        "crash_models": models_with(lambda r: r.get("outcome") == "crash" or r.get("status") == "crash"),
        "build_failed": models_with(lambda r: r.get("stage") == "build"),
        "misblamed_refusals": misblamed,
        "failures_by_cause": failures_by_cause(records),
        "skipped_over_max_params": [{"model": n, "params": p} for n, p in skipped],
        "total_s": total_s,
        "models_total_s": sum(r["total_s"] for r in records if isinstance(r.get("total_s"), (int, float))),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": _timm_version() if zoo == "timm" else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _timm_version() -> str | None:
    try:
        import timm
    except ImportError:
        return None
    return timm.__version__


# ============================================================================ parent: markdown


def _human(n: float | None) -> str:
    if n is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return f"{n:.0f}"


def _fmt_diff(rec: dict, ok_key: str, diff_key: str, err_key: str, groups: bool = True) -> str:
    if ok_key not in rec:
        return "-"
    mark = "ok" if rec[ok_key] else "**FAIL**"
    counts = f" ({rec['groups_checked']}/{rec['groups_pruned']} groups)" if groups and "groups_checked" in rec else ""
    if diff_key in rec:
        return f"{mark} {rec[diff_key]:.1e}{counts}"
    return f"{mark} ({rec.get(err_key, 'error')})" if not rec[ok_key] else mark + counts


def _user_api_cell(rec: dict) -> str:
    parts = [_fmt_diff(rec, "user_rewrite_eq", "user_rewrite_max_abs", "user_rewrite_error", groups=False),
             _fmt_diff(rec, "user_mask_eq", "user_mask_max_abs", "user_mask_error", groups=False)]
    return " / ".join(parts) if any(p != "-" for p in parts) else "-"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def status_text(rec: dict[str, Any]) -> str:
    st = rec.get("status", "?")
    if st == "ok":
        return "ok"
    if st == "check-failed":
        return f"**check failed** ({rec.get('outcome', '?')}): {rec.get('reason', '')}"
    if st == "refused":
        wrong = [f for f in rec.get("failures", []) if f["kind"] == "refused" and not f.get("blame_ok")]
        head = f"**refused, blaming {wrong[0]['blame']} wrongly**" if wrong else "refused"
        return f"{head}: {rec.get('error_type')}: {rec.get('error', '')}"
    if st == "bug":
        return f"**BUG** ({rec.get('stage', '?')}): {rec.get('error_type')}: {rec.get('error', '')}"
    return f"**{st}**: {rec.get('error', '')}"


def _header(s: dict[str, Any]) -> list[str]:
    versions = f"torch {s['torch']}, torchvision {s['torchvision']}"
    if s.get("timm"):
        versions += f", timm {s['timm']}"
    lines = [
        f"# fxprune {s.get('zoo', 'torchvision')} zoo sweep", "", "Command:", "", "```", s["command"], "```", "",
        f"{versions}, python {s['python']}, {s['platform']}; method l1, sparsity 0.5, one subprocess per model; "
        f"total {s.get('models_total_s', s['total_s']) / 60:.1f} min (the models' seconds added up).", "",
    ]
    if s.get("zoo") == "timm":
        lines += [f"Models: `TIMM_MODELS` of tools/zoo_sweep.py (unless `--models`): per timm family (module of "
                  f"`timm.models`) the smallest model with at most {TIMM_MAX_PARAMS / 1e6:g}M parameters and an "
                  f"input side of at most {TIMM_MAX_SIDE}, `test_*` configs left out; "
                  "`timm.create_model(name, pretrained=False)` at its `pretrained_cfg` input size.", ""]
    return lines + [
        f"- models: {s['models_done']} of {s['models_planned']} done "
        f"({len(s['skipped_over_max_params'])} skipped for > max params: "
        f"{', '.join(d['model'] for d in s['skipped_over_max_params']) or 'none'})",
        f"- pruned: {s['pruned']}, validated by onnxruntime: {s['validated']}, "
        f"MACs reduced >= 30%: {s['macs_reduction_ge_30pct']}",
        f"- trace == model: {s.get('trace_eq_model', '-')}, mask == rewrite: {s['mask_eq_rewrite']}, "
        f"zero-produce == rewrite: {s['zero_produce_eq_rewrite']}, both: {s['both_equivalence_checks']}",
        f"- the user's model object: rewrite(model, graph, plan) == compiled: {s.get('user_rewrite_eq', '-')}, "
        f"mask(model, graph, sub_plan) == rewrite: {s.get('user_mask_eq', '-')}",
        f"- all checks ok: {s['all_checks_ok']}; check failed: {s['check_failed']}, refused: {s['refused']}, "
        f"bugs: {s['bugs']}, crashed: {s['crashed']}, timeouts: {s['timeouts']}",
        "- outcomes (worst failure of a model): " + ", ".join(f"{k}: {v}" for k, v in s.get("outcomes", {}).items()),
        "",
        "Equivalence checks use the plan's groups without normalisation members, tolerance "
        f"{EQ_RTOL:g} x max(1, max|output|); the diff shown is the max abs difference, then "
        "(groups checked / groups the plan prunes). \"user API\" is rewrite(model, graph, plan) vs the compiled "
        "module / mask(model, graph, sub_plan) vs rewrite, with the user's own model object. Seconds per phase "
        "come from `res.report.seconds`; total s includes building the model and every check.",
        "",
    ]


def _cause_lines(causes: list[dict[str, Any]]) -> list[str]:
    if not causes:
        return []
    lines = ["", "## Failures by cause", "",
             "kind: `wrong` = an oracle differs (silently wrong), `refused` = a named fxprune error (the party "
             "it blames; **wrongly** where the sweep's inputs and plan were fine), `crash` = any other exception "
             "(a defect).", ""]
    for c in causes:
        blame = "" if c["kind"] != "refused" else (f", blames {c['blame']}" + ("" if c["blame_ok"] else " **wrongly**"))
        lines.append(f"- **{c['kind']}** in `{c['check']}` ({c['error_type']}{blame}), {len(c['models'])} model(s): "
                     f"{', '.join(c['models'])}")
        lines.append(f"  - e.g. {c['example'][:300]}")
        if c["where"]:
            lines.append(f"  - raised at: {'; '.join(c['where'][:4])}")
        if c["nodes"]:
            lines.append(f"  - node/op: {'; '.join(c['nodes'][:6])}")
    return [_cell(line) if line.startswith("|") else line for line in lines]


def markdown(records: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = _header(summary) + [
        "| model | params | MACs before→after | MACs reduction | validate max err | mask==rewrite | zero-produce "
        "| user API | s trace/analyze/l1/rewrite/validate | total s | status/reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    torchvision_bar = summary.get("zoo", "torchvision") == "torchvision"
    for r in records:
        sec = r.get("seconds") or {}
        phases = "/".join(f"{sec[p]:.1f}" if p in sec else "-" for p in PHASES) if sec else "-"
        macs = (f"{_human(r.get('macs_before'))}→{_human(r.get('macs_after'))}"
                if "macs_before" in r else "-")
        red = f"{r['macs_reduction']:.1%}" if "macs_reduction" in r else "-"
        if "macs_ok" in r and not r["macs_ok"] and torchvision_bar:
            red += " (<30%)"
        val = f"{r['validate_max_abs']:.1e}" if "validate_max_abs" in r else "-"
        total = f"{r['total_s']:.1f}" if isinstance(r.get("total_s"), (int, float)) else "-"
        row = [r["model"], _human(r.get("params")), macs, red, val,
               _fmt_diff(r, "mask_eq_rewrite", "mask_max_abs", "mask_error"),
               _fmt_diff(r, "zero_produce_eq_rewrite", "zero_max_abs", "zero_error"),
               _user_api_cell(r), phases, total, status_text(r)]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    lines += _cause_lines(failures_by_cause(records))
    lines += _notes(records)
    lines.append("")
    return "\n".join(lines)


def _notes(records: list[dict[str, Any]]) -> list[str]:
    weak = [r for r in records if "rewrite_vs_original_max_abs" in r and "eq_tolerance" in r
            and r["rewrite_vs_original_max_abs"] < 10 * r["eq_tolerance"]]
    huge = [r for r in records if r.get("output_scale", 0) > 1e3]
    vacuous = [r for r in records if r.get("groups_checked") == 0]
    lines: list[str] = []
    if weak or huge or vacuous:
        lines += ["", "Notes:", ""]
        for r in vacuous:
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
    return lines


# ============================================================================ parent: main


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


def previous_results(out: str) -> tuple[list[dict[str, Any]], str | None, list[dict[str, Any]]]:
    """(records, command, skipped) of an earlier ``<out>.json``, or empty when there is none."""
    try:
        with open(out + ".json") as f:
            data = json.load(f)
    except FileNotFoundError:
        return [], None, []
    return data["records"], data["summary"]["command"], data["summary"].get("skipped_over_max_params", [])


def parent_main(args: argparse.Namespace, argv: list[str]) -> int:
    _quiet_warnings()
    out = args.out or DEFAULT_OUT[args.zoo]
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(os.path.abspath(__file__))] + argv)
    only = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    start = time.perf_counter()
    if not args.spawn:
        preload(args.zoo)
    kept, skipped = candidate_models(args.max_params, only, args.zoo)
    params = dict(kept)

    records: dict[str, dict] = {}
    order = [n for n, _ in kept]
    rerun = [n for n, _ in kept]
    if args.merge:  # extend or re-run an earlier sweep: its other records stay
        earlier, earlier_command, earlier_skipped = previous_results(out)
        records = {r["model"]: r for r in earlier}
        if not only:  # no names given: run the candidates it has no record of
            rerun = [n for n in rerun if n not in records]
        order = [r["model"] for r in earlier] + [n for n in order if n not in records]
        command = f"{earlier_command}\n{command}" if earlier_command else command
        still_skipped = {d["model"]: d["params"] for d in earlier_skipped if d["model"] not in params}
        still_skipped.update((n, p) for n, p in skipped if n not in records)
        skipped = list(still_skipped.items())

    print(f"{len(rerun)} models to sweep ({len(skipped)} over {args.max_params:,} params skipped: "
          f"{', '.join(n for n, _ in skipped)})", flush=True)

    def flush() -> None:
        done = [records[n] for n in order if n in records]
        write_outputs(out, done, summarize(done, skipped, command, time.perf_counter() - start, len(order), args.zoo))

    def finished(name: str, rec: dict) -> None:
        rec.setdefault("params", params[name])
        records[name] = rec
        extra = "" if rec.get("status") == "ok" else (
            rec.get("reason") or ": ".join(str(rec[k]) for k in ("error_type", "error") if rec.get(k)))
        red = f" MACs -{rec['macs_reduction']:.1%}" if "macs_reduction" in rec else ""
        print(f"[{rerun.index(name) + 1}/{len(rerun)}] {name}: {rec.get('status')}{red} "
              f"{rec.get('total_s', 0):.1f}s {extra}".rstrip()[:600], flush=True)
        flush()

    if args.jobs <= 1:
        for name in rerun:
            finished(name, run_child(name, args))
    else:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(run_child, n, args): n for n in rerun}
            for fut in concurrent.futures.as_completed(futures):
                finished(futures[fut], fut.result())
    flush()
    print(f"wrote {out}.json and {out}.md", flush=True)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", choices=ZOOS, default="torchvision", help="the model zoo (default torchvision)")
    p.add_argument("--models", help="comma-separated subset of model names (any of the zoo)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per model (default 600)")
    p.add_argument("--out", default=None, help="output prefix: writes <out>.json and <out>.md "
                   "(default tools/results/zoo_sweep for torchvision, tools/results/zoo_sweep_timm for timm)")
    p.add_argument("--merge", action="store_true", help="keep the records of an earlier <out>.json: re-run the "
                   "--models named, or else run the candidates it has no record of")
    p.add_argument("--jobs", type=int, default=1, help="models run concurrently (default 1)")
    p.add_argument("--spawn", action="store_true", help="run each model in a fresh interpreter, not a forked child "
                   "of the parent (which imports torch, fxprune and the zoo once)")
    p.add_argument("--max-params", type=int, default=300_000_000, help="skip larger models (default 300M)")
    p.add_argument("--size", type=int, default=None, help="input H=W (default: torchvision 224, inception_v3 299; "
                   "timm the model's pretrained_cfg input size)")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--method", default="l1")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in each child (0: torch default)")
    p.add_argument("--rerender", action="store_true",
                   help="only rewrite <out>.md (and the failures by cause) from <out>.json")
    p.add_argument("--list-timm", type=int, metavar="PER_FAMILY", default=0,
                   help="print TIMM_MODELS recomputed with PER_FAMILY models per family (slow), and exit")
    p.add_argument("--one", metavar="NAME", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.one:
        return child_main(args)
    if args.list_timm:
        _quiet_warnings()
        for family, name, params in timm_selection(args.list_timm):
            print(f'    ("{family}", "{name}", {params}),')
        return 0
    if args.rerender:
        out = args.out or DEFAULT_OUT[args.zoo]
        with open(out + ".json") as f:
            data = json.load(f)
        data["summary"]["failures_by_cause"] = failures_by_cause(data["records"])
        data["summary"]["models_total_s"] = sum(r["total_s"] for r in data["records"]
                                                if isinstance(r.get("total_s"), (int, float)))
        write_outputs(out, data["records"], data["summary"])
        return 0
    return parent_main(args, argv)


if __name__ == "__main__":
    sys.exit(main())
