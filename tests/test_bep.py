"""BEP: pruning during training with physical rewrites (issue #7). Offline, bundled data, LeNet-5."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fxprune
import fxprune.models as zoo
from fxprune.training.data import bundled
from fxprune.training.optim_state import param_cuts, slice_like, sliced_optimizer_state
from fxprune.passes.bep import final_counts

OPTS = dict(step=6, seed_steps=8, measure_every=2, bucket_width=2, gp_iters=8, samples=64, instrument_samples=100,
            inducing=8, progress=False)


@pytest.fixture(scope="module")
def batches():
    X, Y = bundled().tensors
    return [(X[i:i + 50], Y[i:i + 50]) for i in range(0, 400, 50)]


def _model():
    torch.manual_seed(0)
    return zoo.get("lenet5", in_channels=1)


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, snap):
    return all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


def test_compile_bep_reaches_exact_units_and_validates(batches):
    model = _model()
    snap = _snapshot(model)
    cfg = fxprune.TrainConfig(batches, epochs=4, lr=0.05, progress=False)
    r = fxprune.compile(model, batches[0][0][:2], method="bep", train=cfg, target_macs_ratio=0.3, lam=1e-4, **OPTS)
    d = r.report.details
    assert {g.id: g.kept for g in r.report.groups} == d["final_units"]
    assert r.report.macs_ratio <= 0.3 + 1e-6
    assert "ok" in r.report.validation
    assert 0 < d["train_flops_ratio"] < 1
    assert d["log"][0] == {"t": 0, "units": {g.id: g.units for g in r.graph.prunable_groups}}
    assert d["log"][-1]["final"] and d["log"][1]["lambda_t"]
    assert _same(model, snap)
    assert r.module(batches[0][0]).shape == (50, 10)
    # the plan is in the original model's units: rewrite of the original gives the same shapes
    again = fxprune.rewrite(model, r.graph, r.plan)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in r.module.state_dict().items()}


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_manual_loop_optimizer_state_follows_rewrites(batches, opt_name):
    model = _model()
    T = 24
    prepared = fxprune.prepare(model, batches[0][0][:2], method="bep", data=batches, total_steps=T,
                               sparsity=0.5, lam=1e-7, **OPTS)
    net = prepared.module
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9) if opt_name == "sgd" \
        else torch.optim.Adam(net.parameters(), lr=1e-3)
    sizes = []
    for it in range(T):
        x, y = batches[it % len(batches)]
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        net, opt2 = prepared.step(opt)
        assert opt2 is opt and net is prepared.module
        params = list(net.parameters())
        assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in params]
        for p in params:
            for k, v in opt.state[p].items():
                if isinstance(v, torch.Tensor) and v.dim():
                    assert v.shape == p.shape, (k, v.shape, p.shape)
        sizes.append(sum(p.numel() for p in params))
    assert sizes[T // 2] < sizes[0]          # pruned during training, not only at the end
    result = prepared.finalize()
    assert {g.id: g.kept for g in result.report.groups} == {"conv1": 3, "conv2": 8, "fc1": 60, "fc2": 42}
    assert "ok" in result.report.validation


def test_optimizer_state_sliced_like_parameters(batches):
    model = _model().train()
    x = batches[0][0][:2]
    graph = fxprune.analyze(model, x)
    gm = graph.gm
    opt = torch.optim.SGD(gm.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(gm(batches[0][0]), batches[0][1]).backward()
    opt.step()
    plan = {"conv2": [0, 3, 5, 9], "fc1": list(range(0, 120, 3))}
    new = fxprune.rewrite(gm, graph, plan)
    cuts = param_cuts(graph, plan)
    old = dict(gm.named_parameters())
    for name, p in new.named_parameters():  # the cuts are exactly what rewrite did
        assert torch.equal(slice_like(old[name].detach(), cuts.get(name, [])), p.detach())
    groups, state = sliced_optimizer_state(opt, gm, new, cuts)
    for name, p in new.named_parameters():
        buf = state[p]["momentum_buffer"]
        assert torch.equal(buf, slice_like(opt.state[old[name]]["momentum_buffer"], cuts.get(name, [])))


def test_lite_prunes_at_init_then_bep(batches):
    model = _model()
    cfg = fxprune.TrainConfig(batches, epochs=3, lr=0.05, progress=False)
    r = fxprune.compile(model, batches[0][0][:2], method="bep", train=cfg, sparsity=0.75, lite=True,
                        lite_factor=2.0, **OPTS)
    log = r.report.details["log"]
    assert log[0]["lite"] and log[0]["units"] == {"conv1": 4, "conv2": 8, "fc1": 60, "fc2": 42}
    assert {g.id: g.kept for g in r.report.groups} == {"conv1": 2, "conv2": 4, "fc1": 30, "fc2": 21}
    assert "ok" in r.report.validation


def test_final_counts_from_macs_target(batches):
    model = _model()
    graph = fxprune.analyze(model, batches[0][0][:2])
    opts = fxprune.passes.METHODS["bep"](target_macs_ratio=0.1)
    counts = final_counts(graph, opts, (batches[0][0][:2],))
    cost = fxprune.cost.CostModel.build(graph, (batches[0][0][:2],))
    assert cost.macs(counts) <= 0.1 * cost.full("macs")
    assert all(n >= 1 for n in counts.values())


# ---------------------------------------------------------------- bad input
def test_target_leaving_zero_units_is_plan_error(batches):
    model = _model()
    snap = _snapshot(model)
    cfg = fxprune.TrainConfig(batches, epochs=1, progress=False)
    with pytest.raises(fxprune.PlanError, match="zero units"):
        fxprune.compile(model, batches[0][0][:2], method="bep", train=cfg, target_macs_ratio=1e-4, **OPTS)
    with pytest.raises(fxprune.PlanError, match="zero units"):
        fxprune.compile(model, batches[0][0][:2], method="bep", train=cfg, units={"conv1": 0}, **OPTS)
    assert _same(model, snap)


def test_step_longer_than_training_is_input_error(batches):
    model = _model()
    cfg = fxprune.TrainConfig(batches, epochs=1, progress=False)  # T = 8
    with pytest.raises(fxprune.InputError, match="longer than training"):
        fxprune.compile(model, batches[0][0][:2], method="bep", train=cfg, step=50, seed_steps=4, measure_every=1)
    with pytest.raises(fxprune.InputError, match="seed period"):
        fxprune.compile(model, batches[0][0][:2], method="bep", train=cfg, step=4, seed_steps=8, measure_every=1)


def test_nan_saliency_is_input_error_and_leaves_nothing_half_pruned(batches):
    model = _model()
    snap = _snapshot(model)

    def nan_loss(out, y):
        return F.cross_entropy(out, y) * float("nan")

    prepared = fxprune.prepare(model, batches[0][0][:2], method="bep", data=batches, total_steps=20,
                               loss_fn=nan_loss, sparsity=0.5, **OPTS)
    net = prepared.module
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    with pytest.raises(fxprune.InputError, match="not finite"):
        for it in range(20):
            x, y = batches[it % len(batches)]
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
            net, opt = prepared.step(opt)
    assert prepared.module is net and {k: v.shape for k, v in net.state_dict().items()} == shapes
    assert all(p.shape == s.shape for p, s in zip(opt.param_groups[0]["params"], net.parameters()))
    assert _same(model, snap)


def test_bep_needs_training_data():
    with pytest.raises(fxprune.InputError, match="trains"):
        fxprune.compile(_model(), torch.randn(2, 1, 28, 28), method="bep")


# ----------------------------------------------------------------------------- command line, benchmark tool
def test_cli_prune_bep_trains_on_data(tmp_path):
    from test_itpcc import run_cli

    torch.save(_model().state_dict(), tmp_path / "lenet5.pt")
    base = ["prune", tmp_path / "lenet5.pt", "--model", "lenet5", "--in-channels", "1", "--method", "bep",
            "--latency-runs", "0", "--data", "bundled", "--calibration-size", "256"]
    code, out, err = run_cli(base + ["--option", "epochs=12", "--option", "measure_every=1", "--option", "gp_iters=5",
                                     "--option", "target_macs_ratio=0.3", "--out", tmp_path / "a.fxp"])
    assert code == 0, err
    assert "bep (target_macs_ratio=0.3" in out and "training FLOPs" in out
    pruned = fxprune.load(tmp_path / "a.fxp")
    assert fxprune.report.count_macs(pruned, (torch.randn(1, 1, 28, 28),)) <= 0.3 * fxprune.report.count_macs(
        _model(), (torch.randn(1, 1, 28, 28),))
    code, _, err = run_cli(base + ["--option", "epochs=1", "--out", tmp_path / "b.fxp"])   # seed period too short
    assert code == 2 and "seed period" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b.fxp").exists()


@pytest.fixture(scope="module")
def bench_tool():
    from conftest import load_tool

    yield from load_tool("bench_bep")


def test_bench_tool_tables_aggregate_seeds_and_skip_cut_lines(bench_tool, tmp_path):
    def rec(method, budget, lam, seed, acc, flops):
        return {"method": method, "macs_budget": budget, "lam": lam, "seed": seed, "test_acc": acc,
                "train_flops_ratio": flops, "model": "bep_cnn", "epochs": 1, "train_images": 10}

    lines = [rec("dense", 1.0, None, 0, 0.9, 1.0), rec("snip", 0.09, None, 0, 0.80, 0.09),
             rec("snip", 0.09, None, 1, 0.82, 0.09), rec("bep", 0.09, 1e-4, 0, 0.85, 0.2)]
    (tmp_path / "runs-0of2.jsonl").write_text("\n".join(map(__import__("json").dumps, lines[:3])) + "\n")
    (tmp_path / "runs-1of2.jsonl").write_text(__import__("json").dumps(lines[3]) + "\n{\"method\": \"bep\", \"mac")
    runs = bench_tool.load_runs(tmp_path)
    assert len(runs) == 4
    text = bench_tool.table(runs)
    assert "| snip | - | 81.00 ± 1.41 (2) | 0.090 ± 0.000 (2) |" in text
    assert "| bep | 0.0001 | 85.00 (1) | 0.200 (1) |" in text and "91% pruned" in text
    configs = bench_tool.configs(bench_tool.main.__globals__["argparse"].Namespace(
        methods="dense,bep,snip", lams="1e-2,1e-7", seeds="0,1", budgets="0.09,0.01"))
    assert len(configs) == 2 * (1 + 2 * (2 + 1)) and configs[0]["method"] == "dense"


def test_trace_and_plots(batches, tmp_path, monkeypatch):
    import json

    from fxprune.passes.bep import plots as bep_plots

    prepared = fxprune.prepare(_model(), batches[0][0][:2], method="bep", sparsity=0.5, lam=1e-7,
                               measure_to_end=True, **OPTS)
    prepared.fit(fxprune.TrainConfig(batches, epochs=4, lr=0.05, progress=False))
    trace = json.loads(json.dumps(prepared.trace()))                    # JSON-ready
    assert trace["decisions"] and trace["T"] == 32
    conv1 = np.asarray(trace["groups"]["conv1"]["values"], dtype=float)
    assert trace["groups"]["conv1"]["times"][-1] > trace["decisions"][-1]   # measured after the last decision
    stopped = set(np.flatnonzero(np.isnan(conv1[:, -1])).tolist())     # pruned units stop being measured
    assert conv1.shape[0] == 6 and 1 <= len(stopped) <= 3                 # (the cut at T comes after the last)
    assert stopped.isdisjoint(prepared.alive["conv1"].tolist())
    f = bep_plots.forecast(trace, "conv1")
    assert f["mean"].shape == f["std"].shape == (6, 24) and bool((f["std"] >= 0).all())
    decision = next(p for p in prepared.predictions if p["group"] == "conv1")   # the forecast is the decision's own
    np.testing.assert_allclose(f["mean"][decision["units"], -1].numpy(), decision["mean"], rtol=1e-6, atol=1e-12)
    pytest.importorskip("matplotlib")
    assert bep_plots.plot_saliency(trace, tmp_path / "s.png") == "conv2"    # the largest group of <= 64 units
    bep_plots.plot_units([("a", trace), ("b", trace)], tmp_path / "u.png", "title")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "u.png").stat().st_size > 0
    with pytest.raises(fxprune.errors.InputError, match="no saliency series"):
        bep_plots.forecast(trace, "nope")
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    with pytest.raises(bep_plots.MissingDependency, match="fxprune\\[plot\\]"):
        bep_plots.plot_units([("a", trace)], tmp_path / "v.png")
    assert not (tmp_path / "v.png").exists()


def test_last_saliency_predictor_ablation(batches):
    cfg = fxprune.TrainConfig(batches, epochs=4, lr=0.05, progress=False)
    r = fxprune.compile(_model(), batches[0][0][:2], method="bep", train=cfg, sparsity=0.5, predictor="last", **OPTS)
    assert {g.id: g.kept for g in r.report.groups} == r.report.details["final_units"]
    assert r.report.seconds["mogp"] < 0.5
    with pytest.raises(fxprune.errors.InputError, match="predictor"):
        fxprune.compile(_model(), batches[0][0][:2], method="bep", train=cfg, predictor="oracle")
