"""Conditioning: turn registered obs covariates into vectors, and inject them into networks.

- :class:`CovariateEmbedding` maps the registered categorical codes and continuous covariates of a
  batch to one ``(B, C)`` condition vector.
- :class:`FiLM` modulates hidden states with it (zero-initialised: the identity at init).
"""

from genailab.foundation.conditioning.embedding import CovariateEmbedding, CovariateEmbeddingConfig
from genailab.foundation.conditioning.film import FiLM

__all__ = ["CovariateEmbedding", "CovariateEmbeddingConfig", "FiLM"]
