"""Small helpers shared by the zoo's constructors."""
from __future__ import annotations


def default_input_size(in_channels: int, input_size: int | None) -> int:
    """``input_size`` if given, else 28 for 1-channel (MNIST-like) and 32 otherwise (CIFAR-like)."""
    if input_size is not None:
        return input_size
    return 28 if in_channels == 1 else 32


def conv_out(size: int, kernel: int, padding: int = 0, stride: int = 1) -> int:
    """Spatial size after a convolution (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def pool_out(size: int, kernel: int = 2) -> int:
    """Spatial size after a non-overlapping max-pool (floor mode)."""
    return size // kernel
