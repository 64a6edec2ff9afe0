"""fxprune's passes, one per file. ``METHODS`` maps ``compile(method=...)`` names to passes."""
from __future__ import annotations

from .analyze import Analyze
from .magnitude import L1
from .random import Random
from .rewrite import Rewrite
from .taylor import Taylor
from .validate import Validate

METHODS = {"l1": L1, "random": Random, "taylor": Taylor}

__all__ = ["Analyze", "L1", "Random", "Rewrite", "Taylor", "Validate", "METHODS"]
