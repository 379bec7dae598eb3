"""The jobs behind ``genailab synth train | sample | counterfactual | evaluate``.

``train`` trains (or reuses) the VAE (:mod:`genailab.workflows.vae`), freezes it and trains the
conditional latent diffusion model; its run directory is opened through
:class:`~genailab.workflows.rundir.RunDirectory` once every input is validated, so a refused input
leaves ``--out`` free, a rerun with the same settings resumes and a different config is refused.
``sample`` and ``counterfactual`` read plain and adapted model directories alike
(:func:`~genailab.foundation.recipes.load_model`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from genailab.data import DataSpec, read_h5ad
from genailab.errors import InvalidInputError, MissingKeyError
from genailab.evaluation import evaluate_synthesis, write_synthesis_report
from genailab.evaluation.synthesis_ladder import synthesis_ladder
from genailab.foundation.recipes import LatentDiffusionModel, LatentTokenVAE, load_model
from genailab.io import check_writable, write_h5ad
from genailab.serialization import CONFIG_NAME
from genailab.training import seed_everything
from genailab.workflows.runconfig import SynthRunConfig, resolve_run_config
from genailab.workflows.rundir import RunDirectory, read_run_config, read_run_summary, write_output_record
from genailab.workflows.vae import VAEJob, prepare_vae

__all__ = [
    "counterfactual_synth",
    "evaluate_synth",
    "sample_synth",
    "train_synth",
    "train_synth_on",
]


def _register_condition_keys(adata: Any, spec: DataSpec, keys: tuple[str, ...]) -> DataSpec:
    """Add condition keys to the data spec: numeric obs columns as continuous, others as categorical."""
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
    config: SynthRunConfig,
    *,
    vae_dir: str | Path | None = None,
    data_desc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the synthesis stack on an AnnData (see :func:`train_synth`); returns the run summary.

    Everything that can refuse the input (condition keys, the VAE's data keys and tokenizer files, the
    backbone settings) is checked before ``run_config.json`` or ``vae/`` is written.
    """
    out = check_writable(out, argument="--out")
    spec = _register_condition_keys(adata, config.data, tuple(config.condition_keys))
    config = config.replace(data=spec)
    data_desc = dict(data_desc or {}, n_obs=int(adata.n_obs), n_vars=int(adata.n_vars))
    run = RunDirectory.check(out, config, data=data_desc, vae_dir=str(vae_dir) if vae_dir else None)

    t0 = time.perf_counter()
    vae_job: VAEJob | None = None
    if vae_dir is not None:
        vae_path = Path(vae_dir)
        vae = LatentTokenVAE.from_pretrained(vae_path)
    else:
        vae_path = out / "vae"
        if (vae_path / CONFIG_NAME).is_file():
            vae = LatentTokenVAE.from_pretrained(vae_path)
        else:  # not trained yet, or interrupted: validate now, (re)train / resume below
            vae_job = prepare_vae(adata, vae_path, config.vae_run(spec), data_desc=data_desc)
            vae = vae_job.model
    # refuse unregistered condition keys and bad backbone settings now (an untrained VAE's registry already
    # holds the condition keys)
    LatentDiffusionModel.build_parts(vae, **_diffusion_settings(config))

    with run.started():
        vae_summary: dict[str, Any] | None = None
        if vae_job is not None:
            vae_summary = vae_job.train()
            vae = LatentTokenVAE.from_pretrained(vae_path)
        elif vae_dir is None:
            vae_summary = _finished_summary(vae_path)
        t_vae = time.perf_counter() - t0

        seed_everything(config.seed)
        model = LatentDiffusionModel.from_vae(vae, **_diffusion_settings(config))
        result = model.fit(adata, config.train, out_dir=out, seed=config.seed)
        model.save_pretrained(out, vae_dir=vae_path)
        return run.finish(
            {
                "vae": {"dir": str(vae_path), "wall_s": t_vae, "metrics": (vae_summary or {}).get("metrics", {})},
                "backbone": {"name": config.backbone, **model.backbone.config.to_dict()},
                "n_trainable_parameters": sum(p.numel() for p in model.trained_modules().parameters()),
                "tuning": str(model.tuning_report),
                "train": result.to_dict(),
                "history": result.history,
                "wall_s": time.perf_counter() - t0,
            }
        )


def _diffusion_settings(config: SynthRunConfig) -> dict[str, Any]:
    """The keyword arguments of :meth:`LatentDiffusionModel.from_vae` that ``config`` sets."""
    return {
        "condition_keys": config.condition_keys,
        "backbone": config.backbone,
        "backbone_preset": config.backbone_preset,
        "backbone_overrides": dict(config.backbone_config),
        "config": config.diffusion,
    }


def _finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The ``run.json`` of a finished nested run (a rerun keeps reporting its VAE's metrics), if readable."""
    try:
        summary = read_run_summary(run_dir)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


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
    out = check_writable(out, argument="--out")
    if like is not None and (n is not None or conditions):
        raise InvalidInputError("give either --like REF.h5ad or --n with --condition, not both.")
    if like is None and n is None:
        raise InvalidInputError("give --n N (with --condition key=value) or --like REF.h5ad.")
    scale = _parse_guidance(guidance)
    model = load_model(model_dir, expected=LatentDiffusionModel)
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
    write_output_record(
        out,
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
    out = check_writable(out, argument="--out")
    if not set_conditions:
        raise InvalidInputError("give at least one --set-condition key=value.")
    model = load_model(model_dir, expected=LatentDiffusionModel)
    cf = model.counterfactual(
        read_h5ad(data),
        _parse_conditions(set_conditions, option="--set-condition"),
        strength=strength,
        guidance_scale=_parse_guidance(guidance),
        steps=steps,
        seed=seed,
    )
    write_h5ad(cf, out)
    write_output_record(
        out,
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


def _heldout_note(model_dir: Path, real: str | Path) -> dict[str, Any]:
    """Whether ``real`` is known to be the model's training data (then the ladder is in-sample)."""
    record = read_run_config(model_dir) or {}
    trained_on = (record.get("data") or {}).get("path")
    same = trained_on is not None and Path(trained_on).resolve() == Path(real).resolve()
    note = (
        "the real cells are the model's training data: the VAE ceiling and the latent-prior gap are in-sample "
        "(optimistic); evaluate on held-out cells for a fair ladder"
        if same
        else "the real cells should be cells the model did not train on (a held-out split)"
    )
    return {"model_trained_on": trained_on, "real_is_training_data": same, "note": note}


def evaluate_synth(
    real: str | Path,
    syn: str | Path,
    out_dir: str | Path,
    *,
    condition_key: str | None = None,
    layer: str | None = None,
    seed: int = 0,
    model_dir: str | Path | None = None,
    n_boot: int = 20,
) -> dict[str, Any]:
    """``genailab synth evaluate``: metrics JSON + HTML report of synthetic vs real cells.

    Parameters
    ----------
    real, syn
        Real (ideally held-out) cells and the synthetic cells generated like them (``.h5ad``).
    out_dir
        Report directory (``metrics.json``, ``report.html``).
    condition_key, layer, seed
        See :func:`~genailab.evaluation.evaluate_synthesis`.
    model_dir
        The model directory ``syn`` was sampled from (``--model``). Adds ``metrics["ladder"]``, the
        diagnosis rungs the model supports (:func:`~genailab.evaluation.synthesis_ladder.synthesis_ladder`:
        VAE ceiling, latent prior, library sizes and zeros, per condition), and a "Where the gap comes
        from" section to the report. ``syn`` generated by another model, or without its latents, has
        its latents re-sampled like ``real``.
    n_boot
        Random re-splits for the floors' spread in the ladder.
    """
    out_dir = check_writable(out_dir, argument="--out")
    real_ad, syn_ad = read_h5ad(real), read_h5ad(syn)
    metrics = evaluate_synthesis(real_ad, syn_ad, condition_key=condition_key, layer=layer, seed=seed)
    if model_dir is not None:
        model = load_model(model_dir, expected=LatentDiffusionModel)
        ladder = synthesis_ladder(
            model, real_ad, syn_ad, condition_key=condition_key, layer=layer, seed=seed, n_boot=n_boot
        )
        ladder["model_dir"] = str(Path(model_dir).resolve())
        ladder["heldout"] = _heldout_note(Path(model_dir), real)
        metrics["ladder"] = ladder
    write_synthesis_report(out_dir, real_ad, syn_ad, metrics, condition_key=condition_key, layer=layer, seed=seed)
    return metrics
