"""Distillation of a latent diffusion teacher into a small few-step student.

- :mod:`~genailab.foundation.recipes.distill.config`: :class:`DistillConfig`.
- :mod:`~genailab.foundation.recipes.distill.pairs`: teacher ``(noise -> sample)`` pairs and their cache.
- :mod:`~genailab.foundation.recipes.distill.student`: :func:`build_student` and the
  :class:`DistilledStudent` training recipe.
- :mod:`~genailab.foundation.recipes.distill.recipe`: :func:`distill_latent_diffusion` and
  :func:`save_distilled`.

Sampling speed of a student against its teacher is measured by ``benchmarks/bench_distill_sampling.py``,
not by the library.
"""

from genailab.foundation.backbones import backbone_presets
from genailab.foundation.recipes.distill.config import DistillConfig
from genailab.foundation.recipes.distill.pairs import NOISE_KEY, PAIRS_FILE, TeacherPairDataset, generate_teacher_pairs
from genailab.foundation.recipes.distill.recipe import DISTILL_RECORD, distill_latent_diffusion, save_distilled
from genailab.foundation.recipes.distill.student import DistilledStudent, build_student

__all__ = [
    "DISTILL_RECORD",
    "NOISE_KEY",
    "PAIRS_FILE",
    "DistillConfig",
    "DistilledStudent",
    "TeacherPairDataset",
    "backbone_presets",
    "build_student",
    "distill_latent_diffusion",
    "generate_teacher_pairs",
    "save_distilled",
]
