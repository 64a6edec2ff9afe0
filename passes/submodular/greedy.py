"""Greedy channel selection: the mathematical core of the ``submodular`` method.

Given features B (n x d*block; channel i owns the columns [i*block, (i+1)*block)) and
targets Y (n x m), F(S) = ||Y||^2 - min_W ||Y - B_S W||^2 is the part of Y that the
channels in S explain (eqs. 1-5 of "Data-Efficient Structured Pruning via Submodular
Optimization"; weakly submodular, Prop. 3.1). Greedy adds, k times, the channel with the
largest gain F(j|S) = F(S+j) - F(S); Stochastic-Greedy (App. B.3, Algorithm 2) takes the
best of s = ceil((d/k) ln(1/epsilon)) channels sampled without replacement.

Everything runs in Gram space: G = B^T B, C = B^T Y, yy = ||Y||^2, so one step costs
O(D*(r + block*m) + d*block^3) for D = d*block columns and r = |S|*block, independent of n.

The gain (Prop. 3.2, in block form). Let P_S project onto col(B_S) and E_j = (I - P_S) B_j
be the residual of block j. col(B_S, B_j) = col(B_S) + col(E_j) orthogonally, hence
    F(j|S) = ||P_{E_j} Y||^2 = tr(R_j^T S_j^+ R_j),  with
    S_j = E_j^T E_j = G_jj - G_jS G_SS^-1 G_Sj   (Schur complement, block x block),
    R_j = E_j^T Y   = C_j  - G_jS G_SS^-1 C_S    (block x m).
With V = G_{:,S} L^-T (L L^T = G_SS: Gram-Schmidt carried out in Gram space) and
Q = L^-1 C_S, S_j = G_jj - V_j V_j^T and R_j = C_j - V_j Q. A pick appends `block` columns
to V and rows to Q, i.e. a rank-`block` update of every S_j and R_j, batched over channels.
Eigenvalues of S_j below 1e-10 * trace(G)/D count as zero, so dead channels and duplicates
of picked channels gain exactly 0 and nothing is NaN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fxprune.errors import InputError

REL_TOL = 1e-10
"""Eigenvalues (of S_j, of G_SS) below REL_TOL * trace(G)/D are treated as zero."""

TIE_RTOL = 1e-9
"""Gains within TIE_RTOL (relative) of the best are ties, won by the lowest index, so the
choice does not depend on rounding (CPU vs CUDA, BLAS blocking)."""


@dataclass(frozen=True)
class Selection:
    """The result of a greedy selection."""

    kept: list[int]
    """Channel indices in greedy order."""
    weights: torch.Tensor
    """(k*block, m) float64 least-squares W minimising ||Y - B_S W||; rows are the blocks
    of ``kept`` in the order of ``kept``."""
    value: float
    """F(S) for the final S."""
    values: list[float]
    """F after each greedy step (len k; ``values[-1] == value``)."""


# ---------------------------------------------------------------- validation helpers

def _tensor(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """``x`` (tensor, array, nested list) as a float64 tensor on ``device`` (default: its own)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InputError(f"{name} must be a tensor or an array, got {type(x).__name__}") from e
    if x.is_complex():
        raise InputError(f"{name} must be real, got dtype {x.dtype}")
    return x.to(device=device if device is not None else x.device, dtype=torch.float64)


def _matrix(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    t = _tensor(x, name, device)
    if t.dim() != 2:
        raise InputError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    return t


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"NaN/inf in the features ({what})")


def _check_int(value: Any, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise InputError(f"{name} must be {bound}, got {value}")
    return value


def _check_epsilon(epsilon: Any) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating, np.integer)):
        raise InputError(f"epsilon must be a number in [0, 1), got {epsilon!r}")
    epsilon = float(epsilon)
    if not (0.0 <= epsilon < 1.0):
        raise InputError(f"epsilon must be in [0, 1), got {epsilon}")
    return epsilon


def _channels(columns: int, block: int, what: str) -> int:
    """Number of channels of ``columns`` columns split into blocks of ``block``."""
    if columns == 0:
        raise InputError(f"{what} has no columns (no channels)")
    if columns % block:
        raise InputError(f"{what} has {columns} columns, not divisible by block={block}")
    return columns // block


def tolerance(G: torch.Tensor) -> float:
    """The absolute eigenvalue threshold for Gram matrix G: REL_TOL * max(trace(G)/D, tiny)."""
    scale = float(torch.diagonal(G).sum()) / max(G.shape[0], 1)
    return REL_TOL * max(scale, torch.finfo(torch.float64).tiny)


def _block_index(kept: list[int], block: int, device: torch.device) -> torch.Tensor:
    """Column indices of the blocks of ``kept``, in the order of ``kept``."""
    k = torch.as_tensor(kept, dtype=torch.long, device=device)
    return (k[:, None] * block + torch.arange(block, device=device)).reshape(-1)


# ---------------------------------------------------------------- the greedy state

class _Residuals:
    """Residual Grams S_j (d, b, b) and cross terms R_j (d, b, m) of every channel."""

    def __init__(self, G: torch.Tensor, C: torch.Tensor, block: int, k: int, tol: float):
        D, m = C.shape
        self.d, self.b, self.tol, self.G = D // block, block, tol, G
        blocks = G.reshape(self.d, block, self.d, block)
        self.S = torch.diagonal(blocks, dim1=0, dim2=2).permute(2, 0, 1).clone()
        self.R = C.reshape(self.d, block, m).clone()
        self.V = torch.zeros(D, k * block, dtype=G.dtype, device=G.device)
        self.r = 0

    def gains(self, cands: torch.Tensor) -> torch.Tensor:
        """tr(R_j^T S_j^+ R_j) for the channels ``cands``, thresholded pseudo-inverse."""
        S, R = self.S[cands], self.R[cands]
        if self.b == 1:
            s = S[:, 0, 0]
            return torch.where(s > self.tol, R[:, 0].square().sum(-1) / s.clamp_min(self.tol), 0.0)
        lam, U = torch.linalg.eigh(0.5 * (S + S.transpose(1, 2)))
        inv = torch.where(lam > self.tol, 1.0 / lam.clamp_min(self.tol), 0.0)
        return ((U.transpose(1, 2) @ R).square().sum(-1) * inv).sum(-1)

    def _whitener(self, p: int) -> torch.Tensor:
        """(b, b) W with W^T S_p W = projector onto range(S_p) (columns of null directions 0)."""
        Sp = self.S[p]
        if self.b == 1:
            return torch.where(Sp > self.tol, Sp.clamp_min(self.tol).rsqrt(), 0.0)
        lam, U = torch.linalg.eigh(0.5 * (Sp + Sp.T))
        return U * torch.where(lam > self.tol, lam.clamp_min(self.tol).rsqrt(), 0.0)

    def pick(self, p: int) -> float:
        """Add channel p to S: rank-b update of every S_j, R_j; returns the gain F(p|S)."""
        b, r = self.b, self.r
        w = self._whitener(p)
        cols = slice(p * b, (p + 1) * b)
        gcol = self.G[:, cols] - self.V[:, :r] @ self.V[cols, :r].T     # E^T E_p, (D, b)
        vnew = (gcol @ w).reshape(self.d, b, b)
        qnew = w.T @ self.R[p]                                            # (b, m)
        self.S -= vnew @ vnew.transpose(1, 2)
        self.R -= vnew @ qnew
        self.V[:, r:r + b] = vnew.reshape(-1, b)
        self.r = r + b
        return float(qnew.square().sum())


def _best(gains: torch.Tensor) -> int:
    """Position of the best gain; near-ties (TIE_RTOL) go to the first position."""
    top = gains.max()
    return int(torch.nonzero(gains >= top - TIE_RTOL * top.abs())[0, 0])


def sample_size(d: int, k: int, epsilon: float) -> int:
    """Stochastic-Greedy's sample size ceil((d/k) ln(1/epsilon)), at least 1 (d if epsilon == 0)."""
    if epsilon == 0.0:
        return d
    return max(1, math.ceil(d / k * math.log(1.0 / epsilon)))


def _sample_candidates(remaining: list[int], s: int, generator: torch.Generator | None) -> list[int]:
    """s channels drawn uniformly without replacement from ``remaining``, sorted."""
    if s >= len(remaining):
        return list(remaining)
    device = generator.device if generator is not None else "cpu"
    perm = torch.randperm(len(remaining), generator=generator, device=device)[:s]
    return sorted(remaining[i] for i in perm.tolist())


# ---------------------------------------------------------------- public API

def least_squares_weights(G: Any, C: Any, kept: list[int], block: int) -> torch.Tensor:
    """W solving G_SS W = C_S (rows = blocks of ``kept`` in order), float64 on G's device.

    Cholesky when G_SS is positive definite above the tolerance; otherwise (duplicates,
    dead channels) the minimum-norm solution through a thresholded pseudo-inverse.
    """
    G = _matrix(G, "G")
    C = _matrix(C, "C", G.device)
    block = _check_int(block, "block", 1)
    if G.shape[0] != G.shape[1] or C.shape[0] != G.shape[0]:
        raise InputError(f"G must be square and C must have as many rows, got {tuple(G.shape)}, {tuple(C.shape)}")
    d = _channels(G.shape[0], block, "G")
    if len(kept) == 0:
        raise InputError("kept is empty")
    for i in kept:
        _check_int(i, "channel index", 0, d - 1)
    idx = _block_index(list(kept), block, G.device)
    Gss, Cs = G[idx][:, idx], C[idx]
    tol = tolerance(G)
    L, info = torch.linalg.cholesky_ex(Gss)
    if int(info) == 0 and float(torch.diagonal(L).square().min()) > tol:
        return torch.cholesky_solve(Cs, L)
    return torch.linalg.pinv(Gss, hermitian=True, atol=tol) @ Cs


def gram_selection(G: Any, C: Any, yy: Any, k: int, *, block: int = 1, epsilon: float = 0.0,
                   generator: torch.Generator | None = None) -> Selection:
    """Greedy (epsilon == 0) or Stochastic-Greedy selection of k channels from G = B^T B,
    C = B^T Y and yy = ||Y||^2 alone; see the module docstring.

    yy is only validated: F(S) = ||P_S Y||^2 = tr(C_S^T W) needs no more than G and C.
    """
    G = _matrix(G, "G")
    C = _matrix(C, "C", G.device)
    if G.shape[0] != G.shape[1]:
        raise InputError(f"G must be square, got shape {tuple(G.shape)}")
    if C.shape[0] != G.shape[0]:
        raise InputError(f"C has {C.shape[0]} rows but G has {G.shape[0]}")
    block = _check_int(block, "block", 1)
    d = _channels(G.shape[0], block, "G")
    k = _check_int(k, "k", 1, d)
    epsilon = _check_epsilon(epsilon)
    yy_t = _tensor(yy, "yy", G.device)
    if yy_t.numel() != 1:
        raise InputError(f"yy must be a scalar, got shape {tuple(yy_t.shape)}")
    _check_finite(G, "G")
    _check_finite(C, "C")
    _check_finite(yy_t, "yy")
    return _run_greedy(G, C, k, block, epsilon, generator)


def _run_greedy(G: torch.Tensor, C: torch.Tensor, k: int, block: int, epsilon: float,
                generator: torch.Generator | None) -> Selection:
    res = _Residuals(G, C, block, k, tolerance(G))
    s = sample_size(res.d, k, epsilon)
    remaining = list(range(res.d))
    kept: list[int] = []
    values: list[float] = []
    total = 0.0
    for _ in range(k):
        cands = _sample_candidates(remaining, s, generator) if epsilon > 0 else remaining
        gains = res.gains(torch.as_tensor(cands, dtype=torch.long, device=G.device))
        p = cands[_best(gains)]
        total += res.pick(p)
        kept.append(p)
        values.append(total)
        remaining.remove(p)
    weights = least_squares_weights(G, C, kept, block)
    return Selection(kept=kept, weights=weights, value=values[-1], values=values)


def reweighted_selection(B: Any, Y: Any, k: int, *, block: int = 1, epsilon: float = 0.0,
                         generator: torch.Generator | None = None) -> Selection:
    """Select k channels of B (n x d*block) best explaining Y (n x m) by least squares.

    Computes G = B^T B, C = B^T Y, yy = ||Y||^2 in float64 on B's device and runs
    ``gram_selection``.
    """
    B = _matrix(B, "B")
    Y = _matrix(Y, "Y", B.device)
    if B.shape[0] == 0 or Y.shape[0] == 0:
        raise InputError("empty data: B and Y need at least one row")
    if B.shape[0] != Y.shape[0]:
        raise InputError(f"B has {B.shape[0]} rows but Y has {Y.shape[0]}")
    block = _check_int(block, "block", 1)
    d = _channels(B.shape[1], block, "B")
    k = _check_int(k, "k", 1, d)
    epsilon = _check_epsilon(epsilon)
    _check_finite(B, "B")
    _check_finite(Y, "Y")
    G, C = B.T @ B, B.T @ Y
    return _run_greedy(G, C, k, block, epsilon, generator)


class GramAccumulator:
    """Streams calibration batches into float64 B^T B (and B^T A, A^T A when ``cross``).

    Symmetric variant: Y = B W. Cross (asymmetric) variant: Y = A W with A the unpruned
    network's features and B the pruned one's. ``targets(W)`` gives C and yy for either,
    so no n x m matrix is ever formed.
    """

    def __init__(self, dim: int, cross: bool = False, device: torch.device | str | None = None):
        self.dim = _check_int(dim, "dim", 1)
        self.cross = bool(cross)
        self.device = torch.device(device) if device is not None else None
        self.rows = 0
        self.gram: torch.Tensor | None = None        # B^T B
        self.cross_gram: torch.Tensor | None = None  # B^T A
        self.a_gram: torch.Tensor | None = None      # A^T A

    def _batch(self, x: Any, name: str) -> torch.Tensor:
        t = _matrix(x, name, self.device)
        if t.shape[1] != self.dim:
            raise InputError(f"{name} has {t.shape[1]} columns, expected {self.dim}")
        _check_finite(t, name)
        return t

    def _zeros(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(self.dim, self.dim, dtype=torch.float64, device=device)

    def add(self, B_batch: Any, A_batch: Any = None) -> None:
        """Accumulate one batch (rows = samples)."""
        B = self._batch(B_batch, "B_batch")
        if self.cross:
            if A_batch is None:
                raise InputError("a cross GramAccumulator needs A_batch (the unpruned features)")
            A = self._batch(A_batch, "A_batch").to(B.device)
            if A.shape[0] != B.shape[0]:
                raise InputError(f"A_batch has {A.shape[0]} rows but B_batch has {B.shape[0]}")
        elif A_batch is not None:
            raise InputError("A_batch given to a symmetric GramAccumulator (use cross=True)")
        if self.gram is None:
            self.device = B.device
            self.gram = self._zeros(B.device)
            if self.cross:
                self.cross_gram, self.a_gram = self._zeros(B.device), self._zeros(B.device)
        self.gram += B.T @ B
        if self.cross:
            self.cross_gram += B.T @ A
            self.a_gram += A.T @ A
        self.rows += B.shape[0]

    def targets(self, W: Any) -> tuple[torch.Tensor, float]:
        """(C, yy) for consumer weights W ((dim) x m): C = G W, yy = tr(W^T G W) in the
        symmetric case; C = (B^T A) W, yy = tr(W^T A^T A W) in the cross case."""
        if self.gram is None or self.rows == 0:
            raise InputError("empty data: no calibration rows were added")
        W = _matrix(W, "W", self.device)
        if W.shape[0] != self.dim:
            raise InputError(f"W has {W.shape[0]} rows, expected {self.dim}")
        _check_finite(W, "W")
        if self.cross:
            return self.cross_gram @ W, float((W * (self.a_gram @ W)).sum())
        GW = self.gram @ W
        return GW, float((W * GW).sum())
