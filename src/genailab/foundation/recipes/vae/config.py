"""Architecture config of the latent-token count VAE and its named size presets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from genailab.config import Config, apply_overrides, check_choice, check_fraction, check_positive
from genailab.errors import InvalidInputError
from genailab.likelihoods import COUNT_HEADS, DISPERSIONS
from genailab.tokenizers import TokenizerConfig

__all__ = ["LIBRARY_MODELS", "PRESETS", "LatentTokenVAEConfig"]

#: How generated cells get library sizes (see ``LatentTokenVAEConfig.library_model``).
LIBRARY_MODELS = ("latent", "batch")


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
    library_model
        How generated cells get their library sizes: ``"latent"`` (the default) draws a log-normal
        whose mean is a ridge regression on the cell's standardised latent plus a per-batch intercept,
        so a monocyte gets a monocyte's library; ``"batch"`` draws from one log-normal per batch (the
        earlier model: saved configs without this field load as ``"batch"``).
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
    library_model: str = "latent"
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
        check_choice("library_model", self.library_model, LIBRARY_MODELS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatentTokenVAEConfig:
        """Build from a plain dict; a saved config without ``library_model`` predates it: ``"batch"``."""
        if isinstance(data, Mapping) and "library_model" not in data:
            data = {**data, "library_model": "batch"}
        return super().from_dict(data)

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

    @classmethod
    def for_data(
        cls,
        n_genes: int,
        n_batches: int = 0,
        *,
        preset: str = "small",
        overrides: Mapping[str, Any] | None = None,
        tokenizer: TokenizerConfig | None = None,
    ) -> LatentTokenVAEConfig:
        """The named preset sized for data of ``n_genes`` genes and ``n_batches`` batches.

        Parameters
        ----------
        n_genes, n_batches
            Set from the data; ``overrides`` may not change them.
        preset
            Size preset (``tiny``, ``small``, ``medium``, ``base``).
        overrides
            Config fields to change (typed values or CLI strings), e.g. ``{"likelihood": "zinb"}``.
        tokenizer
            Replaces the preset's tokenizer config when given.

        Raises
        ------
        InvalidInputError
            For an override of ``n_genes`` / ``n_batches``, an unknown preset or an invalid field.
        """
        overrides = dict(overrides or {})
        for fixed in ("n_genes", "n_batches"):
            if fixed in overrides:
                raise InvalidInputError(f"{fixed} is set from the data and cannot be overridden.")
        config = cls.preset(preset, n_genes, n_batches=n_batches)
        config = apply_overrides(config, overrides)  # accepts typed values and CLI strings
        return config.replace(tokenizer=tokenizer) if tokenizer is not None else config


PRESETS = ("tiny", "small", "medium", "base")
