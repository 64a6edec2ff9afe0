"""Tests for fxprune.validate: ONNX export, onnxruntime comparison, save and latency."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision

from fxprune.errors import InputError, ValidationError
from fxprune.validate import ValidationReport, ort_latency, save_onnx, validate


class SmallNet(torch.nn.Module):
    """Conv-BN-ReLU-pool-linear; BN and dropout make train/eval mode matter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.drop = torch.nn.Dropout(0.5)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(y.mean(dim=(2, 3))))


class ExportDiffers(torch.nn.Module):
    """Adds 1.0 only while being exported, so ONNX disagrees with eager by exactly 1."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 4)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x) * self.scale
        if torch.onnx.is_in_onnx_export():
            y = y + 1.0
        return y


class Unexportable(torch.nn.Module):
    """Uses linalg.eigvals, which neither ONNX exporter supports."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x).real


class MultiOut(torch.nn.Module):
    """Nested tuple/list outputs and an unused input (dropped by the legacy exporter)."""

    def forward(self, x: torch.Tensor, unused: torch.Tensor, z: torch.Tensor):
        return x * 2, (x + z, [z.sum()])


@pytest.fixture(scope="module")
def resnet_gm() -> torch.fx.GraphModule:
    torch.manual_seed(0)
    return torch.fx.symbolic_trace(torchvision.models.resnet18())


def _small_inputs() -> tuple[torch.Tensor, ...]:
    return (torch.randn(2, 3, 16, 16),)


def test_small_net_validates() -> None:
    report = validate(SmallNet(), _small_inputs())
    assert isinstance(report, ValidationReport)
    assert report.ok and report.max_abs <= report.tolerance
    assert report.exporter == "torchscript"
    assert report.opset >= 13
    assert report.onnx_bytes is None
    assert report.export_seconds > 0 and report.run_seconds > 0
    assert "ok" in str(report) and "\n" not in str(report)


def test_resnet18_graphmodule_validates_and_benchmarks(resnet_gm: torch.fx.GraphModule) -> None:
    x = torch.randn(1, 3, 224, 224)
    report = validate(resnet_gm, (x,), keep_onnx=True)
    assert report.ok and report.exporter == "torchscript"
    assert report.onnx_bytes is not None and len(report.onnx_bytes) > 40_000_000
    latency = ort_latency(report.onnx_bytes, (x,), runs=3, warmup=1)
    assert 0 < latency < 5


def test_nested_outputs_and_unused_input() -> None:
    args = (torch.randn(2, 3), torch.randn(4), torch.randn(2, 3))
    report = validate(MultiOut(), args)
    assert report.ok


def test_export_divergence_raises_with_max_abs_one() -> None:
    with pytest.raises(ValidationError) as info:
        validate(ExportDiffers(), (torch.randn(3, 6),))
    err = info.value
    assert err.max_abs == pytest.approx(1.0, abs=1e-4)
    assert "max abs error" in str(err) and "tolerance" in str(err)


def test_mismatch_report_without_raising_and_explicit_atol() -> None:
    report = validate(ExportDiffers(), (torch.randn(3, 6),), raise_on_mismatch=False)
    assert not report.ok and report.max_abs == pytest.approx(1.0, abs=1e-4)
    assert "MISMATCH" in str(report)
    assert validate(ExportDiffers(), (torch.randn(3, 6),), atol=1.5).ok


def test_tolerance_scales_with_output_magnitude() -> None:
    # outputs ~1e5: a difference of 1.0 is within rtol=1e-4 of the output scale
    torch.manual_seed(0)
    report = validate(ExportDiffers(scale=1e5), (torch.randn(3, 6),))
    assert report.ok and report.max_abs == pytest.approx(1.0, abs=0.05)
    assert report.tolerance > 1.0


def test_unexportable_raises_validation_error_naming_both_exporters() -> None:
    with pytest.raises(ValidationError) as info:
        validate(Unexportable(), (torch.randn(3, 3),))
    msg = str(info.value)
    assert "torchscript exporter" in msg and "dynamo exporter" in msg
    assert "linalg_eig" in msg and "\n" not in msg and "\x1b" not in msg


def test_falls_back_to_dynamo(monkeypatch: pytest.MonkeyPatch) -> None:
    real_export = torch.onnx.export

    def legacy_broken(*args, **kwargs):
        if not kwargs.get("dynamo", True):
            raise RuntimeError("legacy exporter disabled for this test")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", legacy_broken)
    report = validate(SmallNet(), _small_inputs())
    assert report.ok and report.exporter == "dynamo"


@pytest.mark.parametrize("fails", [False, True])
def test_mode_is_restored(fails: bool) -> None:
    net = SmallNet()
    net.train()
    net.bn.eval()  # mixed flags must come back exactly
    if fails:
        net.fc = Unexportable()  # type: ignore[assignment]
        with pytest.raises(ValidationError):
            validate(net, _small_inputs())
    else:
        validate(net, _small_inputs())
    assert net.training and net.conv.training and net.drop.training and not net.bn.training


def test_save_onnx_is_atomic_and_loadable(tmp_path: Path) -> None:
    net, args = SmallNet().eval(), _small_inputs()
    path = tmp_path / "net.onnx"
    path.write_bytes(b"old")
    assert save_onnx(net, args, path) == "torchscript"
    assert sorted(os.listdir(tmp_path)) == ["net.onnx"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: args[0].numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, net(*args).numpy(), rtol=1e-4, atol=1e-5)


def test_save_onnx_failure_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"old")
    with pytest.raises(ValidationError):
        save_onnx(Unexportable(), (torch.randn(3, 3),), str(path))
    assert sorted(os.listdir(tmp_path)) == ["bad.onnx"]
    assert path.read_bytes() == b"old"


def test_ort_latency_errors() -> None:
    with pytest.raises(ValidationError, match="could not load"):
        ort_latency(b"not an onnx model", _small_inputs())
    with pytest.raises(InputError):
        ort_latency(b"", _small_inputs(), runs=0)
