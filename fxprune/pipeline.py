"""Passes and pipelines.

A pass is any callable ``GraphModule -> PassResult`` (torch.fx's
``PassResult(graph_module, modified)``). fxprune's own passes subclass ``Pass``:
a frozen dataclass of options with a ``name`` and a ``run(gm) -> gm``;
``modified`` is derived by comparing the graph code, parameter shapes and
plan before and after, never set by hand. Cross-pass state (inputs, analysis,
plan, timings) lives in ``gm.meta["fxprune"]``.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

from torch import fx
from torch.fx.passes.infra.pass_base import PassResult

from .errors import FxpruneError, InputError, PassError
from .state import State, state_of

Callback = Callable[[str, PassResult, float], None]


def fingerprint(gm: fx.GraphModule) -> str:
    """Digest of what a pass may change: code, parameter/buffer shapes, plan."""
    h = hashlib.sha1(gm.code.encode())
    for name, t in gm.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}".encode())
    state = state_of(gm)
    h.update(repr(sorted((state.plan or {}).items()) if state else None).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Pass:
    """Base class of fxprune passes (subclasses are frozen dataclasses of options)."""

    name: ClassVar[str] = "pass"

    def run(self, gm: fx.GraphModule) -> fx.GraphModule:
        raise NotImplementedError

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        before = fingerprint(gm)
        out = self.run(gm)
        return PassResult(out, fingerprint(out) != before)


def require_state(gm: fx.GraphModule, pass_name: str) -> State:
    state = state_of(gm)
    if state is None:
        raise InputError(f"{pass_name} needs a GraphModule from fxprune.trace (it carries the example inputs)")
    return state


def pass_name(p: Callable) -> str:
    return getattr(p, "name", None) or getattr(p, "__name__", None) or type(p).__name__


class Pipeline:
    """Runs passes in order, timing each and calling ``callback(name, result, seconds)`` after it.

    An fxprune error from a pass propagates with the pass named in its message;
    any other exception becomes ``PassError`` naming the pass and those before it.
    """

    def __init__(self, passes: Sequence[Callable[[fx.GraphModule], PassResult]], callback: Callback | None = None):
        self.passes = tuple(passes)
        self.callback = callback

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        modified, done = False, []
        for p in self.passes:
            name = pass_name(p)
            start = time.perf_counter()
            try:
                result = p(gm)
            except FxpruneError as exc:
                exc.args = (f"[pass {name}] {exc.args[0] if exc.args else exc}",) + tuple(exc.args[1:])
                raise
            except Exception as exc:
                after = f" after {', '.join(done)}" if done else ""
                raise PassError(f"pass {name!r} failed{after}: {type(exc).__name__}: {exc}") from exc
            if not isinstance(result, PassResult):
                raise PassError(f"pass {name!r} returned {type(result).__name__}, expected PassResult")
            seconds = time.perf_counter() - start
            gm, modified = result.graph_module, modified or result.modified
            state = state_of(gm)
            if state is not None:
                state.timings[name] = state.timings.get(name, 0.0) + seconds
            if self.callback is not None:
                try:
                    self.callback(name, result, seconds)
                except Exception as exc:
                    raise PassError(f"the pipeline callback failed after pass {name!r}: {type(exc).__name__}: {exc}") from exc
            done.append(name)
        return PassResult(gm, modified)
