"""The quick-start job behind ``genailab demo``: synthesis end to end on scanpy's bundled pbmc68k_reduced."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from genailab.constants import ADATA_KEYS
from genailab.data import DataSpec, Split, pbmc68k_reduced
from genailab.evaluation import evaluate_synthesis, write_synthesis_report
from genailab.evaluation.reports.vae import vae_report_metrics, write_vae_report
from genailab.foundation.recipes import LatentDiffusionConfig, LatentDiffusionModel
from genailab.io import atomic_write_json, check_writable, write_h5ad
from genailab.training import TrainConfig
from genailab.workflows.runconfig import SynthRunConfig
from genailab.workflows.rundir import read_run_summary, split_path
from genailab.workflows.synth import train_synth_on

__all__ = ["demo_config", "run_demo"]


def demo_config(*, seed: int = 0, quick: bool = False) -> SynthRunConfig:
    """The demo's settings: cell-type-conditioned synthesis on pbmc68k_reduced (``quick``: smoke-test sizes)."""
    if quick:
        return SynthRunConfig(
            seed=seed,
            data=DataSpec(cell_type_key="bulk_labels"),
            condition_keys=("bulk_labels",),
            vae_preset="tiny",
            vae_train=TrainConfig(max_epochs=2, batch_size=64, progress_bar=False),
            backbone_preset="tiny",
            diffusion=LatentDiffusionConfig(steps=4, sampler="euler"),
            train=TrainConfig(max_epochs=2, batch_size=64, progress_bar=False),
        )
    return SynthRunConfig(
        seed=seed,
        data=DataSpec(cell_type_key="bulk_labels"),
        condition_keys=("bulk_labels",),
        vae_preset="small",
        vae_train=TrainConfig(max_epochs=80, batch_size=64, lr=2e-3, early_stopping_patience=15, progress_bar=False),
        backbone="dit",
        backbone_preset="small",
        diffusion=LatentDiffusionConfig(),
        train=TrainConfig(
            max_epochs=250,
            batch_size=128,
            lr=1e-3,
            early_stopping_patience=40,
            val_fraction=0.1,
            progress_bar=False,
        ),
    )


def run_demo(out: str | Path = "demo_out", *, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    """The quick-start job on scanpy's bundled pbmc68k_reduced (no download).

    1. recover integer counts exactly from ``raw.X`` (log1p of counts normalised to 1e4) and ``n_counts``;
    2. train the VAE, then the cell-type-conditioned latent diffusion model (``model/``);
    3. write the VAE embedding (``embedding.h5ad``) and its report (``vae_report.html``);
    4. sample one synthetic cell per real cell with the same cell type (``synthetic.h5ad``);
    5. evaluate synthetic vs real cells beside a real-vs-real floor (``report.html``, ``metrics.json``).
    """
    out = check_writable(out, argument="--out")
    adata = pbmc68k_reduced()
    recovery = adata.uns.get("genailab_count_recovery", {})
    config = demo_config(seed=seed, quick=quick)
    summary = train_synth_on(adata, out / "model", config, data_desc={"source": "scanpy.datasets.pbmc68k_reduced"})
    model = LatentDiffusionModel.from_pretrained(out / "model")
    vae = model.vae
    z = vae.get_latent(adata, key=ADATA_KEYS.LATENT)
    embedding = write_h5ad(adata, out / "embedding.h5ad")
    vae_dir = out / "model" / "vae"
    vae_summary = read_run_summary(vae_dir)
    vae_metrics = vae_report_metrics(vae, adata, Split.load(split_path(vae_dir)), label_key="bulk_labels", z=z)
    vae_metrics["count_recovery"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in dict(recovery).items()}
    vae_metrics["train"] = vae_summary["train"]
    atomic_write_json(out / "vae_metrics.json", vae_metrics)
    write_vae_report(out / "vae_report.html", vae, adata, z, vae_summary, vae_metrics, label_key="bulk_labels")

    t0 = time.perf_counter()
    syn = model.sample(like=adata, seed=seed)
    sample_s = time.perf_counter() - t0
    synthetic = write_h5ad(syn, out / "synthetic.h5ad")
    metrics = evaluate_synthesis(adata, syn, condition_key="bulk_labels", seed=seed)
    metrics["sampling"] = {
        "cells": int(syn.n_obs),
        "wall_s": sample_s,
        "cells_per_s": syn.n_obs / max(sample_s, 1e-9),
        "sampler": model.config.sampler,
        "steps": model.config.steps,
    }
    metrics["training"] = {
        "vae": vae_summary["train"],
        "diffusion": summary["train"],
        "wall_s": summary["wall_s"],
    }
    report = write_synthesis_report(out, adata, syn, metrics, condition_key="bulk_labels", seed=seed)
    return {
        "report": str(report),
        "synthetic": str(synthetic),
        "embedding": str(embedding),
        "metrics": metrics,
    }
