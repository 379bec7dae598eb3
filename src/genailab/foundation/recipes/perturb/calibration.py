"""Uncertainty of the perturbation ensemble: split-conformal intervals and the OOD score's scales.

The members' spread in predicted mean expression is calibrated by split conformal prediction on
*validation perturbations* held out of training. One multiplier for every gene is carried by the
~95% of genes that barely move, so the genes that respond most are under-covered; the conformal step
is therefore stratified by response size (group-conditional, "Mondrian" conformal): the
:data:`DE_STRATUM_GENES` genes with the largest predicted shift of each query get their own
multiplier, stored as ``de_sigma_factor`` (the ratio of that stratum's 90% score quantile to the
rest's), so the predicted responders are covered at the nominal level too.

The OOD score of a query combines the members' disagreement on its latent shift with its agents'
distance in prior space to the trained agents, each relative to its median on the validation conditions
(:mod:`.ood`); the scores of the validation conditions are kept as the honest OOD negatives
(``model.ood_negatives``). Directories written before the combined score keep the disagreement-only one
(relative to the median disagreement on the training groups, ``ood_reference``).

This module is the one home of ``calibration.json`` (:func:`write_calibration`,
:func:`read_calibration`, :func:`load_calibration`), written by plain and adapted model directories
alike. Besides the calibration it holds what the recipe fitted on the training cells and that an
adapted directory must carry too: the base shift (:mod:`.base_shift`), the OOD model and the observed
single-agent responses (:mod:`.anchors`, beside it in ``observed_singles.safetensors``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from genailab.constants import BATCH_KEYS
from genailab.data.counts import log_normalize
from genailab.errors import CheckpointError, InvalidInputError
from genailab.foundation.objectives.uncertainty import ConformalCalibrator, default_eps
from genailab.foundation.perturbation.vocab import PerturbationVocab
from genailab.foundation.recipes.perturb.anchors import OBSERVED_SINGLES_NAME, ObservedSingles
from genailab.foundation.recipes.perturb.base_shift import BaseShift
from genailab.foundation.recipes.perturb.encoding import Cells, controls_by_context
from genailab.foundation.recipes.perturb.ood import OODModel, condition_distance, fit_ood_model, trained_support
from genailab.io import atomic_write_json
from genailab.serialization import read_json

if TYPE_CHECKING:
    from anndata import AnnData

    from genailab.foundation.recipes.perturb.model import PerturbDeltaModel

__all__ = [
    "CALIBRATION_NAME",
    "apply_calibration",
    "calibrate",
    "calibrated_sigma",
    "calibration_payload",
    "de_stratum",
    "fit_de_sigma_factor",
    "interval",
    "load_calibration",
    "member_disagreement",
    "ood_score",
    "ood_threshold",
    "read_calibration",
    "stratified_sigma",
    "write_calibration",
]

CALIBRATION_NAME = "calibration.json"
MIN_OOD_THRESHOLD = 2.0
OOD_QUANTILE = 0.95
MAX_REFERENCE_CONTROLS = 256  # control cells behind each training group's disagreement
#: Genes per query in the response-size stratum: those with the largest predicted |shift| from the controls.
DE_STRATUM_GENES = 20


# ---------------------------------------------------------------------- fitting
@torch.no_grad()
def member_disagreement(
    nets: Sequence[nn.Module],
    vocab: PerturbationVocab,
    z_base: torch.Tensor,
    condition: str,
    codes: np.ndarray,
    *,
    seed: int = 0,
) -> float:
    """Variance across members of the mean predicted latent shift of ``z_base``.

    Parameters
    ----------
    nets
        The ensemble members (:class:`~genailab.foundation.recipes.perturb.net.PerturbDeltaNet`).
    vocab
        Encodes ``condition``.
    z_base
        ``(n, m, d)`` standardised latents of control cells.
    condition
        The condition label.
    codes
        ``(K,)`` context codes of the query.
    seed
        Seeds the members' noise (``direct`` formulation).

    Returns
    -------
    The variance across members, averaged over latent coordinates (0 with one member).
    """
    n = z_base.shape[0]
    ids, dose = vocab.encode([condition] * n)
    ctx = torch.as_tensor(np.broadcast_to(codes, (n, len(codes))).copy())  # (n, K)
    shifts = []
    for k, net in enumerate(nets):
        gen = torch.Generator().manual_seed(seed * 7919 + k)
        z = net(z_base, torch.as_tensor(ids), torch.as_tensor(dose), ctx, generator=gen)  # (n, m, d)
        shifts.append((z - z_base).mean(0))  # (m, d)
    if len(shifts) < 2:
        return 0.0
    return float(torch.stack(shifts).var(0).mean())


@torch.no_grad()
def calibrate(
    model: PerturbDeltaModel,
    adata: AnnData,
    cells: Cells,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    *,
    seed: int = 0,
) -> None:
    """Fit ``model``'s OOD score on the training and validation groups and its conformal calibrator.

    Sets ``model.ood_reference`` (median disagreement on the training groups), ``ood_model`` (the
    combined score's scales: medians on the validation conditions), ``seen_ood_scores`` (the
    training groups' scores), ``ood_negatives`` (the validation conditions' scores, in the order of
    ``val_conditions``), ``de_sigma_factor`` (the response-size stratum's multiplier, see the module
    docstring; 1 without validation conditions) and ``calibrator`` (``None`` without validation
    conditions), fitted on the stratified sigmas. Observed means are log-normalised by the cells'
    ``library_key`` libraries when the model has one.
    """
    model.de_sigma_factor = 1.0  # the validation queries below must give raw ensemble sigmas
    control = model.vocab.control
    controls = controls_by_context(cells, train_rows, control)

    def groups(rows: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
        pert = rows[cells.labels[rows] != control]
        keys = sorted({(cells.labels[r], cells.contexts[r]) for r in pert.tolist()})
        return [(c, x, pert[(cells.labels[pert] == c) & (cells.contexts[pert] == x)]) for c, x in keys if x in controls]

    rng = np.random.default_rng(seed)
    train_groups = groups(train_rows)
    seen = []
    for c, x, rows in train_groups:
        ctrl = controls[x]
        if len(ctrl) > MAX_REFERENCE_CONTROLS:
            ctrl = np.sort(rng.choice(ctrl, MAX_REFERENCE_CONTROLS, replace=False))
        codes = cells.context_codes[int(rows[0])].numpy()
        seen.append(member_disagreement(model.nets, model.vocab, cells.z[torch.as_tensor(ctrl)], c, codes, seed=seed))
    model.ood_reference = float(np.median(seen)) if seen else 1.0
    val = groups(val_rows)
    model.val_conditions = [[c, x] for c, x, _ in val]
    y, mu, sd, ctrl_mean, val_dis = [], [], [], [], []
    for c, x, rows in val:
        pred, dis = model.query(adata, controls[x], c, x_codes_row=int(rows[0]), cells=cells, seed=seed)
        counts = cells.counts_ds[rows.tolist()][BATCH_KEYS.COUNTS].numpy()
        y.append(log_normalize(counts, library=cells.norm_library(rows)).mean(0))  # (G,)
        mu.append(pred.mean)
        sd.append(pred.sigma)
        ctrl_mean.append(pred.control_mean)
        val_dis.append(dis)
    agents, pairs = trained_support({c for c, _, _ in train_groups}, model.vocab)
    if model.ood_model is not None:  # re-fitted (adapted to a new context): the earlier training counts too
        agents = tuple(sorted({*agents, *model.ood_model.trained_agents}))
        pairs = tuple(sorted({*pairs, *model.ood_model.trained_pairs}))
    val_dist = [condition_distance(model.priors, model.vocab.parts(c), agents) for c, _, _ in val]
    model.ood_model = fit_ood_model(agents, pairs, val_dis, val_dist, fallback_disagreement=model.ood_reference)
    model.seen_ood_scores = [ood_score(model, c, v)[0] for (c, _, _), v in zip(train_groups, seen, strict=True)]
    model.ood_negatives = [ood_score(model, c, v)[0] for (c, _, _), v in zip(val, val_dis, strict=True)]
    if val:
        y_, mu_, sd_, c_ = np.stack(y), np.stack(mu), np.stack(sd), np.stack(ctrl_mean)
        model.de_sigma_factor = fit_de_sigma_factor(y_, mu_, sd_, c_)
        factor = model.de_sigma_factor
        sd_ = np.stack([stratified_sigma(a, b, k, factor) for a, b, k in zip(sd_, mu_, c_, strict=True)])
        model.calibrator = ConformalCalibrator.fit(y_, mu_, sd_)
    else:
        model.calibrator = None


def de_stratum(mean: np.ndarray, control_mean: np.ndarray, k: int = DE_STRATUM_GENES) -> np.ndarray:
    """``(G,)`` bool: the ``k`` genes with the largest predicted ``|mean - control_mean|`` (all when G <= k)."""
    shift = np.abs(np.asarray(mean, np.float64) - np.asarray(control_mean, np.float64))
    out = np.zeros(shift.shape[0], dtype=bool)
    out[np.argsort(-shift, kind="stable")[: min(k, shift.shape[0])]] = True
    return out


def stratified_sigma(sigma: np.ndarray, mean: np.ndarray, control_mean: np.ndarray, factor: float) -> np.ndarray:
    """``sigma`` with the response-size stratum (:func:`de_stratum`) multiplied by ``factor``."""
    sigma = np.asarray(sigma, np.float64)
    return np.where(de_stratum(mean, control_mean), sigma * factor, sigma)


def fit_de_sigma_factor(
    y: np.ndarray, mean: np.ndarray, sigma: np.ndarray, control_mean: np.ndarray, level: float = 0.9
) -> float:
    """Ratio of the ``level`` quantiles of normalised scores in the response-size stratum and outside it.

    Parameters
    ----------
    y, mean, sigma, control_mean
        ``(n_queries, G)`` observed means, predicted means, raw ensemble SDs and control means of the
        validation conditions.
    level
        The quantile compared (the nominal level the stratum should be covered at).

    Returns
    -------
    The factor (``>= 1``: the stratum is never narrowed below the pooled calibration; 1 when either
    stratum is empty or degenerate).
    """
    scores = np.abs(y - mean) / (sigma + default_eps(sigma))  # the calibrator's own normalised scores
    strata = np.stack([de_stratum(m, c) for m, c in zip(mean, control_mean, strict=True)])
    inside, outside = scores[strata], scores[~strata]
    if inside.size == 0 or outside.size == 0:
        return 1.0
    q_out = float(np.quantile(outside, level))
    if not np.isfinite(q_out) or q_out <= 0:
        return 1.0
    return max(1.0, float(np.quantile(inside, level)) / q_out)


# ---------------------------------------------------------------------- using it
def ood_score(model: PerturbDeltaModel, condition: str, disagreement: float) -> tuple[float, float | None]:
    """OOD score of a query of ``condition`` whose members disagree by ``disagreement``.

    Returns
    -------
    ``(score, prior distance)``: the combined score of :mod:`.ood` when ``model.ood_model`` is
    fitted, else (directories written before it) ``disagreement / ood_reference`` and ``None``.
    """
    if model.ood_model is None:
        return float(disagreement) / max(model.ood_reference, 1e-12), None
    agents = model.vocab.parts(condition)
    distance = condition_distance(model.priors, agents, model.ood_model.trained_agents)
    return model.ood_model.score(disagreement, distance, agents), distance


def ood_threshold(seen_ood_scores: Sequence[float]) -> float:
    """OOD flag threshold: the 95th percentile of the training groups' scores (at least 2)."""
    seen = [v for v in seen_ood_scores if np.isfinite(v)]
    return max(MIN_OOD_THRESHOLD, float(np.quantile(seen, OOD_QUANTILE))) if seen else MIN_OOD_THRESHOLD


def calibrated_sigma(calibrator: ConformalCalibrator | None, sigma: np.ndarray) -> np.ndarray:
    """Calibrated predictive std of the mean response (raw ensemble std when uncalibrated)."""
    return calibrator.calibrated_sigma(sigma) if calibrator is not None else np.asarray(sigma)


def interval(
    calibrator: ConformalCalibrator | None, mean: np.ndarray, sigma: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """Central ``level`` interval of the mean response (conformal when calibrated, else Gaussian)."""
    if calibrator is not None:
        return calibrator.interval(mean, sigma, level)
    from scipy.stats import norm

    q = float(norm.ppf((1 + level) / 2))
    return mean - q * sigma, mean + q * sigma


# ---------------------------------------------------------------------- calibration.json
def calibration_payload(model: PerturbDeltaModel) -> dict[str, Any]:
    """What ``calibration.json`` holds: calibrator, OOD reference, model and scores, val conditions, base shift.

    The calibrator, OOD model and base shift are ``None`` when the model has none.
    """
    return {
        "calibrator": model.calibrator.to_dict() if model.calibrator is not None else None,
        "ood_reference": model.ood_reference,
        "seen_ood_scores": model.seen_ood_scores,
        "val_conditions": model.val_conditions,
        "ood_negatives": model.ood_negatives,
        "ood_model": model.ood_model.to_dict() if model.ood_model is not None else None,
        "base_shift": model.base_shift.to_dict() if model.base_shift is not None else None,
        "de_sigma_factor": model.de_sigma_factor,
    }


def write_calibration(directory: str | Path, model: PerturbDeltaModel) -> Path:
    """Write ``model``'s calibration to ``directory/calibration.json`` (and its observed singles beside it)."""
    path = Path(directory) / CALIBRATION_NAME
    if model.observed_singles is not None:
        model.observed_singles.save(directory)
    else:
        (Path(directory) / OBSERVED_SINGLES_NAME).unlink(missing_ok=True)
    atomic_write_json(path, calibration_payload(model))
    return path


def read_calibration(directory: str | Path, *, what: str | None = None) -> dict[str, Any]:
    """Read ``directory/calibration.json`` into the values of the model attributes of the same names.

    Returns
    -------
    ``{"calibrator": ConformalCalibrator | None, "ood_reference": float, "seen_ood_scores": list[float],
    "val_conditions": list[list[str]], "ood_negatives": list[float], "ood_model": OODModel | None,
    "base_shift": BaseShift | None, "de_sigma_factor": float, "observed_singles": ObservedSingles | None}``;
    the last five are ``[]``, ``None``, ``None``, 1 and ``None`` in directories written before they existed
    (the disagreement-only OOD score, no base shift, one conformal multiplier for every gene, no anchors).

    Raises
    ------
    CheckpointError
        The file is missing, unreadable or malformed.
    """
    d = Path(directory)
    what = what or f"model directory {str(d)!r}"
    raw = read_json(d / CALIBRATION_NAME, what=what)
    try:
        return {
            "calibrator": ConformalCalibrator.from_dict(raw["calibrator"]) if raw.get("calibrator") else None,
            "ood_reference": float(raw.get("ood_reference", 1.0)),
            "seen_ood_scores": [float(v) for v in raw.get("seen_ood_scores", [])],
            "val_conditions": [list(p) for p in raw.get("val_conditions", [])],
            "ood_negatives": [float(v) for v in raw.get("ood_negatives", [])],
            "ood_model": OODModel.from_dict(raw["ood_model"]) if raw.get("ood_model") else None,
            "base_shift": BaseShift.from_dict(raw["base_shift"]) if raw.get("base_shift") else None,
            "de_sigma_factor": float(raw.get("de_sigma_factor", 1.0)),
            "observed_singles": ObservedSingles.load(d),
        }
    except (KeyError, TypeError, ValueError, AttributeError, InvalidInputError) as err:
        raise CheckpointError(f"{what}: {CALIBRATION_NAME} is malformed: {err}") from err


def apply_calibration(model: PerturbDeltaModel, values: Mapping[str, Any]) -> None:
    """Set ``model``'s calibration attributes from :func:`read_calibration`'s output."""
    model.calibrator = values["calibrator"]
    model.ood_reference = values["ood_reference"]
    model.seen_ood_scores = values["seen_ood_scores"]
    model.val_conditions = values["val_conditions"]
    model.ood_negatives = values.get("ood_negatives", [])
    model.ood_model = values.get("ood_model")
    model.base_shift = values.get("base_shift")
    model.de_sigma_factor = float(values.get("de_sigma_factor", 1.0))
    anchors = values.get("observed_singles")
    if anchors is not None:
        anchors.check_shapes(model.vae.config.n_genes, model.vae.config.latent_shape, where="model directory")
    model.observed_singles = anchors


def load_calibration(directory: str | Path, model: PerturbDeltaModel, *, what: str | None = None) -> None:
    """Set ``model``'s calibration attributes from ``directory/calibration.json`` (see :func:`read_calibration`)."""
    apply_calibration(model, read_calibration(directory, what=what))
