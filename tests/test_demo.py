"""The README's first command: the bundled default demo runs offline and reports accuracy."""
from __future__ import annotations

from fxprune import demo


def test_demo_prunes_the_bundled_model_and_prints_the_table(capsys):
    assert demo.main(["--sparsity", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "prunable" in out  # the group report
    for row in ("accuracy (200 held-out bundled test images)", "params", "MACs", "onnxruntime latency",
                "onnx ok", "submodular"):
        assert row in out


def test_demo_default_is_submodular_and_keeps_accuracy_without_fine_tuning(capsys):
    """The default (AsymInChange + reweighting, 300 unlabelled calibration images) at sparsity 0.5
    loses at most 10 points on the 200 held-out images (measured: 92.0% -> 87.0%); l1 without
    fine-tuning falls to chance level there."""
    assert demo.main([]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("accuracy ("))
    before, after = (float(v.rstrip("%")) for v in row.split()[-3:-1])
    assert after >= before - 10.0


def test_bundled_checkpoint_is_the_trained_model():
    images, labels = demo.bundled().tensors
    assert demo.accuracy(demo.load_bundled_model(), images, labels) > 0.85


def test_demo_bad_option_is_a_clean_error(capsys):
    assert demo.main(["--method", "magic"]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
