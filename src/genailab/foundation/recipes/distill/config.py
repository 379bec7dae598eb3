"""Settings of a distillation run: :class:`DistillConfig`.

The student's size is a preset of a registered backbone, looked up in :mod:`genailab.foundation.backbones`
(the one home of backbone presets); a preset of the teacher's own backbone (``student_backbone=None``) is
checked when the student is built (:func:`~genailab.foundation.recipes.distill.student.build_student`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from genailab.config import Config, check_choice, check_positive
from genailab.diffusion import SAMPLERS
from genailab.errors import InvalidInputError
from genailab.foundation.backbones import BACKBONES, backbone_presets

__all__ = ["STOCHASTIC_SAMPLERS", "DistillConfig"]

#: Samplers that draw fresh noise while they integrate; a pair needs a deterministic noise -> sample map.
STOCHASTIC_SAMPLERS = ("ddpm",)


@dataclass(frozen=True)
class DistillConfig(Config):
    """Settings of :func:`~genailab.foundation.recipes.distill.recipe.distill_latent_diffusion`.

    Parameters
    ----------
    student_backbone
        Registered backbone of the student; ``None`` = the teacher's backbone.
    student_preset
        A size preset of the student backbone's config class (``tiny``, ``small``, ...).
    steps
        Student sampling steps (1-4 typical); the student samples with ``euler``.
    teacher_steps, teacher_sampler
        Steps and deterministic sampler the teacher makes the pairs with (``ddpm`` is stochastic: refused).
    n_pairs
        Teacher ``(noise -> sample)`` pairs generated for step distillation.
    output_weight
        Weight of output matching (student velocity vs the guided teacher velocity at the same
        ``(x_t, t, c)``); used when the teacher's objective is ``flow`` (other parametrisations follow
        another path through time).
    pair_weight
        Weight of the rectified-flow (reflow) loss on straight paths between each pair.
    feature_weight
        Weight of feature matching on block outputs (both backbones must expose ``.blocks`` whose outputs
        share their layout, e.g. DiT -> DiT); 0 disables it.
    guidance_scale
        Teacher guidance used for the pairs and the matched velocities; ``None`` = the teacher's default.
    pair_batch_size
        Cells per teacher sampling batch while making pairs.

    Raises
    ------
    InvalidInputError
        For an unknown backbone or preset (the message lists the allowed ones) or an out-of-range value.
    """

    student_backbone: str | None = None
    student_preset: str = "tiny"
    steps: int = 4
    teacher_steps: int = 50
    teacher_sampler: str = "euler"
    n_pairs: int = 4096
    output_weight: float = 1.0
    pair_weight: float = 1.0
    feature_weight: float = 0.0
    guidance_scale: float | None = None
    pair_batch_size: int = 1024

    def __post_init__(self) -> None:
        """Validate every field, naming the field, its value and the allowed values."""
        if self.student_backbone is not None:
            BACKBONES.get(self.student_backbone)  # raises listing the registered backbones
            check_choice("student_preset", self.student_preset, backbone_presets(self.student_backbone))
        elif not isinstance(self.student_preset, str) or not self.student_preset:
            raise InvalidInputError(f"student_preset={self.student_preset!r} must be a preset name such as 'tiny'.")
        check_positive("steps", self.steps, integer=True)
        check_positive("teacher_steps", self.teacher_steps, integer=True)
        deterministic = [n for n in SAMPLERS.names() if n not in STOCHASTIC_SAMPLERS]
        check_choice("teacher_sampler", self.teacher_sampler, deterministic)
        check_positive("n_pairs", self.n_pairs, integer=True)
        for name in ("output_weight", "pair_weight", "feature_weight"):
            check_positive(name, getattr(self, name), strict=False)
        if self.output_weight + self.pair_weight <= 0:
            raise InvalidInputError(
                f"pair_weight={self.pair_weight} and output_weight={self.output_weight}: at least one must be "
                "positive (feature matching alone does not train the output layer)."
            )
        if self.guidance_scale is not None and (
            isinstance(self.guidance_scale, bool)
            or not isinstance(self.guidance_scale, (int, float))
            or not math.isfinite(self.guidance_scale)
        ):
            raise InvalidInputError(f"guidance_scale={self.guidance_scale!r} must be a finite number or None.")
        check_positive("pair_batch_size", self.pair_batch_size, integer=True)
