"""Exact removal (issue 14): rewrite == the original with the removed produce slices zeroed, also where
removed units reach their readers as non-zero constants (bias compensation, fxprune.compensate); groups
where that cannot hold are fixed with a reason (fxprune.removal); subclasses that override forward get
no inherited rule; functional normalisations honour their statistics arguments."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from equivalence import compare, zero_produce
from fxprune.errors import UnsupportedOpError
from fxprune.removal import CONST, ZERO
from fxprune.state import state_of

ACTIVATIONS = {
    "sigmoid": torch.sigmoid, "exp": torch.exp, "plus_one": lambda t: t + 1.0, "cos": torch.cos,
    "softplus": F.softplus, "hardsigmoid": F.hardsigmoid, "clamp_min": lambda t: t.clamp(min=0.25),
    "relu": F.relu, "tanh": torch.tanh, "sub_from": lambda t: 2.0 - t,
}


def _reader(kind: str) -> nn.Module:
    return {
        "conv_pad": nn.Conv2d(6, 5, 3, padding=1),
        "conv_valid": nn.Conv2d(6, 5, 3),
        "conv_stride_nobias": nn.Conv2d(6, 5, 3, stride=2, padding=2, dilation=2, bias=False),
        "conv_grouped": nn.Conv2d(6, 4, 3, padding=1, groups=2),
        "conv_reflect": nn.Conv2d(6, 5, 3, padding=1, padding_mode="reflect"),
        "conv_same": nn.Conv2d(6, 5, 3, padding="same"),
        "conv_transposed": nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1),
        "conv_transposed_grouped": nn.ConvTranspose2d(6, 4, 3, stride=2, groups=2),
    }[kind]


class ConvChain(nn.Module):
    """conv -> activation -> reader: the producer's units reach the reader through the activation."""

    def __init__(self, act, reader: nn.Module):
        super().__init__()
        self.producer = nn.Conv2d(3, 6, 3, padding=1)
        self.act = act
        self.reader = reader

    def forward(self, x):
        return self.reader(self.act(self.producer(x)))


class LinearChain(nn.Module):
    def __init__(self, act, functional: bool):
        super().__init__()
        self.producer = nn.Linear(4, 6)
        self.act = act
        self.functional = functional
        self.weight = nn.Parameter(torch.randn(3, 6))
        self.reader = nn.Linear(6, 3)

    def forward(self, x):
        y = self.act(self.producer(x))
        return F.linear(y, self.weight) if self.functional else self.reader(y)


def _check_all(model: nn.Module, x: torch.Tensor) -> fxprune.ChannelGraph:
    """For every prunable group and two keep-sets: rewrite == zero-produce == mask."""
    model.eval()
    graph = fxprune.analyze(model, x)
    assert graph.prunable_groups, str(graph)
    for group in graph.prunable_groups:
        for kept in ([0, 2], [group.units - 1]):
            plan = {group.id: kept}
            with torch.no_grad():
                pruned = fxprune.rewrite(model, graph, plan)(x)
                reference = zero_produce(graph, plan)(x)
                masked = fxprune.mask(model, graph, plan)(x)
            compare(pruned, reference, f"{group.id} {kept}: rewrite vs zeroed produce")
            compare(pruned, masked, f"{group.id} {kept}: rewrite vs mask")
    return graph


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("reader", ["conv_pad", "conv_valid", "conv_stride_nobias", "conv_grouped", "conv_reflect",
                                    "conv_same", "conv_transposed", "conv_transposed_grouped"])
def test_constant_left_by_removed_units_is_folded_into_conv_readers(act, reader):
    torch.manual_seed(0)
    _check_all(ConvChain(ACTIVATIONS[act], _reader(reader)), torch.randn(2, 3, 7, 7))


@pytest.mark.parametrize("act", ["sigmoid", "plus_one", "relu"])
@pytest.mark.parametrize("functional", [False, True])
def test_constant_is_folded_into_linear_readers_adding_a_bias_when_missing(act, functional):
    torch.manual_seed(0)
    _check_all(LinearChain(ACTIVATIONS[act], functional), torch.randn(5, 4))


def test_states_say_what_removed_units_hold():
    torch.manual_seed(0)
    graph = fxprune.analyze(ConvChain(torch.sigmoid, _reader("conv_pad")).eval(), torch.randn(1, 3, 7, 7))
    removal = graph.removal["producer"]
    assert removal.states["producer"] == ZERO and removal.states["sigmoid"] == CONST
    assert removal.origins == ["producer"]
    assert [(r.node, r.state, r.foldable) for r in removal.readers] == [("reader", CONST, True)]


def test_compensation_off_drops_the_constants_and_matches_the_gated_mask():
    torch.manual_seed(0)
    model, x = ConvChain(torch.sigmoid, _reader("conv_pad")).eval(), torch.randn(2, 3, 7, 7)
    graph = fxprune.analyze(model, x)
    plan = {"producer": [0, 3]}
    with torch.no_grad():
        dropped = fxprune.rewrite(model, graph, plan, compensate=False)(x)
        gated = fxprune.mask(model, graph, plan, compensate=False)(x)
        reference = zero_produce(graph, plan)(x)
    compare(dropped, gated, "compensate=False: rewrite vs mask")
    assert (dropped - reference).abs().max() > 1e-2  # the constant matters here


def test_no_constant_no_change_in_structure():
    torch.manual_seed(0)
    model, x = ConvChain(F.relu, _reader("conv_pad")).eval(), torch.randn(2, 3, 7, 7)
    graph = fxprune.analyze(model, x)
    pruned = fxprune.rewrite(model, graph, {"producer": [0, 3]})
    assert not any("fxprune_" in n.name for n in pruned.graph.nodes)
    assert not state_of(pruned).notes


class BroadcastAdd(nn.Module):
    """``conv(x) + y`` where ``y`` is input-dependent and broadcast over the channels."""

    def __init__(self):
        super().__init__()
        self.producer = nn.Conv2d(3, 6, 3, padding=1)
        self.reader = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.reader(self.producer(x) + x.mean(1, keepdim=True))


class LogChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.producer = nn.Conv2d(3, 6, 3, padding=1)
        self.reader = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.reader(torch.log(self.producer(x).abs() + 0.0))


class SumReader(nn.Module):
    def __init__(self):
        super().__init__()
        self.producer = nn.Linear(4, 6)

    def forward(self, x):
        return torch.sigmoid(self.producer(x)).sum(-1)


@pytest.mark.parametrize("model, words", [
    (BroadcastAdd(), "input-dependent"),
    (LogChain(), "not finite"),
    (SumReader(), "reduce"),
])
def test_groups_whose_removal_cannot_equal_zeroing_are_fixed_with_a_reason(model, words):
    x = torch.randn(2, 3, 6, 6) if not isinstance(model, SumReader) else torch.randn(3, 4)
    graph = fxprune.analyze(model.eval(), x)
    group = graph.group("producer")
    assert not group.prunable and words in group.reason, str(graph)
    assert words in str(graph)


class SelfAttention(nn.Module):
    """Heads computed by hand: q.k^T contracts the head dim, where q's removed rows are zero."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.out = nn.Linear(8, 8)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, 2, 4).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-1, -2) * 0.5, dim=-1)
        return self.out((a @ v).transpose(1, 2).reshape(b, n, 8))


def test_attention_contractions_with_a_zero_factor_stay_exact():
    torch.manual_seed(0)
    graph = _check_all(SelfAttention(), torch.randn(2, 5, 8))
    assert {g.id for g in graph.prunable_groups} == {"q", "v"}  # q/k head width (contracted), v/out


class StandardizedConv(nn.Conv2d):
    """Weight standardisation: the weight is normalised over its fan-in on every call."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                         momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class PlainSubclass(nn.Conv2d):
    pass


class StdNet(nn.Module):
    def __init__(self, conv_cls):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = conv_cls(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.c2(F.relu(self.c1(x))).mean((2, 3)))


def test_weight_standardisation_makes_the_fan_in_a_normalisation_member():
    torch.manual_seed(0)
    model, x = StdNet(StandardizedConv).eval(), torch.randn(2, 3, 8, 8)
    graph = fxprune.analyze(model, x)
    assert graph.group("c1").has_norm  # its units are the standardised conv's input channels
    plan = {"c2": [0, 4]}
    with torch.no_grad():
        compare(fxprune.rewrite(model, graph, plan)(x), zero_produce(graph, plan)(x), "output channels")


def test_a_leaf_subclass_that_overrides_forward_gets_no_inherited_rule():
    model, x = StdNet(StandardizedConv).eval(), torch.randn(2, 3, 8, 8)
    graph = fxprune.analyze(fxprune.trace(model, x, leaf_modules=(StandardizedConv,)))
    assert "c2" in graph.unsupported
    assert not any(g.prunable for g in graph.groups if any(s[1].startswith("c2.") for s in g.spaces if s[0] == "p"))
    with pytest.raises(UnsupportedOpError, match="StandardizedConv"):
        fxprune.analyze(fxprune.trace(model, x, leaf_modules=(StandardizedConv,)), strict=True)


def test_a_leaf_subclass_that_keeps_forward_is_its_base():
    torch.manual_seed(0)
    model, x = StdNet(PlainSubclass).eval(), torch.randn(2, 3, 8, 8)
    graph = fxprune.analyze(fxprune.trace(model, x, leaf_modules=(PlainSubclass,)))
    assert graph.group("c1").prunable and not graph.unsupported
    plan = {"c1": [1, 2, 5]}
    with torch.no_grad():
        compare(fxprune.rewrite(model, graph, plan)(x), zero_produce(graph, plan)(x), "plain subclass")


@pytest.mark.parametrize("training, running, norm", [(True, True, True), (True, False, True), (False, True, False)])
def test_functional_batch_norm_honours_its_statistics_arguments(training, running, norm):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(5, 2)
            self.register_buffer("mean", torch.zeros(6))
            self.register_buffer("var", torch.ones(6))

        def forward(self, x):  # (N, 6, 5): the last dim is normalised over when batch statistics are used
            y = self.fc1(x).transpose(1, 2)
            y = F.batch_norm(y, self.mean if running else None, self.var if running else None, training=training)
            return self.fc2(y).sum(1)

    graph = fxprune.analyze(Net().eval(), torch.randn(3, 5, 4))
    spatial = next(g for g in graph.groups if any(s[1] == "fc2.weight" and s[2] == 1 for s in g.spaces))
    assert spatial.has_norm == norm, str(graph)


def test_compiled_model_with_folded_constants_validates_in_onnxruntime():
    torch.manual_seed(0)
    model = ConvChain(torch.sigmoid, nn.Sequential(_reader("conv_pad"), nn.Flatten(), nn.Linear(5 * 49, 3)))
    result = fxprune.compile(model.eval(), torch.randn(2, 3, 7, 7), method="l1", sparsity=0.5)
    assert result.report.validation is not None and "ok" in result.report.validation.lower()
    assert any("one-channel conv" in note for note in state_of(result.module).notes)


@pytest.mark.parametrize("compensate", [True, False])
def test_save_and_load_replay_the_same_compensation(tmp_path, compensate):
    torch.manual_seed(0)
    model = ConvChain(torch.sigmoid, nn.Sequential(_reader("conv_pad"), nn.Flatten(), nn.Linear(5 * 49, 3))).eval()
    x = torch.randn(2, 3, 7, 7)
    result = fxprune.compile(model, x, method="l1", sparsity=0.5, validate=False, compensate=compensate)
    path = tmp_path / "m.fxp"
    fxprune.save(result, path)
    loaded = fxprune.load(path, model=model)
    with torch.no_grad():
        compare(loaded(x), result.module.eval()(x), f"reloaded (compensate={compensate})")


class TiedLayers(nn.Module):
    """``fc2.weight = fc1.weight``: one tensor, two layers."""

    def __init__(self):
        super().__init__()
        self.inp, self.fc1, self.mid, self.fc2, self.out = (nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 6),
                                                            nn.Linear(6, 6), nn.Linear(6, 2))
        self.fc2.weight = self.fc1.weight

    def forward(self, x):
        h = torch.relu(self.fc1(torch.relu(self.inp(x))))
        return self.out(torch.relu(self.fc2(torch.relu(self.mid(h)))))


class TransposedTie(nn.Module):
    """A decoder reading the encoder's weight transposed."""

    def __init__(self):
        super().__init__()
        self.inp, self.enc, self.out = nn.Linear(4, 8), nn.Linear(8, 6), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.enc(torch.relu(self.inp(x))))
        return self.out(torch.relu(F.linear(h, self.enc.weight.t())))


@pytest.mark.parametrize("model_cls", [TiedLayers, TransposedTie])
def test_tied_weights_are_one_tensor_before_and_after_the_rewrite(model_cls):
    torch.manual_seed(0)
    model, x = model_cls().eval(), torch.randn(5, 4)
    graph = _check_all(model, x)
    names = {name for g in graph.groups for name, _, _ in g.members()}
    assert "fc2.weight" not in names  # the tied tensor has one name in the analysis
    plan = {g.id: [0, 1] for g in graph.prunable_groups}
    pruned = fxprune.rewrite(model, graph, plan)
    if model_cls is TiedLayers:
        assert pruned.fc2.weight is pruned.fc1.weight
        assert len(list(pruned.parameters())) == len(list(model.parameters()))
    with torch.no_grad():
        compare(pruned(x), zero_produce(graph, plan)(x), "all groups at once")


class TwoGroupsOneReader(nn.Module):
    """Two groups with constants reach one reader through a cat (one fold, not one per group)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.reader = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 5, 1), nn.Conv2d(9, 2, 3, padding=1)

    def forward(self, x):
        return self.reader(torch.cat([torch.sigmoid(self.a(x)), torch.sigmoid(self.b(x))], 1))


def test_groups_sharing_a_reader_are_folded_once():
    torch.manual_seed(0)
    model, x = TwoGroupsOneReader().eval(), torch.randn(2, 3, 6, 6)
    graph = fxprune.analyze(model, x)
    plan = {"a": [0, 1], "b": [2, 3]}
    with torch.no_grad():
        compare(fxprune.rewrite(model, graph, plan)(x), zero_produce(graph, plan)(x), "two groups, one reader")
