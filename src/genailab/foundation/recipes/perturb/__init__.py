"""Perturbation response as a calibrated ensemble of latent shifts over a frozen VAE (``perturb_delta_latent``)."""

from genailab.foundation.recipes.perturb.model import (
    FORMULATIONS,
    PerturbDeltaConfig,
    PerturbDeltaModel,
    PerturbDeltaNet,
    ResponsePrediction,
)

__all__ = ["FORMULATIONS", "PerturbDeltaConfig", "PerturbDeltaModel", "PerturbDeltaNet", "ResponsePrediction"]
