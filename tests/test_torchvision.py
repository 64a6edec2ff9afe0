"""A fast representative subset of the torchvision zoo (the whole zoo: tools/zoo_sweep.py).

Each model is pruned by ``compile`` (l1, sparsity 0.5, validated in onnxruntime),
must lose at least 30% of its MACs, and must satisfy rewrite == mask ==
zero-the-removed-produce-slices on every group without normalisation members.
"""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import fxprune
from conftest import check_equivalences, randomize_bn


def small_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                hidden_dim=64, mlp_dim=128, num_classes=10)


MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(), 64),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(), 64),
    "shufflenet_v2_x0_5": (lambda: torchvision.models.shufflenet_v2_x0_5(), 64),
    "densenet121": (lambda: torchvision.models.densenet121(), 64),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(), 64),
    "regnet_x_400mf": (lambda: torchvision.models.regnet_x_400mf(), 64),
    "convnext_tiny": (lambda: torchvision.models.convnext_tiny(), 64),
    "swin_t": (lambda: torchvision.models.swin_t(), 64),
    "vit_small_input": (small_vit, 32),
}


def nonzero_init(model: nn.Module) -> nn.Module:
    """Replace exactly-zero initial parameters (ViT head, ...) so outputs carry signal."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    return randomize_bn(model).eval()


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


DEFAULT_RUN = {"resnet18", "mobilenet_v3_small", "vit_small_input"}  # residual, depthwise + SE, attention


@pytest.mark.parametrize("name", [n if n in DEFAULT_RUN else pytest.param(n, marks=pytest.mark.slow) for n in MODELS])
def test_torchvision_model_prunes_validates_and_is_exact(name):
    build, size = MODELS[name]
    torch.manual_seed(0)
    model = nonzero_init(build())
    x = torch.randn(1, 3, size, size)
    result = fxprune.compile(model, x, method="l1", sparsity=0.5)
    assert "onnx ok" in result.report.validation
    assert result.report.macs_ratio <= 0.7, f"MACs only fell to {result.report.macs_ratio:.1%}"
    with torch.no_grad():
        assert result.module(x).shape == model(x).shape
    check_equivalences(model, x)
