"""tools/fuzz_fxp.py: bit flips of a saved .fxp end in a named error or an identical model."""
from __future__ import annotations

import pytest

from conftest import load_tool


@pytest.fixture(scope="module")
def fuzz():
    yield from load_tool("fuzz_fxp")


def test_positions_cover_head_tail_and_a_sample_in_between(fuzz):
    chosen = fuzz.positions(1000, head=10, tail=5, middle=3, seed=0)
    assert chosen[:10] == list(range(10)) and chosen[-5:] == list(range(995, 1000))
    assert len(chosen) == 18 and len(set(chosen)) == 18 and all(10 <= p < 995 for p in chosen[10:13])


def test_a_small_run_finds_no_silently_wrong_model(fuzz, capsys, one_thread):
    assert fuzz.main(["--head", "40", "--tail", "40", "--middle", "4"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("84 single-bit flips") and "FAIL" not in line and "InputError" in line
