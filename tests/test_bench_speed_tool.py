"""Fast check of tools/bench_speed.py: one resnet18 record (1 repeat, no Torch-Pruning) and the writers.

Not a timing test: it only checks that the record's fields are present and positive.
"""
from __future__ import annotations

import copy
import json

import pytest

from conftest import load_tool



@pytest.fixture(scope="module")
def bench():
    yield from load_tool("bench_speed")


@pytest.fixture(scope="module")
def result(bench):
    return bench.run(["resnet18"], repeats=1, warmup=0, torch_pruning=False,
                     command="pytest tests/test_bench_speed_tool.py", log=lambda s: None)


def test_record_fields_present_and_positive(bench, result):
    (rec,) = result["records"]
    assert rec["model"] == "resnet18" and rec["repeats"] == 1
    assert rec["nodes"] > 50
    assert rec["prunable_groups"] > 0 and rec["planned_groups"] > 0
    fx = rec["fxprune"]
    for phase in (*bench.FX_PHASES, "trace_analyze_rewrite", "end_to_end"):
        assert fx[phase]["median"] > 0 and len(fx[phase]["samples"]) == 1, phase
    assert fx["trace_analyze_rewrite"]["median"] == pytest.approx(
        fx["trace"]["median"] + fx["analyze"]["median"] + fx["rewrite"]["median"])
    assert rec["analyze_us_per_node"] > 0
    assert 0 < rec["fxprune_macs_after"] < rec["macs_before"]
    assert 0 < rec["fxprune_params_after"] < rec["params_before"]
    assert "skipped" in rec["torch_pruning"]


def test_header_fields(result):
    m = result["machine"]
    assert m["cpu_count"] > 0 and m["torch_threads"] > 0 and m["torch"]
    assert result["date"] and result["command"].startswith("pytest")


def test_writers_and_markdown(bench, result, tmp_path):
    md = bench.render_markdown(result)
    assert "| resnet18 |" in md and "analysis µs per graph node" in md
    assert "Torch-Pruning column skipped" in md
    bench._atomic_write(tmp_path / "bench_speed.json", json.dumps(result))
    bench._atomic_write(tmp_path / "bench_speed.md", md)
    assert json.loads((tmp_path / "bench_speed.json").read_text())["records"][0]["model"] == "resnet18"
    assert (tmp_path / "bench_speed.md").read_text() == md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_speed.json", "bench_speed.md"]  # no temp left


def test_not_installed_note(bench, result):
    res = copy.deepcopy(result)
    res["records"][0]["torch_pruning"] = {"skipped": "torch-pruning is not installed (pip install torch-pruning)"}
    assert "skipped: torch-pruning is not installed" in bench.render_markdown(res)


def test_bad_arguments_exit_before_benchmarking(bench, tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--models", "not_a_model", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        bench.main(["--repeats", "0", "--out-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())
