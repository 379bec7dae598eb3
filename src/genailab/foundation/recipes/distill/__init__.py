"""Distillation of a latent diffusion teacher into a small few-step student."""

from genailab.foundation.recipes.distill.recipe import (
    DISTILL_RECORD,
    NOISE_KEY,
    PAIRS_FILE,
    DistillConfig,
    DistilledStudent,
    TeacherPairDataset,
    backbone_presets,
    benchmark_sampling,
    build_student,
    distill_latent_diffusion,
    generate_teacher_pairs,
    save_distilled,
)

__all__ = [
    "DISTILL_RECORD",
    "NOISE_KEY",
    "PAIRS_FILE",
    "DistillConfig",
    "DistilledStudent",
    "TeacherPairDataset",
    "backbone_presets",
    "benchmark_sampling",
    "build_student",
    "distill_latent_diffusion",
    "generate_teacher_pairs",
    "save_distilled",
]
