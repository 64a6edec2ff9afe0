"""The papers' model zoo (LeNet-5, the BEP CNN, CIFAR VGG/ResNets, MobileNetV2): see issue #4.

Every constructor takes ``in_channels`` (default 3) and ``num_classes`` (default 10) and
accepts both 1x28x28 (MNIST) and 3x32x32 (CIFAR) inputs::

    import fxprune.models as zoo
    model = zoo.get("resnet56", num_classes=100)
    zoo.list()  # ['bep_cnn', 'lenet5', 'mobilenet_v2_cifar', ...]
"""
from __future__ import annotations

import builtins
from collections.abc import Callable

from torch import nn

from fxprune.errors import InputError

from .bep_cnn import BEPCNN, bep_cnn
from .lenet5 import LeNet5, lenet5
from .mobilenet_v2_cifar import MobileNetV2, mobilenet_v2

mobilenet_v2_cifar = mobilenet_v2
from .resnet_cifar import CifarResNet, resnet20, resnet56, resnet110
from .vgg import VGG, vgg11, vgg16_bn

__all__ = [
    "BEPCNN", "CifarResNet", "LeNet5", "MobileNetV2", "VGG", "REGISTRY", "bep_cnn", "get", "lenet5",
    "mobilenet_v2", "mobilenet_v2_cifar", "resnet20", "resnet56", "resnet110", "vgg11", "vgg16_bn",
]  # ``list`` is left out so that ``from fxprune.models import *`` cannot shadow the builtin

#: Model name -> constructor.
REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "lenet5": lenet5,
    "bep_cnn": bep_cnn,
    "vgg11": vgg11,
    "vgg16_bn": vgg16_bn,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "mobilenet_v2_cifar": mobilenet_v2,
}


def list() -> builtins.list[str]:  # noqa: A001 - the registry's public name
    """The names ``get`` accepts, sorted."""
    return sorted(REGISTRY)


def get(name: str, **kwargs: object) -> nn.Module:
    """Build the zoo model ``name`` with ``kwargs`` (``in_channels``, ``num_classes``, model options).

    Raises ``InputError`` naming the available models when ``name`` is unknown.
    """
    if name not in REGISTRY:
        raise InputError(f"unknown model {name!r}; available: {', '.join(list())}")
    model = REGISTRY[name](**kwargs)
    model._fxprune_name, model._fxprune_kwargs = name, dict(kwargs)  # lets fxprune.save record the source
    return model
