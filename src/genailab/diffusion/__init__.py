"""Diffusion procedures (no learnable parameters): noise schedules, objectives, samplers, guidance.

Continuous time ``t`` in ``[0, 1]`` (``t = 0`` data, ``t = 1`` noise), ``x_t = alpha(t) x0 +
sigma(t) eps`` on tensors of any shape ``(B, ...)`` (latent tokens ``(B, N, D)``). Components are
picked by name from :data:`SCHEDULES`, :data:`OBJECTIVES` and :data:`SAMPLERS`.

Examples
--------
>>> import torch
>>> from genailab.diffusion import make_objective, sample
>>> obj = make_objective("v", "cosine")
>>> x0, noise = torch.randn(4, 8, 16), torch.randn(4, 8, 16)
>>> t = obj.sample_t(4)
>>> obj.loss(obj.target(x0, noise, t), x0, noise, t).shape
torch.Size([4])
>>> x = sample("dpm++2m", lambda x, t: torch.zeros_like(x), obj, (4, 8, 16), steps=5)
"""

from genailab.diffusion.guidance import (
    ConditionFn,
    GuidedModel,
    cfg_combine,
    check_guidance,
    compose_guidance,
    guided_denoiser,
)
from genailab.diffusion.objectives import (
    OBJECTIVES,
    DiffusionObjective,
    EpsObjective,
    FlowObjective,
    VObjective,
    X0Objective,
    make_objective,
)
from genailab.diffusion.samplers import SAMPLERS, Denoiser, nfe, sample, time_grid
from genailab.diffusion.schedules import (
    SCHEDULES,
    CosineSchedule,
    FlowSchedule,
    LinearSchedule,
    NoiseSchedule,
    broadcast_to,
    make_schedule,
)

__all__ = [
    "OBJECTIVES",
    "SAMPLERS",
    "SCHEDULES",
    "ConditionFn",
    "CosineSchedule",
    "Denoiser",
    "DiffusionObjective",
    "EpsObjective",
    "FlowObjective",
    "FlowSchedule",
    "GuidedModel",
    "LinearSchedule",
    "NoiseSchedule",
    "VObjective",
    "X0Objective",
    "broadcast_to",
    "cfg_combine",
    "check_guidance",
    "compose_guidance",
    "guided_denoiser",
    "make_objective",
    "make_schedule",
    "nfe",
    "sample",
    "time_grid",
]
