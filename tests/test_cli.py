"""fxprune-trace (fxprune/cli/, tools/trace): the issue's scenario on a small scale, bad inputs, help.

Most runs call ``fxprune.cli.main(argv)`` in-process; ``tools/trace`` runs once as a
subprocess, and a second subprocess reloads the ``.fxp`` with only torchvision as model code.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision

import fxprune
import fxprune.models as zoo
from fxprune import cli
from cli_run import run

REPO = Path(__file__).resolve().parents[1]
SHAPE = "1,3,64,64"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


pytestmark = pytest.mark.usefixtures("one_thread")


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """torchvision resnet18 state_dict -> ``prune --out x.fxp --onnx x.onnx`` (run once)."""
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    for m in model.modules():  # non-trivial BN statistics, so that a wrong reload shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), d / "r18.pt")
    (d / "out").mkdir()
    saved = []

    def spy(result, path, **kwargs):  # the object the CLI saved, for the reference output
        saved.append(result)
        return real_save(result, path, **kwargs)

    real_save = fxprune.save
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fxprune, "save", spy)
        code, out, err = run(["prune", d / "r18.pt", "--model", "resnet18", "--input-shape", SHAPE,
                              "--method", "l1", "--sparsity", "0.5", "--out", d / "out" / "x.fxp",
                              "--onnx", d / "out" / "x.onnx", "--latency-runs", "2",
                              "--dump-passes", d / "dumps" / "new"])
    assert code == 0, err
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = saved[-1].module.eval()(x)
    torch.save({"x": x, "y": y}, d / "ref.pt")
    return {"dir": d, "out": out, "err": err, "x": x, "y": y, "result": saved[-1]}


# ----------------------------------------------------------------------------- the scenario


def test_groups_prints_the_channel_groups(scenario):
    d = scenario["dir"]
    code, out, err = run(["groups", d / "r18.pt", "--model", "resnet18", "--input-shape", SHAPE])
    assert code == 0, err
    assert "ChannelGraph: 14 groups, 12 prunable" in out
    assert "layer1.0.conv1" in out and "why: fc: model output" in out
    assert "params: 11.69M" in out and "MACs: 148.56M" in out


def test_groups_through_the_export_front_end_finds_the_same_groups(scenario):
    d = scenario["dir"]
    code, out, err = run(["groups", d / "r18.pt", "--model", "resnet18", "--input-shape", SHAPE, "--capture", "export"])
    assert code == 0, err
    assert "ChannelGraph: 14 groups, 12 prunable" in out
    code, out, err = run(["groups", d / "r18.pt", "--model", "resnet18", "--input-shape", SHAPE, "--capture", "jit"])
    assert code == 2 and "--capture" in err


def test_prune_writes_both_files_and_prints_the_table(scenario):
    d, out = scenario["dir"], scenario["out"]
    assert files_under(d / "out") == ["x.fxp", "x.onnx"]  # no temporary files left
    for row in ("params", "MACs", "onnxruntime latency (median of 2)", "max |onnxruntime - torch|"):
        assert row in out
    assert "11.69M" in out and "3.06M" in out and " ms" in out
    assert scenario["err"] == ""  # a state_dict needs no unpickling warning
    payload = fxprune.io.read(d / "out" / "x.fxp")
    assert payload["source"] == {"kind": "torchvision.models", "name": "resnet18", "kwargs": {}}


def test_dump_passes_writes_one_file_per_pass(scenario):
    dumps = scenario["dir"] / "dumps" / "new"  # did not exist: created
    assert files_under(dumps) == ["01_analyze.py", "02_l1.py", "03_rewrite.py", "04_validate.py"]
    before, after = (dumps / "02_l1.py").read_text(), (dumps / "03_rewrite.py").read_text()
    assert "def forward" in before and "def forward" in after


@pytest.mark.slow
def test_fxp_reloads_in_a_new_process_with_only_torchvision(scenario):
    d = scenario["dir"]
    code = (
        "import sys, torch, fxprune\n"
        f"gm = fxprune.load({str(d / 'out' / 'x.fxp')!r})\n"
        f"ref = torch.load({str(d / 'ref.pt')!r})\n"
        "with torch.no_grad():\n"
        "    err = float((gm(ref['x']) - ref['y']).abs().max())\n"
        "assert 'torchvision' in sys.modules and 'fxprune.models' not in sys.modules\n"
        "print(err)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip().splitlines()[-1]) <= 1e-5


def test_onnx_file_runs_in_onnxruntime_with_the_same_outputs(scenario):
    d, x, y = scenario["dir"], scenario["x"], scenario["y"]
    session = ort.InferenceSession(str(d / "out" / "x.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for i in range(len(x)):  # exported with batch 1
        (got,) = session.run(None, {name: x[i:i + 1].numpy()})
        assert np.abs(got - y[i:i + 1].numpy()).max() <= 1e-4 * max(1.0, float(y.abs().max()))


@pytest.mark.slow
def test_tools_trace_script_validates_fxp_and_onnx(scenario):
    d = scenario["dir"]
    proc = subprocess.run([sys.executable, "tools/trace", "validate", d / "out" / "x.fxp", "--onnx",
                           d / "out" / "x.onnx"], cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "x.onnx vs reloaded model: ok" in proc.stdout and "onnx ok" in proc.stdout
    assert proc.stdout.strip().endswith("ok")
    assert os.access(REPO / "tools" / "trace", os.X_OK)
    assert (REPO / "tools" / "trace").read_text().startswith("#!/usr/bin/env python3\n")


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_files(scenario):
    d = scenario["dir"]
    raw = (d / "r18.pt").read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (d / "corrupt.pt").write_bytes(b"this is not a checkpoint\n" * 10)
    return d


def _bad_cases(d: Path, out: Path) -> dict[str, list]:
    sd = d / "r18.pt"
    prune = ["prune", "--input-shape", SHAPE, "--latency-runs", "0"]
    return {
        "missing file": [*prune, d / "missing.pt", "--model", "resnet18", "--out", out / "x.fxp"],
        "corrupt checkpoint": [*prune, d / "corrupt.pt", "--model", "resnet18", "--out", out / "x.fxp"],
        "truncated checkpoint": [*prune, d / "truncated.pt", "--model", "resnet18", "--out", out / "x.fxp"],
        "state_dict without --model": [*prune, sd, "--out", out / "x.fxp"],
        "unknown model": [*prune, sd, "--model", "resnet1800", "--out", out / "x.fxp"],
        "state_dict of another model": [*prune, sd, "--model", "resnet34", "--out", out / "x.fxp"],
        "shape does not fit": ["prune", sd, "--model", "resnet18", "--input-shape", "1,1,64,64",
                               "--out", out / "x.fxp", "--onnx", out / "x.onnx"],
        "malformed shape": ["prune", sd, "--model", "resnet18", "--input-shape", "1,3,64,x64", "--out", out / "x.fxp"],
        "unknown method": [*prune, sd, "--model", "resnet18", "--method", "magic", "--out", out / "x.fxp"],
        "sparsity 1.5": [*prune, sd, "--model", "resnet18", "--sparsity", "1.5", "--out", out / "x.fxp"],
        "taylor without data": [*prune, sd, "--model", "resnet18", "--method", "taylor", "--out", out / "x.fxp"],
        "--out directory missing": [*prune, sd, "--model", "resnet18", "--out", out / "nowhere" / "x.fxp"],
        "--onnx directory missing": [*prune, sd, "--model", "resnet18", "--out", out / "x.fxp",
                                     "--onnx", out / "nowhere" / "x.onnx"],
        "missing --out": [*prune, sd, "--model", "resnet18"],
        "groups: state_dict without --model": ["groups", sd],
        "groups: shape does not fit": ["groups", sd, "--model", "resnet18", "--input-shape", "1,3,64"],
        "validate: not a .fxp": ["validate", sd],
        "validate: missing onnx": ["validate", d / "out" / "x.fxp", "--onnx", out / "missing.onnx"],
        "no command": [],
    }


BAD = list(_bad_cases(Path("d"), Path("o")))


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(bad_files, tmp_path, case):
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, stderr = run(_bad_cases(bad_files, out)[case])
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("fxprune-trace: error: ") and "; " in lines[0]
    assert "Traceback" not in stderr and stdout == ""
    assert files_under(tmp_path) == ["out"]


def test_bad_input_messages_say_what_is_wrong(bad_files, tmp_path):
    cases = _bad_cases(bad_files, tmp_path)
    expect = {
        "missing file": "no such file", "corrupt checkpoint": "corrupt or truncated",
        "truncated checkpoint": "corrupt or truncated", "state_dict without --model": "pass --model",
        "unknown model": "unknown model 'resnet1800'", "shape does not fit": "does not fit",
        "unknown method": "invalid choice: 'magic'", "sparsity 1.5": "must be in [0, 1), got 1.5",
        "--out directory missing": "does not exist", "taylor without data": "--data",
    }
    for case, words in expect.items():
        assert words in run(cases[case])[2], case


def test_internal_failures_exit_1_with_one_line(bad_files, tmp_path, monkeypatch):
    sd = tmp_path / "lenet.pt"
    torch.save(zoo.get("lenet5", in_channels=1).state_dict(), sd)
    argv = ["prune", sd, "--model", "lenet5", "--in-channels", "1", "--out", tmp_path / "x.fxp"]

    def pass_error(*args, **kwargs):
        raise fxprune.PassError("pass 'rewrite' failed after analyze, l1: RuntimeError: boom")

    monkeypatch.setattr(fxprune, "compile", pass_error)
    code, out, err = run(argv)
    assert code == 1 and len(err.splitlines()) == 1 and "pass 'rewrite' failed" in err, err

    def crash(*args, **kwargs):
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setattr(fxprune, "compile", crash)
    code, out, err = run(argv)
    assert code == 1 and len(err.splitlines()) == 1 and "RuntimeError: kaboom" in err, err
    assert "Traceback" not in err and not (tmp_path / "x.fxp").exists()
    with pytest.raises(RuntimeError, match="kaboom"):
        run([*argv, "--debug"])


# ----------------------------------------------------------------------------- other inputs


def test_pickled_module_train_checkpoint_taylor_and_reprune(tmp_path):
    torch.manual_seed(0)
    model = zoo.get("lenet5", in_channels=1).eval()
    torch.save(model, tmp_path / "module.pt")
    ckpt = {"format": 1, "model": {"name": "lenet5", "kwargs": {"in_channels": 1}},
            "state_dict": model.state_dict(), "meta": {}}
    torch.save(ckpt, tmp_path / "train.pt")
    (tmp_path / "batches").mkdir()
    for i in range(2):
        torch.save((torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))), tmp_path / "batches" / f"{i}.pt")

    # (d) a pickled module: refused (no code run) unless --no-weights-only, then one warning line and
    # the default input 1x1x28x28 from the zoo record
    argv = ["prune", tmp_path / "module.pt", "--out", tmp_path / "a.fxp", "--latency-runs", "0"]
    code, out, err = run(argv)
    assert code == 2 and "--no-weights-only" in err and not (tmp_path / "a.fxp").exists(), err
    code, out, err = run([*argv, "--no-weights-only"])
    assert code == 0, err
    assert err.count("\n") == 1 and "warning" in err and "runs code" in err
    assert "1x1x28x28" in out

    # (b) a tools/train.py checkpoint, with taylor on a folder of batches
    code, out, err = run(["prune", tmp_path / "train.pt", "--method", "taylor", "--data", tmp_path / "batches",
                          "--out", tmp_path / "b.fxp", "--latency-runs", "1"])
    assert code == 0 and err == "", err

    # (c) a .fxp pruned again stays loadable by fxprune.load
    code, out, err = run(["prune", tmp_path / "b.fxp", "--out", tmp_path / "c.fxp", "--latency-runs", "0"])
    assert code == 0, err
    twice = fxprune.load(tmp_path / "c.fxp")
    once = fxprune.load(tmp_path / "b.fxp")
    assert sum(p.numel() for p in twice.parameters()) < sum(p.numel() for p in once.parameters())
    code, out, err = run(["validate", tmp_path / "c.fxp"])
    assert code == 0 and out.strip().endswith("ok"), err
    code, out, err = run(["groups", tmp_path / "c.fxp"])
    assert code == 0 and "ChannelGraph" in out, err


# ----------------------------------------------------------------------------- help


def _subparsers():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return parser, action.choices


@pytest.mark.parametrize("command", ["groups", "prune", "validate"])
def test_help_lists_every_option_with_its_default(command):
    code, out, _ = run([command, "--help"])
    assert code == 0
    options = [a for a in _subparsers()[1][command]._actions if a.option_strings and a.dest != "help"]
    text = " ".join(out.split())
    for action in options:
        assert action.option_strings[-1] in out, action.option_strings
    assert text.count("(default: ") + text.count("(required)") == len(options)


def test_main_help_lists_every_command_option():
    code, out, _ = run(["--help"])
    assert code == 0
    for command, sub in _subparsers()[1].items():
        assert f"fxprune-trace {command}" in out
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.option_strings[-1] in out
    assert "default" in out
