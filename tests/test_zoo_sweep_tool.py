"""Fast check of tools/zoo_sweep.py: the child on two small models, in-process, and the writers."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import load_tool



@pytest.fixture(scope="module")
def zoo():
    yield from load_tool("zoo_sweep")


@pytest.fixture(scope="module")
def records(zoo):
    return [zoo.run_one(name, size=64) for name in ("squeezenet1_1", "mobilenet_v3_small")]


def test_child_records(zoo, records):
    for rec in records:
        assert rec["status"] == "ok", rec.get("reason") or rec.get("error")
        assert rec["input"] == [1, 3, 64, 64]
        assert rec["validated"] and rec["validate_max_abs"] <= rec["validate_tolerance"]
        assert rec["macs_ok"] and rec["macs_reduction"] >= 0.30
        assert rec["macs_after"] < rec["macs_before"] and rec["params_after"] < rec["params_before"]
        assert rec["groups_checked"] > 0 and rec["units_removed_checked"] > 0
        tol = zoo.EQ_RTOL * max(1.0, rec["output_scale"])
        assert rec["mask_eq_rewrite"] and rec["mask_max_abs"] <= tol
        assert rec["zero_produce_eq_rewrite"] and rec["zero_max_abs"] <= tol
        # the checks can see an error: pruning itself moved the output well above the tolerance
        assert rec["rewrite_vs_original_max_abs"] > 10 * rec["mask_max_abs"]
        assert {"analyze", "l1", "rewrite", "validate"} <= set(rec["seconds"])
        # the traced graph and the public API with the user's own model object
        assert rec["trace_eq_model"] and rec["trace_max_abs"] <= tol
        assert rec["user_rewrite_eq"] and rec["user_mask_eq"] and rec["user_model_untouched"]
        assert rec["outcome"] == "ok" and "failures" not in rec
        json.dumps(rec)  # the record the child prints must be JSON


def test_zero_produce_detects_a_wrong_plan(zoo):
    """Zeroing the produce slices of a removed conv row must change the output (the check has teeth)."""
    import torch
    import fxprune

    m, _ = zoo.build_model("squeezenet1_1")
    x = torch.randn(1, 3, 64, 64)
    gm = fxprune.trace(m, x)
    graph = fxprune.analyze(gm)
    g = graph.prunable_groups[0]
    plan = {g.id: list(range(1, g.units))}
    with torch.no_grad():
        ref = gm(x)
        zeroed = zoo.zero_produce(gm, graph, plan)(x)
        assert zoo._max_diff(ref, zeroed) > 0
        assert zoo._max_diff(fxprune.rewrite(gm, graph, plan)(x), zeroed) <= 1e-5


def test_writers(zoo, records, tmp_path):
    bad = {"model": "fake_net", "status": "refused", "error_type": "TraceError", "error": "cannot | trace",
           "params": 10, "total_s": 1.0, "outcome": "refused",
           "failures": [{"check": "compile", "kind": "refused", "error_type": "TraceError", "error": "cannot | trace",
                         "blame": "the model's code (torch.fx cannot trace it)", "blame_ok": True}]}
    recs = records + [bad]
    summary = zoo.summarize(recs, [("huge_net", 10**9)], "python tools/zoo_sweep.py --x", 12.0, len(recs))
    assert summary["pruned"] == 2 and summary["refused"] == 1 and summary["all_checks_ok"] == 2
    out = str(tmp_path / "sub" / "zoo")
    zoo.write_outputs(out, recs, summary)
    md = Path(out + ".md").read_text()
    assert "python tools/zoo_sweep.py --x" in md.split("|")[0]
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert len(rows) == len(recs)
    for rec, row in zip(recs, rows):
        assert row.startswith(f"| {rec['model']} |")
    assert "refused: TraceError: cannot \\| trace" in rows[-1]
    causes = md.split("## Failures by cause")[1]
    assert "**refused** in `compile` (TraceError, blames the model's code" in causes and "fake_net" in causes
    assert summary["outcomes"] == {"ok": 2, "refused": 1} and summary["misblamed_refusals"] == []
    data = json.loads(Path(out + ".json").read_text())
    assert [r["model"] for r in data["records"]] == [r["model"] for r in recs]
    assert data["summary"]["skipped_over_max_params"] == [{"model": "huge_net", "params": 10**9}]
    assert not [p for p in os.listdir(tmp_path / "sub") if p.startswith(".tmp_")]


# ---------------------------------------------------------------------------- failure classification


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 -- a traceback is what the classifier reads
        return caught


def _pass_error_from(cause: BaseException) -> BaseException:
    from fxprune.errors import PassError

    try:
        try:
            raise cause
        except BaseException as inner:  # noqa: BLE001
            raise PassError("pass 'rewrite' failed: boom") from inner
    except PassError as caught:
        return caught


def test_classify_named_refusals_and_their_blame(zoo):
    from fxprune.errors import InputError, NonFiniteOutputError, RewriteError, TraceError

    wrongly = zoo.classify_error("compile", _raised(InputError("[pass rewrite] example inputs do not fit")))
    assert wrongly["kind"] == "refused" and not wrongly["blame_ok"] and wrongly["stage"] == "rewrite"
    assert "inputs" in wrongly["blame"]
    rule = zoo.classify_error("compile", _raised(RewriteError("after rewrite, %conv_3 : [num_users=1] = ...")))
    assert rule["kind"] == "refused" and rule["blame_ok"] and rule["node"] == "conv_3"
    assert rule["blame"].startswith("fxprune")
    assert zoo.classify_error("compile", _raised(TraceError("cannot trace")))["blame_ok"]
    nonfinite = NonFiniteOutputError("the model's output 0 has 3 NaN")
    assert zoo.classify_error("compile", _raised(nonfinite), outputs_finite=False)["blame_ok"]
    assert not zoo.classify_error("compile", _raised(nonfinite), outputs_finite=True)["blame_ok"]


def test_classify_raw_exceptions_as_crashes(zoo):
    crash = zoo.classify_error("checks", _raised(KeyError("conv1.weight")))
    assert crash["kind"] == "crash" and not crash["blame_ok"] and crash["error_type"] == "KeyError"
    wrapped = zoo.classify_error("compile", _pass_error_from(ValueError("bad shape")))
    assert wrapped["kind"] == "crash" and wrapped["cause"] == "ValueError: bad shape"
    assert wrapped["raised_at"].startswith("tests/test_zoo_sweep_tool.py:")


def test_classify_names_the_raising_fxprune_function(zoo):
    import torch
    from torch import nn

    import fxprune

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    graph = fxprune.analyze(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(fxprune.PlanError) as info:
        fxprune.rewrite(graph.gm, graph, {"no-such-group": [0]})
    failure = zoo.classify_error("rewrite(gm, graph, plan)", info.value)
    assert failure["kind"] == "refused" and not failure["blame_ok"]  # the sweep's plans are fxprune's own
    assert failure["where"].startswith("fxprune/") and failure["raised_at"]


def test_outcome_is_the_worst_failure(zoo):
    refused = {"kind": "refused", "blame_ok": True}
    misblamed = {"kind": "refused", "blame_ok": False}
    assert zoo.outcome([]) == "ok"
    assert zoo.outcome([refused]) == "refused"
    assert zoo.outcome([refused, misblamed]) == "misblamed"
    assert zoo.outcome([misblamed, {"kind": "crash"}]) == "crash"
    assert zoo.outcome([{"kind": "crash"}, {"kind": "wrong"}]) == "silently-wrong"


def test_failures_grouped_by_cause(zoo):
    def rec(model, error, node):
        return {"model": model, "failures": [{"kind": "refused", "check": "compile", "error_type": "RewriteError",
                                              "error": error, "blame": "fxprune", "blame_ok": True, "node": node,
                                              "where": "fxprune/rewrite.py:1 in f"}]}

    records = [rec("a", "[pass rewrite] %view_3 has shape (1, 24), predicted (1, 12)", "view_3"),
               rec("b", "[pass rewrite] %view_9 has shape (2, 48), predicted (2, 7)", "view_9"),
               rec("c", "something else entirely", None)]
    causes = zoo.failures_by_cause(records)
    assert [c["models"] for c in causes] == [["a", "b"], ["c"]]
    assert causes[0]["nodes"] == ["a: view_3", "b: view_9"] and causes[0]["where"] == ["fxprune/rewrite.py:1 in f"]


def test_minimal_failing_groups(zoo):
    groups = [f"g{i}" for i in range(11)]
    assert zoo.minimal_failing(lambda ids: "g5" in ids, groups) == ["g5"]
    assert zoo.minimal_failing(lambda ids: True, ["only"]) == ["only"]
    # a failure that needs two groups from different halves is reduced to those two
    assert zoo.minimal_failing(lambda ids: "g0" in ids and "g9" in ids, groups) == ["g0", "g9"]
    # out of budget: the smallest failing set found so far
    calls = []
    found = zoo.minimal_failing(lambda ids: calls.append(ids) or ("g0" in ids and "g9" in ids), groups, budget=3)
    assert len(calls) == 3 and {"g0", "g9"} <= set(found)


def test_first_divergence_points_at_the_wrong_node(zoo):
    """A reference that differs from the rewrite only after the second conv is localised there."""
    import torch
    from torch import nn

    import fxprune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    x = torch.randn(1, 3, 12, 12)
    res = fxprune.compile(model, x, sparsity=0.5, validate=False)
    plan = dict(res.plan)
    tol = 1e-5
    assert zoo.first_divergence(res, x, plan, zoo.zero_produce(res.graph.gm, res.graph, plan), tol) is None
    broken = zoo.zero_produce(res.graph.gm, res.graph, plan)
    with torch.no_grad():
        broken.get_submodule("2").bias.add_(1.0)  # the second conv is wrong in the reference
    found = zoo.first_divergence(res, x, plan, broken, tol)
    assert found["node"] == "_2" and found["op"] == "Conv2d" and found["max_abs"] > 0.5
    assert found["inputs"] == ["_1:ReLU"]


def test_user_api_check_sees_a_modified_model(zoo, monkeypatch):
    """If the public API wrote into the user's model, the check says so (the check has teeth)."""
    import torch
    from torch import nn

    import fxprune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    x = torch.randn(1, 3, 10, 10)
    res = fxprune.compile(model, x, sparsity=0.5, validate=False)
    _, _, sub_plan = zoo.plan_parts(res)
    out_rw = fxprune.rewrite(res.graph.gm, res.graph, sub_plan)(x)
    honest: dict = {}
    zoo.user_api_checks(honest, model, res, x, sub_plan, out_rw, True)
    assert honest["user_rewrite_eq"] and honest["user_mask_eq"] and honest["user_model_untouched"]
    real_mask = fxprune.mask

    def meddling_mask(m, graph, plan, **kw):
        with torch.no_grad():
            m[0].weight.mul_(2.0)
        return real_mask(m, graph, plan, **kw)

    monkeypatch.setattr(fxprune, "mask", meddling_mask)
    bad: dict = {}
    zoo.user_api_checks(bad, model, res, x, sub_plan, out_rw, True)
    assert not bad["user_model_untouched"] and not bad["user_mask_eq"]
    assert {f["check"] for f in bad["failures"]} == {"mask(model, graph, sub_plan)==rewrite",
                                                     "the user's model is untouched"}
    assert all(f["kind"] == "wrong" for f in bad["failures"])


# ---------------------------------------------------------------------------- timm list and --merge


def test_timm_models_are_one_small_model_per_family(zoo):
    import timm

    families = [family for family, _, _ in zoo.TIMM_MODELS]
    assert len(families) == len(set(families)) >= 80 and families == sorted(families)
    for family, name, params in zoo.TIMM_MODELS:
        assert name in timm.list_models(module=family) and not name.startswith("test_")
        assert 0 < params <= zoo.TIMM_MAX_PARAMS
    kept, skipped = zoo.timm_candidates(5_000_000)
    assert kept and skipped and all(p <= 5_000_000 for _, p in kept) and all(p > 5_000_000 for _, p in skipped)


def test_merge_runs_only_the_missing_models(zoo, monkeypatch, tmp_path):
    runs: list[str] = []

    def fake_child(name, args):
        runs.append(name)
        return {"model": name, "status": "refused", "outcome": "refused", "error_type": "TraceError",
                "error": "x", "total_s": 0.1}

    monkeypatch.setattr(zoo, "run_child", fake_child)
    monkeypatch.setattr(zoo, "candidate_models", lambda cap, only, z: ([(n, 1) for n in only or ("a", "b", "c")], []))
    monkeypatch.setattr(zoo, "summarize", lambda recs, *a: {"command": "cmd", "n": len(recs)})
    monkeypatch.setattr(zoo, "markdown", lambda recs, summary: "md")
    out = str(tmp_path / "zs")
    zoo.main(["--zoo", "timm", "--spawn", "--models", "a,b", "--out", out])
    assert runs == ["a", "b"]
    zoo.main(["--zoo", "timm", "--spawn", "--merge", "--out", out])
    assert runs == ["a", "b", "c"]
    zoo.main(["--zoo", "timm", "--spawn", "--merge", "--models", "a", "--out", out])
    assert runs == ["a", "b", "c", "a"]
    data = json.loads(Path(out + ".json").read_text())
    assert [r["model"] for r in data["records"]] == ["a", "b", "c"]
