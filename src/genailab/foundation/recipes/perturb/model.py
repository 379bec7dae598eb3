"""Perturbation-response prediction as a shift in a frozen VAE's latent space (``perturb_delta_latent``).

``control cell -> frozen VAE encoder -> z_base; delta_z = f(z_base, perturbation, context);
z_base + delta_z -> frozen VAE decoder -> NB/ZINB counts``

Only the perturbation encoder, the context tokens and the delta network train ("fine-tune the
steering wheel"); the VAE is the frozen backbone (``finetune="decoder"`` also trains a copy of its
decoder per member). Each prediction is *cell-level*: one predicted perturbed cell per control cell.

Control and perturbed cells are never paired in the data, so each training step draws, for a few
(condition, context) groups, control cells and perturbed cells of the same context, predicts every
control cell's perturbed state, pairs predictions with observed cells by optimal transport within the
group (exact assignment on squared latent distance; as in minibatch OT, Tong et al. 2024,
arXiv:2302.00482), and minimises the paired latent error plus the decoder NLL of the observed counts.

Uncertainty comes from a deep ensemble (Lakshminarayanan et al. 2017): members differ in seed and
batch order; their spread in predicted mean expression is calibrated by split conformal prediction
on *validation perturbations* held out of training. The OOD score of a query is the members'
disagreement on its latent shift relative to their disagreement on the training perturbations
(epistemic uncertainty: members agree where data constrained them).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from genailab.config import Config, check_fraction, check_positive
from genailab.constants import BATCH_KEYS
from genailab.data.spec import obs_labels
from genailab.errors import CheckpointError, InvalidInputError, MissingKeyError
from genailab.foundation.backbones import BACKBONES, backbone_config, backbone_to_dict, build_backbone
from genailab.foundation.conditioning import ConditionEncoder, ConditionEncoderConfig
from genailab.foundation.objectives import LossOutput
from genailab.foundation.perturbation.encoders import (
    COMPOSERS,
    PERTURBATION_ENCODERS,
    PerturbationEncoderConfig,
)
from genailab.foundation.perturbation.vocab import PerturbationVocab
from genailab.foundation.recipes.vae.model import LatentTokenVAE
from genailab.foundation.tuning import apply_freeze
from genailab.io import atomic_write_json, check_writable
from genailab.likelihoods.heads import masked_nll
from genailab.nn import log_normalize as log_normalize_tensor
from genailab.registry import Registry
from genailab.serialization import (
    CONFIG_NAME,
    VAE_DIR,
    check_vae_reference,
    load_state_dict_strict,
    read_config,
    read_json,
    resolve_vae_reference,
    save_weights,
    write_config,
    write_vae_reference,
)

if TYPE_CHECKING:
    from anndata import AnnData

    from genailab.foundation.objectives.uncertainty import ConformalCalibrator
    from genailab.foundation.perturbation.priors import GenePriors
    from genailab.training import TrainConfig

__all__ = [
    "FORMULATIONS",
    "PerturbDeltaConfig",
    "PerturbDeltaModel",
    "PerturbDeltaNet",
    "ResponsePrediction",
]

FORMULATIONS: Registry = Registry("perturbation formulation")
FINETUNE = ("none", "decoder")
_K = {  # keys of a training batch
    "z_control": "z_control",
    "z_target": "z_target",
    "counts": "counts",
    "library": "library",
    "vae_batch": "vae_batch",
    "ids": "ids",
    "dose": "dose",
    "context": "context",
    "group": "group",
}


# ---------------------------------------------------------------------- formulations
@FORMULATIONS.register("delta")
class DeltaFormulation:
    """``z = z_base + f(z_base, p, c)``: the network predicts the shift of each control cell (default)."""

    def inputs(self, z_base: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Backbone input ``(B, m, d)``."""
        return z_base

    def combine(self, z_base: torch.Tensor, out: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        """Predicted latent; unperturbed rows (controls) keep ``z_base``."""
        return z_base + out * perturbed.view(-1, 1, 1).to(out.dtype)


@FORMULATIONS.register("shift")
class ShiftFormulation(DeltaFormulation):
    """``z = z_base + f(p, c)``: one latent shift per (perturbation, context), the same for every cell.

    scGen's latent vector arithmetic (Lotfollahi et al. 2019, Nat Methods) made conditional: each
    control cell keeps its own position, so the predicted population inherits the controls'
    heterogeneity, and the shift cannot distort the population's spread (on small screens a
    cell-dependent shift overfits that spread, which moves the decoded mean).
    """

    def inputs(self, z_base: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Zeros ``(B, m, d)``: the network does not see the cell."""
        return torch.zeros_like(z_base)


@FORMULATIONS.register("direct")
class DirectFormulation:
    """``z = f(noise, p, c)``: the seed's direct formulation, a one-step conditional generator.

    The network sees no control cell; per-cell variation comes from Gaussian noise on the
    standardised latent scale. Compare it with ``delta`` on the same split to see what anchoring
    predictions on real control cells buys.
    """

    def inputs(self, z_base: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal ``(B, m, d)``."""
        if generator is None:
            return torch.randn_like(z_base)
        return torch.randn(z_base.shape, generator=generator, dtype=z_base.dtype).to(z_base.device)

    def combine(self, z_base: torch.Tensor, out: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        """Predicted latent; unperturbed rows (controls) keep ``z_base``."""
        return torch.where(perturbed.view(-1, 1, 1), out, z_base)


# ---------------------------------------------------------------------- config
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
        if len(set(self.context_keys)) != len(self.context_keys):
            raise InvalidInputError(f"context_keys={self.context_keys} lists a key twice.")
        if self.finetune == "decoder" and self.nll_weight <= 0:
            raise InvalidInputError("finetune='decoder' trains the decoder through the NLL; set nll_weight > 0.")
        if self.formulation == "direct" and getattr(COMPOSERS.get(self.composer), "per_agent", False):
            raise InvalidInputError(
                f"composer={self.composer!r} sums per-agent latent shifts, which needs formulation='delta'; "
                "use composer='attention' or 'sum' with the direct formulation."
            )


# ---------------------------------------------------------------------- the network of one member
class PerturbDeltaNet(nn.Module):
    """One ensemble member: ``(z_base, perturbation, context) -> predicted perturbed latent``.

    Parameters
    ----------
    config
        Recipe settings (formulation, encoder, composer).
    encoder_config
        Agent-encoder config (vocabulary and prior sizes).
    context_config
        Context-token config, or ``None`` without context keys.
    backbone
        A registered backbone over ``(m, d)`` latent tokens with ``1 + K`` condition tokens of width
        ``config.perturbation_dim``; it outputs zeros at init, so the member starts as the identity
        (``delta`` formulation: every prediction is the control cell itself).
    """

    def __init__(
        self,
        config: PerturbDeltaConfig,
        encoder_config: PerturbationEncoderConfig,
        context_config: ConditionEncoderConfig | None,
        backbone: nn.Module,
    ) -> None:
        super().__init__()
        n_ctx = context_config.n_keys if context_config is not None else 0
        bc = backbone.config
        if (bc.n_cond_tokens, bc.cond_dim) != (1 + n_ctx, config.perturbation_dim):
            raise InvalidInputError(
                f"backbone expects {bc.n_cond_tokens} condition tokens of width {bc.cond_dim}; the recipe makes "
                f"{1 + n_ctx} of width {config.perturbation_dim}."
            )
        self.config = config
        self.encoder = PERTURBATION_ENCODERS.get(config.encoder)(encoder_config)
        self.composer = COMPOSERS.get(config.composer)(config.perturbation_dim)
        self.context = ConditionEncoder(context_config) if n_ctx else None
        self.backbone = backbone
        self.formulation = FORMULATIONS.get(config.formulation)()

    def perturbation_token(self, ids: torch.Tensor, dose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S)`` ids and doses -> ``(B, C)`` perturbation embedding and ``(B,)`` perturbed flag.

        For the per-agent ``additive`` composer the embedding is the sum of the agent tokens plus the
        gated interaction token (what the OOD score reads).
        """
        tokens, mask = self.encoder(ids, dose)  # (B, S, C), (B, S)
        pooled = self.composer(tokens, mask)
        if getattr(self.composer, "per_agent", False):
            pooled = (tokens * mask.unsqueeze(-1).to(tokens.dtype)).sum(1) + self.composer.gate * pooled
        return pooled, mask.any(1)

    def _shift(self, x: torch.Tensor, token: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """Backbone output ``(B, m, d)`` for input ``x`` under one perturbation token ``(B, C)``."""
        cond = token.unsqueeze(1)  # (B, 1, C)
        if ctx is not None:
            cond = torch.cat([cond, ctx], dim=1)  # (B, 1+K, C)
        return self.backbone(x, None, cond)

    def forward(
        self,
        z_base: torch.Tensor,
        ids: torch.Tensor,
        dose: torch.Tensor,
        context: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Predicted perturbed latents.

        Parameters
        ----------
        z_base
            ``(B, m, d)`` standardised latents of control cells.
        ids, dose
            ``(B, S)`` agent ids (``-1`` = none) and doses.
        context
            ``(B, K)`` context codes (``-1`` = unknown context -> null token), or ``None`` without keys.
        generator
            Seeds the noise of the ``direct`` formulation.

        Returns
        -------
        ``(B, m, d)`` standardised predicted latents.
        """
        if self.context is not None and context is None:
            raise InvalidInputError("this model needs context codes (B, K); got None.")
        ctx = self.context(context) if self.context is not None else None  # (B, K, C)
        tokens, mask = self.encoder(ids, dose)  # (B, S, C), (B, S)
        x = self.formulation.inputs(z_base, generator)  # (B, m, d)
        if not getattr(self.composer, "per_agent", False):
            return self.formulation.combine(z_base, self._shift(x, self.composer(tokens, mask), ctx), mask.any(1))
        b, s, c = tokens.shape
        rep = (b * s, *x.shape[1:])
        xs = x.unsqueeze(1).expand(b, s, *x.shape[1:]).reshape(rep)  # (B*S, m, d)
        cs = None if ctx is None else ctx.unsqueeze(1).expand(b, s, *ctx.shape[1:]).reshape(b * s, *ctx.shape[1:])
        out = self._shift(xs, tokens.reshape(b * s, c), cs).view(b, s, *x.shape[1:])  # (B, S, m, d)
        out = (out * mask.view(b, s, 1, 1).to(out.dtype)).sum(1)  # (B, m, d) sum of per-agent shifts
        multi = mask.sum(1) > 1  # (B,)
        if bool(multi.any()):
            inter = self._shift(x, self.composer(tokens, mask), ctx)  # (B, m, d)
            out = out + self.composer.gate * inter * multi.view(-1, 1, 1).to(out.dtype)
        return self.formulation.combine(z_base, out, mask.any(1))


def _ot_pairing(pred: torch.Tensor, target: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Index into ``target`` pairing each prediction with one observed cell of its group (exact OT)."""
    from scipy.optimize import linear_sum_assignment

    perm = torch.empty(pred.shape[0], dtype=torch.long)
    p, t = pred.flatten(1).detach().cpu(), target.flatten(1).detach().cpu()
    g = group.cpu()
    for gid in torch.unique(g):
        rows = torch.nonzero(g == gid).view(-1)
        cost = torch.cdist(p[rows].double(), t[rows].double()).pow(2).numpy()
        r, c = linear_sum_assignment(cost)
        perm[rows[torch.as_tensor(r)]] = rows[torch.as_tensor(c)]
    return perm.to(pred.device)


class _MemberTrainer(nn.Module):
    """Training wrapper of one member: the net plus the (frozen, or decoder-tuned) VAE."""

    def __init__(self, net: PerturbDeltaNet, vae: LatentTokenVAE) -> None:
        super().__init__()
        self.net = net
        self.vae = vae

    def train(self, mode: bool = True) -> _MemberTrainer:
        """Train the member; the VAE stays in eval mode (no dropout in the frozen decoder)."""
        super().train(mode)
        self.vae.eval()
        return self

    def training_step(self, batch: dict[str, torch.Tensor], *, epoch: float | None = None) -> LossOutput:
        """OT-paired latent error + per-gene NLL of the observed perturbed counts."""
        z_pred = self.net(batch[_K["z_control"]], batch[_K["ids"]], batch[_K["dose"]], batch.get(_K["context"]))
        perm = _ot_pairing(z_pred, batch[_K["z_target"]], batch[_K["group"]])
        target = batch[_K["z_target"]][perm]
        latent = (z_pred - target).pow(2).mean()
        vae_batch = batch.get(_K["vae_batch"])
        dist = self.vae.decode(
            self.vae.unstandardize(z_pred), batch[_K["library"]][perm], None if vae_batch is None else vae_batch[perm]
        )
        counts = batch[_K["counts"]][perm]
        nll = masked_nll(dist, counts).mean() / counts.shape[1]
        loss = latent + self.net.config.nll_weight * nll
        return LossOutput(
            loss=loss, terms={"latent": latent.detach(), "nll_per_gene": nll.detach()}, n_obs=z_pred.shape[0]
        )


# ---------------------------------------------------------------------- data
@dataclass
class _Cells:
    """Per-cell inputs of a dataset, computed once (latents by the frozen VAE)."""

    z: torch.Tensor  # (N, m, d) standardised latents
    labels: np.ndarray  # (N,) condition labels
    contexts: np.ndarray  # (N,) context labels ("" without context keys)
    context_codes: torch.Tensor  # (N, K) float codes
    ids: torch.Tensor  # (N, S)
    dose: torch.Tensor  # (N, S)
    counts_ds: Any  # CountsDataset aligned to the VAE's genes


class _GroupBatches(torch.utils.data.Dataset):
    """Batches of (condition, context) groups: control cells of the context + observed perturbed cells."""

    def __init__(
        self,
        cells: _Cells,
        rows: np.ndarray,
        controls: Mapping[str, np.ndarray],
        vae: LatentTokenVAE,
        config: PerturbDeltaConfig,
        *,
        seed: int,
        shuffle: bool,
    ) -> None:
        self.cells, self.vae, self.config, self.seed, self.shuffle = cells, vae, config, seed, shuffle
        self.epoch = 0
        keys = np.char.add(np.char.add(cells.labels[rows].astype(str), "\x00"), cells.contexts[rows].astype(str))
        uniq, inv = np.unique(keys, return_inverse=True)
        self.groups = [rows[inv == i] for i in range(len(uniq))]
        self.controls = controls
        for g in self.groups:
            ctx = cells.contexts[g[0]]
            if ctx not in controls or len(controls[ctx]) == 0:
                raise InvalidInputError(
                    f"no control cells in context {ctx!r} (condition {cells.labels[g[0]]!r}); every context with "
                    "perturbed cells needs control cells to predict from."
                )
        n_cells = sum(len(g) for g in self.groups)
        per_batch = config.groups_per_batch * config.cells_per_group
        self.n_batches = (
            max(1, math.ceil(n_cells / per_batch)) if shuffle else math.ceil(len(self.groups) / config.groups_per_batch)
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_batches

    def _pick(self, pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(pool, size=n, replace=len(pool) < n)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        cfg, cells = self.config, self.cells
        rng = np.random.default_rng([self.seed, self.epoch if self.shuffle else 0, int(i)])
        if self.shuffle:
            k = min(cfg.groups_per_batch, len(self.groups))
            chosen = rng.choice(len(self.groups), size=k, replace=False)
        else:
            chosen = np.arange(i * cfg.groups_per_batch, min((i + 1) * cfg.groups_per_batch, len(self.groups)))
        n = cfg.cells_per_group
        pert, ctrl, group = [], [], []
        for j, gi in enumerate(chosen.tolist()):
            g = self.groups[gi]
            pert.append(self._pick(g, n, rng))
            ctrl.append(self._pick(self.controls[cells.contexts[g[0]]], n, rng))
            group.append(np.full(n, j))
        pert_rows, ctrl_rows = np.concatenate(pert), np.concatenate(ctrl)
        read = cells.counts_ds[pert_rows.tolist()]
        batch = {
            _K["z_control"]: cells.z[ctrl_rows],
            _K["z_target"]: cells.z[pert_rows],
            _K["counts"]: read[BATCH_KEYS.COUNTS],
            _K["library"]: read[BATCH_KEYS.LIBRARY],
            _K["ids"]: cells.ids[pert_rows],
            _K["dose"]: cells.dose[pert_rows],
            _K["context"]: cells.context_codes[pert_rows],
            _K["group"]: torch.as_tensor(np.concatenate(group)),
        }
        vb = self.vae.batch_index(read)
        if vb is not None:
            batch[_K["vae_batch"]] = vb
        return batch


class _EpochSampler(torch.utils.data.Sampler):
    """Yields batch numbers and forwards Lightning's ``set_epoch`` to the batch dataset."""

    def __init__(self, ds: _GroupBatches) -> None:
        self.ds = ds

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)

    def __iter__(self) -> Any:
        return iter(range(len(self.ds)))

    def __len__(self) -> int:
        return len(self.ds)


def _loader(ds: _GroupBatches) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(ds, batch_size=None, sampler=_EpochSampler(ds), num_workers=0)


# ---------------------------------------------------------------------- predictions
@dataclass
class ResponsePrediction:
    """Predicted response of one (perturbation, context) query.

    Attributes
    ----------
    mean
        ``(G,)`` predicted mean log-normalised expression (log1p of counts per 10k) of the perturbed
        population: the observed control mean plus the ensemble's mean predicted shift.
    sigma
        ``(G,)`` ensemble standard deviation of ``mean`` (raw; calibrate with the model's calibrator).
    members
        ``(K, G)`` each member's ``mean``.
    control_mean
        ``(G,)`` observed mean log-normalised expression of the control cells used.
    counts
        ``(n, G)`` sampled perturbed counts, one cell per control cell (ensemble mixture).
    expected
        ``(n, G)`` ensemble-mean expected counts of each predicted cell.
    ood_score
        Ensemble disagreement on the query's mean latent shift, relative to the median disagreement on
        the training (perturbation, context) groups: about 1 for what the model was trained on,
        larger the further the query is from it (an unseen agent known only by its priors, an unseen
        context with the null token).
    disagreement
        The raw disagreement (variance across members, averaged over latent coordinates).
    control_rows
        Rows of the controls AnnData behind ``counts`` and ``expected`` (row ``i`` is the prediction
        for control cell ``control_rows[i]``).
    context
        The query's context label (context values joined by ``|``; empty without context keys).
    novelty
        What is new about the query: unseen agents and whether the context is unseen.
    """

    mean: np.ndarray
    sigma: np.ndarray
    members: np.ndarray
    control_mean: np.ndarray
    counts: np.ndarray
    expected: np.ndarray
    ood_score: float
    novelty: dict[str, Any]
    disagreement: float = 0.0
    control_rows: np.ndarray | None = None
    context: str = ""


# ---------------------------------------------------------------------- the user-facing model
class PerturbDeltaModel(nn.Module):
    """Ensemble of latent-shift perturbation models over a frozen count VAE.

    Parameters
    ----------
    vae
        The pretrained, calibrated :class:`LatentTokenVAE` (frozen).
    nets
        The ensemble members (:class:`PerturbDeltaNet`), built by :meth:`from_anndata`.
    vocab
        The perturbation vocabulary.
    config
        Recipe settings.
    perturbation_key
        obs column of condition labels.
    context_categories
        Per context key, its training categories (codes follow this order).
    priors
        Prior features of agents (``None`` = identities only; unseen agents then cannot be predicted).
    dose_key
        obs column of doses (``None`` = dose 1).

    Examples
    --------
    >>> model = PerturbDeltaModel.from_anndata(adata, vae, perturbation_key="condition",  # doctest: +SKIP
    ...                                        priors=priors, config=PerturbDeltaConfig(context_keys=("cell_type",)))
    >>> model.fit(adata, split, TrainConfig(max_epochs=100), out_dir="runs/perturb")  # doctest: +SKIP
    >>> pred = model.predict(controls, "SET+KLF1", context={"cell_type": "k562"})  # doctest: +SKIP
    """

    def __init__(
        self,
        vae: LatentTokenVAE,
        nets: Sequence[PerturbDeltaNet],
        vocab: PerturbationVocab,
        config: PerturbDeltaConfig,
        *,
        perturbation_key: str,
        context_categories: Mapping[str, Sequence[str]] | None = None,
        priors: GenePriors | None = None,
        dose_key: str | None = None,
    ) -> None:
        super().__init__()
        if not bool(vae.calibrated):
            raise InvalidInputError("the VAE is not calibrated (its latent scale is unknown); train it with fit().")
        if len(nets) != config.n_members:
            raise InvalidInputError(f"got {len(nets)} members for config.n_members={config.n_members}.")
        self.config = config
        self.vae = vae
        self.tuning_report = apply_freeze(self.vae)
        self.nets = nn.ModuleList(nets)
        self.decoders: list[LatentTokenVAE | None] = [None] * len(nets)
        self.vocab = vocab
        self.perturbation_key = perturbation_key
        self.dose_key = dose_key
        self.context_categories = {k: tuple(str(c) for c in v) for k, v in (context_categories or {}).items()}
        if tuple(self.context_categories) != tuple(config.context_keys):
            raise InvalidInputError(
                f"context_categories keys {tuple(self.context_categories)} differ from config.context_keys "
                f"{config.context_keys}."
            )
        self.priors = priors
        self._install_priors()
        self.calibrator: ConformalCalibrator | None = None
        self.ood_reference: float = 1.0
        self.seen_ood_scores: list[float] = []
        self.val_conditions: list[list[str]] = []
        self.vae_source: dict[str, str] | None = None

    # ------------------------------------------------------------------ construction
    def _install_priors(self) -> None:
        v = len(self.vocab.agents)
        if self.priors is None:
            table, has = torch.zeros(v, 1), torch.zeros(v, dtype=torch.bool)
        else:
            feats, has_np = self.priors.lookup(list(self.vocab.agents))
            table, has = torch.as_tensor(np.asarray(feats, np.float32)), torch.as_tensor(has_np)
        for net in self.nets:
            net.encoder.set_priors(table, has)

    @staticmethod
    def build_net(
        config: PerturbDeltaConfig,
        vae: LatentTokenVAE,
        vocab: PerturbationVocab,
        n_prior: int,
        context_sizes: Sequence[int],
        *,
        backbone: str = "mlp",
        backbone_preset: str = "small",
        backbone_overrides: Mapping[str, Any] | None = None,
    ) -> PerturbDeltaNet:
        """One fresh member sized for the VAE's latent, the vocabulary and the contexts."""
        m, d = vae.config.latent_shape
        n_cond = 1 + len(config.context_keys)
        bconf = backbone_config(
            backbone, backbone_preset, m, d, n_cond, config.perturbation_dim, overrides=backbone_overrides
        )
        econf = PerturbationEncoderConfig(
            n_vocab=len(vocab.agents),
            n_trained=vocab.n_trained,
            n_prior=n_prior,
            dim=config.perturbation_dim,
            hidden_dim=config.prior_hidden_dim,
            identity_dropout=config.identity_dropout,
        )
        cconf = None
        if config.context_keys:
            cconf = ConditionEncoderConfig(
                keys=tuple(config.context_keys),
                n_categories=tuple(int(n) for n in context_sizes),
                dim=config.perturbation_dim,
                dropout=(config.context_dropout,) * len(config.context_keys),
            )
        return PerturbDeltaNet(config, econf, cconf, build_backbone(backbone, bconf))

    @classmethod
    def from_anndata(
        cls,
        adata: AnnData,
        vae: LatentTokenVAE,
        *,
        perturbation_key: str,
        control: str = "control",
        delimiter: str = "+",
        dose_key: str | None = None,
        priors: GenePriors | None = None,
        config: PerturbDeltaConfig | None = None,
        backbone: str = "mlp",
        backbone_preset: str = "small",
        backbone_overrides: Mapping[str, Any] | None = None,
    ) -> PerturbDeltaModel:
        """A fresh ensemble whose vocabulary holds the agents of ``adata`` (the training cells).

        Parameters
        ----------
        adata
            The training cells (conditions here become the "seen" agents; pass only the training split).
        vae
            The pretrained VAE.
        perturbation_key, control, delimiter, dose_key
            How conditions are written in ``adata.obs``.
        priors
            Agent prior features (e.g. :func:`~genailab.foundation.perturbation.build_gene_priors`).
        config
            Recipe settings (``context_keys`` name the context columns).
        backbone, backbone_preset, backbone_overrides
            The delta network (a registered backbone).
        """
        config = config or PerturbDeltaConfig()
        labels = obs_labels(adata, perturbation_key, "perturbation_key")
        if control not in set(labels.tolist()):
            shown = ", ".join(repr(v) for v in sorted(set(labels.tolist()))[:10])
            raise InvalidInputError(
                f"control={control!r} is not a value of obs[{perturbation_key!r}] (values: {shown}); "
                "control cells are the base every prediction starts from."
            )
        if dose_key is not None:
            obs_labels(adata, dose_key, "dose_key")
        categories = {}
        for key in config.context_keys:
            values = obs_labels(adata, key, "context_keys")
            categories[key] = tuple(sorted(set(values.tolist())))
        vocab = PerturbationVocab.build(
            labels.tolist(), control=control, delimiter=delimiter, prior_agents=priors.genes if priors else ()
        )
        n_prior = priors.dim if priors is not None else 0
        sizes = [len(categories[k]) for k in config.context_keys]
        nets = [
            cls.build_net(
                config,
                vae,
                vocab,
                n_prior,
                sizes,
                backbone=backbone,
                backbone_preset=backbone_preset,
                backbone_overrides=backbone_overrides,
            )
            for _ in range(config.n_members)
        ]
        return cls(
            vae,
            nets,
            vocab,
            config,
            perturbation_key=perturbation_key,
            context_categories=categories,
            priors=priors,
            dose_key=dose_key,
        )

    # ------------------------------------------------------------------ encoding cells
    def context_codes(self, adata: AnnData, context: Mapping[str, str] | None = None) -> np.ndarray:
        """``(n, K)`` context codes of ``adata``'s cells (``context`` overrides obs); unseen -> ``-1``."""
        out = np.zeros((adata.n_obs, len(self.config.context_keys)), dtype=np.float32)
        for j, key in enumerate(self.config.context_keys):
            if context is not None and key in context:
                values = np.full(adata.n_obs, str(context[key]), dtype=object)
            else:
                values = obs_labels(adata, key, "context key")
            lut = {c: i for i, c in enumerate(self.context_categories[key])}
            out[:, j] = [lut.get(str(v), -1) for v in values]
        return out

    def context_labels(self, adata: AnnData, context: Mapping[str, str] | None = None) -> np.ndarray:
        """``(n,)`` context label of each cell (values of the context keys joined by ``|``)."""
        if not self.config.context_keys:
            return np.full(adata.n_obs, "", dtype=object)
        cols = []
        for key in self.config.context_keys:
            if context is not None and key in context:
                cols.append(np.full(adata.n_obs, str(context[key]), dtype=object))
            else:
                cols.append(obs_labels(adata, key, "context key"))
        return np.array(["|".join(map(str, t)) for t in zip(*cols, strict=True)], dtype=object)

    def cell_data(self, adata: AnnData, rows: np.ndarray) -> _Cells:
        """Latents and encodings of ``adata``'s cells (latents computed for ``rows`` only)."""
        if self.perturbation_key in adata.obs.columns:
            labels = obs_labels(adata, self.perturbation_key, "perturbation_key")
        else:  # a file of control cells only
            labels = np.full(adata.n_obs, self.vocab.control, dtype=object)
        doses = obs_labels(adata, self.dose_key, "dose_key") if self.dose_key in adata.obs.columns else None
        z = torch.zeros(adata.n_obs, *self.vae.config.latent_shape)
        if len(rows):
            sub = adata[np.sort(rows)]
            z[torch.as_tensor(np.sort(rows))] = torch.as_tensor(self.vae.get_latent(sub, key=None, standardize=True))
        ids = np.full((adata.n_obs, 1), -1, dtype=np.int64)
        dose = np.zeros((adata.n_obs, 1), dtype=np.float32)
        if len(rows):
            r_ids, r_dose = self.vocab.encode(labels[rows], None if doses is None else doses[rows])
            ids = np.full((adata.n_obs, r_ids.shape[1]), -1, dtype=np.int64)
            dose = np.zeros((adata.n_obs, r_ids.shape[1]), dtype=np.float32)
            ids[rows], dose[rows] = r_ids, r_dose
        # controls given without context columns get the context from the caller (codes passed to _query)
        known = all(k in adata.obs.columns for k in self.config.context_keys)
        contexts = self.context_labels(adata) if known else np.full(adata.n_obs, "?", dtype=object)
        codes = self.context_codes(adata) if known else np.full((adata.n_obs, len(self.config.context_keys)), -1.0)
        return _Cells(
            z=z,
            labels=labels,
            contexts=contexts,
            context_codes=torch.as_tensor(codes, dtype=torch.float32),
            ids=torch.as_tensor(ids),
            dose=torch.as_tensor(dose),
            counts_ds=self.vae.count_dataset(adata),
        )

    def _controls_by_context(self, cells: _Cells, rows: np.ndarray) -> dict[str, np.ndarray]:
        ctrl = rows[cells.labels[rows] == self.vocab.control]
        return {c: ctrl[cells.contexts[ctrl] == c] for c in np.unique(cells.contexts[ctrl]).tolist()}

    # ------------------------------------------------------------------ training
    def fit(
        self,
        adata: AnnData,
        train_rows: np.ndarray,
        val_rows: np.ndarray | None,
        config: TrainConfig,
        *,
        out_dir: str | Path | None = None,
        seed: int = 0,
    ) -> list[Any]:
        """Train every member (each resumable from ``out_dir/member_k``), then calibrate on ``val_rows``.

        Parameters
        ----------
        adata
            All cells; ``train_rows`` (including the control cells) train, ``val_rows`` hold the
            validation conditions (early stopping and conformal calibration; ``None``/empty skips both).
        config
            Training settings of each member (``batch_size`` is unused: batches are
            ``groups_per_batch x cells_per_group``).
        out_dir
            Checkpoints and logs of member ``k`` go to ``out_dir/member_k``.
        seed
            Member ``k`` trains with seed ``seed * 1000 + k``.

        Returns
        -------
        One :class:`~genailab.training.TrainResult` per member.
        """
        from genailab.training import fit_recipe

        train_rows = np.asarray(train_rows, dtype=np.int64)
        val_rows = np.asarray(val_rows if val_rows is not None else [], dtype=np.int64)
        cells = self.cell_data(adata, np.union1d(train_rows, val_rows))
        controls = self._controls_by_context(cells, train_rows)
        if not controls:
            raise InvalidInputError(f"the training rows hold no control cells ({self.vocab.control!r}).")
        pert_train = train_rows[cells.labels[train_rows] != self.vocab.control]
        pert_val = val_rows[cells.labels[val_rows] != self.vocab.control]
        if len(pert_train) == 0:
            raise InvalidInputError("the training rows hold no perturbed cells.")
        results = []
        for k, net in enumerate(self.nets):
            member_seed = seed * 1000 + k
            vae = self.vae
            if self.config.finetune == "decoder":
                vae = copy.deepcopy(self.vae)
                vae.decoder.requires_grad_(True)
                self.decoders[k] = vae
            trainer = _MemberTrainer(net, vae)
            train_ds = _GroupBatches(cells, pert_train, controls, vae, self.config, seed=member_seed, shuffle=True)
            val_loader = None
            if len(pert_val):
                val_ds = _GroupBatches(cells, pert_val, controls, vae, self.config, seed=seed, shuffle=False)
                val_loader = _loader(val_ds)
            member_dir = None if out_dir is None else Path(out_dir) / f"member_{k}"
            results.append(
                fit_recipe(trainer, _loader(train_ds), val_loader, config, out_dir=member_dir, seed=member_seed)
            )
            net.eval()
            if self.decoders[k] is not None:
                self.decoders[k].eval().requires_grad_(False)
        self.eval()
        self._calibrate(adata, cells, train_rows, val_rows, seed=seed)
        return results

    @torch.no_grad()
    def _calibrate(
        self, adata: AnnData, cells: _Cells, train_rows: np.ndarray, val_rows: np.ndarray, *, seed: int = 0
    ) -> None:
        """Fit the conformal calibrator on validation conditions and the OOD reference on training groups."""
        from genailab.data.counts import log_normalize
        from genailab.foundation.objectives.uncertainty import ConformalCalibrator

        controls = self._controls_by_context(cells, train_rows)

        def groups(rows: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
            pert = rows[cells.labels[rows] != self.vocab.control]
            keys = sorted({(cells.labels[r], cells.contexts[r]) for r in pert.tolist()})
            return [
                (c, x, pert[(cells.labels[pert] == c) & (cells.contexts[pert] == x)]) for c, x in keys if x in controls
            ]

        seen = groups(train_rows)
        rng = np.random.default_rng(seed)
        scores = []
        for c, _x, rows in seen:
            ctrl = controls[_x]
            ctrl = ctrl if len(ctrl) <= 256 else np.sort(rng.choice(ctrl, 256, replace=False))
            codes = cells.context_codes[int(rows[0])].numpy()
            scores.append(self._disagreement(cells.z[torch.as_tensor(ctrl)], c, codes, seed=seed))
        self.ood_reference = float(np.median(scores)) if scores else 1.0
        self.seen_ood_scores = [float(v / max(self.ood_reference, 1e-12)) for v in scores]
        val = groups(val_rows)
        self.val_conditions = [[c, x] for c, x, _ in val]
        if not val:
            self.calibrator = None
            return
        y, mu, sd = [], [], []
        for c, x, rows in val:
            pred, _ = self.query(adata, controls[x], c, x_codes_row=int(rows[0]), cells=cells, seed=seed)
            obs = log_normalize(cells.counts_ds[rows.tolist()][BATCH_KEYS.COUNTS].numpy()).mean(0)
            y.append(obs)
            mu.append(pred.mean)
            sd.append(pred.sigma)
        self.calibrator = ConformalCalibrator.fit(np.stack(y), np.stack(mu), np.stack(sd))

    # ------------------------------------------------------------------ OOD score
    @torch.no_grad()
    def _disagreement(self, z_base: torch.Tensor, condition: str, codes: np.ndarray, *, seed: int = 0) -> float:
        """Variance across members of the mean predicted latent shift of ``z_base`` ``(n, m, d)``."""
        n = z_base.shape[0]
        ids, dose = self.vocab.encode([condition] * n)
        ctx = torch.as_tensor(np.broadcast_to(codes, (n, len(self.config.context_keys))).copy())
        shifts = []
        for k, net in enumerate(self.nets):
            gen = torch.Generator().manual_seed(seed * 7919 + k)
            z = net(z_base, torch.as_tensor(ids), torch.as_tensor(dose), ctx, generator=gen)
            shifts.append((z - z_base).mean(0))  # (m, d)
        if len(shifts) < 2:
            return 0.0
        return float(torch.stack(shifts).var(0).mean())

    # ------------------------------------------------------------------ prediction
    def _decoders(self) -> list[LatentTokenVAE]:
        return [d if d is not None else self.vae for d in self.decoders]

    @torch.no_grad()
    def query(
        self,
        adata: AnnData,
        control_rows: np.ndarray,
        condition: str,
        *,
        x_codes_row: int | None = None,
        cells: _Cells | None = None,
        context_codes: np.ndarray | None = None,
        seed: int = 0,
        max_controls: int | None = 1000,
        dose: Any = None,
    ) -> tuple[ResponsePrediction, float]:
        """Predict ``condition`` from ``adata``'s control cells ``control_rows``; returns (prediction, disagreement)."""
        self.eval()
        rng = np.random.default_rng(seed)
        rows = np.asarray(control_rows, dtype=np.int64)
        if max_controls is not None and len(rows) > max_controls:
            rows = np.sort(rng.choice(rows, max_controls, replace=False))
        if cells is None:
            cells = self.cell_data(adata, rows)
        read = cells.counts_ds[rows.tolist()]
        counts, library = read[BATCH_KEYS.COUNTS], read[BATCH_KEYS.LIBRARY]
        vae_batch = self.vae.batch_index(read)
        z_base = cells.z[torch.as_tensor(rows)]
        n = len(rows)
        ids, dose = self.vocab.encode([condition] * n, None if dose is None else [dose] * n)
        if context_codes is None:
            context_codes = cells.context_codes[x_codes_row if x_codes_row is not None else rows[0]].numpy()
        ctx = torch.as_tensor(np.broadcast_to(context_codes, (n, len(self.config.context_keys))).copy())
        reps = max(1, math.ceil(self.config.mc_cells / n))
        means, zs, expected, sampled = [], [], [], []
        for k, (net, dec) in enumerate(zip(self.nets, self._decoders(), strict=True)):
            gen = torch.Generator().manual_seed(seed * 7919 + k)
            z = net(z_base, torch.as_tensor(ids), torch.as_tensor(dose), ctx, generator=gen)
            zs.append(z)
            dist = dec.decode(dec.unstandardize(z), library, vae_batch)
            base = dec.decode(dec.unstandardize(z_base), library, vae_batch)
            with torch.random.fork_rng():
                torch.manual_seed(seed * 104729 + k)
                draws = dist.sample((reps,))  # (R, n, G)
                torch.manual_seed(seed * 104729 + k)
                base_draws = base.sample((reps,))
            shift = log_normalize_tensor(draws).mean((0, 1)) - log_normalize_tensor(base_draws).mean((0, 1))  # (G,)
            means.append(shift)
            expected.append(dist.mean)
            sampled.append(draws[0])
        control_mean = log_normalize_tensor(counts).mean(0)
        members = (control_mean.unsqueeze(0) + torch.stack(means)).numpy()  # (K, G)
        shifts = (torch.stack(zs) - z_base.unsqueeze(0)).mean(1)  # (K, m, d) mean latent shift per member
        disagreement = float(shifts.var(0).mean()) if len(zs) > 1 else 0.0
        ood = disagreement / max(self.ood_reference, 1e-12)
        pick = torch.as_tensor(np.arange(n) % len(zs))
        cell_counts = torch.stack(sampled)[pick, torch.arange(n)]  # (n, G) one member per cell (mixture)
        novelty = {
            "unseen_agents": list(self.vocab.unseen(condition)),
            "unseen_context": bool((ctx < 0).any()),
        }
        pred = ResponsePrediction(
            mean=members.mean(0),
            sigma=members.std(0, ddof=1) if len(zs) > 1 else np.zeros(members.shape[1]),
            members=members,
            control_mean=control_mean.numpy(),
            counts=cell_counts.numpy(),
            expected=torch.stack(expected).mean(0).numpy(),
            ood_score=ood,
            disagreement=disagreement,
            control_rows=rows,
            novelty=novelty,
        )
        return pred, disagreement

    def predict_response(
        self,
        controls: AnnData,
        perturbation: str,
        *,
        context: Mapping[str, str] | None = None,
        allow_ood: bool = False,
        seed: int = 0,
        max_controls: int | None = 1000,
        dose: Any = None,
    ) -> ResponsePrediction:
        """Predict the response to ``perturbation`` of the control cells in ``controls``.

        Parameters
        ----------
        controls
            Control cells (counts). With context keys, cells outside ``context`` are ignored; a
            context column missing from ``controls.obs`` takes the value given in ``context``.
        perturbation
            Condition label, e.g. ``'KLF1'`` or ``'SET+KLF1'``.
        context
            Context values, e.g. ``{'cell_type': 'k562'}`` (default: the controls' own, which must be
            a single context).
        allow_ood
            Allow a context never seen in training (its token is the learned null token); the OOD
            score says how far the query is from the training data.
        seed
            Seeds the count sampling (and the draw of ``max_controls`` controls).
        max_controls
            Use at most this many control cells (``None`` = all; memory grows with cells x genes x members).
        dose
            Dose of the perturbation (a number, or ``'1+0.5'`` per agent of a combination; default 1).
        """
        self.vocab.parts(perturbation)
        self.vocab.encode(
            [perturbation], None if dose is None else [dose]
        )  # unknown agents -> clear error before any work
        rows, codes, label = self._select_controls(controls, context)
        if bool((codes < 0).any()) and not allow_ood:
            raise InvalidInputError(
                f"context {label!r} was never seen in training (known: "
                f"{ {k: list(v) for k, v in self.context_categories.items()} }); pass allow_ood=True "
                "(--allow-ood) to predict with the learned null context and read the OOD score."
            )
        pred, _ = self.query(
            controls, rows, perturbation, context_codes=codes, seed=seed, max_controls=max_controls, dose=dose
        )
        pred.context = label
        return pred

    def _select_controls(
        self, controls: AnnData, context: Mapping[str, str] | None
    ) -> tuple[np.ndarray, np.ndarray, str]:
        context = dict(context or {})
        unknown = [k for k in context if k not in self.config.context_keys]
        if unknown:
            raise InvalidInputError(
                f"context keys {unknown} are not context keys of this model ({list(self.config.context_keys)})."
            )
        missing = [k for k in self.config.context_keys if k not in controls.obs.columns and k not in context]
        if missing:
            raise MissingKeyError(
                f"controls.obs lacks the context column(s) {missing}; add them or pass the context explicitly."
            )
        rows = np.arange(controls.n_obs)
        if self.perturbation_key in controls.obs.columns:
            labels = obs_labels(controls, self.perturbation_key, "perturbation_key")
            rows = rows[labels == self.vocab.control]
        given = {k: v for k, v in context.items() if k in controls.obs.columns}
        for k, v in given.items():
            rows = rows[obs_labels(controls, k, "context")[rows] == str(v)]
        if len(rows) == 0:
            raise InvalidInputError(
                f"no control cells ({self.perturbation_key}={self.vocab.control!r}) in context {context or '(any)'}; "
                "predictions start from control cells of the query context."
            )
        fill = {k: v for k, v in context.items() if k not in controls.obs.columns}
        codes = self.context_codes(controls[rows], fill)
        labels = self.context_labels(controls[rows], fill)
        if len(set(labels.tolist())) > 1:
            raise InvalidInputError(
                f"the control cells span several contexts ({sorted(set(labels.tolist()))[:5]}); pass --context."
            )
        return rows, codes[0], str(labels[0])

    def predict(
        self,
        controls: AnnData,
        perturbation: str,
        *,
        context: Mapping[str, str] | None = None,
        allow_ood: bool = False,
        seed: int = 0,
        level: float = 0.9,
        dose: Any = None,
    ) -> AnnData:
        """Cell-level counterfactuals: one predicted perturbed cell per control cell.

        Returns
        -------
        AnnData with sampled counts in ``X``; ``layers['mean']`` (expected counts), ``layers['lower_90']``
        and ``layers['upper_90']`` (the calibrated interval of the mean response applied to each cell's
        expected counts as a fold change); per gene in ``var``: ``mean_response``, ``delta``,
        ``sigma``, ``lower_90``, ``upper_90`` (log1p counts per 10k); ``obs['ood_score']`` and
        ``uns['genailab_perturb']`` (query, dose, OOD score, novelty, calibration, seed). ``dose`` is
        the perturbation's dose (default 1), as in :meth:`predict_response`.
        """
        import anndata as ad
        import pandas as pd
        from scipy import sparse

        pred = self.predict_response(
            controls, perturbation, context=context, allow_ood=allow_ood, seed=seed, max_controls=None, dose=dose
        )
        rows, label = pred.control_rows, pred.context
        tag = f"{int(round(level * 100))}"
        sigma = self.calibrated_sigma(pred.sigma)
        lo, hi = self.interval(pred.mean, pred.sigma, level)
        half_lo, half_hi = pred.mean - lo, hi - pred.mean
        var = pd.DataFrame(
            {
                "mean_response": pred.mean,
                "control_mean": pred.control_mean,
                "delta": pred.mean - pred.control_mean,
                "sigma": sigma,
                f"lower_{tag}": lo,
                f"upper_{tag}": hi,
            },
            index=pd.Index(list(self.vae.genes), name="gene"),
        )
        obs = controls.obs.iloc[rows].copy()
        obs[self.perturbation_key] = perturbation
        obs["control_cell"] = obs.index.astype(str)
        obs["ood_score"] = pred.ood_score
        obs.index = [f"{i}_{perturbation}" for i in obs.index.astype(str)]
        out = ad.AnnData(X=sparse.csr_matrix(pred.counts.astype(np.float32)), obs=obs, var=var)
        out.layers["mean"] = pred.expected.astype(np.float32)
        out.layers[f"lower_{tag}"] = (pred.expected * np.exp(-half_lo)).astype(np.float32)
        out.layers[f"upper_{tag}"] = (pred.expected * np.exp(half_hi)).astype(np.float32)
        out.uns["genailab_perturb"] = {
            "perturbation": perturbation,
            "context": label,
            "ood_score": float(pred.ood_score),
            "ood": bool(pred.novelty["unseen_context"] or pred.ood_score > self.ood_threshold),
            "unseen_agents": list(pred.novelty["unseen_agents"]),
            "unseen_context": bool(pred.novelty["unseen_context"]),
            "calibrated": self.calibrator is not None,
            "level": float(level),
            "dose": "" if dose is None else str(dose),
            "seed": int(seed),
        }
        return out

    @property
    def ood_threshold(self) -> float:
        """OOD flag threshold: the 95th percentile of the training groups' scores (at least 2)."""
        seen = [v for v in self.seen_ood_scores if np.isfinite(v)]
        return max(2.0, float(np.quantile(seen, 0.95))) if seen else 2.0

    # ------------------------------------------------------------------ calibration helpers
    def calibrated_sigma(self, sigma: np.ndarray) -> np.ndarray:
        """Calibrated predictive std of the mean response (raw ensemble std when uncalibrated)."""
        return self.calibrator.calibrated_sigma(sigma) if self.calibrator is not None else np.asarray(sigma)

    def interval(self, mean: np.ndarray, sigma: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Central ``level`` interval of the mean response (conformal when calibrated, else Gaussian)."""
        if self.calibrator is not None:
            return self.calibrator.interval(mean, sigma, level)
        from scipy.stats import norm

        q = float(norm.ppf((1 + level) / 2))
        return mean - q * sigma, mean + q * sigma

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, *, vae_dir: str | Path | None = None) -> Path:
        """Save the ensemble; the VAE goes to ``directory/vae`` unless ``vae_dir`` refers to it.

        Files: ``member_K.safetensors`` (and ``decoder_K.safetensors`` with ``finetune='decoder'``),
        ``backbone_config.json``, ``perturbation.json`` (vocabulary, keys, context categories),
        ``calibration.json``, ``gene_priors.*``, ``vae_source.json`` and ``config.json`` (last).
        """
        d = check_writable(directory, argument="directory")
        d.mkdir(parents=True, exist_ok=True)
        (d / CONFIG_NAME).unlink(missing_ok=True)
        if vae_dir is None:
            vae_dir = d / VAE_DIR
            self.vae.save_pretrained(vae_dir)
        for k, net in enumerate(self.nets):
            save_weights(d, net, name=f"member_{k}.safetensors")
            if self.decoders[k] is not None:
                save_weights(d, self.decoders[k].decoder, name=f"decoder_{k}.safetensors")
        if self.priors is not None:
            self.priors.save(d)
        net0 = self.nets[0]
        atomic_write_json(d / "backbone_config.json", backbone_to_dict(net0.backbone))
        atomic_write_json(
            d / "perturbation.json",
            {
                "vocab": self.vocab.to_dict(),
                "perturbation_key": self.perturbation_key,
                "dose_key": self.dose_key,
                "context_categories": {k: list(v) for k, v in self.context_categories.items()},
                "encoder": net0.encoder.config.to_dict(),
            },
        )
        atomic_write_json(
            d / "calibration.json",
            {
                "calibrator": self.calibrator.to_dict() if self.calibrator is not None else None,
                "ood_reference": self.ood_reference,
                "seen_ood_scores": self.seen_ood_scores,
                "val_conditions": self.val_conditions,
            },
        )
        write_vae_reference(d, Path(vae_dir))
        write_config(d, type(self).__name__, self.config.to_dict())
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> PerturbDeltaModel:
        """Load a directory written by :meth:`save_pretrained` (refusing incomplete or mismatched ones).

        An adapted directory (``genailab perturb adapt``) loads its base and the adapter on top.
        """
        from genailab.foundation.objectives.uncertainty import ConformalCalibrator
        from genailab.foundation.perturbation.priors import GenePriors

        d = Path(directory)
        if (d / "adapter.json").is_file():
            from genailab.foundation.recipes.adapted import load_adapted

            model = load_adapted(d)
            if not isinstance(model, cls):
                raise CheckpointError(f"{str(d)!r} holds an adapted {type(model).__name__}, not a {cls.__name__}.")
            return model
        payload = read_config(d, cls.__name__)
        what = f"model directory {str(d)!r}"
        try:
            config = PerturbDeltaConfig.from_dict(payload["config"])
            braw = dict(read_json(d / "backbone_config.json", what=what))
            backbone_cls = BACKBONES.get(braw.pop("name"))
            bconf = backbone_cls.config_class.from_dict(braw)
            info = read_json(d / "perturbation.json", what=what)
            vocab = PerturbationVocab.from_dict(info["vocab"])
            econf = PerturbationEncoderConfig.from_dict(info["encoder"])
            categories = {k: tuple(v) for k, v in info["context_categories"].items()}
            calib = read_json(d / "calibration.json", what=what)
        except (InvalidInputError, TypeError, KeyError) as err:
            raise CheckpointError(f"{what} holds an invalid config: {err}") from err
        vae_dir, source = resolve_vae_reference(d)
        vae = LatentTokenVAE.from_pretrained(vae_dir)
        check_vae_reference(vae_dir, source)
        priors = GenePriors.load(d) if econf.n_prior else None
        cconf = None
        if config.context_keys:
            cconf = ConditionEncoderConfig(
                keys=tuple(config.context_keys),
                n_categories=tuple(len(categories[k]) for k in config.context_keys),
                dim=config.perturbation_dim,
                dropout=(config.context_dropout,) * len(config.context_keys),
            )
        nets = [PerturbDeltaNet(config, econf, cconf, backbone_cls(bconf)) for _ in range(config.n_members)]
        for k, net in enumerate(nets):
            load_state_dict_strict(d, net, name=f"member_{k}.safetensors")
        model = cls(
            vae,
            nets,
            vocab,
            config,
            perturbation_key=info["perturbation_key"],
            context_categories=categories,
            priors=priors,
            dose_key=info.get("dose_key"),
        )
        if config.finetune == "decoder":
            for k in range(config.n_members):
                dec = copy.deepcopy(vae)
                load_state_dict_strict(d, dec.decoder, name=f"decoder_{k}.safetensors")
                model.decoders[k] = dec.requires_grad_(False)
        model.calibrator = ConformalCalibrator.from_dict(calib["calibrator"]) if calib.get("calibrator") else None
        model.ood_reference = float(calib.get("ood_reference", 1.0))
        model.seen_ood_scores = [float(v) for v in calib.get("seen_ood_scores", [])]
        model.val_conditions = [list(p) for p in calib.get("val_conditions", [])]
        model.vae_source = source
        model.eval()
        return model
