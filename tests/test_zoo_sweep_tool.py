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
           "params": 10, "total_s": 1.0}
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
    data = json.loads(Path(out + ".json").read_text())
    assert [r["model"] for r in data["records"]] == [r["model"] for r in recs]
    assert data["summary"]["skipped_over_max_params"] == [{"model": "huge_net", "params": 10**9}]
    assert not [p for p in os.listdir(tmp_path / "sub") if p.startswith(".tmp_")]
