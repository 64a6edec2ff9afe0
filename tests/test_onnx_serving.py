"""ONNX that serves, and validation that means it (fxprune.validate, fxprune-trace prune/validate).

The exported file has named inputs/outputs and a dynamic batch axis (dim 0) by default, runs
in onnxruntime at batch 1, 2 and 7 in agreement with torch (LeNet-5 pruned by fxprune.compile,
torchvision ResNet-18 at 64x64), with either exporter; a model whose batch size is baked in is
exported with fixed shapes and a note. NaN/inf outputs are never agreement.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision

import fxprune
import fxprune.models as zoo
from fxprune import cli
from fxprune.errors import ValidationError
from fxprune.validate import NonFiniteOutputError, batch_variant, ort_latency, save_onnx, validate
from cli_run import run

pytestmark = pytest.mark.usefixtures("one_thread")

SERVING_BATCHES = (1, 2, 7)


def session(source: bytes | Path) -> ort.InferenceSession:
    return ort.InferenceSession(source if isinstance(source, bytes) else str(source),
                                providers=["CPUExecutionProvider"])


def shapes(metas) -> dict[str, list]:
    return {m.name: list(m.shape) for m in metas}


def assert_serves(sess: ort.InferenceSession, model: torch.nn.Module, sample_shape: tuple[int, ...]) -> None:
    """onnxruntime agrees with torch at every batch size of ``SERVING_BATCHES``."""
    name = sess.get_inputs()[0].name
    gen = torch.Generator().manual_seed(3)
    for batch in SERVING_BATCHES:
        x = torch.randn(batch, *sample_shape, generator=gen)
        with torch.no_grad():
            want = model.eval()(x).numpy()
        (got,) = sess.run(None, {name: x.numpy()})
        assert got.shape == want.shape, batch
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max())), batch


@pytest.fixture(scope="module")
def pruned_lenet() -> torch.fx.GraphModule:
    torch.manual_seed(0)
    model = zoo.get("lenet5", in_channels=1).eval()
    return fxprune.compile(model, torch.randn(1, 1, 28, 28), "l1", 0.5).module.eval()


@pytest.fixture(scope="module")
def resnet18_gm() -> torch.fx.GraphModule:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    for m in model.modules():  # non-trivial BN statistics, so that outputs are not ~0
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return torch.fx.symbolic_trace(model)


# ----------------------------------------------------------------------------- dynamic batch, names


def test_pruned_lenet_onnx_serves_batches_1_2_7_with_named_io(pruned_lenet, tmp_path):
    path = tmp_path / "lenet.onnx"
    assert save_onnx(pruned_lenet, (torch.randn(1, 1, 28, 28),), path) == "torchscript"
    sess = session(path)
    assert shapes(sess.get_inputs()) == {"x": ["batch", 1, 28, 28]}  # the forward's argument name
    assert shapes(sess.get_outputs()) == {"output": ["batch", 10]}
    assert_serves(sess, pruned_lenet, (1, 28, 28))


def test_resnet18_onnx_serves_batches_1_2_7(resnet18_gm):
    report = validate(resnet18_gm, (torch.randn(1, 3, 64, 64),), keep_onnx=True)
    assert report.ok and report.dynamic_batch and report.batch_sizes == (1, 2) and report.note == ""
    assert report.input_names == ("x",) and report.output_names == ("output",)
    assert "batch=dynamic (checked at 1, 2)" in str(report)
    assert_serves(session(report.onnx_bytes), resnet18_gm, (3, 64, 64))


def test_dynamo_exporter_with_a_batch_dim_serves_too(pruned_lenet, monkeypatch):
    real_export = torch.onnx.export

    def legacy_broken(*args, **kwargs):
        if not kwargs.get("dynamo", True):
            raise RuntimeError("legacy exporter disabled for this test")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", legacy_broken)
    report = validate(pruned_lenet, (torch.randn(3, 1, 28, 28),), keep_onnx=True)
    monkeypatch.undo()
    assert report.exporter == "dynamo" and report.dynamic_batch and report.batch_sizes == (3, 4)
    sess = session(report.onnx_bytes)
    assert shapes(sess.get_inputs()) == {"x": ["batch", 1, 28, 28]}
    assert shapes(sess.get_outputs()) == {"output": ["batch", 10]}
    assert_serves(sess, pruned_lenet, (1, 28, 28))


def test_static_shapes_on_request(pruned_lenet, tmp_path):
    path = tmp_path / "static.onnx"
    save_onnx(pruned_lenet, (torch.randn(2, 1, 28, 28),), path, dynamic_batch=False)
    sess = session(path)
    assert shapes(sess.get_inputs()) == {"x": [2, 1, 28, 28]} and shapes(sess.get_outputs()) == {"output": [2, 10]}
    with pytest.raises(Exception, match="(?i)invalid dimensions|got invalid"):
        sess.run(None, {"x": np.zeros((3, 1, 28, 28), np.float32)})
    report = validate(pruned_lenet, (torch.randn(2, 1, 28, 28),), dynamic_batch=False)
    assert not report.dynamic_batch and report.batch_sizes == (2,) and report.note == ""


class BakedBatch(torch.nn.Module):
    """A view with a literal batch of 1: the model itself only runs at batch 1."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(1, -1))


class TracedBatch(torch.nn.Module):
    """Runs at any batch in torch, but the size is read as a Python int, so a trace bakes it in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(int(x.shape[0]), -1) * 2


@pytest.mark.parametrize("model, reason", [(BakedBatch(), "does not run at batch 2 in torch"),
                                           (TracedBatch(), "no export with a dynamic batch axis held")])
def test_a_baked_in_batch_falls_back_to_fixed_shapes_with_a_note(model, reason, tmp_path):
    x = torch.randn(1, 3, 2, 2)
    report = validate(model, (x,), keep_onnx=True)
    assert report.ok and not report.dynamic_batch and report.batch_sizes == (1,)
    assert report.note.startswith("fixed shapes: ") and reason in report.note and reason in str(report)
    assert shapes(session(report.onnx_bytes).get_inputs()) == {"x": [1, 3, 2, 2]}
    if isinstance(model, BakedBatch):  # (TracedBatch tries the slow dynamo exporter: once is enough)
        with pytest.warns(UserWarning, match="fixed shapes"):
            save_onnx(model, (x,), tmp_path / "baked.onnx")
        assert shapes(session(tmp_path / "baked.onnx").get_inputs()) == {"x": [1, 3, 2, 2]}


class TwoInputs(torch.nn.Module):
    """Named forward arguments, an unused one (the TorchScript exporter drops it), two outputs."""

    def forward(self, image: torch.Tensor, unused: torch.Tensor, mask: torch.Tensor):
        return image * mask, (image + mask).sum(dim=1)


def test_several_inputs_and_outputs_are_named_after_the_forward():
    args = (torch.randn(2, 4), torch.randn(5), torch.randn(2, 4))
    report = validate(TwoInputs(), args, keep_onnx=True)
    assert report.ok and report.dynamic_batch and report.batch_sizes == (2, 3)
    assert report.input_names == ("image", "unused", "mask") and report.output_names == ("output_0", "output_1")
    sess = session(report.onnx_bytes)
    assert shapes(sess.get_inputs()) == {"image": ["batch", 4], "mask": ["batch", 4]}
    assert shapes(sess.get_outputs()) == {"output_0": ["batch", 4], "output_1": ["batch"]}
    assert ort_latency(report.onnx_bytes, args, runs=2, warmup=0, input_names=report.input_names) > 0


def test_batch_variant_resizes_the_batch_inputs_only():
    x, ids, other = torch.rand(2, 3) * 4 + 1, torch.tensor([[1, 2], [3, 4]]), torch.randn(5)
    y, ids2, other2 = batch_variant((x, ids, other), [0, 1], 3)
    assert y.shape == (3, 3) and y.dtype == x.dtype and bool((y >= x.min()).all() & (y <= x.max()).all())
    assert ids2.tolist() == [[1, 2], [3, 4], [1, 2]]  # integer inputs repeat their rows
    assert other2 is other


# ----------------------------------------------------------------------------- NaN/inf


def nan_weights(name: str) -> torch.nn.Module:
    model = zoo.get("lenet5", in_channels=1).eval()
    with torch.no_grad():
        dict(model.named_parameters())[name].fill_(float("nan"))
    return model


def test_nan_weights_are_a_validation_error_never_agreement():
    with pytest.raises(NonFiniteOutputError, match="produces NaN/inf on the example inputs") as info:
        validate(nan_weights("conv1.weight"), (torch.randn(1, 1, 28, 28),))
    assert isinstance(info.value, ValidationError) and "10 of 10 values" in str(info.value)


def test_compile_says_the_model_already_produces_nan():
    with pytest.raises(ValidationError, match="the model already produces NaN/inf on the example inputs"):
        fxprune.compile(nan_weights("fc3.weight"), torch.randn(1, 1, 28, 28), "l1", 0.5)


class NanOnlyInOnnx(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        return y * float("nan") if torch.onnx.is_in_onnx_export() else y


def test_nan_from_onnxruntime_is_a_mismatch():
    with pytest.raises(ValidationError, match="onnxruntime produces NaN/inf where torch gives finite values"):
        validate(NanOnlyInOnnx(), (torch.randn(2, 3),))
    report = validate(NanOnlyInOnnx(), (torch.randn(2, 3),), raise_on_mismatch=False)
    assert not report.ok and report.max_abs == float("inf")


def test_cli_prune_refuses_a_checkpoint_with_nan_weights(tmp_path):
    torch.save(nan_weights("conv2.weight").state_dict(), tmp_path / "nan.pt")
    code, out, err = run(["prune", tmp_path / "nan.pt", "--model", "lenet5", "--in-channels", "1",
                          "--out", tmp_path / "x.fxp", "--latency-runs", "0"])
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "the model already produces NaN/inf on the example inputs" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pt"]


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def lenet_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serving")
    torch.manual_seed(0)
    torch.save(zoo.get("lenet5", in_channels=1).state_dict(), folder / "lenet.pt")
    return folder / "lenet.pt"


@pytest.mark.parametrize("static", [False, True])
def test_cli_prune_writes_a_serving_onnx_or_static_shapes(lenet_checkpoint, tmp_path, static):
    argv = ["prune", lenet_checkpoint, "--model", "lenet5", "--in-channels", "1", "--out", tmp_path / "x.fxp",
            "--onnx", tmp_path / "x.onnx", "--latency-runs", "1"] + (["--static-shapes"] if static else [])
    code, out, err = run(argv)
    assert code == 0 and err == "", err
    assert ("fixed shapes" if static else "dynamic batch") in out.splitlines()[-1]
    inputs = shapes(session(tmp_path / "x.onnx").get_inputs())
    assert inputs == {"x": [1, 1, 28, 28] if static else ["batch", 1, 28, 28]}
    if not static:
        assert_serves(session(tmp_path / "x.onnx"), fxprune.load(tmp_path / "x.fxp"), (1, 28, 28))
    code, out, err = run(["validate", tmp_path / "x.fxp", "--onnx", tmp_path / "x.onnx"])
    assert code == 0, err
    assert "x.onnx vs reloaded model: ok" in out and ("(batch 1)" if static else "(batch 1, 2)") in out


def test_cli_onnx_inputs_accept_any_batch_where_the_axis_is_dynamic(pruned_lenet, tmp_path):
    save_onnx(pruned_lenet, (torch.randn(1, 1, 28, 28),), tmp_path / "dyn.onnx")
    save_onnx(pruned_lenet, (torch.randn(1, 1, 28, 28),), tmp_path / "static.onnx", dynamic_batch=False)
    x = torch.randn(5, 1, 28, 28)
    (got,) = cli.run_onnx_file(tmp_path / "dyn.onnx", (x,), "the test")
    assert got.shape == (5, 10)
    with pytest.raises(cli.CLIError, match=r"expects input 'x' of shape \(1, 1, 28, 28\)"):
        cli.run_onnx_file(tmp_path / "static.onnx", (x,), "the test")
