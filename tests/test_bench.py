"""Fast check of tools/bench.py: one tiny in-process run of the harness and its writers."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import load_tool



@pytest.fixture(scope="module")
def bench():
    yield from load_tool("bench")


def _run(bench, argv):
    import torch

    threads = torch.get_num_threads()
    try:
        return bench.run(bench.build_parser().parse_args(argv), argv, log=None)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def result(bench, tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("bench") / "bench_l1_lenet5"
    argv = ["--model", "lenet5", "--method", "l1", "--sparsities", "0.5", "--seeds", "0",
            "--finetune-epochs", "0,1", "--data", "bundled", "--train-subset", "64",
            "--latency-runs", "2", "--out", str(out)]
    return _run(bench, argv), out


def test_files_written(result):
    res, out = result
    for ext in (".json", ".md", ".png"):
        path = Path(str(out) + ext)
        assert path.is_file() and path.stat().st_size > 0, path
    assert Path(str(out) + ".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.parent.glob(".tmp-*"))  # atomic writes leave no temporaries
    on_disk = json.loads(Path(str(out) + ".json").read_text())
    assert on_disk["runs"] == json.loads(json.dumps(res["runs"]))
    assert on_disk["command"].startswith("python ") and "--method l1" in on_disk["command"]
    assert on_disk["machine"]["cpu_count"] >= 1 and on_disk["machine"]["torch"]
    assert on_disk["data"]["eval_images"] == 500 and "bundled" in on_disk["data"]["eval"]
    md = Path(str(out) + ".md").read_text()
    assert on_disk["command"] in md and "bundled" in md and "| 0.5 |" in md
    assert "acc no FT" in md and "acc FT 1 epoch" in md and "measured speedup" in md


def test_record_fields(result):
    res, _ = result
    (rec,) = res["runs"]
    assert rec["sparsity"] == 0.5 and rec["seed"] == 0
    for key in ("acc_before", "acc_pruned"):
        assert 0.0 <= rec[key] <= 1.0
    assert set(rec["acc_finetuned"]) == {"1"} and 0.0 <= rec["acc_finetuned"]["1"] <= 1.0
    assert rec["finetune_seconds"]["1"] > 0 and rec["finetune_flops"]["1"] > 0
    assert rec["macs_after"] < rec["macs_before"] and rec["params_after"] < rec["params_before"]
    assert 0 < rec["macs_kept"] < 1 and 0 < rec["params_kept"] < 1
    assert rec["latency_before_s"] > 0 and rec["latency_after_s"] > 0
    assert rec["speedup"] == pytest.approx(rec["latency_before_s"] / rec["latency_after_s"])
    assert {"trace", "analyze", "l1", "rewrite"} <= set(rec["pass_seconds"])
    assert rec["prune_seconds"] == pytest.approx(sum(rec["pass_seconds"].values()))
    assert rec["validation"]["ok"]
    assert rec["train_flops"] is None  # l1 does not train
    (row,) = res["summary"]
    assert row["accuracy"]["0"]["mean"] == rec["acc_pruned"] and row["accuracy"]["0"]["std"] == 0.0


def test_latency_only_and_data_driven(bench, tmp_path):
    """--no-accuracy needs no data or checkpoint; taylor gets calibration data and counts FLOPs."""
    out = tmp_path / "lat"
    res = _run(bench, ["--model", "lenet5", "--method", "taylor", "--option", "scope=global",
                       "--calibration", "32", "--data", "bundled", "--no-accuracy", "--latency-runs", "2",
                       "--no-plot", "--out", str(out)])
    (rec,) = res["runs"]
    assert "acc_pruned" not in rec and rec["speedup"] > 0 and rec["train_flops"] > 0
    assert rec["options"]["scope"] == "global"
    md = Path(str(out) + ".md").read_text()
    assert "MACs speedup" in md and "acc" not in md.split("| sparsity")[1].split("\n")[0]
    assert not Path(str(out) + ".png").exists()


def test_bad_arguments(bench, capsys):
    assert bench.main(["--model", "lenet5", "--method", "l1", "--option", "nope=1", "--no-plot"]) == 2
    assert "no option 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        bench.main(["--model", "lenet5", "--method", "l1", "--option", "scope"])
    assert exc.value.code == 2
    assert bench.method_options("l1", [("ignore", "fc1,fc3"), ("round_to", "2")]) == {
        "ignore": ("fc1", "fc3"), "round_to": 2}


def test_missing_matplotlib_is_a_clear_error(bench, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(bench.BenchError, match=r'pip install -e "\.\[bench\]"'):
        bench.require_matplotlib()
