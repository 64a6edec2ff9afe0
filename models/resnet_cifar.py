"""He et al. (2016) CIFAR ResNets: ResNet-20/56/110 with projection (option B) shortcuts."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 conv, padding 1, no bias (BN follows)."""
    return nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)


def _shortcut(in_planes: int, planes: int, stride: int) -> nn.Module:
    """Identity, or a 1x1-conv+BN projection (option B) when the shape changes."""
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(in_planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv 16 -> 3 stages of ``blocks`` basic blocks (16/32/64 channels, strides 1/2/2) -> GAP -> linear.

    Module names follow ShrinkBench's ``cifar_resnet`` (``conv1, bn1, layer1..3, linear``),
    which the submodular paper's tables use (``layer1.0.conv1`` ...).
    """

    def __init__(self, blocks: int, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(in_channels, 16), nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks, 1)
        self.layer2 = self._stage(16, 32, blocks, 2)
        self.layer3 = self._stage(32, 64, blocks, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(self.avgpool(out), 1))


def resnet(depth: int, in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """A CIFAR ResNet of ``depth`` = 6n + 2 layers (n basic blocks per stage)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
    return CifarResNet((depth - 2) // 6, in_channels, num_classes)


def resnet20(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """ResNet-20 — He et al. (2016), Table 6: ResNet-20 on CIFAR-10; a small zoo baseline (not in papers 001-003).

    Option B (1x1-conv+BN projection) shortcuts at the two downsampling blocks, so that
    every shortcut is a prunable conv. Parameters (10 classes): 272,474 for 3x32x32
    (option A's 0.27M = 269,722 plus 2,752 for the two projections), 272,186 for 1x28x28.
    """
    return resnet(20, in_channels, num_classes)


def resnet56(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """ResNet-56 — submodular paper (002), Table 4: ResNet56 on CIFAR-10 (also Table 1, Fig. 1 middle);
    ITPCC supplement (003), Fig. 1a and Sec. A.4: ResNet56 on CIFAR-10.

    9 blocks per stage, option B projection shortcuts (the paper's ShrinkBench model uses
    option A). Parameters (10 classes): 855,770 for 3x32x32 (option A's 0.85M = 853,018
    plus 2,752), 855,482 for 1x28x28.
    """
    return resnet(56, in_channels, num_classes)


def resnet110(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """ResNet-110 — ITPCC supplement (003), Fig. 1b/1c and Sec. A.4: ResNet110 on CIFAR-10/CIFAR-100.

    18 blocks per stage, option B projection shortcuts. Parameters (10 classes): 1,730,714 for 3x32x32
    (option A's 1.7M = 1,727,962 plus 2,752), 1,730,426 for 1x28x28.
    """
    return resnet(110, in_channels, num_classes)
