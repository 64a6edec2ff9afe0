"""Saliency series helpers of BEP (``bucket``, ``Preprocess``) and ``SaliencyGP``, the earlier
exact ICM belief, kept as a measured baseline (``tools/bench_saliency_gp.py calibrate``): BEP
itself now fits the paper's LMC model, ``fxprune.passes.bep.mogp.SaliencyMOGP``.

Bayesian Early Pruning ("Pruning During Training by Network Efficacy Modeling") models
the saliency ``s_t^a`` of every unit ``a`` of a group, measured at times ``t_1..t_T``,
with a linear model of coregionalisation: ``Q`` latent GPs sharing the "exponential
kernel" ``k(t, t') = beta^alpha / (t + t' + beta)^alpha`` are mixed into the ``U``
outputs. Here that model is an intrinsic coregionalisation model (ICM)::

    vec(Y) ~ N(vec(mu 1^T), B (x) K_t + diag(noise) (x) I_T),   B = W W^T + diag(v)

with ``W`` of shape ``(U, Q)``, a per-unit constant mean ``mu`` (the asymptote the
decaying curves approach: the kernel's variance vanishes as ``t`` grows) and per-unit
Gaussian noise. All Q latents share one kernel (the paper gives each latent its own
``alpha_q, beta_q``; sharing it is what makes the covariance a Kronecker product).

Inference is exact (the paper used a variational approximation with 60 inducing
points) and uses the structure: one ``eigh`` of ``K_t`` (``T^3``) makes the covariance
block-diagonal with ``T`` blocks ``mu_j B + D``, each inverted by Woodbury through a
``Q x Q`` matrix, so a likelihood evaluation costs ``O(T^3 + U T^2 + T U Q^2)`` and
never ``U^3``. Its gradient is written in closed form, so no gradient flows through
``eigh`` (whose backward pass is unstable for the clustered spectra of kernel matrices).

Contents: ``ExponentialDecayKernel`` (a gpytorch kernel, defined in
``fxprune.passes.bep.saliency_kernel`` and loaded on first use with gpytorch), ``bucket`` (App. G.1:
average raw measurements into time buckets), ``Preprocess`` (App. G.3: clip, trend
flip, scale to [0, 10], and the inverse map), ``SaliencyGP`` (fit, ``predict`` the
final saliency ``s_T``, ``sample`` it for the utility of ``fxprune.passes.bep.decision``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import Tensor

from fxprune.errors import InputError

if TYPE_CHECKING:
    from gpytorch.constraints import Positive

_DTYPE = torch.float64


def __getattr__(name: str) -> Any:
    """``ExponentialDecayKernel`` on first access (it imports gpytorch); other names are missing."""
    if name == "ExponentialDecayKernel":
        from .saliency_kernel import ExponentialDecayKernel

        return ExponentialDecayKernel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------- preprocessing
def bucket(times: Tensor, Y: Tensor, width: float) -> tuple[Tensor, Tensor]:
    """Average measurements into time buckets of ``width`` (App. G.1: every 5 iterations
    measured, averaged into buckets of 625 iterations).

    Needs: ``times`` (N,) non-decreasing, ``Y`` (U, N). Returns ``(centres (K,), means
    (U, K))`` over the K non-empty buckets ``[times[0] + k*width, times[0] + (k+1)*width)``;
    a bucket's time is the mean time of its measurements.
    """
    if width <= 0:
        raise InputError(f"bucket width must be positive, got {width}")
    index = torch.floor((times - times[0]) / width).long()
    _, index = torch.unique(index, return_inverse=True)
    count = torch.zeros(int(index.max()) + 1, dtype=Y.dtype).index_add_(0, index, torch.ones_like(times, dtype=Y.dtype))
    centres = torch.zeros_like(count).index_add_(0, index, times.to(Y.dtype)) / count
    means = torch.zeros(Y.shape[0], len(count), dtype=Y.dtype).index_add_(1, index, Y) / count
    return centres, means


@dataclass
class Preprocess:
    """App. G.3 preprocessing, an affine map per unit after clipping.

    ``transform`` maps raw saliency ``x`` of unit ``u`` to ``z = offset_u + slope_u *
    clip(x, 0, upper_u)``, which is ``10 * x / upper_u`` for a series kept as is and
    ``10 * (upper_u - x) / upper_u`` for a *flipped* one. Trend flip: a unit whose
    clipped training series has a positive least-squares slope against time (an
    increasing curve, which the decaying exponential kernel fits badly) is reflected
    inside its clipping range, ``x -> upper_u - x``; the reflected series decreases
    and still lies in ``[0, upper_u]``. ``upper_u = 1.3 * 95th percentile`` of the
    unit's series (``per_unit=True``, the default) or of the whole group's
    measurements (``per_unit=False``, App. G.3's wording). Every transformed value
    lies in ``[0, 10]``.

    ``inverse`` undoes the affine part exactly (clipping cannot be undone), so a
    Gaussian prediction maps to a Gaussian in saliency units.
    """

    upper: Tensor      # (U,) clipping bound ub
    flipped: Tensor    # (U,) bool, trend flipped
    scale: float = 10.0

    @classmethod
    def fit(cls, times: Tensor, Y: Tensor, *, quantile: float = 0.95, factor: float = 1.3,
            per_unit: bool = True, scale: float = 10.0) -> "Preprocess":
        """Needs ``times`` (T,) and ``Y`` (U, T) raw saliency; T >= 2 for the trend check."""
        Y = Y.to(_DTYPE)
        q = torch.quantile(Y, quantile, dim=1) if per_unit else torch.quantile(Y.flatten(), quantile).expand(Y.shape[0])
        upper = factor * q.clamp_min(0)
        floor = max(1e-12, 1e-6 * float(upper.max()))
        upper = upper.clamp_min(floor)
        clipped = torch.minimum(Y.clamp_min(0), upper[:, None])
        t = times.to(_DTYPE) - times.to(_DTYPE).mean()
        slope = (clipped - clipped.mean(1, keepdim=True)) @ t
        return cls(upper=upper, flipped=slope > 0, scale=scale)

    @property
    def slope(self) -> Tensor:
        """(U,) ``dz/dx``: ``+scale/upper``, negative for flipped units."""
        sign = 1.0 - 2.0 * self.flipped.to(_DTYPE)
        return sign * self.scale / self.upper

    @property
    def offset(self) -> Tensor:
        """(U,) ``z`` at ``x = 0``: 0, or ``scale`` for flipped units."""
        return self.flipped.to(_DTYPE) * self.scale

    def transform(self, Y: Tensor) -> Tensor:
        """Raw data ``(U, T)`` (units on the first axis) -> model space ``(U, T)`` in [0, 10]."""
        clipped = torch.minimum(Y.to(_DTYPE).clamp_min(0), self.upper[:, None])
        return self.offset[:, None] + self.slope[:, None] * clipped

    def inverse(self, values: Tensor, cov: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Model space -> saliency units. ``values`` has units on the *last* axis: a mean
        ``(U,)`` or samples ``(n, U)``; ``cov`` ``(U, U)`` is mapped to ``cov / (b b^T)``."""
        x = (values - self.offset) / self.slope
        if cov is None:
            return x, None
        return x, cov / (self.slope[:, None] * self.slope[None, :])

    def select(self, index: Tensor) -> "Preprocess":
        """The preprocessing of the units ``index`` only."""
        return Preprocess(self.upper[index], self.flipped[index], self.scale)


# ------------------------------------------------------------- Kronecker likelihood
# K = B (x) K_t + D (x) I with B = W W^T + diag(v), D = diag(noise). Rotating time by the
# eigenvectors of K_t = Q diag(mu) Q^T makes K block-diagonal: one U x U block
# C_j = mu_j B + D = mu_j W W^T + E_j, E_j = diag(mu_j v + noise), per eigenvalue mu_j,
# acting on column j of R Q. Each block is inverted by Woodbury through the Q x Q
# capacity S_j = I + mu_j W^T E_j^-1 W, so the cost is O(T^3 + U T^2 + T U Q^2): linear
# in the number of units U.
@dataclass
class _Blocks:
    """The per-eigenvalue blocks ``C_j`` of the rotated covariance, factorised."""

    mu: Tensor     # (T,) eigenvalues of K_t (clamped at 0)
    Qt: Tensor     # (T, T) eigenvectors of K_t
    Einv: Tensor   # (U, T) 1 / (mu_j v_u + noise_u)
    WE: Tensor     # (T, U, Q) E_j^-1 W
    WtEW: Tensor   # (T, Q, Q) W^T E_j^-1 W
    L: Tensor      # (T, Q, Q) Cholesky factor of S_j

    def solve(self, X: Tensor) -> Tensor:
        """``C_j^-1 x_j`` for every column ``x_j`` of ``X`` (U, T) in the rotated basis."""
        x = self.Einv * X
        y = torch.einsum("juq,uj->jq", self.WE, X)
        z = torch.cholesky_solve(y.unsqueeze(-1), self.L).squeeze(-1)
        return x - self.mu[None, :] * torch.einsum("juq,jq->uj", self.WE, z)

    def logdet(self) -> Tensor:
        return -self.Einv.log().sum() + 2 * torch.diagonal(self.L, dim1=-2, dim2=-1).log().sum()

    def inverse_parts(self) -> tuple[Tensor, Tensor]:
        """``diag(C_j^-1)`` as (U, T) and ``C_j^-1 W`` as (T, U, Q)."""
        Sinv = torch.cholesky_inverse(self.L)
        WES = self.WE @ Sinv
        diag = self.Einv - self.mu[None, :] * (WES * self.WE).sum(-1).T
        return diag, self.WE - self.mu[:, None, None] * (WES @ self.WtEW)

    def root(self) -> Tensor:
        """(T, U, Q) ``sqrt(mu_j) E_j^-1 W L_j^-T``: ``C_j^-1 = diag(Einv_j) - root_j root_j^T``."""
        R = torch.linalg.solve_triangular(self.L, self.WE.transpose(-2, -1), upper=False)
        return self.mu.sqrt()[:, None, None] * R.transpose(-2, -1)


def _blocks(W: Tensor, v: Tensor, Kt: Tensor, noise: Tensor) -> _Blocks:
    mu, Qt = torch.linalg.eigh(Kt)
    mu = mu.clamp_min(0)
    Einv = 1.0 / (mu[None, :] * v[:, None] + noise[:, None])
    WE = Einv.T[:, :, None] * W[None]
    WtEW = W.T[None] @ WE
    eye = torch.eye(W.shape[1], dtype=W.dtype)
    L = torch.linalg.cholesky(eye + mu[:, None, None] * WtEW)
    return _Blocks(mu, Qt, Einv, WE, WtEW, L)


def _alpha(b: _Blocks, R: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``K^-1 vec(R)`` as a (U, T) matrix ``A``, with the rotated ``R Q`` and ``A Q``."""
    Rh = R @ b.Qt
    Ah = b.solve(Rh)
    return Ah @ b.Qt.T, Rh, Ah


class _KroneckerNLL(torch.autograd.Function):
    """Negative log-likelihood of ``vec(R) ~ N(0, (W W^T + diag v) (x) Kt + diag(noise) (x) I)``.

    Forward: the block/Woodbury factorisation above. Backward: the closed form
    ``0.5 tr((K^-1 - a a^T) dK)`` evaluated blockwise; it never differentiates ``eigh``
    (whose backward is unstable for the clustered spectra of kernel matrices).
    """

    @staticmethod
    def forward(ctx, W: Tensor, v: Tensor, Kt: Tensor, noise: Tensor, R: Tensor) -> Tensor:
        U, T = R.shape
        b = _blocks(W, v, Kt, noise)
        A, Rh, Ah = _alpha(b, R)
        ctx.blocks = b
        ctx.save_for_backward(W, v, Kt, A)
        return 0.5 * ((Rh * Ah).sum() + b.logdet() + U * T * math.log(2 * math.pi))

    @staticmethod
    def backward(ctx, g: Tensor):
        W, v, Kt, A = ctx.saved_tensors
        b: _Blocks = ctx.blocks
        diag, CinvW = b.inverse_parts()
        AKt, WtA = A @ Kt, W.T @ A
        gW = (b.mu[:, None, None] * CinvW).sum(0) - AKt @ WtA.T
        gv = diag @ b.mu - (AKt * A).sum(1)
        trace_CB = torch.einsum("uq,juq->j", W, CinvW) + v @ diag
        gKt = (b.Qt * trace_CB) @ b.Qt.T - (WtA.T @ WtA + A.T @ (v[:, None] * A))
        gnoise = diag.sum(1) - (A * A).sum(1)
        return g * gW, 0.5 * g * gv, 0.5 * g * gKt, 0.5 * g * gnoise, g * A


# ------------------------------------------------------------------------ the model
def _log_positive() -> Positive:
    """``Positive`` with an exp/log map: L-BFGS then moves scales multiplicatively."""
    from gpytorch.constraints import Positive

    return Positive(transform=torch.exp, inv_transform=torch.log)


@dataclass(frozen=True)
class FitResult:
    """Outcome of ``SaliencyGP.fit``: final negative log-likelihood per observation
    (model space), L-BFGS iterations and likelihood evaluations used."""

    nll: float
    iterations: int
    evaluations: int


class SaliencyGP(torch.nn.Module):
    """ICM multi-output GP over the ``U`` saliency series of one group (BEP Sec. 4.2).

    Needs: ``times`` (T,) non-negative, shared by every unit (bucket first if needed),
    and ``Y`` (U, T) raw saliency measurements ``s_{1:t}``. ``num_latents`` is ``Q``
    (the paper used 12 for conv layers, 4 for dense, 10-15 on ResNet); ``Q = 0`` gives
    independent GPs that share only the kernel's ``alpha`` and ``beta``.

    A ``torch.nn.Module`` whose parts are gpytorch modules and constraints (gpytorch is
    imported when the first model is built, not with this module): ``kernel``
    (ExponentialDecayKernel on times divided by the ``time_scale`` buffer, fixed at
    construction to ``max(times)`` so that a warm start keeps its meaning), ``task_kernel`` (``IndexKernel``: ``B = W
    W^T + diag(v)``, rank Q), ``mean_module`` (one constant per unit), ``noise`` (per
    unit, ``>= 1e-4`` in model space); scales (alpha, beta, v, noise) use exp/log
    ``Positive`` maps. The preprocessing (``ub`` and trend flips) is kept in buffers.
    ``state_dict()`` carries all of them between pruning steps (``fit(init=...)``);
    ``select_units`` restricts one to the units that survived.
    """

    def __init__(self, times: Tensor, Y: Tensor, num_latents: int = 4, *,
                 preprocess: Preprocess | None = None, per_unit: bool = True) -> None:
        import gpytorch
        from gpytorch.constraints import GreaterThan

        from .saliency_kernel import ExponentialDecayKernel

        super().__init__()
        times, Y = torch.as_tensor(times, dtype=_DTYPE), torch.as_tensor(Y, dtype=_DTYPE)
        if Y.dim() != 2 or times.dim() != 1 or Y.shape[1] != times.shape[0] or len(times) < 2:
            raise InputError(f"need times (T,) and Y (U, T) with T >= 2, got {tuple(times.shape)} and {tuple(Y.shape)}")
        if bool((times < 0).any()) or not bool(torch.isfinite(Y).all()):
            raise InputError("times must be non-negative and Y finite")
        U = Y.shape[0]
        if not 0 <= num_latents <= U:
            raise InputError(f"num_latents must lie in [0, {U}], got {num_latents}")
        pre = preprocess if preprocess is not None else Preprocess.fit(times, Y, per_unit=per_unit)
        self.register_buffer("preprocess_upper", pre.upper.to(_DTYPE).clone())
        self.register_buffer("preprocess_flipped", pre.flipped.clone())
        self.register_buffer("time_scale", times.max().clamp_min(1e-12).clone())
        self.times, self.Y = times, Y
        self.kernel = ExponentialDecayKernel(alpha_constraint=_log_positive(), beta_constraint=_log_positive())
        self.task_kernel = gpytorch.kernels.IndexKernel(num_tasks=U, rank=num_latents, var_constraint=_log_positive())
        self.mean_module = gpytorch.means.ConstantMean(batch_shape=torch.Size([U]))
        self.register_parameter("raw_noise", torch.nn.Parameter(torch.zeros(U)))
        self.add_module("raw_noise_constraint", GreaterThan(1e-4, transform=torch.exp, inv_transform=torch.log))
        self.to(_DTYPE)
        self._initialise()

    # ---- parameters
    @property
    def num_units(self) -> int:
        return self.Y.shape[0]

    @property
    def preprocess(self) -> Preprocess:
        """The App. G.3 map of this model (from its buffers)."""
        return Preprocess(self.preprocess_upper, self.preprocess_flipped)

    @property
    def Z(self) -> Tensor:
        """The training data in model space (U, T)."""
        return self.preprocess.transform(self.Y)

    @property
    def noise(self) -> Tensor:
        return self.raw_noise_constraint.transform(self.raw_noise)

    @property
    def task_covariance(self) -> Tensor:
        """``B = W W^T + diag(v)`` (U, U), model space."""
        return self.task_kernel._eval_covar_matrix()

    def _kt(self, t1: Tensor, t2: Tensor) -> Tensor:
        x1, x2 = (t.to(_DTYPE).reshape(-1, 1) / self.time_scale for t in (t1, t2))
        return self.kernel.forward(x1, x2)

    def _initialise(self) -> None:
        """Data-driven start: asymptote = last value, W from the residuals' top-Q SVD,
        noise from first differences."""
        Z, Q = self.Z, self.task_kernel.covar_factor.shape[1]
        R = Z - Z[:, -1:]
        power = (R * R).mean(1).clamp_min(1e-3)
        with torch.no_grad():
            self.mean_module.constant = Z[:, -1].clone()
            if Q:
                Uv, S, _ = torch.linalg.svd(R, full_matrices=False)
                k = min(Q, len(S))
                gen = torch.Generator().manual_seed(0)
                W = 1e-2 * S[0].clamp_min(1e-3) * torch.randn(Z.shape[0], Q, generator=gen, dtype=_DTYPE)
                W[:, :k] = Uv[:, :k] * S[:k].clamp_min(1e-3)
                self.task_kernel.covar_factor.copy_(W / math.sqrt(Z.shape[1]))
            self.task_kernel.var = 0.1 * power
            diff_var = Z.diff(dim=1).var(1, unbiased=False) if Z.shape[1] > 2 else power
            noise = (0.5 * diff_var).clamp(1e-3, None)
            self.raw_noise.copy_(self.raw_noise_constraint.inverse_transform(noise))

    # ---- likelihood and fitting
    def nll(self) -> Tensor:
        """Negative log marginal likelihood of the training data (model space), a scalar
        with gradients for every hyper-parameter."""
        W = self.task_kernel.covar_factor
        R = self.Z - self.mean_module.constant[:, None]
        Kt = self._kt(self.times, self.times)
        return _KroneckerNLL.apply(W, self.task_kernel.var, Kt, self.noise, R)

    def fit(self, *, max_iter: int = 50, init: Mapping[str, Tensor] | None = None,
            tolerance: float = 1e-7) -> FitResult:
        """Maximum-likelihood hyper-parameters by L-BFGS (strong Wolfe line search).

        ``init``: a ``state_dict`` of a previous fit over the same units (see
        ``select_units``) to warm-start from; the model then also adopts that fit's
        preprocessing, so that the hyper-parameters keep their meaning (App. G.3 maps
        later data with the earlier ``ub`` too). Stops after ``max_iter`` iterations or
        once the per-observation NLL changes by less than ``tolerance``. Guarantees
        finite hyper-parameters: a run that ends non-finite, or whose line search reaches a
        covariance that cannot be factorised, is undone.
        """
        if max_iter < 1:
            raise InputError(f"max_iter must be >= 1, got {max_iter}")
        if init is not None:
            self.load_state_dict(dict(init))
        start = {k: v.clone() for k, v in self.state_dict().items()}
        n_obs = self.Y.numel()
        opt = torch.optim.LBFGS(self.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                tolerance_grad=1e-6, tolerance_change=tolerance,
                                line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = self.nll() / n_obs
            loss.backward()
            return loss

        try:
            opt.step(closure)
        except torch.linalg.LinAlgError:  # the line search reached a singular covariance
            self.load_state_dict(start)
        state = opt.state[opt.param_groups[0]["params"][0]]
        with torch.no_grad():
            nll = self._nll_or_nan() / n_obs
            if not math.isfinite(nll):
                self.load_state_dict(start)
                nll = float(self.nll()) / n_obs
        return FitResult(nll, int(state.get("n_iter", 0)), int(state.get("func_evals", 0)))

    def _nll_or_nan(self) -> float:
        """``nll()`` as a float, NaN where the covariance cannot be factorised."""
        try:
            return float(self.nll())
        except torch.linalg.LinAlgError:
            return math.nan

    @staticmethod
    def select_units(state: Mapping[str, Tensor], index: Tensor) -> dict[str, Tensor]:
        """A state_dict restricted to the units ``index`` (after a pruning step), for
        ``fit(init=...)`` of the next, smaller model."""
        per_unit = ("task_kernel.covar_factor", "task_kernel.raw_var", "mean_module.raw_constant", "raw_noise",
                    "preprocess_upper", "preprocess_flipped")
        return {k: (v[index] if k in per_unit else v) for k, v in state.items()}

    # ---- prediction
    @torch.no_grad()
    def _posterior_model(self, times: Tensor, observation_noise: bool) -> tuple[Tensor, Tensor]:
        """Joint posterior at ``times`` (S,) in model space: mean (U, S) and covariance
        (U*S, U*S), unit-major. Cost O(U^2 S^2 T Q + U^3 S^3): meant for small S."""
        times = torch.as_tensor(times, dtype=_DTYPE).reshape(-1)
        S, U = len(times), self.num_units
        W, v, noise = self.task_kernel.covar_factor, self.task_kernel.var, self.noise
        B = W @ W.T + torch.diag(v)
        b = _blocks(W, v, self._kt(self.times, self.times), noise)
        const = self.mean_module.constant
        A, _, _ = _alpha(b, self.Z - const[:, None])
        Kst, Kss = self._kt(times, self.times), self._kt(times, times)
        mean = const[:, None] + B @ A @ Kst.T
        # cross-covariance times K^-1 times its transpose: (B (x) I) M (B (x) I) with
        # M = sum_j (z_j z_j^T) (x) C_j^-1, z = K_st Q, C_j^-1 = diag(Einv_j) - root_j root_j^T
        Zs = Kst @ b.Qt
        diag_part = torch.einsum("sj,rj,uj->usr", Zs, Zs, b.Einv)
        F = torch.einsum("sj,juq->usjq", Zs, b.root()).reshape(U * S, -1)
        M = torch.block_diag(*diag_part) - F @ F.T
        BI = torch.kron(B, torch.eye(S, dtype=_DTYPE))
        cov = torch.kron(B, Kss) - BI @ M @ BI
        if observation_noise:
            cov = cov + torch.kron(torch.diag(noise), torch.eye(S, dtype=_DTYPE))
        return mean, 0.5 * (cov + cov.T)

    @torch.no_grad()
    def predict(self, t_final: float) -> tuple[Tensor, Tensor]:
        """Predictive belief ``p(s_T | s_1:t)`` of the noise-free saliency at ``t_final``:
        ``(mean (U,), cov (U, U))`` in saliency units (inverse preprocessing applied).
        Guarantees: ``cov`` is symmetric; negative eigenvalues are round-off only."""
        mean, cov = self._posterior_model(torch.tensor([float(t_final)]), observation_noise=False)
        return self.preprocess.inverse(mean[:, 0], cov)

    @torch.no_grad()
    def predict_path(self, times: Tensor, observation_noise: bool = False) -> tuple[Tensor, Tensor]:
        """Marginal predictive mean and standard deviation ``(U, S)`` of the saliency at
        ``times`` (S,), noise-free or (``observation_noise``) of a new measurement, in
        saliency units: the curves and bands of a plot (the paper's Fig. 3). Costs
        ``O((U S)^3)``: keep ``U * S`` to a few thousand."""
        mean, cov = self._posterior_model(times, observation_noise=observation_noise)
        U, S = mean.shape
        std = cov.diagonal().reshape(U, S).clamp_min(0).sqrt() / self.preprocess.slope.abs()[:, None]
        return self.preprocess.inverse(mean.T)[0].T, std

    @torch.no_grad()
    def sample(self, t_final: float, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples ``(n, U)`` of ``s_T`` from ``predict(t_final)`` (saliency units),
        drawn through the eigendecomposition of the covariance (clamped at 0)."""
        mean, cov = self.predict(t_final)
        evals, evecs = torch.linalg.eigh(cov)
        root = evecs * evals.clamp_min(0).sqrt()
        eps = torch.randn(n, len(mean), generator=generator, dtype=_DTYPE)
        return mean + eps @ root.T

    @torch.no_grad()
    def log_prob(self, times: Tensor, Y: Tensor) -> float:
        """Joint predictive log-density of held-out measurements ``Y`` (U, T*) at ``times``
        (T*,), observation noise included, evaluated after the training data's
        preprocessing (as the paper's Table 2 does)."""
        mean, cov = self._posterior_model(times, observation_noise=True)
        z = self.preprocess.transform(torch.as_tensor(Y, dtype=_DTYPE))
        dist = torch.distributions.MultivariateNormal(mean.reshape(-1), covariance_matrix=cov)
        return float(dist.log_prob(z.reshape(-1)))
