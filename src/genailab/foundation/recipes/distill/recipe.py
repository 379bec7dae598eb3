"""Distil a latent-diffusion teacher into a small student that samples in a few Euler steps.

``frozen teacher (noise -> 50-step ODE sample) -> pairs -> student rectified flow on straight paths``

Method (pattern F, "student from a frozen teacher"):

1. **Pairs.** Seeded Gaussian noise ``z`` is integrated by the frozen teacher's deterministic sampler
   (``teacher_steps`` steps, with its classifier-free guidance) into a latent sample ``x = T(z, c)``, with
   conditions ``c`` drawn (seeded, with replacement) from the real cells' encoded conditions, so the
   student sees the data's condition distribution.
2. **Student.** A new backbone of a smaller preset (same latent tokens and condition tokens; its
   :class:`~genailab.foundation.conditioning.ConditionEncoder` starts as a copy of the teacher's) is
   trained as a rectified flow on the straight paths ``x_t = (1 - t) x + t z`` with target ``z - x``
   ("reflow", Liu et al. 2022, "Flow Straight and Fast", arXiv:2209.03003). Paths that no longer cross
   make the learned ODE nearly straight, so a few Euler steps land where the teacher's many steps do;
   it plays the role of Salimans & Ho's progressive distillation (2022, arXiv:2202.00512), which
   halves the step count of a deterministic sampler repeatedly, in one stage. When the teacher is a
   flow model, the student's velocity also regresses the (guided) teacher velocity at the same
   ``(x_t, t, c)`` (output matching, Hinton et al. 2015, arXiv:1503.02531), and optionally its block
   features regress the teacher's (FitNets, Romero et al. 2015, arXiv:1412.6550). The teacher's guidance
   is baked into the pairs and the matched velocities (Meng et al. 2023, arXiv:2210.03142), so the
   student trains without condition dropout and samples with ``guidance_scale = 1``.
3. **Result.** An ordinary :class:`~genailab.foundation.recipes.LatentDiffusionModel` over the same VAE
   (``objective="flow"``, ``sampler="euler"``, ``steps=steps``) with EMA weights, saved and loaded like any
   other; the distillation record goes beside it as ``distill.json`` (:func:`save_distilled`).

Training runs through :func:`genailab.training.fit_recipe` on a :class:`DistilledStudent` recipe, so
checkpoints, resuming and early stopping work as for the teacher; with ``out_dir`` the pairs are cached in
``out_dir/pairs.safetensors`` and reused by a resumed run with the same teacher, conditions and settings.

Examples
--------
>>> teacher = LatentDiffusionModel.from_pretrained("runs/ldm")  # doctest: +SKIP
>>> conds = teacher.latent_dataset(adata).tensors["conditions"]  # doctest: +SKIP
>>> student, report = distill_latent_diffusion(  # doctest: +SKIP
...     teacher, conds, DistillConfig(student_preset="tiny", steps=4), TrainConfig(max_epochs=50), out_dir="runs/dist"
... )
>>> save_distilled(student, report, "runs/ldm_tiny4", vae_dir="runs/vae")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from genailab._version import __version__
from genailab.errors import InvalidInputError
from genailab.foundation.backbones import backbone_name
from genailab.foundation.recipes.distill.config import DistillConfig
from genailab.foundation.recipes.distill.pairs import TeacherPairDataset, cached_pairs, check_conditions
from genailab.foundation.recipes.distill.student import DistilledStudent, build_student
from genailab.foundation.recipes.latent_diffusion import LatentDiffusionModel
from genailab.io import atomic_write_json, check_writable
from genailab.training import TrainConfig, fit_recipe, seed_everything, split_indices, train_loaders

__all__ = ["DISTILL_RECORD", "distill_latent_diffusion", "save_distilled"]

#: File beside a saved student with the distillation report (:func:`save_distilled`).
DISTILL_RECORD = "distill.json"
#: Most pairs the fidelity check in the report samples again (student and teacher at ``steps``).
_FIDELITY_PAIRS = 512


def _n_params(model: LatentDiffusionModel) -> int:
    """Parameters of the trained parts (backbone + condition encoder; the frozen VAE is shared)."""
    return sum(p.numel() for m in (model.backbone, model.conditioning) for p in m.parameters())


@torch.no_grad()
def _fidelity(
    teacher: LatentDiffusionModel, student: LatentDiffusionModel, pairs: TeacherPairDataset, config: DistillConfig
) -> dict[str, float]:
    """Latent MSE to the teacher's ``teacher_steps`` samples: the student and the teacher at ``steps``."""
    n = min(len(pairs), _FIDELITY_PAIRS)
    noise, ref, cv = pairs.noise[:n], pairs.samples[:n], pairs.conditions[:n]
    dev = next(student.parameters()).device
    stu = student.sample_latents(cv.to(dev), steps=config.steps, x_start=noise.to(dev)).cpu()
    few = teacher.sample_latents(
        cv.to(dev),
        guidance_scale=config.guidance_scale,
        steps=config.steps,
        sampler=config.teacher_sampler,
        x_start=noise.to(dev),
    ).cpu()
    return {
        "n": n,
        "student_mse": float((stu - ref).pow(2).mean()),
        "teacher_same_steps_mse": float((few - ref).pow(2).mean()),
        "reference_variance": float(ref.var()),
    }


def distill_latent_diffusion(
    teacher: LatentDiffusionModel,
    conditions: torch.Tensor | None,
    config: DistillConfig,
    train: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    seed: int = 0,
) -> tuple[LatentDiffusionModel, dict[str, Any]]:
    """Distil ``teacher`` into a small student that samples in ``config.steps`` Euler steps.

    Parameters
    ----------
    teacher
        A trained :class:`LatentDiffusionModel` (frozen during distillation; its ``requires_grad`` flags and
        train/eval mode are restored afterwards).
    conditions
        ``(N, K)`` float encoded condition values of real training cells (what
        ``LatentDiffusionModel.conditions_from_batch`` / ``encode_conditions`` produce, e.g.
        ``teacher.latent_dataset(adata).tensors["conditions"]``), from which pair conditions are drawn
        (seeded); ``None`` for an unconditional teacher.
    config
        Distillation settings.
    train
        Training settings of the student (``val_fraction`` of the pairs validate and drive early stopping).
    out_dir
        Run directory: ``pairs.safetensors`` (reused by a rerun with the same teacher, conditions and
        settings), ``checkpoints/`` and ``logs/`` (a rerun resumes from ``checkpoints/last.ckpt``).
    seed
        Seeds the pairs, the split, the student's initialisation and its training.

    Returns
    -------
    ``(student, report)``: the student, an ordinary :class:`LatentDiffusionModel` over the teacher's VAE
    (EMA weights, eval mode, ``config.objective="flow"``, ``sampler="euler"``, ``steps=config.steps``), and
    a JSON-serialisable report: parameter counts, pairs, wall times, the training history and a fidelity
    check (latent MSE to the teacher's samples on held-out pairs for the student and for the teacher at
    the same number of steps). Save both with :func:`save_distilled`.

    Raises
    ------
    InvalidInputError
        For an unknown preset, conditions of the wrong shape or values, or wrong argument types.
    """
    if not isinstance(teacher, LatentDiffusionModel):
        raise InvalidInputError(f"teacher must be a LatentDiffusionModel, got {type(teacher).__name__}.")
    if not isinstance(config, DistillConfig):
        raise InvalidInputError(f"config must be a DistillConfig, got {type(config).__name__}.")
    if not isinstance(train, TrainConfig):
        raise InvalidInputError(f"train must be a TrainConfig, got {type(train).__name__}.")
    start = time.perf_counter()
    out = check_writable(out_dir, argument="out_dir") if out_dir is not None else None
    cond = check_conditions(teacher, conditions)
    seed_everything(seed)
    student = build_student(teacher, config)
    grad_flags = [p.requires_grad for p in teacher.parameters()]
    was_training = teacher.training
    try:
        t0 = time.perf_counter()
        pairs, reused = cached_pairs(teacher, cond, config, seed, out)
        pairs_wall = time.perf_counter() - t0
        recipe = DistilledStudent(teacher, student, config)
        _, train_idx, val_idx = split_indices(len(pairs), train, None, seed=seed)
        train_ds = pairs.subset(train_idx)
        val_ds = pairs.subset(val_idx) if len(val_idx) else None
        train_loader, val_loader = train_loaders(train_ds, val_ds, train, seed=seed)
        result = fit_recipe(recipe, train_loader, val_loader, train, out_dir=out, seed=seed)
        student.use_ema_weights()
        student.eval()
        fidelity = _fidelity(teacher, student, val_ds if val_ds is not None else train_ds, config)
    finally:
        for p, flag in zip(teacher.parameters(), grad_flags, strict=True):
            p.requires_grad_(flag)
        teacher.train(was_training)
    t_params, s_params = _n_params(teacher), _n_params(student)
    guidance = teacher.config.guidance_scale if config.guidance_scale is None else config.guidance_scale
    active = {"pair": True, "output": recipe.match_outputs, "feature": recipe.projection is not None}
    report: dict[str, Any] = {
        "method": "reflow step distillation (Liu et al. 2022) + output/feature matching",
        "genailab_version": __version__,
        "seed": seed,
        "config": config.to_dict(),
        "train_config": train.to_dict(),
        "terms": [name for name, on in active.items() if on],
        "teacher": {
            "backbone": backbone_name(teacher.backbone),
            "n_params": t_params,
            "objective": teacher.config.objective,
            "sampler": config.teacher_sampler,
            "steps": config.teacher_steps,
            "guidance_scale": guidance,
            "vae_source": teacher.vae_source,
        },
        "student": {
            "backbone": backbone_name(student.backbone),
            "preset": config.student_preset,
            "n_params": s_params,
            "sampler": student.config.sampler,
            "steps": student.config.steps,
        },
        "param_ratio": s_params / t_params if t_params else math.nan,
        "n_pairs": len(pairs),
        "n_train_pairs": len(train_ds),
        "n_val_pairs": len(val_ds) if val_ds is not None else 0,
        "pairs_reused": reused,
        "pairs_wall_s": pairs_wall,
        "train": result.to_dict(),
        "history": result.history,
        "fidelity": fidelity,
        "wall_s": time.perf_counter() - start,
    }
    return student, report


def save_distilled(
    student: LatentDiffusionModel,
    report: Mapping[str, Any],
    directory: str | Path,
    *,
    vae_dir: str | Path | None = None,
) -> Path:
    """Save a distilled student with its report: ``distill.json`` beside the model files.

    ``distill.json`` is written first and ``config.json`` (the model's completion marker) last, so a
    directory that loads has its record. ``LatentDiffusionModel.from_pretrained(directory)`` loads the
    student; ``vae_dir`` (the teacher's VAE directory) avoids a copy of the VAE, as in
    :meth:`LatentDiffusionModel.save_pretrained`.

    Parameters
    ----------
    student
        The student returned by :func:`distill_latent_diffusion`.
    report
        Its JSON-serialisable report, written as ``distill.json``.
    directory
        Model directory to write.
    vae_dir
        The teacher's saved VAE directory to reference instead of copying the VAE.

    Returns
    -------
    The model directory.
    """
    d = check_writable(directory, argument="directory")
    atomic_write_json(d / DISTILL_RECORD, dict(report))
    return student.save_pretrained(d, vae_dir=vae_dir)
