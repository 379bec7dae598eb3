"""The latent-token count VAE: counts -> latent tokens -> NB/ZINB/Poisson counts.

This is the default tokenization and the first stage of every recipe: synthesis trains a diffusion
model on its standardised latents, and perturbation models predict shifts of them. Components:

- :class:`~genailab.tokenizers.LatentTokenEncoder`: ``q(z | x)``, ``z`` of shape ``(m, d)``;
- :class:`LatentTokenDecoder`: ``z`` (+ batch) -> a count :class:`~torch.distributions.Distribution`
  whose mean is ``library * softmax(...)``, so it scales linearly with library size;
- latent standardisation and a per-batch log-normal library model, both fitted after training
  (:meth:`LatentTokenVAE.calibrate`) and stored as buffers in ``model.safetensors``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from genailab._version import __version__
from genailab.config import Config, check_choice, check_fraction, check_positive
from genailab.constants import ADATA_KEYS, BATCH_KEYS
from genailab.errors import InvalidInputError
from genailab.foundation.conditioning import CovariateEmbedding, CovariateEmbeddingConfig
from genailab.foundation.objectives import LossOutput, gaussian_kl, linear_warmup
from genailab.io import atomic_write_json, check_writable
from genailab.likelihoods import COUNT_HEADS, DISPERSIONS, make_count_head, masked_nll
from genailab.nn import mlp
from genailab.serialization import (
    CONFIG_NAME,
    load_state_dict_strict,
    read_config,
    read_json,
    save_weights,
    write_config,
)
from genailab.tokenizers import TOKENIZERS, TokenizerConfig, TokenizerResources

if TYPE_CHECKING:
    from anndata import AnnData

    from genailab.data import DataRegistry, GeneIdMap
    from genailab.training import TrainConfig, TrainResult

__all__ = ["LatentTokenDecoder", "LatentTokenVAE", "LatentTokenVAEConfig"]

GENES_NAME = "genes.json"
REGISTRY_NAME = "registry.json"
TOKENIZER_NAME = "tokenizer.json"


@dataclass(frozen=True)
class LatentTokenVAEConfig(Config):
    """Architecture of :class:`LatentTokenVAE`.

    Parameters
    ----------
    n_genes
        Number of genes G the model reads and writes.
    n_tokens, token_dim
        Latent shape ``(m, d)``; the seed default for ~20k genes is 64 x 256 (:meth:`base`).
    hidden_dims
        Encoder hidden widths; the decoder mirrors them.
    likelihood
        Count head: ``"nb"``, ``"zinb"`` or ``"poisson"``.
    dispersion
        ``"gene"``, ``"gene-cell"`` or ``"gene-condition"`` (per gene and batch; needs a batch key).
    n_batches
        Number of batch/donor categories the decoder is conditioned on (0 = none).
    batch_embedding_dim
        Width of the batch embedding fed to the decoder.
    dropout
        Dropout in encoder and decoder hidden layers.
    kl_weight
        Weight of the KL term after warm-up (1 = the ELBO).
    kl_warmup_epochs
        Epochs over which the KL weight rises linearly from 0 (0 = no warm-up).
    target_sum
        Per-cell normalisation total for the encoder input ``log1p(x / library * target_sum)``.
    tokenizer
        Which registered tokenizer encodes counts into the latent tokens (``latent`` = the default
        MLP encoder; ``pathway``, ``grn``, ``rank``, ``latent+pathway``, ``grn+latent``) and its options.
        Tokenizers that fix the number of tokens (one per gene set) set ``n_tokens`` themselves.
    """

    n_genes: int
    n_tokens: int = 8
    token_dim: int = 16
    hidden_dims: tuple[int, ...] = (256,)
    likelihood: str = "nb"
    dispersion: str = "gene"
    n_batches: int = 0
    batch_embedding_dim: int = 8
    dropout: float = 0.1
    kl_weight: float = 1.0
    kl_warmup_epochs: float = 5.0
    target_sum: float = 1e4
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def __post_init__(self) -> None:
        check_positive("n_genes", self.n_genes, integer=True)
        check_positive("n_tokens", self.n_tokens, integer=True)
        check_positive("token_dim", self.token_dim, integer=True)
        if not self.hidden_dims:
            raise InvalidInputError("hidden_dims must list at least one hidden width, got ().")
        for i, h in enumerate(self.hidden_dims):
            check_positive(f"hidden_dims[{i}]", h, integer=True)
        check_choice("likelihood", self.likelihood, COUNT_HEADS.names())
        check_choice("dispersion", self.dispersion, DISPERSIONS.names())
        check_positive("n_batches", self.n_batches, strict=False, integer=True)
        if self.dispersion == "gene-condition" and self.n_batches < 1:
            raise InvalidInputError(
                "dispersion='gene-condition' needs a batch key (n_batches >= 1); got n_batches=0. "
                "Register a batch key or use dispersion='gene'."
            )
        check_positive("batch_embedding_dim", self.batch_embedding_dim, integer=True)
        check_fraction("dropout", self.dropout)
        check_positive("kl_weight", self.kl_weight, strict=False)
        check_positive("kl_warmup_epochs", self.kl_warmup_epochs, strict=False)
        check_positive("target_sum", self.target_sum)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """``(m, d)``."""
        return (self.n_tokens, self.token_dim)

    @classmethod
    def tiny(cls, n_genes: int, **kw: Any) -> LatentTokenVAEConfig:
        """4 x 8 tokens, one 64-wide layer: tests and smoke runs."""
        return cls(n_genes=n_genes, n_tokens=4, token_dim=8, hidden_dims=(64,), **kw)

    @classmethod
    def small(cls, n_genes: int, **kw: Any) -> LatentTokenVAEConfig:
        """8 x 16 tokens, one 256-wide layer: gene panels up to ~5k genes (the default)."""
        return cls(n_genes=n_genes, n_tokens=8, token_dim=16, hidden_dims=(256,), **kw)

    @classmethod
    def medium(cls, n_genes: int, **kw: Any) -> LatentTokenVAEConfig:
        """16 x 32 tokens, 1024 -> 512 layers: ~5k-20k genes."""
        return cls(n_genes=n_genes, n_tokens=16, token_dim=32, hidden_dims=(1024, 512), **kw)

    @classmethod
    def base(cls, n_genes: int, **kw: Any) -> LatentTokenVAEConfig:
        """64 x 256 tokens, 2048 -> 1024 layers: the seed default for ~20k genes."""
        return cls(n_genes=n_genes, n_tokens=64, token_dim=256, hidden_dims=(2048, 1024), **kw)

    @classmethod
    def preset(cls, name: str, n_genes: int, **kw: Any) -> LatentTokenVAEConfig:
        """Build the named preset (``tiny``, ``small``, ``medium``, ``base``)."""
        check_choice("preset", name, PRESETS)
        return getattr(cls, name)(n_genes, **kw)


PRESETS = ("tiny", "small", "medium", "base")


class LatentTokenDecoder(nn.Module):
    """Latent tokens (+ batch) -> count distribution over genes.

    Parameters
    ----------
    config
        The VAE config (the decoder mirrors the encoder's hidden widths).
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


class LatentTokenVAE(nn.Module):
    """Latent-token count VAE (the seed's ``LatentTokenEncoder`` + an NB/ZINB decoder).

    Parameters
    ----------
    config
        Architecture.
    genes
        The gene identifiers the model reads and writes, length ``config.n_genes``.
    registry
        The data registry (category maps) of the training data; ``None`` for a model with no
        registered covariates.
    resources
        What the tokenizer is built from (gene sets, GRN edges, gene medians), in the model's gene-id
        space; saved beside the weights. Not needed by the default ``latent`` tokenizer.

    Examples
    --------
    >>> from genailab.data import pbmc68k_reduced
    >>> adata = pbmc68k_reduced()
    >>> model = LatentTokenVAE.from_anndata(adata)  # doctest: +SKIP
    >>> model.fit(adata, out_dir="runs/vae")  # doctest: +SKIP
    >>> model.get_latent(adata)  # fills adata.obsm["X_genailab"]  # doctest: +SKIP
    """

    def __init__(
        self,
        config: LatentTokenVAEConfig,
        genes: Sequence[str] | None = None,
        registry: DataRegistry | None = None,
        resources: TokenizerResources | None = None,
    ) -> None:
        super().__init__()
        genes = tuple(str(g) for g in genes) if genes is not None else tuple(f"gene_{i}" for i in range(config.n_genes))
        if len(genes) != config.n_genes:
            raise InvalidInputError(f"genes has {len(genes)} entries but config.n_genes={config.n_genes}.")
        if len(set(genes)) != len(genes):
            raise InvalidInputError("genes must be unique; found duplicated gene identifiers.")
        self.resources = resources if resources is not None else TokenizerResources()
        self.encoder = TOKENIZERS.get(config.tokenizer.name).build(
            genes,
            config=config.tokenizer,
            n_tokens=config.n_tokens,
            token_dim=config.token_dim,
            hidden_dims=config.hidden_dims,
            dropout=config.dropout,
            target_sum=config.target_sum,
            resources=self.resources,
        )
        if self.encoder.n_tokens != config.n_tokens:  # the tokenizer fixes m (e.g. one token per gene set)
            config = config.replace(n_tokens=int(self.encoder.n_tokens))
        self.config = config
        self.genes = genes
        self.registry = registry
        self.batch_column = self._find_batch_column(config, registry)
        m, d = config.latent_shape
        self.decoder = LatentTokenDecoder(config, logits=self.encoder.decoder_logits())
        n_lib = max(config.n_batches, 1)
        self.register_buffer("latent_mean", torch.zeros(m, d))
        self.register_buffer("latent_std", torch.ones(m, d))
        self.register_buffer("log_library_mean", torch.full((n_lib,), math.log(1e3)))
        self.register_buffer("log_library_std", torch.ones(n_lib))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _find_batch_column(config: LatentTokenVAEConfig, registry: DataRegistry | None) -> int | None:
        batch_key = registry.spec.batch_key if registry is not None else None
        if config.n_batches and batch_key is None:
            raise InvalidInputError(
                f"config.n_batches={config.n_batches} but the registry has no batch_key; "
                "register the batch key with DataSpec(batch_key=...)."
            )
        if batch_key is None:
            return None
        n = registry.n_categories(batch_key)
        if n != config.n_batches:
            raise InvalidInputError(
                f"config.n_batches={config.n_batches} but obs[{batch_key!r}] has {n} categories in the registry."
            )
        return registry.key_index(batch_key)

    @classmethod
    def from_anndata(
        cls,
        adata: AnnData,
        spec: Any = None,
        *,
        preset: str = "small",
        overrides: dict[str, Any] | None = None,
        gene_key: str | None = None,
        tokenizer: TokenizerConfig | None = None,
        resources: TokenizerResources | None = None,
    ) -> LatentTokenVAE:
        """Register ``adata`` and build a model sized for it.

        Parameters
        ----------
        adata
            Training data (validated: counts must be finite, non-negative integers).
        spec
            A :class:`~genailab.data.DataSpec` (``None`` = no registered covariates).
        preset
            Size preset (``tiny``, ``small``, ``medium``, ``base``).
        overrides
            Config fields to change, e.g. ``{"likelihood": "zinb", "n_tokens": 16}``.
        gene_key
            ``var`` column holding the gene identifiers (default: ``var_names``).
        tokenizer
            The tokenizer and its options (default: learned latent tokens).
        resources
            Gene sets / GRN edges / gene medians the tokenizer is built from.
        """
        from genailab.config import apply_overrides
        from genailab.data import DataSpec, setup_anndata, validate_counts

        spec = spec if spec is not None else DataSpec()
        validate_counts(adata, layer=spec.layer)
        registry = setup_anndata(adata, spec)
        n_batches = registry.n_categories(spec.batch_key) if spec.batch_key else 0
        overrides = dict(overrides or {})
        for fixed in ("n_genes", "n_batches"):
            if fixed in overrides:
                raise InvalidInputError(f"{fixed} is set from the data and cannot be overridden.")
        config = LatentTokenVAEConfig.preset(preset, adata.n_vars, n_batches=n_batches)
        config = apply_overrides(config, overrides)  # accepts typed values and CLI strings
        if tokenizer is not None:
            config = config.replace(tokenizer=tokenizer)
        return cls(config, genes=_gene_ids(adata, gene_key), registry=registry, resources=resources)

    # ------------------------------------------------------------------ core model
    def batch_index(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The ``(B,)`` batch codes of a mini-batch, or ``None`` when the model has no batch key."""
        if self.batch_column is None:
            return None
        return batch[BATCH_KEYS.CAT_COVS][:, self.batch_column]

    def encode(self, counts: torch.Tensor, library: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mu, logvar)``, each ``(B, m, d)``; see :class:`LatentTokenEncoder`."""
        return self.encoder(counts, library)

    def decode(
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        gene_mask: torch.Tensor | None = None,
    ) -> torch.distributions.Distribution:
        """Count distribution over ``(B, G)`` for latent tokens ``z`` ``(B, m, d)``."""
        return self.decoder(z, library, batch_index, gene_mask)

    def standardize(self, z: torch.Tensor) -> torch.Tensor:
        """Map model-scale latents ``(B, m, d)`` to the standardised scale diffusion trains on."""
        return (z - self.latent_mean) / self.latent_std

    def unstandardize(self, z_std: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`standardize`."""
        return z_std * self.latent_std + self.latent_mean

    def training_step(self, batch: dict[str, torch.Tensor], *, epoch: float | None = None) -> LossOutput:
        """Negative ELBO of a mini-batch.

        Parameters
        ----------
        batch
            A mini-batch dict with :data:`~genailab.constants.BATCH_KEYS` entries.
        epoch
            Fractional training epoch, for the KL warm-up; ``None`` gives the full KL weight
            (validation reports the true negative ELBO).

        Returns
        -------
        :class:`LossOutput` with terms ``nll`` (per cell) and ``kl`` (per cell).
        """
        counts, library = batch[BATCH_KEYS.COUNTS], batch[BATCH_KEYS.LIBRARY]
        gene_mask = batch.get(BATCH_KEYS.GENE_MASK)
        mu, logvar = self.encode(counts, library)  # (B, m, d) each
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # (B, m, d) reparameterised sample
        dist = self.decode(z, library, self.batch_index(batch), gene_mask)
        nll = masked_nll(dist, counts, gene_mask)  # (B,)
        kl = gaussian_kl(mu, logvar)  # (B,)
        weight = self.config.kl_weight * (1.0 if epoch is None else linear_warmup(epoch, self.config.kl_warmup_epochs))
        loss = (nll + weight * kl).mean()
        return LossOutput(
            loss=loss,
            terms={"nll": nll.mean().detach(), "kl": kl.mean().detach()},
            metrics={"kl_weight": weight},
            n_obs=counts.shape[0],
        )

    # ------------------------------------------------------------------ calibration after training
    @torch.no_grad()
    def calibrate(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        """Fit the latent standardisation and the per-batch library model on training data.

        Sets ``latent_mean``/``latent_std`` to the per-(token, dim) mean and std of posterior means,
        and ``log_library_mean``/``log_library_std`` to the per-batch log-library statistics that
        :meth:`sample_library` draws generated cells' library sizes from.
        """
        was_training = self.training
        self.eval()
        m, d = self.config.latent_shape
        n_lib = self.log_library_mean.shape[0]
        s1, s2, n = torch.zeros(m, d, dtype=torch.float64), torch.zeros(m, d, dtype=torch.float64), 0
        l1, l2 = torch.zeros(n_lib, dtype=torch.float64), torch.zeros(n_lib, dtype=torch.float64)
        ln = torch.zeros(n_lib, dtype=torch.float64)
        for batch in batches:
            mu, _ = self.encode(batch[BATCH_KEYS.COUNTS], batch[BATCH_KEYS.LIBRARY])
            mu = mu.double()
            s1 += mu.sum(0)
            s2 += mu.pow(2).sum(0)
            n += mu.shape[0]
            log_lib = batch[BATCH_KEYS.LIBRARY].clamp(min=1.0).log().view(-1).double()
            bi = self.batch_index(batch)
            idx = torch.zeros_like(log_lib, dtype=torch.long) if bi is None else bi.clamp(min=0)
            l1.index_add_(0, idx, log_lib)
            l2.index_add_(0, idx, log_lib.pow(2))
            ln.index_add_(0, idx, torch.ones_like(log_lib))
        if n < 2:
            raise InvalidInputError(f"calibrate needs at least 2 cells, got {n}.")
        mean = s1 / n
        std = (s2 / n - mean.pow(2)).clamp(min=1e-12).sqrt()
        self.latent_mean.copy_(mean.float())
        self.latent_std.copy_(std.clamp(min=1e-4).float())
        seen = ln > 0
        lmean = torch.where(seen, l1 / ln.clamp(min=1), (l1.sum() / ln.sum()).expand_as(l1))
        lvar = torch.where(seen, l2 / ln.clamp(min=1) - lmean.pow(2), torch.ones_like(l1))
        self.log_library_mean.copy_(lmean.float())
        self.log_library_std.copy_(lvar.clamp(min=1e-6).sqrt().float())
        self.calibrated.fill_(True)
        self.train(was_training)

    def sample_library(
        self, batch_index: torch.Tensor | None, n: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``(n, 1)`` library sizes for generated cells from the per-batch log-normal model."""
        idx = torch.zeros(n, dtype=torch.long) if batch_index is None else batch_index.clamp(min=0)
        mean, std = self.log_library_mean[idx], self.log_library_std[idx]  # (n,)
        if batch_index is not None:
            unknown = batch_index < 0
            mean = torch.where(unknown, self.log_library_mean.mean(), mean)
            std = torch.where(unknown, self.log_library_std.mean(), std)
        eps = torch.randn(n, generator=generator, device=mean.device)
        return (mean + std * eps).exp().round().clamp(min=1.0).unsqueeze(-1)

    # ------------------------------------------------------------------ AnnData API
    def count_dataset(
        self,
        adata: AnnData,
        *,
        indices: np.ndarray | None = None,
        unknown: str = "error",
        id_map: GeneIdMap | None = None,
        min_overlap: float = 0.5,
        gene_key: str | None = None,
    ) -> Any:
        """A :class:`~genailab.data.CountsDataset` over ``adata`` aligned to the model's genes."""
        from genailab.data import CountsDataset, align_genes, validate_counts

        layer = self.registry.spec.layer if self.registry is not None else None
        validate_counts(adata, layer=layer)
        source = _gene_ids(adata, gene_key)
        alignment = None
        if tuple(source) != self.genes:
            alignment = align_genes(source, self.genes, id_map=id_map, min_overlap=min_overlap)
        registry = self.registry if self.registry is not None and self.registry.spec.categorical_keys() else None
        return CountsDataset(adata, registry, layer=layer, alignment=alignment, indices=indices, unknown=unknown)

    def _loader(self, adata: AnnData, batch_size: int = 1024, **kw: Any) -> Any:
        from genailab.data import make_dataloader

        return make_dataloader(self.count_dataset(adata, **kw), batch_size=batch_size, shuffle=False)

    @torch.no_grad()
    def get_latent(
        self,
        adata: AnnData,
        *,
        key: str | None = ADATA_KEYS.LATENT,
        standardize: bool = False,
        batch_size: int = 1024,
        unknown: Literal["error", "unknown"] = "error",
        id_map: GeneIdMap | None = None,
        min_overlap: float = 0.5,
        gene_key: str | None = None,
    ) -> np.ndarray:
        """Posterior-mean latent tokens of every cell.

        Parameters
        ----------
        adata
            Cells to embed; genes are aligned to the model's genes (missing ones zero-filled).
        key
            When given, write the flattened latent ``(n, m*d)`` to ``adata.obsm[key]`` and the tokens
            ``(n, m, d)`` to ``adata.obsm[key + "_tokens"]``.
        standardize
            Return latents on the standardised (diffusion) scale.
        unknown
            Policy for batch labels unseen in training: ``"error"`` or ``"unknown"``.
        id_map, min_overlap, gene_key
            Gene harmonisation, see :func:`genailab.data.align_genes`.

        Returns
        -------
        ``(n, m, d)`` float32 array.
        """
        self.eval()
        loader = self._loader(
            adata, batch_size, unknown=unknown, id_map=id_map, min_overlap=min_overlap, gene_key=gene_key
        )
        out = []
        for batch in loader:
            mu, _ = self.encode(batch[BATCH_KEYS.COUNTS], batch[BATCH_KEYS.LIBRARY])
            out.append(self.standardize(mu) if standardize else mu)
        z = torch.cat(out).numpy() if out else np.zeros((0, *self.config.latent_shape), np.float32)
        if key is not None:
            adata.obsm[key] = z.reshape(z.shape[0], -1)
            adata.obsm[f"{key}_tokens"] = z
        return z

    @torch.no_grad()
    def reconstruct(
        self,
        adata: AnnData,
        *,
        sample: bool = False,
        batch_size: int = 1024,
        seed: int = 0,
        unknown: Literal["error", "unknown"] = "error",
    ) -> np.ndarray:
        """Decoded mean counts (or counts sampled from the decoded distribution) at the posterior mean.

        Returns
        -------
        ``(n, G)`` float32 array in the model's gene order.
        """
        self.eval()
        out = []
        with torch.random.fork_rng():  # seed Distribution.sample without touching the caller's RNG state
            torch.manual_seed(seed)
            for batch in self._loader(adata, batch_size, unknown=unknown):
                mu, _ = self.encode(batch[BATCH_KEYS.COUNTS], batch[BATCH_KEYS.LIBRARY])
                dist = self.decode(
                    mu, batch[BATCH_KEYS.LIBRARY], self.batch_index(batch), batch.get(BATCH_KEYS.GENE_MASK)
                )
                out.append(dist.sample() if sample else dist.mean)
        return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, self.config.n_genes), np.float32)

    @torch.no_grad()
    def sample_posterior(
        self, adata: AnnData, *, n_samples: int = 1, batch_size: int = 1024, seed: int = 0
    ) -> np.ndarray:
        """Draw latent tokens from ``q(z | x)`` for every cell.

        Returns
        -------
        ``(n_samples, n, m, d)`` float32 array.
        """
        check_positive("n_samples", n_samples, integer=True)
        self.eval()
        gen = torch.Generator().manual_seed(seed)
        draws = []
        for batch in self._loader(adata, batch_size):
            mu, logvar = self.encode(batch[BATCH_KEYS.COUNTS], batch[BATCH_KEYS.LIBRARY])
            eps = torch.randn((n_samples, *mu.shape), generator=gen)
            draws.append(mu + eps * (0.5 * logvar).exp())
        return torch.cat(draws, dim=1).numpy()

    @torch.no_grad()
    def evaluate_nll(
        self, adata: AnnData, *, indices: np.ndarray | None = None, batch_size: int = 1024, seed: int = 0
    ) -> dict[str, float]:
        """Per-cell reconstruction NLL (at the posterior mean) and negative ELBO, averaged over cells.

        Parameters
        ----------
        adata
            Cells to score.
        indices
            Score only these rows (e.g. a split's validation cells).
        batch_size, seed
            Loader batch size; seed of the ELBO's posterior sample.
        """
        from genailab.data import make_dataloader

        self.eval()
        nll_sum, elbo_sum, n = 0.0, 0.0, 0
        loader = make_dataloader(self.count_dataset(adata, indices=indices), batch_size=batch_size, shuffle=False)
        # The ELBO's posterior sample (and DataLoader, which draws a base seed per iterator) must not move
        # the caller's RNG state.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for batch in loader:
                out = self.training_step(batch)
                mu, _ = self.encode(batch[BATCH_KEYS.COUNTS], batch[BATCH_KEYS.LIBRARY])
                library, mask = batch[BATCH_KEYS.LIBRARY], batch.get(BATCH_KEYS.GENE_MASK)
                dist = self.decode(mu, library, self.batch_index(batch), mask)
                nll_sum += float(masked_nll(dist, batch[BATCH_KEYS.COUNTS], mask).sum())
                elbo_sum += float(out.loss) * out.n_obs
                n += out.n_obs
        return {"nll_per_cell": nll_sum / max(n, 1), "neg_elbo_per_cell": elbo_sum / max(n, 1), "n_cells": n}

    # ------------------------------------------------------------------ training
    def fit(
        self,
        adata: AnnData,
        train: TrainConfig | None = None,
        *,
        out_dir: str | Path | None = None,
        split: Any = None,
        seed: int = 0,
    ) -> TrainResult:
        """Train with Lightning, then calibrate the latent scale and library model.

        Parameters
        ----------
        adata
            Training data (must match the model's genes).
        train
            Training settings (:class:`~genailab.training.TrainConfig`).
        out_dir
            Where checkpoints and CSV metrics go; a rerun with the same ``out_dir`` resumes from
            ``checkpoints/last.ckpt``.
        split
            A :class:`~genailab.data.Split` (default: a random split with ``train.val_fraction``).
        seed
            Seeds data order, initialisation-independent randomness and the split.

        Returns
        -------
        :class:`~genailab.training.TrainResult` with the split used and the final metrics.
        """
        from genailab.data import make_dataloader
        from genailab.training import TrainConfig, fit_recipe, split_indices, train_loaders

        train = train if train is not None else TrainConfig()
        split, train_idx, val_idx = split_indices(adata.n_obs, train, split, seed=seed)
        train_ds = self.count_dataset(adata, indices=train_idx)
        val_ds = self.count_dataset(adata, indices=val_idx) if len(val_idx) else None
        train_loader, val_loader = train_loaders(train_ds, val_ds, train, seed=seed)
        result = fit_recipe(self, train_loader, val_loader, train, out_dir=out_dir, seed=seed)
        self.calibrate(make_dataloader(train_ds, batch_size=1024, shuffle=False))
        result.split = split
        return result

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, *, extra_files: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors``, ``genes.json``, ``registry.json``, ``tokenizer.json`` and ``config.json``.

        Each file is written atomically and ``config.json`` is written last, so a directory without
        it is an unfinished save and :meth:`from_pretrained` refuses it. Other files in the directory
        (checkpoints, logs) are left alone.

        Parameters
        ----------
        directory
            Target directory (created if needed).
        extra_files
            More JSON files to write into the directory (name -> JSON-serialisable object).
        """
        d = check_writable(directory, argument="directory")
        (d / CONFIG_NAME).unlink(missing_ok=True)
        save_weights(d, self)
        atomic_write_json(d / GENES_NAME, {"genes": list(self.genes)})
        atomic_write_json(d / REGISTRY_NAME, self.registry.to_dict() if self.registry is not None else None)
        atomic_write_json(d / TOKENIZER_NAME, {"resources": self.resources.to_dict(), "report": self.encoder.report()})
        for name, obj in (extra_files or {}).items():
            atomic_write_json(d / name, obj)
        write_config(d, type(self).__name__, self.config.to_dict())
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LatentTokenVAE:
        """Load a directory written by :meth:`save_pretrained`, refusing corrupt or foreign ones."""
        from genailab.data import DataRegistry
        from genailab.errors import CheckpointError

        d = Path(directory)
        payload = read_config(d, cls.__name__)
        try:
            config = LatentTokenVAEConfig.from_dict(payload["config"])
        except (InvalidInputError, TypeError) as err:
            raise CheckpointError(f"{str(d / 'config.json')!r} holds an invalid config: {err}") from err
        genes_obj = read_json(d / GENES_NAME, what=f"model directory {str(d)!r}")
        if not isinstance(genes_obj, dict) or not isinstance(genes_obj.get("genes"), list):
            raise CheckpointError(f"{str(d / GENES_NAME)!r} must hold {{'genes': [...]}}.")
        reg_obj = read_json(d / REGISTRY_NAME, what=f"model directory {str(d)!r}")
        tok_obj = (
            read_json(d / TOKENIZER_NAME, what=f"model directory {str(d)!r}") if (d / TOKENIZER_NAME).is_file() else {}
        )
        try:
            registry = DataRegistry.from_dict(reg_obj) if reg_obj is not None else None
            resources = TokenizerResources.from_dict(tok_obj.get("resources") or {})
            model = cls(config, genes=genes_obj["genes"], registry=registry, resources=resources)
        except (InvalidInputError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"model directory {str(d)!r} is inconsistent: {err}") from err
        load_state_dict_strict(d, model)
        model.eval()
        return model

    def extra_repr(self) -> str:
        """Summary shown by ``print(model)``."""
        m, d = self.config.latent_shape
        c = self.config
        return (
            f"genes={c.n_genes}, tokenizer={c.tokenizer.name}, tokens={m}x{d}, likelihood={c.likelihood}, "
            f"version={__version__}"
        )


def _gene_ids(adata: AnnData, gene_key: str | None) -> list[str]:
    if gene_key is None:
        return [str(g) for g in adata.var_names]
    if gene_key not in adata.var.columns:
        from genailab.errors import MissingKeyError

        raise MissingKeyError(
            f"gene_key={gene_key!r} is not a var column; available columns: {list(adata.var.columns)}."
        )
    return [str(g) for g in adata.var[gene_key]]
