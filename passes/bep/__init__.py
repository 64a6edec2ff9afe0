"""BEP: Bayesian Early Pruning during training (the ``bep`` method).

- ``bep``: the training-time ``BEPPrepared`` (``prepare``, ``step``, ``fit``, ``finalize``);
- ``options``: the ``BEP`` options and ``final_counts`` (``B_s``, the units each group keeps);
- ``steps``: measure, forecast, decide and rewrite inside a training step;
- ``saliency_gp`` (+ ``saliency_kernel``, loaded with gpytorch on first use): the
  multi-output GP that forecasts each unit's saliency at the end of training;
- ``decision``: Algorithm 2, which units to keep under the dynamic penalty;
- ``plots``: the saliency forecast and unit-count figures (matplotlib, optional).
"""
from __future__ import annotations

from .bep import BEPPrepared
from .options import BEP, final_counts

__all__ = ["BEP", "BEPPrepared", "final_counts"]
