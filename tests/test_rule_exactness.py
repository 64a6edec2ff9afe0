"""Generated exactness tests of every entry of the rule table (cases in ``tests/rule_cases.py``).

For each (case, op) pair, hypothesis draws the op's arguments and a plan and checks
rewrite == mask == zero-produce and the rewrite's shapes (see ``rule_cases.check``).
The run is bounded and reproducible (derandomized, no example database): about
``TARGET`` examples per case, at least one per op; ``$FXPRUNE_PROPERTY_SCALE``
multiplies them, and ``tools/rule_coverage.py`` runs many more and reports which
argument combinations were reached.

Cases marked ``bias`` (an op with f(0) != 0 between producer and consumer) are
expected to fail the zero-produce check until bias compensation lands.
Bugs the generators found are kept as explicit examples in ``FOUND``.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import torch
from torch import nn

from rule_cases import CASES, UNREACHABLE, Case, check, covered_labels, op_label, spec, table_entries

pytestmark = pytest.mark.usefixtures("one_thread")

TARGET = 8
"""Examples per case in the default suite (spread over its ops, at least one each)."""

_SCALE = float(os.environ.get("FXPRUNE_PROPERTY_SCALE", "1"))

SETTINGS = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])

FOUND: dict[tuple[str, str], list] = {
    # reduce: x.std(dim, unbiased, keepdim) read ``unbiased`` as keepdim (the analysis crashed)
    ("reduce", "torch.std"): [spec("reduce", torch.std, rank=4, form="int", dim=0, keepdim=False,
                                   call="positional", spread="default")],
    ("reduce", "Tensor.var"): [spec("reduce", "var", rank=4, form="int", dim=0, keepdim=False, call="positional",
                                    spread="unbiased", spread_value=True)],
    # reduce: numpy names (axis=, keepdims=) were ignored: a full reduction assumed (RewriteError)
    ("reduce", "Tensor.sum"): [spec("reduce", "sum", rank=4, form="int", dim=3, keepdim=False, call="numpy names")],
    ("reduce", "torch.mean"): [spec("reduce", torch.mean, rank=4, form="tuple", dim=(2, -1), keepdim=True,
                                    call="numpy names")],
    # reduce: nansum over the channels is exact like sum (was a norm member)
    ("reduce", "torch.nansum"): [spec("reduce", torch.nansum, rank=4, form="int", dim=1, keepdim=False,
                                      call="positional")],
    # reduce: std/var over the channels pruned to one channel gave nan (the first two now stay)
    ("reduce", "Tensor.std"): [(spec("reduce", "std", rank=4, form="int", dim=-3, keepdim=True, call="keywords",
                                     spread="default"), "one")],
    # spatial: max pooling with return_indices=True left the channels a barrier
    ("spatial", "nn.MaxPool2d"): [spec("spatial", nn.MaxPool2d, k=2, unbatched=False, kernel=2, stride=None,
                                       padding=0, ceil_mode=False, dilation=1, return_indices=True)],
    # permute: movedim/moveaxis crashed the analysis (numpy AxisError); transpose/swapaxes by keyword
    # crashed it (IndexError)
    ("permute", "torch.movedim"): [spec("permute", torch.movedim, rank=4, keywords=False, source=1,
                                        destination=3)],
    ("permute", "Tensor.moveaxis"): [spec("permute", "moveaxis", rank=4, keywords=True, source=(1, 2),
                                          destination=(3, 0))],
    ("permute", "Tensor.transpose"): [spec("permute", "transpose", rank=4, keywords=True, dims=(1, -1))],
    ("permute", "torch.swapaxes"): [spec("permute", torch.swapaxes, rank=3, keywords=True, dims=(-2, 2))],
    # cat/stack: numpy's axis= was ignored: dim 0 assumed (the analysis crashed)
    ("cat", "torch.cat"): [spec("cat", torch.cat, widths=(3, 2), dim=1, same_twice=False, container="list",
                                dim_as="axis")],
    ("stack", "torch.stack"): [spec("stack", torch.stack, n=3, dim=2, consume="flatten", dim_as="axis")],
    # reshape: sizes by keyword (view(size=...), reshape(shape=...)) were not rewritten; a whole shape read
    # from another tensor (view(other.shape)) was replaced by its first size; unflatten's negative dim counted
    # the output's dims; squeeze() dropped a pruned dim that had shrunk to one element
    ("reshape", "Tensor.view"): [spec("reshape", "view", c=6, h=3, w=2, scenario="merge_batch", form="keyword",
                                      sizes="minus_one")],
    ("reshape", "Tensor.reshape"): [spec("reshape", "reshape", c=4, h=2, w=3, scenario="other_shape",
                                         form="tuple", sizes="literal")],
    ("reshape", "Tensor.unflatten"): [spec("reshape", "unflatten", c=9, h=2, w=4, scenario="unflatten_channel",
                                           dim=-3, sizes="minus_one", keywords=False, g=3)],
    ("reshape", "nn.Unflatten"): [spec("reshape", nn.Unflatten, c=9, h=3, w=4, scenario="unflatten_channel",
                                       dim=-3, sizes="minus_one", keywords=False, g=3)],
    ("reshape", "Tensor.squeeze"): [spec("reshape", "squeeze", c=2, h=1, w=2, scenario="squeeze", dim=-2,
                                         squeeze_form="all", keywords=False)],
    # getitem: a negative index into split/chunk outputs (chunks[-1]) was not related (RewriteError)
    ("split", "torch.chunk"): [spec("split", torch.chunk, c=6, dim=-3, keywords=False, take="negative index",
                                    chunks=2)],
}
"""(case, op label) -> explicit examples: the rule bugs the generators found (all fixed; each failed before).
An entry is a Spec (checked with every other unit kept) or (Spec, a ``rule_cases.FIXED_PLANS`` name)."""


def _found(case_name: str, label: str | None) -> list[tuple]:
    return [f if isinstance(f, tuple) else (f, None) for f in FOUND.get((case_name, label), [])]


EXPECTED_FAILURE_EXAMPLES = 4
"""Examples per expected-failure case (bias compensation, reported bugs): one test per case, ops sampled."""


def examples_per_op(case: Case) -> int:
    return max(1, round(math.ceil(TARGET / len(case.ops)) * _SCALE))


def _expected_failure(case: Case) -> list:
    return [pytest.mark.xfail(strict=False, reason=case.xfail)] if case.xfail else []


def _params() -> list:
    """(case, op label) for every op of the strict cases; (case, None) for an expected-failure case."""
    out = []
    for case in CASES.values():
        marks = _expected_failure(case)
        if marks:
            out.append(pytest.param(case.name, None, marks=marks, id=f"{case.name}-sampled"))
            continue
        for o in case.ops:
            out.append(pytest.param(case.name, op_label(o), id=f"{case.name}-{op_label(o)}"))
    return out


def test_every_table_entry_has_a_generator() -> None:
    """A rule added to the table without a case here fails this test: write one in rule_cases_*.py."""
    covered = covered_labels()
    missing = [f"{e.label} ({e.kind} of rule {e.rule!r})" for e in table_entries()
               if e.label not in covered and e.label not in UNREACHABLE]
    assert not missing, "table entries without a generator:\n" + "\n".join(missing)


def test_unreachable_entries_are_really_unreachable() -> None:
    """An entry listed as unreachable is a method name torch.Tensor lacks (else it needs a generator)."""
    labels = {e.label for e in table_entries()}
    for label in UNREACHABLE:
        assert label in labels, f"{label} is no longer in the table: drop it from UNREACHABLE"
        assert label.startswith("Tensor.") and not hasattr(torch.Tensor, label[len("Tensor."):]), label


def test_cases_name_table_entries_of_their_rule() -> None:
    by_label = {e.label: e for e in table_entries()}
    assert len(by_label) == len(table_entries()), "two table entries share a label"
    wrong = []
    for case in CASES.values():
        for o in case.ops:
            e = by_label.get(op_label(o))
            if e is None or e.rule != case.rule:
                wrong.append(f"case {case.name!r}: {op_label(o)} is {'not in the table' if e is None else e.rule}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("case_name,label", _params())
def test_rule_is_exact(case_name: str, label: str | None) -> None:
    case = CASES[case_name]
    ops = None if label is None else [case.op(label)]
    if label is None:  # an expected failure: not shrunk (the message names the op and arguments anyway)
        n, phases = min(len(case.ops), EXPECTED_FAILURE_EXAMPLES), [Phase.explicit, Phase.generate]
    else:
        n, phases = examples_per_op(case), [Phase.explicit, Phase.generate, Phase.shrink]

    @settings(SETTINGS, max_examples=max(1, round(n * _SCALE)) if label is None else n, phases=phases)
    @given(s=case.specs(ops), data=st.data())
    def run(s, data) -> None:
        check(s, data)

    for found, plan in _found(case_name, label):
        run = example(s=found, data=plan)(run)
    run()


def test_found_examples_name_real_cases() -> None:
    for case_name, label in FOUND:
        assert CASES[case_name].op(label) is not None
        assert all(s.case == case_name and s.op == label for s, _ in _found(case_name, label))



def _coverage_tool():
    path = Path(__file__).resolve().parents[1] / "tools" / "rule_coverage.py"
    module_spec = importlib.util.spec_from_file_location("rule_coverage", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_coverage_tool_reports_every_case_it_ran(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tool = _coverage_tool()
    out = tmp_path / "cov"
    assert tool.main(["--examples", "2", "--cases", "roll,reduce_bias", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    roll = report["rules"]["roll"]
    assert {e["op"] for e in roll["entries"] if e["reached"]} == {"torch.roll", "Tensor.roll"}
    counts = roll["cases"]["roll"]["ops"]["torch.roll"]
    assert sum(counts.values()) == 2 and counts.get("fail", 0) == 0
    assert report["rules"]["reduce"]["cases"]["reduce_bias"]["bias"] is True
    assert roll["cases"]["roll"]["combinations"] and roll["cases"]["roll"]["args"]["rank"]
    assert report["summary"]["entries"] == len(table_entries())
    markdown = out.with_suffix(".md").read_text()
    assert "## roll" in markdown and "### case `reduce_bias` (bias case" in markdown
    assert tool.main(["--cases", "no_such_case", "--out", str(out)]) == 2
    assert "unknown case" in capsys.readouterr().err
