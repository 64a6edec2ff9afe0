"""ITPCC: training-time pruning with channel gates under a compute constraint.

- ``itpcc``: the ``ITPCC`` pass and its ``Prepared`` (gated training, then fold and rewrite);
- ``gates``: the gates inserted in front of a group's readers and folded into them afterwards;
- ``control``: the target cost and the controller of the penalty weight ``gamma``.
"""
from __future__ import annotations

from .itpcc import ITPCC

__all__ = ["ITPCC"]
