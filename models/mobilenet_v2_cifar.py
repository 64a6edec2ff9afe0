"""MobileNetV2 (Sandler et al., 2018) adapted to 32x32 inputs."""
from __future__ import annotations

import torch
from torch import nn

#: (expansion t, output channels c, repeats n, first stride s) per stage; strides of the
#: stem and the second stage are 1 instead of ImageNet's 2 (the CIFAR adaptation).
CIFAR_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor``, never going down by more than 10%."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def conv_bn_relu(in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1) -> nn.Sequential:
    """Conv (no bias) + BN + ReLU6."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_planes),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when shapes match."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(in_planes * expand_ratio))
        self.use_residual = stride == 1 and in_planes == out_planes
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu(in_planes, hidden, kernel_size=1))
        layers += [
            conv_bn_relu(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_planes, 1, bias=False),
            nn.BatchNorm2d(out_planes),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """Stem conv 32 (stride 1) -> 17 inverted residuals -> 1x1 conv 1280 -> GAP -> dropout -> linear."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width_mult: float = 1.0,
                 dropout: float = 0.2):
        super().__init__()
        channels = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [conv_bn_relu(in_channels, channels, stride=1)]
        for t, c, n, s in CIFAR_SETTING:
            out = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        features.append(conv_bn_relu(channels, last, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet_v2(in_channels: int = 3, num_classes: int = 10, width_mult: float = 1.0,
                 dropout: float = 0.2) -> MobileNetV2:
    """MobileNetV2 for CIFAR — ITPCC supplement (003), Sec. A.4: MobileNetV2 on CIFAR-10/CIFAR-100.

    As Phan's PyTorch_CIFAR10 ``mobilenet_v2`` (the source of the submodular paper's VGG-11):
    stride-1 stem and stride-1 second stage, so 32x32 inputs reach the head at 4x4 (28x28
    at 4x4 too). Channels are scaled by ``width_mult`` and rounded to multiples of 8.
    Parameters (10 classes, width 1.0): 2,236,682 for 3x32x32, 2,236,106 for 1x28x28.
    """
    return MobileNetV2(in_channels, num_classes, width_mult, dropout)
