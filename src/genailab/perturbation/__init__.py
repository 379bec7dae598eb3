"""Perturbation-response data and baselines.

- :mod:`genailab.perturbation.pseudobulk`: mean log-normalised profiles per (condition, context) and their
  deltas from control.
- :mod:`genailab.perturbation.baselines`: simple baselines registered by name in :data:`BASELINES`.
- :mod:`genailab.perturbation.splits`: ``--holdout P`` / ``P@C`` splits and validation conditions.
- :mod:`genailab.perturbation.workflows`: ``genailab perturb train | predict | evaluate``.
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
from genailab.perturbation.splits import carve_validation, holdout_split, parse_holdouts

__all__ = [
    "BASELINES",
    "AdditiveBaseline",
    "ContextMeanBaseline",
    "LinearBaseline",
    "NoChangeBaseline",
    "PerturbationBaseline",
    "PseudoBulk",
    "TrainMeanBaseline",
    "carve_validation",
    "holdout_split",
    "log_normalize",
    "parse_holdouts",
    "pseudobulk",
]
