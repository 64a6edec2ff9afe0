"""A module's tensors: replaced, shared, owned.

The rewrite works on a copy of the analysed GraphModule's modules whose tensors are the
analysed model's own objects (``copy_structure``: no weight is copied); it replaces the
tensors it slices (``set_tensor``) and copies the rest once afterwards (``own_tensors``).
Nothing here writes into a tensor.
"""
from __future__ import annotations

import copy

import torch
from torch import fx, nn


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); the CPU for a module without tensors."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def set_tensor(owner: nn.Module, attr: str, old: torch.Tensor, new: torch.Tensor,
               share: bool = False) -> torch.Tensor:
    """Put ``new`` on ``owner`` (wrapped as a Parameter where ``old`` was one, unless ``share``)."""
    if isinstance(old, nn.Parameter):
        new = new if share and isinstance(new, nn.Parameter) else nn.Parameter(new, requires_grad=old.requires_grad)
        setattr(owner, attr, new)
    elif attr in owner._buffers:
        owner._buffers[attr] = new
    else:
        setattr(owner, attr, new)
    return new


def copy_structure(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm``'s modules, graph and metadata whose parameters and buffers are ``gm``'s own
    tensor objects (no weight is copied); replace them (``set_tensor``) or ``own_tensors`` before
    changing any in place. Without the cross-pass state."""
    shared = {id(t): t for m in gm.modules() for t in [*m._parameters.values(), *m._buffers.values()]
              if t is not None}
    state = gm.meta.pop("fxprune", None)
    try:
        return copy.deepcopy(gm, memo=dict(shared))
    finally:
        if state is not None:
            gm.meta["fxprune"] = state


def own_tensors(gm: nn.Module, borrowed: set[int]) -> None:
    """Give ``gm`` its own copy of every parameter and buffer whose ``id`` is in ``borrowed`` (shared
    with ``copy_structure``'s source or the user's model); ties within ``gm`` stay ties."""
    copies: dict[int, torch.Tensor] = {}
    for owner in gm.modules():
        for attr, tensor in [*owner._parameters.items(), *owner._buffers.items()]:
            if tensor is None or id(tensor) not in borrowed:
                continue
            if id(tensor) not in copies:
                copies[id(tensor)] = _fresh_copy(tensor)
            (owner._parameters if attr in owner._parameters else owner._buffers)[attr] = copies[id(tensor)]


def _fresh_copy(tensor: torch.Tensor) -> torch.Tensor:
    data = tensor.detach().clone()
    return nn.Parameter(data, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else data
