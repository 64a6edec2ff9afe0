"""Tests for fxprune.report: parameter/MAC counting and formatting helpers."""
from __future__ import annotations

import pytest
import torch
import torchvision

from fxprune.errors import InputError
from fxprune.report import Cost, count_macs, count_params, eval_mode, format_table, human, measure


def test_linear_macs_and_params() -> None:
    lin = torch.nn.Linear(10, 20)
    assert count_macs(lin, (torch.randn(4, 10),)) == 800
    assert count_params(lin) == 10 * 20 + 20


def test_count_params_dedups_shared_and_skips_buffers() -> None:
    lin = torch.nn.Linear(3, 3, bias=False)
    net = torch.nn.Sequential(lin, lin, torch.nn.BatchNorm1d(3))
    assert count_params(net) == 9 + 2 * 3  # shared weight once; BN running stats not counted


def test_resnet18_cost() -> None:
    model = torchvision.models.resnet18()
    gm = torch.fx.symbolic_trace(model)
    cost = measure(gm, (torch.randn(1, 3, 224, 224),))
    assert cost == Cost(params=11_689_512, macs=cost.macs)
    assert abs(cost.macs - 1.814e9) / 1.814e9 < 0.01
    assert str(cost) == "params 11.69M, MACs 1.81G"  # FlopCounterMode: 1_814_073_344 MACs


def test_count_macs_restores_mode_and_uses_eval() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
    net.train()
    net[1].eval()  # mixed flags must come back exactly
    count_macs(net, torch.randn(2, 4))
    assert net.training and net[0].training and not net[1].training


def test_eval_mode_restores_on_error() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(RuntimeError), eval_mode(net):
        assert not net.training and not net[0].training
        raise RuntimeError("boom")
    assert net.training and net[0].training


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (512, "512"),
        (0, "0"),
        (11_689_512, "11.69M"),
        (1.8186e9, "1.82G"),
        (1500, "1.50K"),
        (999_999, "1.00M"),
        (-2_500_000, "-2.50M"),
        (0.25, "0.25"),
        (3.2e12, "3.20T"),
    ],
)
def test_human(n: float, text: str) -> None:
    assert human(n) == text


def test_format_table_aligns_columns() -> None:
    table = format_table([("params", "11.69M", "5.1M"), ("MACs", "1.82G", "900.00M")])
    lines = table.splitlines()
    assert lines[0] == "        before    after"
    assert set(lines[1]) == {"-", " "}
    assert lines[2] == "params  11.69M     5.1M"
    assert lines[3] == "MACs     1.82G  900.00M"
    assert len({len(line) for line in lines}) == 1


def test_format_table_no_header_and_bad_rows() -> None:
    assert format_table([("a", "1", "2")], header=None) == "a  1  2"
    with pytest.raises(InputError):
        format_table([("a", "1")], header=("x", "y", "z"))
