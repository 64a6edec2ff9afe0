"""Optional forward arguments, concrete_args and keyword example inputs (fxprune.inputs).

Arguments that the example inputs do not give are specialised to their defaults, and
``concrete_args`` to their values; neither is an input of the traced GraphModule, which
takes the given tensors positionally in ``forward``'s order (``state.example_inputs``).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fxprune
from conftest import assert_same_state, state_snapshot
from fxprune.state import state_of


class Masked(nn.Module):
    """A block whose mask and scale are optional, like a transformer layer's."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 6)

    def forward(self, x, attn_mask=None, scale: float = 2.0, gated: bool = True):
        h = self.fc1(x)
        if attn_mask is not None:
            h = h + attn_mask
        if gated:
            h = h * scale
        return self.fc2(torch.relu(h))


class Encoder(nn.Module):
    """Keyword inputs of a text model: token ids, an optional mask, optional type ids and
    ``**kwargs`` (which receives nothing: fx's placeholder for it is dropped)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 12)
        self.types = nn.Embedding(2, 12)
        self.fc1, self.fc2 = nn.Linear(12, 24), nn.Linear(24, 4)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, **unused):
        h = self.embed(input_ids)
        if token_type_ids is not None:
            h = h + self.types(token_type_ids)
        h = torch.relu(self.fc1(h))
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1)
        return self.fc2(h).sum(1)


X = torch.randn(3, 5, 6)
MASK = torch.randn(3, 5, 16)
IDS = torch.randint(0, 20, (2, 7))
ATTENTION = torch.ones(2, 7)


def placeholders(gm: torch.fx.GraphModule) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "placeholder"]


def test_absent_optional_arguments_are_specialised_to_their_defaults():
    model = Masked().eval()
    gm = fxprune.trace(model, X)
    assert placeholders(gm) == ["x"]
    assert "attn_mask" not in gm.code and "_assert" not in gm.code
    with torch.no_grad():
        assert torch.allclose(gm(X), model(X))


def test_concrete_args_are_not_inputs():
    model = Masked().eval()
    gm = fxprune.trace(model, (X,), concrete_args={"scale": 0.5, "gated": False})
    assert placeholders(gm) == ["x"]
    assert "0.5" not in gm.code and "_assert" not in gm.code  # gated=False: the scale is never used
    with torch.no_grad():
        assert torch.allclose(gm(X), model(X, scale=0.5, gated=False))


def test_given_optional_argument_is_a_required_input():
    model = Masked().eval()
    gm = fxprune.trace(model, (X, MASK))
    assert placeholders(gm) == ["x", "attn_mask"]
    with torch.no_grad():
        assert torch.allclose(gm(X, MASK), model(X, MASK))
    with pytest.raises(TypeError):
        gm(X)  # no default left: the mask was traced as an input


def test_dict_inputs_are_bound_in_signature_order():
    model = Encoder().eval()
    gm = fxprune.trace(model, {"attention_mask": ATTENTION, "input_ids": IDS})
    assert placeholders(gm) == ["input_ids", "attention_mask"]
    assert state_of(gm).example_inputs == (IDS, ATTENTION)
    with torch.no_grad():
        assert torch.allclose(gm(IDS, ATTENTION), model(IDS, attention_mask=ATTENTION))


def test_compile_end_to_end_with_dict_inputs():
    model = Encoder().eval()
    before = state_snapshot(model)
    result = fxprune.compile(model, {"input_ids": IDS, "attention_mask": ATTENTION}, sparsity=0.5)
    assert result.report.params_after < result.report.params_before
    assert result.report.validation.startswith("onnx ok")
    assert result.input_shapes == [(2, 7), (2, 7)]
    assert_same_state(before, model)
    with torch.no_grad():
        assert result.module(IDS, ATTENTION).shape == (2, 4)


def test_compile_end_to_end_with_a_defaulted_argument():
    model = Masked().eval()
    result = fxprune.compile(model, X, sparsity=0.5)
    assert result.report.params_after < result.report.params_before
    assert result.report.validation.startswith("onnx ok")
    assert placeholders(result.module) == ["x"]


@pytest.mark.parametrize("inputs, concrete, match", [
    ({"x": X, "mask": MASK}, None, "has no argument 'mask'; its arguments: x, attn_mask, scale, gated"),
    ({"attn_mask": MASK}, None, "needs argument\\(s\\) 'x'"),
    ((X, 2.0), None, "example input 1 is a float"),
    ({"x": X, "scale": 2.0}, None, "example input 'scale' is a float"),
    ((X, MASK, X, X, X), None, "takes 4 input\\(s\\) by position"),
    ({"x": X}, {"x": X}, "given both as example inputs and in concrete_args"),
    (X, {"temperature": 1.0}, "concrete_args names no argument of forward: temperature"),
    ({}, None, "example_inputs must be a tensor"),
    ({1: X}, None, "map argument names"),
])
def test_bad_inputs_are_input_errors_naming_the_argument(inputs, concrete, match):
    model = Masked().eval()
    before = state_snapshot(model)
    with pytest.raises(fxprune.InputError, match=match):
        fxprune.trace(model, inputs, concrete_args=concrete)
    assert_same_state(before, model)


def test_traced_graph_module_is_retraced_only_to_specialise():
    gm = fxprune.trace(Masked().eval(), (X, MASK))
    again = fxprune.trace(gm, {"x": X, "attn_mask": MASK})
    assert placeholders(again) == ["x", "attn_mask"]
    with pytest.raises(fxprune.InputError, match="needs argument\\(s\\) 'attn_mask'"):
        fxprune.trace(gm, X)  # a traced input has no default any more


class Variadic(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, *xs):
        return self.fc(xs[0] + xs[1])


def test_star_args_forward_takes_positional_inputs_only():
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    model = Variadic()
    gm = fxprune.trace(model, (a, b))
    with torch.no_grad():
        assert torch.allclose(gm(a, b), model(a, b))
    with pytest.raises(fxprune.InputError, match="need a forward with named arguments"):
        fxprune.trace(Variadic(), {"xs": a})
