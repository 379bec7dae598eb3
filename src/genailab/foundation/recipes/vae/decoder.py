"""The count decoder of the latent-token VAE: latent tokens (+ batch) -> a count distribution over genes."""

from __future__ import annotations

import torch
from torch import nn

from genailab.errors import InvalidInputError
from genailab.foundation.conditioning import CovariateEmbedding, CovariateEmbeddingConfig
from genailab.foundation.recipes.vae.config import LatentTokenVAEConfig
from genailab.likelihoods import make_count_head
from genailab.nn import mlp

__all__ = ["LatentTokenDecoder"]


class LatentTokenDecoder(nn.Module):
    """Latent tokens (+ batch) -> count distribution over genes.

    Parameters
    ----------
    config
        The VAE config (the decoder mirrors the encoder's hidden widths).
    logits
        A structured gene-logit module ``(B, m, d) -> (B, G)`` supplied by the tokenizer (e.g. pathway
        tokens writing their member genes); ``None`` = the count head's own linear logits.
    """

    def __init__(self, config: LatentTokenVAEConfig, logits: nn.Module | None = None) -> None:
        super().__init__()
        m, d = config.latent_shape
        self.batch_embedding = (
            CovariateEmbedding(CovariateEmbeddingConfig((config.n_batches,), config.batch_embedding_dim))
            if config.n_batches
            else None
        )
        cond_dim = config.batch_embedding_dim if config.n_batches else 0
        widths = list(reversed(config.hidden_dims))
        # A structured decoder (e.g. pathway tokens writing their member genes) computes the gene logits
        # itself; the MLP trunk then only feeds what needs a hidden state (ZINB gate, per-cell theta).
        self.logits = logits
        needs_hidden = logits is None or config.likelihood == "zinb" or config.dispersion == "gene-cell"
        self.trunk = mlp([m * d + cond_dim, *widths], dropout=config.dropout) if needs_hidden else None
        self.head = make_count_head(
            config.likelihood,
            n_hidden=widths[-1] if needs_hidden else 1,
            n_genes=config.n_genes,
            dispersion=config.dispersion,
            n_conditions=config.n_batches or None,
        )
        self.batch_offset: nn.Embedding | None = None
        if logits is not None:
            self.head.scale_logits = None  # replaced by the structured logits
            if config.n_batches:  # per-batch gene offsets, zero at init
                self.batch_offset = nn.Embedding(config.n_batches, config.n_genes)
                nn.init.zeros_(self.batch_offset.weight)
        self.uses_condition = config.dispersion == "gene-condition"

    def forward(
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        gene_mask: torch.Tensor | None = None,
    ) -> torch.distributions.Distribution:
        """Decode.

        Parameters
        ----------
        z
            ``(B, m, d)`` latent tokens (model scale, not standardised).
        library
            ``(B, 1)`` library sizes the mean scales with.
        batch_index
            ``(B,)`` int64 batch codes (``-1`` = unknown batch: the average batch embedding), required
            when the model has batches.
        gene_mask
            ``(G,)`` bool, False for genes absent from the data (excluded from the softmax).

        Returns
        -------
        A distribution over ``(B, G)`` counts.
        """
        h = z.flatten(1)  # (B, m*d)
        if self.batch_embedding is not None:
            if batch_index is None:
                raise InvalidInputError("batch_index is required: this model was trained with a batch key.")
            h = torch.cat([h, self.batch_embedding(batch_index.view(-1, 1))], dim=-1)  # (B, m*d + E)
        h = self.trunk(h) if self.trunk is not None else z.new_zeros(z.shape[0], 1)  # (B, H)
        logits = None
        if self.logits is not None:
            logits = self.logits(z)  # (B, G)
            if self.batch_offset is not None:
                known = (batch_index >= 0).unsqueeze(-1).to(logits.dtype)  # unknown batch: no offset
                logits = logits + known * self.batch_offset(batch_index.clamp(min=0))  # (B, G)
        condition = None
        if self.uses_condition:
            if bool((batch_index < 0).any()):
                raise InvalidInputError(
                    "dispersion='gene-condition' has no dispersion for an unknown batch (code -1); "
                    "decode with a known batch."
                )
            condition = batch_index
        return self.head(h, library, condition=condition, gene_mask=gene_mask, logits=logits)
