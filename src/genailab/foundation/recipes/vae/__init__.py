"""The latent-token count VAE: counts -> latent tokens -> NB / ZINB / Poisson counts.

- :mod:`~genailab.foundation.recipes.vae.config`: :class:`LatentTokenVAEConfig` and its size presets;
- :mod:`~genailab.foundation.recipes.vae.decoder`: :class:`LatentTokenDecoder`;
- :mod:`~genailab.foundation.recipes.vae.module`: :class:`LatentTokenVAEModule`, the pure-torch network;
- :mod:`~genailab.foundation.recipes.vae.model`: :class:`LatentTokenVAE`, the AnnData-facing model
  (fit, embed, reconstruct, save and load).
"""

from genailab.foundation.recipes.vae.config import PRESETS, LatentTokenVAEConfig
from genailab.foundation.recipes.vae.decoder import LatentTokenDecoder
from genailab.foundation.recipes.vae.model import GENES_NAME, REGISTRY_NAME, TOKENIZER_NAME, LatentTokenVAE
from genailab.foundation.recipes.vae.module import LatentTokenVAEModule

__all__ = [
    "GENES_NAME",
    "PRESETS",
    "REGISTRY_NAME",
    "TOKENIZER_NAME",
    "LatentTokenDecoder",
    "LatentTokenVAE",
    "LatentTokenVAEConfig",
    "LatentTokenVAEModule",
]
