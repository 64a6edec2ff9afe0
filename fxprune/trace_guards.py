"""What symbolic tracing would silently lose, found before or while tracing.

* A custom ``torch.autograd.Function``: torch.fx runs its ``forward`` on proxies and
  records the ops inside it, so its ``backward`` is gone (a straight-through
  estimator traces to ``round``: right outputs, zero gradients). The submodule that
  calls it is kept whole (a leaf the analysis does not look into); a call from the
  root's own ``forward`` is refused with a ``TraceError``.
* A parametrized module (``torch.nn.utils.parametrize``: ``parametrizations.weight_norm``,
  ``spectral_norm``, orthogonal ...): its weight is computed from other tensors, so
  slicing the weight is not pruning the module. It is kept whole.
* The old hook-based ``torch.nn.utils.weight_norm`` / ``spectral_norm``: the model
  cannot even be copied; refused with a ``TraceError`` that says how to convert it.
* Module hooks: tracing through a module skips its hooks. A submodule with hooks is
  kept whole (the GraphModule calls it, so they run); hooks on the model itself are
  refused (``LossyCaptureError``).

Kept-whole modules carry ``node.meta["fxprune_kept_whole"]`` (the reason), which the
analysis reports as a barrier (or raises ``UnsupportedOpError`` in strict mode).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from .errors import LossyCaptureError, TraceError

KEPT_WHOLE = "fxprune_kept_whole"
_HARMLESS_FUNCTION_MODULES = ("torch.utils.checkpoint",)  # recomputation only: nothing is lost


def private_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules whose parameters and buffers are views of ``model``'s (new
    tensor objects on the same storage: no weight is copied, and gradients, ``requires_grad`` and
    attributes set on the copy stay on the copy), or a TraceError saying why there is none.
    fxprune never writes into these tensors (a pass that trains copies them first)."""
    for name, module in model.named_modules():
        hook = _weight_hook(module)
        if hook is not None:
            raise TraceError(_hook_message(model, name or "(the model)", hook))
    memo: dict[int, Any] = {}
    for module in model.modules():
        for tensor in [*module._parameters.values(), *module._buffers.values()]:
            if tensor is not None and id(tensor) not in memo:
                memo[id(tensor)] = _view_of(tensor)
    try:
        return copy.deepcopy(model, memo)
    except Exception as exc:  # deepcopy fails on non-leaf tensor attributes, locks, open files ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TraceError(f"cannot copy {type(model).__name__} (fxprune prunes a copy, never your model): "
                         f"{first}") from exc


def _view_of(tensor: torch.Tensor) -> torch.Tensor:
    """A new tensor object on ``tensor``'s storage (a Parameter where it is one)."""
    view = tensor.detach()
    return nn.Parameter(view, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else view


def _weight_hook(module: nn.Module) -> str | None:
    """The name of an old hook-based weight reparametrization on ``module``, if any."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm):
            return "weight_norm"
        if isinstance(hook, SpectralNorm):
            return "spectral_norm"
    return None


def _hook_message(model: nn.Module, name: str, hook: str) -> str:
    return (f"{type(model).__name__}: module {name} uses the hook-based torch.nn.utils.{hook}, which fxprune "
            f"cannot prune through (the weight is recomputed by a hook on every call). Remove it before "
            f"pruning (torch.nn.utils.remove_{hook}(module)), or use torch.nn.utils.parametrizations.{hook}, "
            f"whose modules fxprune keeps whole.")


def parametrized_modules(model: nn.Module) -> dict[str, str]:
    """``{qualified name: reason}`` for every parametrized submodule (to be kept whole)."""
    kept = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            what = ", ".join(f"{tensor} ({', '.join(type(p).__name__ for p in plist)})"
                             for tensor, plist in module.parametrizations.items())
            kept[name] = (f"module {name} is parametrized: {what}; fxprune keeps it whole "
                          "(remove the parametrization with torch.nn.utils.parametrize.remove_parametrizations "
                          "to prune it)")
    if "" in kept:
        raise TraceError(f"{type(model).__name__}: the model's own tensors are parametrized; fxprune can only keep "
                         "parametrized submodules whole. Move them into a submodule or remove the parametrization.")
    return kept


_HOOK_KINDS = {"_forward_pre_hooks": "forward pre-hooks", "_forward_hooks": "forward hooks",
               "_backward_pre_hooks": "backward pre-hooks", "_backward_hooks": "backward hooks"}


def hooked_modules(model: nn.Module) -> dict[str, str]:
    """``{qualified name: reason}`` for every submodule with hooks (kept whole, so that the
    GraphModule calls it and its hooks run: tracing through a module skips its hooks)."""
    kept = {}
    for name, module in model.named_modules():
        kinds = [what for attr, what in _HOOK_KINDS.items() if getattr(module, attr, None)]
        if kinds and name:
            kept[name] = f"module {name} has {' and '.join(kinds)}; fxprune keeps it whole so that they still run"
        elif kinds:
            raise LossyCaptureError(
                f"{type(model).__name__} itself has {' and '.join(kinds)}, which a traced graph does not run. "
                "Remove them before pruning (and add them to the pruned module), or wrap the model in a module "
                "without hooks; hooks on submodules are fine (fxprune keeps those submodules whole).")
    return kept


@contextlib.contextmanager
def custom_function_calls(tracer: fx.Tracer | None = None) -> Iterator[list[tuple[type, str]]]:
    """Record ``(Function subclass, calling module path)`` for each custom autograd Function applied
    while the block runs: to traced values of ``tracer`` (symbolic tracing), or, without a tracer
    (``torch.export``, which runs the model), to anything (the path is then unknown: "?")."""
    calls: list[tuple[type, str]] = []
    original = torch.autograd.Function.__dict__["apply"]  # a classmethod (in C on recent torch)

    def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
        if not cls.__module__.startswith(_HARMLESS_FUNCTION_MODULES):
            if tracer is None:  # torch.export runs torch's own Functions too: only the model's are recorded
                if not cls.__module__.startswith("torch."):
                    calls.append((cls, "?"))
            elif _has_proxy((args, kwargs)):
                calls.append((cls, tracer.scope.module_path))
        return original.__get__(None, cls)(*args, **kwargs)

    torch.autograd.Function.apply = classmethod(apply)
    try:
        yield calls
    finally:
        torch.autograd.Function.apply = original


def _has_proxy(value: Any) -> bool:
    found = []
    fx.node.map_aggregate(value, lambda v: found.append(v) if isinstance(v, fx.Proxy) else None)
    return bool(found)


def function_callers(model: nn.Module, calls: list[tuple[type, str]]) -> dict[str, str]:
    """``{calling module: reason}`` for recorded custom Function calls; a call from the root is a TraceError."""
    kept: dict[str, str] = {}
    for cls, path in calls:
        name = f"{cls.__module__}.{cls.__qualname__}"
        if not path:
            raise LossyCaptureError(
                f"{type(model).__name__}.forward calls the custom autograd Function {name}: torch.fx would trace "
                f"through its forward and drop its backward (zero or wrong gradients). Move the call into a "
                f"submodule; fxprune then keeps that submodule whole (or list it in leaf_modules=).")
        kept.setdefault(path, f"module {path} calls the custom autograd Function {name}; fxprune keeps it whole "
                              "so that its backward survives")
    return kept


def refuse_exported_functions(model: nn.Module, calls: list[tuple[type, str]]) -> None:
    """torch.export inlines a custom autograd Function's forward too: refuse, naming the fix."""
    if calls:
        names = sorted({f"{cls.__module__}.{cls.__qualname__}" for cls, _ in calls})
        raise LossyCaptureError(
            f"{type(model).__name__} calls the custom autograd Function(s) {', '.join(names)}: torch.export would "
            "record their forward and drop their backward. Call them from a submodule and use capture='fx', "
            "which keeps that submodule whole.")


def mark_kept_whole(gm: fx.GraphModule, kept: dict[str, str]) -> None:
    """Attach each kept-whole module's reason to the nodes that call it."""
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in kept:
            node.meta[KEPT_WHOLE] = kept[node.target]
