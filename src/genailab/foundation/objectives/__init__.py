"""Objectives: losses as pure functions plus the structured :class:`LossOutput`, and uncertainty calibration."""

from genailab.foundation.objectives.distillation import (
    FeatureProjection,
    feature_matching_loss,
    output_matching_loss,
)
from genailab.foundation.objectives.losses import LossOutput, gaussian_kl, linear_warmup
from genailab.foundation.objectives.uncertainty import (
    LEVELS,
    ConformalCalibrator,
    auroc,
    calibration_curve,
    gaussian_crps,
    interval_coverage,
    regression_ece,
    risk_coverage,
    spearman,
)

__all__ = [
    "LEVELS",
    "ConformalCalibrator",
    "FeatureProjection",
    "LossOutput",
    "auroc",
    "calibration_curve",
    "feature_matching_loss",
    "gaussian_crps",
    "gaussian_kl",
    "interval_coverage",
    "linear_warmup",
    "output_matching_loss",
    "regression_ece",
    "risk_coverage",
    "spearman",
]
