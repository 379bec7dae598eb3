"""Loss terms (no parameters) and the structure every ``training_step`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["LossOutput", "gaussian_kl", "linear_warmup"]


@dataclass
class LossOutput:
    """What a recipe's ``training_step`` returns.

    Attributes
    ----------
    loss
        Scalar tensor to back-propagate (mean over the batch).
    terms
        Named scalar loss components (already batch-averaged), e.g. ``{"nll": ..., "kl": ...}``.
    metrics
        Extra scalars to log that are not part of the loss (e.g. the KL weight).
    n_obs
        Number of cells the loss averages over (for correct epoch-level weighting).
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    n_obs: int = 0

    def __post_init__(self) -> None:
        assert self.loss.ndim == 0, f"loss must be a scalar, got shape {tuple(self.loss.shape)}"


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(mu, exp(logvar)) || N(0, I) ), summed over all but the first dimension.

    Parameters
    ----------
    mu, logvar
        ``(B, ...)`` posterior means and log-variances.

    Returns
    -------
    ``(B,)`` KL divergence per sample, in nats.
    """
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(dim=1)


def linear_warmup(step: float, warmup: float, *, start: float = 0.0, end: float = 1.0) -> float:
    """Weight that rises linearly from ``start`` to ``end`` over ``warmup`` steps (or epochs).

    ``warmup <= 0`` returns ``end`` at once.
    """
    if warmup <= 0:
        return end
    frac = min(max(step / warmup, 0.0), 1.0)
    return start + (end - start) * frac
