"""Workflows behind ``genailab synth adapt``, ``genailab perturb adapt`` and ``genailab synth distill``.

Each checks its run directory through :class:`~genailab.workflows.rundir.RunDirectory` before reading
the inputs and writes the resolved config, seed and versions once they are read (a refusal before
training leaves ``--out`` free; a rerun with the same settings resumes from the run's last checkpoint),
then writes the model files (``config.json`` last), then the summary (method report, trainable vs total
parameters, wall time).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from genailab.data import read_h5ad
from genailab.errors import InvalidInputError
from genailab.foundation.recipes import LatentDiffusionModel, distill_latent_diffusion, load_model, save_distilled
from genailab.foundation.recipes.adapted import adapt_perturbation, adapt_synthesis, save_adapted
from genailab.io import check_writable
from genailab.serialization import vae_reference_dir
from genailab.training import seed_everything
from genailab.workflows.runconfig import (
    AdaptRunConfig,
    DistillRunConfig,
    PerturbAdaptRunConfig,
    resolve_run_config,
)
from genailab.workflows.rundir import RunDirectory, read_run_config

__all__ = ["adapt_perturb", "adapt_synth", "distill_synth"]


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
    out = check_writable(out, argument="--out")
    if tuning == "distill":
        return distill_synth(base_dir, out, data=data, config_path=config_path, sets=sets, seed=seed)
    cli = {"tuning.method": tuning, "seed": seed}
    config = resolve_run_config(config_path, list(sets or []), cli=cli, cls=AdaptRunConfig)
    run = RunDirectory.check(out, config, base=str(Path(base_dir).resolve()), data=str(Path(data).resolve()))
    adata = read_h5ad(data)
    t0 = time.perf_counter()
    with run.started():  # the base and the new cells are checked inside: a refusal leaves --out free
        model, record = adapt_synthesis(base_dir, adata, config.tuning, config.train, out_dir=out, seed=config.seed)
        save_adapted(model, out, base_dir=base_dir, record=record)
        return run.finish({**record, "wall_s": time.perf_counter() - t0})


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
    out = check_writable(out, argument="--out")
    if tuning == "distill":
        raise InvalidInputError(
            "--tuning distill applies to synthesis models (genailab synth distill); a perturbation model is "
            "already small. Choose full, linear_probe, adapter, lora, partial or conditioning."
        )
    cli = {"tuning.method": tuning, "seed": seed}
    config = resolve_run_config(config_path, list(sets or []), cli=cli, cls=PerturbAdaptRunConfig)
    run = RunDirectory.check(out, config, base=str(Path(base_dir).resolve()), data=str(Path(data).resolve()))
    adata = read_h5ad(data)
    t0 = time.perf_counter()
    with run.started():  # the base and the new cells are checked inside: a refusal leaves --out free
        model, record = adapt_perturbation(
            base_dir,
            adata,
            config.tuning,
            config.train,
            val_fraction=config.val_fraction,
            out_dir=out,
            seed=config.seed,
        )
        save_adapted(model, out, base_dir=base_dir, record=record)
        return run.finish({**record, "wall_s": time.perf_counter() - t0})


def _teacher_data(model_dir: Path, data: str | Path | None) -> Path:
    if data is not None:
        return Path(data)
    teacher_run = read_run_config(model_dir)
    if teacher_run is not None:
        path = teacher_run.get("data", {}).get("path")
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
    out = check_writable(out, argument="--out")
    model_dir = Path(model_dir)
    cli = {"distill.student_preset": student_preset, "distill.steps": steps, "seed": seed}
    config = resolve_run_config(config_path, list(sets or []), cli=cli, cls=DistillRunConfig)
    data_path = _teacher_data(model_dir, data)
    run = RunDirectory.check(out, config, teacher=str(model_dir.resolve()), data=str(data_path.resolve()))
    teacher = load_model(model_dir, expected=LatentDiffusionModel)
    vae_dir = vae_reference_dir(model_dir, teacher.vae_source or {})
    adata = read_h5ad(data_path)
    conditions = teacher.encode_conditions(adata, unknown="unknown") if teacher.config.condition_keys else None
    seed_everything(config.seed)
    t0 = time.perf_counter()
    with run.started():
        student, report = distill_latent_diffusion(
            teacher, conditions, config.distill, config.train, out_dir=out, seed=config.seed
        )
        save_distilled(student, {"teacher_dir": str(model_dir.resolve()), **report}, out, vae_dir=vae_dir)
        report = {k: v for k, v in report.items() if k != "history"}
        return run.finish({"kind": "distill", "distill": report, "wall_s": time.perf_counter() - t0})
