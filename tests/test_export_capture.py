"""The torch.export front end (fxprune/capture_export.py, fxprune/rules/aten.py).

Every capture is checked by the same oracle as the rest of the suite: rewrite(plan) ==
mask(plan) == the original with the removed units' produce slices zeroed, on every
group without normalisation members.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import fxprune
from conftest import exact_plan, max_diff, randomize_bn
from equivalence import zero_produce
from fxprune.analysis import Analyzer
from fxprune.errors import InputError, TraceError
from fxprune.rules.aten import equivalent_of
from fxprune.state import state_of
from fxprune.trace import trace


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


class Block(nn.Module):
    """A pre-norm transformer block with the Hugging Face head split (``view(*x.shape[:-1], h, d)``),
    which torch.fx cannot trace (a Proxy cannot be unpacked)."""

    def __init__(self, d: int = 32, heads: int = 4, mlp: int = 64):
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, mlp), nn.Linear(mlp, d)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln1(x)
        q, k, v = (self.split_heads(p(y)) for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(*x.shape[:-1], -1)
        x = x + self.o(a)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ManyOps(nn.Module):
    """Conv, norms, pooling, resizing, padding, slicing, cat/split, sdpa: ops export emits as ATen."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.fc = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.hardswish(self.bn(self.conv(x)))
        y = F.max_pool2d(F.pad(y, (1, 1, 1, 1)), 2)
        a, b = torch.split(y, 4, dim=1)
        y = torch.cat([b, a], dim=1) + self.gn(y)[:, :, :1].mean()
        y = self.up(F.silu(self.dw(y)))
        y = F.interpolate(y, scale_factor=0.5, mode="nearest")
        t = y.flatten(2).transpose(1, 2)
        t = F.scaled_dot_product_attention(t[:, None], t[:, None], t[:, None])[:, 0]
        return self.fc(F.adaptive_avg_pool1d(t.transpose(1, 2), 1).squeeze(-1))


def assert_exact(model: nn.Module, x, capture: str = "export", gm: torch.fx.GraphModule | None = None):
    """Capture (unless ``gm`` is that capture), analyse, prune every exact group by half; rewrite ==
    mask == zero-produce and the user's own model object rewrites to the same module.
    Returns (graph, pruned GraphModule)."""
    gm = trace(model, x, capture=capture) if gm is None else gm
    graph = Analyzer(gm, False).run()
    plan = exact_plan(graph, 0.5)
    assert plan, "expected at least one prunable group without norm members"
    inputs = state_of(gm).example_inputs
    pruned = fxprune.rewrite(graph.gm, graph, plan)
    with torch.no_grad():
        got = pruned(*inputs)
        masked = fxprune.mask(graph.gm, graph, plan)(*inputs)
        zeroed = zero_produce(graph, plan)(*inputs)
        user = fxprune.rewrite(model, graph, plan)(*inputs)
    for name, want in (("mask", masked), ("zero-produce", zeroed), ("user model", user)):
        diff, scale = max_diff(got, want)
        assert diff <= 1e-4 * scale, f"rewrite != {name}: {diff}"
    removed = sum(p.numel() for p in gm.parameters()) - sum(p.numel() for p in pruned.parameters())
    assert removed > 0, "the plan removed no parameter"
    return graph, pruned


def test_every_aten_op_of_many_ops_maps_to_a_torch_op_and_is_exact():
    torch.manual_seed(0)
    model = randomize_bn(ManyOps()).eval()
    x = torch.randn(1, 3, 16, 16)
    gm = trace(model, x, capture="export")
    left = [n.target for n in gm.graph.nodes if isinstance(n.target, torch._ops.OpOverload)]
    assert left == [], f"ATen ops left without an equivalent: {left}"
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    assert_exact(model, x)


def small_resnet() -> nn.Module:
    """resnet18's blocks, one per stage (residuals, downsampling shortcuts): a fast stand-in."""
    from torchvision.models.resnet import BasicBlock, ResNet
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)


@pytest.fixture(scope="module")
def resnet_export():
    """(model, input, its export capture): a one-block-per-stage resnet at 32x32, random BN statistics."""
    torch.manual_seed(0)
    model = randomize_bn(small_resnet()).eval()
    x = torch.randn(1, 3, 32, 32)
    return model, x, trace(model, x, capture="export")


def test_parameters_keep_their_module_paths_and_names(resnet_export):
    model, x, gm = resnet_export
    assert set(gm.state_dict()) <= set(model.state_dict())
    assert {"conv1.weight", "layer1.0.bn1.running_mean", "fc.bias"} <= set(gm.state_dict())
    stacks = [n.meta.get("nn_module_stack") for n in gm.graph.nodes if n.op == "call_function"]
    assert all(stacks), "nodes lost export's nn_module_stack"
    assert any("layer1.0.conv1" in str(s) for s in stacks)
    assert "front end: torch.export (capture='export')" in state_of(gm).notes[0]


def test_resnet_captured_by_export_is_exact_and_groups_match_fx(resnet_export):
    model, x, gm = resnet_export
    graph, _ = assert_exact(model, x, gm=gm)
    fx_graph = fxprune.analyze(model, x)
    assert sorted((g.id, g.units) for g in graph.prunable_groups) == \
        sorted((g.id, g.units) for g in fx_graph.prunable_groups)


@pytest.mark.slow
def test_resnet18_captured_by_export_is_exact():
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.resnet18(num_classes=10)).eval()
    graph, _ = assert_exact(model, torch.randn(1, 3, 32, 32))
    assert len(graph.prunable_groups) == 12


@pytest.mark.slow
def test_mobilenet_v3_small_captured_by_export_is_exact():
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.mobilenet_v3_small(num_classes=10)).eval()
    assert_exact(model, torch.randn(1, 3, 64, 64))


def test_transformer_block_falls_back_to_export_and_prunes_exactly():
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(2, 5, 32)
    with pytest.raises(TraceError, match="torch.fx"):
        trace(model, x, capture="fx")
    graph, pruned = assert_exact(model, x, capture="auto")
    note = state_of(graph.gm).notes[0]
    assert note.startswith("front end: torch.export (torch.fx could not trace it: cannot trace Block")
    views = [n for n in pruned.graph.nodes if n.target == "view"]
    assert views and any(list(n.args[1]) != [2, 5, 4, 8] for n in views), "view sizes were not rewritten"


def test_compile_reports_the_front_end_and_validates_in_onnxruntime():
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(2, 5, 32)
    result = fxprune.compile(model, x, method="l1", sparsity=0.5)
    assert "onnx ok" in result.report.validation
    assert result.report.params_after < result.report.params_before
    assert "front end: torch.export" in str(result.report)
    with torch.no_grad():
        assert result.module(x).shape == model(x).shape


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(8, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
        return self.out(torch.relu(self.a(x) * scale + self.b(y)))


def test_keyword_inputs_bind_in_forward_order():
    torch.manual_seed(0)
    model = TwoInputs().eval()
    x, y = torch.randn(3, 8), torch.randn(3, 8)
    gm = trace(model, {"y": y, "x": x}, capture="export")
    assert [n.target for n in gm.graph.nodes if n.op == "placeholder"] == ["x", "y"]
    with torch.no_grad():
        assert torch.equal(gm(x, y), model(x, y))
    assert_exact(model, {"y": y, "x": x})


class Indexed(nn.Module):
    """``x[:, idx]`` with a tensor index: ``aten.index.Tensor``, which has no rule."""

    def __init__(self):
        super().__init__()
        self.register_buffer("idx", torch.tensor([3, 1, 0]))
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(y[:, self.idx].mean((2, 3)))


def test_an_aten_op_without_a_rule_is_a_barrier_named_by_op_and_module():
    torch.manual_seed(0)
    model, x = Indexed().eval(), torch.randn(1, 3, 4, 4)
    graph, _ = assert_exact(model, x)
    assert any("aten.index" in what for what in graph.unsupported.values()), graph.unsupported
    assert [g.id for g in graph.prunable_groups] == ["conv1"]  # conv2's outputs are indexed: kept whole
    assert "aten.index.Tensor" in state_of(graph.gm).notes[0]


def test_aten_overloads_with_other_arguments_have_no_equivalent():
    aten = torch.ops.aten
    assert equivalent_of(aten.to.device) is None
    assert equivalent_of(aten.upsample_nearest2d.default) is None
    assert equivalent_of(aten.index.Tensor) is None
    assert equivalent_of(aten.conv2d.default).target is F.conv2d


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def test_a_model_neither_front_end_captures_names_both_attempts():
    with pytest.raises(TraceError) as failed:
        trace(DataDependent(), torch.randn(2, 4))
    message = str(failed.value)
    assert "torch.fx" in message and "torch.export failed too" in message and "Hint:" in message
    with pytest.raises(TraceError, match="cannot capture DataDependent with torch.export"):
        trace(DataDependent(), torch.randn(2, 4), capture="export")


def test_unknown_capture_is_an_input_error():
    with pytest.raises(InputError, match="capture must be one of"):
        trace(TwoInputs(), (torch.randn(1, 8), torch.randn(1, 8)), capture="dynamo")


def test_the_users_model_is_not_modified():
    model = randomize_bn(ManyOps()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trace(model, torch.randn(2, 3, 16, 16), capture="export")
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_an_exported_programs_module_is_captured_again_not_crashed_on():
    torch.manual_seed(0)
    model, x = randomize_bn(ManyOps()).eval(), torch.randn(1, 3, 16, 16)
    exported = torch.export.export(model, (x,), strict=False).module()
    graph, _ = assert_exact(exported, x, capture="auto")
    assert "ATen graph" in state_of(graph.gm).notes[0]


class Conv1D(nn.Module):
    """Hugging Face GPT-2's Conv1D: ``addmm(bias, x2d, weight)`` with a (in, out) weight."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.2)
        self.bias = nn.Parameter(torch.randn(n_out) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return out.view(x.size()[:-1] + (self.weight.shape[1],))


class GPT2Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc, self.c_proj = Conv1D(16, 32), Conv1D(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


def test_addmm_of_a_conv1d_is_split_into_mm_and_add_and_prunes_exactly():
    torch.manual_seed(0)
    model, x = GPT2Mlp().eval(), torch.randn(2, 3, 16)
    graph, pruned = assert_exact(model, x)
    assert [g.id for g in graph.prunable_groups] and all(g.units == 32 for g in graph.prunable_groups)
    assert pruned.get_parameter("c_fc.weight").shape[1] < 32


@pytest.mark.slow
def test_a_tiny_hugging_face_llama_prunes_exactly():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=128, vocab_size=100, num_hidden_layers=1,
                                      max_position_embeddings=32, use_cache=False)
    model = transformers.LlamaModel(config).eval()
    ids = torch.randint(0, 100, (1, 8))
    graph, _ = assert_exact(model, {"input_ids": ids}, capture="auto")
    assert "torch.export" in state_of(graph.gm).notes[0]


def test_a_saved_export_capture_is_rebuilt_by_the_same_front_end(tmp_path):
    """The .fxp records the front end; load replays it (an fx rebuild of a Conv1D MLP differs)."""
    torch.manual_seed(0)
    model, x = GPT2Mlp().eval(), torch.randn(2, 3, 16)
    result = fxprune.compile(model, x, "l1", 0.5, capture="export", validate=False)
    path = tmp_path / "mlp.fxp"
    fxprune.save(result, path)
    assert torch.load(path, weights_only=True)["capture"] == "export"
    loaded = fxprune.load(path, model=model)
    with torch.no_grad():
        assert torch.allclose(loaded(x), result.module.eval()(x), atol=1e-6)
