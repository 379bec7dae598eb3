"""The latent-token count VAE: counts -> latent tokens -> NB / ZINB / Poisson counts."""

from genailab.foundation.recipes.vae.model import (
    GENES_NAME,
    PRESETS,
    REGISTRY_NAME,
    TOKENIZER_NAME,
    LatentTokenDecoder,
    LatentTokenVAE,
    LatentTokenVAEConfig,
)

__all__ = [
    "GENES_NAME",
    "PRESETS",
    "REGISTRY_NAME",
    "TOKENIZER_NAME",
    "LatentTokenDecoder",
    "LatentTokenVAE",
    "LatentTokenVAEConfig",
]
