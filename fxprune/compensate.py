"""Exact removal: fold what removed units leave behind into the layers that read them.

Needs: a ``Rewriter`` (fxprune.rewrite) before it slices parameters, and the
``removal`` semantics of its graph (fxprune.removal). Guarantees: for every conv
or linear reader where the removed units hold a constant (``sigmoid(0)``,
``x + 1`` ...), the pruned reader adds exactly what the removed inputs added in
the reference model (the original with the removed produce slices zeroed):

- into its bias (one is added when it has none) when that contribution is the
  same at every output position (linear layers; convs without zero padding);
- otherwise (zero padding, transposed convs) through a one-channel conv of the
  same geometry over a map of ones, so border positions get their own
  (smaller) share, at any input size.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .modes import eval_mode
from .tensors import set_tensor
from .errors import RewriteError
from .removal import Reader
from .rules.base import arg, set_arg

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
CONV_FUNCTIONS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
CONV_TRANSPOSE_FUNCTIONS = {F.conv_transpose1d: 1, F.conv_transpose2d: 2, F.conv_transpose3d: 3}


@dataclass
class Fold:
    """What one reader must add after the rewrite: a bias delta or a ones-map kernel (full size)."""

    node: str
    out_dim: int
    bias_delta: torch.Tensor | None = None
    kernel: torch.Tensor | None = None  # (C_out, *k) for convs, (C_out, *k) for transposed
    geometry: dict | None = None


@dataclass
class _Layer:
    """A reader's weight and geometry, whatever form (module or function) it has."""

    weight: torch.Tensor
    spatial: int  # 0 for linear
    transposed: bool
    groups: int
    geometry: dict
    position_free: bool  # every output position gets the same contribution


def prepare(rw: Any) -> list[Fold]:
    """Compute the folds for ``rw``'s plan (before slicing); zeroes the removed produce slices of ``rw.gm``."""
    readers = _readers(rw)
    if not readers:
        return []
    _zero_removed_produce(rw)
    values = _removed_values(rw, [r for _, r in readers])
    return [_fold(rw, r, values[r.node]) for _, r in readers]


def apply(rw: Any, folds: list[Fold]) -> list[str]:
    """Add the folds to the rewritten (sliced) module; returns one note per reader."""
    nodes = {n.name: n for n in rw.gm.graph.nodes}
    notes = []
    for fold in folds:
        node = nodes[fold.node]
        kept = rw.kept.get(rw.key_of(node, fold.out_dim))
        if fold.bias_delta is not None:
            _add_to_bias(rw.gm, node, _take(fold.bias_delta, kept))
            notes.append(f"{node.name}: the constant the removed units left is folded into its bias")
        else:
            _add_ones_map(rw.gm, node, _take(fold.kernel, kept), fold.geometry, fold.out_dim)
            notes.append(f"{node.name}: the constant the removed units left is added by a one-channel conv")
    return notes


def _take(t: torch.Tensor, kept: np.ndarray | None) -> torch.Tensor:
    return t if kept is None else t.index_select(0, torch.as_tensor(kept, dtype=torch.long, device=t.device))


# --- which readers, what values --------------------------------------------------------


def _readers(rw: Any) -> list[tuple[str, Reader]]:
    removal = getattr(rw.graph, "removal", None) or {}
    out = []
    for gid, kept in rw.plan.items():
        info = removal.get(gid)
        if info is not None and len(kept) < rw.graph.group(gid).units:
            out.extend((gid, r) for r in info.compensated)
    # one fold per reader: it adds what ALL removed channels of its input contributed
    # (several groups may reach one reader through a cat; folding per group counted them twice)
    unique: dict[str, tuple[str, Reader]] = {}
    for gid, r in out:
        unique.setdefault(r.node, (gid, r))
    return list(unique.values())


def _zero_removed_produce(rw: Any) -> None:
    """Zero the produce slices of every removed unit in ``rw.gm`` (they are sliced away next). The
    tensors are replaced by zeroed copies: ``rw.gm`` shares its tensors with the analysed model."""
    tensors = dict(rw.gm.named_parameters(remove_duplicate=False)) | dict(rw.gm.named_buffers(remove_duplicate=False))
    zeroed: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for gid, kept in rw.plan.items():
            group = rw.graph.group(gid)
            removed = sorted(set(range(group.units)) - set(kept))
            for s in group.slices(removed) if removed else ():
                if s.role == "produce" and s.name in tensors:
                    t = tensors[s.name]
                    zeroed[id(t)] = zeroed.get(id(t), t.detach()).index_fill(s.dim, s.index.to(t.device), 0.0)
    placed: dict[int, torch.Tensor] = {}
    for owner in rw.gm.modules():  # every alias of a tensor gets its one zeroed copy
        for attr, t in [*owner._parameters.items(), *owner._buffers.items()]:
            if t is None or id(t) not in zeroed:
                continue
            if id(t) in placed:
                set_tensor(owner, attr, t, placed[id(t)], share=True)
            else:
                placed[id(t)] = set_tensor(owner, attr, t, zeroed[id(t)])


class _Capture(fx.Interpreter):
    """Runs the module and keeps the removed channels of the readers' input tensors."""

    def __init__(self, gm: fx.GraphModule, wanted: dict[str, tuple[str, int, np.ndarray]]):
        super().__init__(gm)
        self.wanted = wanted  # operand node name -> (reader node, dim, removed index)
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        for reader, dim, removed in self.wanted.get(n.name, ()):
            index = torch.as_tensor(removed, dtype=torch.long, device=out.device)
            self.values[reader] = out.detach().index_select(dim, index)
        return out


def _removed_values(rw: Any, readers: list[Reader]) -> dict[str, torch.Tensor]:
    from .state import state_of

    nodes = {n.name: n for n in rw.gm.graph.nodes}
    wanted: dict[str, list] = {}
    for r in readers:
        operand = nodes[r.operand]
        dim = _input_dim(rw, nodes[r.node], operand)
        kept = rw.kept.get(rw.key_of(operand, dim))
        size = operand.meta["tensor_meta"].shape[dim]
        removed = np.setdiff1d(np.arange(size), kept if kept is not None else np.arange(size))
        wanted.setdefault(r.operand, []).append((r.node, dim, removed))
    with eval_mode(rw.gm), torch.no_grad():
        capture = _Capture(rw.gm, wanted)
        capture.run(*state_of(rw.graph.gm).example_inputs)
    return capture.values


def _input_dim(rw: Any, node: fx.Node, operand: fx.Node) -> int:
    """The channel dim of a conv/linear reader's input (positive)."""
    ndim = len(operand.meta["tensor_meta"].shape)
    spatial = _layer(rw, node).spatial
    return ndim - 1 if spatial == 0 else ndim - spatial - 1


# --- the fold of one reader ------------------------------------------------------------


def _layer(rw: Any, node: fx.Node) -> _Layer:
    gm = rw.gm
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, nn.Linear):
            return _Layer(m.weight.detach(), 0, False, 1, {}, True)
        transposed = isinstance(m, CONV_TRANSPOSES)
        k = len(m.kernel_size)
        geometry = dict(stride=m.stride, padding=m.padding, dilation=m.dilation)
        if transposed:
            geometry["output_padding"] = m.output_padding
        free = not transposed and (m.padding_mode != "zeros" or _no_padding(m.padding))
        return _Layer(m.weight.detach(), k, transposed, m.groups, geometry, free)
    weight = gm.get_parameter(arg(node, 1, "weight").target) if _is_param(gm, arg(node, 1, "weight").target) \
        else gm.get_buffer(arg(node, 1, "weight").target)
    if node.target is F.linear:
        return _Layer(weight.detach(), 0, False, 1, {}, True)
    k = weight.dim() - 2
    transposed = node.target in CONV_TRANSPOSE_FUNCTIONS
    if transposed:
        names = ("stride", "padding", "output_padding", "groups", "dilation")
        defaults = (1, 0, 0, 1, 1)
    else:
        names = ("stride", "padding", "dilation", "groups")
        defaults = (1, 0, 1, 1)
    values = {n: arg(node, 3 + i, n, d) for i, (n, d) in enumerate(zip(names, defaults))}
    groups = values.pop("groups")
    free = not transposed and _no_padding(values["padding"])
    return _Layer(weight.detach(), k, transposed, groups, values, free)


def _no_padding(padding: Any) -> bool:
    if isinstance(padding, str):
        return padding == "valid"
    return all(p == 0 for p in (padding if isinstance(padding, (tuple, list)) else (padding,)))


def _is_param(gm: nn.Module, name: str) -> bool:
    return name in dict(gm.named_parameters(remove_duplicate=False))


def _constant_per_channel(node: fx.Node, values: torch.Tensor, dim: int) -> torch.Tensor:
    """The one value per removed channel (they must not vary with position or sample)."""
    flat = values.movedim(dim, -1).reshape(-1, values.shape[dim])
    c = flat[0]
    scale = max(1.0, float(c.abs().max())) if c.numel() else 1.0
    if not torch.isfinite(flat).all() or (flat - c).abs().max() > 1e-5 * scale:
        raise RewriteError(
            f"the removed units reach {node.name} with values that vary across positions or samples, "
            "so they cannot be folded into its bias (please report it); rewrite with compensate=False to drop them")
    return c


def _fold(rw: Any, reader: Reader, values: torch.Tensor) -> Fold:
    node = next(n for n in rw.gm.graph.nodes if n.name == reader.node)
    operand = node.args[0]
    layer = _layer(rw, node)
    ndim = len(operand.meta["tensor_meta"].shape)
    in_dim = ndim - 1 if layer.spatial == 0 else ndim - layer.spatial - 1
    c = _constant_per_channel(node, values, in_dim)
    kept = rw.kept.get(rw.key_of(operand, in_dim))
    size = operand.meta["tensor_meta"].shape[in_dim]
    removed = np.setdiff1d(np.arange(size), kept if kept is not None else np.arange(size))
    full = torch.zeros(size, dtype=layer.weight.dtype, device=layer.weight.device)
    full[torch.as_tensor(removed, dtype=torch.long, device=full.device)] = c.to(full)
    out_dim = len(node.meta["tensor_meta"].shape) - (1 if layer.spatial == 0 else layer.spatial + 1)
    if layer.spatial == 0:
        return Fold(node.name, out_dim, bias_delta=layer.weight @ full)
    kernel = _kernel(layer, full)
    if layer.position_free:
        return Fold(node.name, out_dim, bias_delta=kernel.flatten(1).sum(1))
    return Fold(node.name, out_dim, kernel=kernel, geometry=dict(layer.geometry, transposed=layer.transposed,
                                                                spatial=layer.spatial))


def _kernel(layer: _Layer, full: torch.Tensor) -> torch.Tensor:
    """(C_out, *k): what one input position of value ``full[c]`` per channel adds to each output."""
    w, g = layer.weight, layer.groups
    k = w.shape[2:]
    if layer.transposed:  # (C_in, C_out/g, *k)
        grouped = w.reshape(g, w.shape[0] // g, w.shape[1], *k)
        return torch.einsum("gio...,gi->go...", grouped, full.view(g, -1)).reshape(-1, *k)
    grouped = w.reshape(g, w.shape[0] // g, w.shape[1], *k)  # (C_out, C_in/g, *k)
    return torch.einsum("goi...,gi->go...", grouped, full.view(g, -1)).reshape(-1, *k)


# --- applying a fold -------------------------------------------------------------------


def _add_to_bias(gm: fx.GraphModule, node: fx.Node, delta: torch.Tensor) -> None:
    with torch.no_grad():
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if m.bias is None:
                m.bias = nn.Parameter(delta.clone(), requires_grad=m.weight.requires_grad)
            else:
                m.bias.add_(delta.to(m.bias))
            return
        bias = arg(node, 2, "bias")
        if bias is not None:
            tensor = gm.get_parameter(bias.target) if _is_param(gm, bias.target) else gm.get_buffer(bias.target)
            tensor.add_(delta.to(tensor))
            return
        name = _free_name(gm, f"fxprune_bias_{node.name}")
        gm.register_parameter(name, nn.Parameter(delta.clone()))
        with gm.graph.inserting_before(node):
            set_arg(node, 2, "bias", gm.graph.get_attr(name))


def _free_name(gm: nn.Module, base: str) -> str:
    name, n = base, 2
    while hasattr(gm, name):
        name, n = f"{base}_{n}", n + 1
    return name


def _add_ones_map(gm: fx.GraphModule, node: fx.Node, kernel: torch.Tensor, geometry: dict, out_dim: int) -> None:
    """``node + conv(ones, kernel)``: the removed constants' contribution at every output position."""
    geometry = dict(geometry)
    transposed, spatial = geometry.pop("transposed"), geometry.pop("spatial")
    name = _free_name(gm, f"fxprune_compensation_{node.name}")
    weight = kernel.unsqueeze(0) if transposed else kernel.unsqueeze(1)  # (1, C_out, *k) / (C_out, 1, *k)
    gm.register_buffer(name, weight.detach().clone())
    x = node.args[0]
    in_dim = len(x.meta["tensor_meta"].shape) - spatial - 1
    conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1] if transposed \
        else (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    graph = gm.graph
    with graph.inserting_after(node):
        one = graph.call_method("narrow", (x, in_dim, 0, 1))
    with graph.inserting_after(one):
        ones = graph.call_function(torch.ones_like, (one,))
    with graph.inserting_after(ones):
        k = graph.get_attr(name)
    with graph.inserting_after(k):
        comp = graph.call_function(conv, (ones, k), dict(geometry))
    with graph.inserting_after(comp):
        total = graph.call_function(operator.add, (node, comp))
    node.replace_all_uses_with(total, delete_user_cb=lambda user: user is not total)
