"""Pruning at initialisation: SNIP and GraSP as structured score passes (issue #7)."""
import numpy as np
import pytest
import torch

import fxprune
import fxprune.models as zoo
from fxprune.training.data import bundled
from fxprune.passes.grasp import grasp_scores
from fxprune.passes.snip import snip_scores


@pytest.fixture(scope="module")
def batches():
    X, Y = bundled().tensors
    return [(X[i:i + 32], Y[i:i + 32]) for i in range(0, 96, 32)]


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_pai_compile_prunes_and_validates(method, batches):
    torch.manual_seed(0)
    model = zoo.get("lenet5", in_channels=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = fxprune.compile(model, batches[0][0][:2], method=method, sparsity=0.5, data=batches, progress=False)
    assert {g.id: g.kept for g in r.report.groups} == {"conv1": 3, "conv2": 8, "fc1": 60, "fc2": 42}
    assert r.report.validation and "ok" in r.report.validation
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_scores_shapes_finite_and_differ(batches):
    torch.manual_seed(0)
    model = zoo.get("lenet5", in_channels=1).eval()
    graph = fxprune.analyze(model, batches[0][0][:2])
    groups = graph.prunable_groups
    s = snip_scores(model, graph, groups, batches[:1])
    g = grasp_scores(model, graph, groups, batches[:1])
    for grp in groups:
        assert s[grp.id].shape == (grp.units,) and np.isfinite(s[grp.id]).all() and (s[grp.id] >= 0).all()
        assert g[grp.id].shape == (grp.units,) and np.isfinite(g[grp.id]).all()
    assert any(np.abs(g[grp.id]).sum() > 0 for grp in groups)


def test_pai_needs_data():
    model = zoo.get("lenet5", in_channels=1)
    for method in ("snip", "grasp"):
        with pytest.raises(fxprune.InputError, match="needs data"):
            fxprune.compile(model, torch.randn(2, 1, 28, 28), method=method)
