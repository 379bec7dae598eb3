"""Recipes: user-facing models composed of tokenizers, backbones, conditioning and likelihoods.

- :class:`LatentTokenVAE`: counts -> latent tokens -> NB/ZINB/Poisson counts (the first stage of the
  synthesis and perturbation recipes).
"""

from genailab.foundation.recipes.count_vae import LatentTokenDecoder, LatentTokenVAE, LatentTokenVAEConfig

__all__ = ["LatentTokenDecoder", "LatentTokenVAE", "LatentTokenVAEConfig"]
