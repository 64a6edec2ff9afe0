"""Hand-written models of the kinds new users bring (weight reuse, transposed ties, splits,
parametrizations, custom Functions, hooks, size tuples ...): each is pruned exactly (the pruned
output equals the original with the removed produce slices zeroed) or refused by name, never
with a raw internal error."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

import fxprune
from conftest import zero_produce


class Reuse(nn.Module):
    """One conv applied twice."""

    def __init__(self):
        super().__init__()
        self.a, self.c, self.h = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.h(F.relu(self.c(F.relu(self.c(F.relu(self.a(x)))))))


class TransposedTie(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 5)

    def forward(self, x):
        h = F.relu(self.a(x))
        return F.linear(F.relu(self.b(h)), self.b.weight.T) + h


class BiasAsScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.a(x)) * self.a.bias.view(1, -1, 1, 1))


class SplitReversed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        p, q = torch.split(F.relu(self.a(x)), [3, 5], 1)
        return self.b(torch.cat((q, p), 1))


class UnflattenSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.a(x)).unflatten(1, (2, 4)).sum(1))


class StarredShape(nn.Module):
    """``view(*y.shape[:1], -1)``: torch.fx cannot iterate a shape; the export front end can."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Linear(8 * 36, 4)

    def forward(self, x):
        y = F.relu(self.a(x))
        return self.b(y.view(*y.shape[:1], -1))


class Orthogonal(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.o = nn.Linear(6, 8), parametrizations.orthogonal(nn.Linear(8, 8))
        self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.c(F.relu(self.b(self.o(F.relu(self.a(x))))))


class Spectral(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.n = nn.Conv2d(3, 8, 3), parametrizations.spectral_norm(nn.Conv2d(8, 8, 1))
        self.b, self.c = nn.Conv2d(8, 6, 1), nn.Conv2d(6, 3, 1)

    def forward(self, x):
        return self.c(F.relu(self.b(self.n(F.relu(self.a(x))))))


class LeakyClip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, low):
        ctx.save_for_backward(x)
        ctx.low = low
        return x.clamp(min=low)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > ctx.low).float() + 0.1 * grad, None


class Clip(nn.Module):
    def forward(self, x):
        return LeakyClip.apply(x, 0.0)


class CustomActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.act, self.b, self.c = nn.Conv2d(3, 8, 3), Clip(), nn.Conv2d(8, 6, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.c(F.relu(self.b(self.act(self.a(x)))))


class PreHook(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 6, 1), nn.Conv2d(6, 2, 1)
        self.b.register_forward_pre_hook(lambda module, args: (args[0] * 0.5,))

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x)))))


class NewZerosOfSizes(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        return self.b(y + y.new_zeros(y.size()[:2] + (1, 1)))


class EinsumWithRootWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.w = nn.Linear(6, 8), nn.Parameter(torch.randn(8, 5))

    def forward(self, x):
        return torch.einsum("bi,io->bo", F.relu(self.a(x)), self.w)


class FunctionalConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(8, 3, 3, 3)), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.b(F.relu(F.conv2d(x, self.w)))


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 2, 1), nn.Conv2d(8, 3, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        return self.b(y), self.c(y)


class ChunkGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        c = F.relu(self.a(x)).chunk(2, 1)
        return self.b(c[0] * torch.sigmoid(c[1]))


class HeadsFromSize(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.o = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        q = self.q(x).view(x.size()[:-1] + (4, -1)).transpose(1, 2)
        a = ((q @ q.transpose(-1, -2)).softmax(-1) @ q).transpose(1, 2)
        return self.o(a.reshape(a.shape[:2] + (-1,)))


IMAGE, VECTOR, TOKENS = (2, 3, 8, 8), (4, 6), (2, 5, 16)
CASES = [(Reuse, IMAGE), (TransposedTie, VECTOR), (BiasAsScale, IMAGE), (SplitReversed, IMAGE),
         (UnflattenSum, IMAGE), (StarredShape, IMAGE), (Orthogonal, VECTOR), (Spectral, IMAGE),
         (CustomActivation, IMAGE), (PreHook, IMAGE), (NewZerosOfSizes, IMAGE), (EinsumWithRootWeight, VECTOR),
         (FunctionalConv, IMAGE), (TwoOutputs, IMAGE), (ChunkGate, IMAGE), (HeadsFromSize, TOKENS)]


@pytest.mark.parametrize("cls, shape", CASES, ids=[c.__name__ for c, _ in CASES])
def test_pruned_exactly_or_refused_by_name(cls, shape):
    torch.manual_seed(0)
    model, x = cls().eval(), torch.randn(*shape)
    result = fxprune.compile(model, x, method="l1", sparsity=0.5, validate=False)
    zeroed = zero_produce(result.graph, result.plan)
    with torch.no_grad():
        got, want = result.module(x), zeroed(x)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    for a, b in zip(got, want):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
