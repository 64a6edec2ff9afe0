"""LeNet-5 (LeCun et al., 1998), the MNIST model of the submodular paper (002)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import conv_out, default_input_size, pool_out


class LeNet5(nn.Module):
    """conv 6@5x5 -> max-pool 2 -> conv 16@5x5 -> max-pool 2 -> fc 120 -> fc 84 -> fc ``num_classes``.

    ReLU activations and 2x2 max-pooling (the modern variant, not the original tanh and
    trainable sub-sampling). The first conv is padded so that the map entering it is
    32x32 (``padding=2`` for 28x28 inputs, the classic MNIST variant; none for 32x32), so
    ``fc1`` sees 16x5x5 features for both. Layer names follow the paper's Table 1
    (``conv1, conv2, fc1, fc2``; ``fc3`` is the classifier).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: int | None = None):
        super().__init__()
        size = default_input_size(in_channels, input_size)
        padding = max(0, (32 - size) // 2)
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        side = pool_out(conv_out(pool_out(conv_out(size, 5, padding)), 5))
        if side < 1:
            raise ValueError(f"input_size {size} is too small for LeNet-5")
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def lenet5(in_channels: int = 3, num_classes: int = 10, input_size: int | None = None) -> LeNet5:
    """LeNet-5 — submodular paper (002), Table 3: LeNet on MNIST (also Table 1, Fig. 1 left).

    ``input_size`` defaults to 28 for ``in_channels=1`` and 32 otherwise. Parameters
    (10 classes): 61,706 for 1x28x28 and 62,006 for 3x32x32 (only conv1's input
    channels differ: 6*5*5*2 = 300 weights).
    """
    return LeNet5(in_channels, num_classes, input_size)
