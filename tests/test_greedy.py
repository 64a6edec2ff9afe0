"""fxprune.passes.submodular.greedy: Gram-space greedy selection against an explicit least-squares reference.

The reference ``naive_reweighted_selection`` re-solves every candidate's least squares with
``torch.linalg.lstsq``; the fast path must pick the same channels (ties: lowest index),
reach the same F values and return weights that really minimise the residual.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from fxprune.passes.submodular import greedy
from fxprune.errors import InputError
from fxprune.passes.submodular.greedy import (GramAccumulator, Selection, gram_selection, least_squares_weights,
                            reweighted_selection)

F64 = torch.float64


# ---------------------------------------------------------------- reference

def _cols(S: list[int], block: int) -> torch.Tensor:
    return torch.tensor([i * block + c for i in S for c in range(block)], dtype=torch.long)


def _fit(B: torch.Tensor, Y: torch.Tensor, S: list[int], block: int) -> tuple[float, torch.Tensor]:
    """(F(S), min-norm W) by an explicit least-squares solve."""
    BS = B[:, _cols(S, block)]
    W = torch.linalg.lstsq(BS, Y, rcond=1e-8, driver="gelsd").solution
    return float(Y.square().sum() - (Y - BS @ W).square().sum()), W


def naive_reweighted_selection(B, Y, k: int, block: int = 1) -> tuple[list[int], torch.Tensor, list[float]]:
    """Greedy by brute force: every candidate's F(S+j) from lstsq; ties -> lowest index."""
    B, Y = torch.as_tensor(B, dtype=F64), torch.as_tensor(Y, dtype=F64)
    d, yy = B.shape[1] // block, float(Y.square().sum())
    kept: list[int] = []
    values: list[float] = []
    current = 0.0
    for _ in range(k):
        gains = {j: _fit(B, Y, kept + [j], block)[0] - current for j in range(d) if j not in kept}
        top = max(gains.values())
        j = min(j for j, g in gains.items() if g >= top - 1e-9 * abs(top) - 1e-11 * yy)
        kept.append(j)
        current = _fit(B, Y, kept, block)[0]
        values.append(current)
    return kept, _fit(B, Y, kept, block)[1], values


def _problem(seed: int, n: int, d: int, block: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(n, d * block, generator=g, dtype=F64) * (0.5 + torch.rand(d * block, generator=g, dtype=F64))
    Y = B @ torch.randn(d * block, m, generator=g, dtype=F64) + 0.3 * torch.randn(n, m, generator=g, dtype=F64)
    return B, Y


def _residual(B, Y, sel: Selection, block: int) -> float:
    return float((Y - B[:, _cols(sel.kept, block)] @ sel.weights).square().sum())


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


# ---------------------------------------------------------------- agreement with the reference

CASES = [  # (seed, n, d, block, m, k)
    (0, 60, 12, 1, 4, 6),
    (1, 80, 10, 4, 3, 5),
    (2, 120, 8, 9, 5, 4),
    (3, 40, 16, 1, 2, 16),     # k == d
    (4, 10, 16, 1, 3, 12),     # n < d: rank saturates after 10 picks
    (5, 14, 10, 4, 3, 6),      # n < d*block, block 4
    (6, 20, 6, 9, 2, 4),       # n < d*block, block 9
]


@pytest.mark.parametrize("seed,n,d,block,m,k", CASES)
def test_matches_naive_reference(seed, n, d, block, m, k):
    B, Y = _problem(seed, n, d, block, m)
    sel = reweighted_selection(B, Y, k, block=block)
    kept, W, values = naive_reweighted_selection(B, Y, k, block)
    assert sel.kept == kept
    assert len(sel.values) == k and sel.values[-1] == sel.value
    assert np.allclose(sel.values, values, rtol=1e-6, atol=1e-9 * float(Y.square().sum()))
    assert sel.weights.dtype == F64 and sel.weights.shape == (k * block, m)
    assert _rel(sel.weights, W) < 1e-6
    # the weights minimise: same residual as lstsq on the chosen columns, and F = yy - residual
    best = float(Y.square().sum()) - _fit(B, Y, sel.kept, block)[0]
    assert _residual(B, Y, sel, block) == pytest.approx(best, rel=1e-6, abs=1e-9)
    assert sel.value == pytest.approx(float(Y.square().sum()) - _residual(B, Y, sel, block), rel=1e-9)
    assert all(b >= a for a, b in zip(sel.values, sel.values[1:]))


@pytest.mark.parametrize("seed,n,d,block,m,k", CASES[:3])
def test_values_equal_cross_term_of_weights(seed, n, d, block, m, k):
    """F(S) = tr(C_S^T W) for the least-squares W (normal equations)."""
    B, Y = _problem(seed, n, d, block, m)
    G, C = B.T @ B, B.T @ Y
    sel = gram_selection(G, C, float(Y.square().sum()), k, block=block)
    cross = float((C[_cols(sel.kept, block)] * sel.weights).sum())
    assert sel.value == pytest.approx(cross, rel=1e-9)
    assert _rel(sel.weights, least_squares_weights(G, C, sel.kept, block)) == 0


def test_rank_saturation_picks_lowest_remaining():
    """n < d: once B_S spans R^n every gain is exactly 0 and the lowest indices follow."""
    B, Y = _problem(7, 6, 12, 1, 2)
    sel = reweighted_selection(B, Y, 12)
    yy = float(Y.square().sum())
    assert sel.values[5] == pytest.approx(yy, rel=1e-9)
    assert sel.values[6:] == [sel.values[5]] * 6
    assert sel.kept[6:] == sorted(set(range(12)) - set(sel.kept[:6]))
    assert torch.isfinite(sel.weights).all()


@pytest.mark.parametrize("block", [1, 2])
def test_brute_force_bounds(block):
    d, n, m = 6, 30, 3
    B, Y = _problem(11 + block, n, d, block, m)
    yy = float(Y.square().sum())
    for k in range(1, d + 1):
        optimum = max(_fit(B, Y, list(S), block)[0] for S in itertools.combinations(range(d), k))
        value = reweighted_selection(B, Y, k, block=block).value
        assert value <= optimum + 1e-9 * yy
        if k == 1:
            assert value == pytest.approx(optimum, rel=1e-12)
    # k == d: F is the squared norm of the projection of Y onto col(B)
    Q, _ = torch.linalg.qr(B)
    full = reweighted_selection(B, Y, d, block=block)
    assert full.value == pytest.approx(float((Q.T @ Y).square().sum()), rel=1e-10)
    assert sorted(full.kept) == list(range(d))


# ---------------------------------------------------------------- degenerate channels

def _dead_and_duplicate(block: int) -> tuple[torch.Tensor, torch.Tensor]:
    B, Y = _problem(21, 60, 8, block, 3)
    B[:, 2 * block:3 * block] = 0.0                       # channel 2 is dead
    B[:, 5 * block:6 * block] = B[:, 1 * block:2 * block]  # channel 5 duplicates channel 1
    return B, Y


@pytest.mark.parametrize("block", [1, 3])
def test_dead_and_duplicate_channels(block):
    B, Y = _dead_and_duplicate(block)
    sel = reweighted_selection(B, Y, 8, block=block)
    assert all(math.isfinite(v) for v in sel.values) and torch.isfinite(sel.weights).all()
    # the six useful channels (one twin among them) first; dead and second twin score 0, last
    assert {2} | ({1, 5} - set(sel.kept[:6])) == set(sel.kept[6:])
    assert len({1, 5} & set(sel.kept[:6])) == 1
    assert sel.kept[6:] == sorted(sel.kept[6:])
    assert sel.values[5] == sel.values[6] == sel.values[7]
    # min-norm weights: the dead block is 0, the twins share the weight equally
    rows = {c: sel.weights[i * block:(i + 1) * block] for i, c in enumerate(sel.kept)}
    assert rows[2].abs().max() < 1e-10
    assert torch.allclose(rows[1], rows[5], atol=1e-8)
    best = float(Y.square().sum()) - _fit(B, Y, sel.kept, block)[0]
    assert _residual(B, Y, sel, block) == pytest.approx(best, rel=1e-8)
    # with k < 6 neither the dead channel nor the second twin is ever chosen
    small = reweighted_selection(B, Y, 5, block=block)
    assert 2 not in small.kept and not {1, 5} <= set(small.kept)


def test_partially_duplicated_block_matches_naive():
    """A block whose residual Gram becomes rank-deficient (one column copies a picked one)."""
    B, Y = _problem(31, 50, 6, 3, 2)
    B[:, 4 * 3] = B[:, 1 * 3 + 2]
    B[:, 4 * 3 + 1] = 0.0
    sel = reweighted_selection(B, Y, 6, block=3)
    kept, W, values = naive_reweighted_selection(B, Y, 6, 3)
    assert sel.kept == kept
    assert np.allclose(sel.values, values, rtol=1e-6)
    assert _rel(sel.weights, W) < 1e-6


def test_all_dead_returns_k_channels_without_nan():
    B, Y = torch.zeros(10, 8, dtype=F64), torch.randn(10, 2, dtype=F64)
    sel = reweighted_selection(B, Y, 3, block=2)
    assert sel.kept == [0, 1, 2] and sel.values == [0.0, 0.0, 0.0]
    assert torch.equal(sel.weights, torch.zeros(6, 2, dtype=F64))


# ---------------------------------------------------------------- stochastic greedy

def test_stochastic_greedy_reproducible_and_valid():
    B, Y = _problem(41, 80, 20, 1, 3)
    runs = [reweighted_selection(B, Y, 5, epsilon=0.3, generator=torch.Generator().manual_seed(s))
            for s in (1, 1, 2)]
    assert runs[0].kept == runs[1].kept and runs[0].values == runs[1].values
    for sel in runs:
        assert len(set(sel.kept)) == 5
        assert sel.value == pytest.approx(float(Y.square().sum()) - _residual(B, Y, sel, 1), rel=1e-9)
    greedy_value = reweighted_selection(B, Y, 5).value
    assert all(sel.value <= _fit(B, Y, sel.kept, 1)[0] + 1e-9 for sel in runs)
    assert greedy_value > 0


def test_stochastic_greedy_samples_without_replacement(monkeypatch):
    B, Y = _problem(42, 80, 20, 1, 3)
    k, eps = 5, 0.5
    s = math.ceil(20 / k * math.log(1 / eps))
    assert greedy.sample_size(20, k, eps) == s == 3
    samples: list[list[int]] = []
    original = greedy._sample_candidates

    def recording(remaining, size, generator):
        out = original(remaining, size, generator)
        samples.append((list(remaining), out))
        return out

    monkeypatch.setattr(greedy, "_sample_candidates", recording)
    sel = reweighted_selection(B, Y, k, epsilon=eps, generator=torch.Generator().manual_seed(0))
    assert len(samples) == k
    for step, (remaining, out) in enumerate(samples):
        assert len(out) == len(set(out)) == s
        assert set(out) <= set(remaining) and not set(out) & set(sel.kept[:step])
        assert sel.kept[step] in out
        # the pick is the best of the sample: its gain is the best naive gain among the sample
        base = _fit(B, Y, sel.kept[:step], 1)[0] if step else 0.0
        gains = {j: _fit(B, Y, sel.kept[:step] + [j], 1)[0] - base for j in out}
        assert gains[sel.kept[step]] == pytest.approx(max(gains.values()), rel=1e-9)


def test_stochastic_sampler_is_uniform_without_replacement():
    g = torch.Generator().manual_seed(3)
    counts = np.zeros(10)
    for _ in range(400):
        out = greedy._sample_candidates(list(range(10, 20)), 4, g)
        assert len(set(out)) == 4 and out == sorted(out)
        counts[np.array(out) - 10] += 1
    assert counts.min() > 100 and counts.max() < 220   # expected 160 each


@pytest.mark.parametrize("block", [1, 4])
def test_small_epsilon_is_exact_greedy(block):
    B, Y = _problem(43, 90, 12, block, 3)
    exact = reweighted_selection(B, Y, 6, block=block)
    for eps in (1e-12, 1e-300):
        assert greedy.sample_size(12, 6, eps) >= 12
        sel = reweighted_selection(B, Y, 6, block=block, epsilon=eps, generator=torch.Generator().manual_seed(5))
        assert sel.kept == exact.kept and sel.values == exact.values


# ---------------------------------------------------------------- streaming Gram matrices

def test_accumulator_streaming_equals_one_shot():
    B, Y = _problem(51, 70, 6, 3, 4)
    W = torch.randn(18, 4, dtype=F64)
    acc = GramAccumulator(18)
    for chunk in torch.split(B, [25, 0, 30, 15]):
        acc.add(chunk.numpy() if chunk.shape[0] == 30 else chunk.float() if chunk.shape[0] == 15 else chunk)
    assert acc.rows == 70
    Bmix = torch.cat([B[:55], B[55:].float().double()])
    assert torch.allclose(acc.gram, Bmix.T @ Bmix, rtol=1e-12, atol=1e-12)
    C, yy = acc.targets(W)
    Yw = Bmix @ W
    assert torch.allclose(C, Bmix.T @ Yw, rtol=1e-10) and yy == pytest.approx(float(Yw.square().sum()), rel=1e-12)
    sel = gram_selection(acc.gram, C, yy, 3, block=3)
    ref = reweighted_selection(Bmix, Yw, 3, block=3)
    assert sel.kept == ref.kept and np.allclose(sel.values, ref.values, rtol=1e-9)


def test_accumulator_cross_gives_asymmetric_objective():
    gen = torch.Generator().manual_seed(52)
    A = torch.randn(90, 12, generator=gen, dtype=F64)
    B = A + 0.3 * torch.randn(90, 12, generator=gen, dtype=F64)  # "pruned" network's features
    W = torch.randn(12, 5, generator=gen, dtype=F64)
    acc = GramAccumulator(12, cross=True)
    for a, b in zip(torch.split(A, 32), torch.split(B, 32)):
        acc.add(b, a)
    C, yy = acc.targets(W)
    assert yy == pytest.approx(float((A @ W).square().sum()), rel=1e-12)
    for block in (1, 3):
        sel = gram_selection(acc.gram, C, yy, 4, block=block)
        kept, Wn, values = naive_reweighted_selection(B, A @ W, 4, block)
        assert sel.kept == kept
        assert np.allclose(sel.values, values, rtol=1e-8)
        assert _rel(sel.weights, Wn) < 1e-8


def test_accumulator_errors():
    acc = GramAccumulator(4)
    with pytest.raises(InputError, match="empty data"):
        acc.targets(torch.ones(4, 1))
    with pytest.raises(InputError, match="columns"):
        acc.add(torch.ones(3, 5))
    with pytest.raises(InputError, match="NaN/inf in the features"):
        acc.add(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(InputError, match="2-D"):
        acc.add(torch.ones(4))
    with pytest.raises(InputError, match="cross=True"):
        acc.add(torch.ones(2, 4), torch.ones(2, 4))
    acc.add(torch.ones(2, 4))
    with pytest.raises(InputError, match="rows"):
        acc.targets(torch.ones(3, 1))
    cross = GramAccumulator(4, cross=True)
    with pytest.raises(InputError, match="A_batch"):
        cross.add(torch.ones(2, 4))
    with pytest.raises(InputError, match="rows"):
        cross.add(torch.ones(2, 4), torch.ones(3, 4))
    with pytest.raises(InputError, match="NaN/inf"):
        cross.add(torch.ones(2, 4), torch.full((2, 4), float("inf")))
    with pytest.raises(InputError):
        GramAccumulator(0)


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("kwargs,match", [
    (dict(k=0), "k must be"),
    (dict(k=7), "k must be"),
    (dict(k=2.0), "k must be an integer"),
    (dict(B=torch.ones(10)), "2-D"),
    (dict(Y=torch.ones(10, 2, 1)), "2-D"),
    (dict(Y=torch.ones(9, 2)), "rows"),
    (dict(block=5), "divisible"),
    (dict(block=0), "block"),
    (dict(block=True), "block"),
    (dict(B=torch.ones(0, 12), Y=torch.ones(0, 2)), "empty data"),
    (dict(B=torch.ones(10, 0)), "no columns"),
    (dict(B=torch.ones(10, 12).index_fill_(0, torch.tensor([3]), float("nan"))), "NaN/inf in the features"),
    (dict(Y=torch.full((10, 2), float("inf"))), "NaN/inf in the features"),
    (dict(epsilon=1.0), "epsilon"),
    (dict(epsilon=-0.1), "epsilon"),
    (dict(epsilon=float("nan")), "epsilon"),
    (dict(epsilon="0.1"), "epsilon"),
])
def test_bad_inputs_raise(kwargs, match):
    args = dict(B=torch.ones(10, 12), Y=torch.ones(10, 2), k=3, block=2)
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        reweighted_selection(args.pop("B"), args.pop("Y"), args.pop("k"), **args)


def test_bad_gram_inputs_raise():
    G, C = torch.eye(6, dtype=F64), torch.ones(6, 2, dtype=F64)
    for bad, match in [((torch.ones(6, 5), C, 1.0), "square"), ((G, torch.ones(5, 2), 1.0), "rows"),
                       ((G, C, float("nan")), "NaN/inf"), ((G, C, torch.ones(2)), "scalar"),
                       ((G.index_fill(0, torch.tensor([0]), float("inf")), C, 1.0), "NaN/inf")]:
        with pytest.raises(InputError, match=match):
            gram_selection(*bad, 2)
    with pytest.raises(InputError, match="channel index"):
        least_squares_weights(G, C, [0, 6], 1)
    with pytest.raises(InputError, match="empty"):
        least_squares_weights(G, C, [], 1)


def test_numpy_and_float32_inputs():
    B, Y = _problem(61, 50, 8, 2, 3)
    ref = reweighted_selection(B, Y, 4, block=2)
    sel = reweighted_selection(B.numpy(), Y.numpy().tolist(), 4, block=2)
    assert sel.kept == ref.kept and torch.allclose(sel.weights, ref.weights)
    lo = reweighted_selection(B.float(), Y.float(), 4, block=2)
    assert lo.weights.dtype == F64 and lo.kept == ref.kept


def test_least_squares_weights_singular_is_min_norm():
    B, Y = _problem(62, 30, 4, 1, 2)
    B[:, 3] = B[:, 0]
    G, C = B.T @ B, B.T @ Y
    W = least_squares_weights(G, C, [3, 1, 0], 1)
    ref = torch.linalg.pinv(B[:, [3, 1, 0]]) @ Y
    assert _rel(W, ref) < 1e-8
    W2 = least_squares_weights(G, C, [2, 1], 1)   # regular: Cholesky path, rows in kept order
    assert _rel(W2, torch.linalg.lstsq(B[:, [2, 1]], Y).solution) < 1e-10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    B, Y = _problem(71, 200, 16, 4, 8)
    cpu = reweighted_selection(B, Y, 8, block=4)
    gpu = reweighted_selection(B.cuda(), Y.cuda(), 8, block=4)
    assert gpu.weights.device.type == "cuda" and gpu.kept == cpu.kept
    assert np.allclose(gpu.values, cpu.values, rtol=1e-9)
    g = torch.Generator(device="cuda").manual_seed(0)
    st = reweighted_selection(B.cuda(), Y.cuda(), 8, block=4, epsilon=0.2, generator=g)
    assert len(set(st.kept)) == 8
    acc = GramAccumulator(64, cross=True, device="cuda")
    acc.add(B, B)
    C, yy = acc.targets(torch.eye(64, dtype=F64))
    assert C.device.type == "cuda" and yy == pytest.approx(float(B.square().sum()))


def test_matches_naive_on_correlated_relu_features():
    """Post-ReLU, nearly low-rank activations (ill-conditioned G), as in a real network."""
    g = torch.Generator().manual_seed(81)
    Z = torch.randn(200, 5, generator=g, dtype=F64)
    B = torch.relu(Z @ torch.randn(5, 48, generator=g, dtype=F64) + 0.5
                   + 1e-3 * torch.randn(200, 48, generator=g, dtype=F64))
    Y = B @ torch.randn(48, 6, generator=g, dtype=F64)
    sel = reweighted_selection(B, Y, 12, block=2)
    kept, W, values = naive_reweighted_selection(B, Y, 12, 2)
    assert sel.kept == kept
    assert np.allclose(sel.values, values, rtol=1e-8)
    assert _rel(sel.weights, W) < 1e-6
