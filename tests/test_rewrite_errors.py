"""A failure inside the rewrite blames fxprune's rule, never the user's inputs.

Rules are broken on purpose (their rewrite does nothing, writes a wrong literal or
raises): the rewritten graph then fails to run or has a shape the analysis did not
predict. That is a ``RewriteError`` naming the node, the rule and the shapes, and
saying what to do; ``InputError`` stays for example inputs that do not fit the model.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import fxprune
from fxprune.rules.base import RULES

X = torch.randn(2, 3, 4, 4)


class Flatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc(y.view(2, 8 * 4 * 4))


class Pooled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x).view(2, 8 * 4 * 4).mean(-1)


def analysed(model: nn.Module):
    graph = fxprune.analyze(model.eval(), X)
    (group,) = graph.prunable_groups
    return graph, {group.id: [0, 1, 2, 3]}


def break_view(monkeypatch, rewrite) -> None:
    monkeypatch.setitem(RULES.methods, "view", dataclasses.replace(RULES.methods["view"], rewrite=rewrite))


def rewrite_error(graph, plan) -> str:
    with pytest.raises(fxprune.RewriteError) as info:
        fxprune.rewrite(graph.gm, graph, plan)
    assert not isinstance(info.value, fxprune.InputError)
    message = str(info.value)
    assert "not of your model or inputs" in message and "strict=True" in message and "report" in message
    return message


def test_a_rule_that_forgets_its_literal_is_blamed_at_its_node(monkeypatch):
    graph, plan = analysed(Flatten())
    break_view(monkeypatch, lambda r: None)
    message = rewrite_error(graph, plan)
    assert message.startswith("rewrite failed at node %view ") and "rule 'reshape'" in message
    assert "the pruned graph fails at %view: shape '[2, 128]' is invalid" in message
    assert "%view (2, 128) -> (2, 64) -> ?" in message  # before pruning -> predicted -> found
    assert "%relu (2, 8, 4, 4) -> (2, 4, 4, 4) -> (2, 4, 4, 4)" in message


def test_a_wrong_literal_is_blamed_where_the_shape_first_differs(monkeypatch):
    graph, plan = analysed(Flatten())
    break_view(monkeypatch, lambda r: setattr(r.node, "args", (r.node.args[0], 2, 4, 16)))
    message = rewrite_error(graph, plan)
    assert message.startswith("rewrite failed at node %view ") and "rule 'reshape'" in message
    assert "its shape after the rewrite is (2, 4, 16), the analysis predicted (2, 64)" in message
    assert "the pruned graph fails at %fc" in message  # where it broke, named too


def test_a_shape_that_runs_but_differs_from_the_prediction(monkeypatch):
    graph, plan = analysed(Pooled())
    break_view(monkeypatch, lambda r: setattr(r.node, "args", (r.node.args[0], 2, 16, 4)))
    message = rewrite_error(graph, plan)
    assert message.startswith("rewrite failed at node %view ") and "rule 'reshape'" in message
    assert "its shape after the rewrite is (2, 16, 4), the analysis predicted (2, 64)" in message
    assert "fails at" not in message


def test_a_rule_that_raises_is_a_rewrite_error(monkeypatch):
    graph, plan = analysed(Flatten())

    def crash(r):
        raise IndexError("tuple index out of range")

    break_view(monkeypatch, crash)
    message = rewrite_error(graph, plan)
    assert "IndexError: tuple index out of range" in message


def test_inputs_that_do_not_fit_are_still_input_errors():
    with pytest.raises(fxprune.InputError, match=r"example inputs of shape \(2, 5, 4, 4\) do not fit the model"):
        fxprune.trace(Flatten(), torch.randn(2, 5, 4, 4))
