"""Objectives: losses as pure functions plus the structured :class:`LossOutput`."""

from genailab.foundation.objectives.losses import LossOutput, gaussian_kl, linear_warmup

__all__ = ["LossOutput", "gaussian_kl", "linear_warmup"]
