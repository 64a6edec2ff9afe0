"""BEP's saliency belief (fxprune.passes.bep.saliency_gp) and pruning decision (fxprune.passes.bep.decision)."""
from __future__ import annotations

import math

import gpytorch
import pytest
import torch

from fxprune.passes.bep.decision import decide, greedy_value, penalty, penalty_error, utility
from fxprune.errors import InputError
from fxprune.passes.bep.saliency_gp import ExponentialDecayKernel, Preprocess, SaliencyGP, _KroneckerNLL, bucket

D = torch.float64


def decays(seed: int, U: int = 20, T: int = 40, noise: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """U saliency curves, each a random mixture of 2 latent exponential decays (time
    constants 4 and 20) plus an asymptote and noise, at t = 1..T, in saliency units ~1e-2."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(1, T + 1, dtype=D)
    latents = torch.stack([torch.exp(-t / 4), torch.exp(-t / 20)])
    mix = torch.rand(U, 2, generator=g, dtype=D)
    Y = 0.1 + mix @ latents + noise * torch.randn(U, T, generator=g, dtype=D)
    return t, 1e-2 * Y


# ------------------------------------------------------------------ kernel
def test_kernel_equals_formula():
    k = ExponentialDecayKernel().double()
    k.alpha, k.beta = 1.7, 0.6
    g = torch.Generator().manual_seed(1)
    t1, t2 = 5 * torch.rand(7, 1, generator=g, dtype=D), 5 * torch.rand(5, 1, generator=g, dtype=D)
    want = 0.6 ** 1.7 / (t1 + t2.T + 0.6) ** 1.7
    torch.testing.assert_close(k(t1, t2).to_dense(), want)
    torch.testing.assert_close(k(t1, t1, diag=True), (0.6 / (2 * t1[:, 0] + 0.6)) ** 1.7)


def test_kernel_batched_and_constrained():
    k = ExponentialDecayKernel(batch_shape=torch.Size([3])).double()
    alpha, beta = torch.tensor([0.5, 1.0, 2.0], dtype=D), torch.tensor([0.1, 1.0, 10.0], dtype=D)
    k.alpha, k.beta = alpha.view(3, 1, 1), beta.view(3, 1, 1)
    x = torch.linspace(0, 3, 6, dtype=D).reshape(1, 6, 1).expand(3, 6, 1)
    got = k(x, x).to_dense()
    for i in range(3):
        torch.testing.assert_close(got[i], beta[i] ** alpha[i] / (x[i] + x[i].T + beta[i]) ** alpha[i])
    assert isinstance(k.raw_alpha_constraint, gpytorch.constraints.Positive)
    with torch.no_grad():
        k.raw_alpha.fill_(-50.0)
    assert bool((k.alpha > 0).all())


# ------------------------------------------------------------ preprocessing
def test_preprocess_round_trips_and_flips_increasing_series():
    t = torch.arange(12, dtype=D)
    g = torch.Generator().manual_seed(2)
    scale = torch.rand(6, 1, generator=g, dtype=D) + 0.5
    Y = torch.cat([scale[:3] * torch.exp(-t / 5), scale[3:] * (1 - torch.exp(-t / 5))])  # 3 down, 3 up
    pre = Preprocess.fit(t, Y)
    assert pre.flipped.tolist() == [False] * 3 + [True] * 3
    Z = pre.transform(Y)
    assert float(Z.min()) >= 0 and float(Z.max()) <= 10
    assert bool((Z.diff(dim=1) <= 1e-12).all())                      # every series now decays
    back, _ = pre.inverse(Z.T)                                         # samples layout (n, U)
    torch.testing.assert_close(back.T, Y)
    mean_back, _ = pre.inverse(Z[:, 4])
    torch.testing.assert_close(mean_back, Y[:, 4])
    A = torch.randn(6, 6, generator=g, dtype=D)
    cov_z = A @ A.T
    _, cov_x = pre.inverse(Z[:, 0], cov_z)
    J = torch.diag(pre.slope)                                          # dz/dx
    torch.testing.assert_close(J @ cov_x @ J, cov_z)


def test_preprocess_clips_at_scaled_percentile():
    t = torch.arange(20, dtype=D)
    Y = torch.exp(-t / 6).repeat(2, 1)
    Y[0, 3] = 100.0                                                     # an outlier
    pre = Preprocess.fit(t, Y)
    torch.testing.assert_close(pre.upper, 1.3 * torch.quantile(Y, 0.95, dim=1))
    assert float(pre.transform(Y)[0, 3]) == pytest.approx(10.0)
    group = Preprocess.fit(t, Y, per_unit=False)
    torch.testing.assert_close(group.upper, (1.3 * torch.quantile(Y.flatten(), 0.95)).expand(2))


def test_bucket_averages_measurements():
    times = torch.arange(10, dtype=D)
    Y = torch.stack([times, 2 * times])
    centres, means = bucket(times, Y, width=5)
    torch.testing.assert_close(centres, torch.tensor([2.0, 7.0], dtype=D))
    torch.testing.assert_close(means, torch.tensor([[2.0, 7.0], [4.0, 14.0]], dtype=D))


# ----------------------------------------------------- exact Kronecker inference
@pytest.mark.parametrize("Q", [2, 0])
def test_kronecker_nll_and_gradient_match_dense(Q):
    g = torch.Generator().manual_seed(3)
    U, T = 4, 5
    W = torch.randn(U, Q, generator=g, dtype=D, requires_grad=True)
    v = (torch.rand(U, generator=g, dtype=D) + 0.1).requires_grad_()
    X = torch.randn(T, 3, generator=g, dtype=D)
    S = (X @ X.T + 0.1 * torch.eye(T, dtype=D)).requires_grad_()
    noise = (torch.rand(U, generator=g, dtype=D) + 0.1).requires_grad_()
    R = torch.randn(U, T, generator=g, dtype=D, requires_grad=True)
    B = W @ W.T + torch.diag(v)
    K = torch.kron(B, S) + torch.kron(torch.diag(noise), torch.eye(T, dtype=D))
    dense = -torch.distributions.MultivariateNormal(torch.zeros(U * T, dtype=D), K).log_prob(R.reshape(-1))
    torch.testing.assert_close(_KroneckerNLL.apply(W, v, S, noise, R), dense)

    def nll(W, v, S, noise, R):  # K_t enters symmetrised, as a kernel matrix does
        return _KroneckerNLL.apply(W, v, 0.5 * (S + S.T), noise, R)

    assert torch.autograd.gradcheck(nll, (W, v, S, noise, R))


def test_posterior_matches_dense_gp():
    t, Y = decays(0, U=6, T=8)
    model = SaliencyGP(t, Y, num_latents=2)
    model.fit(max_iter=15)
    new = torch.tensor([10.0, 20.0, 33.0], dtype=D)
    mean, cov = model._posterior_model(new, observation_noise=False)
    with torch.no_grad():
        B, noise, mu = model.task_covariance, model.noise, model.mean_module.constant
        both = torch.cat([t, new])
        Kfull = torch.kron(B, model._kt(both, both))
        tr = torch.tensor([u * 11 + s for u in range(6) for s in range(8)])
        te = torch.tensor([u * 11 + s for u in range(6) for s in range(8, 11)])
        Ktr = Kfull[tr][:, tr] + torch.kron(torch.diag(noise), torch.eye(8, dtype=D))
        Kx = Kfull[te][:, tr]
        want_mean = mu.repeat_interleave(3) + Kx @ torch.linalg.solve(Ktr, (model.Z - mu[:, None]).reshape(-1))
        want_cov = Kfull[te][:, te] - Kx @ torch.linalg.solve(Ktr, Kx.T)
    torch.testing.assert_close(mean.reshape(-1), want_mean)
    torch.testing.assert_close(cov, want_cov)


def test_predict_path_agrees_with_predict_at_each_time():
    t, Y = decays(1, U=5, T=10)
    model = SaliencyGP(t, Y, num_latents=2)
    model.fit(max_iter=10)
    times = torch.tensor([12.0, 25.0], dtype=D)
    mean, std = model.predict_path(times)
    assert mean.shape == std.shape == (5, 2)
    for j, tj in enumerate(times.tolist()):
        m, cov = model.predict(tj)
        torch.testing.assert_close(mean[:, j], m)
        torch.testing.assert_close(std[:, j], cov.diagonal().clamp_min(0).sqrt())


# ---------------------------------------------- MOGP vs independent GPs (Table 2)
class _IndependentGPs(gpytorch.models.ExactGP):
    """One GP per unit (batched), each with its own exponential kernel, scale, mean, noise."""

    def __init__(self, x, y, likelihood, U):
        super().__init__(x, y, likelihood)
        batch = torch.Size([U])
        self.mean_module = gpytorch.means.ConstantMean(batch_shape=batch)
        self.covar_module = gpytorch.kernels.ScaleKernel(ExponentialDecayKernel(batch_shape=batch), batch_shape=batch)

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def _independent_log_prob(times, Z, new_times, Z_new, time_scale) -> float:
    U = Z.shape[0]
    x = (times / time_scale).reshape(1, -1, 1).expand(U, -1, 1)
    likelihood = gpytorch.likelihoods.GaussianLikelihood(batch_shape=torch.Size([U])).double()
    model = _IndependentGPs(x, Z, likelihood, U).double()
    with torch.no_grad():
        model.mean_module.constant = Z[:, -1].clone()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -mll(model(x), Z).sum()
        loss.backward()
        return loss

    model.train()
    opt.step(closure)
    model.eval()
    xs = (new_times / time_scale).reshape(1, -1, 1).expand(U, -1, 1)
    with torch.no_grad():
        return float(likelihood(model(xs)).log_prob(Z_new).sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_mogp_beats_independent_gps_on_held_out_times(seed):
    t, Y = decays(seed)
    n = 10                                                   # observe 10 of 40 time points
    mogp = SaliencyGP(t[:n], Y[:, :n], num_latents=2)
    mogp.fit(max_iter=100)
    ll_mogp = mogp.log_prob(t[n:], Y[:, n:])
    Z_new = mogp.preprocess.transform(Y[:, n:])            # same space for both models
    ll_independent = _independent_log_prob(t[:n], mogp.Z, t[n:], Z_new, mogp.time_scale)
    assert ll_mogp > ll_independent


# ------------------------------------------------------------------ prediction
def test_prediction_is_symmetric_psd_and_sampled_faithfully():
    t, Y = decays(4)
    model = SaliencyGP(t[:15], Y[:, :15], num_latents=3)
    model.fit(max_iter=30)
    mean, cov = model.predict(40.0)
    assert mean.shape == (20,) and cov.shape == (20, 20)
    torch.testing.assert_close(cov, cov.T, rtol=0, atol=0)
    evals = torch.linalg.eigvalsh(cov)
    assert float(evals.min()) >= -1e-10 * float(evals.max())
    assert float(mean.mean()) == pytest.approx(float(Y[:, -1].mean()), rel=0.5)  # saliency units, not [0, 10]
    s1 = model.sample(40.0, 20000, generator=torch.Generator().manual_seed(0))
    s2 = model.sample(40.0, 20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s1, s2) and s1.shape == (20000, 20)
    sd = cov.diag().sqrt()
    assert bool(((s1.mean(0) - mean).abs() <= 5 * sd / math.sqrt(20000) + 1e-15).all())
    torch.testing.assert_close(torch.cov(s1.T), cov, atol=0.05 * float(cov.diag().max()), rtol=0)


def test_warm_start_is_at_least_as_good_in_fewer_iterations():
    # the next pruning step: two more time points; 10 warm iterations vs 40 cold ones
    for seed in (1, 2, 3):
        t, Y = decays(seed)
        previous = SaliencyGP(t[:20], Y[:, :20], num_latents=2)
        previous.fit(max_iter=100)
        cold = SaliencyGP(t[:22], Y[:, :22], num_latents=2, preprocess=previous.preprocess)
        cold_fit = cold.fit(max_iter=40)
        warm = SaliencyGP(t[:22], Y[:, :22], num_latents=2)
        warm_fit = warm.fit(max_iter=10, init=previous.state_dict())
        assert torch.equal(warm.preprocess_upper, previous.preprocess_upper)  # adopted with the state
        assert warm_fit.iterations < cold_fit.iterations
        assert warm_fit.nll <= cold_fit.nll


def test_warm_start_after_pruning_units():
    t, Y = decays(2)
    previous = SaliencyGP(t[:20], Y[:, :20], num_latents=2)
    previous.fit(max_iter=100)
    kept = torch.tensor([0, 2, 3, 5, 7, 8, 11, 12, 13, 16, 17, 19])
    state = SaliencyGP.select_units(previous.state_dict(), kept)
    for iterations in (10, 20):                  # same budget: the warm start is ahead
        warm = SaliencyGP(t[:22], Y[kept, :22], num_latents=2)
        warm_fit = warm.fit(max_iter=iterations, init=state)
        cold = SaliencyGP(t[:22], Y[kept, :22], num_latents=2, preprocess=previous.preprocess.select(kept))
        assert warm_fit.nll < cold.fit(max_iter=iterations).nll
    assert warm.task_kernel.covar_factor.shape == (12, 2)
    torch.testing.assert_close(warm.preprocess_upper, previous.preprocess_upper[kept])


def test_bad_inputs_are_rejected():
    with pytest.raises(InputError):
        SaliencyGP(torch.arange(5.0), torch.rand(3, 4))
    with pytest.raises(InputError):
        SaliencyGP(torch.arange(5.0) - 1, torch.rand(3, 5))
    with pytest.raises(InputError):
        SaliencyGP(torch.arange(5.0), torch.rand(3, 5), num_latents=4)


# ------------------------------------------------------------------- decision
def _belief(U: int = 20, n: int = 4000, sd: float = 0.3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.linspace(2.0, 0.1, U, dtype=D)[torch.randperm(U, generator=g)]
    samples = mean + sd * torch.randn(n, U, generator=g, dtype=D)
    return mean, samples


def _naive_decide(mean, samples, budget_final, budget_compute, lam, t, T, prev_kept):
    """Algorithm 2 lines 10-20 with the floor, literally, through ``utility``; eq. 13 at
    the candidate mask."""
    mask = torch.zeros(len(mean), dtype=torch.bool)
    for a in torch.argsort(-mean, stable=True).tolist():
        count = int(mask.sum())
        if count < budget_final or budget_compute - (T - t) * count > 0:
            mask[a] = True
        elif utility(samples, a, mask, budget_final) > penalty(lam, t, T, count + 1, budget_compute) * (T - t):
            mask[a] = True
        else:
            break
    return mask


def _top(mean, k):
    mask = torch.zeros(len(mean), dtype=torch.bool)
    mask[torch.argsort(-mean, stable=True)[:k]] = True
    return mask


def test_utility_is_the_expected_gain_over_the_weakest_selected_unit():
    samples = torch.tensor([[3.0, 1.0, 2.0], [0.5, 4.0, -1.0]], dtype=D)
    mask = torch.tensor([True, True, False])
    torch.testing.assert_close(greedy_value(samples, mask, 1), torch.tensor([3.0, 4.0], dtype=D))
    # adding unit 2 with B_s = 1: gains max(2 - 3, 0) = 0 and max(-1 - 4, 0) = 0
    assert utility(samples, 2, mask, 1) == 0.0
    # with B_s = 2 the weakest selected are 1 and 0.5: gains 1 and 0 (negatives never count)
    assert utility(samples, 2, mask, 2) == pytest.approx(0.5)
    # fewer kept than B_s: the unit's positive part is added
    assert utility(samples, 2, torch.tensor([True, False, False]), 2) == pytest.approx(1.0)


def test_penalty_on_hand_values():
    # lambda = 1e-4, T - t = 60, ||m_{t-1}|| = 50: e = 3000 / B - 1
    assert penalty_error(40, 100, 50, 4000) == pytest.approx(-0.25)
    assert penalty(1e-4, 40, 100, 50, 4000) == pytest.approx(1e-5)          # 1e-4 ** 1.25
    assert penalty(1e-4, 40, 100, 50, 2000) == pytest.approx(1e-2)          # e = 0.5
    assert penalty(1e-4, 40, 100, 50, 3000) == pytest.approx(1e-4)          # e = 0: lambda_t = lambda
    assert penalty_error(40, 100, 50, 1000) == 1.0                          # e = 2, clipped
    assert penalty(1e-4, 40, 100, 50, 1000) == pytest.approx(1.0)
    assert penalty(1e-4, 40, 100, 50, 0) == pytest.approx(1.0)              # budget exhausted
    assert penalty(1e-4, 40, 100, 0, 3000) == pytest.approx(1e-8)           # e = -1: lambda^2
    assert penalty(1e-4, 40, 100, torch.ones(50, dtype=torch.bool), 2000) == pytest.approx(1e-2)
    with pytest.raises(InputError):
        penalty(-1.0, 40, 100, 50, 2000)


def test_decision_keeps_the_top_mean_units_the_budget_affords():
    mean, samples = _belief()
    every = decide(mean, samples, budget_final=5, budget_compute=10 * 19 + 1, lam=1e12, t=90, T=100, prev_kept=20)
    assert bool(every.all())
    eight = decide(mean, samples, budget_final=5, budget_compute=10 * 8, lam=1e12, t=90, T=100, prev_kept=8)
    assert torch.equal(eight, _top(mean, 8))


def test_huge_lambda_prunes_to_the_floor():
    mean, samples = _belief()
    budget = 10 * 20 / 1.5                       # e(t) = 0.5, affords ceil(13.3) = 14 units
    mask = decide(mean, samples, budget_final=16, budget_compute=budget, lam=1e12, t=90, T=100, prev_kept=20)
    assert torch.equal(mask, _top(mean, 16))
    mask = decide(mean, samples, budget_final=3, budget_compute=budget, lam=1e12, t=90, T=100, prev_kept=20)
    assert torch.equal(mask, _top(mean, 14))     # floor below what the budget affords


def test_lambda_zero_keeps_every_unit_with_positive_utility():
    # B_{t,c} = 150, T - t = 10: the budget affords 15 units; lambda_t = 0 below 30 units
    mean, samples = _belief(sd=1.0)             # every unit may end up among the best 5
    assert penalty(0.0, 90, 100, 20, 150) == 0.0
    mask = decide(mean, samples, budget_final=5, budget_compute=150, lam=0.0, t=90, T=100, prev_kept=20)
    assert bool(mask.all())
    mean, samples = _belief(sd=1e-3)            # certain ranking: no unit beyond 15 beats the top 5
    mask = decide(mean, samples, budget_final=5, budget_compute=150, lam=0.0, t=90, T=100, prev_kept=20)
    assert torch.equal(mask, _top(mean, 15))
    # an exhausted budget (e(t) clipped to 1) penalises even with lambda = 0
    assert penalty(0.0, 90, 100, 20, 0) == 1.0


@pytest.mark.parametrize("lam", [1e-6, 1e-5, 1e-4])
@pytest.mark.parametrize("budget_final", [0, 9, 14])
def test_decision_matches_algorithm_2_and_keeps_guarantees(lam, budget_final):
    # 17 alive units, B_{t,c} = 115 affords 12 of them; the 13th..17th face
    # lambda_t = lambda^(1 - e) with e = 10 * count / 115 - 1 in 0.13 .. 0.48
    mean, samples = _belief(seed=5, sd=0.5, n=2000)
    prev = torch.ones(20, dtype=torch.bool)
    prev[[1, 6, 13]] = False                                     # pruned before: must stay pruned
    kwargs = dict(budget_final=budget_final, budget_compute=115, lam=lam, t=90, T=100)
    mask = decide(mean, samples, prev_kept=prev, **kwargs)
    assert not bool((mask & ~prev).any())
    assert int(mask.sum()) >= min(budget_final, int(prev.sum()))
    alive_mean = torch.where(prev, mean, torch.full_like(mean, -math.inf))
    assert torch.equal(mask, _top(alive_mean, int(mask.sum())))  # a prefix of the order by mean
    sub = prev.nonzero().squeeze(1)
    want = _naive_decide(mean[sub], samples[:, sub], prev_kept=int(prev.sum()), **kwargs)
    assert torch.equal(mask[sub], want)


def test_lambda_matters_when_most_units_must_go():
    # the first decision of a 90%-pruning run: 100 units, B_s = 10, B_{t,c} = B_s (T - t).
    # e(t) read at the candidate mask starts at 0 for the 11th unit, so lambda decides how
    # many units beyond B_s survive (reading m_{t-1} gives e = 9 -> lambda_t = 1 for all).
    g = torch.Generator().manual_seed(3)
    mean = torch.linspace(10.0, 0.1, 100, dtype=D)
    samples = mean + 2.0 * torch.randn(4000, 100, generator=g, dtype=D)
    kept = [int(decide(mean, samples, budget_final=10, budget_compute=10 * 1000.0, lam=lam,
                       t=1000, T=2000, prev_kept=100).sum()) for lam in (1e-2, 1e-4, 1e-7)]
    assert kept[0] == 10                                  # lambda_t (T - t) >= 10 > any utility
    assert 10 < kept[1] < kept[2] < 20                    # lambda_t reaches 1 at 2 B_s
    assert penalty(1e-4, 1000, 2000, 11, 10 * 1000.0) == pytest.approx(1e-4 ** 0.9)
    assert penalty(1e-4, 1000, 2000, 20, 10 * 1000.0) == pytest.approx(1.0)


def test_decision_rejects_bad_inputs():
    mean, samples = _belief()
    with pytest.raises(InputError):
        decide(mean, samples[:, :5], budget_final=2, budget_compute=10, lam=0.1, t=1, T=10, prev_kept=20)
    with pytest.raises(InputError):
        decide(mean, samples, budget_final=2, budget_compute=10, lam=0.1, t=10, T=10, prev_kept=20)


def test_end_to_end_fit_sample_decide():
    t, Y = decays(3)
    model = SaliencyGP(t[:12], Y[:, :12], num_latents=2)
    model.fit(max_iter=20)
    mean, _ = model.predict(40.0)
    samples = model.sample(40.0, 2000, generator=torch.Generator().manual_seed(0))
    mask = decide(mean, samples, budget_final=6, budget_compute=28 * 8, lam=1e-6, t=12, T=40, prev_kept=20)
    assert 6 <= int(mask.sum()) <= 20
    assert torch.equal(mask, _top(mean, int(mask.sum())))
