"""Hybrid tokenizers: structured tokens combined with free latent tokens.

- ``"grn+latent"`` (:class:`GRNLatentEncoder`): the GRN encoder's pooled latent tokens, then a learned
  adjacency over the ``m`` latent tokens (:class:`LearnedAdjacency`) that lets tokens exchange
  information along a learned graph -- the seed's "GRN + latent" hybrid (learned latent graphs as in
  NRI, Kipf et al., ICML 2018, arXiv:1802.04687). Identical to ``"grn"`` at init (zero-init gate).
- ``"latent+pathway"`` (:class:`PathwayLatentEncoder`): pathway tokens (one per gene set) followed by
  ``n_free_tokens`` free latent tokens read from all genes, so the latent space keeps interpretable
  pathway coordinates while free tokens absorb what the sets miss (as expiMap's unconstrained nodes,
  Lotfollahi et al., Nat. Cell Biol. 2023).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import torch
from torch import nn

from genailab.tokenizers.base import (
    LOGVAR_RANGE,
    TOKENIZERS,
    TokenBatch,
    TokenizerConfig,
    TokenizerResources,
    check_genes,
)
from genailab.tokenizers.grn import GRNTokenEncoder
from genailab.tokenizers.latent import LatentTokenEncoder
from genailab.tokenizers.pathway import PathwayTokenEncoder

__all__ = ["GRNLatentEncoder", "LearnedAdjacency", "PathwayLatentEncoder"]


class LearnedAdjacency(nn.Module):
    """``z + gate * (A @ Linear(z))`` with ``A = softmax(logits)`` an ``m x m`` learned row-stochastic graph.

    The gate is zero-initialised, so the module is the identity at init.

    Parameters
    ----------
    n_tokens
        Number of tokens m.
    dim
        Token width.
    """

    def __init__(self, n_tokens: int, dim: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_tokens, n_tokens))  # (m, m)
        self.proj = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(dim))  # (W,)

    @property
    def adjacency(self) -> torch.Tensor:
        """``(m, m)`` row-stochastic adjacency ``softmax(logits)`` (row i = what token i reads)."""
        return self.logits.softmax(dim=-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, m, W)`` -> ``(B, m, W)``."""
        return z + self.gate * (self.adjacency @ self.proj(z))  # (B, m, W)


@TOKENIZERS.register("grn+latent")
class GRNLatentEncoder(nn.Module):
    """GRN-pooled latent tokens refined by a learned latent adjacency, then ``(mu, logvar)``.

    Parameters
    ----------
    grn
        The GRN encoder (see :class:`~genailab.tokenizers.GRNTokenEncoder`).
    """

    def __init__(self, grn: GRNTokenEncoder) -> None:
        super().__init__()
        self.grn = grn
        self.n_tokens, self.token_dim = grn.n_tokens, grn.token_dim
        self.adjacency = LearnedAdjacency(grn.n_tokens, grn.pool.queries.shape[1])

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
        """Build from the tokenizer contract (needs ``resources.edges``, as ``"grn"``)."""
        grn = GRNTokenEncoder.build(
            genes,
            config=config,
            n_tokens=n_tokens,
            token_dim=token_dim,
            hidden_dims=hidden_dims,
            dropout=dropout,
            target_sum=target_sum,
            resources=resources,
        )
        return cls(grn)

    def forward(self, counts: torch.Tensor, library: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, G)`` counts, ``(B, 1)`` library -> ``(mu, logvar)``, each ``(B, m, d)``."""
        return self.grn.posterior(self.adjacency(self.grn.pooled(counts, library)))

    def tokenize(self, counts: torch.Tensor, library: torch.Tensor) -> TokenBatch:
        """The GRN encoder's gene tokens (see :meth:`GRNTokenEncoder.tokenize`)."""
        return self.grn.tokenize(counts, library)

    def token_names(self) -> list[str]:
        """``["grn_0", ..., "grn_{m-1}"]``."""
        return self.grn.token_names()

    def report(self) -> dict[str, Any]:
        """The GRN report, renamed."""
        return {**self.grn.report(), "tokenizer": "grn+latent", "learned_adjacency": True}

    def decoder_logits(self) -> nn.Module | None:
        """``None``: the default MLP decoder."""
        return None


@TOKENIZERS.register("latent+pathway")
class PathwayLatentEncoder(nn.Module):
    """Pathway tokens (one per gene set, + residual) followed by free latent tokens over all genes.

    Parameters
    ----------
    pathway
        The pathway encoder (see :class:`~genailab.tokenizers.PathwayTokenEncoder`).
    free
        A :class:`~genailab.tokenizers.LatentTokenEncoder` producing the free tokens.
    """

    def __init__(self, pathway: PathwayTokenEncoder, free: LatentTokenEncoder) -> None:
        super().__init__()
        self.pathway, self.free = pathway, free
        self.n_tokens = pathway.n_tokens + free.n_tokens
        self.token_dim = pathway.token_dim

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
        """Build from the tokenizer contract; ``n_tokens`` is ignored (sets + ``config.n_free_tokens``)."""
        genes = check_genes(genes)
        pathway = PathwayTokenEncoder.build(
            genes,
            config=config,
            n_tokens=n_tokens,
            token_dim=token_dim,
            hidden_dims=hidden_dims,
            dropout=dropout,
            target_sum=target_sum,
            resources=resources,
        )
        free = LatentTokenEncoder(
            len(genes), config.n_free_tokens, token_dim, tuple(hidden_dims), dropout=dropout, target_sum=target_sum
        )
        return cls(pathway, free)

    def forward(self, counts: torch.Tensor, library: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, G)`` counts, ``(B, 1)`` library -> ``(mu, logvar)``, each ``(B, m_sets + m_free, d)``."""
        mu_p, logvar_p = self.pathway(counts, library)  # (B, m_sets, d) each
        mu_f, logvar_f = self.free(counts, library)  # (B, m_free, d) each
        return torch.cat([mu_p, mu_f], dim=1), torch.cat([logvar_p, logvar_f], dim=1).clamp(*LOGVAR_RANGE)

    def tokenize(self, counts: torch.Tensor, library: torch.Tensor) -> TokenBatch:
        """Posterior-mean tokens (ids = token slot), as :meth:`LatentTokenEncoder.tokenize`."""
        mu, _ = self(counts, library)  # (B, m, d)
        ids = torch.arange(self.n_tokens, device=mu.device).expand(mu.shape[0], -1)  # (B, m)
        return TokenBatch(ids=ids, values=mu, mask=torch.ones_like(ids, dtype=torch.bool))

    def token_names(self) -> list[str]:
        """Set names (+ ``"residual"``), then ``"latent_i"`` for the free tokens."""
        return [*self.pathway.token_names(), *self.free.token_names()]

    def report(self) -> dict[str, Any]:
        """The pathway report plus the free-token count."""
        return {
            **self.pathway.report(),
            "tokenizer": "latent+pathway",
            "n_tokens": self.n_tokens,
            "n_pathway_tokens": self.pathway.n_tokens,
            "n_free_tokens": self.free.n_tokens,
        }

    def decoder_logits(self) -> nn.Module | None:
        """``None``: the default MLP decoder reads all tokens."""
        return None
