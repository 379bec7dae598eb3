"""Deprecated: moved to :mod:`genailab.foundation.recipes.perturb` (this path is kept for one release)."""

import warnings

from genailab.foundation.recipes.perturb import (
    FORMULATIONS,
    PerturbDeltaConfig,
    PerturbDeltaModel,
    PerturbDeltaNet,
    ResponsePrediction,
)

warnings.warn(
    "genailab.foundation.recipes.perturb_delta is deprecated; import from genailab.foundation.recipes.perturb "
    "(or genailab.foundation.recipes).",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["FORMULATIONS", "PerturbDeltaConfig", "PerturbDeltaModel", "PerturbDeltaNet", "ResponsePrediction"]
