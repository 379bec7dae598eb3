"""The student of a distillation: :func:`build_student` and the :class:`DistilledStudent` training recipe.

The student is a new backbone of a smaller preset over the teacher's VAE, trained as a rectified flow on
the straight paths between teacher pairs (Liu et al. 2022, arXiv:2209.03003), optionally also matching
the guided teacher velocity (Hinton et al. 2015, arXiv:1503.02531) and its block features (FitNets,
Romero et al. 2015, arXiv:1412.6550).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from genailab.constants import BATCH_KEYS
from genailab.errors import InvalidInputError
from genailab.foundation.backbones import backbone_config, backbone_name, build_backbone
from genailab.foundation.conditioning import ConditionEncoder
from genailab.foundation.objectives import (
    FeatureProjection,
    LossOutput,
    feature_matching_loss,
    output_matching_loss,
)
from genailab.foundation.recipes.distill.config import DistillConfig
from genailab.foundation.recipes.distill.pairs import NOISE_KEY
from genailab.foundation.recipes.latent_diffusion import LatentDiffusionConfig, LatentDiffusionModel

__all__ = ["DistilledStudent", "build_student"]


def build_student(teacher: LatentDiffusionModel, config: DistillConfig) -> LatentDiffusionModel:
    """An untrained student for ``teacher``: a new backbone of ``config.student_preset`` over the same VAE.

    The student has the teacher's latent and condition-token shapes, a copy of the teacher's condition
    encoder without condition dropout (guidance is distilled in), and the config ``objective="flow"``,
    ``sampler="euler"``, ``steps=config.steps``, ``guidance_scale=1`` and the teacher's EMA decay. It is
    placed on the teacher's device.

    Parameters
    ----------
    teacher
        The trained teacher.
    config
        Distillation settings (``student_backbone``, ``student_preset`` and ``steps`` are used).

    Returns
    -------
    The untrained student :class:`LatentDiffusionModel`, sharing the teacher's VAE.

    Raises
    ------
    InvalidInputError
        If the preset is not one of the student backbone's presets.
    """
    name = config.student_backbone or backbone_name(teacher.backbone)
    keys = teacher.config.condition_keys
    m, d = teacher.vae.config.latent_shape
    tc = teacher.conditioning
    conditioning = ConditionEncoder(tc.config.replace(dropout=tuple(0.0 for _ in keys)))
    state = dict(tc.state_dict())
    state["p_drop"] = conditioning.p_drop.clone()  # keep the student's zero dropout
    conditioning.load_state_dict(state)
    bconf = backbone_config(
        name, config.student_preset, m, d, len(keys), tc.config.dim if keys else 0, argument="student_preset"
    )
    student_config = LatentDiffusionConfig(
        objective="flow",
        condition_keys=keys,
        condition_dim=teacher.config.condition_dim,
        condition_dropout=0.0,
        sampler="euler",
        steps=config.steps,
        guidance_scale=1.0,
        ema_decay=teacher.config.ema_decay,
    )
    student = LatentDiffusionModel(build_backbone(name, bconf), conditioning, teacher.vae, teacher.vae, student_config)
    return student.to(next(teacher.parameters()).device)


def _blocks(backbone: nn.Module, role: str) -> nn.ModuleList:
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise InvalidInputError(
            f"feature_weight > 0 needs the {role} backbone to expose its blocks as `.blocks`; "
            f"{type(backbone).__name__} does not. Set feature_weight=0 or use e.g. the 'dit' or 'mlp' backbone."
        )
    return blocks


@contextlib.contextmanager
def _capture(blocks: Sequence[nn.Module]) -> Iterator[list[torch.Tensor | None]]:
    """Record each block's output of the first forward pass inside the ``with`` body."""
    out: list[torch.Tensor | None] = [None] * len(blocks)

    def hook_for(i: int) -> Any:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if out[i] is None:
                out[i] = output

        return hook

    handles = [block.register_forward_hook(hook_for(i)) for i, block in enumerate(blocks)]
    try:
        yield out
    finally:
        for handle in handles:
            handle.remove()


class DistilledStudent(nn.Module):
    """Recipe that trains a student :class:`LatentDiffusionModel` from a frozen teacher on teacher pairs.

    ``training_step(batch, epoch=...) -> LossOutput`` on batches of :class:`TeacherPairDataset`; the loss is
    ``pair_weight * reflow + output_weight * output matching + feature_weight * feature matching`` (see the
    module docstring). Only the student's backbone and condition encoder and the feature projections train;
    the teacher stays frozen and in eval mode (also when the recipe is put in train mode), and the student
    keeps an EMA of its weights (:meth:`on_train_batch_end`).

    Parameters
    ----------
    teacher
        The trained teacher; its parameters are frozen here (:func:`distill_latent_diffusion` restores them).
    student
        A student from :func:`build_student` (flow objective, same latent and condition shapes).
    config
        Distillation settings.

    Notes
    -----
    With ``feature_weight > 0`` student block ``i`` of ``L_s`` is matched to teacher block
    ``(i + 1) L_t // L_s - 1`` (the last blocks match), through a :class:`FeatureProjection` from the
    student's to the teacher's width. Teacher features come from its fully conditioned, unguided pass.
    """

    def __init__(self, teacher: LatentDiffusionModel, student: LatentDiffusionModel, config: DistillConfig) -> None:
        super().__init__()
        if student.config.objective != "flow":
            raise InvalidInputError(f"the student must use the 'flow' objective, got {student.config.objective!r}.")
        if student.vae.config.latent_shape != teacher.vae.config.latent_shape:
            raise InvalidInputError(
                f"student latents {student.vae.config.latent_shape} differ from the teacher's "
                f"{teacher.vae.config.latent_shape}."
            )
        if student.config.condition_keys != teacher.config.condition_keys:
            raise InvalidInputError(
                f"student condition keys {student.config.condition_keys} differ from the teacher's "
                f"{teacher.config.condition_keys}."
            )
        self.config = config
        self.teacher = teacher.requires_grad_(False).eval()
        self.student = student
        self.guidance = float(teacher.config.guidance_scale if config.guidance_scale is None else config.guidance_scale)
        self.match_outputs = config.output_weight > 0 and teacher.config.objective == "flow"
        self.projection: FeatureProjection | None = None
        self._student_blocks: list[nn.Module] = []
        self._teacher_blocks: list[nn.Module] = []
        if config.feature_weight > 0:
            self._setup_feature_matching()

    def _setup_feature_matching(self) -> None:
        s_blocks = _blocks(self.student.backbone, "student")
        t_blocks = _blocks(self.teacher.backbone, "teacher")
        ls, lt = len(s_blocks), len(t_blocks)
        self._student_blocks = list(s_blocks)
        self._teacher_blocks = [t_blocks[(i + 1) * lt // ls - 1] for i in range(ls)]
        s_feats, t_feats = self._probe()
        for i, (s, t) in enumerate(zip(s_feats, t_feats, strict=True)):
            if s.shape[:-1] != t.shape[:-1]:
                raise InvalidInputError(
                    f"feature matching: student block {i} outputs {tuple(s.shape)} but the matched teacher block "
                    f"outputs {tuple(t.shape)}; the layouts differ (e.g. MLP vs DiT). Set feature_weight=0."
                )
        self.projection = FeatureProjection([s.shape[-1] for s in s_feats], [t.shape[-1] for t in t_feats]).to(
            next(self.student.parameters()).device
        )

    @torch.no_grad()
    def _probe(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Block outputs of both backbones on one dummy input (for their shapes)."""
        m, d = self.student.vae.config.latent_shape
        dev = next(self.student.parameters()).device
        x, t = torch.zeros(1, m, d, device=dev), torch.full((1,), 0.5, device=dev)
        feats = []
        for model, blocks in ((self.student, self._student_blocks), (self.teacher, self._teacher_blocks)):
            bc = model.backbone.config
            cond = torch.zeros(1, bc.n_cond_tokens, bc.cond_dim, device=dev) if bc.conditional else None
            was_training = model.backbone.training
            model.backbone.eval()
            with _capture(blocks) as out:
                model.backbone(x, t, cond)
            model.backbone.train(was_training)
            feats.append([f for f in out if f is not None])
        return feats[0], feats[1]

    def train(self, mode: bool = True) -> DistilledStudent:
        """Set train/eval mode; the teacher always stays in eval mode (no dropout, no condition dropout)."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def _teacher_outputs(
        self, x_t: torch.Tensor, t: torch.Tensor, cond_values: torch.Tensor
    ) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        """The guided teacher velocity (when matched) and its block features (when matched)."""
        teacher = self.teacher
        pred, feats = None, []
        if self._teacher_blocks:
            keys = teacher.config.condition_keys
            b = x_t.shape[0]
            drop = torch.zeros(b, len(keys), dtype=torch.bool, device=x_t.device)
            cond = teacher.conditioning(cond_values, drop=drop) if keys else None  # (B, K, C)
            with _capture(self._teacher_blocks) as feats:
                full = teacher.backbone(x_t, t, cond)  # (B, m, d)
            if self.guidance == 1.0:
                pred = full
        if self.match_outputs and pred is None:
            pred = teacher.denoiser(cond_values, self.guidance)(x_t, t)  # (B, m, d), guided
        return pred, feats

    def training_step(self, batch: Mapping[str, torch.Tensor], *, epoch: float | None = None) -> LossOutput:
        """Distillation loss on a batch of pairs ``noise``, ``latent`` ``(B, m, d)``, ``conditions`` ``(B, K)``."""
        x0, z1, cv = batch[BATCH_KEYS.LATENT], batch[NOISE_KEY], batch[BATCH_KEYS.CONDITIONS]
        student, cfg = self.student, self.config
        b = x0.shape[0]
        t = student.objective.sample_t(b, device=x0.device)  # (B,)
        x_t = student.objective.add_noise(x0, z1, t)  # (B, m, d) on the straight path between the pair
        cond = student.conditioning(cv) if student.config.condition_keys else None  # (B, K, C)
        with _capture(self._student_blocks) as s_feats:
            pred = student.backbone(x_t, t, cond)  # (B, m, d) velocity
        pair = student.objective.loss(pred, x0, z1, t).mean()
        loss = cfg.pair_weight * pair
        terms = {"pair": pair.detach()}
        if self.match_outputs or self._teacher_blocks:
            t_pred, t_feats = self._teacher_outputs(x_t, t, cv)
            if self.match_outputs:
                out = output_matching_loss(pred, t_pred).mean()
                loss = loss + cfg.output_weight * out
                terms["output"] = out.detach()
            if self._teacher_blocks:
                feat = feature_matching_loss(s_feats, t_feats, self.projection).mean()
                loss = loss + cfg.feature_weight * feat
                terms["feature"] = feat.detach()
        return LossOutput(loss=loss, terms=terms, n_obs=b)

    def on_train_batch_end(self) -> None:
        """Update the student's EMA weights (called by the training layer after each optimiser step)."""
        self.student.on_train_batch_end()
