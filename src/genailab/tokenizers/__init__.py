"""Tokenizers: counts ``(B, G)`` -> :class:`TokenBatch` (ids, values, mask).

Tokenization is an architectural choice. The default is learned latent tokens
(:class:`LatentTokenEncoder`, the one tokenizer with weights); pathway, GRN and rank tokenizers
register under :data:`TOKENIZERS` beside it.
"""

from genailab.tokenizers.base import TOKENIZERS, TokenBatch, log_normalize
from genailab.tokenizers.latent import LatentTokenEncoder

__all__ = ["TOKENIZERS", "LatentTokenEncoder", "TokenBatch", "log_normalize"]
