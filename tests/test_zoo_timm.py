"""A representative timm subset through the zoo sweep's per-model check (tools/zoo_sweep.py).

timm's own unit-test configs (``test_*``: 0.3-0.9M parameters at 160x160) of four
families that the torchvision zoo does not have: ConvNeXt with LayerNorm2d and layer
scale, EfficientNet with squeeze-excite (a sigmoid gate, f(0) != 0), NFNet with
weight-standardised convs (``ScaledStdConv2d``: a conv subclass that overrides forward)
and a ViT with relative-position attention. Each goes through ``run_one`` as in the
sweep: compile validated by onnxruntime, trace == model, mask == rewrite,
zero-produce == rewrite, and ``rewrite``/``mask`` called with the user's own model.
"""
from __future__ import annotations

import pytest

from conftest import load_tool

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

MODELS = ("test_convnext", "test_efficientnet", "test_nfnet", "test_vit_relpos")


@pytest.fixture(scope="module")
def zoo():
    yield from load_tool("zoo_sweep")


@pytest.fixture(scope="module")
def records(zoo):
    return {name: zoo.run_one(name, zoo="timm") for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_pruned_and_every_check_holds(zoo, records, name):
    rec = records[name]
    assert rec["status"] == "ok" and rec["outcome"] == "ok", rec.get("reason") or rec.get("error")
    assert rec["input"] == [1, 3, 160, 160]
    assert rec["validated"] and rec["validate_max_abs"] <= rec["validate_tolerance"]
    assert rec["macs_after"] < rec["macs_before"] and rec["params_after"] < rec["params_before"]
    assert rec["trace_eq_model"] and rec["mask_eq_rewrite"] and rec["zero_produce_eq_rewrite"]
    assert rec["user_rewrite_eq"] and rec["user_mask_eq"] and rec["user_model_untouched"]
    assert "failures" not in rec


@pytest.mark.parametrize("name", MODELS)
def test_checks_can_see_an_error(zoo, records, name):
    """The oracle checks ran on pruned groups, and pruning moved the output far above their tolerance."""
    rec = records[name]
    assert rec["groups_checked"] > 0 and rec["units_removed_checked"] > 0
    assert rec["rewrite_vs_original_max_abs"] > 10 * rec["eq_tolerance"]
    assert rec["mask_max_abs"] <= rec["eq_tolerance"] and rec["zero_max_abs"] <= rec["eq_tolerance"]
