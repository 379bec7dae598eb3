"""Settings of the perturbation-response recipe (:class:`PerturbDeltaConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from genailab.config import Config, check_fraction, check_positive
from genailab.errors import InvalidInputError
from genailab.foundation.perturbation.encoders import COMPOSERS, PERTURBATION_ENCODERS
from genailab.foundation.recipes.perturb.formulations import FORMULATIONS

__all__ = ["BASE_SHIFTS", "COMPOSITIONS", "FINETUNE", "LEGACY_DEFAULTS", "PerturbDeltaConfig"]

FINETUNE = ("none", "decoder")
BASE_SHIFTS = ("none", "context_mean")
COMPOSITIONS = ("anchored", "latent")
#: Values of fields added after genailab 0.1.0 that a saved ``config.json`` without them means
#: (the behaviour of the code that wrote it); new configs take the dataclass defaults.
LEGACY_DEFAULTS = {"library_key": None, "base_shift": "none", "composition": "latent"}


@dataclass(frozen=True)
class PerturbDeltaConfig(Config):
    """Settings of :class:`PerturbDeltaModel` (the backbone has its own config).

    Parameters
    ----------
    formulation
        ``shift`` (default: ``delta_z = f(p, c)``, one latent shift per perturbation and context),
        ``delta`` (``delta_z = f(z_base, p, c)``, cell-dependent) or ``direct`` (``z = f(noise, p, c)``);
        every one decodes a latent per control cell. On Norman the cell-dependent ``delta`` overfits
        the population's spread (see BENCHMARKS.md).
    encoder
        Agent encoder: ``gene`` (genetic) or ``compound`` (chemical, with dose response).
    composer
        How a combination's agents combine: ``additive`` (default: one latent shift per agent, summed,
        plus a zero-gated interaction term), ``attention`` (tokens summed plus learned interactions,
        then one shift) or ``sum``.
    perturbation_dim
        Width of the perturbation and context tokens.
    prior_hidden_dim
        Width of the MLP over prior features.
    identity_dropout
        Training probability of hiding a trained agent's identity (teaches the prior path).
    context_keys
        obs keys describing the cell context (cell line, cell type, donor, ...).
    context_dropout
        Training probability of replacing a context token by its learned null token (used for
        contexts never seen in training).
    n_members
        Ensemble size.
    nll_weight
        Weight of the per-gene decoder NLL of the observed counts beside the OT-paired latent error
        (0 by default: on Norman it pulled decoded means away from the observed ones; it is what
        trains the decoder under ``finetune='decoder'``).
    groups_per_batch, cells_per_group
        Training batch layout: this many (condition, context) groups, this many cells each.
    val_fraction
        Fraction of the training conditions held out (with all their cells) to early-stop and to
        calibrate uncertainty; they mimic the held-out test conditions.
    mc_cells
        Number of sampled cells behind every predicted mean expression profile.
    finetune
        ``none`` (frozen VAE) or ``decoder`` (each member also trains its own copy of the decoder).
    library_key
        obs column of whole-transcriptome library sizes (e.g. ``'ncounts'``). When set, every
        log-normalised mean the recipe computes (observed validation means for calibration, control
        means, predicted means) divides counts by this total (``log1p(x / library * 1e4)``) instead
        of the row sum over the model's genes, and each predicted cell carries its control cell's
        library. ``None`` (default): row sums, as before.
    base_shift
        ``context_mean`` (default): every agent starts from the mean per-agent latent shift of the
        training perturbations in its context (mean over contexts for an unseen one), fitted on the
        training cells before the members; the members learn the deviation from it (a combination
        of ``n`` agents starts from ``n`` times it). ``none``: no base (models saved before this
        field existed). The ``direct`` formulation ignores it.
    composition
        ``anchored`` (default): agents with single-agent training cells in the query's context enter a
        prediction through their *observed* response (gene space and latent shift; see
        :mod:`~genailab.foundation.recipes.perturb.anchors`): a seen single is its observed response,
        a combination of seen singles their gene-space sum plus the decoder's and the members' learned
        interaction. ``latent``: every agent's shift is the members' prediction (models saved before
        this field existed). Only with the ``shift`` / ``delta`` formulations and without a dose key.
    """

    formulation: str = "shift"
    encoder: str = "gene"
    composer: str = "additive"
    perturbation_dim: int = 64
    prior_hidden_dim: int = 128
    identity_dropout: float = 0.5
    context_keys: tuple[str, ...] = ()
    context_dropout: float = 0.1
    n_members: int = 5
    nll_weight: float = 0.0
    groups_per_batch: int = 8
    cells_per_group: int = 32
    val_fraction: float = 0.15
    mc_cells: int = 2000
    finetune: str = "none"
    library_key: str | None = None
    base_shift: str = "context_mean"
    composition: str = "anchored"

    def __post_init__(self) -> None:
        FORMULATIONS.get(self.formulation)
        PERTURBATION_ENCODERS.get(self.encoder)
        COMPOSERS.get(self.composer)
        for name in ("perturbation_dim", "prior_hidden_dim", "n_members", "groups_per_batch", "cells_per_group"):
            check_positive(name, getattr(self, name), integer=True)
        check_positive("mc_cells", self.mc_cells, integer=True)
        check_fraction("identity_dropout", self.identity_dropout)
        check_fraction("context_dropout", self.context_dropout)
        check_fraction("val_fraction", self.val_fraction)
        check_positive("nll_weight", self.nll_weight, strict=False)
        if self.perturbation_dim % 4:
            raise InvalidInputError(f"perturbation_dim={self.perturbation_dim} must be a multiple of 4.")
        if self.finetune not in FINETUNE:
            raise InvalidInputError(f"finetune={self.finetune!r} is not allowed; expected one of {FINETUNE}.")
        if self.base_shift not in BASE_SHIFTS:
            raise InvalidInputError(f"base_shift={self.base_shift!r} is not allowed; expected one of {BASE_SHIFTS}.")
        if self.composition not in COMPOSITIONS:
            raise InvalidInputError(f"composition={self.composition!r} is not allowed; expected one of {COMPOSITIONS}.")
        if self.library_key is not None and not str(self.library_key).strip():
            raise InvalidInputError("library_key must be an obs column name (e.g. 'ncounts') or None.")
        if len(set(self.context_keys)) != len(self.context_keys):
            raise InvalidInputError(f"context_keys={self.context_keys} lists a key twice.")
        if self.finetune == "decoder" and self.nll_weight <= 0:
            raise InvalidInputError("finetune='decoder' trains the decoder through the NLL; set nll_weight > 0.")
        if self.formulation == "direct" and getattr(COMPOSERS.get(self.composer), "per_agent", False):
            raise InvalidInputError(
                f"composer={self.composer!r} sums per-agent latent shifts, which needs formulation='delta'; "
                "use composer='attention' or 'sum' with the direct formulation."
            )
