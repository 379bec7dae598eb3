"""Recipes: user-facing models composed of tokenizers, backbones, conditioning and likelihoods.

- :class:`LatentTokenVAE`: counts -> latent tokens -> NB/ZINB/Poisson counts (the first stage of the
  synthesis and perturbation recipes).
- :class:`LatentDiffusionModel`: conditional latent diffusion over a frozen VAE (synthesis,
  counterfactuals, batch correction).
- :class:`PerturbDeltaModel`: perturbation response as a shift in the frozen VAE's latent space, a
  calibrated deep ensemble with an OOD score (``perturb_delta_latent``).
"""

from genailab.foundation.recipes.adapted import is_adapted_dir, load_model
from genailab.foundation.recipes.distill import (
    DistillConfig,
    DistilledStudent,
    TeacherPairDataset,
    build_student,
    distill_latent_diffusion,
    generate_teacher_pairs,
    save_distilled,
)
from genailab.foundation.recipes.latent_diffusion import LatentDiffusionConfig, LatentDiffusionModel
from genailab.foundation.recipes.latent_prior import GaussianLatentPrior
from genailab.foundation.recipes.perturb import (
    FORMULATIONS,
    PerturbDeltaConfig,
    PerturbDeltaModel,
    PerturbDeltaNet,
    ResponsePrediction,
)
from genailab.foundation.recipes.vae import LatentTokenDecoder, LatentTokenVAE, LatentTokenVAEConfig

__all__ = [
    "GaussianLatentPrior",
    "is_adapted_dir",
    "load_model",
    "FORMULATIONS",
    "DistillConfig",
    "DistilledStudent",
    "LatentDiffusionConfig",
    "LatentDiffusionModel",
    "LatentTokenDecoder",
    "LatentTokenVAE",
    "LatentTokenVAEConfig",
    "PerturbDeltaConfig",
    "PerturbDeltaModel",
    "PerturbDeltaNet",
    "ResponsePrediction",
    "TeacherPairDataset",
    "build_student",
    "distill_latent_diffusion",
    "generate_teacher_pairs",
    "save_distilled",
]
