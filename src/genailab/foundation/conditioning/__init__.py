"""Conditioning: turn registered obs covariates into vectors, and inject them into networks.

- :class:`CovariateEmbedding` maps the registered categorical codes and continuous covariates of a
  batch to one ``(B, C)`` condition vector.
- :class:`ConditionEncoder` maps registered obs keys to ``(B, K, C)`` condition tokens with per-key
  dropout to learned null tokens (classifier-free guidance).
- :class:`FiLM` modulates hidden states with it (zero-initialised: the identity at init).
"""

from genailab.foundation.conditioning.embedding import CovariateEmbedding, CovariateEmbeddingConfig
from genailab.foundation.conditioning.encoder import ConditionEncoder, ConditionEncoderConfig
from genailab.foundation.conditioning.film import FiLM

__all__ = [
    "ConditionEncoder",
    "ConditionEncoderConfig",
    "CovariateEmbedding",
    "CovariateEmbeddingConfig",
    "FiLM",
]

from genailab.foundation.conditioning.conditioners import (  # noqa: E402
    CONDITIONERS,
    AdaLNZero,
    ConditionContext,
    Conditioner,
    CrossAttention,
    CrossAttentionConditioner,
    FiLMConditioner,
)
from genailab.nn import multi_head_attention

__all__ += [
    "CONDITIONERS",
    "AdaLNZero",
    "ConditionContext",
    "Conditioner",
    "CrossAttention",
    "CrossAttentionConditioner",
    "FiLMConditioner",
    "multi_head_attention",
]
