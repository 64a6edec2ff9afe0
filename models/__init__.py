"""The papers' model zoo (LeNet-5, the BEP CNN, CIFAR VGG/ResNets, MobileNetV2): see issue #4."""
