"""MAC counts do not depend on which attention kernel torch runs, and match counts by hand.

torch's FlopCounterMode counts a fused attention kernel only if its release has a formula
for it (torch 2.14 counts the CPU flash kernel as 0) and never sees inside the fused
MultiheadAttention / TransformerEncoderLayer fast paths; ``fxprune.flops`` fixes both.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

import fxprune
from fxprune.cost import CostModel
from fxprune.flops import attention_fast_path_off, attention_flop_formulas, flop_counter, sdpa_flops
from fxprune.report import count_macs

aten = torch.ops.aten


class _OpLog(TorchDispatchMode):
    """Records the name of every aten op that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func._overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _ops_run(module: nn.Module, *inputs: torch.Tensor) -> list[str]:
    """The aten ops ``module`` runs in eval mode without grad (the setting of ``count_macs``)."""
    log = _OpLog()
    with torch.no_grad(), log:
        module.eval()(*inputs)
    return log.ops


class Sdpa(nn.Module):
    """A raw ``F.scaled_dot_product_attention`` call on q, k, v given as inputs."""

    def __init__(self, gqa: bool = False) -> None:
        super().__init__()
        self.gqa = gqa

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.gqa:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return F.scaled_dot_product_attention(q, k, v)


# (batch, query heads, query length, head dim) / (batch, kv heads, kv length, head dim) / value head dim
SDPA_SHAPES = {
    "self": ((2, 4, 6, 8), (2, 4, 6, 8), 8),
    "cross_lengths": ((2, 4, 5, 8), (2, 4, 7, 8), 8),
    "value_dim": ((2, 4, 5, 8), (2, 4, 7, 8), 6),
    "gqa": ((2, 4, 5, 8), (2, 2, 7, 8), 8),
    "extra_batch_dims": ((3, 2, 4, 5, 8), (3, 2, 4, 7, 8), 8),
}


def _sdpa_case(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...], int]:
    """The module, its (q, k, v) and the MACs by hand: every query row times every key, E + Ev each."""
    q_shape, k_shape, ev = SDPA_SHAPES[name]
    q, k = torch.randn(q_shape), torch.randn(k_shape)
    v = torch.randn(*k_shape[:-1], ev)
    b_h_lq = 1
    for d in q_shape[:-1]:
        b_h_lq *= d
    return Sdpa(gqa=name == "gqa"), (q, k, v), b_h_lq * k_shape[-2] * (q_shape[-1] + ev)


@pytest.mark.parametrize("name", list(SDPA_SHAPES))
def test_sdpa_macs_equal_by_hand_on_default_and_math_backends(name: str) -> None:
    model, inputs, expected = _sdpa_case(name)
    assert count_macs(model, inputs) == expected
    with sdpa_kernel(SDPBackend.MATH):
        assert count_macs(model, inputs) == expected


def test_default_cpu_kernel_is_fused_and_math_is_bmm() -> None:
    """The test above compares two different kernels, not one kernel with itself."""
    model, inputs, _ = _sdpa_case("self")
    default = _ops_run(model, *inputs)
    assert any(op.startswith("_scaled_dot_product_") for op in default), default
    with sdpa_kernel(SDPBackend.MATH):
        math_ops = _ops_run(model, *inputs)
    assert "bmm" in math_ops and not any(op.startswith("_scaled_dot_product_") for op in math_ops)


@pytest.mark.parametrize("name", ["self", "cross_lengths"])  # torch 2.6's CPU flash refuses GQA
def test_forced_cpu_flash_kernel_counts_like_math(name: str) -> None:
    model, inputs, expected = _sdpa_case(name)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        assert count_macs(model, inputs) == expected


def test_every_fused_sdpa_kernel_of_this_torch_has_a_formula() -> None:
    """Every ``aten::_scaled_dot_product_*`` kernel except the math one (it decomposes into bmm)."""
    names = {n.split(".")[0][len("aten::"):] for n in torch._C._dispatch_get_all_op_names()}
    kernels = {n for n in names if n.startswith("_scaled_dot_product_") and n != "_scaled_dot_product_attention_math"}
    covered = {op.__name__ for op in attention_flop_formulas()}
    assert "_scaled_dot_product_flash_attention_for_cpu" in kernels
    assert kernels <= covered, sorted(kernels - covered)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_formula_on_shapes_and_nested_tensors() -> None:
    """Kernels that run only on GPUs get the same formula: check it on shapes and ragged batches."""
    assert sdpa_flops((2, 4, 5, 8), (2, 2, 7, 8), (2, 2, 7, 6)) == 2 * (2 * 4 * 5 * 7) * (8 + 6)
    lengths = (3, 5)
    q = torch.nested.nested_tensor([torch.randn(4, n, 8) for n in lengths])
    v = torch.nested.nested_tensor([torch.randn(4, n, 6) for n in lengths])
    assert sdpa_flops(q, q, v) == sum(2 * 4 * n * n * (8 + 6) for n in lengths)


def test_fused_backward_kernel_is_counted_with_recomputation() -> None:
    q = torch.randn(2, 4, 5, 8, requires_grad=True)
    k, v = torch.randn(2, 4, 7, 8, requires_grad=True), torch.randn(2, 4, 7, 8, requires_grad=True)
    counter = flop_counter()
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), counter:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    scores = 2 * 4 * 5 * 7
    assert counts[aten._scaled_dot_product_flash_attention_for_cpu] == 2 * scores * (8 + 8)
    assert counts[aten._scaled_dot_product_flash_attention_for_cpu_backward] == 2 * scores * (3 * 8 + 2 * 8)


class MhaModel(nn.Module):
    """Linear -> nn.MultiheadAttention (self- or cross-attention) -> Linear."""

    def __init__(self, embed: int = 16, heads: int = 4, kdim: int | None = None, need_weights: bool = False):
        super().__init__()
        self.inp = nn.Linear(8, embed)
        self.attn = nn.MultiheadAttention(embed, heads, batch_first=True, kdim=kdim, vdim=kdim)
        self.out = nn.Linear(embed, 4)
        self.need_weights = need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(self.attn(h, h, h, need_weights=self.need_weights)[0])


class MhaCrossModel(MhaModel):
    """Linear -> nn.MultiheadAttention from the tokens to ``memory`` -> Linear."""

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self.out(self.attn(self.inp(x), memory, memory, need_weights=self.need_weights)[0])


def _mha_by_hand(batch: int, lq: int, lk: int, embed: int, kdim: int) -> int:
    """inp + q/k/v projections + q k^T + scores v + out projection + out."""
    inp = batch * lq * 8 * embed
    projections = batch * (lq * embed * embed + 2 * lk * kdim * embed)
    attention = 2 * batch * lq * lk * embed  # heads x head_dim = embed
    return inp + projections + attention + batch * lq * embed * embed + batch * lq * embed * 4


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_self_attention_counted_whole_on_every_path(need_weights: bool) -> None:
    model, x = MhaModel(need_weights=need_weights), torch.randn(2, 5, 8)
    expected = _mha_by_hand(2, 5, 5, 16, 16)
    assert count_macs(model, x) == expected
    with sdpa_kernel(SDPBackend.MATH):
        assert count_macs(model, x) == expected
    assert count_macs(model.train(), x) == expected  # training mode: the op-by-op path
    assert model.training


def test_fast_path_runs_by_default_and_is_restored_after_counting() -> None:
    model, x = MhaModel(), torch.randn(2, 5, 8)
    assert "_native_multi_head_attention" in _ops_run(model, x)
    count_macs(model, x)
    assert torch.backends.mha.get_fastpath_enabled()
    with pytest.raises(RuntimeError), attention_fast_path_off():
        assert not torch.backends.mha.get_fastpath_enabled()
        raise RuntimeError("restored on errors too")
    assert torch.backends.mha.get_fastpath_enabled()


def test_multihead_cross_attention_with_other_kv_dims() -> None:
    model, x, memory = MhaCrossModel(kdim=12), torch.randn(2, 5, 8), torch.randn(2, 9, 12)
    assert count_macs(model, (x, memory)) == _mha_by_hand(2, 5, 9, 16, 12)


def test_transformer_encoder_layer_fast_path_is_counted() -> None:
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, batch_first=True)
    x = torch.randn(2, 5, 16)
    assert "_transformer_encoder_layer_fwd" in _ops_run(layer, x)
    tokens, embed = 2 * 5, 16
    expected = tokens * (4 * embed * embed + 2 * embed * 32) + 2 * 2 * 5 * 5 * embed
    assert count_macs(layer, x) == expected


class ProjectedCrossAttention(nn.Module):
    """q from x (B, Lq, 12), k and v from memory (B, Lk, 12): 4 heads of 4, SDPA, output projection."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(12, 16), nn.Linear(12, 16), nn.Linear(12, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        (b, lq, _), lk = x.shape, memory.shape[1]
        q = self.q(x).view(b, lq, 4, 4).transpose(1, 2)
        k, v = (m(memory).view(b, lk, 4, 4).transpose(1, 2) for m in (self.k, self.v))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, lq, 16))


def test_cost_model_measures_attention_like_count_macs() -> None:
    model, x, memory = ProjectedCrossAttention(), torch.randn(2, 5, 12), torch.randn(2, 7, 12)
    expected = 2 * 5 * 12 * 16 + 2 * (2 * 7 * 12 * 16) + 2 * 4 * 5 * 7 * (4 + 4) + 2 * 5 * 16 * 3
    graph = fxprune.analyze(model, (x, memory))
    assert CostModel.build(graph, (x, memory)).full_macs == count_macs(model, (x, memory)) == expected
    mha, x = MhaModel(), torch.randn(2, 5, 8)
    assert CostModel.build(fxprune.analyze(mha, x), x).full_macs == count_macs(mha, x) == _mha_by_hand(2, 5, 5, 16, 16)


def _vit_macs_by_hand(image: int, patch: int, layers: int, hidden: int, mlp: int, classes: int) -> int:
    """torchvision VisionTransformer: patch conv, per layer qkv + attention + out + MLP, head."""
    patches = (image // patch) ** 2
    tokens = patches + 1  # + class token
    conv = patches * hidden * 3 * patch * patch
    per_layer = tokens * hidden * (3 * hidden + hidden + 2 * mlp) + 2 * tokens * tokens * hidden
    return conv + layers * per_layer + hidden * classes


def test_vit_macs_are_the_hand_count() -> None:
    """The small ViT of test_torchvision: 1_385_344 MACs. torch 2.14's plain FlopCounterMode
    gave 754_304 (both MultiheadAttention fast paths counted as 0, 45.6% of the model)."""
    config = dict(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10)
    model = torchvision.models.VisionTransformer(**config)
    expected = _vit_macs_by_hand(32, 8, 2, 64, 128, 10)
    assert expected == 1_385_344
    assert count_macs(model, torch.randn(1, 3, 32, 32)) == expected
    with sdpa_kernel(SDPBackend.MATH):
        assert count_macs(model, torch.randn(1, 3, 32, 32)) == expected
