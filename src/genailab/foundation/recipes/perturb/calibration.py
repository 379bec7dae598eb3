"""Uncertainty of the perturbation ensemble: split-conformal intervals and the OOD score's reference.

The members' spread in predicted mean expression is calibrated by split conformal prediction on
*validation perturbations* held out of training. The OOD score of a query is the members'
disagreement on its latent shift relative to their median disagreement on the training
(perturbation, context) groups (epistemic uncertainty: members agree where data constrained them).

This module is the one home of ``calibration.json`` (:func:`write_calibration`,
:func:`read_calibration`, :func:`load_calibration`), written by plain and adapted model directories alike.
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
from genailab.errors import CheckpointError
from genailab.foundation.objectives.uncertainty import ConformalCalibrator
from genailab.foundation.perturbation.vocab import PerturbationVocab
from genailab.foundation.recipes.perturb.encoding import Cells, controls_by_context
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
    "interval",
    "load_calibration",
    "member_disagreement",
    "ood_threshold",
    "read_calibration",
    "write_calibration",
]

CALIBRATION_NAME = "calibration.json"
MIN_OOD_THRESHOLD = 2.0
OOD_QUANTILE = 0.95
MAX_REFERENCE_CONTROLS = 256  # control cells behind each training group's disagreement


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
    """Fit ``model``'s OOD reference on the training groups and its conformal calibrator on the validation ones.

    Sets ``model.ood_reference``, ``seen_ood_scores``, ``val_conditions`` and ``calibrator``
    (``None`` without validation conditions).
    """
    control = model.vocab.control
    controls = controls_by_context(cells, train_rows, control)

    def groups(rows: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
        pert = rows[cells.labels[rows] != control]
        keys = sorted({(cells.labels[r], cells.contexts[r]) for r in pert.tolist()})
        return [(c, x, pert[(cells.labels[pert] == c) & (cells.contexts[pert] == x)]) for c, x in keys if x in controls]

    rng = np.random.default_rng(seed)
    scores = []
    for c, x, rows in groups(train_rows):
        ctrl = controls[x]
        if len(ctrl) > MAX_REFERENCE_CONTROLS:
            ctrl = np.sort(rng.choice(ctrl, MAX_REFERENCE_CONTROLS, replace=False))
        codes = cells.context_codes[int(rows[0])].numpy()
        scores.append(member_disagreement(model.nets, model.vocab, cells.z[torch.as_tensor(ctrl)], c, codes, seed=seed))
    model.ood_reference = float(np.median(scores)) if scores else 1.0
    model.seen_ood_scores = [float(v / max(model.ood_reference, 1e-12)) for v in scores]
    val = groups(val_rows)
    model.val_conditions = [[c, x] for c, x, _ in val]
    if not val:
        model.calibrator = None
        return
    y, mu, sd = [], [], []
    for c, x, rows in val:
        pred, _ = model.query(adata, controls[x], c, x_codes_row=int(rows[0]), cells=cells, seed=seed)
        y.append(log_normalize(cells.counts_ds[rows.tolist()][BATCH_KEYS.COUNTS].numpy()).mean(0))  # (G,)
        mu.append(pred.mean)
        sd.append(pred.sigma)
    model.calibrator = ConformalCalibrator.fit(np.stack(y), np.stack(mu), np.stack(sd))


# ---------------------------------------------------------------------- using it
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
    """What ``calibration.json`` holds: the calibrator (or ``None``), the OOD reference and scores, val conditions."""
    return {
        "calibrator": model.calibrator.to_dict() if model.calibrator is not None else None,
        "ood_reference": model.ood_reference,
        "seen_ood_scores": model.seen_ood_scores,
        "val_conditions": model.val_conditions,
    }


def write_calibration(directory: str | Path, model: PerturbDeltaModel) -> Path:
    """Write ``model``'s calibration to ``directory/calibration.json``; returns the file."""
    path = Path(directory) / CALIBRATION_NAME
    atomic_write_json(path, calibration_payload(model))
    return path


def read_calibration(directory: str | Path, *, what: str | None = None) -> dict[str, Any]:
    """Read ``directory/calibration.json`` into the values of the model attributes of the same names.

    Returns
    -------
    ``{"calibrator": ConformalCalibrator | None, "ood_reference": float, "seen_ood_scores": list[float],
    "val_conditions": list[list[str]]}``.

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
        }
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{what}: {CALIBRATION_NAME} is malformed: {err}") from err


def apply_calibration(model: PerturbDeltaModel, values: Mapping[str, Any]) -> None:
    """Set ``model``'s calibration attributes from :func:`read_calibration`'s output."""
    model.calibrator = values["calibrator"]
    model.ood_reference = values["ood_reference"]
    model.seen_ood_scores = values["seen_ood_scores"]
    model.val_conditions = values["val_conditions"]


def load_calibration(directory: str | Path, model: PerturbDeltaModel, *, what: str | None = None) -> None:
    """Set ``model``'s calibration attributes from ``directory/calibration.json`` (see :func:`read_calibration`)."""
    apply_calibration(model, read_calibration(directory, what=what))
