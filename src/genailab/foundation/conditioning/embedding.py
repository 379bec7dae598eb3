"""Covariate embeddings: registered categorical codes + continuous values -> one condition vector."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genailab.config import Config, check_positive
from genailab.errors import InvalidInputError

__all__ = ["CovariateEmbedding", "CovariateEmbeddingConfig"]


@dataclass(frozen=True)
class CovariateEmbeddingConfig(Config):
    """Config of :class:`CovariateEmbedding`.

    Parameters
    ----------
    n_categories
        Number of categories of each categorical key, in the data registry's key order.
    embedding_dim
        Width of each categorical embedding.
    n_continuous
        Number of continuous covariates (already standardised by the data registry).
    """

    n_categories: tuple[int, ...] = ()
    embedding_dim: int = 8
    n_continuous: int = 0

    def __post_init__(self) -> None:
        for i, n in enumerate(self.n_categories):
            check_positive(f"n_categories[{i}]", n, integer=True)
        check_positive("embedding_dim", self.embedding_dim, integer=True)
        check_positive("n_continuous", self.n_continuous, strict=False, integer=True)

    @property
    def out_dim(self) -> int:
        """Width of the condition vector."""
        return len(self.n_categories) * self.embedding_dim + self.n_continuous


class CovariateEmbedding(nn.Module):
    """Embed categorical codes and concatenate continuous covariates.

    A code of ``-1`` means "unknown label" (the data registry's explicit ``unknown`` policy) and
    maps to the mean of that key's learned embeddings, i.e. the population-average condition.

    Parameters
    ----------
    config
        The embedding config.
    """

    def __init__(self, config: CovariateEmbeddingConfig) -> None:
        super().__init__()
        self.config = config
        self.tables = nn.ModuleList(nn.Embedding(n, config.embedding_dim) for n in config.n_categories)
        for table in self.tables:
            nn.init.normal_(table.weight, std=0.1)

    @property
    def out_dim(self) -> int:
        """Width of the condition vector."""
        return self.config.out_dim

    def forward(self, cat: torch.Tensor | None, cont: torch.Tensor | None = None) -> torch.Tensor:
        """Build the condition vector.

        Parameters
        ----------
        cat
            ``(B, K)`` int64 category codes (``-1`` = unknown), K = ``len(n_categories)``.
        cont
            ``(B, C)`` float continuous covariates, C = ``n_continuous``.

        Returns
        -------
        ``(B, out_dim)`` condition vector.
        """
        k, c = len(self.tables), self.config.n_continuous
        parts: list[torch.Tensor] = []
        if k:
            if cat is None or cat.ndim != 2 or cat.shape[1] != k:
                shape = None if cat is None else tuple(cat.shape)
                raise InvalidInputError(f"cat must have shape (B, {k}), got {shape}.")
            for j, table in enumerate(self.tables):
                codes = cat[:, j]
                if bool((codes >= table.num_embeddings).any()) or bool((codes < -1).any()):
                    raise InvalidInputError(
                        f"cat[:, {j}] holds codes outside [-1, {table.num_embeddings - 1}]: "
                        f"{sorted(set(codes.tolist()))[:5]}."
                    )
                known = table(codes.clamp(min=0))  # (B, E)
                unknown = table.weight.mean(dim=0, keepdim=True).expand_as(known)
                parts.append(torch.where((codes < 0).unsqueeze(-1), unknown, known))
        if c:
            if cont is None or cont.ndim != 2 or cont.shape[1] != c:
                shape = None if cont is None else tuple(cont.shape)
                raise InvalidInputError(f"cont must have shape (B, {c}), got {shape}.")
            parts.append(cont.to(torch.get_default_dtype()))
        if not parts:
            batch = cat.shape[0] if cat is not None else (cont.shape[0] if cont is not None else 0)
            return torch.zeros(batch, 0)
        return torch.cat(parts, dim=-1)
