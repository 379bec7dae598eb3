"""Teacher pairs: seeded noise integrated by the frozen teacher, and their cache in a run directory.

Seeded Gaussian noise ``z`` is integrated by the teacher's deterministic sampler into a latent sample
``x = T(z, c)``, with conditions ``c`` drawn (seeded, with replacement) from the real cells' encoded
conditions (:func:`generate_teacher_pairs`). :func:`cached_pairs` keeps them in ``out_dir/pairs.safetensors``
keyed by a fingerprint of the teacher's weights, the conditions and the pair settings, so a rerun with the
same inputs reuses them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from genailab.config import check_positive
from genailab.constants import BATCH_KEYS
from genailab.errors import InvalidInputError
from genailab.foundation.recipes.distill.config import STOCHASTIC_SAMPLERS, DistillConfig
from genailab.foundation.recipes.latent_diffusion import LatentDiffusionModel
from genailab.io import atomic_write

__all__ = [
    "NOISE_KEY",
    "PAIRS_FILE",
    "TeacherPairDataset",
    "cached_pairs",
    "check_conditions",
    "draw_conditions",
    "generate_teacher_pairs",
]

#: Cache of the teacher pairs in a distillation run directory.
PAIRS_FILE = "pairs.safetensors"
#: Batch key of the pairs' starting noise ``(B, m, d)`` (the teacher's sample is ``BATCH_KEYS.LATENT``).
NOISE_KEY = "noise"


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


def check_conditions(model: LatentDiffusionModel, conditions: torch.Tensor | np.ndarray | None) -> torch.Tensor:
    """Validate encoded condition values against ``model``'s condition keys.

    Parameters
    ----------
    model
        The model the conditions are for; category codes are checked by its condition encoder.
    conditions
        ``(N, K)`` encoded condition values (one column per condition key), or ``None`` for an
        unconditional model.

    Returns
    -------
    ``(N, K)`` float32 condition values on the CPU (``(1, 0)`` for an unconditional model and ``None``).

    Raises
    ------
    InvalidInputError
        ``None`` for a conditioned model, a wrong type or shape, non-finite values or unknown category codes.
    """
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
            dev = next(enc.parameters()).device
            enc(cond.to(dev), drop=torch.zeros(cond.shape, dtype=torch.bool, device=dev))
    return cond


def draw_conditions(cond: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Rows of ``cond`` drawn with replacement.

    Parameters
    ----------
    cond
        ``(N, K)`` condition values (from :func:`check_conditions`).
    n
        Rows to draw.
    generator
        Seeded generator the row indices are drawn with (not advanced when ``K = 0``).

    Returns
    -------
    ``(n, K)`` condition values (``(n, 0)`` for an unconditional model).
    """
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

    Raises
    ------
    InvalidInputError
        A stochastic sampler, a non-positive count or conditions that do not fit the teacher.
    """
    check_positive("n_pairs", n_pairs, integer=True)
    check_positive("batch_size", batch_size, integer=True)
    if sampler in STOCHASTIC_SAMPLERS:
        raise InvalidInputError(f"sampler={sampler!r} is stochastic; pairs need a deterministic sampler.")
    cond = check_conditions(teacher, conditions)
    gen = torch.Generator().manual_seed(seed)
    m, d = teacher.vae.config.latent_shape
    noise = torch.randn(n_pairs, m, d, generator=gen)  # (P, m, d)
    cv = draw_conditions(cond, n_pairs, gen)  # (P, K)
    device = next(teacher.parameters()).device
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


def cached_pairs(
    teacher: LatentDiffusionModel, cond: torch.Tensor, config: DistillConfig, seed: int, out_dir: Path | None
) -> tuple[TeacherPairDataset, bool]:
    """The teacher pairs of a run, from ``out_dir/pairs.safetensors`` when the same inputs made them.

    Parameters
    ----------
    teacher
        The frozen teacher.
    cond
        ``(N, K)`` checked condition values (:func:`check_conditions`).
    config
        Distillation settings (``n_pairs``, ``teacher_steps``, ``teacher_sampler``, ``guidance_scale`` and
        ``pair_batch_size`` are used).
    seed
        Seeds the pairs.
    out_dir
        Run directory holding the cache, or ``None`` to generate without caching.

    Returns
    -------
    ``(pairs, reused)``: the pairs, and whether they were read from the cache. A cache made by another
    teacher, other conditions, settings or seed, or a truncated one, is regenerated and rewritten.
    """
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
