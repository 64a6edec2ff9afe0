"""itpcc: gates on coupled channels, the regulariser, exact folding, the gamma' rule, compile/CLI, bad input."""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import fxprune
from fxprune.training import data
from fxprune.models import get
from fxprune.passes import ITPCC, Analyze, Rewrite, Validate
from fxprune.passes.itpcc.control import GammaController, Target, target_threshold
from fxprune.passes.itpcc.gates import ConsumerGate
from conftest import assert_same_state, randomize_bn, state_snapshot


pytestmark = pytest.mark.usefixtures("one_thread")


class Stage(nn.Module):
    """A residual stage (stem, c2, c3 write into it; c1, c3, fc read it) and one inner group (c1)."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.bn1 = nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.bn2 = nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3, self.bn3 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.bn2(self.c2(F.relu(self.bn1(self.c1(x))))))
        x = F.relu(x + self.bn3(self.c3(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 2), 1))


X = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(1))


def batches(n: int = 4, size: int = 8, shape=(1, 12, 12)):
    gen = torch.Generator().manual_seed(2)
    return [(torch.randn(size, *shape, generator=gen), torch.randint(0, 10, (size,), generator=gen)) for _ in range(n)]


def randomize_gates(prepared, low=-3.0, high=2.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for gs in prepared.gates.values():
        mu = torch.empty(gs.units).uniform_(0.3, 1.7, generator=gen) * torch.where(
            torch.rand(gs.units, generator=gen) < 0.2, -1.0, 1.0)
        log_alpha = torch.empty(gs.units).uniform_(low, high, generator=gen)
        gs.set_(mu=mu, log_sigma2=log_alpha + torch.log(mu ** 2))


def max_diff(a, b):
    return (a - b).abs().max().item(), max(1.0, b.abs().max().item())


# ----------------------------------------------------------------------------- gates and regulariser


def test_regulariser_equals_eq20_on_hand_set_gates():
    prepared = fxprune.prepare(Stage().eval(), X, "itpcc", gamma=0.7)
    assert set(prepared.gates) == {"stem", "c1"}
    scs = prepared.scs
    assert scs["stem"].tolist() == [3.0] * 8 and scs["c1"].tolist() == [1.0] * 6  # filters each unit spans
    gen = torch.Generator().manual_seed(3)
    expected = 0.0
    for gid, gs in prepared.gates.items():
        mu = torch.randn(gs.units, generator=gen)
        log_sigma2 = torch.empty(gs.units).uniform_(-9, 2, generator=gen)
        gs.set_(mu=mu, log_sigma2=log_sigma2)
        assert torch.allclose(gs.mu, mu) and torch.allclose(gs.log_sigma2, log_sigma2, atol=1e-5)
        expected += float((torch.as_tensor(scs[gid]) * torch.log1p(mu ** 2 / log_sigma2.exp())).sum())
    assert prepared.regularizer(num_batches=5).item() == pytest.approx(0.7 / 5 * expected, rel=1e-5)
    assert prepared.regularizer().item() == pytest.approx(0.7 * expected, rel=1e-5)  # N_b = 1 before fit


def test_a_residual_stage_has_one_gate_per_unit_shared_by_its_readers():
    model = get("resnet20", in_channels=1).eval()
    prepared = fxprune.prepare(model, torch.randn(2, 1, 28, 28), "itpcc")
    stage = prepared.gates["conv1"]  # stem + layer1: 16 channels, 4 convs write, 5 read
    assert stage.mu.shape == (16,) and stage.log_alpha.shape == (16,) and set(stage.scs.tolist()) == {4.0}
    readers = [n for n in prepared.module.graph.nodes
               if n.op == "call_module" and isinstance(prepared.module.get_submodule(n.target), ConsumerGate)
               and n.args[1].target == "fxprune_itpcc.conv1"]
    assert len(readers) == 5
    gate_params = sum(p.numel() for gs in prepared.gates.values() for p in gs.parameters())
    assert gate_params == 2 * 448
    weights = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in prepared.module.parameters()) == weights + gate_params
    assert not prepared.ungated


def test_gated_eval_equals_finalized_model_and_onnxruntime(tmp_path):
    model = randomize_bn(Stage()).eval()
    before = state_snapshot(model)
    prepared = fxprune.prepare(model, X, "itpcc")
    randomize_gates(prepared)
    result = prepared.finalize()
    with torch.no_grad():
        gated, pruned = prepared.module.eval()(X), result.module.eval()(X)
    diff, scale = max_diff(pruned, gated)
    assert diff <= 1e-5 * scale, diff
    assert "onnx ok" in result.report.validation
    assert result.report.params_after < result.report.params_before
    removed = {gid: gs.units - len(result.plan[gid]) for gid, gs in prepared.gates.items()}
    assert all(removed.values()), removed
    fxprune.save(result, tmp_path / "stage.fxp")
    with torch.no_grad():
        reloaded = fxprune.load(tmp_path / "stage.fxp", model=Stage())(X)
    assert torch.allclose(reloaded, pruned, atol=1e-6)
    assert_same_state(before, model)


def test_gated_eval_equals_finalized_resnet20():
    model = randomize_bn(get("resnet20", in_channels=1)).eval()
    x = torch.randn(2, 1, 28, 28)
    prepared = fxprune.prepare(model, x, "itpcc", round_to=4)
    randomize_gates(prepared, seed=1)
    result = prepared.finalize(-0.5)
    assert all(len(kept) % 4 == 0 for kept in result.plan.values())
    with torch.no_grad():
        diff, scale = max_diff(result.module.eval()(x), prepared.module.eval()(x))
    assert diff <= 1e-5 * scale, diff
    assert result.report.details["threshold"] == -0.5


def test_training_mode_samples_one_noise_per_sample_and_unit():
    prepared = fxprune.prepare(Stage().eval(), X, "itpcc", init_log_sigma2=0.0)
    gs = prepared.gates["stem"]
    gs.train()
    z = gs(X)
    assert z.shape == (4, 8) and not torch.allclose(z[0], z[1])
    gs.eval()
    assert gs(X).shape == (1, 8)


def test_finalize_meets_a_target_exactly_when_asked():
    model = get("resnet20", in_channels=1).eval()
    prepared = fxprune.prepare(model, torch.randn(2, 1, 28, 28), "itpcc", target_macs_ratio=0.5)
    randomize_gates(prepared, low=-2, high=2, seed=2)
    result = prepared.finalize("target", validate=False)
    reached = result.report.macs_ratio
    assert 0.49 <= reached <= 0.5, reached  # as close below as one unit allows
    assert result.report.details["reached"]["macs_ratio"] == reached
    assert not [w for w in result.report.warnings if "target" in w]


def test_target_threshold_is_the_largest_meeting_the_target():
    values = np.array([-3.0, -1.0, 0.5, 2.0])
    cost = lambda t: float((values < t).sum()) / 4  # noqa: E731
    t = target_threshold(values, cost, 0.5)
    assert cost(t) == 0.5 and cost(t + 1.0) > 0.5
    assert cost(target_threshold(values, cost, 0.1)) == 0.0  # nothing fits: the smallest


def test_gamma_controller_waits_then_raises_lowers_and_anticipates():
    cost = lambda las: float(np.mean(las["g"] < 0))  # noqa: E731  kept fraction
    ctl = GammaController(Target("units", 0.5), gamma=1.0)
    assert ctl.step({"g": np.full(4, -9.0)}, {"g": 0.0}, cost, 0) == 1.0  # nothing within reach: no windup
    up = ctl.step({"g": np.full(4, -1.0)}, {"g": 0.0}, cost, 0)  # all kept, target half: prune more
    assert up > 1.0
    assert ctl.step({"g": np.full(4, 3.0)}, {"g": 0.0}, cost, 0) < up  # all gone: prune less
    ahead = GammaController(Target("units", 0.5), gamma=1.0)
    for la in (-3.0, -2.5, -2.0, -1.5):  # all still kept, but crossing within the horizon
        gamma = ahead.step({"g": np.full(4, la)}, {"g": 0.0}, cost, 10)
    assert gamma < 1.0


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
def test_training_with_a_macs_target_ends_within_5_percent():
    """resnet20 (random init) on the 500 bundled images, 120 steps, defaults, threshold 0."""
    torch.manual_seed(0)
    ds = data.bundled()
    loader = DataLoader(ds, batch_size=50, shuffle=True, generator=torch.Generator().manual_seed(0))
    prepared = fxprune.prepare(get("resnet20", in_channels=1), ds.tensors[0][:2], "itpcc", target_macs_ratio=0.5)
    history = prepared.fit(fxprune.TrainConfig(loader, epochs=12, lr=0.05, progress=False))
    result = prepared.finalize(validate=False)
    assert result.report.details["threshold"] == 0.0
    assert abs(result.report.macs_ratio - 0.5) <= 0.05 * 0.5, result.report.macs_ratio
    assert len(history) == 12 and {"loss", "reg", "gamma", "units_kept", "macs_ratio"} <= set(history[-1])
    assert history[-1]["macs_ratio"] == pytest.approx(result.report.macs_ratio, abs=1e-6)


def test_compile_trains_finalizes_finetunes_and_validates():
    model = randomize_bn(Stage()).train()
    before = state_snapshot(model)
    calls = []
    config = fxprune.TrainConfig(batches(), epochs=2, finetune_epochs=1, lr=0.02, progress=False,
                                 eval_loader=batches(1))
    result = fxprune.compile(model, X, method="itpcc", target_params_ratio=0.7, train=config,
                             callback=lambda name, res, s: calls.append(name))
    assert_same_state(before, model)
    assert model.training and result.module.training
    rep = result.report
    assert "onnx ok" in rep.validation and rep.details["target"] == {"measure": "params", "ratio": 0.7}
    assert [r["phase"] for r in rep.details["history"]] == ["prune", "prune"]
    assert [r["phase"] for r in rep.details["finetune"]] == ["finetune"] and "eval_acc" in rep.details["finetune"][0]
    assert {"trace", "analyze", "itpcc", "rewrite", "finetune", "validate"} <= set(rep.seconds)
    assert calls == ["analyze", "itpcc", "rewrite", "finetune", "validate"]
    assert "itpcc: target params 70.0%" in str(rep)


def test_compile_with_data_batches_and_a_pipeline_pass():
    model = Stage().eval()
    result = fxprune.compile(model, X, "itpcc", sparsity=0.25, data=batches(2), train={"epochs": 1},
                             progress=False, validate=False)
    assert result.report.details["target"] == {"measure": "units", "ratio": 0.75}
    gm = fxprune.trace(model, X)
    opts = ITPCC(data=batches(2), progress=False, train={"epochs": 1})
    out = fxprune.Pipeline([Analyze(), opts, Rewrite(), Validate()])(gm).graph_module
    assert "onnx ok" in str(out.meta["fxprune"].validation)


def test_paper_mode_keeps_gamma_fixed_and_gates_in_the_weights_optimizer():
    prepared = fxprune.prepare(Stage().eval(), X, "itpcc", adapt_gamma=False, gamma=0.3, gate_optimizer="same")
    groups = prepared.parameter_groups(lr_gates=2e-3)
    assert groups[1]["lr"] == 2e-3 and groups[1]["fixed_lr"] and groups[1]["weight_decay"] == 0.0
    prepared.fit(fxprune.TrainConfig(batches(2), epochs=2, lr=0.05, progress=False))
    assert prepared.gamma == 0.3
    result = prepared.finalize(validate=False)
    assert not [w for w in result.report.warnings if "target" in w]


def test_groups_that_cannot_be_gated_stay_whole_and_are_reported():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    prepared = fxprune.prepare(model, torch.randn(2, 4), "itpcc")
    assert list(prepared.gates) == ["2"] and "normalisation" in prepared.ungated["0"]
    randomize_gates(prepared)
    result = prepared.finalize(validate=False)
    assert any("group 0 stays whole" in w for w in result.report.warnings)
    assert "0" not in result.plan


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_error_and_the_model_is_unchanged():
    model = Stage().eval()
    before = state_snapshot(model)
    bad = [
        (dict(bogus=1), "bogus"), (dict(lr_gates=0), "lr_gates"), (dict(lr_gates=-1.0), "lr_gates"),
        (dict(gamma=0), "gamma"), (dict(gamma=-2.0), "gamma"), (dict(target_macs_ratio=1.5), "ratio"),
        (dict(target_macs_ratio=0.5, target_params_ratio=0.5), "at most one"), (dict(threshold="x"), "threshold"),
    ]
    for options, words in bad:
        with pytest.raises(fxprune.InputError, match=words):
            fxprune.prepare(model, X, "itpcc", **options)
    with pytest.raises(fxprune.InputError, match="train"):
        fxprune.compile(model, X, "itpcc")
    with pytest.raises(fxprune.InputError, match="lr"):
        fxprune.TrainConfig(batches(), lr=0)
    with pytest.raises(fxprune.InputError, match="training-time"):
        fxprune.prepare(model, X, "l1")
    with pytest.raises(fxprune.InputError, match="nothing to gate"):
        fxprune.prepare(nn.Sequential(nn.Linear(4, 3)), torch.randn(2, 4), "itpcc")
    prepared = fxprune.prepare(model, X, "itpcc")
    with pytest.raises(fxprune.InputError, match="lr_gates"):
        prepared.parameter_groups(lr_gates=0.0)
    prepared.finalize(validate=False)
    with pytest.raises(fxprune.InputError, match="already"):
        prepared.finalize()
    with pytest.raises(fxprune.InputError, match="already"):
        prepared.fit(fxprune.TrainConfig(batches(), progress=False))
    assert_same_state(before, model)


# ----------------------------------------------------------------------------- command line


def run_cli(argv):
    from fxprune import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def test_cli_prune_itpcc_trains_on_data(tmp_path):
    torch.save(get("lenet5", in_channels=1).state_dict(), tmp_path / "lenet5.pt")
    base = ["prune", tmp_path / "lenet5.pt", "--model", "lenet5", "--in-channels", "1", "--method", "itpcc",
            "--latency-runs", "0"]
    code, out, err = run_cli(base + ["--data", "bundled", "--calibration-size", "64", "--option", "epochs=2",
                                     "--option", "target_macs_ratio=0.6", "--option", "lr_gates=0.5",
                                     "--option", "finetune_epochs=1", "--out", tmp_path / "a.fxp"])
    assert code == 0, err
    assert "itpcc: target MACs 60.0%" in out and (tmp_path / "a.fxp").is_file()
    code, _, err = run_cli(base + ["--out", tmp_path / "b.fxp"])
    assert code == 2 and "--data" in err
    code, _, err = run_cli(base + ["--data", "bundled", "--option", "bogus=1", "--out", tmp_path / "c.fxp"])
    assert code == 2 and "bogus" in err and not (tmp_path / "c.fxp").exists()
    code, _, err = run_cli(base + ["--data", "bundled", "--option", "lr=0", "--out", tmp_path / "d.fxp"])
    assert code == 2 and "lr" in err and not (tmp_path / "d.fxp").exists()
    assert math.isfinite(fxprune.load(tmp_path / "a.fxp")(torch.randn(1, 1, 28, 28)).sum().item())


# ----------------------------------------------------------------------------- benchmark tool


@pytest.fixture
def bench_tool():
    from conftest import load_tool

    yield from load_tool("bench_itpcc")


def test_bench_tool_runs_offline_and_writes_its_table(bench_tool, tmp_path):
    torch.manual_seed(0)
    bench_tool._tool("train").save_checkpoint(str(tmp_path / "base.pt"), get("lenet5", in_channels=1), "lenet5",
                               {"in_channels": 1, "num_classes": 10})
    out = tmp_path / "r"
    argv = ["--model", "lenet5", "--checkpoint", str(tmp_path / "base.pt"), "--data", "bundled", "--seeds", "0",
            "--targets", "0.5", "--prune-epochs", "1", "--finetune-epochs", "1", "--max-steps", "2",
            "--ablation", "--no-plot", "--out", str(out)]
    res = bench_tool.run(bench_tool.build_parser().parse_args(argv), argv, log=lambda s: None)
    assert [r["method"] for r in res["runs"]] == ["itpcc", "l1", "itpcc_structure"]
    assert all(r["onnx_ok"] for r in res["runs"])
    text = (tmp_path / "r.md").read_text()
    assert "tools/bench_itpcc.py --model lenet5" in text and "| 50% |" in text and "Ablation" in text
