"""The README's first command: the bundled default demo runs offline and reports accuracy."""
from __future__ import annotations

from fxprune import demo


def test_demo_prunes_the_bundled_model_and_prints_the_table(capsys):
    assert demo.main(["--sparsity", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "prunable" in out  # the group report
    for row in ("accuracy (500 bundled test images)", "params", "MACs", "onnxruntime latency", "onnx ok"):
        assert row in out


def test_bundled_checkpoint_is_the_trained_model():
    images, labels = demo.bundled().tensors
    assert demo.accuracy(demo.load_bundled_model(), images, labels) > 0.85


def test_demo_bad_option_is_a_clean_error(capsys):
    assert demo.main(["--method", "magic"]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
