"""Rank tokens (Geneformer style): each cell as its genes ordered by median-scaled expression.

Geneformer (Theodoris et al., Nature 2023) represents a cell as the sequence of its expressed genes,
ranked by expression normalised by library size and by each gene's non-zero median across a large
corpus, so that ubiquitously high genes (housekeeping) sink and cell-state genes rise.
:func:`rank_tokenize` builds that sequence; :class:`RankTokenEncoder` (registered as ``"rank"``) embeds
it (gene identity + value + rank position), runs a small transformer encoder and pools the sequence
into ``m`` latent tokens by learned-query cross-attention. :func:`gene_medians_from_geneformer` maps the
published Geneformer median dictionary (Ensembl keys) onto a model's genes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Self

import torch
from torch import nn

from genailab.config import check_positive
from genailab.data.genes import detect_id_type, strip_ensembl_version
from genailab.errors import InvalidInputError
from genailab.nn import mlp
from genailab.tokenizers.base import (
    LOGVAR_RANGE,
    TOKENIZERS,
    TokenBatch,
    TokenizerConfig,
    TokenizerResources,
    check_genes,
)
from genailab.tokenizers.grn import QueryPooling

__all__ = ["RankTokenEncoder", "gene_medians_from_geneformer", "rank_tokenize"]

PAD_ID = -1
"""Token id of padding positions (mask False)."""


def rank_tokenize(
    counts: torch.Tensor,
    library: torch.Tensor,
    medians: torch.Tensor | None = None,
    top_k: int = 256,
    target_sum: float = 1e4,
) -> TokenBatch:
    """Order each cell's expressed genes by normalised expression (Geneformer's rank value encoding).

    ``x = counts / library * target_sum`` (divided by the gene's median when ``medians`` are given);
    zeros are dropped, genes are ordered by ``x`` descending (ties: lower gene index first) and the
    first ``top_k`` kept. Only the order of ``counts / medians`` matters, so the tokens are invariant
    to scaling a cell's counts and library by the same factor.

    Parameters
    ----------
    counts
        ``(B, G)`` raw counts.
    library
        ``(B, 1)`` library sizes.
    medians
        ``(G,)`` positive per-gene normalisation factors (1 for genes without a median), or ``None``.
    top_k
        Longest sequence kept.
    target_sum
        Per-cell normalisation total.

    Returns
    -------
    :class:`TokenBatch` of length ``k = min(top_k, G)``: ids ``(B, k)`` gene indices (``-1`` = padding),
    values ``(B, k, 1)`` ``log1p(x)`` (0 at padding), mask ``(B, k)`` True for expressed genes.
    """
    check_positive("top_k", top_k, integer=True)
    if counts.dim() != 2 or library.shape != (counts.shape[0], 1):
        raise InvalidInputError(
            f"counts must be (B, G) and library (B, 1); got {tuple(counts.shape)} and {tuple(library.shape)}."
        )
    key = counts  # (B, G); the library is a per-cell constant, so the order depends on counts / medians only
    if medians is not None:
        if medians.shape != (counts.shape[1],):
            raise InvalidInputError(f"medians has shape {tuple(medians.shape)}; expected ({counts.shape[1]},).")
        key = counts / medians.to(counts)  # (B, G)
    k = min(top_k, counts.shape[1])
    order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]  # (B, k); stable = lower index first
    scaled = torch.gather(key, 1, order)  # (B, k)
    mask = scaled > 0  # (B, k)
    ids = torch.where(mask, order, torch.full_like(order, PAD_ID))  # (B, k)
    values = torch.log1p(scaled * (target_sum / library.clamp(min=1.0)) * mask)  # (B, k)
    return TokenBatch(ids=ids, values=values.unsqueeze(-1), mask=mask)


def gene_medians_from_geneformer(
    median_dict: Mapping[str, float],
    name_id: Mapping[str, str] | None,
    genes: Sequence[str],
) -> dict[str, float]:
    """Map Geneformer's non-zero medians (keyed by Ensembl id) onto the model's genes.

    Parameters
    ----------
    median_dict
        Ensembl id -> median (Geneformer's ``gene_median_dictionary.pkl``).
    name_id
        Symbol -> Ensembl id (Geneformer's ``gene_name_id_dict.pkl``); needed when ``genes`` are symbols.
    genes
        The model's gene list (symbols or Ensembl ids; version suffixes are ignored).

    Returns
    -------
    Model gene -> median, for the genes with a finite positive median (others are left out and use 1).

    Raises
    ------
    InvalidInputError
        If the genes are symbols and ``name_id`` is missing, or no gene gets a median.
    """
    genes = check_genes(genes)
    if not isinstance(median_dict, Mapping) or not median_dict:
        raise InvalidInputError("median_dict is empty; expected Geneformer's Ensembl id -> median dictionary.")
    medians = {strip_ensembl_version(str(k)): v for k, v in median_dict.items()}
    if detect_id_type(list(genes)) == "ensembl":
        keys = [strip_ensembl_version(g) for g in genes]
    else:
        if name_id is None:
            raise InvalidInputError(
                "genes are gene symbols but Geneformer's medians are keyed by Ensembl ids; pass name_id= the "
                "symbol -> Ensembl dictionary (gene_name_id_dict.pkl)."
            )
        keys = [name_id.get(g) for g in genes]
    out: dict[str, float] = {}
    for gene, key in zip(genes, keys, strict=True):
        value = medians.get(strip_ensembl_version(key)) if key is not None else None
        if value is not None and math.isfinite(float(value)) and float(value) > 0:
            out[gene] = float(value)
    if not out:
        raise InvalidInputError(
            f"no model gene has a Geneformer median (model genes e.g. {', '.join(genes[:3])}); check the species "
            "and the gene id type."
        )
    return out


@TOKENIZERS.register("rank")
class RankTokenEncoder(nn.Module):
    """Geneformer-style rank tokens -> small transformer -> learned-query pooling -> ``(mu, logvar)``.

    Token = gene embedding + MLP of ``log1p`` value + rank-position embedding; a learned cell token is
    prepended (always attended, so a cell with no expressed gene stays finite); padding is masked in
    the encoder and the pooling.

    Parameters
    ----------
    n_genes
        Number of genes G.
    n_tokens, token_dim
        Latent shape ``(m, d)``.
    medians
        ``(G,)`` per-gene normalisation factors (1 = none).
    top_k
        Sequence length ``min(top_k, G)``.
    gene_dim, n_layers, n_heads
        Transformer width W, layers and heads.
    hidden_dim
        Width of the MLP before the ``(mu, logvar)`` head.
    dropout
        Dropout in the transformer and the head MLP.
    target_sum
        Per-cell normalisation total.
    """

    def __init__(
        self,
        n_genes: int,
        n_tokens: int,
        token_dim: int,
        *,
        medians: torch.Tensor | None = None,
        top_k: int = 256,
        gene_dim: int = 32,
        n_layers: int = 2,
        n_heads: int = 2,
        hidden_dim: int = 64,
        dropout: float = 0.1,
        target_sum: float = 1e4,
    ) -> None:
        super().__init__()
        self.n_genes, self.n_tokens, self.token_dim = n_genes, n_tokens, token_dim
        self.top_k, self.target_sum = min(top_k, n_genes), target_sum
        self.n_with_median = 0 if medians is None else int((medians != 1.0).sum())
        medians = torch.ones(n_genes) if medians is None else medians.float()
        self.register_buffer("medians", medians, persistent=False)  # (G,)
        self.gene_embedding = nn.Embedding(n_genes, gene_dim)
        nn.init.normal_(self.gene_embedding.weight, std=0.02)
        self.value_mlp = nn.Sequential(nn.Linear(1, gene_dim), nn.GELU(), nn.Linear(gene_dim, gene_dim))
        self.position = nn.Parameter(torch.zeros(self.top_k, gene_dim))  # (k, W)
        self.cell_token = nn.Parameter(torch.zeros(1, 1, gene_dim))  # (1, 1, W)
        layer = nn.TransformerEncoderLayer(
            gene_dim, n_heads, 2 * gene_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(gene_dim), enable_nested_tensor=False)
        self.pool = QueryPooling(n_tokens, gene_dim, n_heads)
        self.trunk = mlp([gene_dim, hidden_dim], dropout=dropout)
        self.head = nn.Linear(hidden_dim, 2 * token_dim)

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
        """Build from the tokenizer contract; ``resources.gene_medians`` is optional (1 for every gene)."""
        genes = check_genes(genes)
        medians = None
        if resources is not None and resources.gene_medians is not None:
            medians = torch.tensor([resources.gene_medians.get(g, 1.0) for g in genes], dtype=torch.float32)
        encoder = cls(
            len(genes),
            n_tokens,
            token_dim,
            medians=medians,
            top_k=config.top_k,
            gene_dim=config.gene_dim,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
            hidden_dim=hidden_dims[-1] if hidden_dims else config.gene_dim,
            dropout=dropout,
            target_sum=target_sum,
        )
        if medians is not None:
            encoder.n_with_median = sum(g in resources.gene_medians for g in genes)
        return encoder

    def tokenize(self, counts: torch.Tensor, library: torch.Tensor) -> TokenBatch:
        """Rank tokens of :func:`rank_tokenize` (``(B, k)`` ids, ``(B, k, 1)`` values, ``(B, k)`` mask)."""
        return rank_tokenize(counts, library, self.medians, self.top_k, self.target_sum)

    def forward(self, counts: torch.Tensor, library: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters.

        Parameters
        ----------
        counts
            ``(B, G)`` raw counts.
        library
            ``(B, 1)`` library sizes.

        Returns
        -------
        ``(mu, logvar)``, each ``(B, m, d)``.
        """
        tokens = self.tokenize(counts, library)
        b = counts.shape[0]
        emb = self.gene_embedding(tokens.ids.clamp(min=0)) + self.value_mlp(tokens.values) + self.position  # (B, k, W)
        h = torch.cat([self.cell_token.expand(b, -1, -1), emb], dim=1)  # (B, 1 + k, W)
        mask = torch.cat([tokens.mask.new_ones(b, 1), tokens.mask], dim=1)  # (B, 1 + k)
        h = self.encoder(h, src_key_padding_mask=~mask)  # (B, 1 + k, W)
        mu, logvar = self.head(self.trunk(self.pool(h, key_mask=mask))).chunk(2, dim=-1)  # (B, m, d) each
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def token_names(self) -> list[str]:
        """``["rank_0", ..., "rank_{m-1}"]``."""
        return [f"rank_{i}" for i in range(self.n_tokens)]

    def report(self) -> dict[str, Any]:
        """JSON-able: sequence length and how many genes have a median."""
        return {
            "tokenizer": "rank",
            "n_genes": self.n_genes,
            "n_tokens": self.n_tokens,
            "token_dim": self.token_dim,
            "top_k": self.top_k,
            "n_genes_with_median": self.n_with_median,
        }

    def decoder_logits(self) -> nn.Module | None:
        """``None``: rank tokens use the default MLP decoder."""
        return None
