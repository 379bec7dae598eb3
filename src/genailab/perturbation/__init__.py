"""Deprecated: ``genailab.perturbation`` was split by layer (this path is kept for one release).

- pseudo-bulk profiles and baselines: :mod:`genailab.evaluation.pseudobulk`, :mod:`genailab.evaluation.baselines`;
- ``--holdout`` splits and validation conditions: :mod:`genailab.data.perturbation_splits`;
- the ``perturb`` jobs: :mod:`genailab.workflows.perturb`.
"""

import warnings

from genailab.data.counts import log_normalize
from genailab.data.perturbation_splits import carve_validation, holdout_split, parse_holdouts
from genailab.evaluation.baselines import (
    BASELINES,
    AdditiveBaseline,
    ContextMeanBaseline,
    LinearBaseline,
    NoChangeBaseline,
    PerturbationBaseline,
    TrainMeanBaseline,
)
from genailab.evaluation.pseudobulk import PseudoBulk, pseudobulk

warnings.warn(
    "genailab.perturbation is deprecated; use genailab.evaluation (pseudobulk, baselines), "
    "genailab.data (perturbation splits) and genailab.workflows.perturb.",
    DeprecationWarning,
    stacklevel=2,
)

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
