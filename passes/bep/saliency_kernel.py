"""``ExponentialDecayKernel``: the gpytorch kernel of BEP's saliency GP (``fxprune.passes.bep.saliency_gp``).

Importing this module imports gpytorch (and linear_operator, which warns at import on
recent torch releases); ``fxprune.passes.bep.saliency_gp`` imports it only when a ``SaliencyGP`` is
built, so importing fxprune, its passes or its CLI never loads gpytorch.
"""
from __future__ import annotations

import gpytorch
import torch
from gpytorch.constraints import Interval, Positive
from torch import Tensor

from fxprune.errors import InputError


class ExponentialDecayKernel(gpytorch.kernels.Kernel):
    """``k(t, t') = beta^alpha / (t + t' + beta)^alpha`` (Swersky et al. 2014; BEP eq. in 4.2).

    Needs: inputs of shape ``(..., n, 1)`` holding non-negative times. ``alpha`` and
    ``beta`` are registered under gpytorch constraints (``Positive`` by default) and
    have shape ``(*batch_shape, 1, 1)``, so one kernel can hold independent
    hyper-parameters for a batch of GPs. Guarantees: ``k(t, t) <= 1`` with equality
    at ``t = 0``; for fixed ``t'`` the covariance decays polynomially in ``t``.
    """

    has_lengthscale = False

    def __init__(self, alpha_constraint: Interval | None = None,
                 beta_constraint: Interval | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        for name, constraint in (("alpha", alpha_constraint), ("beta", beta_constraint)):
            constraint = constraint if constraint is not None else Positive()
            raw = constraint.inverse_transform(torch.ones(*self.batch_shape, 1, 1))
            self.register_parameter(f"raw_{name}", torch.nn.Parameter(raw))
            self.register_constraint(f"raw_{name}", constraint)

    @property
    def alpha(self) -> Tensor:
        return self.raw_alpha_constraint.transform(self.raw_alpha)

    @alpha.setter
    def alpha(self, value: float | Tensor) -> None:
        self._set("alpha", value)

    @property
    def beta(self) -> Tensor:
        return self.raw_beta_constraint.transform(self.raw_beta)

    @beta.setter
    def beta(self, value: float | Tensor) -> None:
        self._set("beta", value)

    def _set(self, name: str, value: float | Tensor) -> None:
        raw = getattr(self, f"raw_{name}")
        value = torch.as_tensor(value, dtype=raw.dtype, device=raw.device).expand_as(raw)
        constraint = getattr(self, f"raw_{name}_constraint")
        self.initialize(**{f"raw_{name}": constraint.inverse_transform(value)})

    def forward(self, x1: Tensor, x2: Tensor, diag: bool = False, **params) -> Tensor:
        if x1.shape[-1] != 1 or x2.shape[-1] != 1:
            raise InputError("ExponentialDecayKernel takes one input dimension (time)")
        alpha, beta = self.alpha, self.beta
        if diag:
            total = x1[..., 0] + x2[..., 0]
            alpha, beta = alpha[..., 0], beta[..., 0]
        else:
            total = x1 + x2.transpose(-2, -1)
        return torch.exp(alpha * (torch.log(beta) - torch.log(total + beta)))
