"""fxprune.save / fxprune.load: plan replay, safe loading, atomic writes, clear errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torchvision

import fxprune
import fxprune.models as zoo


def test_zoo_model_roundtrip_is_exact(tmp_path):
    model = zoo.get("resnet20", in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    result = fxprune.compile(model, x, sparsity=0.5, validate=False)
    path = tmp_path / "r20.fxp"
    fxprune.save(result, path)
    payload = torch.load(path, weights_only=True)  # plain data only
    assert payload["source"] == {"kind": "fxprune.models", "name": "resnet20", "kwargs": {"in_channels": 1}}
    with torch.no_grad():
        assert torch.equal(fxprune.load(path)(x), result.module(x))
    assert [p.name for p in tmp_path.iterdir()] == ["r20.fxp"]  # no temp file left


@pytest.mark.slow
def test_torchvision_roundtrip_in_a_new_process(tmp_path):
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    result = fxprune.compile(model, x, sparsity=0.5, validate=False)
    fxprune.save(result, tmp_path / "r18.fxp", model_name="resnet18")
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(result.module(x), tmp_path / "y.pt")
    code = (
        "import torch, fxprune; "
        f"gm = fxprune.load({str(tmp_path / 'r18.fxp')!r}); x = torch.load({str(tmp_path / 'x.pt')!r}); "
        f"y = torch.load({str(tmp_path / 'y.pt')!r}); "
        "print(float((gm(x) - y).abs().max()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) <= 1e-5


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(fxprune.InputError, match="no such file"):
        fxprune.load(tmp_path / "missing.fxp")
    (tmp_path / "junk.fxp").write_bytes(b"not a torch file")
    with pytest.raises(fxprune.InputError, match="not a readable"):
        fxprune.load(tmp_path / "junk.fxp")
    torch.save({"weights": torch.ones(2)}, tmp_path / "sd.pt")
    with pytest.raises(fxprune.InputError, match="not a file written by fxprune.save"):
        fxprune.load(tmp_path / "sd.pt")


def test_load_with_a_different_model_is_a_plan_error(tmp_path):
    x = torch.randn(1, 1, 28, 28)
    result = fxprune.compile(zoo.get("resnet20", in_channels=1).eval(), x, validate=False)
    fxprune.save(result, tmp_path / "a.fxp")
    with pytest.raises(fxprune.PlanError, match="does not fit"):
        fxprune.load(tmp_path / "a.fxp", model=zoo.get("lenet5", in_channels=1))


def test_save_into_missing_directory_fails_cleanly(tmp_path):
    result = fxprune.compile(zoo.get("lenet5", in_channels=1).eval(), torch.randn(1, 1, 28, 28), validate=False)
    with pytest.raises(fxprune.InputError, match="does not exist"):
        fxprune.save(result, tmp_path / "nope" / "out.fxp")
    assert not os.path.exists(tmp_path / "nope")
