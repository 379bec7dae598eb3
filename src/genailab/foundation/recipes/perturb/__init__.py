"""Perturbation response as a calibrated ensemble of latent shifts over a frozen VAE (``perturb_delta_latent``).

Modules: :mod:`.config` (settings), :mod:`.formulations` (registry), :mod:`.net` (one member),
:mod:`.encoding` and :mod:`.batches` (cells and training batches), :mod:`.training` (member
trainer, ensemble fit), :mod:`.calibration` (conformal intervals, OOD score, ``calibration.json``),
:mod:`.prediction` (queries, AnnData output), :mod:`.persistence` (model directories) and
:mod:`.model` (the AnnData-facing :class:`PerturbDeltaModel`).
"""

from genailab.foundation.recipes.perturb.model import (
    FORMULATIONS,
    PerturbDeltaConfig,
    PerturbDeltaModel,
    PerturbDeltaNet,
    ResponsePrediction,
)

__all__ = ["FORMULATIONS", "PerturbDeltaConfig", "PerturbDeltaModel", "PerturbDeltaNet", "ResponsePrediction"]
