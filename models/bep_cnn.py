"""The small-scale CNN of the BEP paper (001), Fig. 2."""
from __future__ import annotations

import torch
from torch import nn

from ._common import conv_out, default_input_size, pool_out


def _conv_pair(in_channels: int, width: int, second_padding: int) -> list[nn.Module]:
    """Two 3x3 conv+ReLU layers, 2x2 max-pool and Dropout(0.25)."""
    return [
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=second_padding), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.25),
    ]


def _features_side(size: int, second_padding: int) -> int:
    """Spatial size after both conv pairs."""
    for _ in range(2):
        size = pool_out(conv_out(conv_out(size, 3, 1), 3, second_padding))
    return size


class BEPCNN(nn.Module):
    """Conv(32)-Conv(32)-MaxPool-Dropout-Conv(64)-Conv(64)-MaxPool-Dropout-Dense(512)-Dropout-Dense(classes).

    3x3 convs with ReLU, 2x2 max-pooling, Dropout 0.25/0.25/0.5 (as in the Keras example
    the paper links). ``same_padding=True`` (default) pads every conv by 1; ``False`` leaves
    the second conv of each pair unpadded, exactly like that Keras example.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: int | None = None,
                 same_padding: bool = True):
        super().__init__()
        size = default_input_size(in_channels, input_size)
        second_padding = 1 if same_padding else 0
        side = _features_side(size, second_padding)
        if side < 1:
            raise ValueError(f"input_size {size} is too small for the BEP CNN")
        self.features = nn.Sequential(*_conv_pair(in_channels, 32, second_padding),
                                      *_conv_pair(32, 64, second_padding))
        self.classifier = nn.Sequential(
            nn.Linear(64 * side * side, 512), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def bep_cnn(in_channels: int = 3, num_classes: int = 10, input_size: int | None = None,
            same_padding: bool = True) -> BEPCNN:
    """BEP paper (001), Fig. 2 — the small-scale CNN of Tables 2, 3 and 4 (CIFAR-10/100).

    ``input_size`` defaults to 28 for ``in_channels=1`` and 32 otherwise; the Dense(512)
    input is 64 * (input_size/4)^2 with ``same_padding``. Parameters (10 classes):
    2,168,362 for 3x32x32 and 1,676,266 for 1x28x28 (conv1's input channels and the
    Dense(512) input, 4096 vs 3136, differ). ``same_padding=False`` (the Keras example)
    gives 1,250,858 for 3x32x32, the count of Keras' ``cifar10_cnn``.
    """
    return BEPCNN(in_channels, num_classes, input_size, same_padding)
