"""Submodular pruning (El Halabi et al., ICLR 2022) and the layer-wise framework it shares.

- ``submodular``: the ``Submodular`` pass (greedy reweighted-input-change selection);
- ``greedy``: Gram-space greedy and Stochastic-Greedy, the least-squares weights;
- ``features``: the streamed Grams of a group's readers (``GroupProblem``);
- ``stepper``: the node-by-node executor of the sequential variants;
- ``layerwise``: the layer-wise framework (``LayerwisePass``) that the paper's baselines
  (actgrad, greedy_fs, random, sampling, weightnorm) subclass too;
- ``layer_budget``: per-layer budgets from accuracy curves or global scores;
- ``calibration``: calibration batches checked against the example inputs.
"""
from __future__ import annotations

from .greedy import Selection, gram_selection, least_squares_weights, reweighted_selection
from .submodular import Submodular

__all__ = ["Submodular", "Selection", "gram_selection", "least_squares_weights", "reweighted_selection"]
