"""The token contract shared by every tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genailab.registry import Registry

__all__ = ["TOKENIZERS", "TokenBatch", "log_normalize"]

TOKENIZERS: Registry = Registry("tokenizer")


@dataclass
class TokenBatch:
    """A batch of token sequences.

    Attributes
    ----------
    ids
        ``(B, N)`` int64 token identities (latent slot, gene, pathway, ...).
    values
        ``(B, N, D)`` float token values (D = 1 for scalar values such as rank tokens' expression).
    mask
        ``(B, N)`` bool, True where a token is real (False = padding).
    """

    ids: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        b, n = self.ids.shape
        assert self.values.shape[:2] == (b, n), f"values {tuple(self.values.shape)} vs ids {(b, n)}"
        assert self.mask.shape == (b, n), f"mask {tuple(self.mask.shape)} vs ids {(b, n)}"


def log_normalize(counts: torch.Tensor, library: torch.Tensor, target_sum: float = 1e4) -> torch.Tensor:
    """``log1p(counts / library * target_sum)``, with empty cells mapped to zeros.

    Parameters
    ----------
    counts
        ``(B, G)`` raw counts.
    library
        ``(B, 1)`` library sizes.

    Returns
    -------
    ``(B, G)`` log-normalised expression.
    """
    return torch.log1p(counts * (target_sum / library.clamp(min=1.0)))
