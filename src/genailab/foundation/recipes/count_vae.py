"""Deprecated: moved to :mod:`genailab.foundation.recipes.vae` (this path is kept for one release)."""

import warnings

from genailab.foundation.recipes.vae import LatentTokenDecoder, LatentTokenVAE, LatentTokenVAEConfig

warnings.warn(
    "genailab.foundation.recipes.count_vae is deprecated; import from genailab.foundation.recipes.vae "
    "(or genailab.foundation.recipes).",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["LatentTokenDecoder", "LatentTokenVAE", "LatentTokenVAEConfig"]
