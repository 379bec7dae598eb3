"""The jobs behind ``genailab vae train | encode``.

``train`` validates its inputs before any expensive work and before it writes anything
(:func:`prepare_vae`), then starts its run directory through
:class:`~genailab.workflows.rundir.RunDirectory` (resolved config, seed and versions first; metrics
last) and writes every output atomically. Rerunning it with the same output directory resumes from the
last checkpoint; a different config in the same directory is refused rather than mixed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genailab.config import check_choice
from genailab.constants import ADATA_KEYS
from genailab.data import GeneIdMap, Split, random_split, read_h5ad
from genailab.foundation.recipes import LatentTokenVAE
from genailab.io import check_writable, write_h5ad
from genailab.tokenizers.resources import load_tokenizer_resources
from genailab.training import seed_everything
from genailab.workflows.runconfig import VAERunConfig, resolve_run_config, versions
from genailab.workflows.rundir import RunDirectory, write_output_record

__all__ = ["UNKNOWN_LABELS", "VAEJob", "encode_vae", "prepare_vae", "train_vae", "train_vae_on"]

UNKNOWN_LABELS = ("error", "unknown")  # ``--unknown``: what to do with batch labels the model never saw


@dataclass(frozen=True)
class VAEJob:
    """A validated VAE training job: its checked (not yet started) run directory, the built model and the split.

    :func:`prepare_vae` makes one without writing anything; :meth:`train` writes ``run_config.json``,
    trains and saves. A job that includes the VAE (``synth train``, ``perturb train``) prepares it before
    writing its own ``run_config.json``, so a refused input never locks either directory.
    """

    run: RunDirectory
    adata: Any
    config: VAERunConfig
    model: LatentTokenVAE
    split: Split | None
    resources_report: dict[str, Any]

    def train(self) -> dict[str, Any]:
        """Write ``run_config.json``, train, save the model and return the summary written to ``run.json``."""
        model, config, split = self.model, self.config, self.split
        with self.run.started() as run:
            if split is not None:
                split.save(run.split_path)
            t0 = time.perf_counter()
            result = model.fit(self.adata, config.train, out_dir=run.path, split=split, seed=config.seed)
            metrics: dict[str, Any] = {}
            if split is not None:
                val = model.evaluate_nll(self.adata, indices=split.val)
                metrics.update(
                    {
                        "val_nll_per_cell": val["nll_per_cell"],
                        "val_neg_elbo_per_cell": val["neg_elbo_per_cell"],
                        "n_val_cells": val["n_cells"],
                    }
                )
            model.save_pretrained(run.path)
            tokenizer = {"name": model.config.tokenizer.name, **self.resources_report, **model.encoder.report()}
            return run.finish(
                {
                    "model": model.config.to_dict(),
                    "tokenizer": tokenizer,
                    "n_parameters": sum(p.numel() for p in model.parameters()),
                    "train": result.to_dict(),
                    "metrics": metrics,
                    "history": result.history,
                    "wall_s": time.perf_counter() - t0,
                }
            )


def prepare_vae(
    adata: Any, out: str | Path, config: VAERunConfig, *, data_desc: dict[str, Any] | None = None
) -> VAEJob:
    """Check ``out``, validate the data and tokenizer files and build the model; write nothing.

    Parameters
    ----------
    adata, out, config, data_desc
        See :func:`train_vae_on`.

    Raises
    ------
    InvalidInputError
        ``out`` holds another run, or the data, keys or resource files are refused.
    """
    out = check_writable(out)
    data_desc = dict(data_desc or {}, n_obs=int(adata.n_obs), n_vars=int(adata.n_vars))
    run = RunDirectory.check(out, config, data=data_desc)
    seed_everything(config.seed)
    val_fraction = config.train.val_fraction
    split = (
        random_split(adata.n_obs, val_fraction=val_fraction, test_fraction=0.0, seed=config.seed)
        if val_fraction > 0
        else None
    )
    resources, resources_report = load_tokenizer_resources(
        adata, config, rows=split.train if split is not None else None, seed=config.seed
    )
    model = LatentTokenVAE.from_anndata(
        adata,
        config.data,
        preset=config.preset,
        overrides=config.vae_overrides(),
        tokenizer=config.tokenizer,
        resources=resources,
    )
    return VAEJob(run, adata, config, model, split, resources_report)


def train_vae_on(
    adata: Any, out: str | Path, config: VAERunConfig, *, data_desc: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Train a :class:`~genailab.foundation.recipes.LatentTokenVAE` on an AnnData and save it to ``out``.

    The inputs are validated (:func:`prepare_vae`) before ``run_config.json`` is written, so a refused
    input leaves ``out`` free for the corrected rerun.

    Parameters
    ----------
    adata
        Training data (in memory or backed).
    out
        Run directory.
    config
        A resolved :class:`~genailab.workflows.runconfig.VAERunConfig`.
    data_desc
        Description of the data source saved in the run files.

    Returns
    -------
    The run summary also written to ``out/run.json``.
    """
    return prepare_vae(adata, out, config, data_desc=data_desc).train()


def train_vae(
    data: str | Path,
    out: str | Path,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    config_path: str | Path | None = None,
    sets: list[str] | None = None,
    seed: int | None = None,
    backed: bool = False,
) -> dict[str, Any]:
    """``genailab vae train``: read, validate, train, save. See :func:`train_vae_on`."""
    check_writable(out, argument="--out")
    config = resolve_run_config(
        config_path,
        list(sets or []),
        cli={"data.layer": layer, "data.batch_key": batch_key, "seed": seed},
        cls=VAERunConfig,
    )
    adata = read_h5ad(data, backed=backed)
    return train_vae_on(adata, out, config, data_desc={"path": str(Path(data).resolve()), "backed": backed})


def encode_vae(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    gene_key: str | None = None,
    id_map: str | Path | None = None,
    min_overlap: float = 0.5,
    unknown: str = "error",
    standardize: bool = False,
) -> Path:
    """``genailab vae encode``: write DATA with the latent in ``obsm`` to ``out`` (atomically)."""
    out = check_writable(out, argument="--out")
    check_choice("--unknown", unknown, UNKNOWN_LABELS)
    model = LatentTokenVAE.from_pretrained(model_dir)
    adata = read_h5ad(data)
    gmap = GeneIdMap.from_tsv(id_map) if id_map is not None else None
    model.get_latent(
        adata,
        key=ADATA_KEYS.LATENT,
        standardize=standardize,
        unknown=unknown,
        id_map=gmap,
        min_overlap=min_overlap,
        gene_key=gene_key,
    )
    provenance = {
        "model_dir": str(Path(model_dir).resolve()),
        "standardized": standardize,
        "latent_shape": list(model.config.latent_shape),
        "versions": versions(),
    }
    adata.uns[ADATA_KEYS.UNS] = {k: (str(v) if isinstance(v, dict) else v) for k, v in provenance.items()}
    write_h5ad(adata, out)
    write_output_record(
        out,
        {
            "command": "vae encode",
            "data": str(Path(data).resolve()),
            "out": str(out),
            "gene_key": gene_key,
            "id_map": str(id_map) if id_map else None,
            "min_overlap": min_overlap,
            "unknown": unknown,
            **provenance,
            "n_obs": int(adata.n_obs),
        },
    )
    return out
