"""fxprune's passes, one per file. ``METHODS`` maps ``compile(method=...)`` names to passes."""
from __future__ import annotations

from .actgrad import ActGrad, LayerActGrad
from .analyze import Analyze
from .bep import BEP
from .grasp import GraSP
from .greedy_fs import LayerGreedyFS
from .itpcc import ITPCC
from .magnitude import L1
from .random import LayerRandom, Random
from .rewrite import Rewrite
from .sampling import LayerSampling
from .snip import SNIP
from .submodular import Submodular
from .taylor import Taylor
from .validate import Validate
from .weightnorm import LayerWeightNorm

METHODS = {
    "l1": L1, "random": Random, "taylor": Taylor,
    "submodular": Submodular, "actgrad": ActGrad, "layer_actgrad": LayerActGrad,
    "layer_weightnorm": LayerWeightNorm, "layer_sampling": LayerSampling,
    "layer_greedy_fs": LayerGreedyFS, "layer_random": LayerRandom,
    "itpcc": ITPCC,
    "bep": BEP, "snip": SNIP, "grasp": GraSP,
}

__all__ = ["Analyze", "L1", "Random", "Rewrite", "Taylor", "Validate", "METHODS", "Submodular", "ActGrad",
           "LayerActGrad", "LayerWeightNorm", "LayerSampling", "LayerGreedyFS", "LayerRandom", "ITPCC",
           "BEP", "SNIP", "GraSP"]
