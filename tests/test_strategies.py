"""Sanity checks for the architecture strategies in ``tests/strategies.py``.

Every generated model must run on its example input with a finite output of the
right batch size, and ``torch.fx.symbolic_trace`` must reproduce that output.
"""
from __future__ import annotations

from typing import Iterator

import pytest
import torch
import torch.fx
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import BATCH, Arch, architectures, block_kinds, head_kinds


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    """Run on one intra-op thread: the models are tiny, and on a busy 2-core
    machine OpenMP barriers make every op wait for a descheduled thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _check_arch(arch: Arch) -> None:
    """Assert that ``arch`` runs, is finite, and traces to an equal GraphModule."""
    assert not arch.model.training
    assert arch.example_input.shape[0] == BATCH
    with torch.no_grad():
        expected = arch.model(arch.example_input)
        traced = torch.fx.symbolic_trace(arch.model)
        actual = traced(arch.example_input)
    assert expected.shape[0] == BATCH
    assert expected.dim() == 2
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(arch=architectures())
def test_architectures_run_and_trace(arch: Arch) -> None:
    """Random mixed architectures run and trace faithfully."""
    _check_arch(arch)


@pytest.mark.parametrize("kind", block_kinds())
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_each_block_kind_runs_and_traces(kind: str, data: st.DataObject) -> None:
    """Architectures restricted to a single block kind run and trace faithfully."""
    arch = data.draw(architectures(kinds=[kind], min_blocks=1, max_blocks=3), label="arch")
    assert set(arch.kinds) == {kind}
    assert kind in arch.description
    _check_arch(arch)


@pytest.mark.parametrize("head", head_kinds())
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_each_head_runs_and_traces(head: str, data: st.DataObject) -> None:
    """Both classifier heads run and trace faithfully, with and without pooling."""
    arch = data.draw(architectures(heads=[head], pooling=data.draw(st.booleans())), label="arch")
    assert head in arch.description
    _check_arch(arch)


def test_generation_is_deterministic() -> None:
    """The same draws give identical weights, BN statistics and inputs."""
    strategy = architectures(kinds=["conv_bn_act", "residual", "mha_attention"])
    seen: list[tuple[str, dict[str, torch.Tensor], torch.Tensor]] = []

    @settings(max_examples=3, deadline=None, derandomize=True, database=None)
    @given(arch=strategy)
    def collect(arch: Arch) -> None:
        seen.append((arch.description, arch.model.state_dict(), arch.example_input))

    collect()
    first, seen[:] = list(seen), []
    collect()
    for (desc_a, state_a, x_a), (desc_b, state_b, x_b) in zip(first, seen, strict=True):
        assert desc_a == desc_b
        assert torch.equal(x_a, x_b)
        assert state_a.keys() == state_b.keys()
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_bn_running_stats_are_randomised() -> None:
    """BN running statistics are not left at their 0/1 defaults."""

    @settings(max_examples=3, deadline=None, database=None)
    @given(arch=architectures(kinds=["conv_bn_act"]))
    def check(arch: Arch) -> None:
        bns = [m for m in arch.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns
        for bn in bns:
            assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
            assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))

    check()


def test_unknown_kind_is_rejected() -> None:
    """Asking for a block kind that does not exist fails eagerly."""
    with pytest.raises(ValueError, match="unknown block kind"):
        architectures(kinds=["no_such_block"])
