"""Recipes: user-facing models composed of tokenizers, backbones, conditioning and likelihoods.

- :class:`LatentTokenVAE`: counts -> latent tokens -> NB/ZINB/Poisson counts (the first stage of the
  synthesis and perturbation recipes).
- :class:`LatentDiffusionModel`: conditional latent diffusion over a frozen VAE (synthesis,
  counterfactuals, batch correction).
"""

from genailab.foundation.recipes.count_vae import LatentTokenDecoder, LatentTokenVAE, LatentTokenVAEConfig
from genailab.foundation.recipes.latent_diffusion import LatentDiffusionConfig, LatentDiffusionModel

__all__ = [
    "LatentDiffusionConfig",
    "LatentDiffusionModel",
    "LatentTokenDecoder",
    "LatentTokenVAE",
    "LatentTokenVAEConfig",
]
