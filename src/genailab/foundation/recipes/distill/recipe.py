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

import contextlib
import hashlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from genailab._version import __version__
from genailab.config import Config, check_choice, check_positive
from genailab.constants import BATCH_KEYS
from genailab.errors import InvalidInputError
from genailab.foundation.backbones import (
    BACKBONES,
    backbone_config,
    backbone_name,
    backbone_presets,
    build_backbone,
)
from genailab.foundation.conditioning import ConditionEncoder
from genailab.foundation.objectives import (
    FeatureProjection,
    LossOutput,
    feature_matching_loss,
    output_matching_loss,
)
from genailab.foundation.recipes.latent_diffusion import LatentDiffusionConfig, LatentDiffusionModel
from genailab.io import atomic_write, atomic_write_json, check_writable

if TYPE_CHECKING:
    from genailab.training import TrainConfig

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

#: File beside a saved student with the distillation report (:func:`save_distilled`).
DISTILL_RECORD = "distill.json"
#: Cache of the teacher pairs in a distillation run directory.
PAIRS_FILE = "pairs.safetensors"
#: Batch key of the pairs' starting noise ``(B, m, d)`` (the teacher's sample is ``BATCH_KEYS.LATENT``).
NOISE_KEY = "noise"
#: Samplers that draw fresh noise while they integrate; a pair needs a deterministic noise -> sample map.
STOCHASTIC_SAMPLERS = ("ddpm",)
#: Most pairs the fidelity check in the report samples again (student and teacher at ``steps``).
_FIDELITY_PAIRS = 512


def _check_preset(backbone: str, preset: str) -> None:
    presets = backbone_presets(backbone)
    if preset not in presets:
        raise InvalidInputError(
            f"student_preset={preset!r} is not a preset of backbone {backbone!r}; expected one of "
            f"{', '.join(map(repr, presets))}."
        )


@dataclass(frozen=True)
class DistillConfig(Config):
    """Settings of :func:`distill_latent_diffusion`.

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
        from genailab.diffusion import SAMPLERS

        if self.student_backbone is not None:
            BACKBONES.get(self.student_backbone)  # raises listing the registered backbones
            _check_preset(self.student_backbone, self.student_preset)
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


# ---------------------------------------------------------------------------------------------- pairs
class TeacherPairDataset(Dataset):
    """Teacher pairs as a map-style dataset of batch dicts (whole-batch reads, see ``make_dataloader``).

    ``dataset[positions]`` returns ``{"noise": (B, m, d), "latent": (B, m, d), "conditions": (B, K)}``:
    the starting noise, the teacher's sample from it and the conditions it was sampled under.

    Parameters
    ----------
    noise, samples
        ``(P, m, d)`` starting noise and teacher samples (standardised latents).
    conditions
        ``(P, K)`` condition values (``K = 0`` for an unconditional teacher).
    """

    def __init__(self, noise: torch.Tensor, samples: torch.Tensor, conditions: torch.Tensor) -> None:
        if noise.ndim != 3 or samples.shape != noise.shape:
            raise InvalidInputError(
                f"noise and samples must both be (P, m, d); got {tuple(noise.shape)} and {tuple(samples.shape)}."
            )
        if conditions.ndim != 2 or conditions.shape[0] != noise.shape[0]:
            raise InvalidInputError(
                f"conditions must be ({noise.shape[0]}, K) (one row per pair), got {tuple(conditions.shape)}."
            )
        self.tensors = {NOISE_KEY: noise, BATCH_KEYS.LATENT: samples, BATCH_KEYS.CONDITIONS: conditions}

    def __len__(self) -> int:
        return int(self.tensors[NOISE_KEY].shape[0])

    def __getitem__(self, idx: Any) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(np.atleast_1d(np.asarray(idx, dtype=np.int64)))  # (B,)
        return {k: v.index_select(0, index) for k, v in self.tensors.items()}

    @property
    def noise(self) -> torch.Tensor:
        """``(P, m, d)`` starting noise."""
        return self.tensors[NOISE_KEY]

    @property
    def samples(self) -> torch.Tensor:
        """``(P, m, d)`` teacher samples."""
        return self.tensors[BATCH_KEYS.LATENT]

    @property
    def conditions(self) -> torch.Tensor:
        """``(P, K)`` condition values."""
        return self.tensors[BATCH_KEYS.CONDITIONS]

    def subset(self, indices: Sequence[int] | np.ndarray) -> TeacherPairDataset:
        """The pairs at ``indices`` as a new dataset."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return TeacherPairDataset(self.noise[idx], self.samples[idx], self.conditions[idx])


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_conditions(model: LatentDiffusionModel, conditions: torch.Tensor | np.ndarray | None) -> torch.Tensor:
    """``(N, K)`` float32 CPU condition values validated against ``model``'s condition keys."""
    keys = model.config.condition_keys
    if conditions is None:
        if keys:
            raise InvalidInputError(
                f"conditions=None, but the model is conditioned on {list(keys)}; pass the (N, {len(keys)}) values "
                "of real cells (LatentDiffusionModel.encode_conditions or latent_dataset(adata))."
            )
        return torch.zeros(1, 0)
    if isinstance(conditions, np.ndarray):
        conditions = torch.from_numpy(np.asarray(conditions, dtype=np.float32))
    if not isinstance(conditions, torch.Tensor):
        raise InvalidInputError(f"conditions must be an (N, K) tensor or None, got {type(conditions).__name__}.")
    if conditions.ndim != 2 or conditions.shape[1] != len(keys) or conditions.shape[0] < 1:
        raise InvalidInputError(
            f"conditions must have shape (N >= 1, {len(keys)}) (one column per condition key {list(keys)}), "
            f"got {tuple(conditions.shape)}."
        )
    cond = conditions.detach().to(device="cpu", dtype=torch.float32)
    if not bool(torch.isfinite(cond).all()):
        raise InvalidInputError("conditions must be finite numbers (category codes or standardised values).")
    if keys:
        with torch.no_grad():  # checks category codes against the encoder, before any expensive work
            enc = model.conditioning
            enc(cond.to(_device(enc)), drop=torch.zeros(cond.shape, dtype=torch.bool, device=_device(enc)))
    return cond


def _draw_conditions(cond: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, K)`` rows of ``cond`` drawn with replacement (``(n, 0)`` for an unconditional model)."""
    if cond.shape[1] == 0:
        return torch.zeros(n, 0)
    return cond[torch.randint(0, cond.shape[0], (n,), generator=generator)]


@torch.no_grad()
def generate_teacher_pairs(
    teacher: LatentDiffusionModel,
    conditions: torch.Tensor | None,
    n_pairs: int,
    *,
    steps: int = 50,
    sampler: str = "euler",
    guidance_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 1024,
) -> TeacherPairDataset:
    """Integrate seeded noise with the frozen teacher into ``(noise, sample, conditions)`` pairs.

    Parameters
    ----------
    teacher
        The trained model (left in eval mode).
    conditions
        ``(N, K)`` encoded conditions of real cells; pair conditions are drawn from its rows (seeded, with
        replacement). ``None`` for an unconditional teacher.
    n_pairs
        Number of pairs.
    steps, sampler
        Teacher steps and deterministic sampler.
    guidance_scale
        Classifier-free guidance scale (``None`` = the teacher's default).
    seed
        Seeds the noise and the condition draws.
    batch_size
        Cells per sampling batch.

    Returns
    -------
    A :class:`TeacherPairDataset` of ``n_pairs`` pairs on the CPU.
    """
    check_positive("n_pairs", n_pairs, integer=True)
    check_positive("batch_size", batch_size, integer=True)
    if sampler in STOCHASTIC_SAMPLERS:
        raise InvalidInputError(f"sampler={sampler!r} is stochastic; pairs need a deterministic sampler.")
    cond = _check_conditions(teacher, conditions)
    gen = torch.Generator().manual_seed(seed)
    m, d = teacher.vae.config.latent_shape
    noise = torch.randn(n_pairs, m, d, generator=gen)  # (P, m, d)
    cv = _draw_conditions(cond, n_pairs, gen)  # (P, K)
    device = _device(teacher)
    samples = []
    for start in range(0, n_pairs, batch_size):
        sl = slice(start, start + batch_size)
        z = teacher.sample_latents(
            cv[sl].to(device),
            guidance_scale=guidance_scale,
            steps=steps,
            sampler=sampler,
            seed=seed,
            x_start=noise[sl].to(device),  # starting from x_start also keeps the noise on the model's device
            batch_size=batch_size,
        )
        samples.append(z.float().cpu())
    return TeacherPairDataset(noise, torch.cat(samples), cv)


def _fingerprint(teacher: LatentDiffusionModel, cond: torch.Tensor, config: DistillConfig, seed: int) -> str:
    """SHA-256 over the teacher's trained weights, the conditions and the pair settings."""
    h = hashlib.sha256()
    for module in (teacher.backbone, teacher.conditioning):
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(cond.contiguous().numpy().tobytes())
    settings = (config.n_pairs, config.teacher_steps, config.teacher_sampler, config.guidance_scale, seed)
    h.update(repr(settings).encode())
    return h.hexdigest()


def _cached_pairs(
    teacher: LatentDiffusionModel, cond: torch.Tensor, config: DistillConfig, seed: int, out_dir: Path | None
) -> tuple[TeacherPairDataset, bool]:
    """Pairs from ``out_dir/pairs.safetensors`` when they were made by the same teacher and settings."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open, save_file

    key = _fingerprint(teacher, cond, config, seed) if out_dir is not None else ""
    path = out_dir / PAIRS_FILE if out_dir is not None else None
    if path is not None and path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                same = (f.metadata() or {}).get("fingerprint") == key
            if same:
                t = load_file(str(path))
                return TeacherPairDataset(t[NOISE_KEY], t[BATCH_KEYS.LATENT], t[BATCH_KEYS.CONDITIONS]), True
        except (SafetensorError, OSError, KeyError, RuntimeError):
            pass  # a truncated or foreign cache is regenerated below
    pairs = generate_teacher_pairs(
        teacher,
        cond if teacher.config.condition_keys else None,
        config.n_pairs,
        steps=config.teacher_steps,
        sampler=config.teacher_sampler,
        guidance_scale=config.guidance_scale,
        seed=seed,
        batch_size=config.pair_batch_size,
    )
    if path is not None:
        state = {k: v.contiguous() for k, v in pairs.tensors.items()}
        atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"fingerprint": key}))
    return pairs, False


# ---------------------------------------------------------------------------------------------- student
def build_student(teacher: LatentDiffusionModel, config: DistillConfig) -> LatentDiffusionModel:
    """An untrained student for ``teacher``: a new backbone of ``config.student_preset`` over the same VAE.

    The student has the teacher's latent and condition-token shapes, a copy of the teacher's condition
    encoder without condition dropout (guidance is distilled in), and the config ``objective="flow"``,
    ``sampler="euler"``, ``steps=config.steps``, ``guidance_scale=1`` and the teacher's EMA decay. It is
    placed on the teacher's device.

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
    return student.to(_device(teacher))


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
            _device(self.student)
        )

    @torch.no_grad()
    def _probe(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Block outputs of both backbones on one dummy input (for their shapes)."""
        m, d = self.student.vae.config.latent_shape
        dev = _device(self.student)
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


# ---------------------------------------------------------------------------------------------- driver
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
    dev = _device(student)
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
    from genailab.training import TrainConfig, fit_recipe, seed_everything, split_indices, train_loaders

    if not isinstance(teacher, LatentDiffusionModel):
        raise InvalidInputError(f"teacher must be a LatentDiffusionModel, got {type(teacher).__name__}.")
    if not isinstance(config, DistillConfig):
        raise InvalidInputError(f"config must be a DistillConfig, got {type(config).__name__}.")
    if not isinstance(train, TrainConfig):
        raise InvalidInputError(f"train must be a TrainConfig, got {type(train).__name__}.")
    start = time.perf_counter()
    out = check_writable(out_dir, argument="out_dir") if out_dir is not None else None
    cond = _check_conditions(teacher, conditions)
    seed_everything(seed)
    student = build_student(teacher, config)
    grad_flags = [p.requires_grad for p in teacher.parameters()]
    was_training = teacher.training
    try:
        t0 = time.perf_counter()
        pairs, reused = _cached_pairs(teacher, cond, config, seed, out)
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
    """
    d = check_writable(directory, argument="directory")
    atomic_write_json(d / DISTILL_RECORD, dict(report))
    return student.save_pretrained(d, vae_dir=vae_dir)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def benchmark_sampling(
    model: LatentDiffusionModel,
    n: int,
    conditions: torch.Tensor | None = None,
    *,
    steps: int | None = None,
    sampler: str | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 2048,
) -> dict[str, Any]:
    """Time the generation of ``n`` latents (the diffusion part of sampling, without VAE decoding).

    Parameters
    ----------
    model
        A teacher or a student, on the device to time.
    n
        Number of cells.
    conditions
        ``(N, K)`` encoded conditions to draw ``n`` rows from (seeded, with replacement); ``None`` for an
        unconditional model.
    steps, sampler, guidance_scale
        Sampling settings (defaults from the model's config).
    seed
        Seeds the noise and the condition draws.
    batch_size
        Cells per sampling batch.

    Returns
    -------
    ``{"n", "steps", "sampler", "nfe", "guidance_scale", "wall_s", "cells_per_s", "device"}`` where
    ``nfe`` counts network evaluations per cell (doubled by classifier-free guidance with a scale != 1).
    A one-cell, one-step warm-up run is not timed.
    """
    from genailab.diffusion import nfe

    check_positive("n", n, integer=True)
    cond = _check_conditions(model, conditions)
    steps = model.config.steps if steps is None else steps
    sampler = model.config.sampler if sampler is None else sampler
    guidance = model.config.guidance_scale if guidance_scale is None else guidance_scale
    nfe_per_cell = nfe(sampler, steps) * (2 if (model.config.condition_keys and guidance != 1.0) else 1)
    gen = torch.Generator().manual_seed(seed)
    m, d = model.vae.config.latent_shape
    dev = _device(model)
    noise = torch.randn(n, m, d, generator=gen).to(dev)  # (n, m, d)
    cv = _draw_conditions(cond, n, gen).to(dev)  # (n, K)
    model.sample_latents(cv[:1], guidance_scale=guidance, steps=1, sampler=sampler, x_start=noise[:1])  # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    model.sample_latents(
        cv, guidance_scale=guidance, steps=steps, sampler=sampler, seed=seed, x_start=noise, batch_size=batch_size
    )
    _sync(dev)
    wall = time.perf_counter() - t0
    return {
        "n": n,
        "steps": steps,
        "sampler": sampler,
        "nfe": nfe_per_cell,
        "guidance_scale": guidance,
        "wall_s": wall,
        "cells_per_s": n / wall if wall > 0 else math.inf,
        "device": str(dev),
    }
