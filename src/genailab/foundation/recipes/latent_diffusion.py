"""Latent diffusion for conditional count synthesis (the seed's reference stack).

``counts -> frozen VAE encoder -> standardised latent tokens -> backbone diffusion (+ conditions)
-> latent -> frozen VAE decoder -> NB/ZINB counts``

Training is staged: the VAE is pretrained and frozen, its posterior-mean latents are computed once
and standardised, and only the backbone and the condition encoder train (with an exponential moving
average of their weights, which is what sampling uses). Sampling draws integer counts from the
decoder's distribution; counterfactuals partially noise real cells' latents and denoise them under
changed conditions (SDEdit, Meng et al. 2022, arXiv:2108.01073).

This module is long because :class:`LatentDiffusionModel` is the recipe's whole user-facing surface
(condition encoding, staged training with EMA, sampling, counterfactuals, persistence). What holds no
parameters lives elsewhere: guidance, samplers and objectives in :mod:`genailab.diffusion`, the AnnData
layout of generated cells in :mod:`genailab.foundation.recipes.latent_sampling`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from genailab._version import __version__
from genailab.config import Config, check_fraction, check_positive
from genailab.constants import BATCH_KEYS
from genailab.data import TensorBatchDataset, make_dataloader
from genailab.diffusion import (
    OBJECTIVES,
    SAMPLERS,
    Denoiser,
    check_guidance,
    guided_denoiser,
    make_objective,
)
from genailab.diffusion import sample as run_sampler
from genailab.errors import CheckpointError, InvalidInputError, MissingKeyError, UnknownLabelError
from genailab.foundation.backbones import backbone_config, backbone_from_dict, backbone_to_dict, build_backbone
from genailab.foundation.conditioning import ConditionEncoder, ConditionEncoderConfig
from genailab.foundation.objectives import LossOutput
from genailab.foundation.recipes.latent_sampling import counterfactual_obs, samples_to_anndata, synthetic_obs
from genailab.foundation.recipes.vae.model import LatentTokenVAE
from genailab.foundation.tuning import apply_freeze
from genailab.io import atomic_write_json, check_writable
from genailab.serialization import (
    CONFIG_NAME,
    VAE_DIR,
    check_vae_reference,
    is_adapted_dir,
    load_state_dict_strict,
    read_config,
    read_json,
    resolve_vae_reference,
    save_weights,
    write_config,
    write_vae_reference,
)
from genailab.training import TrainConfig, TrainResult, fit_recipe, seed_everything, split_indices, train_loaders

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["LatentDiffusionConfig", "LatentDiffusionModel"]

BACKBONE_CONFIG = "backbone_config.json"
CONDITIONING_CONFIG = "conditioning_config.json"


@dataclass(frozen=True)
class LatentDiffusionConfig(Config):
    """Settings of :class:`LatentDiffusionModel` (the backbone has its own config).

    Parameters
    ----------
    objective
        Diffusion objective: ``flow`` (rectified flow), ``eps``, ``v`` or ``x0`` (DDPM prediction types).
    schedule
        Noise schedule for the DDPM objectives (``cosine``, ``linear``); ignored by ``flow``.
    condition_keys
        obs keys the model is conditioned on (registered in the data registry).
    condition_dim
        Width of each condition token.
    condition_dropout
        Per-key probability of training with the key nulled (classifier-free guidance).
    sampler, steps
        Default sampler (``euler``, ``heun``, ``ddim``, ``ddpm``, ``dpm++2m``) and number of steps.
    guidance_scale
        Default classifier-free guidance scale (1 = plain conditional sampling).
    ema_decay
        Decay of the exponential moving average of the trained weights (0 disables EMA).
    """

    objective: str = "flow"
    schedule: str | None = None
    condition_keys: tuple[str, ...] = ()
    condition_dim: int = 32
    condition_dropout: float = 0.1
    sampler: str = "heun"
    steps: int = 25
    guidance_scale: float = 1.0
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        OBJECTIVES.get(self.objective)
        SAMPLERS.get(self.sampler)
        check_positive("condition_dim", self.condition_dim, integer=True)
        check_fraction("condition_dropout", self.condition_dropout)
        check_positive("steps", self.steps, integer=True)
        check_guidance(self.guidance_scale)
        check_fraction("ema_decay", self.ema_decay)


class LatentDiffusionModel(nn.Module):
    """Conditional latent diffusion over a frozen count VAE.

    Long because it is the recipe's user-facing API: conditions, training, sampling, counterfactuals
    and persistence of one model; the parameter-free procedures it composes live in
    :mod:`genailab.diffusion`.

    Parameters
    ----------
    backbone
        A registered backbone (:mod:`genailab.foundation.backbones`) over ``(m, d)`` latent tokens
        whose condition tokens match ``conditioning``.
    conditioning
        A :class:`~genailab.foundation.conditioning.ConditionEncoder` over the condition keys.
    encoder
        The pretrained :class:`~genailab.foundation.recipes.LatentTokenVAE` (its encoder half is used).
    decoder
        The same VAE (its decoder half is used); defaults to ``encoder``.
    config
        Diffusion settings.

    Examples
    --------
    >>> vae = LatentTokenVAE.from_pretrained("runs/vae")  # doctest: +SKIP
    >>> model = LatentDiffusionModel.from_vae(vae, condition_keys=("cell_type",))  # doctest: +SKIP
    >>> model.fit(adata, TrainConfig(max_epochs=100), out_dir="runs/ldm")  # doctest: +SKIP
    >>> syn = model.sample(500, conditions={"cell_type": "B cells"}, guidance_scale=2.0)  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: nn.Module,
        conditioning: ConditionEncoder,
        encoder: LatentTokenVAE,
        decoder: LatentTokenVAE | None = None,
        config: LatentDiffusionConfig | None = None,
    ) -> None:
        super().__init__()
        decoder = encoder if decoder is None else decoder
        if decoder is not encoder:
            raise InvalidInputError("encoder and decoder must be the same pretrained LatentTokenVAE.")
        config = config if config is not None else LatentDiffusionConfig(condition_keys=conditioning.keys)
        if tuple(config.condition_keys) != tuple(conditioning.keys):
            raise InvalidInputError(
                f"config.condition_keys={config.condition_keys} but the conditioning encodes {conditioning.keys}."
            )
        m, d = encoder.config.latent_shape
        bc = backbone.config
        if (bc.n_tokens, bc.token_dim, bc.output_dim) != (m, d, d):
            raise InvalidInputError(
                f"backbone works on {bc.n_tokens} x {bc.token_dim} tokens -> {bc.output_dim}, but the VAE's latent "
                f"is {m} x {d}."
            )
        n_keys = conditioning.config.n_keys
        if (bc.n_cond_tokens, bc.cond_dim) != (n_keys, conditioning.config.dim if n_keys else 0):
            raise InvalidInputError(
                f"backbone expects {bc.n_cond_tokens} condition tokens of width {bc.cond_dim}, the conditioning "
                f"makes {conditioning.config.n_keys} of width {conditioning.config.dim}."
            )
        if not bool(encoder.calibrated):
            raise InvalidInputError("the VAE is not calibrated (its latent scale is unknown); train it with fit().")
        self.config = config
        self.backbone = backbone
        self.conditioning = conditioning
        self.vae = encoder
        self.tuning_report = apply_freeze(self.vae)
        self.objective = make_objective(config.objective, config.schedule)
        # EMA copy of the trained weights, present from the start so checkpoints resume cleanly.
        self.ema: nn.Module | None = (
            copy.deepcopy(self.trained_modules()).requires_grad_(False) if config.ema_decay > 0 else None
        )
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))
        self.vae_source: dict[str, str] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_vae(
        cls,
        vae: LatentTokenVAE,
        *,
        condition_keys: Sequence[str] = (),
        backbone: str = "dit",
        backbone_preset: str = "small",
        backbone_overrides: Mapping[str, Any] | None = None,
        config: LatentDiffusionConfig | None = None,
    ) -> LatentDiffusionModel:
        """Build a model over ``vae`` conditioned on registered ``condition_keys``.

        Parameters
        ----------
        vae
            A trained, calibrated VAE whose registry holds the condition keys.
        condition_keys
            obs keys to condition on (categorical or continuous keys of the VAE's data registry).
        backbone, backbone_preset, backbone_overrides
            Registered backbone name, its size preset and config overrides (e.g. ``{"depth": 2}``).
        config
            Diffusion settings (its ``condition_keys`` are replaced by ``condition_keys``).
        """
        backbone_net, cond, config = cls.build_parts(
            vae,
            condition_keys=condition_keys,
            backbone=backbone,
            backbone_preset=backbone_preset,
            backbone_overrides=backbone_overrides,
            config=config,
        )
        return cls(backbone_net, cond, vae, vae, config)

    @staticmethod
    def build_parts(
        vae: LatentTokenVAE,
        *,
        condition_keys: Sequence[str] = (),
        backbone: str = "dit",
        backbone_preset: str = "small",
        backbone_overrides: Mapping[str, Any] | None = None,
        config: LatentDiffusionConfig | None = None,
    ) -> tuple[nn.Module, ConditionEncoder, LatentDiffusionConfig]:
        """The backbone, condition encoder and config :meth:`from_vae` assembles (arguments as there).

        Needs only ``vae``'s latent shape and data registry, not a trained VAE, so a job can refuse
        unregistered condition keys and bad backbone settings before it trains anything.
        """
        keys = tuple(condition_keys)
        registry = vae.registry
        known_cat = registry.spec.categorical_keys() if registry is not None else ()
        known_cont = registry.spec.continuous_keys() if registry is not None else ()
        missing = [k for k in keys if k not in known_cat and k not in known_cont]
        if missing:
            raise MissingKeyError(
                f"condition key(s) {missing} are not registered with the VAE's data; registered keys are "
                f"{list(known_cat) + list(known_cont)}. Register them in the DataSpec (e.g. "
                "categorical_covariate_keys) when training the VAE."
            )
        config = (config or LatentDiffusionConfig()).replace(condition_keys=keys)
        n_cat = tuple(registry.n_categories(k) if k in known_cat else 0 for k in keys)
        cond = ConditionEncoder(
            ConditionEncoderConfig(
                keys=keys,
                n_categories=n_cat,
                dim=config.condition_dim,
                dropout=tuple(config.condition_dropout for _ in keys),
            )
        )
        m, d = vae.config.latent_shape
        cond_dim = config.condition_dim if keys else 0
        bconf = backbone_config(backbone, backbone_preset, m, d, len(keys), cond_dim, overrides=backbone_overrides)
        return build_backbone(backbone, bconf), cond, config

    # ------------------------------------------------------------------ conditions
    def _condition_columns(self) -> list[tuple[str, bool, int]]:
        reg = self.vae.registry
        cols = []
        for key in self.config.condition_keys:
            if key in reg.spec.categorical_keys():
                cols.append((key, True, reg.key_index(key)))
            else:
                cols.append((key, False, list(reg.spec.continuous_keys()).index(key)))
        return cols

    def conditions_from_batch(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(B, K)`` condition values from a mini-batch of registered covariates."""
        cat, cont = batch.get(BATCH_KEYS.CAT_COVS), batch.get(BATCH_KEYS.CONT_COVS)
        n = next(iter(batch.values())).shape[0]
        cols = [(cat[:, j].float() if is_cat else cont[:, j].float()) for _, is_cat, j in self._condition_columns()]
        return torch.stack(cols, dim=1) if cols else torch.zeros(n, 0)

    def encode_conditions(
        self,
        adata: AnnData,
        values: Mapping[str, Any] | None = None,
        *,
        n: int | None = None,
        unknown: str = "error",
    ) -> torch.Tensor:
        """``(n, K)`` condition values for ``values`` (key -> one value or n values) or ``adata.obs``."""
        reg = self.vae.registry
        keys = self.config.condition_keys
        out = np.zeros((n if n is not None else adata.n_obs, len(keys)), dtype=np.float32)
        for j, (key, is_cat, _col) in enumerate(self._condition_columns()):
            if values is not None:
                v = values[key]
                v = np.asarray([v] * out.shape[0] if np.ndim(v) == 0 else v, dtype=object)
            else:
                if key not in adata.obs.columns:
                    raise MissingKeyError(
                        f"obs[{key!r}] is missing from the reference; it has columns {list(adata.obs.columns)}."
                    )
                v = adata.obs[key].to_numpy(dtype=object)
            if len(v) != out.shape[0]:
                raise InvalidInputError(f"condition {key!r} has {len(v)} values, expected {out.shape[0]}.")
            if is_cat:
                cats = {c: i for i, c in enumerate(reg.categories[key])}
                unseen = sorted({str(x) for x in v if str(x) not in cats})
                if unseen and unknown == "error":
                    raise UnknownLabelError(
                        f"condition {key}={unseen[:10]} was not seen in training; known values: "
                        f"{list(reg.categories[key])[:20]}."
                    )
                out[:, j] = [cats.get(str(x), -1) for x in v]
            else:
                try:
                    num = np.asarray(v, dtype=np.float64)
                except (TypeError, ValueError):
                    raise InvalidInputError(f"condition {key!r} is continuous; got non-numeric values.") from None
                if not np.isfinite(num).all():
                    raise InvalidInputError(f"condition {key!r} must be finite numbers.")
                out[:, j] = (num - reg.continuous_means[key]) / reg.continuous_stds[key]
        return torch.from_numpy(out)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Mapping[str, torch.Tensor], *, epoch: float | None = None) -> LossOutput:
        """Diffusion loss on a batch of standardised latents ``batch["latent"]`` ``(B, m, d)``."""
        z0 = batch[BATCH_KEYS.LATENT]
        b = z0.shape[0]
        cond = self.conditioning(batch[BATCH_KEYS.CONDITIONS]) if self.config.condition_keys else None
        t = self.objective.sample_t(b, device=z0.device)
        noise = torch.randn_like(z0)
        pred = self.backbone(self.objective.add_noise(z0, noise, t), t, cond)
        loss = self.objective.loss(pred, z0, noise, t).mean()
        return LossOutput(loss=loss, terms={"diffusion": loss.detach()}, n_obs=b)

    def on_train_batch_end(self) -> None:
        """Update the EMA weights (called by the training layer after each optimiser step)."""
        if self.ema is None:
            return
        self.ema_steps += 1
        step = int(self.ema_steps)
        decay = min(self.config.ema_decay, (1 + step) / (10 + step))  # warm-up: early weights fade fast
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.trained_modules().parameters(), strict=True):
                e.lerp_(p, 1.0 - decay)

    def trained_modules(self) -> nn.ModuleDict:
        """The modules that train, save and keep an EMA: ``{"backbone": ..., "conditioning": ...}``.

        The frozen VAE is not among them; ``model.safetensors`` holds exactly this dict's state.
        """
        return nn.ModuleDict({"backbone": self.backbone, "conditioning": self.conditioning})

    def reset_ema(self) -> None:
        """Restart the EMA from the current weights (after loading, or after a tuning method changed the modules)."""
        if self.config.ema_decay > 0:
            self.ema = copy.deepcopy(self.trained_modules()).requires_grad_(False)
        self.ema_steps.zero_()

    def use_ema_weights(self) -> None:
        """Copy the EMA weights into the live modules (done after training, before saving)."""
        if self.ema is not None:
            self.trained_modules().load_state_dict(self.ema.state_dict())
            self.ema = None

    @torch.no_grad()
    def latent_dataset(self, adata: AnnData, indices: np.ndarray | None = None, batch_size: int = 1024) -> Any:
        """Standardised posterior-mean latents and condition values of ``adata`` (cached for training)."""
        self.vae.eval()
        zs, cs = [], []
        for batch in make_dataloader(
            self.vae.count_dataset(adata, indices=indices), batch_size=batch_size, shuffle=False
        ):
            mu, _ = self.vae.encode(batch[BATCH_KEYS.COUNTS], batch[BATCH_KEYS.LIBRARY])
            zs.append(self.vae.standardize(mu))
            cs.append(self.conditions_from_batch(batch))
        return TensorBatchDataset({BATCH_KEYS.LATENT: torch.cat(zs), BATCH_KEYS.CONDITIONS: torch.cat(cs)})

    def fit(
        self,
        adata: AnnData,
        train: TrainConfig | None = None,
        *,
        out_dir: str | Path | None = None,
        split: Any = None,
        seed: int = 0,
    ) -> TrainResult:
        """Train the backbone and conditioning on the frozen VAE's latents of ``adata``.

        Parameters
        ----------
        adata
            Training cells (genes aligned to the VAE's).
        train
            Training settings; ``val_fraction`` cells are held out for validation and early stopping.
        out_dir
            Run directory for checkpoints and logs (a rerun resumes from ``checkpoints/last.ckpt``).
        split
            A :class:`~genailab.data.Split` (default: random with ``train.val_fraction``).
        seed
            Seeds the split, data order, noise and dropout.
        """
        train = train if train is not None else TrainConfig()
        seed_everything(seed)
        split, train_idx, val_idx = split_indices(adata.n_obs, train, split, seed=seed)
        train_ds = self.latent_dataset(adata, train_idx)
        val_ds = self.latent_dataset(adata, val_idx) if len(val_idx) else None
        train_loader, val_loader = train_loaders(train_ds, val_ds, train, seed=seed)
        result = fit_recipe(self, train_loader, val_loader, train, out_dir=out_dir, seed=seed)
        self.use_ema_weights()
        result.split = split
        return result

    # ------------------------------------------------------------------ sampling
    def denoiser(self, cond_values: torch.Tensor, guidance: float | Mapping[str, float]) -> Denoiser:
        """The classifier-free-guided denoiser the samplers call, for fixed conditions.

        Parameters
        ----------
        cond_values
            ``(B, K)`` condition values (:meth:`encode_conditions`, :meth:`conditions_from_batch`).
        guidance
            One guidance scale for all keys jointly, or ``{key: scale}`` per key (keys left out keep
            scale 1); see :func:`~genailab.diffusion.guided_denoiser`.

        Returns
        -------
        ``(x_t (B, m, d), t (B,)) -> (B, m, d)`` guided backbone prediction (in the objective's
        parametrisation), for :func:`~genailab.diffusion.sample`.
        """
        enc, keys, b = self.conditioning, self.config.condition_keys, cond_values.shape[0]

        def condition(nulled: tuple[str, ...]) -> torch.Tensor:  # (B, K, C) condition tokens
            drop = enc.drop_mask(b, nulled) if nulled else torch.zeros(b, len(keys), dtype=torch.bool)
            return enc(cond_values, drop=drop)

        return guided_denoiser(lambda x, t, c: self.backbone(x, t, c), keys, guidance, condition)

    @torch.no_grad()
    def sample_latents(
        self,
        cond_values: torch.Tensor,
        *,
        guidance_scale: float | Mapping[str, float] | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        seed: int = 0,
        x_start: torch.Tensor | None = None,
        t_start: float = 1.0,
        batch_size: int = 2048,
    ) -> torch.Tensor:
        """Generate ``(n, m, d)`` standardised latents for ``(n, K)`` condition values."""
        guidance = self.config.guidance_scale if guidance_scale is None else guidance_scale
        check_guidance(guidance)
        steps = self.config.steps if steps is None else steps
        check_positive("steps", steps, integer=True)
        sampler = self.config.sampler if sampler is None else sampler
        self.eval()
        gen = torch.Generator().manual_seed(seed)
        m, d = self.vae.config.latent_shape
        n = cond_values.shape[0]
        out = []
        for start in range(0, n, batch_size):
            cv = cond_values[start : start + batch_size]
            xs = None if x_start is None else x_start[start : start + batch_size]
            out.append(
                run_sampler(
                    sampler,
                    self.denoiser(cv, guidance),
                    self.objective,
                    (cv.shape[0], m, d),
                    steps=steps,
                    generator=gen,
                    x_start=xs,
                    t_start=t_start,
                )
            )
        return torch.cat(out) if out else torch.zeros(0, m, d)

    def _decode_counts(
        self, z_std: torch.Tensor, cond_values: torch.Tensor, library: torch.Tensor | None, seed: int
    ) -> tuple[np.ndarray, torch.Tensor]:
        vae = self.vae
        batch_index = None
        if vae.batch_column is not None:
            batch_key = vae.registry.spec.batch_key
            if batch_key in self.config.condition_keys:
                batch_index = cond_values[:, self.config.condition_keys.index(batch_key)].long()
            else:
                batch_index = torch.full((z_std.shape[0],), -1, dtype=torch.long)
        return vae.sample_counts(z_std, batch_index, seed=seed, library=library)

    def sample(
        self,
        n: int | None = None,
        conditions: Mapping[str, Any] | None = None,
        *,
        like: AnnData | None = None,
        guidance_scale: float | Mapping[str, float] | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        seed: int = 0,
    ) -> AnnData:
        """Generate synthetic cells as integer counts drawn from the decoder's distribution.

        Parameters
        ----------
        n
            Number of cells (not with ``like``).
        conditions
            ``{key: value}`` (the same for every cell) or ``{key: [n values]}``; every condition key of
            the model must be given. Not with ``like``.
        like
            A reference AnnData: one synthetic cell per reference cell, with its conditions.
        guidance_scale
            One classifier-free guidance scale for all keys, or ``{key: scale}`` per key (keys left out
            keep scale 1).
        steps, sampler
            Sampling steps and sampler (defaults from the config).
        seed
            Seeds the noise, the library sizes and the count draws.

        Returns
        -------
        AnnData with integer counts in ``X``, the conditions and sampled library sizes in ``obs``, the
        generated standardised latents in ``obsm["X_genailab_synthetic_latent"]`` and the settings in
        ``uns["genailab_sampling"]``.
        """
        keys = self.config.condition_keys
        if like is not None:
            if n is not None or conditions is not None:
                raise InvalidInputError("give either like=REFERENCE or n and conditions, not both.")
            cond_values = self.encode_conditions(like)
            columns, n_cells = {k: like.obs[k].to_numpy() for k in keys}, like.n_obs
        else:
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise InvalidInputError(f"n={n!r} must be a positive integer.")
            conditions = dict(conditions or {})
            unknown = [k for k in conditions if k not in keys]
            if unknown:
                raise InvalidInputError(
                    f"unknown condition key(s) {unknown}; this model is conditioned on {list(keys)}."
                )
            missing = [k for k in keys if k not in conditions]
            if missing:
                raise InvalidInputError(
                    f"conditions must give a value for {missing} (the model's keys are {list(keys)})."
                )
            cond_values = self.encode_conditions(None, conditions, n=int(n))
            n_cells = int(n)
            columns = {
                k: (
                    np.asarray(conditions[k], dtype=object)
                    if np.ndim(conditions[k])
                    else np.full(n_cells, conditions[k], dtype=object)
                )
                for k in keys
            }
        obs = synthetic_obs(columns, n_cells, self.vae.registry.spec.categorical_keys())
        z = self.sample_latents(cond_values, guidance_scale=guidance_scale, steps=steps, sampler=sampler, seed=seed)
        counts, library = self._decode_counts(z, cond_values, None, seed)
        settings = {
            "guidance_scale": guidance_scale if guidance_scale is not None else self.config.guidance_scale,
            "steps": steps or self.config.steps,
            "sampler": sampler or self.config.sampler,
            "seed": seed,
            "mode": "like" if like is not None else "conditions",
            "genailab_version": __version__,
        }
        return samples_to_anndata(counts, z, obs, library, self.vae.genes, settings)

    @torch.no_grad()
    def counterfactual(
        self,
        adata: AnnData,
        set_conditions: Mapping[str, Any],
        *,
        strength: float = 0.6,
        guidance_scale: float | Mapping[str, float] | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        seed: int = 0,
    ) -> AnnData:
        """Cell-paired counterfactuals: real cells re-generated under changed conditions.

        Each cell's latent is noised to time ``strength`` (0 = unchanged, 1 = fully resampled) and
        denoised under its own conditions with ``set_conditions`` replacing some of them; counts are
        drawn with the cell's observed library size, so row ``i`` of the result is cell ``i`` under the
        new conditions. Mapping every cell to one reference batch is batch correction.

        Returns
        -------
        AnnData aligned to ``adata``'s cells (same ``obs_names``) with counterfactual counts in ``X``,
        the new conditions in ``obs[key]`` and the original ones in ``obs[key + "_original"]``.
        """
        check_fraction("strength", strength, inclusive=True)
        if strength <= 0:
            raise InvalidInputError(f"strength={strength!r} must be in (0, 1].")
        keys = self.config.condition_keys
        unknown = [k for k in set_conditions if k not in keys]
        if unknown or not set_conditions:
            raise InvalidInputError(
                f"set_conditions must name condition keys of this model ({list(keys)}); got {list(set_conditions)}."
            )
        values = {k: (set_conditions[k] if k in set_conditions else adata.obs[k].to_numpy(dtype=object)) for k in keys}
        new = self.encode_conditions(adata, values, n=adata.n_obs)
        ds = self.latent_dataset(adata)
        z0 = ds.tensors[BATCH_KEYS.LATENT]
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.full((z0.shape[0],), float(strength))
        x_start = self.objective.add_noise(z0, noise, t)
        z = self.sample_latents(
            new,
            guidance_scale=guidance_scale,
            steps=steps,
            sampler=sampler,
            seed=seed,
            x_start=x_start,
            t_start=float(strength),
        )
        libs = torch.cat(
            [
                b[BATCH_KEYS.LIBRARY]
                for b in make_dataloader(self.vae.count_dataset(adata), batch_size=4096, shuffle=False)
            ]
        )
        counts, library = self._decode_counts(z, new, libs, seed)
        obs = counterfactual_obs(adata.obs, values)
        settings = {
            "mode": "counterfactual",
            "strength": strength,
            "set_conditions": str(dict(set_conditions)),
            "steps": steps or self.config.steps,
            "sampler": sampler or self.config.sampler,
            "seed": seed,
            "guidance_scale": guidance_scale if guidance_scale is not None else self.config.guidance_scale,
        }
        out = samples_to_anndata(counts, z, obs, library, self.vae.genes, settings)
        out.obs_names = adata.obs_names.copy()
        return out

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, *, vae_dir: str | Path | None = None) -> Path:
        """Save the diffusion model; the VAE is saved in ``directory/vae`` unless ``vae_dir`` refers to it.

        Files: ``config.json`` (written last), ``model.safetensors`` (backbone + conditioning, EMA
        weights), ``backbone_config.json``, ``conditioning_config.json`` and ``vae_source.json`` (the
        VAE's path and hash; loading refuses a VAE whose hash differs).
        """
        self.use_ema_weights()
        d = check_writable(directory, argument="directory")
        (d / CONFIG_NAME).unlink(missing_ok=True)
        if vae_dir is None:
            vae_dir = d / VAE_DIR
            self.vae.save_pretrained(vae_dir)
        save_weights(d, self.trained_modules())
        atomic_write_json(d / BACKBONE_CONFIG, backbone_to_dict(self.backbone))
        atomic_write_json(d / CONDITIONING_CONFIG, self.conditioning.config.to_dict())
        write_vae_reference(d, Path(vae_dir))
        write_config(d, type(self).__name__, self.config.to_dict())
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LatentDiffusionModel:
        """Load a plain model directory (refusing unfinished, corrupt, mismatched or adapted ones).

        Raises
        ------
        CheckpointError
            For an adapted directory (``genailab synth adapt``): load it with
            :func:`genailab.foundation.recipes.load_model`, which handles plain and adapted directories.
        """
        d = Path(directory)
        if is_adapted_dir(d):
            raise CheckpointError(
                f"{str(d)!r} holds an adapted model (it has an adapter.json); {cls.__name__}.from_pretrained "
                "loads plain directories only. Load it with genailab.foundation.recipes.load_model(directory)."
            )
        payload = read_config(d, cls.__name__)
        try:
            config = LatentDiffusionConfig.from_dict(payload["config"])
            bconf_raw = dict(read_json(d / BACKBONE_CONFIG, what=f"model directory {str(d)!r}"))
            cconf = ConditionEncoderConfig.from_dict(
                read_json(d / CONDITIONING_CONFIG, what=f"model directory {str(d)!r}")
            )
        except (InvalidInputError, TypeError, KeyError) as err:
            raise CheckpointError(f"model directory {str(d)!r} holds an invalid config: {err}") from err
        vae_dir, source = resolve_vae_reference(d)
        vae = LatentTokenVAE.from_pretrained(vae_dir)
        check_vae_reference(vae_dir, source)
        model = cls(backbone_from_dict(bconf_raw), ConditionEncoder(cconf), vae, vae, config)
        load_state_dict_strict(d, model.trained_modules())
        model.reset_ema()  # the EMA restarts from the loaded weights (not the random init it was copied from)
        model.vae_source = source
        model.eval()
        return model
