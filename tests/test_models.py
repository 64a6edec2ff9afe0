"""The papers' model zoo (``fxprune.models``): shapes, exact parameter counts, registry, and compile."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fxprune
import fxprune.models as zoo
from fxprune.errors import InputError

NAMES = ["bep_cnn", "lenet5", "mobilenet_v2_cifar", "resnet110", "resnet20", "resnet56", "vgg11", "vgg16_bn"]
SIDE = {1: 28, 3: 32}  # in_channels -> input side: MNIST 1x28x28, CIFAR 3x32x32


pytestmark = pytest.mark.usefixtures("one_thread")


# Expected parameter counts for in_channels=3, num_classes=10, worked out from the layer sizes.
# conv(i,o,k) = i*o*k*k (+o bias), bn(c) = 2c, linear(i,o) = i*o + o.
EXPECTED_3CH = {
    # conv1 3*6*25+6=456, conv2 6*16*25+16=2416, fc1 16*5*5*120+120=48120, fc2 120*84+84=10164,
    # fc3 84*10+10=850 -> 62006
    "lenet5": 62006,
    # conv 3*32*9+32=896, 32*32*9+32=9248, 32*64*9+64=18496, 64*64*9+64=36928,
    # dense 64*8*8*512+512=2097664, dense 512*10+10=5130 -> 2168362
    "bep_cnn": 2168362,
    # convs (bias) 1792+73856+295168+590080+1180160+3*2359808=9220480, bn 2*(64+128+256+256+4*512)=5504,
    # classifier 512*128+128=65664, 128*128+128=16512, 128*10+10=1290 -> 9309450
    "vgg11": 9309450,
    # convs (bias) 1792+36928+73856+147584+295168+2*590080+1180160+5*2359808=14710464,
    # bn 2*(2*64+2*128+3*256+6*512)=8448, linear 512*10+10=5130 -> 14728266
    "vgg16_bn": 14728266,
    # block(w) = 2*9*w*w + 4w: 4672 (w=16), 18560 (w=32), 73984 (w=64); the first block of stages 2/3 has
    # conv1 16->32 / 32->64 (-4608 / -18432) and a 1x1 projection + bn (16*32+64=576 / 32*64+128=2176);
    # stem 3*16*9+32=464, linear 64*10+10=650.  n blocks: 97216n - 23040 + 2752 + 1114
    "resnet20": 97216 * 3 - 23040 + 2752 + 1114,    # 272474 (option A: 269722)
    "resnet56": 97216 * 9 - 23040 + 2752 + 1114,    # 855770 (option A: 853018)
    "resnet110": 97216 * 18 - 23040 + 2752 + 1114,  # 1730714 (option A: 1727962)
    # stem 3*32*9+bn64=928; inverted residuals (expand 1x1+bn, dw 3x3+bn, project 1x1+bn) for the
    # CIFAR setting 16x1, 24x2, 32x3, 64x4, 96x3, 160x3, 320x1 = 1,811,712 (see _mobilenet_blocks);
    # head 320*1280+2560=412160; linear 1280*10+10=12810 -> 2236682
    "mobilenet_v2_cifar": 2236682,
}


def _mobilenet_blocks() -> int:
    """Inverted-residual parameters of MobileNetV2's CIFAR setting, from (t, c, n) alone."""
    total, cin = 0, 32
    for t, c, n in [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)]:
        for _ in range(n):
            hidden = cin * t
            expand = 0 if t == 1 else cin * hidden + 2 * hidden
            total += expand + hidden * 9 + 2 * hidden + hidden * c + 2 * c
            cin = c
    return total


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def build(name: str, in_channels: int, **kwargs: object) -> nn.Module:
    return zoo.get(name, in_channels=in_channels, **kwargs).eval()


def example(in_channels: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, in_channels, SIDE[in_channels], SIDE[in_channels])


@pytest.mark.parametrize("in_channels", [3, 1])
@pytest.mark.parametrize("name", NAMES)
def test_output_shape(name: str, in_channels: int) -> None:
    model = build(name, in_channels, num_classes=7)
    with torch.no_grad():
        assert model(example(in_channels)).shape == (2, 7)


@pytest.mark.parametrize("name", NAMES)
def test_param_count_3ch(name: str) -> None:
    assert n_params(build(name, 3)) == EXPECTED_3CH[name]


def test_mobilenet_block_arithmetic() -> None:
    assert 928 + _mobilenet_blocks() + 412160 + 12810 == EXPECTED_3CH["mobilenet_v2_cifar"]


@pytest.mark.parametrize("name", NAMES)
def test_1ch_differs_only_by_first_conv_input(name: str) -> None:
    # bep_cnn's Dense(512) input follows input_size: pin it to 32 to compare like with like.
    extra = {"input_size": 32} if name == "bep_cnn" else {}
    rgb, gray = build(name, 3, **extra), build(name, 1, **extra)
    conv = first_conv(rgb)
    k = conv.kernel_size[0] * conv.kernel_size[1]
    assert n_params(gray) == EXPECTED_3CH[name] - 2 * conv.out_channels * k
    shapes = {n: p.shape for n, p in rgb.state_dict().items()}
    changed = {n for n, p in gray.state_dict().items() if p.shape != shapes[n]}
    assert changed == {next(n for n, p in rgb.named_parameters() if p is conv.weight)}
    assert first_conv(gray).in_channels == 1


def test_bep_cnn_dense_follows_input_size() -> None:
    # 1x28x28: conv1 1*32*9+32=320 and dense 64*7*7*512+512=1606144 -> 2168362 - 576 - 960*512 = 1676266
    assert n_params(build("bep_cnn", 1)) == 1676266
    # Keras' cifar10_cnn (unpadded second convs): dense 64*6*6*512+512 -> 1250858
    assert n_params(build("bep_cnn", 3, same_padding=False)) == 1250858


def test_lenet5_pads_28x28_to_32x32() -> None:
    assert first_conv(build("lenet5", 1)).padding == (2, 2)
    assert first_conv(build("lenet5", 3)).padding == (0, 0)


def test_resnet_uses_projection_shortcuts() -> None:
    model = build("resnet20", 3)
    projections = [n for n, m in model.named_modules() if n.endswith("shortcut") and isinstance(m, nn.Sequential)]
    assert projections == ["layer2.0.shortcut", "layer3.0.shortcut"]
    with pytest.raises(ValueError):
        zoo.resnet_cifar.resnet(21)


def test_mobilenet_width_mult() -> None:
    model = build("mobilenet_v2_cifar", 3, width_mult=0.5)
    assert first_conv(model).out_channels == 16 and n_params(model) < EXPECTED_3CH["mobilenet_v2_cifar"]


def test_registry() -> None:
    assert zoo.list() == NAMES
    model = zoo.get("resnet56", in_channels=1, num_classes=100)
    assert isinstance(model, zoo.CifarResNet) and model.linear.out_features == 100
    assert all(getattr(zoo, name) is zoo.REGISTRY[name] for name in NAMES)  # constructors re-exported


def test_registry_unknown_name() -> None:
    with pytest.raises(InputError, match="available: bep_cnn, lenet5"):
        zoo.get("resnet18")


@pytest.mark.parametrize("in_channels", [3, 1])
@pytest.mark.parametrize("name", NAMES)
def test_compile_l1(name: str, in_channels: int) -> None:
    result = fxprune.compile(build(name, in_channels), example(in_channels), method="l1", sparsity=0.5)
    report = result.report
    assert "onnx ok" in report.validation
    assert report.macs_after < report.macs_before and report.params_after < report.params_before
