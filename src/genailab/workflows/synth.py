"""End-to-end jobs behind the CLI: train a VAE, encode cells, run the demo.

Each job validates its inputs before any expensive work, writes its resolved config, seed and
library versions before training (``run_config.json``) and its metrics after (``run.json``), and
writes every output atomically. Rerunning ``train`` with the same output directory resumes from the
last checkpoint; a different config in the same directory is refused rather than mixed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from genailab.errors import InvalidInputError
from genailab.io import atomic_write_json, check_writable, write_h5ad

__all__ = ["encode_vae", "run_demo", "train_vae", "train_vae_on"]

RUN_CONFIG = "run_config.json"
RUN_SUMMARY = "run.json"
SPLIT = "split.json"


def _check_same_run(out: Path, resolved: dict[str, Any]) -> None:
    prev = out / RUN_CONFIG
    if not prev.is_file():
        return
    import json

    try:
        old = json.loads(prev.read_text())
    except json.JSONDecodeError:
        return
    if old.get("config") != resolved["config"] or old.get("data") != resolved["data"]:
        raise InvalidInputError(
            f"out={str(out)!r} already holds a run with a different config or data; rerun with the same "
            "settings to resume it, or choose another --out."
        )


def train_vae_on(
    adata: Any, out: str | Path, config: Any, *, data_desc: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Train a :class:`~genailab.foundation.recipes.LatentTokenVAE` on an AnnData and save it to ``out``.

    Parameters
    ----------
    adata
        Training data (in memory or backed).
    out
        Run directory.
    config
        A :class:`~genailab.workflows.runconfig.VAERunConfig`.
    data_desc
        Description of the data source saved in the run files.

    Returns
    -------
    The run summary also written to ``out/run.json``.
    """
    from genailab.data import random_split
    from genailab.foundation.recipes import LatentTokenVAE
    from genailab.training import seed_everything
    from genailab.workflows.runconfig import versions

    out = check_writable(out)
    data_desc = dict(data_desc or {}, n_obs=int(adata.n_obs), n_vars=int(adata.n_vars))
    resolved = {"config": config.to_dict(), "seed": config.seed, "data": data_desc}
    _check_same_run(out, resolved)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RUN_CONFIG, {**resolved, "versions": versions()})

    seed_everything(config.seed)
    val_fraction = config.train.val_fraction
    split = (
        random_split(adata.n_obs, val_fraction=val_fraction, test_fraction=0.0, seed=config.seed)
        if val_fraction > 0
        else None
    )
    from genailab.tokenizers.resources import load_tokenizer_resources

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
    if split is not None:
        split.save(out / SPLIT)
    t0 = time.perf_counter()
    result = model.fit(adata, config.train, out_dir=out, split=split, seed=config.seed)
    metrics: dict[str, Any] = {}
    if split is not None:
        val = model.evaluate_nll(adata, indices=split.val)
        metrics.update(
            {
                "val_nll_per_cell": val["nll_per_cell"],
                "val_neg_elbo_per_cell": val["neg_elbo_per_cell"],
                "n_val_cells": val["n_cells"],
            }
        )
    model.save_pretrained(out)
    summary = {
        **resolved,
        "model_dir": str(out),
        "model": model.config.to_dict(),
        "tokenizer": {"name": model.config.tokenizer.name, **resources_report, **model.encoder.report()},
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "train": result.to_dict(),
        "metrics": metrics,
        "history": result.history,
        "wall_s": time.perf_counter() - t0,
        "versions": versions(),
    }
    atomic_write_json(out / RUN_SUMMARY, summary)
    return summary


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
    from genailab.data import read_h5ad
    from genailab.workflows.runconfig import resolve_run_config

    check_writable(out, argument="--out")
    config = resolve_run_config(
        config_path, list(sets or []), cli={"data.layer": layer, "data.batch_key": batch_key, "seed": seed}
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
    from genailab.config import check_choice
    from genailab.constants import ADATA_KEYS
    from genailab.data import GeneIdMap, read_h5ad
    from genailab.foundation.recipes import LatentTokenVAE
    from genailab.workflows.runconfig import versions

    out = check_writable(out, argument="--out")
    check_choice("--unknown", unknown, ("error", "unknown"))
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
    atomic_write_json(
        out.with_name(out.name + ".run.json"),
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


def demo_config(*, seed: int = 0, quick: bool = False) -> Any:
    """The demo's settings: cell-type-conditioned synthesis on pbmc68k_reduced (``quick``: smoke-test sizes)."""
    from genailab.data import DataSpec
    from genailab.foundation.recipes import LatentDiffusionConfig
    from genailab.training import TrainConfig
    from genailab.workflows.runconfig import SynthRunConfig

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
    from genailab.constants import ADATA_KEYS
    from genailab.data import pbmc68k_reduced
    from genailab.evaluation import evaluate_synthesis, write_synthesis_report
    from genailab.foundation.recipes import LatentDiffusionModel

    out = check_writable(out, argument="--out")
    adata = pbmc68k_reduced()
    recovery = adata.uns.get("genailab_count_recovery", {})
    config = demo_config(seed=seed, quick=quick)
    summary = train_synth_on(adata, out / "model", config, data_desc={"source": "scanpy.datasets.pbmc68k_reduced"})
    model = LatentDiffusionModel.from_pretrained(out / "model")
    vae = model.vae
    z = vae.get_latent(adata, key=ADATA_KEYS.LATENT)
    embedding = write_h5ad(adata, out / "embedding.h5ad")
    vae_summary = json.loads((out / "model" / "vae" / RUN_SUMMARY).read_text())
    vae_metrics = _vae_report_metrics(vae, adata, out / "model" / "vae", label_key="bulk_labels", z=z)
    vae_metrics["count_recovery"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in dict(recovery).items()}
    vae_metrics["train"] = vae_summary["train"]
    atomic_write_json(out / "vae_metrics.json", vae_metrics)
    _write_vae_report(out / "vae_report.html", vae, adata, z, vae_summary, vae_metrics, label_key="bulk_labels")

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


def _vae_report_metrics(model: Any, adata: Any, run_dir: Path, *, label_key: str, z: np.ndarray) -> dict[str, Any]:
    from genailab.data import Split, get_counts
    from genailab.evaluation import gene_nb_baseline_nll, knn_label_accuracy, marginal_agreement, silhouette

    split = Split.load(run_dir / SPLIT)
    counts = get_counts(adata)
    val = model.evaluate_nll(adata, indices=split.val)
    baseline = gene_nb_baseline_nll(counts[split.train], counts[split.val])
    recon = model.reconstruct(adata, sample=True, seed=0)
    labels = np.asarray(adata.obs[label_key])
    return {
        "val_nll_per_cell": val["nll_per_cell"],
        "val_neg_elbo_per_cell": val["neg_elbo_per_cell"],
        "baseline_gene_nb_nll_per_cell": baseline,
        "nll_improvement_over_baseline": baseline - val["nll_per_cell"],
        "knn_accuracy_latent": knn_label_accuracy(z, labels),
        "silhouette_latent": silhouette(z, labels),
        "posterior_predictive_marginals": marginal_agreement(counts, recon),
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
    }


def _write_vae_report(
    path: Path,
    model: Any,
    adata: Any,
    z: np.ndarray,
    summary: dict[str, Any],
    metrics: dict[str, Any],
    *,
    label_key: str,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    from genailab.evaluation import figure_to_html, write_html_report

    figs = []
    hist = summary.get("history", [])
    if hist:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for key in ("train/loss_epoch", "val/loss"):
            pts = [(h["epoch"], h[key]) for h in hist if key in h]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("negative ELBO per cell")
        ax.legend()
        figs.append(figure_to_html(fig, alt="loss curves"))
    pcs = PCA(n_components=2, random_state=0).fit_transform(z.reshape(len(z), -1))
    fig, ax = plt.subplots(figsize=(6, 4.5))
    labels = adata.obs[label_key].astype(str).to_numpy()
    for lab in np.unique(labels):
        sel = labels == lab
        ax.scatter(pcs[sel, 0], pcs[sel, 1], s=6, label=lab)
    ax.set_title(f"latent PCA coloured by {label_key}")
    ax.legend(fontsize=6, markerscale=2, loc="best")
    figs.append(figure_to_html(fig, alt="latent PCA"))
    rows = [{"metric": k, "value": v} for k, v in metrics.items() if isinstance(v, (int, float))]
    rows += [
        {"metric": f"posterior predictive {k}", "value": v}
        for k, v in metrics["posterior_predictive_marginals"].items()
    ]
    train = summary["train"]
    rows += [
        {"metric": "train cells/s", "value": train["train_cells_per_s"]},
        {"metric": "epochs", "value": train["epochs"]},
        {"metric": "wall s", "value": train["wall_s"]},
    ]
    model_rows = [{"field": k, "value": str(v)} for k, v in model.config.to_dict().items()]
    return write_html_report(
        path,
        "genailab VAE report: pbmc68k_reduced",
        [
            ("Metrics (validation cells)", rows),
            ("Figures", "".join(figs)),
            ("Model", model_rows),
            (
                "Reading this report",
                "<p>NLL is the negative log-likelihood of held-out cells' counts, summed over "
                "genes (nats per cell), at the posterior mean. The baseline is a library-scaled per-gene "
                "negative binomial: the VAE should beat it by a wide margin. kNN accuracy and silhouette "
                "measure how well the "
                "latent separates the FACS-sorted labels (never used in training).</p>",
            ),
        ],
    )


# ---------------------------------------------------------------------------------------- synthesis
def _register_condition_keys(adata: Any, spec: Any, keys: tuple[str, ...]) -> Any:
    """Add condition keys to the data spec: numeric obs columns as continuous, others as categorical."""
    import pandas as pd

    from genailab.errors import MissingKeyError

    registered = set(spec.categorical_keys()) | set(spec.continuous_keys())
    cat, cont = list(spec.categorical_covariate_keys), list(spec.continuous_covariate_keys)
    for key in keys:
        if key in registered:
            continue
        if key not in adata.obs.columns:
            raise MissingKeyError(
                f"--condition-keys names {key!r}, which is not an obs column; available: {list(adata.obs.columns)}."
            )
        col = adata.obs[key]
        numeric = pd.api.types.is_numeric_dtype(col) and not isinstance(col.dtype, pd.CategoricalDtype)
        (cont if numeric and col.nunique() > 12 else cat).append(key)
    return spec.replace(categorical_covariate_keys=tuple(cat), continuous_covariate_keys=tuple(cont))


def train_synth(
    data: str | Path,
    out: str | Path,
    *,
    layer: str | None = None,
    condition_keys: tuple[str, ...] | None = None,
    batch_key: str | None = None,
    config_path: str | Path | None = None,
    sets: list[str] | None = None,
    seed: int | None = None,
    vae_dir: str | Path | None = None,
    tokenizer: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``genailab synth train``: train (or reuse) the VAE, then the conditional diffusion model.

    ``tokenizer`` holds the CLI's tokenizer options (``tokenizer.name``, ``gene_sets``, ``grn``,
    ``gene_medians``, ``id_map``, ``symbols_key``); ``None`` values are left to the config.
    """
    from genailab.data import read_h5ad
    from genailab.workflows.runconfig import SynthRunConfig, resolve_run_config

    check_writable(out, argument="--out")
    cli = {
        "data.layer": layer,
        "data.batch_key": batch_key,
        "seed": seed,
        "condition_keys": list(condition_keys) if condition_keys is not None else None,
        **dict(tokenizer or {}),
    }
    config = resolve_run_config(config_path, list(sets or []), cli=cli, cls=SynthRunConfig)
    adata = read_h5ad(data)
    return train_synth_on(adata, out, config, vae_dir=vae_dir, data_desc={"path": str(Path(data).resolve())})


def train_synth_on(
    adata: Any,
    out: str | Path,
    config: Any,
    *,
    vae_dir: str | Path | None = None,
    data_desc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the synthesis stack on an AnnData (see :func:`train_synth`); returns the run summary."""
    from genailab.foundation.recipes import LatentDiffusionModel, LatentTokenVAE
    from genailab.serialization import CONFIG_NAME
    from genailab.training import seed_everything
    from genailab.workflows.runconfig import versions

    out = check_writable(out, argument="--out")
    spec = _register_condition_keys(adata, config.data, tuple(config.condition_keys))
    config = config.replace(data=spec)
    data_desc = dict(data_desc or {}, n_obs=int(adata.n_obs), n_vars=int(adata.n_vars))
    resolved = {
        "config": config.to_dict(),
        "seed": config.seed,
        "data": data_desc,
        "vae_dir": str(vae_dir) if vae_dir else None,
    }
    _check_same_run(out, resolved)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RUN_CONFIG, {**resolved, "versions": versions()})

    t0 = time.perf_counter()
    vae_summary: dict[str, Any] | None = None
    if vae_dir is not None:
        vae_path = Path(vae_dir)
        vae = LatentTokenVAE.from_pretrained(vae_path)
    else:
        vae_path = out / "vae"
        if not (vae_path / CONFIG_NAME).is_file():  # not trained yet, or interrupted: (re)train / resume
            vae_summary = train_vae_on(adata, vae_path, config.vae_run(spec), data_desc=data_desc)
        vae = LatentTokenVAE.from_pretrained(vae_path)
    t_vae = time.perf_counter() - t0

    seed_everything(config.seed)
    model = LatentDiffusionModel.from_vae(
        vae,
        condition_keys=config.condition_keys,
        backbone=config.backbone,
        backbone_preset=config.backbone_preset,
        backbone_overrides=dict(config.backbone_config),
        config=config.diffusion,
    )
    result = model.fit(adata, config.train, out_dir=out, seed=config.seed)
    model.save_pretrained(out, vae_dir=vae_path)
    summary = {
        **resolved,
        "model_dir": str(out),
        "vae": {"dir": str(vae_path), "wall_s": t_vae, "metrics": (vae_summary or {}).get("metrics", {})},
        "backbone": {"name": config.backbone, **model.backbone.config.to_dict()},
        "n_trainable_parameters": sum(p.numel() for p in model.trained_modules().parameters()),
        "tuning": str(model.tuning_report),
        "train": result.to_dict(),
        "history": result.history,
        "wall_s": time.perf_counter() - t0,
        "versions": versions(),
    }
    atomic_write_json(out / RUN_SUMMARY, summary)
    return summary


def _parse_conditions(items: list[str], *, option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"{option} {item!r} must look like key=value (e.g. {option} cell_type=B).")
        out[key.strip()] = value.strip()
    return out


def _parse_guidance(guidance: str | None) -> float | dict[str, float] | None:
    """``"2"`` -> 2.0; ``"cell_type=3,sample_id=0"`` -> per-key scales."""
    if guidance is None:
        return None
    if "=" in guidance:
        scales: dict[str, float] = {}
        for part in guidance.split(","):
            key, _, value = part.partition("=")
            try:
                scales[key.strip()] = float(value)
            except ValueError:
                raise InvalidInputError(f"--guidance {guidance!r}: {value!r} is not a number.") from None
        return scales
    try:
        return float(guidance)
    except ValueError:
        raise InvalidInputError(
            f"--guidance {guidance!r} must be a number or key=scale pairs (e.g. cell_type=3,sample_id=1)."
        ) from None


def sample_synth(
    model_dir: str | Path,
    out: str | Path,
    *,
    n: int | None = None,
    conditions: list[str] | None = None,
    like: str | Path | None = None,
    steps: int | None = None,
    guidance: str | None = None,
    sampler: str | None = None,
    seed: int = 0,
) -> Path:
    """``genailab synth sample``: write a synthetic AnnData (integer counts) atomically."""
    from genailab.data import read_h5ad
    from genailab.foundation.recipes import LatentDiffusionModel

    out = check_writable(out, argument="--out")
    if like is not None and (n is not None or conditions):
        raise InvalidInputError("give either --like REF.h5ad or --n with --condition, not both.")
    if like is None and n is None:
        raise InvalidInputError("give --n N (with --condition key=value) or --like REF.h5ad.")
    scale = _parse_guidance(guidance)
    model = LatentDiffusionModel.from_pretrained(model_dir)
    t0 = time.perf_counter()
    if like is not None:
        syn = model.sample(like=read_h5ad(like), guidance_scale=scale, steps=steps, sampler=sampler, seed=seed)
    else:
        syn = model.sample(
            n,
            _parse_conditions(conditions or [], option="--condition"),
            guidance_scale=scale,
            steps=steps,
            sampler=sampler,
            seed=seed,
        )
    wall = time.perf_counter() - t0
    syn.uns["genailab_sampling"]["model_dir"] = str(Path(model_dir).resolve())
    write_h5ad(syn, out)
    atomic_write_json(
        out.with_name(out.name + ".run.json"),
        {
            "command": "synth sample",
            "model_dir": str(Path(model_dir).resolve()),
            "n_obs": int(syn.n_obs),
            "like": str(like) if like else None,
            "conditions": conditions,
            "guidance": guidance,
            "steps": steps,
            "sampler": sampler,
            "seed": seed,
            "wall_s": wall,
            "cells_per_s": syn.n_obs / max(wall, 1e-9),
        },
    )
    return out


def counterfactual_synth(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    set_conditions: list[str],
    strength: float = 0.6,
    steps: int | None = None,
    guidance: str | None = None,
    seed: int = 0,
) -> Path:
    """``genailab synth counterfactual``: cell-paired counterfactual counts under changed conditions."""
    from genailab.data import read_h5ad
    from genailab.foundation.recipes import LatentDiffusionModel

    out = check_writable(out, argument="--out")
    if not set_conditions:
        raise InvalidInputError("give at least one --set-condition key=value.")
    model = LatentDiffusionModel.from_pretrained(model_dir)
    cf = model.counterfactual(
        read_h5ad(data),
        _parse_conditions(set_conditions, option="--set-condition"),
        strength=strength,
        guidance_scale=_parse_guidance(guidance),
        steps=steps,
        seed=seed,
    )
    write_h5ad(cf, out)
    atomic_write_json(
        out.with_name(out.name + ".run.json"),
        {
            "command": "synth counterfactual",
            "model_dir": str(Path(model_dir).resolve()),
            "data": str(data),
            "set_conditions": set_conditions,
            "strength": strength,
            "steps": steps,
            "guidance": guidance,
            "seed": seed,
        },
    )
    return out


def evaluate_synth(
    real: str | Path,
    syn: str | Path,
    out_dir: str | Path,
    *,
    condition_key: str | None = None,
    layer: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """``genailab synth evaluate``: metrics JSON + HTML report of synthetic vs real cells."""
    from genailab.data import read_h5ad
    from genailab.evaluation import evaluate_synthesis, write_synthesis_report

    out_dir = check_writable(out_dir, argument="--out")
    real_ad, syn_ad = read_h5ad(real), read_h5ad(syn)
    metrics = evaluate_synthesis(real_ad, syn_ad, condition_key=condition_key, layer=layer, seed=seed)
    write_synthesis_report(out_dir, real_ad, syn_ad, metrics, condition_key=condition_key, layer=layer, seed=seed)
    return metrics
