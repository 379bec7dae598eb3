"""The pure-torch latent-token count VAE: counts -> latent tokens -> NB/ZINB/Poisson counts.

:class:`LatentTokenVAEModule` is the network and its procedures on mini-batch tensors (encode, decode,
negative ELBO, calibration); it knows nothing of AnnData. The AnnData-facing model that registers
data, fits, predicts and saves is :class:`~genailab.foundation.recipes.vae.model.LatentTokenVAE`, a
subclass (so both share one state dict). Components:

- :class:`~genailab.tokenizers.LatentTokenEncoder` (or another registered tokenizer): ``q(z | x)``,
  ``z`` of shape ``(m, d)``;
- :class:`~genailab.foundation.recipes.vae.decoder.LatentTokenDecoder`: ``z`` (+ batch) -> a count
  :class:`~torch.distributions.Distribution` whose mean is ``library * softmax(...)``, so it scales
  linearly with library size;
- latent standardisation and a log-normal library model for generated cells (``library_model``:
  mean = per-batch intercept + a ridge regression on the standardised latent, or the per-batch
  intercept alone), both fitted after training (:meth:`LatentTokenVAEModule.calibrate`) and stored as
  buffers in ``model.safetensors``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from genailab._version import __version__
from genailab.constants import BATCH_KEYS
from genailab.errors import InvalidInputError
from genailab.foundation.objectives import LossOutput, gaussian_kl, linear_warmup
from genailab.foundation.recipes.vae.config import LatentTokenVAEConfig
from genailab.foundation.recipes.vae.decoder import LatentTokenDecoder
from genailab.foundation.recipes.vae.library import fit_library_model, library_features, library_offset
from genailab.likelihoods import masked_nll
from genailab.tokenizers import TOKENIZERS, TokenizerResources

__all__ = ["LatentTokenVAEModule"]


class LatentTokenVAEModule(nn.Module):
    """Latent-token count VAE network (the seed's ``LatentTokenEncoder`` + an NB/ZINB decoder).

    Works on mini-batch dicts keyed by :data:`~genailab.constants.BATCH_KEYS`; the AnnData-facing
    :class:`~genailab.foundation.recipes.vae.model.LatentTokenVAE` adds data registration, training,
    prediction and persistence on top.

    Parameters
    ----------
    config
        Architecture.
    genes
        The gene identifiers the model reads and writes, length ``config.n_genes`` (default
        ``gene_0 ... gene_{G-1}``).
    resources
        What the tokenizer is built from (gene sets, GRN edges, gene medians), in the model's gene-id
        space. Not needed by the default ``latent`` tokenizer.
    batch_column
        Column of the batch key in a mini-batch's ``BATCH_KEYS.CAT_COVS`` ``(B, C)`` codes; ``None``
        when the model has no batch key.

    Attributes
    ----------
    encoder
        The tokenizer: ``(counts (B, G), library (B, 1)) -> (mu, logvar)``, each ``(B, m, d)``.
    decoder
        :class:`~genailab.foundation.recipes.vae.decoder.LatentTokenDecoder`.
    latent_mean, latent_std
        ``(m, d)`` buffers of the latent standardisation (set by :meth:`calibrate`).
    log_library_mean, log_library_std
        ``(max(n_batches, 1),)`` buffers of the library model: per-batch intercept and residual SD of
        log library size.
    library_weight, library_offset_range
        ``(p,)`` ridge weights on the latent features of :func:`.library.library_features` (``p = m * d`` up to
        1,024, else ``d``) and the ``(2,)`` range of the latent offset over the training cells, to which
        generated cells' offsets are clipped (a latent off the training manifold must not extrapolate
        to absurd libraries); only with ``library_model="latent"``.
    calibrated
        ``()`` bool buffer, True once :meth:`calibrate` ran.
    """

    def __init__(
        self,
        config: LatentTokenVAEConfig,
        genes: Sequence[str] | None = None,
        resources: TokenizerResources | None = None,
        batch_column: int | None = None,
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
        self.batch_column = batch_column
        m, d = config.latent_shape
        self.decoder = LatentTokenDecoder(config, logits=self.encoder.decoder_logits())
        n_lib = max(config.n_batches, 1)
        self.register_buffer("latent_mean", torch.zeros(m, d))
        self.register_buffer("latent_std", torch.ones(m, d))
        self.register_buffer("log_library_mean", torch.full((n_lib,), math.log(1e3)))
        self.register_buffer("log_library_std", torch.ones(n_lib))
        if config.library_model == "latent":
            self.register_buffer("library_weight", torch.zeros(library_features(torch.zeros(1, m, d)).shape[1]))
            self.register_buffer("library_offset_range", torch.zeros(2))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))

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

    def reconstruct_batch(self, batch: dict[str, torch.Tensor]) -> torch.distributions.Distribution:
        """Count distribution over ``(B, G)`` decoded at the posterior mean of a mini-batch's cells."""
        mu, _ = self.encode(batch[BATCH_KEYS.COUNTS], batch[BATCH_KEYS.LIBRARY])  # (B, m, d)
        return self.decode(mu, batch[BATCH_KEYS.LIBRARY], self.batch_index(batch), batch.get(BATCH_KEYS.GENE_MASK))

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
        """Fit the latent standardisation and the library model on training data.

        Sets ``latent_mean``/``latent_std`` to the per-(token, dim) mean and std of posterior means, then
        the library model that :meth:`sample_library` draws generated cells' library sizes from: log
        library = per-batch intercept (+ ``library_weight`` . features of the standardised posterior
        mean, a ridge regression, with ``library_model="latent"``) + per-batch Gaussian residual.
        ``batches`` is iterated once per pass (one pass per fitted stage), so it must be re-iterable
        (a DataLoader).
        """
        was_training = self.training
        self.eval()
        m, d = self.config.latent_shape
        s1, s2, n = torch.zeros(m, d, dtype=torch.float64), torch.zeros(m, d, dtype=torch.float64), 0
        for batch in batches:
            mu = self.encode(batch[BATCH_KEYS.COUNTS], batch[BATCH_KEYS.LIBRARY])[0].double()
            s1 += mu.sum(0)
            s2 += mu.pow(2).sum(0)
            n += mu.shape[0]
        if n < 2:
            raise InvalidInputError(f"calibrate needs at least 2 cells, got {n}.")
        mean = s1 / n
        std = (s2 / n - mean.pow(2)).clamp(min=1e-12).sqrt()
        self.latent_mean.copy_(mean.float())
        self.latent_std.copy_(std.clamp(min=1e-4).float())
        fit_library_model(self, batches)
        self.calibrated.fill_(True)
        self.train(was_training)

    def sample_library(
        self,
        batch_index: torch.Tensor | None,
        n: int,
        generator: torch.Generator | None = None,
        z_std: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw ``(n, 1)`` library sizes for generated cells from the log-normal library model.

        Parameters
        ----------
        batch_index
            ``(n,)`` batch codes (``-1`` = unknown: the mean intercept and SD over batches) or ``None``.
        n
            Number of cells.
        generator
            Seeds the draw.
        z_std
            ``(n, m, d)`` standardised latents of the cells; required with ``library_model="latent"``
            (the library follows the cell's state), ignored with ``"batch"``.
        """
        idx = torch.zeros(n, dtype=torch.long) if batch_index is None else batch_index.clamp(min=0)
        mean, std = self.log_library_mean[idx], self.log_library_std[idx]  # (n,)
        if batch_index is not None:
            unknown = batch_index < 0
            mean = torch.where(unknown, self.log_library_mean.mean(), mean)
            std = torch.where(unknown, self.log_library_std.mean(), std)
        if hasattr(self, "library_weight"):
            if z_std is None or z_std.shape[0] != n:
                got = None if z_std is None else tuple(z_std.shape)
                raise InvalidInputError(
                    f"sample_library: library_model='latent' needs z_std of shape ({n}, m, d); got {got}."
                )
            mean = mean + library_offset(self, library_features(z_std))
        eps = torch.randn(n, generator=generator, device=mean.device)
        return (mean + std * eps).exp().round().clamp(min=1.0).unsqueeze(-1)

    def sample_counts(
        self,
        z_std: torch.Tensor,
        batch_index: torch.Tensor | None,
        *,
        seed: int,
        library: torch.Tensor | None = None,
    ) -> tuple[np.ndarray, torch.Tensor]:
        """Integer counts drawn from the decoder at standardised latents (how every generator decodes).

        Parameters
        ----------
        z_std
            ``(n, m, d)`` standardised latent tokens.
        batch_index
            ``(n,)`` batch codes (``-1`` = unknown batch) or ``None``.
        seed
            Library sizes use ``seed + 1``, the count draw ``seed + 2``; the caller's global RNG is untouched.
        library
            ``(n, 1)`` library sizes; ``None`` draws them from :meth:`sample_library`.

        Returns
        -------
        ``(counts (n, G) int32, library (n, 1))``.
        """
        if library is None:
            gen = torch.Generator().manual_seed(seed + 1)
            library = self.sample_library(batch_index, z_std.shape[0], gen, z_std=z_std)
        dist = self.decode(self.unstandardize(z_std), library, batch_index)
        with torch.random.fork_rng():  # Distribution.sample draws from the global generator; keep the caller's
            torch.manual_seed(seed + 2)
            counts = dist.sample()
        return counts.numpy().astype(np.int32), library

    def extra_repr(self) -> str:
        """Summary shown by ``print(model)``."""
        m, d = self.config.latent_shape
        c = self.config
        return (
            f"genes={c.n_genes}, tokenizer={c.tokenizer.name}, tokens={m}x{d}, likelihood={c.likelihood}, "
            f"version={__version__}"
        )
