"""``Prepared``: the protocol of a training-time method (``itpcc``, ``bep``) and its registry.

Core: a method subclasses ``Prepared`` and decorates it with ``@register("name")``;
``fxprune.prepare`` and ``fxprune.compile(method=name, train=...)`` find it in ``PREPARED``.
Needs: the ChannelGraph of a traced copy of the model. Guarantees: ``Prepared.module`` is
that copy with the method's learnable gates; the user's model is never modified;
``finalize`` returns a ``fxprune.Result`` (like ``compile``) and can be called once.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from torch import fx

from .modes import modes_of
from .errors import InputError
from .state import state_of
from .training import TrainConfig

PREPARED: dict[str, type["Prepared"]] = {}


def register(name: str) -> Callable[[type["Prepared"]], type["Prepared"]]:
    """Class decorator: ``prepare(..., method=name)`` builds this ``Prepared`` subclass."""
    def deco(cls: type["Prepared"]) -> type["Prepared"]:
        cls.method = name
        PREPARED[name] = cls
        return cls
    return deco



class Prepared:
    """A traced copy of a model with a method's learnable gates; see the module doc.

    Subclasses set ``module`` and implement ``regularizer``, ``parameter_groups``,
    ``fit`` and ``finalize``; ``options_class`` is the method's options dataclass.
    """

    method: ClassVar[str] = ""
    options_class: ClassVar[type] = object

    def __init__(self, graph: Any, options: Any, source: dict | None = None, was_training: bool = False):
        self.graph = graph
        self.options = options
        self.source = dict(source or {})
        self.was_training = was_training
        self.user_modes = modes_of(graph.gm)  # each submodule's mode as the user had it (kept by trace)
        self.example_inputs: tuple[torch.Tensor, ...] = tuple(state_of(graph.gm).example_inputs)
        self.module: fx.GraphModule | None = None
        self.history: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self._finalized = False

    @property
    def finalized(self) -> bool:
        return self._finalized

    def check_open(self, what: str) -> None:
        if self._finalized:
            raise InputError(f"{what}: finalize() was already called on this prepared model; "
                             f"call fxprune.prepare again to start over")

    def regularizer(self) -> torch.Tensor:
        raise NotImplementedError

    def parameter_groups(self, **kwargs: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    def fit(self, config: TrainConfig) -> list[dict[str, Any]]:
        raise NotImplementedError

    def finalize(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "finalized" if self._finalized else "open"
        return f"<{type(self).__name__} method={self.method!r} {state}>"
