"""Uncertainty and OOD scores of perturbation predictions: per query, pooled, beside a reference sigma.

Pooled over genes x queries, coverage mostly measures gene scale: most genes barely move, so any sigma
proportional to a gene's spread covers them. The figures here are therefore also computed *per query*
(:func:`query_uncertainty`): coverage of the 90% interval and its mean width on the query's top-20 DE
genes and on all genes, and the CRPS of the calibrated Gaussian; :func:`summarise_query_uncertainty`
gives their mean and median over queries and the fraction of queries whose top-20-DE coverage lies in
:data:`COVERAGE_TARGET`. :func:`reference_comparison` puts a method beside a *reference* sigma (any other
method the caller scored, e.g. the model's mean with a per-gene control-SD sigma) on the queries both
scored, with the ratios ``method / reference`` of widths and CRPS (below 1: sharper than the reference).
:func:`pooled_sigma_scores` keeps the pooled figures (coverage per level, CRPS, ECE, Spearman of sigma
with the error, calibration and risk-coverage curves).

:func:`ood_scores` scores a method's OOD score: the AUROC of the query scores (positives) against
negatives, which are scores of unseen but in-distribution validation conditions when given and
otherwise scores of seen training conditions (``ood_negatives_kind`` says which), and the Spearman
correlation over queries of the OOD score with the per-query error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from genailab.errors import InvalidInputError
from genailab.evaluation.perturbation_metrics import QueryPrediction, QueryTruth, top_de_genes
from genailab.foundation.objectives.uncertainty import (
    LEVELS,
    ConformalCalibrator,
    auroc,
    calibration_curve,
    gaussian_crps,
    interval_coverage,
    regression_ece,
    risk_coverage,
    spearman,
)

__all__ = [
    "COVERAGE_LEVEL",
    "COVERAGE_TARGET",
    "MAX_CURVE_POINTS",
    "OOD_NEGATIVE_KINDS",
    "UNCERTAINTY_METRICS",
    "calibrator_for",
    "ood_scores",
    "pooled_sigma_scores",
    "query_uncertainty",
    "reference_comparison",
    "summarise_query_uncertainty",
    "uncertainty_per_query",
]

COVERAGE_LEVEL = 0.9
COVERAGE_TARGET = (0.85, 0.95)  # per-query top-20-DE coverage counted as calibrated
MAX_CURVE_POINTS = 200
N_DE = 20
UNCERTAINTY_METRICS = ("coverage90_de20", "coverage90_all", "width90_de20", "width90_all", "crps_de20", "crps_all")
# Ratio (method / reference) columns of the reference comparison -> the per-query figure they divide.
_RATIOS = {
    "width90_de20_ratio": "width90_de20",
    "width90_all_ratio": "width90_all",
    "crps_de20_ratio": "crps_de20",
    "crps_all_ratio": "crps_all",
}
OOD_NEGATIVE_KINDS = {
    "validation": "OOD scores of unseen, in-distribution validation conditions",
    "seen": "OOD scores of seen training conditions (the model was fitted on them)",
}
_KEYS = ["condition", "context"]


# --------------------------------------------------------------------------------------------------
# Calibrators and intervals
# --------------------------------------------------------------------------------------------------


def calibrator_for(
    method: str, calibrator: ConformalCalibrator | Mapping[str, ConformalCalibrator] | None
) -> tuple[ConformalCalibrator, bool]:
    """The calibrator of one method and whether it is a fitted one.

    Parameters
    ----------
    method
        The method name.
    calibrator
        One calibrator for every method, ``{method: calibrator}`` or ``None``.

    Returns
    -------
    ``(calibrator, calibrated)``: the method's calibrator, or the Gaussian identity
    (:meth:`ConformalCalibrator.uncalibrated`) with ``calibrated=False`` when it has none.
    """
    if isinstance(calibrator, Mapping):
        calibrator = calibrator.get(method)
    if calibrator is None:
        return ConformalCalibrator.uncalibrated(), False
    if not isinstance(calibrator, ConformalCalibrator):
        raise InvalidInputError(f"calibrator is a {type(calibrator).__name__}; expected a ConformalCalibrator or None.")
    return calibrator, True


def _has_level(calibrator: ConformalCalibrator, level: float) -> bool:
    return any(math.isclose(level, lv, abs_tol=1e-9) for lv in calibrator.levels)


def _interval(
    mu: np.ndarray, sigma: np.ndarray, calibrator: ConformalCalibrator, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """The calibrator's interval at ``level``, or the Gaussian one of its calibrated sigma if not fitted."""
    if _has_level(calibrator, level):
        return calibrator.interval(mu, sigma, level)
    half = float(stats.norm.ppf((1.0 + level) / 2.0)) * calibrator.calibrated_sigma(sigma)
    return mu - half, mu + half


# --------------------------------------------------------------------------------------------------
# Per query
# --------------------------------------------------------------------------------------------------


def query_uncertainty(
    pred: QueryPrediction, truth: QueryTruth, calibrator: ConformalCalibrator, *, n_de: int = N_DE
) -> dict[str, float]:
    """Coverage and width of the 90% interval and CRPS of one query, on its top DE genes and on all genes.

    Parameters
    ----------
    pred
        A prediction with a ``sigma``.
    truth
        The query's observed cells; the truth of each gene is the observed perturbed mean.
    calibrator
        The method's calibrator; its 90% interval is used (the Gaussian interval of its calibrated sigma
        when 0.9 was not fitted), and CRPS is that of ``N(mean, calibrated sigma^2)``.
    n_de
        Number of top DE genes (by ``|Welch t|``, see :func:`top_de_genes`).

    Returns
    -------
    ``{name: value}`` for every name in :data:`UNCERTAINTY_METRICS`.
    """
    if pred.sigma is None:
        raise InvalidInputError("pred.sigma is None; expected a prediction with a per-gene sigma.")
    y = np.asarray(truth.perturbed, dtype=np.float64).mean(0)
    mu, sigma = np.asarray(pred.mean, dtype=np.float64), np.asarray(pred.sigma, dtype=np.float64)
    lo, hi = _interval(mu, sigma, calibrator, COVERAGE_LEVEL)
    covered = (y >= lo) & (y <= hi)
    width = hi - lo
    crps = gaussian_crps(y, mu, calibrator.calibrated_sigma(sigma))
    de = top_de_genes(truth.perturbed, truth.control, n_de)
    return {
        "coverage90_de20": float(covered[de].mean()),
        "coverage90_all": float(covered.mean()),
        "width90_de20": float(width[de].mean()),
        "width90_all": float(width.mean()),
        "crps_de20": float(crps[de].mean()),
        "crps_all": float(crps.mean()),
    }


def uncertainty_per_query(
    predictions: Mapping[str, Sequence[QueryPrediction | None]],
    truths: Sequence[QueryTruth],
    calibrator: ConformalCalibrator | Mapping[str, ConformalCalibrator] | None,
) -> pd.DataFrame:
    """:func:`query_uncertainty` of every (method, query) with a sigma.

    Parameters
    ----------
    predictions
        ``{method: [QueryPrediction or None, ...]}`` aligned with ``truths`` (checked).
    truths
        The queries (checked).
    calibrator
        As for :func:`calibrator_for`.

    Returns
    -------
    One row per (method, query) with a sigma: ``method``, ``condition``, ``context`` and the
    :data:`UNCERTAINTY_METRICS`.
    """
    rows = []
    for method, preds in predictions.items():
        cal, _ = calibrator_for(method, calibrator)
        for p, t in zip(preds, truths, strict=True):
            if p is None or p.sigma is None:
                continue
            rows.append(
                {"method": method, "condition": t.condition, "context": t.context, **query_uncertainty(p, t, cal)}
            )
    return pd.DataFrame(rows, columns=["method", *_KEYS, *UNCERTAINTY_METRICS])


def _mean(v: pd.Series | np.ndarray) -> float:
    arr = np.asarray(v, dtype=np.float64)
    return float(arr.mean()) if arr.size else float("nan")


def summarise_query_uncertainty(per_query: pd.DataFrame, method: str) -> dict[str, float]:
    """Mean and median over queries of one method's per-query uncertainty figures.

    Parameters
    ----------
    per_query
        The frame of :func:`uncertainty_per_query`.
    method
        The method.

    Returns
    -------
    ``{"<name>_mean", "<name>_median"}`` for every name in :data:`UNCERTAINTY_METRICS`, plus
    ``"coverage90_de20_in_target"``: the fraction of queries whose top-20-DE coverage lies in
    :data:`COVERAGE_TARGET` (both ends included); empty when the method has no row.
    """
    sub = per_query[per_query["method"] == method]
    if sub.empty:
        return {}
    out: dict[str, float] = {}
    for m in UNCERTAINTY_METRICS:
        out[f"{m}_mean"] = _mean(sub[m])
        out[f"{m}_median"] = float(np.median(sub[m].to_numpy(dtype=np.float64)))
    cov = sub["coverage90_de20"].to_numpy(dtype=np.float64)
    lo, hi = COVERAGE_TARGET
    out["coverage90_de20_in_target"] = float(((cov >= lo - 1e-12) & (cov <= hi + 1e-12)).mean())
    return out


def reference_comparison(per_query: pd.DataFrame, method: str, reference: str) -> dict[str, Any]:
    """A method's per-query uncertainty beside a reference sigma's, on the queries both scored.

    Parameters
    ----------
    per_query
        The frame of :func:`uncertainty_per_query`.
    method, reference
        The method and its reference (another method of the evaluation, e.g. a control-SD sigma).

    Returns
    -------
    ``{"reference", "n_queries"}``, then for every name in :data:`UNCERTAINTY_METRICS` the method's mean
    over the shared queries (``<name>``) and the reference's (``reference_<name>``), and the ratios
    ``width90_de20_ratio``, ``width90_all_ratio``, ``crps_de20_ratio``, ``crps_all_ratio`` (method mean /
    reference mean: below 1, the method's intervals are narrower or its CRPS lower). Figures are
    ``nan`` when no query is shared.
    """
    a = per_query[per_query["method"] == method]
    b = per_query[per_query["method"] == reference]
    both = a.merge(b, on=_KEYS, suffixes=("", "_ref"))
    out: dict[str, Any] = {"reference": reference, "n_queries": len(both)}
    for m in UNCERTAINTY_METRICS:
        out[m] = _mean(both[m])
        out[f"reference_{m}"] = _mean(both[f"{m}_ref"])
    for key, m in _RATIOS.items():
        den = out[f"reference_{m}"]
        out[key] = out[m] / den if math.isfinite(den) and den > 0 else float("nan")
    return out


# --------------------------------------------------------------------------------------------------
# Pooled over genes x queries
# --------------------------------------------------------------------------------------------------


def _subsample_curve(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    idx = np.unique(np.linspace(0, x.size - 1, min(MAX_CURVE_POINTS, x.size)).round().astype(int))
    return x[idx].tolist(), y[idx].tolist()


def pooled_sigma_scores(
    preds: Sequence[QueryPrediction | None],
    truths: Sequence[QueryTruth],
    calibrator: ConformalCalibrator,
    calibrated: bool,
) -> dict[str, Any] | None:
    """Uncertainty scores of one method pooled over genes x queries.

    Parameters
    ----------
    preds
        The method's predictions, aligned with ``truths``; those without a sigma are skipped.
    truths
        The queries.
    calibrator, calibrated
        The method's calibrator and whether it was fitted (see :func:`calibrator_for`).

    Returns
    -------
    ``None`` without any sigma; else ``n_queries``, ``n_values``, ``calibrated``, ``coverage_<level>``
    for each of ``LEVELS`` (``nan`` for levels the calibrator lacks), ``crps``, ``ece``,
    ``spearman_sigma_error`` and the ``calibration_curve`` and ``risk_coverage`` curves.
    """
    pairs = [(p, t) for p, t in zip(preds, truths, strict=True) if p is not None and p.sigma is not None]
    if not pairs:
        return None
    y = np.concatenate([t.perturbed.mean(0) for _, t in pairs])  # (n_queries * G,)
    mu = np.concatenate([p.mean for p, _ in pairs])
    sigma = np.concatenate([p.sigma for p, _ in pairs])
    cal_sigma = calibrator.calibrated_sigma(sigma)
    abs_err = np.abs(mu - y)
    out: dict[str, Any] = {"n_queries": len(pairs), "n_values": int(y.size), "calibrated": calibrated}
    for level in LEVELS:
        key = f"coverage_{round(level * 100)}"
        out[key] = (
            interval_coverage(y, *calibrator.interval(mu, sigma, level))
            if _has_level(calibrator, level)
            else float("nan")
        )
    out["crps"] = float(gaussian_crps(y, mu, cal_sigma).mean())
    out["ece"] = regression_ece(y, mu, cal_sigma)
    out["spearman_sigma_error"] = spearman(cal_sigma, abs_err)
    nominal, observed = calibration_curve(y, mu, cal_sigma)
    out["calibration_curve"] = {"nominal": nominal.tolist(), "observed": observed.tolist()}
    coverage, risk = risk_coverage(abs_err, cal_sigma)
    cov, rsk = _subsample_curve(coverage, risk)
    out["risk_coverage"] = {"coverage": cov, "risk": rsk}
    return out


# --------------------------------------------------------------------------------------------------
# OOD scores
# --------------------------------------------------------------------------------------------------


def _spearman_finite(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return spearman(a[ok], b[ok]) if ok.sum() >= 2 else float("nan")


def ood_scores(
    method: str,
    per_query: pd.DataFrame,
    *,
    seen_ood_scores: Mapping[str, Sequence[float]] | None = None,
    ood_negatives: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """AUROC of a method's query OOD scores against negatives, and their rank correlation with the error.

    Parameters
    ----------
    method
        The method.
    per_query
        The evaluation's per-query frame (``method``, ``ood_score``, ``pearson_delta_de20``, ``mse_de20``).
    seen_ood_scores
        ``{method: scores of seen training conditions}``: the negatives when ``ood_negatives`` has none
        for the method.
    ood_negatives
        ``{method: scores of unseen, in-distribution validation conditions}``: the honest negatives.

    Returns
    -------
    Empty without query OOD scores. Else ``spearman_ood_error_pearson_de20`` (Spearman over queries of
    ``ood_score`` with ``1 - pearson_delta_de20``), ``spearman_ood_error_mse_de20`` (with ``mse_de20``),
    ``n_ood_queries`` and, when negatives exist, ``ood_auroc`` (positives: the query scores),
    ``ood_negatives_kind`` (``"validation"`` or ``"seen"``, see :data:`OOD_NEGATIVE_KINDS`) and
    ``n_ood_negatives``.
    """
    if "ood_score" not in per_query.columns:
        return {}
    sub = per_query[per_query["method"] == method]
    ood = sub["ood_score"].to_numpy(dtype=np.float64)
    has = np.isfinite(ood)
    if not has.any():
        return {}
    out: dict[str, Any] = {
        "n_ood_queries": int(has.sum()),
        "spearman_ood_error_pearson_de20": _spearman_finite(ood, 1.0 - sub["pearson_delta_de20"].to_numpy(dtype=float)),
        "spearman_ood_error_mse_de20": _spearman_finite(ood, sub["mse_de20"].to_numpy(dtype=float)),
    }
    for kind, source in (("validation", ood_negatives), ("seen", seen_ood_scores)):
        if source is None or method not in source:
            continue
        neg = np.asarray(source[method], dtype=np.float64).ravel()
        if neg.size == 0:
            continue
        out["ood_auroc"] = auroc(ood[has], neg)
        out["ood_negatives_kind"] = kind
        out["n_ood_negatives"] = int(neg.size)
        break
    return out
