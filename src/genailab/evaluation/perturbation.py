"""How well are perturbation responses predicted? The evaluation protocol of predicted responses.

Per-query metrics, per-method summaries with intervals, paired comparisons with baselines, uncertainty
and OOD scores.

A *query* is one perturbation (``condition``) in one cellular ``context``; its truth is the observed
perturbed cells and the observed control cells of that context, both log-normalised per cell
(``log1p(counts / library * 1e4)``). A method predicts the mean expression of the perturbed population,
optionally a raw per-gene predictive standard deviation of that mean, predicted cells and an
out-of-distribution score.

:func:`query_metrics` scores one query (it lives in :mod:`genailab.evaluation.perturbation_metrics` with
:class:`QueryTruth`, :class:`QueryPrediction`, :data:`METRICS` and :data:`LOWER_IS_BETTER`; all are
importable from here). Deltas are taken against the observed control mean of the context
(``delta = mean - control mean``), so a method that predicts "no change" has a constant zero delta and a
``nan`` delta correlation. "DE genes" are the genes with the largest ``|Welch t|`` between the observed
perturbed and control cells (:func:`top_de_genes`), so they depend only on the truth. ``l2_top_n`` is the
L2 over the ``N = min(top_n, G)`` most expressed genes; the evaluation records N.

:func:`evaluate_perturbation_predictions` is the evaluation protocol:

- every (method, query) pair scored, and per method the mean, sd and 95% percentile bootstrap interval
  over queries of each metric (:mod:`genailab.evaluation.perturbation_stats`);
- every method against every baseline of ``compare_to`` on the queries both scored
  (:func:`paired_difference`: mean difference, its interval, fraction of queries won);
- the energy distance beside the no-change reference: when a method named ``no_change`` has cells (the
  caller passes the control cells), each query's ``e_distance_ratio_to_no_change``;
- for methods with a sigma (:mod:`genailab.evaluation.perturbation_uncertainty`): per query, coverage and
  width of the 90% interval on the top-20 DE genes and on all genes and the CRPS, summarised over
  queries, beside a reference sigma (``sigma_reference``), plus the figures pooled over genes x queries
  (coverage per level of conformal intervals from a
  :class:`~genailab.foundation.objectives.uncertainty.ConformalCalibrator`, Gaussian intervals of the
  raw sigma when none is given; CRPS; ECE; Spearman of sigma with the error; calibration and
  risk-coverage curves);
- for methods with OOD scores: the AUROC against honest negatives (``ood_negatives``, scores of unseen
  in-distribution validation conditions; else ``seen_ood_scores``) and Spearman(OOD score, per-query
  error).

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
    LOWER_IS_BETTER,
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
from genailab.evaluation.perturbation_stats import (
    COMPARISON_COLUMNS,
    bootstrap_ci,
    comparison_table,
    paired_difference,
    summarise_metrics,
)
from genailab.evaluation.perturbation_uncertainty import (
    COVERAGE_TARGET,
    OOD_NEGATIVE_KINDS,
    calibrator_for,
    ood_scores,
    pooled_sigma_scores,
    reference_comparison,
    summarise_query_uncertainty,
    uncertainty_per_query,
)
from genailab.foundation.objectives.uncertainty import ConformalCalibrator

__all__ = [
    "DEFAULT_COMPARE_TO",
    "LOWER_IS_BETTER",
    "METRICS",
    "NO_CHANGE",
    "SUMMARY_METRICS",
    "PerturbationEvaluation",
    "QueryPrediction",
    "QueryTruth",
    "bootstrap_ci",
    "evaluate_perturbation_predictions",
    "gene_set_indices",
    "paired_difference",
    "query_metrics",
    "top_de_genes",
]

NO_CHANGE = "no_change"  # the method whose cells (the controls) are the energy-distance reference
E_RATIO = "e_distance_ratio_to_no_change"
SUMMARY_METRICS = (*METRICS, E_RATIO)  # the per-query metric columns summarised per method
DEFAULT_COMPARE_TO = ("additive", "train_mean", "no_change")


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
        :data:`METRICS`, ``e_distance_ratio_to_no_change`` (``nan`` without a no-change reference),
        ``n_cells`` (observed perturbed cells) and ``ood_score`` when any prediction has one.
    summary
        One row per method: ``method``, ``n_queries`` and, for every name of :data:`SUMMARY_METRICS`,
        ``<metric>_mean``, ``<metric>_sd`` (ddof=1), ``<metric>_ci_low`` and ``<metric>_ci_high`` (95%
        percentile bootstrap over queries); ``nan`` values are skipped.
    uncertainty
        ``{method: {...}}`` for methods with a sigma or with OOD scores. Pooled over genes x queries:
        ``coverage_50`` ... ``coverage_95``, ``crps``, ``ece``, ``spearman_sigma_error``, the curves.
        Per query (summarised over queries): ``<name>_mean`` and ``<name>_median`` for ``coverage90_de20``,
        ``coverage90_all``, ``width90_de20``, ``width90_all``, ``crps_de20``, ``crps_all``, and
        ``coverage90_de20_in_target``; ``vs_reference`` (the method beside its reference sigma) when
        one was named. OOD: ``ood_auroc``, ``ood_negatives_kind``, ``n_ood_negatives``,
        ``n_ood_queries``, ``spearman_ood_error_pearson_de20``, ``spearman_ood_error_mse_de20``.
    settings
        The settings used (PCs of the energy distance, seed, N of ``l2_top_n``, bootstrap, references).
    comparisons
        One row per (method, baseline, metric): ``method``, ``reference``, ``metric``, ``n_queries``,
        ``mean_difference``, ``ci_low``, ``ci_high``, ``fraction_better``, ``lower_is_better`` (see
        :func:`paired_difference`).
    uncertainty_per_query
        One row per (method, query) with a sigma: ``method``, ``condition``, ``context``,
        ``coverage90_de20``, ``coverage90_all``, ``width90_de20``, ``width90_all``, ``crps_de20``,
        ``crps_all``.
    """

    per_query: pd.DataFrame
    summary: pd.DataFrame
    uncertainty: dict[str, dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    comparisons: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(COMPARISON_COLUMNS)))
    uncertainty_per_query: pd.DataFrame = field(default_factory=pd.DataFrame)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (non-finite numbers become ``None``).

        Returns
        -------
        ``{"summary": [rows], "per_query": [rows], "comparisons": [rows], "uncertainty": {...},
        "uncertainty_per_query": [rows], "settings": {...}}``.
        """
        return _jsonable(
            {
                "summary": self.summary.to_dict(orient="records"),
                "per_query": self.per_query.to_dict(orient="records"),
                "comparisons": self.comparisons.to_dict(orient="records"),
                "uncertainty": self.uncertainty,
                "uncertainty_per_query": self.uncertainty_per_query.to_dict(orient="records"),
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


def _check_score_mapping(value: object, name: str) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise InvalidInputError(f"{name} is a {type(value).__name__}; expected a mapping method -> scores or None.")


def _check_sigma_reference(sigma_reference: object, methods: Sequence[str]) -> dict[str, str]:
    if sigma_reference is None:
        return {}
    if not isinstance(sigma_reference, Mapping):
        raise InvalidInputError(
            f"sigma_reference is a {type(sigma_reference).__name__}; expected a mapping method -> reference method."
        )
    out = {}
    for method, ref in sigma_reference.items():
        for name in (method, ref):
            if str(name) not in methods:
                raise InvalidInputError(
                    f"sigma_reference names {str(name)!r}, which is not a method; expected names from {list(methods)}."
                )
        out[str(method)] = str(ref)
    return out


def _energy_ratio(per_query: pd.DataFrame) -> tuple[pd.Series, bool]:
    """Each row's ``e_distance`` over the no-change method's on the same query (``nan`` without one or if <= 0)."""
    ref = per_query[per_query["method"] == NO_CHANGE].set_index(["condition", "context"])["e_distance"]
    ref = ref[np.isfinite(ref.to_numpy(dtype=np.float64))]
    if ref.empty:
        return pd.Series(np.nan, index=per_query.index, dtype=np.float64), False
    keys = pd.MultiIndex.from_frame(per_query[["condition", "context"]])
    den = ref.reindex(keys).to_numpy(dtype=np.float64)
    num = per_query["e_distance"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isfinite(den) & (den > 0), num / np.where(den > 0, den, 1.0), np.nan)
    return pd.Series(ratio, index=per_query.index, dtype=np.float64), True


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
    top_n: int = 1000,
    n_boot: int = 1000,
    compare_to: Sequence[str] = DEFAULT_COMPARE_TO,
    sigma_reference: Mapping[str, str] | None = None,
    ood_negatives: Mapping[str, Sequence[float]] | None = None,
) -> PerturbationEvaluation:
    """Score every method on every query, summarise with intervals, compare with baselines, score uncertainty.

    Parameters
    ----------
    truths
        One :class:`QueryTruth` per query, arrays with ``len(genes)`` columns.
    predictions
        ``{method: [QueryPrediction or None, ...]}`` aligned with ``truths``; ``None`` means the method
        does not apply to that query (no row). A method named ``no_change`` whose predictions carry the
        control cells as ``cells`` is the energy-distance reference.
    genes
        Gene names of the columns.
    gene_sets
        ``{set name: gene names}`` for the pathway metrics (sets with >= 5 matched genes are used).
    calibrator
        Conformal calibrator of the raw sigmas (one for every method, or ``{method: calibrator}``), fitted
        on held-out data; ``None`` (or a method missing from the mapping) uses Gaussian intervals of the
        raw sigma (:meth:`ConformalCalibrator.uncalibrated`).
    seen_ood_scores
        ``{method: OOD scores of training / seen perturbations}``: the negatives of the OOD AUROC of
        methods absent from ``ood_negatives``.
    n_pcs
        PCs of the PCA (fitted on all observed cells) in which the energy distance is measured; capped
        at ``n_cells - 1`` and ``G``.
    seed
        Seed of the PCA, the energy-distance subsamples and the bootstrap.
    top_n
        Number of most expressed genes (by control mean) of ``l2_top_n``; the effective
        ``min(top_n, G)`` is recorded in ``settings["l2_top_n"]``.
    n_boot
        Bootstrap resamples of the intervals over queries.
    compare_to
        Baselines every method is compared with (:func:`paired_difference`); names that are not
        methods are skipped.
    sigma_reference
        ``{method: reference method}``: the reference sigma (e.g. ``"control_sd"``, scored as its own
        method with its own calibrator) shown beside the method's per-query uncertainty, with the
        ratios of widths and CRPS.
    ood_negatives
        ``{method: OOD scores of unseen, in-distribution validation conditions}``: the honest negatives
        of the OOD AUROC (``ood_negatives_kind = "validation"``).

    Returns
    -------
    The :class:`PerturbationEvaluation`.
    """
    n_genes = len(genes)
    if n_genes == 0:
        raise InvalidInputError("genes is empty; expected one name per expression column.")
    n_pcs = check_count(n_pcs, "n_pcs")
    top_n = check_count(top_n, "top_n")
    n_boot = check_count(n_boot, "n_boot")
    truths = check_truths(truths, n_genes)
    preds = check_predictions(predictions, truths, n_genes)
    sets = None if gene_sets is None else gene_set_indices(gene_sets, genes)
    _check_score_mapping(seen_ood_scores, "seen_ood_scores")
    _check_score_mapping(ood_negatives, "ood_negatives")
    if isinstance(compare_to, str) or not isinstance(compare_to, Sequence):
        raise InvalidInputError(f"compare_to={compare_to!r}; expected a sequence of method names.")
    references = _check_sigma_reference(sigma_reference, list(preds))

    any_cells = any(p is not None and p.cells is not None for ps in preds.values() for p in ps)
    pca, k = _fit_pca(truths, n_pcs, seed) if any_cells else (None, 0)
    has_ood = any(p is not None and p.ood_score is not None for ps in preds.values() for p in ps)

    rows = []
    for method, method_preds in preds.items():
        for p, t in zip(method_preds, truths, strict=True):
            if p is None:
                continue
            row: dict[str, Any] = {"method": method, "condition": t.condition, "context": t.context}
            row.update(query_metrics(p, t, gene_sets=sets, n_expressed=top_n, seed=seed, pca=pca))
            row["n_cells"] = int(t.perturbed.shape[0])
            if has_ood:
                row["ood_score"] = float("nan") if p.ood_score is None else p.ood_score
            rows.append(row)
    columns = ["method", "condition", "context", *METRICS, "n_cells", *(["ood_score"] if has_ood else [])]
    per_query = pd.DataFrame(rows, columns=columns)
    ratio, has_reference = _energy_ratio(per_query)
    per_query.insert(columns.index("e_distance") + 1, E_RATIO, ratio)

    summary = summarise_metrics(per_query, list(preds), SUMMARY_METRICS, n_boot=n_boot, seed=seed)
    comparisons = comparison_table(per_query, compare_to, n_boot=n_boot, seed=seed)

    unc_rows = uncertainty_per_query(preds, truths, calibrator)
    uncertainty: dict[str, dict[str, Any]] = {}
    for method, method_preds in preds.items():
        cal, calibrated = calibrator_for(method, calibrator)
        entry = pooled_sigma_scores(method_preds, truths, cal, calibrated) or {}
        if entry:
            entry.update(summarise_query_uncertainty(unc_rows, method))
            if method in references:
                entry["vs_reference"] = reference_comparison(unc_rows, method, references[method])
        entry.update(ood_scores(method, per_query, seen_ood_scores=seen_ood_scores, ood_negatives=ood_negatives))
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
        "l2_top_n": min(top_n, n_genes),
        "l2_top_n_label": f"L2 over the top-N expressed genes (N={min(top_n, n_genes)})",
        "intervals": f"95% percentile bootstrap over queries, n_boot={n_boot}",
        "n_boot": n_boot,
        "compare_to": [c for c in dict.fromkeys(map(str, compare_to)) if c in preds],
        "lower_is_better": sorted(LOWER_IS_BETTER),
        "e_distance_reference": NO_CHANGE if has_reference else None,
        "sigma_reference": references,
        "uncertainty_pooled": "pooled over genes x queries",
        "coverage_per_query": f"90% interval, top-20 DE genes and all genes; target {list(COVERAGE_TARGET)}",
        "ood_negatives_kinds": dict(OOD_NEGATIVE_KINDS),
        "spearman_ood_error": {
            "spearman_ood_error_pearson_de20": "Spearman over queries of ood_score and 1 - pearson_delta_de20",
            "spearman_ood_error_mse_de20": "Spearman over queries of ood_score and mse_de20",
        },
    }
    return PerturbationEvaluation(per_query, summary, uncertainty, settings, comparisons, unc_rows)


def __getattr__(name: str) -> Any:
    """Serve ``write_perturbation_report`` from its new home, :mod:`genailab.evaluation.reports.perturbation`.

    Resolved on first access rather than imported at the top: the report module builds on this one,
    so a top-level import would be an import cycle.
    """
    if name == "write_perturbation_report":
        return importlib.import_module("genailab.evaluation.reports.perturbation").write_perturbation_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
