"""tools/train.py: training, evaluation, fine-tuning a GraphModule, checkpoints, CLI errors.

Runs on the bundled 500-image subset, so no data files are needed.
"""
from __future__ import annotations

import copy
import json

import pytest

from conftest import load_tool
import torch
from torch import fx, nn
from torch.utils.data import DataLoader

from fxprune.training import data



@pytest.fixture(scope="module")
def tool():
    yield from load_tool("train")


class Tiny(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 7 * 7, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def subset():
    return data.bundled()


def _loader(ds, bs=32, seed=0):
    return DataLoader(ds, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(seed))


def test_train_one_epoch_improves(tool, subset, one_thread):
    torch.manual_seed(0)
    model = Tiny()
    ev = DataLoader(subset, batch_size=250)
    before = tool.evaluate(model, ev)
    hist = tool.train(model, _loader(subset), epochs=1, lr=3e-3, device="cpu",
                      eval_loaders={"test": ev}, progress=False, log=None, seed=0)
    after = tool.evaluate(model, ev)
    assert len(hist) == 1 and set(hist[0]) >= {"epoch", "loss", "train_acc", "test_acc", "lr", "seconds"}
    assert hist[0]["test_acc"] == pytest.approx(after)
    assert hist[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine ends at 0
    assert after >= 0.4 and after > before + 0.2, (before, after)  # chance is 0.1


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "step"), ("adamw", "none")])
def test_optimizers_and_schedules(tool, subset, optimizer, schedule):
    torch.manual_seed(0)
    model = Tiny()
    hist = tool.train(model, _loader(subset, 100), epochs=2, optimizer=optimizer, lr=0.01,
                      schedule=schedule, device="cpu", progress=True, log=None, hflip=True, seed=1)
    expect = {"step": 0.01 * 0.1 * 0.1, "none": 0.01}[schedule]
    assert hist[-1]["lr"] == pytest.approx(expect)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_evaluate_restores_mode(tool, subset):
    model = Tiny().train()
    acc = tool.evaluate(model, DataLoader(subset, batch_size=500))
    assert 0.0 <= acc <= 1.0 and model.training
    with pytest.raises(ValueError):
        tool.evaluate(model, [])


def test_finetune_graph_module(tool, subset):
    torch.manual_seed(0)
    gm = fx.symbolic_trace(Tiny())
    assert isinstance(gm, fx.GraphModule)
    before = copy.deepcopy(gm.state_dict())
    out = tool.finetune(gm, _loader(subset, 64), epochs=1, lr=1e-3)
    assert out is gm and not gm.training
    changed = [k for k, v in gm.state_dict().items() if not torch.equal(v, before[k])]
    assert "conv1.weight" in changed and "fc.bias" in changed
    assert gm(subset.tensors[0][:4]).shape == (4, 10)


def test_finetune_pruned_graph_module(tool, subset):
    import fxprune

    torch.manual_seed(0)
    model = Tiny().eval()
    res = fxprune.compile(model, (subset.tensors[0][:2],), method="l1", sparsity=0.5)
    pruned = res.module
    assert isinstance(pruned, fx.GraphModule)
    n_before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in pruned.parameters()) < n_before
    ev = DataLoader(subset, batch_size=500)
    before = tool.evaluate(pruned, ev)
    assert tool.finetune(pruned, _loader(subset, 32), epochs=2, lr=3e-3) is pruned
    after = tool.evaluate(pruned, ev)
    assert after > max(0.3, before + 0.1), (before, after)


def test_checkpoint_and_json(tool, tmp_path):
    torch.manual_seed(0)
    model = Tiny(in_channels=3, num_classes=7)
    path = tmp_path / "sub" / "tiny.pt"
    tool.save_checkpoint(str(path), model, "tiny", {"in_channels": 3, "num_classes": 7},
                         {"test_acc": 0.5, "history": [{"epoch": 1, "loss": 1.0}]})
    tool.write_json(tool.json_path(str(path)), {"history": [], "test_acc": 0.5})
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.json", "tiny.pt"]  # no temp left
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["model"] == {"name": "tiny", "kwargs": {"in_channels": 3, "num_classes": 7}}
    assert ckpt["meta"]["test_acc"] == 0.5
    fresh = Tiny(**ckpt["model"]["kwargs"])
    fresh.load_state_dict(ckpt["state_dict"])
    x = torch.randn(2, 3, 28, 28)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))
    assert json.loads((path.parent / "tiny.json").read_text())["test_acc"] == 0.5


def _zoo_has(name: str) -> bool:
    try:
        import fxprune.models as zoo
        return name in zoo.list()
    except Exception:
        return False


@pytest.mark.skipif(not _zoo_has("lenet5"), reason="fxprune.models has no lenet5 yet")
def test_cli_bundled_lenet5(tool, tmp_path, capsys):
    out = tmp_path / "ck" / "lenet5.pt"
    rc = tool.main(["lenet5", "--data", "bundled", "--epochs", "2", "--batch-size", "64",
                    "--out", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["model"] == {"name": "lenet5", "kwargs": {"in_channels": 1, "num_classes": 10}}
    summary = json.loads(out.with_suffix(".json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert set(summary["history"][0]) >= {"loss", "train_acc", "test_acc", "seconds", "lr"}
    assert summary["device"] == "cpu" and summary["args"]["epochs"] == 2
    model, ck = tool.load_checkpoint(str(out))
    acc = tool.evaluate(model, DataLoader(data.bundled(), batch_size=500))
    assert acc == pytest.approx(summary["test_acc"]) and acc > 0.2


def test_cli_errors(tool, tmp_path, monkeypatch, capsys):
    def err(argv):
        with pytest.raises(SystemExit) as info:
            rc = tool.main(argv)
            raise SystemExit(rc)
        lines = capsys.readouterr().err.strip().splitlines()
        return info.value.code, lines

    code, lines = err(["lenet5", "--epochs", "0"])
    assert code == 2 and len(lines) == 1 and "--epochs" in lines[0] and "> 0" in lines[0]
    code, lines = err(["lenet5", "--optimizer", "rmsprop"])
    assert code == 2 and len(lines) == 1 and lines[0].startswith("train.py: error:")
    code, lines = err([])
    assert code == 2 and len(lines) == 1
    if _zoo_has("lenet5"):
        code, lines = err(["no_such_model", "--data", "bundled"])
        assert code == 2 and len(lines) == 1 and "unknown model" in lines[0]
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "SEARCH_PATHS", [str(tmp_path)])
    code, lines = err(["lenet5", "--out", str(tmp_path / "x.pt")])
    assert code == 2 and len(lines) == 1
    assert "apt-get install dataset-fashion-mnist" in lines[0] or "zoo" in lines[0]
    assert not (tmp_path / "x.pt").exists()
