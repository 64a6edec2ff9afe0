"""BEP as the paper specifies (issue #16): per-sample saliency (eq. A1), the LMC MOGP (zero
mean, one kernel per latent, Q per layer type), its calibration on a real bundled trace, and
a lambda that changes what is kept."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import fxprune
import fxprune.models as zoo
from fxprune.mask import mask
from fxprune.passes.bep.decision import decide
from fxprune.passes.bep.mogp import SaliencyMOGP
from fxprune.passes.bep.saliency import accumulate_saliency, finish_saliency, per_sample_gates
from fxprune.training.data import bundled

TRACE = Path(fxprune.__file__).parent / "assets" / "bep_saliency_trace.npz"


def _trace() -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    with np.load(TRACE) as z:
        groups = {k[2:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("Y:")}
        return torch.from_numpy(z["times"]), groups, json.loads(str(z["meta"]))


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    model = zoo.get("lenet5", in_channels=1)
    X, Y = bundled().tensors
    return model, X[:12], Y[:12]


# ------------------------------------------------------------------ saliency (eq. A1)
def test_per_sample_saliency_matches_a_loop_over_samples(lenet):
    model, X, Y = lenet
    graph = fxprune.analyze(model, X[:2])
    groups = list(graph.prunable_groups)
    full = {g.id: list(range(g.units)) for g in groups}
    loss = torch.nn.functional.cross_entropy
    gated = per_sample_gates(mask(model, graph, full, learnable=True)).eval()
    sums, count = accumulate_saliency(gated, groups, [((X,), Y)], loss, "per_sample")
    per_sample = finish_saliency(sums, count)
    # independent: the ordinary (shared) gate on one sample at a time, |dL_n/dg| averaged
    plain = mask(model, graph, full, learnable=True).eval()
    ref = {g.id: torch.zeros(g.units, dtype=torch.float64) for g in groups}
    for n in range(len(X)):
        plain.zero_grad(set_to_none=True)
        loss(plain(X[n:n + 1]), Y[n:n + 1]).backward()
        for g in groups:
            ref[g.id] += plain.fxprune_gates[g.id.replace(".", "_")].values.grad.abs().double() / len(X)
    assert count == len(X)
    for g in groups:
        torch.testing.assert_close(per_sample[g.id], ref[g.id], rtol=1e-4, atol=1e-9)
    # the per-batch variant |sum_n| is a different (smaller or equal) quantity
    batch, _ = accumulate_saliency(plain, groups, [((X,), Y)], loss, "per_batch")
    conv = groups[0].id
    assert bool((batch[conv] / len(X) <= per_sample[conv] + 1e-9).all())
    assert not torch.allclose(batch[conv] / len(X), per_sample[conv])


def test_latents_follow_the_papers_layer_types(lenet):
    model, X, Y = lenet
    prepared = fxprune.prepare(model, X[:2], method="bep", data=[(X, Y)], total_steps=400, progress=False)
    q = {gid: prepared._latents(gid, 1000) for gid in prepared.final}
    assert q == {"conv1": 12, "conv2": 12, "fc1": 4, "fc2": 4}
    assert prepared._latents("conv1", 6) == 6
    assert prepared.options.samples == 10000 and prepared.options.inducing == 60


# ------------------------------------------------------------------ the MOGP
def test_mogp_is_the_papers_lmc():
    import gpytorch

    times, groups, _ = _trace()
    Y = groups["conv2"][:, :6]
    m = SaliencyMOGP(times[:6], Y, 3, time_scale=200.0, inducing=6, kernel="exponential")
    assert isinstance(m.model.mean_module, gpytorch.means.ZeroMean)
    assert isinstance(m.model.variational_strategy, gpytorch.variational.LMCVariationalStrategy)
    assert m.model.covar_module.alpha.shape == (3, 1, 1) and m.model.covar_module.beta.shape == (3, 1, 1)
    assert m.model.variational_strategy.lmc_coefficients.shape == (3, Y.shape[0])
    assert m.noise.shape == (Y.shape[0],)
    m2 = SaliencyMOGP(times[:6], Y, 3, time_scale=200.0, inducing=6)
    assert m2._decay.alpha.shape == (3, 1, 1)


def test_mogp_warm_start_after_pruning_keeps_the_survivors_parameters():
    times, groups, _ = _trace()
    Y = groups["fc2"][:10]
    m = SaliencyMOGP(times[:8], Y[:, :8], 3, time_scale=200.0, inducing=6)
    m.fit(max_iter=5)
    kept = torch.tensor([0, 3, 4, 9])
    state = SaliencyMOGP.select_units(m.state_dict(), kept)
    warm = SaliencyMOGP(times[:10], Y[kept, :10], 3, time_scale=200.0, inducing=6)
    warm.load_state_dict({k: v for k, v in state.items() if "inducing_points" not in k}, strict=False)
    torch.testing.assert_close(warm.model.variational_strategy.lmc_coefficients,
                               m.model.variational_strategy.lmc_coefficients[:, kept])
    torch.testing.assert_close(warm.noise, m.noise[kept])
    fit = warm.fit(max_iter=3, init=state)
    mean, cov = warm.predict(200.0)
    assert mean.shape == (4,) and cov.shape == (4, 4) and bool(torch.isfinite(cov).all())
    assert fit.iterations == 3 and math.isfinite(fit.nll)


@pytest.mark.slow
def test_predictive_bands_cover_held_out_saliency_of_a_real_trace():
    """95% bands of the MOGP fitted on the first 12 buckets of the dense trace (the seed
    period) cover >= 90% of the later 8 buckets' measurements (model space, App. G.3), on a
    conv and a dense group."""
    torch.manual_seed(0)
    times, groups, meta = _trace()
    k, nxt = 12, len(times) - 12
    inside = total = 0
    for gid, q in (("conv2", 12), ("fc2", 4)):
        Y = groups[gid]
        m = SaliencyMOGP(times[:k], Y[:, :k], q, time_scale=float(meta["iterations"]), inducing=20)
        m.fit(max_iter=150, lr=0.1)
        mean, std = m.predict_path(times[k:k + nxt], observation_noise=True)
        pre = m.preprocess
        z_mean, z_std = pre.offset[:, None] + pre.slope[:, None] * mean, std * pre.slope.abs()[:, None]
        hit = (pre.transform(Y[:, k:k + nxt]) - z_mean).abs() <= 1.96 * z_std
        inside, total = inside + int(hit.sum()), total + hit.numel()
    assert inside / total >= 0.90, f"{inside}/{total}"


# ------------------------------------------------------------------ lambda matters
def test_lambda_changes_the_kept_count_under_the_fixed_budget():
    """At the first decision the fixed budget affords exactly B_s units; with T - t as a
    fraction of training (the default) lambda decides how many more are kept."""
    g = torch.Generator().manual_seed(0)
    U, Bs, T, t0 = 40, 8, 1000, 125
    mean = torch.linspace(10, 1, U, dtype=torch.float64)
    samples = mean + 0.5 * torch.randn(10000, U, generator=g, dtype=torch.float64)
    budget = U * t0 + Bs * (T - t0) - U * t0        # left after the seed period: Bs (T - t0)
    kept = {lam: int(decide(mean, samples, budget_final=Bs, budget_compute=budget, lam=lam, t=t0, T=T, prev_kept=U,
                            penalty_horizon=(T - t0) / T).sum()) for lam in (1e-2, 1e-4, 1e-7)}
    assert Bs < kept[1e-2] < kept[1e-4] < kept[1e-7], kept
    literal = {lam: int(decide(mean, samples, budget_final=Bs, budget_compute=budget, lam=lam, t=t0, T=T,
                               prev_kept=U).sum()) for lam in (1e-2, 1e-4)}
    assert literal == {1e-2: Bs, 1e-4: Bs}


def test_a_group_the_analysis_stops_following_is_cut_to_its_final_count(lenet):
    """LeNet's conv2 at <= 4 channels is no longer prunable after a rewrite (the flatten rule
    keeps only the largest factor of (C, 5, 5)); a decision that lands there cuts it to B_s."""
    model, X, Y = lenet
    prepared = fxprune.prepare(model, X[:2], method="bep", data=[(X, Y)], total_steps=400, units={"conv2": 2},
                               progress=False)
    entry: dict = {}
    means = {"conv2": torch.arange(16, dtype=torch.float64)}
    prepared._prune_followable({"conv2": np.array([13, 14, 15])}, means, None, entry)
    if "cut_to_final" in entry:
        assert entry["cut_to_final"] == ["conv2"]
        assert prepared.alive["conv2"].tolist() == [14, 15]          # the top of the decision's mean
    else:                                                            # the analysis follows 3 channels
        assert prepared.alive["conv2"].tolist() == [13, 14, 15]
    assert len(prepared.alive["conv2"]) == prepared.units()["conv2"]
