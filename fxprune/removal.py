"""What a removed unit leaves behind: the values its elements hold when its produce slices are zeroed.

Needs: a ``ChannelGraph`` (groups built). Guarantees: for every prunable group
without normalisation members, a ``GroupRemoval`` that says, node by node, what
the elements of a removed unit hold in the reference model (the original with
the removed units' ``produce`` slices zeroed):

- ``ZERO``: exactly zero (the producers: conv/linear rows, affine norms ...);
- ``CONST``: one value per unit, the same at every position and for every input
  (``sigmoid(0)``, ``x + 1``, ``exp`` ...): the rewrite folds it into the reader's
  bias (``fxprune.compensate``);
- ``VARYING``: independent of the inputs but different from position to position
  (a bias along another dim, ``x + table`` with a broadcast table, constant padding);
- ``VAR``: a value that depends on the inputs (``x + y`` where ``y`` is broadcast
  over the channels). Dropping either cannot be exact.

A group is exactly removable when every *reader* (an op that sums the group's
elements away: conv/linear input channels, matmul contractions, ``sum``) sees
``ZERO``, or ``CONST`` at a conv/linear whose bias can absorb it. Otherwise
``problem`` says why and the analysis makes the group a barrier.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from .rules.base import RULES
from .rules.context import tensor_aliases, tensor_meta_shapes
from .rules.norm import channel_dim

ZERO, CONST, VARYING, VAR = 0, 1, 2, 3
STATE_NAMES = ("zero", "constant", "position-dependent", "input-dependent")

PASS_THROUGH = {"pass", "cast", "reshape", "permute", "cat", "stack", "split", "unbind", "getitem", "expand", "repeat",
                "roll", "relative_position_bias", "prelu"}
PRODUCT_LIKE = {"product", "matmul", "einsum"}
PRODUCERS = {"conv", "linear", "batchnorm", "groupnorm", "multihead_attention", "window_attention"}
READERS = {"conv", "linear", "matmul", "einsum", "sdpa", "reduce", "multihead_attention", "window_attention"}
CONSTANT_AT_ZERO = {"constant", "softmax"}  # f(0) may be a non-zero constant
NORMALISATIONS = {"batchnorm", "layernorm", "groupnorm"}  # over dims other than the group's
PADDING_OPS = {"pad", "patch_merging"}
AFFINE_LAYERS = {"conv", "linear"}  # a product of their operands, plus a bias
NON_ZERO_REDUCTIONS = {"logsumexp", torch.logsumexp}


@dataclass(frozen=True)
class Reader:
    """A node that sums a group's elements away, and what the removed ones hold there."""

    node: str
    operand: str
    state: int
    foldable: bool  # a conv/linear with a parameter weight: CONST can go into its bias


@dataclass
class GroupRemoval:
    """Removal semantics of one group (see module doc)."""

    states: dict[str, int] = field(default_factory=dict)
    origins: list[str] = field(default_factory=list)
    readers: list[Reader] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    problem: str | None = None

    @property
    def compensated(self) -> list[Reader]:
        return [r for r in self.readers if r.state == CONST]


def removal_semantics(graph: Any) -> dict[str, GroupRemoval]:
    """``GroupRemoval`` of every prunable group without normalisation members."""
    gm = graph.gm
    modules = dict(gm.named_modules())
    independent = _input_independent(gm)
    index = _NodeIndex(gm)
    out = {}
    for group in graph.prunable_groups:
        if not group.has_norm:
            out[group.id] = _GroupWalk(graph, group, modules, independent, index).run()
    return out


class _NodeIndex:
    """Nodes by name, get_attr nodes by target, and graph positions."""

    def __init__(self, gm: fx.GraphModule):
        nodes = list(gm.graph.nodes)
        self.by_name = {n.name: n for n in nodes}
        self.position = {n: i for i, n in enumerate(nodes)}
        self.attrs: dict[str, list[fx.Node]] = {}
        self.aliases = tensor_aliases(gm)
        for n in nodes:
            if n.op == "get_attr":
                self.attrs.setdefault(n.target, []).append(n)


def _input_independent(gm: fx.GraphModule) -> dict[str, bool]:
    """Per node: True when its value cannot depend on the model's inputs."""
    out: dict[str, bool] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            out[node.name] = True
        elif node.op.startswith("call_"):
            inputs = node.all_input_nodes
            out[node.name] = bool(inputs) and all(out.get(n.name, False) for n in inputs)
        else:
            out[node.name] = False
    return out


class _GroupWalk:
    """Propagates the state of one group's removed elements through the graph in order."""

    def __init__(self, graph: Any, group: Any, modules: dict, independent: dict[str, bool], index: _NodeIndex):
        self.graph, self.group, self.modules, self.independent = graph, group, modules, independent
        self.index = index
        self.carried_nodes = {k[1] for k in group.spaces if k[0] == "n"}
        self.carried_params = {k[1]: k for k in group.spaces if k[0] == "p"}
        self.spaces = set(group.spaces)
        self.aliases = index.aliases
        self.result = GroupRemoval()

    def carries(self, node: fx.Node) -> bool:
        if node.op == "get_attr":
            return self.canonical_param(node.target) in self.carried_params
        return node.name in self.carried_nodes

    def _module_tensors(self, node: fx.Node) -> set[str]:
        """Canonical names of a module node's parameters and buffers."""
        m = self.modules[node.target]
        names = [n for n, _ in [*m.named_parameters(remove_duplicate=False), *m.named_buffers(remove_duplicate=False)]]
        return {self.canonical_param(f"{node.target}.{n}") for n in names}

    def _module_produces(self, node: fx.Node) -> bool:
        return any(self.graph.roles.get(self.carried_params[n]) == "produce"
                   for n in self._module_tensors(node) if n in self.carried_params)

    def run(self) -> GroupRemoval:
        for node in self._relevant_nodes():
            if node.op == "get_attr" and self.carries(node):
                self._set(node, self._parameter_state(node), "")
            elif node.op.startswith("call_"):
                self._visit(node)
        return self.result

    def _relevant_nodes(self) -> list[fx.Node]:
        """The nodes that carry the group and their users, in graph order."""
        carrying = [self.index.by_name[name] for name in self.carried_nodes if name in self.index.by_name]
        carrying += [n for target, nodes in self.index.attrs.items() if self.canonical_param(target) in self.carried_params
                     for n in nodes]
        relevant = set(carrying) | {user for n in carrying for user in n.users}
        return sorted(relevant, key=self.index.position.__getitem__)

    def _parameter_state(self, node: fx.Node) -> int:
        """ZERO where its removed slices are zeroed (produce); else CONST if it is one value per unit."""
        target = self.canonical_param(node.target)
        if self._param_role(target) == "produce":
            return ZERO
        own = {k[2] for k in self.group.spaces if k[0] == "p" and k[1] == target}
        shape = tensor_meta_shapes(node)
        return CONST if isinstance(shape, tuple) and all(n == 1 or d in own for d, n in enumerate(shape)) else VARYING

    def _outside(self, node: fx.Node) -> int:
        """What an operand that does not carry the group brings to a removed unit's elements."""
        if not self.independent[node.name]:
            return VAR
        shape = tensor_meta_shapes(node)
        return CONST if not isinstance(shape, tuple) or all(n == 1 for n in shape) else VARYING

    def _param_role(self, name: str) -> str | None:
        return next((self.graph.roles.get(k) for k in self.group.spaces if k[0] == "p" and k[1] == name), None)

    def _set(self, node: fx.Node, state: int, why: str) -> None:
        self.result.states[node.name] = state
        if why:
            self.result.reasons[node.name] = why

    def _visit(self, node: fx.Node) -> None:
        operands = [n for n in node.all_input_nodes if self.carries(n)]
        carried = self.carries(node)
        if not operands and not carried:
            return
        rule = RULES.lookup(node, self.modules)
        name = (rule.removal or rule.name) if rule is not None else None
        if carried:
            state, why = self._transfer(node, name, operands)
            self._set(node, state, why)
        elif name in READERS:
            self._read(node, name, operands)
        elif rule is not None and rule.removal is not None:  # a rule from outside: zero or nothing
            self._read(node, rule.name, operands)

    # --- transfer ---------------------------------------------------------------------
    def _transfer(self, node: fx.Node, name: str | None, operands: list[fx.Node]) -> tuple[int, str]:
        if name in PRODUCERS and self._produces(node, name):
            self.result.origins.append(node.name)
            return ZERO, ""
        if not operands:  # the units appear here, computed from tensors outside the group
            if self.independent[node.name]:
                return VARYING, f"{node.name}: {_what(node)} makes the units from constants"
            return VAR, f"{node.name}: {_what(node)} makes the units from input-dependent values"
        worst = max(self.result.states.get(n.name, VAR) for n in operands)
        if name == "elementwise":
            return self._elementwise(node)
        if name in PADDING_OPS:
            return self._pad(node, name, worst)
        if name == "spatial":
            return (VARYING if worst == CONST and _pads(node, self.modules) else worst), ""
        if name == "reduce" and node.target in NON_ZERO_REDUCTIONS:
            return max(CONST, worst), ""
        if name in PASS_THROUGH or name == "reduce":
            return worst, ""
        if name in CONSTANT_AT_ZERO:
            return max(CONST, worst), ""
        if name in PRODUCT_LIKE or name == "sdpa":
            return self._product(node, operands)
        if name in AFFINE_LAYERS:  # the units ride on a dim the layer does not contract (batch, weight rows)
            state, why = self._product(node, operands)
            if state == ZERO and _has_bias(node, self.modules) and not self._bias_carried(node):
                return VARYING, f"{node.name}: its bias is added to the removed units"
            return state, why
        if name in NORMALISATIONS:  # not over the group's dim (that would make it a norm member)
            return self._normalisation(node, name, worst)
        return VAR, f"{node.name}: fxprune does not know what {name or 'this op'} computes from a removed unit"

    def _produces(self, node: fx.Node, name: str) -> bool:
        """Whether the removed units' produce slices of this node zero its output units."""
        if node.op == "call_module":
            if name in ("batchnorm", "groupnorm") and getattr(self.modules[node.target], "weight", None) is None:
                return False
            return self._module_produces(node)
        weights = [a for a in _weight_args(node, name) if isinstance(a, fx.Node)]
        return any(w.op == "get_attr" and self._param_role(self.canonical_param(w.target)) == "produce"
                   for w in weights)

    def _owns_produce(self, node: fx.Node) -> bool:
        """Whether a produce slice of this group is a parameter of ``node`` (its module's or a get_attr operand)."""
        if node.op == "call_module":
            return self._module_produces(node)
        return any(n.op == "get_attr" and self._param_role(self.canonical_param(n.target)) == "produce"
                   for n in node.all_input_nodes if self.carries(n))

    def _bias_carried(self, node: fx.Node) -> bool:
        """Whether the layer's bias is one of the group's produce slices (zeroed with the units)."""
        from .rules.base import arg

        if node.op == "call_module":
            return getattr(self.modules[node.target], "bias", None) is not None and \
                self.canonical_param(f"{node.target}.bias") in self.carried_params
        bias = arg(node, 2, "bias")
        return isinstance(bias, fx.Node) and self.carries(bias) and self.result.states.get(bias.name) == ZERO

    def canonical_param(self, name: str) -> str:
        return self.aliases.get(name, name)

    def _normalisation(self, node: fx.Node, name: str, worst: int) -> tuple[int, str]:
        """A norm whose statistics do not run over the group's dim (else it would be a norm member)."""
        if worst == VAR:
            return VAR, ""
        if name in ("batchnorm", "groupnorm") and self._on_channel_dim(node):
            return worst, ""  # per-channel statistics of the group's own channels: a per-unit scale
        if name == "batchnorm":  # running statistics of other channels: (0 - mean) / std differs per channel
            return VARYING, f"{node.name}: its running statistics shift the removed units"
        weight, bias = _affine(node, self.modules)
        rms = node.target is getattr(F, "rms_norm", None) or type(self.modules.get(node.target)).__name__ == "RMSNorm"
        if bias or (rms and weight and worst == CONST):  # a unit constant over the normalised dims -> 0 (or +-1)
            return VARYING, f"{node.name}: {_what(node)} adds its affine parameters to the removed units"
        return (worst if rms else ZERO), ""

    def _on_channel_dim(self, node: fx.Node) -> bool:
        """Whether the group's units are this per-channel norm's channels (dim 1, or 0 when unbatched)."""
        shape = tensor_meta_shapes(node)
        if not isinstance(shape, tuple) or not shape:
            return False
        module = self.modules.get(node.target) if node.op == "call_module" else None
        return ("n", node.name, -1, channel_dim(shape, module)) in self.spaces

    def _product(self, node: fx.Node, operands: list[fx.Node]) -> tuple[int, str]:
        """Matmul-like: zero if a factor is; otherwise as varied as the factors (contractions mix positions)."""
        states = [self.result.states.get(n.name, VAR) for n in operands]
        if ZERO in states:
            return ZERO, ""
        outside = [self._outside(n) for n in node.all_input_nodes if not self.carries(n)]
        worst = max(states + outside)
        if worst == VAR:
            return VAR, f"{node.name}: a product of removed values with the inputs"
        return worst, ""

    def _pad(self, node: fx.Node, name: str, state: int) -> tuple[int, str]:
        """Padding adds border positions: a constant unit is no longer one value everywhere."""
        if state == CONST:
            return VARYING, f"{node.name}: padding adds border positions with other values"
        if name == "patch_merging" or state != ZERO:
            return state, ""
        if node.op == "call_module":
            value = getattr(self.modules[node.target], "value", 0.0)
        else:
            mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
            value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None) if mode == "constant" else 0
        return (VARYING, f"{node.name}: constant padding with {value}") if value else (ZERO, "")

    def _elementwise(self, node: fx.Node) -> tuple[int, str]:
        """Evaluate the op on zeros for the removed elements and random values for the rest."""
        states = {n.name: self.result.states.get(n.name, VAR) for n in node.all_input_nodes if self.carries(n)}
        others = [n for n in node.all_input_nodes if not self.carries(n)]
        results = [_evaluate(node, self.modules, states, seed) for seed in (0, 1)]
        worst = max(list(states.values()) + [self._outside(n) for n in others])
        if any(r is None for r in results):
            return (max(worst, CONST), "") if worst < VAR else (VAR, f"{node.name}: cannot evaluate {_what(node)}")
        if any(not torch.isfinite(r).all() for r in results):
            return VAR, f"{node.name}: {_what(node)} of a removed (zero) unit is not finite"
        if all(bool((r == 0).all()) for r in results):
            return ZERO, ""
        if worst == VAR:
            return VAR, f"{node.name}: {_what(node)} adds input-dependent values to the removed units"
        if worst == VARYING:
            return VARYING, f"{node.name}: {_what(node)} adds values that differ from position to position"
        return CONST, ""

    # --- readers ----------------------------------------------------------------------
    def _read(self, node: fx.Node, name: str, operands: list[fx.Node]) -> None:
        """A node that sums the group away: fine when a factor is ZERO, or a CONST its bias absorbs."""
        states = {n.name: self.result.states.get(n.name, VAR) for n in operands}
        if self._owns_produce(node):  # e.g. attention heads: their q/k/v rows are zeroed inside the op
            self.result.readers.append(Reader(node.name, operands[0].name, ZERO, False))
            return
        factors = name in PRODUCT_LIKE | {"sdpa", "conv", "linear"}
        if ZERO in states.values() and (factors or set(states.values()) == {ZERO}):
            self.result.readers.append(Reader(node.name, operands[0].name, ZERO, False))
            return
        data = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else operands[0]
        data = data if data in operands else operands[0]
        state = states[data.name] if all(n is data or n.op == "get_attr" for n in operands) else VAR
        foldable = state == CONST and _foldable_reader(node, name, data)
        self.result.readers.append(Reader(node.name, data.name, state, foldable))
        if not foldable and self.result.problem is None:
            cause = self.result.reasons.get(data.name) or _cause(self.result, data)
            self.result.problem = (f"removed units would reach {node.name} ({name}) holding "
                                   f"{STATE_NAMES[max(state, CONST)]} values{'; ' + cause if cause else ''}")


def _cause(result: GroupRemoval, node: fx.Node, depth: int = 0) -> str:
    """The first recorded reason upstream of ``node`` (for the report)."""
    if depth > 50:
        return ""
    for n in node.all_input_nodes:
        if n.name in result.reasons:
            return result.reasons[n.name]
        found = _cause(result, n, depth + 1) if n.name in result.states else ""
        if found:
            return found
    return ""


def _pads(node: fx.Node, modules: dict) -> bool:
    """Whether a pooling op averages over zero padding (its border outputs differ)."""
    from .rules.base import arg

    if node.op == "call_module":
        m = modules[node.target]
        padding, include = getattr(m, "padding", 0), getattr(m, "count_include_pad", False)
    else:
        padding, include = arg(node, 3, "padding", 0), arg(node, 5, "count_include_pad", True)
        include = include and "avg" in _what(node)
    values = padding if isinstance(padding, (tuple, list)) else (padding,)
    return bool(include) and any(v != 0 for v in values if isinstance(v, int))


def _affine(node: fx.Node, modules: dict) -> tuple[bool, bool]:
    """(has a weight, has a bias) of a normalisation node."""
    from .rules.base import arg

    if node.op == "call_module":
        m = modules[node.target]
        return getattr(m, "weight", None) is not None, getattr(m, "bias", None) is not None
    if node.target is getattr(F, "rms_norm", None):
        return arg(node, 2, "weight") is not None, False
    if node.target is F.batch_norm or node.target is F.instance_norm:
        return arg(node, 3, "weight") is not None, arg(node, 4, "bias") is not None
    return arg(node, 2, "weight") is not None, arg(node, 3, "bias") is not None


def _has_bias(node: fx.Node, modules: dict) -> bool:
    from .rules.base import arg

    if node.op == "call_module":
        return getattr(modules[node.target], "bias", None) is not None
    return arg(node, 2, "bias") is not None


def _weight_args(node: fx.Node, name: str) -> list[Any]:
    from .rules.base import arg

    if name in ("conv", "linear"):
        return [arg(node, 1, "weight")]
    if name == "batchnorm":
        return [arg(node, 3, "weight")]
    if name == "groupnorm":
        return [arg(node, 2, "weight")]
    if name == "window_attention":
        return [arg(node, 2, "proj_weight")]
    return []


def _foldable_reader(node: fx.Node, name: str, operand: fx.Node) -> bool:
    """A conv/linear whose input is ``operand`` and whose weight is a parameter."""
    from .rules.base import arg

    if name not in ("conv", "linear") or node.args[0] is not operand:
        return False
    if node.op == "call_module":
        return True
    weight, bias = arg(node, 1, "weight"), arg(node, 2, "bias")
    return isinstance(weight, fx.Node) and weight.op == "get_attr" and (
        bias is None or isinstance(bias, fx.Node) and bias.op == "get_attr")


def _what(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _stand_in(node: fx.Node, value: str, seed: int) -> torch.Tensor | int:
    """A small tensor standing for ``node``: zeros, or random values of its dtype and rank."""
    shapes = tensor_meta_shapes(node)
    if not isinstance(shapes, tuple):
        return 2 + seed  # a size or other integer read from a tensor
    meta = node.meta["tensor_meta"]
    shape = [1] * len(shapes)
    if value == "zero":
        return torch.zeros(shape, dtype=meta.dtype)
    gen = torch.Generator().manual_seed(1234 + seed)
    if meta.dtype == torch.bool:  # True once, False once: "zero either way" means zero for any value
        return torch.full(shape, seed == 0)
    if not meta.dtype.is_floating_point:
        return torch.randint(1, 5, shape, generator=gen, dtype=meta.dtype)
    return (torch.rand(shape, generator=gen) + 0.5).to(meta.dtype) * (1 if seed else -1)


def _evaluate(node: fx.Node, modules: dict, states: dict[str, int], seed: int) -> torch.Tensor | None:
    """The op of ``node`` on stand-ins (zeros for carried ZERO operands), or None if it cannot run."""

    def stand_in(n: fx.Node) -> Any:
        return _stand_in(n, "zero" if states.get(n.name) == ZERO else "random", seed)

    args = fx.node.map_arg(node.args, stand_in)
    kwargs = fx.node.map_arg(node.kwargs, stand_in)
    if node.op == "call_module":  # the module's own tensors decide where its stand-ins go
        device = next((t.device for t in modules[node.target].parameters()), torch.device("cpu"))
        args, kwargs = fx.node.map_aggregate((args, kwargs), lambda v: v.to(device) if torch.is_tensor(v) else v)
    try:
        with torch.no_grad():
            if node.op == "call_module":
                out = modules[node.target](*args, **kwargs)
            elif node.op == "call_method":
                self_arg, *rest = args
                out = getattr(self_arg, node.target)(*rest, **kwargs)
            else:
                out = node.target(*args, **kwargs)
    except Exception:  # an op that needs real shapes/values: judged conservatively by the caller
        return None
    if isinstance(out, bool) or isinstance(out, (int, float)):
        out = torch.tensor(float(out))
    return out.detach().float() if isinstance(out, torch.Tensor) else None


__all__ = ["CONST", "VAR", "ZERO", "GroupRemoval", "Reader", "removal_semantics"]
