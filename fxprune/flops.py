"""FLOP counting that does not depend on which attention kernel torch runs.

``torch.utils.flop_counter.FlopCounterMode`` counts an op only if its registry
has a formula for it, and the registry differs between torch releases: e.g. the
CPU flash-attention kernel (``aten._scaled_dot_product_flash_attention_for_cpu``,
the default for ``F.scaled_dot_product_attention`` on CPU) counts as 0 on torch
2.14, while the math backend decomposes into counted ``bmm``s. ``flop_counter()``
adds one formula, written from the q/k/v shapes, for every fused scaled-dot-product
kernel (flash, flash for CPU, memory-efficient, cuDNN, the overrideable one for
out-of-tree devices, MPS math; forward and backward), replacing torch's own where
it has one, so each kernel is counted once and the same way on every release.

The fused ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` fast paths
(``aten._native_multi_head_attention``, ``aten._transformer_encoder_layer_fwd``)
are opaque to the counter, projections included: ``attention_fast_path_off()``
turns them off while counting, so these modules run their op-by-op path (linear
layers, then scaled dot product or ``bmm``) and every MAC is seen.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["attention_fast_path_off", "attention_flop_formulas", "flop_counter", "sdpa_backward_flops", "sdpa_flops"]

# Fused kernels taking (query, key, value, ...) shaped (batch..., heads, length, head_dim).
_FORWARD_KERNELS = (
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
    "_scaled_dot_product_attention_math_for_mps",
)
# Their backward kernels, taking (grad_out, query, key, value, ...).
_BACKWARD_KERNELS = tuple(
    f"{name}_backward" for name in _FORWARD_KERNELS if name != "_scaled_dot_product_attention_math_for_mps"
)


def _components(*tensors: Any) -> list[tuple[tuple[int, ...], ...]]:
    """Shapes of the tensors, one tuple per sequence when they are nested (ragged) tensors."""
    if any(isinstance(t, torch.Tensor) and t.is_nested for t in tensors):
        return [tuple(tuple(c.shape) for c in parts) for parts in zip(*(t.unbind() for t in tensors))]
    return [tuple(tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t) for t in tensors)]


def _scores(query: tuple[int, ...], key: tuple[int, ...]) -> int:
    """Elements of the attention-score matrix: one per query row (every query head) and key."""
    return math.prod(query[:-1]) * key[-2]


def sdpa_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    """FLOPs (2 per MAC) of ``softmax(q k^T) v``: ``q @ k^T`` plus ``scores @ v``.

    Needs q ``(..., Hq, Lq, E)``, k ``(..., Hkv, Lk, E)``, v ``(..., Hkv, Lk, Ev)``
    as tensors or shapes; Hq may be a multiple of Hkv (grouped-query attention:
    each query head is counted). Masks, scaling and softmax carry no MACs.
    """
    return sum(2 * _scores(q, k) * (q[-1] + v[-1]) for q, k, v in _components(query, key, value))


def sdpa_backward_flops(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    """FLOPs of a fused attention backward, torch's convention: the scores are recomputed
    (``q @ k^T``), then ``grad_out @ v^T``, ``scores^T @ grad_out``, ``grad_scores @ k``
    and ``q^T @ grad_scores``. The same shapes as ``sdpa_flops``."""
    return sum(2 * _scores(q, k) * (3 * q[-1] + 2 * v[-1]) for q, k, v in _components(query, key, value))


sdpa_flops._get_raw = True  # FlopCounterMode passes tensors (nested ones included), not shapes
sdpa_backward_flops._get_raw = True


def attention_flop_formulas() -> dict[Any, Callable[..., int]]:
    """``{aten op: formula}`` for every fused attention kernel this torch build has."""
    formulas: dict[Any, Callable[..., int]] = {}
    for names, formula in ((_FORWARD_KERNELS, sdpa_flops), (_BACKWARD_KERNELS, sdpa_backward_flops)):
        for name in names:
            if hasattr(torch.ops.aten, name):
                formulas[getattr(torch.ops.aten, name)] = formula
    return formulas


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts every fused attention kernel."""
    return FlopCounterMode(display=False, custom_mapping=attention_flop_formulas())


@contextlib.contextmanager
def attention_fast_path_off() -> Iterator[None]:
    """Turn off the fused MultiheadAttention / TransformerEncoder fast path; restore it on exit."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)
