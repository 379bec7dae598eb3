"""How well are perturbation responses predicted? Per-query metrics, a per-method summary and uncertainty.

A *query* is one perturbation (``condition``) in one cellular ``context``; its truth is the observed
perturbed cells and the observed control cells of that context, both log-normalised per cell
(``log1p(counts / library * 1e4)``). A method predicts the mean expression of the perturbed population,
optionally a raw per-gene predictive standard deviation of that mean, predicted cells and an
out-of-distribution score.

:func:`query_metrics` scores one query (it lives in :mod:`genailab.evaluation.perturbation_metrics` with
:class:`QueryTruth`, :class:`QueryPrediction` and :data:`METRICS`; all are importable from here). Deltas
are taken against the observed control mean of the context (``delta = mean - control mean``), so a
method that predicts "no change" has a constant zero delta and a ``nan`` delta correlation. "DE genes"
are the genes with the largest ``|Welch t|`` between the observed perturbed and control cells
(:func:`top_de_genes`), so they depend only on the truth.

:func:`evaluate_perturbation_predictions` scores every (method, query) pair, summarises each metric per
method (mean and sd across queries) and, for methods with a sigma, scores the uncertainty: coverage of
conformal intervals from a :class:`~genailab.foundation.objectives.uncertainty.ConformalCalibrator`
(Gaussian intervals of the raw sigma when none is given), CRPS and calibration error of the calibrated
Gaussian, the rank correlation of sigma with the absolute error, a risk-coverage curve, and an OOD
AUROC of the method's query scores against its scores on seen perturbations.

:func:`~genailab.evaluation.reports.perturbation.write_perturbation_report` writes ``metrics.json`` and
a one-file ``report.html``; it is still importable from here.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from genailab.errors import InvalidInputError
from genailab.evaluation.perturbation_metrics import (
    METRICS,
    QueryPrediction,
    QueryTruth,
    check_count,
    check_predictions,
    check_truths,
    gene_set_indices,
    query_metrics,
    top_de_genes,
)
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
    "METRICS",
    "PerturbationEvaluation",
    "QueryPrediction",
    "QueryTruth",
    "evaluate_perturbation_predictions",
    "gene_set_indices",
    "query_metrics",
    "top_de_genes",
]

MAX_CURVE_POINTS = 200


# --------------------------------------------------------------------------------------------------
# Evaluation over methods and queries
# --------------------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    """Nested dict/list copy with numpy scalars and arrays as Python values and non-finite floats as None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer | bool | np.bool_):
        return obj.item() if isinstance(obj, np.generic) else obj
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


@dataclass
class PerturbationEvaluation:
    """Result of :func:`evaluate_perturbation_predictions`.

    Attributes
    ----------
    per_query
        One row per (method, condition, context): ``method``, ``condition``, ``context``, every metric of
        :data:`METRICS`, ``n_cells`` (observed perturbed cells) and ``ood_score`` when any prediction
        has one.
    summary
        One row per method: ``method``, ``n_queries`` and ``<metric>_mean`` / ``<metric>_sd`` (sd with
        ddof=1; ``nan`` values are skipped).
    uncertainty
        ``{method: {...}}`` for methods with a sigma (coverage, CRPS, ECE, Spearman, curves) or with OOD
        scores on both the queries and the seen perturbations (``ood_auroc``).
    settings
        The settings used (PCs of the energy distance, seed, whether intervals were calibrated).
    """

    per_query: pd.DataFrame
    summary: pd.DataFrame
    uncertainty: dict[str, dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (non-finite numbers become ``None``).

        Returns
        -------
        ``{"summary": [rows], "per_query": [rows], "uncertainty": {...}, "settings": {...}}``.
        """
        return _jsonable(
            {
                "summary": self.summary.to_dict(orient="records"),
                "per_query": self.per_query.to_dict(orient="records"),
                "uncertainty": self.uncertainty,
                "settings": self.settings,
            }
        )


def _fit_pca(truths: list[QueryTruth], n_pcs: int, seed: int) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """PCA on all observed cells (each distinct control array once)."""
    from sklearn.decomposition import PCA

    blocks, seen = [], set()
    for t in truths:
        blocks.append(t.perturbed)
        key = (id(t.control), t.control.shape)
        if key not in seen:
            seen.add(key)
            blocks.append(t.control)
    x = np.vstack(blocks)
    k = int(max(1, min(n_pcs, x.shape[0] - 1, x.shape[1])))
    pca = PCA(n_components=k, random_state=seed).fit(x)
    return pca.transform, k


def _calibrator_for(
    method: str, calibrator: ConformalCalibrator | Mapping[str, ConformalCalibrator] | None
) -> tuple[ConformalCalibrator, bool]:
    if isinstance(calibrator, Mapping):
        calibrator = calibrator.get(method)
    if calibrator is None:
        return ConformalCalibrator.uncalibrated(), False
    if not isinstance(calibrator, ConformalCalibrator):
        raise InvalidInputError(f"calibrator is a {type(calibrator).__name__}; expected a ConformalCalibrator or None.")
    return calibrator, True


def _subsample_curve(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    idx = np.unique(np.linspace(0, x.size - 1, min(MAX_CURVE_POINTS, x.size)).round().astype(int))
    return x[idx].tolist(), y[idx].tolist()


def _sigma_scores(
    preds: list[QueryPrediction | None], truths: list[QueryTruth], calibrator: ConformalCalibrator, calibrated: bool
) -> dict[str, Any] | None:
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
        if any(math.isclose(level, lv, abs_tol=1e-9) for lv in calibrator.levels):
            out[key] = interval_coverage(y, *calibrator.interval(mu, sigma, level))
        else:
            out[key] = float("nan")
    out["crps"] = float(gaussian_crps(y, mu, cal_sigma).mean())
    out["ece"] = regression_ece(y, mu, cal_sigma)
    out["spearman_sigma_error"] = spearman(cal_sigma, abs_err)
    nominal, observed = calibration_curve(y, mu, cal_sigma)
    out["calibration_curve"] = {"nominal": nominal.tolist(), "observed": observed.tolist()}
    coverage, risk = risk_coverage(abs_err, cal_sigma)
    cov, rsk = _subsample_curve(coverage, risk)
    out["risk_coverage"] = {"coverage": cov, "risk": rsk}
    return out


def _ood_auroc(
    method: str, preds: list[QueryPrediction | None], seen_ood_scores: Mapping[str, Sequence[float]] | None
) -> float | None:
    if seen_ood_scores is None or method not in seen_ood_scores:
        return None
    pos = [p.ood_score for p in preds if p is not None and p.ood_score is not None]
    neg = np.asarray(seen_ood_scores[method], dtype=np.float64).ravel()
    if not pos or neg.size == 0:
        return None
    return auroc(np.asarray(pos), neg)


def evaluate_perturbation_predictions(
    truths: Sequence[QueryTruth],
    predictions: Mapping[str, Sequence[QueryPrediction | None]],
    *,
    genes: Sequence[str],
    gene_sets: Mapping[str, Sequence[str]] | None = None,
    calibrator: ConformalCalibrator | Mapping[str, ConformalCalibrator] | None = None,
    seen_ood_scores: Mapping[str, Sequence[float]] | None = None,
    n_pcs: int = 30,
    seed: int = 0,
) -> PerturbationEvaluation:
    """Score every method on every query, summarise per method and score the uncertainty.

    Parameters
    ----------
    truths
        One :class:`QueryTruth` per query, arrays with ``len(genes)`` columns.
    predictions
        ``{method: [QueryPrediction or None, ...]}`` aligned with ``truths``; ``None`` means the method
        does not apply to that query (no row).
    genes
        Gene names of the columns.
    gene_sets
        ``{set name: gene names}`` for the pathway metrics (sets with >= 5 matched genes are used).
    calibrator
        Conformal calibrator of the raw sigmas (one for every method, or ``{method: calibrator}``), fitted
        on held-out data; ``None`` (or a method missing from the mapping) uses Gaussian intervals of the
        raw sigma (:meth:`ConformalCalibrator.uncalibrated`).
    seen_ood_scores
        ``{method: OOD scores of training / seen perturbations}``, the negatives of the OOD AUROC whose
        positives are the method's query ``ood_score`` values; methods absent here get no AUROC.
    n_pcs
        PCs of the PCA (fitted on all observed cells) in which the energy distance is measured; capped
        at ``n_cells - 1`` and ``G``.
    seed
        Seed of the PCA and the energy-distance subsamples.

    Returns
    -------
    The :class:`PerturbationEvaluation`.
    """
    n_genes = len(genes)
    if n_genes == 0:
        raise InvalidInputError("genes is empty; expected one name per expression column.")
    n_pcs = check_count(n_pcs, "n_pcs")
    truths = check_truths(truths, n_genes)
    preds = check_predictions(predictions, truths, n_genes)
    sets = None if gene_sets is None else gene_set_indices(gene_sets, genes)
    if seen_ood_scores is not None and not isinstance(seen_ood_scores, Mapping):
        raise InvalidInputError(
            f"seen_ood_scores is a {type(seen_ood_scores).__name__}; expected a mapping method -> scores or None."
        )

    any_cells = any(p is not None and p.cells is not None for ps in preds.values() for p in ps)
    pca, k = _fit_pca(truths, n_pcs, seed) if any_cells else (None, 0)
    has_ood = any(p is not None and p.ood_score is not None for ps in preds.values() for p in ps)

    rows = []
    for method, method_preds in preds.items():
        for p, t in zip(method_preds, truths, strict=True):
            if p is None:
                continue
            row: dict[str, Any] = {"method": method, "condition": t.condition, "context": t.context}
            row.update(query_metrics(p, t, gene_sets=sets, seed=seed, pca=pca))
            row["n_cells"] = int(t.perturbed.shape[0])
            if has_ood:
                row["ood_score"] = float("nan") if p.ood_score is None else p.ood_score
            rows.append(row)
    columns = ["method", "condition", "context", *METRICS, "n_cells", *(["ood_score"] if has_ood else [])]
    per_query = pd.DataFrame(rows, columns=columns)

    summary_rows = []
    for method in preds:
        sub = per_query[per_query["method"] == method]
        srow: dict[str, Any] = {"method": method, "n_queries": len(sub)}
        for m in METRICS:
            srow[f"{m}_mean"] = float(sub[m].mean()) if len(sub) else float("nan")
            srow[f"{m}_sd"] = float(sub[m].std(ddof=1)) if len(sub) > 1 else float("nan")
        summary_rows.append(srow)
    summary = pd.DataFrame(summary_rows)

    uncertainty: dict[str, dict[str, Any]] = {}
    for method, method_preds in preds.items():
        cal, calibrated = _calibrator_for(method, calibrator)
        entry = _sigma_scores(method_preds, truths, cal, calibrated) or {}
        ood = _ood_auroc(method, method_preds, seen_ood_scores)
        if ood is not None:
            entry["ood_auroc"] = ood
        if entry:
            uncertainty[method] = entry

    settings = {
        "n_queries": len(truths),
        "n_genes": n_genes,
        "methods": list(preds),
        "n_pcs": k,
        "seed": seed,
        "n_gene_sets": None if sets is None else len(sets),
        "delta": "mean - observed control mean of the context",
        "de_genes": "largest |Welch t| of observed perturbed vs control cells",
    }
    return PerturbationEvaluation(per_query, summary, uncertainty, settings)


def __getattr__(name: str) -> Any:
    """Serve ``write_perturbation_report`` from its new home, :mod:`genailab.evaluation.reports.perturbation`.

    Resolved on first access rather than imported at the top: the report module builds on this one,
    so a top-level import would be an import cycle.
    """
    if name == "write_perturbation_report":
        return importlib.import_module("genailab.evaluation.reports.perturbation").write_perturbation_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
