"""CIFAR VGG networks: VGG-11 of the submodular paper (002) and VGG-16-BN of the BEP paper (001)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: Conv widths per configuration; "M" is a 2x2 max-pool.
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


def make_features(config: Sequence[int | str], in_channels: int, batch_norm: bool = True) -> nn.Sequential:
    """3x3 conv(+BN)+ReLU stacks and 2x2 max-pools.

    Pools use ``ceil_mode=True``: identical to floor mode for 32x32 inputs (32->16->8->4->2->1)
    and keeps 28x28 inputs from collapsing (28->14->7->4->2->1).
    """
    layers: list[nn.Module] = []
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            continue
        layers.append(nn.Conv2d(in_channels, int(v), 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU(inplace=True))
        in_channels = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``features`` -> global average pool (1x1) -> flatten -> ``classifier``."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _mlp_classifier(hidden: int, num_classes: int, dropout: float = 0.5) -> nn.Sequential:
    """Linear(512, h)-ReLU-Dropout-Linear(h, h)-ReLU-Dropout-Linear(h, classes)."""
    return nn.Sequential(
        nn.Linear(512, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def vgg11(in_channels: int = 3, num_classes: int = 10, hidden: int = 128, batch_norm: bool = True) -> VGG:
    """VGG-11 — submodular paper (002), Table 5: VGG11 on CIFAR-10 (also Tables 1-2, Fig. 1 right).

    The paper uses Phan's PyTorch_CIFAR10 ``vgg11_bn`` (configuration A with BN, global
    average pool to 1x1) with the two hidden classifier layers cut from 4096 to 128 units
    (``hidden``). Module names match the paper's tables: convs are ``features.0, 4, 8, 11,
    15, 18, 22, 25``, the linears ``classifier.0, 3, 6``. Parameters (10 classes):
    9,309,450 for 3x32x32, 9,308,298 for 1x28x28 (only conv1's input channels differ).
    """
    return VGG(make_features(CONFIGS["vgg11"], in_channels, batch_norm),
               _mlp_classifier(hidden, num_classes))


def vgg16_bn(in_channels: int = 3, num_classes: int = 10) -> VGG:
    """VGG-16 with BN — BEP paper (001), Table F1: VGG-16 on CIFAR-10/CIFAR-100 (App. G.1 adds BN).

    The common CIFAR variant: 13 3x3 conv+BN+ReLU layers (configuration D), five max-pools,
    global average pool and a single Linear(512, ``num_classes``) classifier (~313M MACs,
    matching the paper's 6.6e8 inference FLOPs). Parameters (10 classes): 14,728,266 for
    3x32x32, 14,727,114 for 1x28x28 (only conv1's input channels differ).
    """
    return VGG(make_features(CONFIGS["vgg16"], in_channels, True),
               nn.Sequential(nn.Linear(512, num_classes)))
