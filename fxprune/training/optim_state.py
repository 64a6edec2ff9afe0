"""Following a physical rewrite during training: which parameter rows a plan keeps, and
the optimizer's state (SGD momentum, Adam ``exp_avg``/``exp_avg_sq``) sliced to match.

``param_cuts(graph, plan)`` lists the ``(dim, kept indices)`` that ``fxprune.rewrite(graph,
plan)`` applies to every parameter; ``sliced_optimizer_state`` computes the optimizer's new
parameter lists and state for the rewritten module without touching the optimizer, and
``apply_optimizer_state`` commits them (so that a failure in between changes nothing).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..errors import InputError, PlanError
from ..graph import ChannelGraph


def param_cuts(graph: ChannelGraph, plan: Mapping[str, list[int]]) -> dict[str, list[tuple[int, np.ndarray]]]:
    """``{parameter/buffer name: [(dim, kept indices)]}``: what ``rewrite(graph, plan)`` slices."""
    removed = graph.removed_labels(dict(plan))
    cuts: dict[tuple[str, int], np.ndarray] = {}
    for gid in plan:
        for key in graph.group(gid).spaces:
            if key[0] == "p" and (key[1], key[2]) not in cuts:
                idx = graph.kept_index(key, removed)
                if idx is not None:
                    cuts[(key[1], key[2])] = idx
    out: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for (name, dim), idx in cuts.items():
        out[name].append((dim, idx))
    return dict(out)


def slice_like(t: torch.Tensor, cuts: list[tuple[int, np.ndarray]]) -> torch.Tensor:
    """A copy of ``t`` keeping the ``cuts`` (``(dim, kept indices)``) of its parameter."""
    for dim, idx in cuts:
        t = t.index_select(dim, torch.as_tensor(idx, dtype=torch.long, device=t.device))
    return t.clone()


def sliced_optimizer_state(optimizer: torch.optim.Optimizer, old: nn.Module, new: nn.Module,
                           cuts: Mapping[str, list[tuple[int, np.ndarray]]]) -> tuple[list[list[nn.Parameter]], dict]:
    """New ``(params per param group, state)`` for ``optimizer`` after ``old`` became ``new``
    (same parameter names): per-parameter tensors shaped like the parameter are sliced
    like it, other entries (``step``) are kept. Computed without touching ``optimizer``."""
    name_of = {id(p): n for n, p in old.named_parameters()}
    new_params = dict(new.named_parameters())
    groups, state = [], {}
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            name = name_of.get(id(p))
            if name is None or name not in new_params:
                raise InputError("bep step: the optimizer holds a parameter that is not in prepared.module; "
                                 "build the optimizer from prepared.module.parameters()")
            q = new_params[name]
            params.append(q)
            if p in optimizer.state:
                entry = {}
                for k, v in optimizer.state[p].items():
                    if isinstance(v, torch.Tensor) and v.shape == p.shape and v.dim() > 0:
                        v = slice_like(v, cuts.get(name, [])).to(q.device)  # sliced where it lives, kept with q
                        if v.shape != q.shape:
                            raise PlanError(f"bep: optimizer state {k} of {name} sliced to {tuple(v.shape)}, "
                                            f"parameter is {tuple(q.shape)}")
                    entry[k] = v
                state[q] = entry
        groups.append(params)
    return groups, state


def apply_optimizer_state(optimizer: torch.optim.Optimizer, groups: list[list[nn.Parameter]], state: dict) -> None:
    for group, params in zip(optimizer.param_groups, groups):
        group["params"] = params
    optimizer.state = defaultdict(dict, state)
