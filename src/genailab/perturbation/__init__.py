"""Perturbation-response data and baselines.

- :mod:`genailab.perturbation.pseudobulk`: mean log-normalised profiles per (condition, context) and their
  deltas from control.
- :mod:`genailab.perturbation.baselines`: simple baselines registered by name in :data:`BASELINES`.
"""

from genailab.perturbation.baselines import (
    BASELINES,
    AdditiveBaseline,
    ContextMeanBaseline,
    LinearBaseline,
    NoChangeBaseline,
    PerturbationBaseline,
    TrainMeanBaseline,
)
from genailab.perturbation.pseudobulk import PseudoBulk, log_normalize, pseudobulk

__all__ = [
    "BASELINES",
    "AdditiveBaseline",
    "ContextMeanBaseline",
    "LinearBaseline",
    "NoChangeBaseline",
    "PerturbationBaseline",
    "PseudoBulk",
    "TrainMeanBaseline",
    "log_normalize",
    "pseudobulk",
]
