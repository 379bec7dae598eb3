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
on *validation perturbations* held out of training. The OOD score of a query combines the
members' disagreement on its latent shift (epistemic uncertainty: members agree where data
constrained them) with its agents' distance in prior space to the trained agents, each relative to
its median on the validation conditions (:mod:`.ood`).

With ``config.base_shift='context_mean'`` (the default of new models) every agent starts from the
mean training response in its context (:mod:`.base_shift`) and the members learn the deviation.
With ``config.library_key`` every log-normalised mean uses the cells' whole-transcriptome libraries.

This module holds the AnnData-facing :class:`PerturbDeltaModel` (construction, training, prediction
entry points, persistence); the pieces live beside it: :mod:`.config`, :mod:`.formulations`,
:mod:`.net` (one member), :mod:`.encoding` and :mod:`.batches` (training data), :mod:`.calibration`,
:mod:`.prediction` and :mod:`.persistence`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

import genailab.foundation.recipes.perturb.calibration as calibration
import genailab.foundation.recipes.perturb.encoding as encoding
import genailab.foundation.recipes.perturb.prediction as prediction
from genailab.data.spec import obs_labels
from genailab.errors import InvalidInputError
from genailab.foundation.perturbation.vocab import PerturbationVocab
from genailab.foundation.recipes.perturb.config import PerturbDeltaConfig
from genailab.foundation.recipes.perturb.formulations import FORMULATIONS
from genailab.foundation.recipes.perturb.net import PerturbDeltaNet, build_net, install_priors
from genailab.foundation.recipes.perturb.persistence import load_perturb_model, save_perturb_model
from genailab.foundation.recipes.perturb.prediction import ResponsePrediction
from genailab.foundation.recipes.perturb.training import fit_ensemble
from genailab.foundation.recipes.vae.model import LatentTokenVAE
from genailab.foundation.tuning import apply_freeze

if TYPE_CHECKING:
    from anndata import AnnData

    from genailab.foundation.objectives.uncertainty import ConformalCalibrator
    from genailab.foundation.perturbation.priors import GenePriors
    from genailab.foundation.recipes.perturb.anchors import ObservedSingles
    from genailab.foundation.recipes.perturb.base_shift import BaseShift
    from genailab.foundation.recipes.perturb.ood import OODModel
    from genailab.training import TrainConfig

__all__ = [
    "FORMULATIONS",
    "PerturbDeltaConfig",
    "PerturbDeltaModel",
    "PerturbDeltaNet",
    "ResponsePrediction",
]


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
        install_priors(self.nets, vocab, priors)
        self.calibrator: ConformalCalibrator | None = None
        self.ood_reference: float = 1.0
        self.seen_ood_scores: list[float] = []
        self.val_conditions: list[list[str]] = []
        self.ood_negatives: list[float] = []  # OOD scores of the validation conditions (honest negatives)
        self.ood_model: OODModel | None = None  # the combined OOD score (None: disagreement only)
        self.base_shift: BaseShift | None = None  # fitted by fit() under config.base_shift='context_mean'
        self.de_sigma_factor: float = 1.0  # conformal multiplier of the predicted responders (calibration)
        self.observed_singles: ObservedSingles | None = None  # anchors, fitted under composition='anchored'
        self.vae_source: dict[str, str] | None = None

    # ------------------------------------------------------------------ construction
    build_net = staticmethod(build_net)  # one fresh member: see net.build_net

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
        return encoding.context_codes(adata, self.config.context_keys, self.context_categories, context)

    def context_labels(self, adata: AnnData, context: Mapping[str, str] | None = None) -> np.ndarray:
        """``(n,)`` context label of each cell (values of the context keys joined by ``|``)."""
        return encoding.context_labels(adata, self.config.context_keys, context)

    cell_data = encoding.cell_data  # (adata, rows) -> Cells: latents and encodings of the cells

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
        """Fit the base shift, train every member (each resumable from ``out_dir/member_k``), then calibrate.

        Calibration on ``val_rows`` sets the conformal calibrator, the OOD model and
        ``ood_negatives`` (the validation conditions' OOD scores).

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
        return fit_ensemble(self, adata, train_rows, val_rows, config, out_dir=out_dir, seed=seed)

    # ------------------------------------------------------------------ prediction
    query = prediction.query  # (adata, control_rows, condition, ...) -> (ResponsePrediction, disagreement)

    predict_response = prediction.predict_response  # (controls, perturbation, ...) -> ResponsePrediction

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
        pred = self.predict_response(
            controls, perturbation, context=context, allow_ood=allow_ood, seed=seed, max_controls=None, dose=dose
        )
        return prediction.response_anndata(self, pred, controls, perturbation, seed=seed, level=level, dose=dose)

    # ------------------------------------------------------------------ calibration
    @property
    def ood_threshold(self) -> float:
        """OOD flag threshold: the 95th percentile of the training groups' scores (at least 2)."""
        return calibration.ood_threshold(self.seen_ood_scores)

    def calibrated_sigma(self, sigma: np.ndarray) -> np.ndarray:
        """Calibrated predictive std of the mean response (raw ensemble std when uncalibrated)."""
        return calibration.calibrated_sigma(self.calibrator, sigma)

    def interval(self, mean: np.ndarray, sigma: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Central ``level`` interval of the mean response (conformal when calibrated, else Gaussian)."""
        return calibration.interval(self.calibrator, mean, sigma, level)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, *, vae_dir: str | Path | None = None) -> Path:
        """Save the ensemble; the VAE goes to ``directory/vae`` unless ``vae_dir`` refers to it.

        Files: ``member_K.safetensors`` (and ``decoder_K.safetensors`` with ``finetune='decoder'``),
        ``backbone_config.json``, ``perturbation.json`` (vocabulary, keys, context categories),
        ``calibration.json`` (also the OOD model, ``ood_negatives`` and the base shift),
        ``gene_priors.*``, ``vae_source.json`` and ``config.json`` (last).
        """
        return save_perturb_model(self, directory, vae_dir=vae_dir)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> PerturbDeltaModel:
        """Load a directory written by :meth:`save_pretrained` (refusing incomplete or mismatched ones).

        Raises
        ------
        CheckpointError
            An adapted directory (``genailab perturb adapt``: load it with
            :func:`genailab.foundation.recipes.load_model`), or an incomplete or mismatched one.
        """
        return load_perturb_model(cls, directory)
