"""Workflows behind ``genailab synth adapt``, ``genailab perturb adapt`` and ``genailab synth distill``.

Each writes ``run_config.json`` first (the resolved config, seed and versions; a rerun with the same
settings resumes from the run's last checkpoint), then the model files (``config.json`` last), then
``run.json`` (the summary: method report, trainable vs total parameters, wall time).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from genailab.errors import InvalidInputError
from genailab.io import atomic_write_json, check_writable

__all__ = ["adapt_perturb", "adapt_synth", "distill_synth"]

RUN_CONFIG = "run_config.json"
RUN_SUMMARY = "run.json"


def _resolve(config_path: Any, sets: list[str] | None, cli: dict[str, Any], cls: type) -> Any:
    from genailab.workflows.runconfig import resolve_run_config

    return resolve_run_config(config_path, list(sets or []), cli=cli, cls=cls)


def _start(out: Path, config: Any, extra: dict[str, Any]) -> dict[str, Any]:
    from genailab.workflows.runconfig import versions
    from genailab.workflows.synth import _check_same_run

    resolved = {"config": config.to_dict(), "seed": config.seed, **extra}
    _check_same_run(out, resolved)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RUN_CONFIG, {**resolved, "versions": versions()})
    return resolved


def adapt_synth(
    base_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    tuning: str | None = None,
    config_path: str | Path | None = None,
    sets: list[str] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """``genailab synth adapt``: adapt a trained synthesis model to new cells with one tuning method.

    ``tuning="distill"`` distils the base into a small few-step student instead (conditions drawn
    from the new cells). The adapted directory holds only the trained modules and refers to the base
    by path and hash; ``genailab synth sample`` reads it like any model directory.
    """
    from genailab.data import read_h5ad
    from genailab.foundation.recipes.adapted import adapt_synthesis, save_adapted
    from genailab.workflows.runconfig import AdaptRunConfig

    out = check_writable(out, argument="--out")
    if tuning == "distill":
        return distill_synth(base_dir, out, data=data, config_path=config_path, sets=sets, seed=seed)
    config = _resolve(config_path, sets, {"tuning.method": tuning, "seed": seed}, AdaptRunConfig)
    resolved = _start(out, config, {"base": str(Path(base_dir).resolve()), "data": str(Path(data).resolve())})
    adata = read_h5ad(data)
    t0 = time.perf_counter()
    train = config.train
    model, record = adapt_synthesis(base_dir, adata, config.tuning, train, out_dir=out, seed=config.seed)
    save_adapted(model, out, base_dir=base_dir, record=record)
    return _finish(out, resolved, record, t0)


def adapt_perturb(
    base_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    tuning: str | None = None,
    config_path: str | Path | None = None,
    sets: list[str] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """``genailab perturb adapt``: adapt a trained perturbation model to new cells (e.g. a new cell line).

    The new data holds control and perturbed cells of the new context; new context values extend
    the context tables and a share of the perturbation conditions re-calibrates the intervals.
    """
    from genailab.data import read_h5ad
    from genailab.foundation.recipes.adapted import adapt_perturbation, save_adapted
    from genailab.workflows.runconfig import PerturbAdaptRunConfig

    out = check_writable(out, argument="--out")
    if tuning == "distill":
        raise InvalidInputError(
            "--tuning distill applies to synthesis models (genailab synth distill); a perturbation model is "
            "already small. Choose full, linear_probe, adapter, lora, partial or conditioning."
        )
    config = _resolve(config_path, sets, {"tuning.method": tuning, "seed": seed}, PerturbAdaptRunConfig)
    resolved = _start(out, config, {"base": str(Path(base_dir).resolve()), "data": str(Path(data).resolve())})
    adata = read_h5ad(data)
    t0 = time.perf_counter()
    model, record = adapt_perturbation(
        base_dir, adata, config.tuning, config.train, val_fraction=config.val_fraction, out_dir=out, seed=config.seed
    )
    save_adapted(model, out, base_dir=base_dir, record=record)
    return _finish(out, resolved, record, t0)


def _finish(out: Path, resolved: dict[str, Any], record: dict[str, Any], t0: float) -> dict[str, Any]:
    from genailab.workflows.runconfig import versions

    summary = {
        **resolved,
        "model_dir": str(out),
        **record,
        "wall_s": time.perf_counter() - t0,
        "versions": versions(),
    }
    atomic_write_json(out / RUN_SUMMARY, summary)
    return summary


def _teacher_data(model_dir: Path, data: str | Path | None) -> Path:
    if data is not None:
        return Path(data)
    from genailab.serialization import read_json

    run = model_dir / RUN_CONFIG
    if run.is_file():
        path = read_json(run, what=f"run config {str(run)!r}").get("data", {}).get("path")
        if path and Path(path).is_file():
            return Path(path)
    raise InvalidInputError(
        f"--data is needed: {str(model_dir)!r} does not name a readable training data file; pass the cells whose "
        "conditions the student should learn (e.g. the teacher's training data)."
    )


def distill_synth(
    model_dir: str | Path,
    out: str | Path,
    *,
    data: str | Path | None = None,
    student_preset: str | None = None,
    steps: int | None = None,
    config_path: str | Path | None = None,
    sets: list[str] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """``genailab synth distill``: a small student that samples in a few steps, taught by a trained model.

    The teacher makes (noise -> sample) pairs with its many-step sampler; the student learns the
    straight paths between them and the teacher's velocities (see
    :func:`~genailab.foundation.recipes.distill.distill_latent_diffusion`). Conditions are drawn from
    ``data`` (default: the teacher run's training data).
    """
    from genailab.data import read_h5ad
    from genailab.foundation.recipes import LatentDiffusionModel
    from genailab.foundation.recipes.distill import distill_latent_diffusion, save_distilled
    from genailab.training import seed_everything
    from genailab.workflows.runconfig import DistillRunConfig

    out = check_writable(out, argument="--out")
    model_dir = Path(model_dir)
    cli = {"distill.student_preset": student_preset, "distill.steps": steps, "seed": seed}
    config = _resolve(config_path, sets, cli, DistillRunConfig)
    data_path = _teacher_data(model_dir, data)
    resolved = _start(out, config, {"teacher": str(model_dir.resolve()), "data": str(data_path.resolve())})
    teacher = LatentDiffusionModel.from_pretrained(model_dir)
    adata = read_h5ad(data_path)
    conditions = teacher.encode_conditions(adata, unknown="unknown") if teacher.config.condition_keys else None
    seed_everything(config.seed)
    t0 = time.perf_counter()
    student, report = distill_latent_diffusion(
        teacher, conditions, config.distill, config.train, out_dir=out, seed=config.seed
    )
    source = teacher.vae_source or {}
    vae_dir = model_dir / source["relative"] if source.get("relative") else Path(source["path"])
    save_distilled(student, {"teacher_dir": str(model_dir.resolve()), **report}, out, vae_dir=vae_dir)
    report = {k: v for k, v in report.items() if k != "history"}
    return _finish(out, resolved, {"kind": "distill", "distill": report}, t0)
