"""Learned latent tokens: the default tokenization (the seed's ``LatentTokenEncoder``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import torch
from torch import nn

from genailab.nn import log_normalize, mlp
from genailab.tokenizers.base import (
    TOKENIZERS,
    TokenBatch,
    TokenizerConfig,
    TokenizerResources,
    check_genes,
)

__all__ = ["LatentTokenEncoder", "mlp"]


@TOKENIZERS.register("latent")
class LatentTokenEncoder(nn.Module):
    """Amortised Gaussian posterior over ``m`` latent tokens of width ``d``.

    ``counts -> log1p(counts / library * target_sum) -> MLP -> (mu, logvar)`` reshaped to tokens
    (Kingma & Welling 2014, arXiv:1312.6114; latent tokens as in latent diffusion, Rombach et al.
    2022, arXiv:2112.10752).

    Parameters
    ----------
    n_genes
        Number of input genes G.
    n_tokens, token_dim
        Latent shape ``(m, d)``.
    hidden_dims
        Widths of the hidden layers.
    dropout
        Dropout after each hidden layer.
    target_sum
        Per-cell normalisation total before ``log1p``.
    """

    def __init__(
        self,
        n_genes: int,
        n_tokens: int,
        token_dim: int,
        hidden_dims: tuple[int, ...],
        *,
        dropout: float = 0.1,
        target_sum: float = 1e4,
    ) -> None:
        super().__init__()
        self.n_tokens, self.token_dim, self.target_sum = n_tokens, token_dim, target_sum
        self.trunk = mlp([n_genes, *hidden_dims], dropout=dropout)
        self.head = nn.Linear(hidden_dims[-1] if hidden_dims else n_genes, 2 * n_tokens * token_dim)

    @classmethod
    def build(
        cls,
        genes: Sequence[str],
        *,
        config: TokenizerConfig,
        n_tokens: int,
        token_dim: int,
        hidden_dims: tuple[int, ...],
        dropout: float,
        target_sum: float,
        resources: TokenizerResources,
    ) -> Self:
        """Build from the tokenizer contract (``config`` and ``resources`` are not needed here)."""
        genes = check_genes(genes)
        return cls(len(genes), n_tokens, token_dim, tuple(hidden_dims), dropout=dropout, target_sum=target_sum)

    def forward(self, counts: torch.Tensor, library: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters.

        Parameters
        ----------
        counts
            ``(B, G)`` raw counts (genes absent from the data zero-filled).
        library
            ``(B, 1)`` library sizes.

        Returns
        -------
        ``(mu, logvar)``, each ``(B, m, d)``.
        """
        h = self.trunk(log_normalize(counts, library, self.target_sum))  # (B, H)
        out = self.head(h).view(-1, self.n_tokens, 2 * self.token_dim)  # (B, m, 2d)
        mu, logvar = out.chunk(2, dim=-1)  # (B, m, d) each
        return mu, logvar.clamp(-12.0, 8.0)

    def tokenize(self, counts: torch.Tensor, library: torch.Tensor) -> TokenBatch:
        """Posterior-mean tokens as a :class:`TokenBatch` (ids are the latent slot indices)."""
        mu, _ = self(counts, library)
        b = mu.shape[0]
        ids = torch.arange(self.n_tokens, device=mu.device).expand(b, -1)  # (B, m)
        mask = torch.ones(b, self.n_tokens, dtype=torch.bool, device=mu.device)
        return TokenBatch(ids=ids, values=mu, mask=mask)

    @property
    def n_genes(self) -> int:
        """Number of input genes G."""
        return int(self.trunk[0].in_features if len(self.trunk) else self.head.in_features)

    def token_names(self) -> list[str]:
        """``["latent_0", ..., "latent_{m-1}"]``."""
        return [f"latent_{i}" for i in range(self.n_tokens)]

    def report(self) -> dict[str, Any]:
        """JSON-able summary: every gene feeds every token."""
        return {"tokenizer": "latent", "n_genes": self.n_genes, "n_tokens": self.n_tokens, "token_dim": self.token_dim}

    def decoder_logits(self) -> nn.Module | None:
        """``None``: latent tokens use the default MLP decoder."""
        return None
