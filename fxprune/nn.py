"""Modules and functions the rewrite substitutes where torch's own cannot express a pruned shape.

``nn.MultiheadAttention`` ties its input, inner and output widths to one
``embed_dim``; torchvision's ``shifted_window_attention`` derives the head
width from the input width. After pruning heads and the residual stream
independently those widths differ, so the rewrite swaps in these versions,
which keep each width (and the original softmax scale) explicit. Both are
plain torch ops and export to ONNX.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn


def _heads(x: Tensor, num_heads: int, head_dim: int) -> Tensor:
    """(N, L, H*D) -> (N, H, L, D)."""
    return x.reshape(x.shape[0], x.shape[1], num_heads, head_dim).transpose(1, 2)


class PrunedMultiheadAttention(nn.Module):
    """Multi-head attention with independent query/key/value, inner and output widths."""

    def __init__(self, source: nn.MultiheadAttention, weights: dict[str, Tensor], num_heads: int):
        super().__init__()
        self.batch_first = source.batch_first
        self.num_heads = num_heads
        self.head_dim = source.head_dim
        self.scale = float(source.head_dim) ** -0.5
        self.dropout = source.dropout
        inner = num_heads * source.head_dim
        if "in_proj_weight" in weights:
            q, k, v = weights["in_proj_weight"].split(inner)
        else:
            q, k, v = weights["q_proj_weight"], weights["k_proj_weight"], weights["v_proj_weight"]
        self.q_weight, self.k_weight, self.v_weight = (nn.Parameter(t.clone()) for t in (q, k, v))
        bias = weights.get("in_proj_bias")
        qb, kb, vb = bias.split(inner) if bias is not None else (None, None, None)
        self.q_bias, self.k_bias, self.v_bias = (nn.Parameter(t.clone()) if t is not None else None for t in (qb, kb, vb))
        self.out_proj = nn.Linear(inner, weights["out_proj.weight"].shape[0], bias="out_proj.bias" in weights)
        self.out_proj.weight = nn.Parameter(weights["out_proj.weight"].clone())
        if "out_proj.bias" in weights:
            self.out_proj.bias = nn.Parameter(weights["out_proj.bias"].clone())

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None,
                average_attn_weights: bool = True, is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q = _heads(F.linear(query, self.q_weight, self.q_bias), self.num_heads, self.head_dim)
        k = _heads(F.linear(key, self.k_weight, self.k_bias), self.num_heads, self.head_dim)
        v = _heads(F.linear(value, self.v_weight, self.v_bias), self.num_heads, self.head_dim)
        scores = (q * self.scale) @ k.transpose(-2, -1)
        scores = scores + _additive_mask(attn_mask, key_padding_mask, scores, is_causal)
        attn = F.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
        out = (attn @ v).transpose(1, 2).reshape(q.shape[0], q.shape[2], self.num_heads * self.head_dim)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, attn.mean(dim=1) if average_attn_weights else attn


def _additive_mask(attn_mask: Tensor | None, key_padding_mask: Tensor | None, scores: Tensor,
                   is_causal: bool) -> Tensor:
    mask = torch.zeros((), dtype=scores.dtype, device=scores.device)
    if is_causal and attn_mask is None:
        n, s = scores.shape[-2], scores.shape[-1]
        attn_mask = torch.ones(n, s, dtype=torch.bool, device=scores.device).triu(1)
    if attn_mask is not None:
        mask = mask + _as_additive(attn_mask, scores.dtype)
    if key_padding_mask is not None:
        mask = mask + _as_additive(key_padding_mask, scores.dtype)[:, None, None, :]
    return mask


def _as_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def window_attention(input: Tensor, qkv_weight: Tensor, proj_weight: Tensor, relative_position_bias: Tensor,
                     window_size: list[int], num_heads: int, shift_size: list[int], attention_dropout: float = 0.0,
                     dropout: float = 0.0, qkv_bias: Tensor | None = None, proj_bias: Tensor | None = None,
                     logit_scale: Tensor | None = None, training: bool = True, head_dim: int = 0) -> Tensor:
    """torchvision's shifted-window attention with an explicit ``head_dim``.

    Computes exactly what ``torchvision.models.swin_transformer.shifted_window_attention``
    computes for an unpruned layer, but the inner width is ``num_heads * head_dim``
    instead of the input width, and the scale uses the original ``head_dim``.
    """
    B, H, W, C = input.shape
    pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
    x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
    _, pad_H, pad_W, _ = x.shape
    shift_size = list(shift_size)
    if window_size[0] >= pad_H:
        shift_size[0] = 0
    if window_size[1] >= pad_W:
        shift_size[1] = 0
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    num_windows = (pad_H // window_size[0]) * (pad_W // window_size[1])
    x = x.view(B, pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, window_size[0] * window_size[1], C)
    inner = num_heads * head_dim
    if logit_scale is not None and qkv_bias is not None:
        qkv_bias = torch.cat([qkv_bias[:inner], torch.zeros_like(qkv_bias[inner:2 * inner]), qkv_bias[2 * inner:]])
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=4.605170185988092).exp()  # log(100)
    else:
        attn = (q * head_dim ** -0.5).matmul(k.transpose(-2, -1))
    attn = attn + relative_position_bias
    if sum(shift_size) > 0:
        attn_mask = _shift_mask(x, pad_H, pad_W, window_size, shift_size, num_windows)
        attn = attn.view(x.size(0) // num_windows, num_windows, num_heads, x.size(1), x.size(1))
        attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, x.size(1), x.size(1))
    attn = F.dropout(F.softmax(attn, dim=-1), p=attention_dropout, training=training)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), inner)
    x = F.dropout(F.linear(x, proj_weight, proj_bias), p=dropout, training=training)
    out_c = x.shape[-1]
    x = x.view(B, pad_H // window_size[0], pad_W // window_size[1], window_size[0], window_size[1], out_c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_H, pad_W, out_c)
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(shift_size[0], shift_size[1]), dims=(1, 2))
    return x[:, :H, :W, :].contiguous()


def _shift_mask(x: Tensor, pad_H: int, pad_W: int, window_size: list[int], shift_size: list[int],
                num_windows: int) -> Tensor:
    attn_mask = x.new_zeros((pad_H, pad_W))
    h_slices = ((0, -window_size[0]), (-window_size[0], -shift_size[0]), (-shift_size[0], None))
    w_slices = ((0, -window_size[1]), (-window_size[1], -shift_size[1]), (-shift_size[1], None))
    count = 0
    for h in h_slices:
        for w in w_slices:
            attn_mask[h[0]:h[1], w[0]:w[1]] = count
            count += 1
    attn_mask = attn_mask.view(pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1])
    attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(num_windows, window_size[0] * window_size[1])
    attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
    return attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)


fx.wrap("window_attention")
