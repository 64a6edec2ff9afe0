"""Features of a group at its consumers, as the reconstruction objective sees them.

Needs: a ``ConsumerSet`` (fxprune.consumers). Guarantees: for every consumer
layer, the columns of its (unfolded) input that belong to the group's units,
ordered unit by unit, and the matching rows of its weight; ``GroupProblem``
accumulates, over calibration batches, the float64 Gram matrices of the
least-squares problem ``min_W ||Y - B_S W||`` for the whole group.

A group read by several layers sums their objectives. Consumer ``c`` sees
``B_c`` (n_c x units*b_c) and target ``Y_c`` (n_c x m_c); with ``S`` the kept
units, ``sum_c ||Y_c - B_c,S W_c||^2`` is one least-squares problem with
block ``b = sum_c b_c`` per unit and the block-diagonal data
``B = diag(B_1, .., B_C)`` (rows of consumer c only see c's columns) and
``Y = diag(Y_1, .., Y_C)``: its normal equations ``B_S^T B_S W = B_S^T Y``
split into the C independent per-consumer ones, because ``B^T B`` and
``B^T Y`` are block-diagonal after grouping columns by consumer. So the Gram
of the sum is the per-consumer Grams interleaved unit by unit
(``G[u*b + o_c + i, v*b + o_c + j] = G_c[u*b_c + i, v*b_c + j]``, zero across
consumers), and the gain of a unit is the sum of its gains at each consumer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fxprune.consumers import CONVS, Consumer
from fxprune.distributed import all_reduce_sum, all_reduce_sum_many, is_distributed
from fxprune.errors import DistributedError, InputError


@dataclass
class ConsumerLayout:
    """Where a group's units sit in one consumer's input (unfolded for convs)."""

    consumer: Consumer
    module: nn.Module
    columns: torch.Tensor  # indices into the unfolded input, unit-major (units x block)
    block: int

    @classmethod
    def build(cls, consumer: Consumer, module: nn.Module, units: int) -> "ConsumerLayout":
        per_channel = int(np.prod(module.kernel_size)) if isinstance(module, CONVS) else 1
        cols = []
        for u in range(units):
            channels = np.nonzero(consumer.units == u)[0]
            cols.extend(int(c) * per_channel + j for c in channels for j in range(per_channel))
        block = len(cols) // units
        return cls(consumer, module, torch.tensor(cols, dtype=torch.long), block)

    def weight_matrix(self) -> torch.Tensor:
        """The consumer weight's rows for the group: (units*block, out) float64."""
        w = self.module.weight.detach()
        return w.reshape(w.shape[0], -1).t()[self.columns].double()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, units*block) float64 features of the consumer input ``x``."""
        u = self.feature_blocks(x)
        return u.transpose(1, 2).reshape(-1, u.shape[1])

    def feature_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The same features as ``(N, units*block, L)`` float64 (rows = N x L), without copies."""
        if not torch.isfinite(x).all():
            raise InputError(f"NaN/inf in the input of {self.consumer.module}: check the calibration data")
        m = self.module
        x = x.detach().double()
        u = _unfold(m, x) if isinstance(m, CONVS) else x.reshape(-1, x.shape[-1]).t().unsqueeze(0)
        if self.columns.numel() != u.shape[1] or not self._identity():
            u = u.index_select(1, self.columns.to(u.device))
        return u

    def _identity(self) -> bool:
        if not hasattr(self, "_is_identity"):
            self._is_identity = bool(torch.equal(self.columns, torch.arange(self.columns.numel())))
        return self._is_identity

    def set_weights(self, kept: list[int], rows: torch.Tensor, units: int) -> None:
        """Write reweighted rows for ``kept`` (in that order); removed units' columns become 0."""
        w = self.module.weight
        flat = w.detach().reshape(w.shape[0], -1).clone()
        cols = self.columns.view(units, self.block).to(flat.device)
        flat[:, cols.reshape(-1)] = 0.0
        kept_cols = cols[torch.as_tensor(kept, dtype=torch.long, device=flat.device)].reshape(-1)
        flat[:, kept_cols] = rows.t().to(flat.dtype)
        with torch.no_grad():
            w.copy_(flat.view_as(w))


def _unfold(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros" and any(m.padding):
            raise InputError(f"conv with padding_mode={m.padding_mode!r} is not supported by reconstruction")
        pad = m.padding if not isinstance(m.padding, str) else _same_padding(m)
        return F.unfold(x, m.kernel_size, dilation=m.dilation, padding=pad, stride=m.stride)
    if isinstance(m, nn.Conv1d):
        return _unfold(_as_conv2d(m), x.unsqueeze(-1))
    raise InputError(f"{type(m).__name__} consumers are not supported by reconstruction yet")


def _same_padding(m: nn.Conv2d) -> tuple[int, int]:
    if m.padding == "valid":
        return (0, 0)
    pads = [d * (k - 1) for k, d in zip(m.kernel_size, m.dilation)]
    if any(p % 2 for p in pads):
        raise InputError("padding='same' with an even kernel is not supported by reconstruction")
    return tuple(p // 2 for p in pads)


def _as_conv2d(m: nn.Conv1d) -> nn.Conv2d:
    c = nn.Conv2d(m.in_channels, m.out_channels, (m.kernel_size[0], 1), stride=(m.stride[0], 1),
                  padding=(m.padding[0], 0) if not isinstance(m.padding, str) else m.padding,
                  dilation=(m.dilation[0], 1), bias=False, device="meta")
    return c


@dataclass
class GroupProblem:
    """The streamed least-squares data of one group: G = B^T B, C = B^T Y, ||Y||^2.

    ``add(inputs, targets=None)``: ``inputs[i]`` is consumer i's input for a batch;
    ``targets[i]`` (asymmetric variant) is the unpruned network's input of the
    same consumer, so that ``Y = A W`` with the original features ``A``.
    """

    layouts: list[ConsumerLayout]
    units: int
    grams: list[torch.Tensor] = field(default_factory=list)
    cross: list[torch.Tensor] = field(default_factory=list)  # B^T Y per consumer (asymmetric)
    yy: list[float] = field(default_factory=list)
    rows: int = 0

    def __post_init__(self) -> None:
        self.weights = [lay.weight_matrix() for lay in self.layouts]
        self.grams = [None] * len(self.layouts)
        self.cross = [None] * len(self.layouts)
        self.yy = [0.0] * len(self.layouts)
        self._reduced = False

    @property
    def block(self) -> int:
        return sum(lay.block for lay in self.layouts)

    def add(self, inputs: list[torch.Tensor], targets: list[torch.Tensor] | None = None) -> None:
        if self._reduced:
            raise DistributedError("GroupProblem.add after all_reduce: the statistics were already summed over the ranks")
        for i, lay in enumerate(self.layouts):
            b = lay.feature_blocks(inputs[i])  # (N, D, L)
            self.grams[i] = _gram(self.grams[i], b, b)
            if targets is not None:  # Y = A W per row, as (N, m, L)
                w = self.weights[i].to(b.device)
                y = torch.matmul(w.t(), lay.feature_blocks(targets[i]))
                self.cross[i] = _gram(self.cross[i], b, y)
                self.yy[i] += float((y * y).sum())
            if i == 0:
                self.rows += b.shape[0] * b.shape[2]

    def all_reduce(self) -> None:
        """Sum the statistics over the ranks of ``torch.distributed`` (once; a no-op in one process).

        Needs: every rank calls it for the same groups in the same order, after its last ``add``.
        Guarantees: grams, cross terms, ``yy`` and ``rows`` are those of the union of the
        ranks' batches (float64 sums, so equal to one process to rounding); ranks with no
        rows contribute zeros of the right shapes.
        """
        if self._reduced or not is_distributed():
            return
        dev = next((g.device for g in self.grams if g is not None), torch.device("cpu"))
        local_cross = torch.tensor([float(any(c is not None for c in self.cross))], dtype=torch.float64)
        symmetric = float(all_reduce_sum(local_cross)) == 0.0  # agreed even if a rank saw no rows
        parts = []
        for i, lay in enumerate(self.layouts):
            d = lay.columns.numel()
            parts.append(self.grams[i] if self.grams[i] is not None else torch.zeros(d, d, dtype=torch.float64, device=dev))
            if not symmetric:
                m = self.weights[i].shape[1]
                parts.append(self.cross[i] if self.cross[i] is not None else torch.zeros(d, m, dtype=torch.float64, device=dev))
        parts.append(torch.tensor([float(y) for y in self.yy] + [float(self.rows)], dtype=torch.float64, device=dev))
        summed = all_reduce_sum_many(parts)
        step = 1 if symmetric else 2
        self.grams = summed[0:-1:step]
        if not symmetric:
            self.cross = summed[1:-1:step]
        self.yy = [float(v) for v in summed[-1][:-1].cpu().tolist()]
        self.rows = int(summed[-1][-1])
        self._reduced = True

    def gram_data(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(G, C, yy) of the summed objective, unit-major with block ``self.block`` (summed over
        the ranks of ``torch.distributed``, see ``all_reduce``)."""
        self.all_reduce()
        if self.rows == 0:
            raise InputError("no calibration data reached the consumers of this group")
        b, u = self.block, self.units
        m_total = sum(w.shape[1] for w in self.weights)
        dev = self.grams[0].device
        G = torch.zeros(u * b, u * b, dtype=torch.float64, device=dev)
        C = torch.zeros(u * b, m_total, dtype=torch.float64, device=dev)
        yy, off, m_off = 0.0, 0, 0
        for i, lay in enumerate(self.layouts):
            idx = (torch.arange(u, device=dev)[:, None] * b + off + torch.arange(lay.block, device=dev)).reshape(-1)
            w = self.weights[i].to(dev)
            G[idx[:, None], idx[None, :]] = self.grams[i]
            if self.cross[i] is None:  # symmetric: Y = B W
                C[idx, m_off:m_off + w.shape[1]] = self.grams[i] @ w
                yy += float((w * (self.grams[i] @ w)).sum())
            else:
                C[idx, m_off:m_off + w.shape[1]] = self.cross[i]
                yy += self.yy[i]
            off += lay.block
            m_off += w.shape[1]
        return G, C, yy

    def write(self, kept: list[int], weights: torch.Tensor) -> None:
        """Scatter the selection's weights (rows of ``kept`` blocks) into the consumer layers."""
        b = self.block
        rows = weights.view(len(kept), b, -1)
        off, m_off = 0, 0
        for i, lay in enumerate(self.layouts):
            m = self.weights[i].shape[1]
            part = rows[:, off:off + lay.block, m_off:m_off + m].reshape(len(kept) * lay.block, m)
            lay.set_weights(kept, part, self.units)
            off += lay.block
            m_off += m


def _gram(total: torch.Tensor | None, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``total + sum_n left[n] @ right[n].T`` for (N, D, L) and (N, E, L) blocks (in place)."""
    if total is None:
        total = left.new_zeros(left.shape[1], right.shape[1])
    for ln, rn in zip(left, right):
        total.addmm_(ln, rn.t())
    return total
