"""Intervals over held-out conditions: bootstrap means, per-method summaries and paired comparisons.

Every figure of a perturbation evaluation is a mean over *queries* (held-out conditions), and a handful
of queries carries a lot of sampling noise. :func:`bootstrap_ci` gives the 95% percentile bootstrap
interval of such a mean (queries resampled with replacement); :func:`summarise_metrics` writes the mean,
sd and interval of every metric per method; :func:`paired_difference` compares two methods on the
queries both scored (mean difference, its bootstrap interval and the fraction of queries the method
wins, respecting :data:`~genailab.evaluation.perturbation_metrics.LOWER_IS_BETTER`), and
:func:`comparison_table` does that for every method against every named baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from genailab.errors import InvalidInputError
from genailab.evaluation.perturbation_metrics import LOWER_IS_BETTER, check_count

__all__ = [
    "COMPARISON_COLUMNS",
    "COMPARISON_METRICS",
    "CI_LEVEL",
    "bootstrap_ci",
    "comparison_table",
    "paired_difference",
    "summarise_metrics",
]

CI_LEVEL = 0.95
# Metrics of the method-vs-baseline comparison table, in order.
COMPARISON_METRICS = (
    "pearson_delta",
    "pearson_delta_de20",
    "mse_de20",
    "l2_top_n",
    "direction_acc_de20",
    "e_distance",
)
COMPARISON_COLUMNS = (
    "method",
    "reference",
    "metric",
    "n_queries",
    "mean_difference",
    "ci_low",
    "ci_high",
    "fraction_better",
    "lower_is_better",
)
_KEYS = ["condition", "context"]


def _finite_values(values: object) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


def _percentile_ci(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of finite ``values``; ``nan`` below 2 values."""
    if values.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    means = values[idx].mean(axis=1)
    alpha = (1.0 - CI_LEVEL) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of per-query values.

    Parameters
    ----------
    values
        One value per query; non-finite values are skipped.
    n_boot
        Bootstrap resamples (queries drawn with replacement).
    seed
        Seed of the resampling.

    Returns
    -------
    ``(low, high)``: the 2.5% and 97.5% quantiles of the resampled means; ``(nan, nan)`` with fewer
    than 2 finite values (one condition gives no interval).
    """
    n_boot = check_count(n_boot, "n_boot")
    return _percentile_ci(_finite_values(values), n_boot, seed)


def summarise_metrics(
    per_query: pd.DataFrame,
    methods: Sequence[str],
    metrics: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-method mean, sd and 95% bootstrap interval of every metric over queries.

    Parameters
    ----------
    per_query
        One row per (method, query) with a ``method`` column and one column per metric.
    methods
        The methods, in row order (a method without rows gets ``n_queries = 0`` and ``nan`` figures).
    metrics
        The metric columns to summarise.
    n_boot, seed
        Bootstrap resamples and seed (see :func:`bootstrap_ci`).

    Returns
    -------
    One row per method: ``method``, ``n_queries`` and, per metric, ``<metric>_mean``, ``<metric>_sd``
    (ddof=1), ``<metric>_ci_low`` and ``<metric>_ci_high``; ``nan`` values are skipped.
    """
    n_boot = check_count(n_boot, "n_boot")
    rows = []
    for method in methods:
        sub = per_query[per_query["method"] == method]
        row: dict[str, Any] = {"method": method, "n_queries": len(sub)}
        for m in metrics:
            v = _finite_values(sub[m]) if m in sub else np.empty(0)
            row[f"{m}_mean"] = float(v.mean()) if v.size else float("nan")
            row[f"{m}_sd"] = float(v.std(ddof=1)) if v.size > 1 else float("nan")
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = _percentile_ci(v, n_boot, seed)
        rows.append(row)
    return pd.DataFrame(rows)


def paired_difference(
    per_query: pd.DataFrame,
    metric: str,
    method: str,
    reference: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare two methods on the queries both scored: mean difference, its interval and the win rate.

    Parameters
    ----------
    per_query
        One row per (method, query): ``method``, ``condition``, ``context`` and the ``metric`` column
        (e.g. :attr:`~genailab.evaluation.perturbation.PerturbationEvaluation.per_query`).
    metric
        The metric column; lower is better when it is in
        :data:`~genailab.evaluation.perturbation_metrics.LOWER_IS_BETTER`.
    method, reference
        The method and the one it is compared with.
    n_boot, seed
        Bootstrap resamples of the paired differences, and their seed.

    Returns
    -------
    ``{"method", "reference", "metric", "n_queries", "mean_difference", "ci_low", "ci_high",
    "fraction_better", "lower_is_better"}``: ``mean_difference`` is the mean of ``method - reference``
    over the queries where both values are finite, ``ci_low``/``ci_high`` its 95% percentile bootstrap
    interval (``nan`` below 2 queries) and ``fraction_better`` the fraction of those queries where
    ``method`` is strictly better (smaller for lower-is-better metrics, larger otherwise; ``nan`` with
    no shared query).

    Raises
    ------
    InvalidInputError
        If a column is missing or ``method`` / ``reference`` has no row.
    """
    n_boot = check_count(n_boot, "n_boot")
    if not isinstance(per_query, pd.DataFrame):
        raise InvalidInputError(f"per_query is a {type(per_query).__name__}; expected a pandas DataFrame.")
    missing = [c for c in ["method", *_KEYS, metric] if c not in per_query.columns]
    if missing:
        raise InvalidInputError(f"per_query has no column(s) {missing}; expected method, condition, context, {metric}.")
    present = list(dict.fromkeys(per_query["method"].astype(str)))
    for name in (method, reference):
        if name not in present:
            raise InvalidInputError(f"method {name!r} has no rows in per_query; expected one of {present}.")
    a = per_query.loc[per_query["method"] == method, [*_KEYS, metric]]
    b = per_query.loc[per_query["method"] == reference, [*_KEYS, metric]]
    both = a.merge(b, on=_KEYS, suffixes=("_m", "_r"))
    x = both[f"{metric}_m"].to_numpy(dtype=np.float64)
    y = both[f"{metric}_r"].to_numpy(dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    diff = x[ok] - y[ok]
    lower = metric in LOWER_IS_BETTER
    ci_low, ci_high = _percentile_ci(diff, n_boot, seed)
    better = (diff < 0) if lower else (diff > 0)
    return {
        "method": method,
        "reference": reference,
        "metric": metric,
        "n_queries": int(diff.size),
        "mean_difference": float(diff.mean()) if diff.size else float("nan"),
        "ci_low": ci_low,
        "ci_high": ci_high,
        "fraction_better": float(better.mean()) if diff.size else float("nan"),
        "lower_is_better": lower,
    }


def comparison_table(
    per_query: pd.DataFrame,
    compare_to: Sequence[str],
    *,
    metrics: Sequence[str] = COMPARISON_METRICS,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Every method against every baseline of ``compare_to`` present in ``per_query``.

    Parameters
    ----------
    per_query
        One row per (method, query), as for :func:`paired_difference`.
    compare_to
        Baseline names; names without rows are skipped, and no method is compared with itself.
    metrics
        The metrics compared (those absent from ``per_query`` are skipped).
    n_boot, seed
        Bootstrap resamples and seed.

    Returns
    -------
    One row per (method, baseline, metric) with at least one shared query with finite values, columns
    :data:`COMPARISON_COLUMNS`.
    """
    if isinstance(compare_to, str):
        raise InvalidInputError(f"compare_to={compare_to!r} is a string; expected a sequence of method names.")
    methods = list(dict.fromkeys(per_query["method"].astype(str)))
    rows = []
    for method in methods:
        for ref in dict.fromkeys(str(r) for r in compare_to):
            if ref == method or ref not in methods:
                continue
            for m in metrics:
                if m not in per_query.columns:
                    continue
                row = paired_difference(per_query, m, method, ref, n_boot=n_boot, seed=seed)
                if row["n_queries"]:
                    rows.append(row)
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
