"""BEP's multi-output GP over the saliency curves of one group, as the paper states it (Sec. 4.2, 5, G.1).

The saliency of unit ``a`` is a linear mixture of ``Q`` independent latent GPs,
``s^a(t) = sum_q w_qa u_q(t)``, each ``u_q`` with **prior mean zero** and its **own**
exponential kernel ``k_q(t, t') = beta_q^alpha_q / (t + t' + beta_q)^alpha_q``, plus
per-unit Gaussian measurement noise. As in the paper (GPflow, Hensman et al. 2015) it is
a sparse variational GP, here gpytorch's: ``LMCVariationalStrategy`` over a batch of
``Q`` ``VariationalStrategy``'s with ``inducing`` inducing points per latent (paper: 60),
``MultitaskGaussianLikelihood`` with one noise per unit, trained by the variational ELBO
with Adam. The data are preprocessed as App. G.3 (``Preprocess``: clip at 1.3 x the 95th
percentile, flip increasing series, scale to [0, 10]); every prediction is mapped back.

Times are divided by ``time_scale`` (BEP passes ``T``, the end of training, so that the
prediction point is 1 and a warm start keeps its meaning). The inducing points are fixed:
half spread over the observed times, half from the last observation to ``t = 1``.

The paper's kernel's variance ``k_q(t, t) = (beta_q / (2t + beta_q))^alpha_q`` vanishes
at large ``t``: the prior then says every curve ends exactly at 0 in model space, and the
bands are too narrow (on a real trace 69-79% of held-out buckets inside the 95% band). By
default each latent's kernel is that kernel **plus a constant** ``c_q`` (the level a curve
settles at stays uncertain) **plus a drift**, a scaled Matern-1/2 kernel (saliency keeps
wandering as training goes on, so the uncertainty grows with the horizon):
``kernel="exponential+constant+drift"``. Measured on a real trace
(``tools/bench_saliency_gp.py calibrate``, ``tools/results/saliency_gp_calibration.md``) it
is the one of the three whose bands cover >= 90% of the held-out buckets;
``"exponential+constant"`` and the paper's ``"exponential"`` stay available.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from fxprune.errors import InputError

from .saliency_gp import Preprocess

_DTYPE = torch.float64
#: per-unit state entries (sliced by ``select_units``); the rest is per latent.
_PER_UNIT = ("model.variational_strategy.lmc_coefficients", "likelihood.raw_task_noises",
             "preprocess_upper", "preprocess_flipped")


#: latent kernels (``BEP.kernel``, module doc): the paper's exponential kernel plus a constant
#: and a drift (Matern-1/2) term per latent, plus a constant only, or the paper's kernel alone.
KERNELS: tuple[str, ...] = ("exponential+constant+drift", "exponential+constant", "exponential")


@dataclass(frozen=True)
class MOGPFit:
    """Outcome of ``SaliencyMOGP.fit``: final negative ELBO per observation and Adam steps."""

    nll: float
    iterations: int


def _inducing(x: Tensor, M: int) -> Tensor:
    last = float(x.max())
    seen = torch.linspace(0.0, last, M // 2, dtype=_DTYPE)
    ahead = torch.linspace(last, max(1.0, last), M - M // 2 + 1, dtype=_DTYPE)[1:]
    return torch.cat([seen, ahead]).unsqueeze(-1)


def _build(Q: int, U: int, inducing: Tensor, kernel: str):
    """The gpytorch LMC model and its likelihood (gpytorch is imported here)."""
    import gpytorch
    from gpytorch.constraints import GreaterThan

    from .saliency_kernel import ExponentialDecayKernel
    from .saliency_gp import _log_positive

    class _LMC(gpytorch.models.ApproximateGP):
        def __init__(self) -> None:
            points = inducing.expand(Q, *inducing.shape).clone()
            dist = gpytorch.variational.CholeskyVariationalDistribution(points.shape[-2], batch_shape=torch.Size([Q]))
            base = gpytorch.variational.VariationalStrategy(self, points, dist, learn_inducing_locations=False)
            super().__init__(gpytorch.variational.LMCVariationalStrategy(base, num_tasks=U, num_latents=Q,
                                                                         latent_dim=-1))
            self.mean_module = gpytorch.means.ZeroMean(batch_shape=torch.Size([Q]))
            decay = ExponentialDecayKernel(batch_shape=torch.Size([Q]), alpha_constraint=_log_positive(),
                                           beta_constraint=_log_positive())
            if kernel == "exponential":
                self.covar_module = decay
            else:
                parts = [decay, gpytorch.kernels.ConstantKernel(batch_shape=torch.Size([Q]),
                                                                constant_constraint=_log_positive())]
                if kernel.endswith("+drift"):
                    drift = gpytorch.kernels.MaternKernel(nu=0.5, batch_shape=torch.Size([Q]))
                    parts.append(gpytorch.kernels.ScaleKernel(drift, batch_shape=torch.Size([Q])))
                self.covar_module = gpytorch.kernels.AdditiveKernel(*parts)

        def forward(self, x: Tensor):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    model = _LMC()
    likelihood = gpytorch.likelihoods.MultitaskGaussianLikelihood(
        num_tasks=U, rank=0, has_global_noise=False,
        noise_constraint=GreaterThan(1e-4, transform=torch.exp, inv_transform=torch.log))
    return model.to(_DTYPE), likelihood.to(_DTYPE)


class SaliencyMOGP(torch.nn.Module):
    """The paper's LMC multi-output GP over ``U`` saliency series (module doc).

    Needs ``times`` (T,) non-negative and ``Y`` (U, T) raw saliency, finite, T >= 2;
    ``num_latents`` = Q in [1, U] (paper: 12 for conv layers, 4 for dense);
    ``time_scale`` > 0 (default ``max(times)``). ``state_dict()`` warm-starts the next fit
    (``fit(init=...)``, after ``select_units`` when units were pruned).
    """

    def __init__(self, times: Tensor, Y: Tensor, num_latents: int, *, time_scale: float | None = None,
                 inducing: int = 60, preprocess: Preprocess | None = None,
                 kernel: str = "exponential+constant+drift") -> None:
        super().__init__()
        times, Y = torch.as_tensor(times, dtype=_DTYPE), torch.as_tensor(Y, dtype=_DTYPE)
        if Y.dim() != 2 or times.dim() != 1 or Y.shape[1] != times.shape[0] or len(times) < 2:
            raise InputError(f"need times (T,) and Y (U, T) with T >= 2, got {tuple(times.shape)} and {tuple(Y.shape)}")
        if bool((times < 0).any()) or not bool(torch.isfinite(Y).all()):
            raise InputError("times must be non-negative and Y finite")
        U = Y.shape[0]
        if not 1 <= num_latents <= U:
            raise InputError(f"num_latents must lie in [1, {U}], got {num_latents}")
        if inducing < 2:
            raise InputError(f"inducing must be >= 2, got {inducing}")
        scale = float(times.max()) if time_scale is None else float(time_scale)
        if not scale > 0:
            raise InputError(f"time_scale must be positive, got {time_scale}")
        pre = preprocess if preprocess is not None else Preprocess.fit(times, Y)
        self.register_buffer("preprocess_upper", pre.upper.to(_DTYPE).clone())
        self.register_buffer("preprocess_flipped", pre.flipped.clone())
        self.time_scale = scale
        self.times, self.Y = times, Y
        if kernel not in KERNELS:
            raise InputError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        self.model, self.likelihood = _build(num_latents, U, _inducing(times / scale, inducing), kernel)
        self._initialise(num_latents)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.preprocess_upper, self.preprocess_flipped)

    @property
    def Z(self) -> Tensor:
        """The training data in model space (U, T)."""
        return self.preprocess.transform(self.Y)

    @property
    def _decay(self):
        """The exponential kernel of the latents (alone, or the first of the sum)."""
        k = self.model.covar_module
        return k.kernels[0] if hasattr(k, "kernels") else k

    @property
    def noise(self) -> Tensor:
        """(U,) measurement noise variance, model space."""
        return self.likelihood.task_noises

    def _x(self, times: Tensor) -> Tensor:
        return (torch.as_tensor(times, dtype=_DTYPE).reshape(-1, 1) / self.time_scale)

    def _initialise(self, Q: int) -> None:
        """Mixing weights from the top-Q SVD of the data, kernels alpha=1, beta=0.5, noise from
        first differences."""
        Z = self.Z
        Uv, S, _ = torch.linalg.svd(Z, full_matrices=False)
        gen = torch.Generator().manual_seed(0)
        W = 0.1 * torch.randn(Z.shape[0], Q, generator=gen, dtype=_DTYPE)
        k = min(Q, len(S))
        W[:, :k] = Uv[:, :k] * S[:k] / math.sqrt(Z.shape[1])
        with torch.no_grad():
            self.model.variational_strategy.lmc_coefficients.copy_(W.T)
            decay = self._decay
            decay.alpha = 1.0
            decay.beta = 0.5
            diff = Z.diff(dim=1).var(1, unbiased=False) if Z.shape[1] > 2 else Z.var(1, unbiased=False)
            self.likelihood.task_noises = (0.5 * diff).clamp_min(1e-3)

    # ---- fit
    def fit(self, *, max_iter: int = 200, init: Mapping[str, Tensor] | None = None, lr: float = 0.1) -> MOGPFit:
        """Maximises the variational ELBO with Adam for ``max_iter`` steps; ``init`` warm-starts
        from a previous fit's ``state_dict`` over the same units (its preprocessing is adopted,
        its inducing points are not). Guarantees finite parameters: a run ending non-finite is undone."""
        import gpytorch

        if max_iter < 1:
            raise InputError(f"max_iter must be >= 1, got {max_iter}")
        if init is not None:
            state = {k: v for k, v in init.items() if "inducing_points" not in k}
            self.load_state_dict(state, strict=False)
        start = {k: v.clone() for k, v in self.state_dict().items()}
        self.model.train()
        self.likelihood.train()
        x, z = self._x(self.times), self.Z.T.contiguous()
        mll = gpytorch.mlls.VariationalELBO(self.likelihood, self.model, num_data=z.shape[0])
        opt = torch.optim.Adam(list(self.model.parameters()) + list(self.likelihood.parameters()), lr=lr)
        loss = torch.tensor(math.nan)
        for _ in range(max_iter):
            opt.zero_grad()
            loss = -mll(self.model(x), z)
            loss.backward()
            opt.step()
        nll = float(loss.detach()) / z.shape[1]
        if not (math.isfinite(nll) and all(bool(torch.isfinite(p).all()) for p in self.parameters())):
            self.load_state_dict(start)
        self.model.eval()
        self.likelihood.eval()
        return MOGPFit(nll, max_iter)

    @staticmethod
    def select_units(state: Mapping[str, Tensor], index: Tensor) -> dict[str, Tensor]:
        """A state_dict restricted to the units ``index`` (after a pruning step)."""
        out = {}
        for k, v in state.items():
            if k == "model.variational_strategy.lmc_coefficients":
                out[k] = v[:, index]
            elif k in _PER_UNIT:
                out[k] = v[index]
            else:
                out[k] = v
        return out

    # ---- prediction (model space first, then mapped back)
    @torch.no_grad()
    def _posterior(self, times: Tensor, observation_noise: bool):
        import gpytorch

        self.model.eval()
        self.likelihood.eval()
        with gpytorch.settings.fast_pred_var(False):
            out = self.model(self._x(times))
            return self.likelihood(out) if observation_noise else out

    @torch.no_grad()
    def predict(self, t_final: float) -> tuple[Tensor, Tensor]:
        """``p(s_T | s_1:t)`` of the noise-free saliency at ``t_final``: ``(mean (U,), cov (U, U))``
        in saliency units; ``cov`` symmetric."""
        post = self._posterior(torch.tensor([float(t_final)]), observation_noise=False)
        mean = post.mean.reshape(-1)
        cov = post.covariance_matrix.to_dense() if hasattr(post.covariance_matrix, "to_dense") \
            else post.covariance_matrix
        cov = 0.5 * (cov + cov.T)
        return self.preprocess.inverse(mean, cov)

    @torch.no_grad()
    def predict_path(self, times: Tensor, observation_noise: bool = False) -> tuple[Tensor, Tensor]:
        """Marginal predictive mean and sd ``(U, S)`` at ``times`` (S,), noise-free or of a new
        measurement, in saliency units (the paper's Fig. 3 bands)."""
        post = self._posterior(times, observation_noise)
        mean, var = post.mean.T, post.variance.T.clamp_min(0)
        return self.preprocess.inverse(mean.T)[0].T, var.sqrt() / self.preprocess.slope.abs()[:, None]

    @torch.no_grad()
    def sample(self, t_final: float, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples ``(n, U)`` of ``s_T`` from ``predict(t_final)`` (saliency units)."""
        mean, cov = self.predict(t_final)
        evals, evecs = torch.linalg.eigh(cov)
        root = evecs * evals.clamp_min(0).sqrt()
        eps = torch.randn(n, len(mean), generator=generator, dtype=_DTYPE)
        return mean + eps @ root.T

    @torch.no_grad()
    def log_prob(self, times: Tensor, Y: Tensor) -> float:
        """Joint predictive log-density of held-out ``Y`` (U, S) at ``times`` (S,), noise included,
        after the training data's preprocessing (the paper's Table 2)."""
        post = self._posterior(times, observation_noise=True)
        z = self.preprocess.transform(torch.as_tensor(Y, dtype=_DTYPE))
        return float(post.log_prob(z.T.contiguous()))
