"""Taylor / ActGrad saliency as their references define it (BEP eq. A1, the submodular paper's
ActGrad): per-sample |activation x gradient|, averaged over samples; the earlier per-batch
score stays available as ``saliency="per_batch"``. Also LayerWeightNorm on outgoing weights
and LayerGreedyFS's reference options."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.errors import InputError
from fxprune.mask import gate_key
from fxprune.passes import ActGrad, Analyze
from fxprune.passes.submodular.layerwise import LayerwiseContext
from fxprune.passes.taylor import gate_saliency
from fxprune.state import state_of

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def calib(fashion):
    images, labels = fashion
    return [(images[i:i + 24], labels[i:i + 24]) for i in (0, 24)]


def prunable(graph):
    return list(graph.prunable_groups)


def brute_force_per_sample(graph, groups, data) -> dict[str, np.ndarray]:
    """Mean over samples of |dl_n/dm_u|: one backward per sample on a batch of one (the gate's own grad)."""
    gated = fxprune.mask(graph.gm, graph, {g.id: list(range(g.units)) for g in groups}, learnable=True).eval()
    total = {g.id: np.zeros(g.units) for g in groups}
    n = 0
    for images, labels in data:
        for i in range(images.shape[0]):
            gated.zero_grad(set_to_none=True)
            F.cross_entropy(gated(images[i:i + 1]), labels[i:i + 1]).backward()
            for g in groups:
                total[g.id] += gated.fxprune_gates[gate_key(g.id)].values.grad.abs().double().numpy()
            n += 1
    return {gid: t / n for gid, t in total.items()}


def test_per_sample_equals_a_loop_over_samples(lenet, calib, fashion):
    graph = fxprune.analyze(lenet, fashion[0][:1])
    groups = prunable(graph)
    got = gate_saliency(graph.gm, graph, groups, calib, saliency="per_sample")
    want = brute_force_per_sample(graph, groups, calib)
    assert set(got) == set(want) == {"conv1", "conv2", "fc1", "fc2"}
    for gid in want:
        np.testing.assert_allclose(got[gid], want[gid], rtol=1e-4, atol=1e-9)


def test_actgrad_per_sample_matches_an_explicit_hook_loop(lenet, calib, fashion):
    """Independent of the gates: |a_n * dl_n/da_n| summed over positions at conv2's output, per sample."""
    x = fashion[0][:1]
    gm = fxprune.trace(lenet, x)
    Analyze()(gm)
    ctx = LayerwiseContext(ActGrad(data=calib, progress=False), gm, state_of(gm))
    scores = ctx.cached_scores(ctx.method)
    model = copy.deepcopy(lenet).eval()
    seen = {}
    handle = model.conv2.register_forward_hook(lambda m, a, y: seen.__setitem__("y", y))
    total = torch.zeros(16, dtype=torch.float64)
    for images, labels in calib:
        for i in range(images.shape[0]):
            loss = F.cross_entropy(model(images[i:i + 1]), labels[i:i + 1])
            (g,) = torch.autograd.grad(loss, seen["y"])
            total += (seen["y"] * g).sum((0, 2, 3)).abs().double().detach()
    handle.remove()
    want = total.numpy() / np.linalg.norm(total.numpy())
    np.testing.assert_allclose(scores["conv2"], want, rtol=1e-4, atol=1e-7)


def _signed_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor, list]:
    """hidden a = w * x (2 units), out = V a; loss mean_n y_n * out_n[0] with y = +1, -1 on the same x:
    each unit's per-sample terms cancel in the batch sum, so per-batch scores are 0 and
    per-sample scores are |w_u V_0u| exactly."""
    model = nn.Sequential(nn.Linear(1, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0], [-3.0]]))
        model[1].weight.copy_(torch.tensor([[0.5, 1.5], [1.0, 1.0]]))
    x = torch.tensor([[1.0], [1.0]])
    y = torch.tensor([1.0, -1.0])
    return model, x, y, [(x, y)]


def signed_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out[:, 0] * y).mean()


@pytest.mark.parametrize("method", ["taylor", "actgrad"])
def test_per_sample_and_per_batch_differ_where_they_must(method):
    model, x, _, data = _signed_model()
    graph = fxprune.analyze(model, x[:1])
    (group,) = [g for g in graph.prunable_groups]
    per_sample = gate_saliency(graph.gm, graph, [group], data, signed_loss, saliency="per_sample")[group.id]
    per_batch = gate_saliency(graph.gm, graph, [group], data, signed_loss, saliency="per_batch")[group.id]
    np.testing.assert_allclose(per_sample, [2.0 * 0.5, 3.0 * 1.5], rtol=1e-12)
    np.testing.assert_allclose(per_batch, [0.0, 0.0], atol=1e-12)
    # through the methods: per-sample keeps unit 1 (the larger |w V|); the options are honoured
    kwargs = dict(data=data, loss_fn=signed_loss, validate=False, progress=False)
    res = fxprune.compile(model, x[:1], method, 0.5, **kwargs)
    assert res.plan == {group.id: [1]}
    tied = fxprune.compile(model, x[:1], method, 0.5, saliency="per_batch", **kwargs)
    assert tied.plan == {group.id: [0]}  # all scores 0: the tie goes to the lowest index


def test_per_batch_never_exceeds_per_sample(lenet, calib, fashion):
    """|mean_n t_n| <= mean_n |t_n| per batch (triangle inequality); strict where signs mix."""
    graph = fxprune.analyze(lenet, fashion[0][:1])
    groups = prunable(graph)
    per_sample = gate_saliency(graph.gm, graph, groups, calib, saliency="per_sample")
    per_batch = gate_saliency(graph.gm, graph, groups, calib, saliency="per_batch", per_batch=np.abs)
    for gid in per_sample:
        assert np.all(per_batch[gid] <= per_sample[gid] * (1 + 1e-5) + 1e-12)  # float32 gradients
        assert np.any(per_batch[gid] < 0.99 * per_sample[gid])


def test_unknown_saliency_is_a_named_error():
    with pytest.raises(InputError, match="saliency"):
        ActGrad(saliency="per_pixel")
    with pytest.raises(InputError, match="saliency"):
        fxprune.passes.Taylor(saliency="sum")


# ---------------------------------------------------------------- LayerWeightNorm

def weightnorm_scores(model, x, **options) -> dict[str, np.ndarray]:
    from fxprune.passes import LayerWeightNorm

    gm = fxprune.trace(model, x)
    Analyze()(gm)
    ctx = LayerwiseContext(LayerWeightNorm(progress=False, **options), gm, state_of(gm))
    return ctx.cached_scores(ctx.method)


def test_weightnorm_scores_outgoing_weights_by_default(lenet, fashion):
    x = fashion[0][:1]
    scores = weightnorm_scores(lenet, x)
    # conv1's units are read by conv2's input channels; conv2's by fc1's columns (25 per channel)
    np.testing.assert_allclose(scores["conv1"], lenet.conv2.weight.detach().abs().mean((0, 2, 3)).double(), rtol=1e-6)
    fc1_cols = lenet.fc1.weight.detach().abs().reshape(lenet.fc1.out_features, 16, 25)
    np.testing.assert_allclose(scores["conv2"], fc1_cols.mean((0, 2)).double(), rtol=1e-6)
    np.testing.assert_allclose(scores["fc2"], lenet.fc3.weight.detach().abs().mean(0).double(), rtol=1e-6)
    producing = weightnorm_scores(lenet, x, weights="producing")
    np.testing.assert_allclose(producing["conv1"], lenet.conv1.weight.detach().abs().mean((1, 2, 3)).double(), rtol=1e-6)
    assert not np.array_equal(np.argsort(producing["conv2"]), np.argsort(scores["conv2"]))


def test_weightnorm_rejects_an_unknown_weights_option():
    from fxprune.passes import LayerWeightNorm

    with pytest.raises(InputError, match="weights"):
        LayerWeightNorm(weights="incoming")


# ---------------------------------------------------------------- LayerGreedyFS (reference options)

def explicit_forward_selection(lenet, graph, batches, which, steps: int, rescale: bool) -> list[int]:
    """conv1's greedy order: batch ``which[step]`` scores step ``step``; conv2 (its reader) x 6/|S|."""
    chosen: list[int] = []
    for step in range(steps):
        images, labels = batches[which[step]]

        def loss(u):
            masked = fxprune.mask(graph.gm, graph, {"conv1": sorted(chosen + [u])})
            if rescale:
                with torch.no_grad():
                    masked.get_parameter("conv2.weight").mul_(6 / (len(chosen) + 1))
            with torch.no_grad():
                return float(F.cross_entropy(masked(images), labels))

        chosen.append(min((u for u in range(6) if u not in chosen), key=loss))
    return chosen


@pytest.mark.parametrize("rescale,how", [(True, "random"), (False, "random"), (True, "first")])
def test_greedy_fs_reference_options(rescale, how, lenet, fashion):
    from fxprune.passes import LayerGreedyFS
    from fxprune.passes.greedy_fs import step_batch_indices

    images, labels = fashion
    batches = [(images[i:i + 32], labels[i:i + 32]) for i in range(0, 128, 32)]
    x = images[:1]
    graph = fxprune.analyze(lenet, x)
    which = step_batch_indices(5, 0, 6, len(batches), how)
    assert (len(set(which)) > 1) == (how == "random")
    want = explicit_forward_selection(lenet, graph, batches, which, 3, rescale)
    method = LayerGreedyFS(data=batches, groups=("conv1",), progress=False, seed=5, rescale=rescale, batches=how)
    gm = fxprune.trace(lenet, x)
    Analyze()(gm)
    ctx = LayerwiseContext(method, gm, state_of(gm))
    assert method.order(ctx, ctx.graph.group("conv1"), 6)[:3] == want


def test_greedy_fs_pruned_model_keeps_the_reader_scale(lenet, fashion):
    from fxprune.passes import LayerGreedyFS

    images, labels = fashion
    batches = [(images[:16], labels[:16])]
    x = images[:1]
    res = fxprune.compile(lenet, x, "layer_greedy_fs", 0.5, data=batches, groups=("conv1",), progress=False)
    (kept,) = res.plan.values()
    assert len(kept) == 3
    want = lenet.conv2.weight.detach()[:, kept] * (6 / 3)
    torch.testing.assert_close(res.module.get_parameter("conv2.weight"), want)
    plain = fxprune.compile(lenet, x, "layer_greedy_fs", 0.5, data=batches, groups=("conv1",), progress=False,
                            rescale=False)
    torch.testing.assert_close(plain.module.get_parameter("conv2.weight"), lenet.conv2.weight.detach()[:, plain.plan["conv1"]])
    with pytest.raises(InputError, match="batches"):
        LayerGreedyFS(batches="all")
