"""BEP: Bayesian Early Pruning during training (the ``bep`` method).

- ``bep``: the training-time ``BEPPrepared`` (``prepare``, ``step``, ``fit``, ``finalize``);
- ``options``: the ``BEP`` options and ``final_counts`` (``B_s``, the units each group keeps);
- ``steps``: measure, forecast, decide and rewrite inside a training step;
- ``saliency``: eq. A1 per sample on the instrumentation subset (``accumulate_saliency``);
- ``mogp`` (+ ``saliency_kernel``, gpytorch loaded on first use): the paper's LMC
  multi-output GP that forecasts each unit's saliency at the end of training;
- ``saliency_gp``: bucketing and App. G.3 preprocessing, and ``SaliencyGP``, the earlier
  exact ICM model (constant mean, one shared kernel), kept as a measured baseline;
- ``decision``: Algorithm 2, which units to keep under the dynamic penalty;
- ``plots``: the saliency forecast and unit-count figures (matplotlib, optional).
"""
from __future__ import annotations

from .bep import BEPPrepared
from .options import BEP, final_counts

__all__ = ["BEP", "BEPPrepared", "final_counts"]
