"""Hypothesis strategies that generate small random, fx-traceable architectures.

The public entry point is :func:`architectures`, a strategy of :class:`Arch`
values: a tiny ``nn.Module`` in eval mode (randomly initialised from a seed drawn
by hypothesis, BatchNorm/LayerNorm/PReLU parameters and running statistics
randomised), an example input of shape ``(2, C_in, H, W)`` and a readable
one-line description of the blocks.

Every model is a :class:`RandomNet`: a fixed ``nn.ModuleList`` of blocks (with
optional 2x2 pooling between them) followed by a classifier head, and its
``forward`` is traceable with ``torch.fx.symbolic_trace``.  The block kinds
(see :func:`block_kinds`) cover the channel-coupling patterns a structured
pruning compiler must handle: conv-bn-act chains, residual merges
(add/sub/mul, identity or projection shortcut), concatenation and channel
splitting, depthwise/grouped convolutions, squeeze-excitation gates, channel
shuffles (size-derived and literal reshapes), and multi-head attention (as
``nn.MultiheadAttention`` and written by hand with explicit reshapes).

Generation happens in two phases: first all choices are drawn from hypothesis
(widths, kernel sizes, variants), producing plain descriptions and module
factories; then the factories are called under ``torch.manual_seed(seed)``
inside ``torch.random.fork_rng`` so the global RNG state is left untouched and
the same draws always give the same weights.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from hypothesis import strategies as st
from torch import nn

__all__ = [
    "Arch",
    "RandomNet",
    "architectures",
    "block_kinds",
    "head_kinds",
]

BATCH = 2
"""Batch size of every example input."""

MIN_WIDTH = 4
MAX_WIDTH = 16
MAX_SEED = 2**31 - 1

_ACTIVATIONS = ("relu", "silu", "gelu", "hardswish", "prelu")
_MERGES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": operator.add,
    "torch.add": torch.add,
    "sub": operator.sub,
    "mul": operator.mul,
}

Factory = Callable[[], nn.Module]


# ---------------------------------------------------------------------------
# Public value type
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Arch:
    """One generated architecture.

    Attributes:
        model: the network, in eval mode.
        example_input: a matching input of shape ``(2, C_in, H, W)``.
        description: a readable one-line summary of input, blocks and head.
        kinds: the block kinds used, in order (pooling and head excluded).
        seed: the seed the weights and the example input were built from.
    """

    model: nn.Module
    example_input: torch.Tensor
    description: str
    kinds: tuple[str, ...] = field(default=())
    seed: int = 0

    def __repr__(self) -> str:
        """Show only the description, so hypothesis failure reports stay short."""
        return f"Arch<{self.description}>"

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:
        """Hook for hypothesis' pretty printer; same text as ``repr``."""
        printer.text(repr(self))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class _Plan:
    """A drawn but not yet built block: its summary, output width and factory."""

    kind: str
    desc: str
    c_out: int
    factory: Factory


# ---------------------------------------------------------------------------
# Building blocks (all forwards are fx-traceable)
# ---------------------------------------------------------------------------


def make_activation(name: str, channels: int) -> nn.Module:
    """Return the activation module called ``name`` for ``channels`` channels."""
    if name == "relu":
        return nn.ReLU()
    if name == "silu":
        return nn.SiLU()
    if name == "gelu":
        return nn.GELU()
    if name == "hardswish":
        return nn.Hardswish()
    if name == "prelu":
        return nn.PReLU(num_parameters=channels)
    raise ValueError(f"unknown activation {name!r}")


class ConvBnAct(nn.Module):
    """``Conv2d -> BatchNorm2d -> activation`` with 'same' padding."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 1,
        *,
        bias: bool = False,
        act: str | None = "relu",
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=bias, groups=groups)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = None if act is None else make_activation(act, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply conv, BN and the optional activation."""
        x = self.bn(self.conv(x))
        if self.act is not None:
            x = self.act(x)
        return x


class ResidualBlock(nn.Module):
    """Two conv-BN layers merged with a shortcut (identity or 1x1 projection)."""

    def __init__(self, c_in: int, mid: int, c_out: int, *, merge: str, projection: bool, post_act: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBnAct(c_in, mid, 3, act="relu"),
            ConvBnAct(mid, c_out, 3, act=None),
        )
        self.shortcut: nn.Module = ConvBnAct(c_in, c_out, 1, act=None) if projection else nn.Identity()
        self.merge = merge
        self.post_act = nn.ReLU() if post_act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Merge the body output with the shortcut."""
        out = _MERGES[self.merge](self.body(x), self.shortcut(x))
        if self.post_act is not None:
            out = self.post_act(out)
        return out


class ConcatBlock(nn.Module):
    """Parallel branches on the same input, concatenated along channels."""

    def __init__(self, branches: Sequence[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run every branch and ``torch.cat`` the results on dim 1."""
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class SplitBlock(nn.Module):
    """Split the channels in two parts, process them differently, concatenate back.

    ``mode`` is one of ``split_sizes`` (``torch.split`` with a size list),
    ``split_int`` (``x.split(k, dim=1)``), ``chunk`` (``torch.chunk(x, 2, 1)``)
    or ``slice`` (``x[:, :k]`` / ``x[:, k:]``).
    """

    def __init__(self, mode: str, c_in: int, k: int, left: nn.Module, right: nn.Module | None, swap: bool) -> None:
        super().__init__()
        self.mode = mode
        self.k = k
        self.rest = c_in - k
        self.left = left
        self.right = right
        self.swap = swap

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "split_sizes":
            a, b = torch.split(x, [self.k, self.rest], dim=1)
        elif self.mode == "split_int":
            a, b = x.split(self.k, dim=1)
        elif self.mode == "chunk":
            a, b = torch.chunk(x, 2, dim=1)
        else:
            a = x[:, : self.k]
            b = x[:, self.k :]
        return a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Split, transform both parts and concatenate (optionally swapped)."""
        a, b = self._split(x)
        a = self.left(a)
        if self.right is not None:
            b = self.right(b)
        parts = [b, a] if self.swap else [a, b]
        return torch.cat(parts, dim=1)


class DepthwiseSeparable(nn.Module):
    """Optional 1x1 expansion, depthwise 3x3 (groups=C, multiplier 1 or 2), 1x1 projection."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        *,
        hidden: int | None,
        multiplier: int,
        act: str,
        pw_act: bool,
        residual: bool,
    ) -> None:
        super().__init__()
        dw_in = c_in if hidden is None else hidden
        self.expand = None if hidden is None else ConvBnAct(c_in, hidden, 1, act=act)
        self.dw = ConvBnAct(dw_in, dw_in * multiplier, 3, act=act, groups=dw_in)
        self.pw = ConvBnAct(dw_in * multiplier, c_out, 1, act="relu" if pw_act else None)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expand (optional), depthwise, pointwise, add the input when residual."""
        y = x if self.expand is None else self.expand(x)
        y = self.pw(self.dw(y))
        if self.residual:
            y = x + y
        return y


class GroupedConvBlock(nn.Module):
    """Optional 1x1 adapter to a multiple of ``groups``, then a grouped conv-BN-ReLU."""

    def __init__(self, c_in: int, c_out: int, *, groups: int, kernel: int, adapter: int | None) -> None:
        super().__init__()
        conv_in = c_in if adapter is None else adapter
        self.adapter = None if adapter is None else ConvBnAct(c_in, adapter, 1, act="relu")
        self.conv = ConvBnAct(conv_in, c_out, kernel, act="relu", groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Adapt (optional) and apply the grouped convolution."""
        if self.adapter is not None:
            x = self.adapter(x)
        return self.conv(x)


class SqueezeExcite(nn.Module):
    """Squeeze-excitation: pool -> 1x1 reduce -> ReLU -> 1x1 expand -> gate -> ``x * gate``."""

    def __init__(self, channels: int, reduced: int, *, pool_module: bool, gate: str) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1) if pool_module else None
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate: nn.Module = nn.Sigmoid() if gate == "sigmoid" else nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate ``x`` channel-wise by its pooled statistics."""
        s = self.pool(x) if self.pool is not None else x.mean((2, 3), keepdim=True)
        s = self.gate(self.expand(self.act(self.reduce(s))))
        return x * s


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's ShuffleNetV2 channel shuffle (sizes read from ``x.size()``)."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    x = x.view(batchsize, num_channels, height, width)
    return x


class ChannelShuffle(nn.Module):
    """Channel shuffle with sizes from ``x.size()`` or with literal sizes."""

    def __init__(self, channels: int, groups: int, height: int, width: int, *, literal: bool) -> None:
        super().__init__()
        self.channels = channels
        self.groups = groups
        self.height = height
        self.width = width
        self.literal = literal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shuffle channels across ``groups``."""
        if not self.literal:
            return channel_shuffle(x, self.groups)
        x = x.view(-1, self.groups, self.channels // self.groups, self.height, self.width)
        x = x.transpose(1, 2).contiguous()
        return x.view(-1, self.channels, self.height, self.width)


class ShuffleBlock(nn.Module):
    """Optional adapter, optional ShuffleNetV2 unit (chunk -> branch -> cat), then a shuffle."""

    def __init__(self, c_in: int, channels: int, shuffle: ChannelShuffle, *, adapter: bool, unit: bool) -> None:
        super().__init__()
        self.adapter = ConvBnAct(c_in, channels, 1, act="relu") if adapter else None
        half = channels // 2
        self.branch = (
            nn.Sequential(
                ConvBnAct(half, half, 1, act="relu"),
                ConvBnAct(half, half, 3, act=None, groups=half),
                ConvBnAct(half, half, 1, act="relu"),
            )
            if unit
            else None
        )
        self.shuffle = shuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Adapt, run the V2 unit if any, shuffle."""
        if self.adapter is not None:
            x = self.adapter(x)
        if self.branch is not None:
            x1, x2 = x.chunk(2, dim=1)
            x = torch.cat((x1, self.branch(x2)), dim=1)
        return self.shuffle(x)


class MHABlock(nn.Module):
    """``nn.MultiheadAttention`` self-attention over the H*W tokens, residual add + LayerNorm."""

    def __init__(self, channels: int, heads: int, *, pre_norm: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm = nn.LayerNorm(channels)
        self.pre_norm = pre_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW -> tokens -> attention -> NCHW."""
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        if self.pre_norm:
            u = self.norm(t)
            t = t + self.attn(u, u, u, need_weights=False)[0]
        else:
            t = self.norm(t + self.attn(t, t, t, need_weights=False)[0])
        return t.transpose(1, 2).reshape(n, c, h, w)


class ManualAttention(nn.Module):
    """Hand-written multi-head self-attention with explicit reshape/permute.

    ``q @ k.transpose(-2, -1) * scale`` with ``scale`` a Python float, softmax,
    ``@ v``, reshape back, output ``nn.Linear``, residual add and an optional
    pre-LayerNorm.  Q/K/V come from separate Linears or one fused Linear.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        head_dim: int,
        *,
        fused: bool,
        norm: bool,
        literal_merge: bool,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.scale = float(head_dim) ** -0.5
        self.fused = fused
        self.literal_merge = literal_merge
        self.norm = nn.LayerNorm(channels) if norm else None
        if fused:
            self.qkv = nn.Linear(channels, 3 * inner)
        else:
            self.q = nn.Linear(channels, inner)
            self.k = nn.Linear(channels, inner)
            self.v = nn.Linear(channels, inner)
        self.proj = nn.Linear(inner, channels)

    def _qkv(self, t: torch.Tensor, n: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.fused:
            qkv = self.qkv(t).reshape(n, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            return qkv[0], qkv[1], qkv[2]
        q = self.q(t).reshape(n, length, self.heads, self.head_dim).permute(0, 2, 1, 3)
        k = self.k(t).reshape(n, length, self.heads, self.head_dim).permute(0, 2, 1, 3)
        v = self.v(t).reshape(n, length, self.heads, self.head_dim).permute(0, 2, 1, 3)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW -> tokens -> attention -> NCHW."""
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        length = t.shape[1]
        u = t if self.norm is None else self.norm(t)
        q, k, v = self._qkv(u, n, length)
        attn = q @ k.transpose(-2, -1) * self.scale
        attn = attn.softmax(dim=-1)
        o = (attn @ v).permute(0, 2, 1, 3)
        if self.literal_merge:
            o = o.reshape(n, length, self.heads * self.head_dim)
        else:
            o = o.reshape(n, length, -1)
        t = t + self.proj(o)
        return t.transpose(1, 2).reshape(n, c, h, w)


class GapLinearHead(nn.Module):
    """Global average pool -> flatten -> Linear."""

    def __init__(self, channels: int, classes: int, *, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.pool = nn.AdaptiveAvgPool2d(1) if mode == "adaptive" else None
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool to one value per channel and classify."""
        if self.pool is not None:
            x = torch.flatten(self.pool(x), 1)
        else:
            x = x.mean((2, 3))
        return self.fc(x)


class FlattenMlpHead(nn.Module):
    """Optional pooling to a small map -> flatten -> Linear -> ReLU -> Linear."""

    def __init__(self, in_features: int, hidden: int, classes: int, *, pool: nn.Module | None, flatten: str) -> None:
        super().__init__()
        self.pool = pool
        self.flatten_mode = flatten
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, classes)

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        if self.flatten_mode == "torch.flatten":
            return torch.flatten(x, 1)
        if self.flatten_mode == "method":
            return x.flatten(1)
        if self.flatten_mode == "contiguous_view":
            # ``.contiguous()`` is needed: attention blocks leave a channels-last
            # strided map behind (``transpose(1, 2).reshape``), and it propagates.
            return x.contiguous().view(x.size(0), -1)
        return x.reshape(x.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flatten the (pooled) map into the MLP."""
        if self.pool is not None:
            x = self.pool(x)
        return self.fc2(self.act(self.fc1(self._flatten(x))))


class RandomNet(nn.Module):
    """A fixed sequence of blocks (``nn.ModuleList``) followed by a head."""

    def __init__(self, blocks: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run all blocks, then the head."""
        for block in self.blocks:
            x = block(x)
        return self.head(x)


# ---------------------------------------------------------------------------
# Drawing helpers
# ---------------------------------------------------------------------------


def _width(draw: st.DrawFn, lo: int = MIN_WIDTH, hi: int = MAX_WIDTH, multiple: int = 1) -> int:
    """Draw a width in ``[lo, hi]`` that is a multiple of ``multiple``."""
    k_lo = max(1, -(-lo // multiple))
    k_hi = max(k_lo, hi // multiple)
    return draw(st.integers(k_lo, k_hi)) * multiple


def _divisors_of(c: int, options: Sequence[int]) -> list[int]:
    """The entries of ``options`` that divide ``c``."""
    return [g for g in options if c % g == 0]


# ---------------------------------------------------------------------------
# Per-kind draw functions: (draw, c_in, hw) -> _Plan
# ---------------------------------------------------------------------------


def _draw_conv_bn_act(draw: st.DrawFn, c_in: int, hw: int) -> _Plan:
    """Conv 1x1/3x3 (optional bias) -> BN -> one of five activations."""
    c_out = _width(draw)
    kernel = draw(st.sampled_from((3, 1)))
    bias = draw(st.booleans())
    act = draw(st.sampled_from(_ACTIVATIONS))
    desc = f"conv_bn_act({c_in}->{c_out}, k{kernel}, bias={bias}, {act})"
    return _Plan("conv_bn_act", desc, c_out, lambda: ConvBnAct(c_in, c_out, kernel, bias=bias, act=act))


def _draw_residual(draw: st.DrawFn, c_in: int, hw: int) -> _Plan:
    """Two conv-BN layers merged (add/torch.add/sub/mul) with an identity or projection shortcut."""
    projection = draw(st.booleans())
    c_out = _width(draw) if projection else c_in
    mid = _width(draw)
    merge = draw(st.sampled_from(tuple(_MERGES)))
    post_act = draw(st.booleans())
    shortcut = "projection" if projection else "identity"
    desc = f"residual({c_in}->{c_out}, mid={mid}, {shortcut}, merge={merge}, post_relu={post_act})"

    def factory() -> nn.Module:
        return ResidualBlock(c_in, mid, c_out, merge=merge, projection=projection, post_act=post_act)

    return _Plan("residual", desc, c_out, factory)


def _draw_concat(draw: st.DrawFn, c_in: int, hw: int) -> _Plan:
    """2-3 conv branches of different widths; at most one identity/maxpool branch (narrow inputs only)."""
    n_branches = draw(st.integers(2, 3))
    convs = ("conv1x1", "conv3x3")
    passthroughs = ("identity", "maxpool")
    specs: list[tuple[str, int]] = []
    for i in range(n_branches):
        has_passthrough = any(kind in passthroughs for kind, _ in specs)
        allow_passthrough = i > 0 and c_in <= 8 and not has_passthrough
        kind = draw(st.sampled_from(convs + passthroughs if allow_passthrough else convs))
        width = c_in if kind in passthroughs else _width(draw, 2, 8)
        specs.append((kind, width))
    c_out = sum(width for _, width in specs)
    desc = "concat(" + ", ".join(f"{k}:{w}" for k, w in specs) + f"; {c_in}->{c_out})"

    def branch(kind: str, width: int) -> nn.Module:
        if kind == "identity":
            return nn.Identity()
        if kind == "maxpool":
            return nn.MaxPool2d(3, stride=1, padding=1)
        return ConvBnAct(c_in, width, 3 if kind == "conv3x3" else 1, act="relu")

    return _Plan("concat", desc, c_out, lambda: ConcatBlock([branch(k, w) for k, w in specs]))


def _draw_split(draw: st.DrawFn, c_in: int, hw: int) -> _Plan:
    """Split channels (split/chunk/slice), process the parts differently, cat back."""
    modes = ["split_sizes", "slice", "chunk", "split_int"]
    mode = draw(st.sampled_from(modes))
    if mode == "chunk":
        k = -(-c_in // 2)
    elif mode == "split_int":
        k = draw(st.integers(-(-c_in // 2), c_in - 1))
    else:
        k = draw(st.integers(1, c_in - 1))
    rest = c_in - k
    left_width = _width(draw, 2, 12)
    left_kernel = draw(st.sampled_from((1, 3)))
    right_kind = draw(st.sampled_from(("identity", "conv1x1", "conv3x3")))
    right_width = rest if right_kind == "identity" else _width(draw, 2, 12)
    swap = draw(st.booleans())
    c_out = left_width + right_width
    desc = (
        f"split({mode}, {c_in}->[{k},{rest}], left=conv{left_kernel}x{left_kernel}:{left_width}, "
        f"right={right_kind}:{right_width}, swap={swap}; ->{c_out})"
    )

    def factory() -> nn.Module:
        left = ConvBnAct(k, left_width, left_kernel, act="relu")
        right = None if right_kind == "identity" else ConvBnAct(rest, right_width, 3 if right_kind == "conv3x3" else 1)
        return SplitBlock(mode, c_in, k, left, right, swap)

    return _Plan("split", desc, c_out, factory)


def _draw_depthwise_separable(draw: st.DrawFn, c_in: int, hw: int) -> _Plan:
    """Depthwise (multiplier 1/2) + pointwise, or a MobileNetV2 inverted residual."""
    inverted = draw(st.booleans())
    act = draw(st.sampled_from(("relu", "hardswish", "silu")))
    if inverted:
        hidden: int | None = _width(draw)
        multiplier = 1
        residual = draw(st.booleans())
        c_out = c_in if residual else _width(draw)
        pw_act = False
    else:
        hidden = None
        multiplier = draw(st.sampled_from((1, 2)))
        residual = False
        c_out = _width(draw)
        pw_act = draw(st.booleans())
    variant = f"inverted(hidden={hidden}, residual={residual})" if inverted else f"plain(mult={multiplier})"
    desc = f"depthwise_separable({c_in}->{c_out}, {variant}, {act}, pw_act={pw_act})"

    def factory() -> nn.Module:
        return DepthwiseSeparable(
            c_in, c_out, hidden=hidden, multiplier=multiplier, act=act, pw_act=pw_act, residual=residual
        )

    return _Plan("depthwise_separable", desc, c_out, factory)


def _draw_grouped_conv(draw: st.DrawFn, c_in: int, hw: int) -> _Plan:
    """Grouped conv (groups 2/4), with a 1x1 adapter when ``c_in`` is not divisible."""
    groups = draw(st.sampled_from((2, 4)))
    needs_adapter = c_in % groups != 0
    adapter: int | None = None
    if needs_adapter or draw(st.booleans()):
        adapter = _width(draw, multiple=groups)
    c_out = _width(draw, multiple=groups)
    kernel = draw(st.sampled_from((3, 1)))
    adapt = f"adapter={adapter}, " if adapter is not None else ""
    desc = f"grouped_conv({c_in}->{c_out}, {adapt}groups={groups}, k{kernel})"

    def factory() -> nn.Module:
        return GroupedConvBlock(c_in, c_out, groups=groups, kernel=kernel, adapter=adapter)

    return _Plan("grouped_conv", desc, c_out, factory)


def _draw_squeeze_excite(draw: st.DrawFn, c_in: int, hw: int) -> _Plan:
    """Squeeze-excitation gate multiplying the input."""
    reduced = draw(st.integers(2, max(2, c_in // 2)))
    pool_module = draw(st.booleans())
    gate = draw(st.sampled_from(("sigmoid", "hardsigmoid")))
    pool = "AdaptiveAvgPool2d" if pool_module else "mean"
    desc = f"squeeze_excite({c_in}, reduce={reduced}, pool={pool}, {gate})"

    def factory() -> nn.Module:
        return SqueezeExcite(c_in, reduced, pool_module=pool_module, gate=gate)

    return _Plan("squeeze_excite", desc, c_in, factory)


def _draw_channel_shuffle(draw: st.DrawFn, c_in: int, hw: int) -> _Plan:
    """Channel shuffle (x.size() or literal), optionally inside a ShuffleNetV2 unit."""
    unit = draw(st.booleans())
    groups = 2 if unit else draw(st.sampled_from((2, 4)))
    multiple = 2 * groups if unit else groups
    needs_adapter = c_in % multiple != 0
    adapter = needs_adapter or draw(st.booleans())
    channels = _width(draw, multiple=multiple) if adapter else c_in
    literal = draw(st.booleans())
    parts = [f"adapter={channels}"] if adapter else []
    parts += ["v2_unit"] if unit else []
    parts += [f"groups={groups}", "literal" if literal else "x.size()"]
    desc = f"channel_shuffle({c_in}->{channels}, " + ", ".join(parts) + ")"

    def factory() -> nn.Module:
        shuffle = ChannelShuffle(channels, groups, hw, hw, literal=literal)
        return ShuffleBlock(c_in, channels, shuffle, adapter=adapter, unit=unit)

    return _Plan("channel_shuffle", desc, channels, factory)


def _draw_mha_attention(draw: st.DrawFn, c_in: int, hw: int) -> _Plan:
    """``nn.MultiheadAttention`` over the H*W tokens with residual + LayerNorm."""
    heads = draw(st.sampled_from(_divisors_of(c_in, (1, 2, 4))))
    pre_norm = draw(st.booleans())
    desc = f"mha_attention({c_in}, heads={heads}, {'pre' if pre_norm else 'post'}_norm)"
    return _Plan("mha_attention", desc, c_in, lambda: MHABlock(c_in, heads, pre_norm=pre_norm))


def _draw_manual_attention(draw: st.DrawFn, c_in: int, hw: int) -> _Plan:
    """Hand-written multi-head attention with explicit reshapes."""
    heads = draw(st.integers(1, 4))
    head_dim = draw(st.integers(2, 8))
    fused = draw(st.booleans())
    norm = draw(st.booleans())
    literal_merge = draw(st.booleans())
    qkv = "fused_qkv" if fused else "separate_qkv"
    merge = "literal" if literal_merge else "-1"
    desc = f"manual_attention({c_in}, heads={heads}, head_dim={head_dim}, {qkv}, norm={norm}, merge_reshape={merge})"

    def factory() -> nn.Module:
        return ManualAttention(c_in, heads, head_dim, fused=fused, norm=norm, literal_merge=literal_merge)

    return _Plan("manual_attention", desc, c_in, factory)


_BLOCK_DRAWERS: dict[str, Callable[[st.DrawFn, int, int], _Plan]] = {
    "conv_bn_act": _draw_conv_bn_act,
    "residual": _draw_residual,
    "concat": _draw_concat,
    "split": _draw_split,
    "depthwise_separable": _draw_depthwise_separable,
    "grouped_conv": _draw_grouped_conv,
    "squeeze_excite": _draw_squeeze_excite,
    "channel_shuffle": _draw_channel_shuffle,
    "mha_attention": _draw_mha_attention,
    "manual_attention": _draw_manual_attention,
}

_HEAD_KINDS = ("gap_linear", "flatten_mlp")


def block_kinds() -> list[str]:
    """Names of all block kinds :func:`architectures` can generate."""
    return list(_BLOCK_DRAWERS)


def head_kinds() -> list[str]:
    """Names of the classifier heads :func:`architectures` can generate."""
    return list(_HEAD_KINDS)


def _draw_pool(draw: st.DrawFn, hw: int) -> tuple[str, Factory] | None:
    """Maybe draw a 2x2 pooling layer (only when ``hw`` is even and >= 4)."""
    if hw < 4 or hw % 2 != 0:
        return None
    kind = draw(st.sampled_from(("none", "maxpool", "avgpool")))
    if kind == "none":
        return None
    if kind == "maxpool":
        return "maxpool2x2", lambda: nn.MaxPool2d(2)
    return "avgpool2x2", lambda: nn.AvgPool2d(2)


def _draw_head(draw: st.DrawFn, kinds: Sequence[str], c: int, hw: int, classes: int) -> tuple[str, Factory]:
    """Draw the classifier head for a ``c`` x ``hw`` x ``hw`` feature map."""
    kind = draw(st.sampled_from(tuple(kinds)))
    if kind == "gap_linear":
        mode = draw(st.sampled_from(("adaptive", "mean")))
        return f"gap_linear({mode}, {c}->{classes})", lambda: GapLinearHead(c, classes, mode=mode)
    pool_kind = "adaptive2" if hw > 4 else draw(st.sampled_from(("none", "adaptive2")))
    side = hw if pool_kind == "none" else 2
    flatten = draw(st.sampled_from(("torch.flatten", "method", "contiguous_view", "reshape")))
    hidden = _width(draw)
    in_features = c * side * side

    def factory() -> nn.Module:
        pool = None if pool_kind == "none" else nn.AdaptiveAvgPool2d(2)
        return FlattenMlpHead(in_features, hidden, classes, pool=pool, flatten=flatten)

    desc = f"flatten_mlp(pool={pool_kind}, {flatten}, {c}x{side}x{side}->{hidden}->{classes})"
    return desc, factory


# ---------------------------------------------------------------------------
# Model construction
# ---------------------------------------------------------------------------


def randomize_norm_stats(model: nn.Module, generator: torch.Generator) -> None:
    """Give BN/LayerNorm/PReLU non-default values so their shifts and scales matter."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.2)
            elif isinstance(module, nn.LayerNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.2)
            elif isinstance(module, nn.PReLU):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 0.45 + 0.05)


def _build(
    factories: Sequence[Factory], head: Factory, seed: int, input_shape: tuple[int, ...]
) -> tuple[nn.Module, torch.Tensor]:
    """Instantiate the model and example input deterministically from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RandomNet([f() for f in factories], head())
    generator = torch.Generator().manual_seed(seed)
    randomize_norm_stats(model, generator)
    example_input = torch.randn(input_shape, generator=generator)
    return model.eval(), example_input


@st.composite
def _architectures(
    draw: st.DrawFn,
    kinds: tuple[str, ...],
    min_blocks: int,
    max_blocks: int,
    pooling: bool,
    heads: tuple[str, ...],
) -> Arch:
    """Draw all choices, then build the model (see :func:`architectures`)."""
    seed = draw(st.integers(0, MAX_SEED))
    c_in = draw(st.integers(3, 8))
    side = draw(st.sampled_from((8, 6, 4)))
    hw = side
    n_blocks = draw(st.integers(min_blocks, max_blocks))
    classes = draw(st.integers(2, 10))

    c = c_in
    descs = [f"input(2x{c_in}x{hw}x{hw})"]
    factories: list[Factory] = []
    used: list[str] = []
    for i in range(n_blocks):
        kind = draw(st.sampled_from(kinds))
        plan = _BLOCK_DRAWERS[kind](draw, c, hw)
        factories.append(plan.factory)
        descs.append(plan.desc)
        used.append(kind)
        c = plan.c_out
        pool = _draw_pool(draw, hw) if pooling and i < n_blocks - 1 else None
        if pool is not None:
            descs.append(pool[0])
            factories.append(pool[1])
            hw //= 2
    head_desc, head_factory = _draw_head(draw, heads, c, hw, classes)
    descs.append(head_desc)
    descs.append(f"seed={seed}")

    model, example_input = _build(factories, head_factory, seed, (BATCH, c_in, side, side))
    return Arch(model, example_input, " | ".join(descs), tuple(used), seed)


def architectures(
    kinds: Sequence[str] | None = None,
    *,
    min_blocks: int = 2,
    max_blocks: int = 6,
    pooling: bool = True,
    heads: Sequence[str] | None = None,
) -> st.SearchStrategy[Arch]:
    """Strategy for small random fx-traceable architectures.

    Args:
        kinds: block kinds to draw from (default: all of :func:`block_kinds`).
        min_blocks: fewest blocks (>= 1).
        max_blocks: most blocks (>= ``min_blocks``).
        pooling: allow 2x2 max/avg pooling between blocks.
        heads: classifier heads to draw from (default: all of :func:`head_kinds`).

    Returns:
        A strategy of :class:`Arch` values.
    """
    kind_tuple = tuple(block_kinds() if kinds is None else kinds)
    head_tuple = tuple(head_kinds() if heads is None else heads)
    _check_names("block kind", kind_tuple, block_kinds())
    _check_names("head kind", head_tuple, head_kinds())
    if not 1 <= min_blocks <= max_blocks:
        raise ValueError(f"need 1 <= min_blocks <= max_blocks, got {min_blocks}, {max_blocks}")
    return _architectures(kind_tuple, min_blocks, max_blocks, pooling, head_tuple)


def _check_names(what: str, names: Sequence[str], known: Sequence[str]) -> None:
    """Raise ``ValueError`` if ``names`` is empty or has unknown entries."""
    if not names:
        raise ValueError(f"at least one {what} is required")
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; known: {list(known)}")
