"""The AnnData-facing latent-token count VAE: register data, fit, embed, reconstruct, score, save and load.

:class:`LatentTokenVAE` subclasses the pure-torch
:class:`~genailab.foundation.recipes.vae.module.LatentTokenVAEModule` (module apart from model, as in
scvi-tools), so its state dict -- and every saved ``model.safetensors`` -- keeps the module's keys.
This is the default tokenization and the first stage of every recipe: synthesis trains a diffusion
model on its standardised latents, and perturbation models predict shifts of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from genailab.config import check_positive
from genailab.constants import ADATA_KEYS, BATCH_KEYS
from genailab.data import (
    CountsDataset,
    DataRegistry,
    DataSpec,
    GeneIdMap,
    align_genes,
    make_dataloader,
    setup_anndata,
    validate_counts,
)
from genailab.errors import CheckpointError, InvalidInputError, MissingKeyError
from genailab.foundation.recipes.vae.config import PRESETS, LatentTokenVAEConfig
from genailab.foundation.recipes.vae.decoder import LatentTokenDecoder
from genailab.foundation.recipes.vae.module import LatentTokenVAEModule
from genailab.io import atomic_write_json, check_writable
from genailab.likelihoods import masked_nll
from genailab.serialization import (
    CONFIG_NAME,
    load_state_dict_strict,
    read_config,
    read_json,
    save_weights,
    write_config,
)
from genailab.tokenizers import TokenizerConfig, TokenizerResources
from genailab.training import TrainConfig, TrainResult, fit_recipe, split_indices, train_loaders

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "GENES_NAME",
    "PRESETS",
    "REGISTRY_NAME",
    "TOKENIZER_NAME",
    "LatentTokenDecoder",
    "LatentTokenVAE",
    "LatentTokenVAEConfig",
    "LatentTokenVAEModule",
]

GENES_NAME = "genes.json"
REGISTRY_NAME = "registry.json"
TOKENIZER_NAME = "tokenizer.json"


class LatentTokenVAE(LatentTokenVAEModule):
    """Latent-token count VAE over AnnData (the seed's ``LatentTokenEncoder`` + an NB/ZINB decoder).

    Adds data registration, fitting, AnnData predictions and persistence to the network (the base class).

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
        super().__init__(config, genes, resources)
        self.registry = registry
        self.batch_column = _batch_column(self.config, registry)

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
        spec = spec if spec is not None else DataSpec()
        validate_counts(adata, layer=spec.layer)
        registry = setup_anndata(adata, spec)
        n_batches = registry.n_categories(spec.batch_key) if spec.batch_key else 0
        config = LatentTokenVAEConfig.for_data(
            adata.n_vars, n_batches, preset=preset, overrides=overrides, tokenizer=tokenizer
        )
        return cls(config, genes=_gene_ids(adata, gene_key), registry=registry, resources=resources)

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
        layer = self.registry.spec.layer if self.registry is not None else None
        validate_counts(adata, layer=layer)
        source = _gene_ids(adata, gene_key)
        alignment = None
        if tuple(source) != self.genes:
            alignment = align_genes(source, self.genes, id_map=id_map, min_overlap=min_overlap)
        registry = self.registry if self.registry is not None and self.registry.spec.categorical_keys() else None
        return CountsDataset(adata, registry, layer=layer, alignment=alignment, indices=indices, unknown=unknown)

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
        kw = {"unknown": unknown, "id_map": id_map, "min_overlap": min_overlap, "gene_key": gene_key}
        out = []
        for batch in _count_loader(self, adata, batch_size, **kw):
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
            for batch in _count_loader(self, adata, batch_size, unknown=unknown):
                dist = self.reconstruct_batch(batch)
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
        for batch in _count_loader(self, adata, batch_size):
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
        self.eval()
        nll_sum, elbo_sum, n = 0.0, 0.0, 0
        loader = make_dataloader(self.count_dataset(adata, indices=indices), batch_size=batch_size, shuffle=False)
        # The ELBO's posterior sample (and DataLoader, which draws a base seed per iterator) must not move
        # the caller's RNG state.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for batch in loader:
                out = self.training_step(batch)
                dist = self.reconstruct_batch(batch)
                nll_sum += float(masked_nll(dist, batch[BATCH_KEYS.COUNTS], batch.get(BATCH_KEYS.GENE_MASK)).sum())
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
        d = Path(directory)
        config, genes_obj, reg_obj, tok_obj = _read_model_files(d, cls.__name__)
        try:
            registry = DataRegistry.from_dict(reg_obj) if reg_obj is not None else None
            resources = TokenizerResources.from_dict(tok_obj.get("resources") or {})
            model = cls(config, genes=genes_obj["genes"], registry=registry, resources=resources)
        except (InvalidInputError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"model directory {str(d)!r} is inconsistent: {err}") from err
        load_state_dict_strict(d, model)
        model.eval()
        return model


def _count_loader(model: LatentTokenVAE, adata: AnnData, batch_size: int = 1024, **kw: Any) -> Any:
    """An unshuffled loader over :meth:`LatentTokenVAE.count_dataset` (``kw`` go to it)."""
    return make_dataloader(model.count_dataset(adata, **kw), batch_size=batch_size, shuffle=False)


def _read_model_files(d: Path, class_name: str) -> tuple[LatentTokenVAEConfig, dict[str, Any], Any, Any]:
    """The parsed ``config.json`` and the raw ``genes.json``, ``registry.json``, ``tokenizer.json`` of ``d``."""
    payload = read_config(d, class_name)
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
    return config, genes_obj, reg_obj, tok_obj


def _batch_column(config: LatentTokenVAEConfig, registry: DataRegistry | None) -> int | None:
    """Column of the batch key in the registry's categorical codes (``None`` without a batch key)."""
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


def _gene_ids(adata: AnnData, gene_key: str | None) -> list[str]:
    """Gene identifiers of ``adata``: ``var_names`` or the ``var[gene_key]`` column."""
    if gene_key is None:
        return [str(g) for g in adata.var_names]
    if gene_key not in adata.var.columns:
        raise MissingKeyError(
            f"gene_key={gene_key!r} is not a var column; available columns: {list(adata.var.columns)}."
        )
    return [str(g) for g in adata.var[gene_key]]
