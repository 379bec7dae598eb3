"""Perturbation response as a calibrated ensemble of latent shifts over a frozen VAE (``perturb_delta_latent``).

Modules: :mod:`.config` (settings), :mod:`.formulations` (registry), :mod:`.net` (one member),
:mod:`.encoding` and :mod:`.batches` (cells and training batches), :mod:`.training` (member
trainer, ensemble fit), :mod:`.calibration` (conformal intervals, OOD score, ``calibration.json``),
:mod:`.prediction` (queries, AnnData output), :mod:`.persistence` (model directories),
:mod:`.base_shift` (the mean training response every agent starts from), :mod:`.ood` (the OOD
score), :mod:`.latent_baselines` (observed latent shifts and their decoded responses) and
:mod:`.model` (the AnnData-facing :class:`PerturbDeltaModel`).
"""

from genailab.foundation.recipes.perturb.latent_baselines import decode_shift_response, observed_latent_shift
from genailab.foundation.recipes.perturb.model import (
    FORMULATIONS,
    PerturbDeltaConfig,
    PerturbDeltaModel,
    PerturbDeltaNet,
    ResponsePrediction,
)

__all__ = [
    "FORMULATIONS",
    "PerturbDeltaConfig",
    "PerturbDeltaModel",
    "PerturbDeltaNet",
    "ResponsePrediction",
    "decode_shift_response",
    "observed_latent_shift",
]
