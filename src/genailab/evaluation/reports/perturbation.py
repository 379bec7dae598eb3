"""The perturbation report: ``metrics.json`` plus a one-file ``report.html`` of a perturbation evaluation.

:func:`write_perturbation_report` lays out a
:class:`~genailab.evaluation.perturbation.PerturbationEvaluation`: the methods side by side (mean and
95% bootstrap interval over queries, the energy distance beside its ratio to the no-change reference),
the paired comparisons with the baselines, calibration per query (a table and a histogram of the
per-query coverage), each sigma beside its reference sigma, the uncertainty pooled over genes x queries
(table, calibration and risk-coverage curves), the OOD score (AUROC with the kind of negatives, and a
scatter of the OOD score against the per-query error), predicted vs observed delta for the first
queries, and the full tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genailab.errors import InvalidInputError
from genailab.evaluation.perturbation import PerturbationEvaluation
from genailab.evaluation.perturbation_metrics import QueryPrediction, QueryTruth, top_de_genes
from genailab.evaluation.perturbation_uncertainty import COVERAGE_TARGET, UNCERTAINTY_METRICS
from genailab.evaluation.reports.html import figure_to_html, write_html_report
from genailab.io import atomic_write_json

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["write_perturbation_report"]

MAX_SCATTER_QUERIES = 12
N_DE = 20  # outlined genes of each delta scatter

# Headline metrics of the side-by-side table, in order.
_HEADLINE = (
    "pearson_delta",
    "pearson_delta_de20",
    "mse_de20",
    "l2_top_n",
    "direction_acc_de20",
    "e_distance",
    "e_distance_ratio_to_no_change",
)
_OOD_KEYS = (
    "ood_auroc",
    "ood_negatives_kind",
    "n_ood_queries",
    "n_ood_negatives",
    "spearman_ood_error_pearson_de20",
    "spearman_ood_error_mse_de20",
)
_PER_QUERY_KEYS = frozenset(
    {f"{m}_{s}" for m in UNCERTAINTY_METRICS for s in ("mean", "median")} | {"coverage90_de20_in_target"}
)
_OOD_ERRORS = {"pearson_delta_de20": "1 - Pearson delta (top-20 DE)", "mse_de20": "MSE (top-20 DE)"}


def _how_to_read(settings: Mapping[str, Any]) -> str:
    n = settings.get("l2_top_n", "n/a")
    lo, hi = COVERAGE_TARGET
    return f"""
<p>Each query is one perturbation in one context. <code>delta</code> = mean expression minus the observed
control mean of the context; DE genes are the top genes by |Welch t| of observed perturbed vs control cells.
Higher is better for Pearson, direction accuracy, R&sup2; and pathway agreement; lower is better for MSE, L2 and
the energy distance (in PCA space of the observed cells). <code>l2_top_n</code> is the L2 over the top-N
expressed genes (N={n}). Intervals are 95% percentile bootstrap intervals over queries (held-out conditions).
<code>e_distance_ratio_to_no_change</code> divides a method's energy distance by that of the control cells
(the no-change reference): below 1, the predicted cells are closer to the truth than plain controls.</p>
<p>Comparisons are paired over the queries both methods scored: the mean difference (method - baseline), its
interval, and the fraction of queries where the method is better. Uncertainty per query: coverage of the 90%
interval on the top-20 DE genes (target {lo}-{hi}) and on all genes, interval width and CRPS; ratios to a
reference sigma are method / reference (below 1: narrower or lower CRPS). Pooled figures mix genes x queries
and mostly measure gene scale. The OOD AUROC says which negatives it used; Spearman(OOD, error) should be
positive.</p>
"""


@dataclass(frozen=True)
class _Curve:
    """How one uncertainty curve of ``PerturbationEvaluation.uncertainty[method]`` is drawn."""

    title: str
    x: str
    y: str
    xlabel: str
    ylabel: str
    diagonal: bool = False
    style: Mapping[str, Any] = field(default_factory=dict)


# Uncertainty curve key -> how to draw it, in report order.
_CURVES = {
    "calibration_curve": _Curve(
        "Calibration curve",
        "nominal",
        "observed",
        "nominal coverage",
        "observed coverage",
        diagonal=True,
        style={"marker": "o", "ms": 3},
    ),
    "risk_coverage": _Curve(
        "Risk-coverage curve", "coverage", "risk", "coverage (fraction of most certain genes kept)", "mean |error|"
    ),
}


def _display(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(v) else "n/a"
    return v


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float | np.floating) and math.isfinite(v) else "n/a"


def _with_ci(mean: Any, lo: Any, hi: Any) -> str:
    if not (isinstance(mean, float | np.floating) and math.isfinite(mean)):
        return "n/a"
    if isinstance(lo, float | np.floating) and math.isfinite(lo) and math.isfinite(hi):
        return f"{mean:.4g} [{lo:.4g}, {hi:.4g}]"
    return f"{mean:.4g}"


def _table_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _display(v) for k, v in rec.items()} for rec in df.to_dict(orient="records")]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _scatter_section(
    truths: Sequence[QueryTruth], predictions: Mapping[str, Sequence[QueryPrediction | None]], n_de: int
) -> str:
    """Predicted against observed delta of every gene, one panel per query (the first 12)."""
    plt = _pyplot()
    shown = list(range(min(len(truths), MAX_SCATTER_QUERIES)))
    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.0 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax in axes.ravel()[len(shown) :]:
        ax.set_visible(False)
    for ax, i in zip(axes.ravel(), shown, strict=False):
        t = truths[i]
        perturbed, control = np.asarray(t.perturbed, dtype=np.float64), np.asarray(t.control, dtype=np.float64)
        ctrl_mean = control.mean(0)
        obs_delta = perturbed.mean(0) - ctrl_mean
        de = top_de_genes(perturbed, control, n_de)
        lo, hi = float(obs_delta.min()), float(obs_delta.max())
        for j, (method, preds) in enumerate(predictions.items()):
            p = preds[i]
            if p is None:
                continue
            pred_delta = np.asarray(p.mean, dtype=np.float64) - ctrl_mean
            c = colours[j % len(colours)]
            ax.scatter(obs_delta, pred_delta, s=4, alpha=0.35, color=c, label=method)
            ax.scatter(obs_delta[de], pred_delta[de], s=18, color=c, edgecolors="black", linewidths=0.6)
            lo, hi = min(lo, float(pred_delta.min())), max(hi, float(pred_delta.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        ax.set_title(f"{t.condition} | {t.context}", fontsize=8)
        ax.set_xlabel("observed delta", fontsize=8)
        ax.set_ylabel("predicted delta", fontsize=8)
        ax.tick_params(labelsize=7)
    legend: dict[str, Any] = {}  # a method may be absent from the first panel
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), fontsize=8, markerscale=3)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    note = f"<p>Outlined points: top-{n_de} DE genes of each query; dashed: the diagonal.</p>"
    return note + figure_to_html(fig, alt="predicted vs observed delta per query")


def _curve_section(uncertainty: Mapping[str, Mapping[str, Any]], key: str) -> str:
    """One uncertainty curve (a key of :data:`_CURVES`), one line per method."""
    spec = _CURVES[key]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.0))
    for method, entry in uncertainty.items():
        curve = entry.get(key)
        if not curve:
            continue
        ax.plot(curve[spec.x], curve[spec.y], label=method, **spec.style)
    if spec.diagonal:
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel(spec.xlabel)
    ax.set_ylabel(spec.ylabel)
    ax.legend(fontsize=8)
    return figure_to_html(fig, alt=key.replace("_", " "))


def _side_by_side(evaluation: PerturbationEvaluation) -> list[dict[str, Any]]:
    """One row per method: every headline metric as ``mean [95% CI]``."""
    n = evaluation.settings.get("l2_top_n", "N")
    rows = []
    for rec in evaluation.summary.to_dict(orient="records"):
        row: dict[str, Any] = {"method": rec["method"], "n_queries": rec["n_queries"]}
        for m in _HEADLINE:
            if f"{m}_mean" in rec:
                label = f"l2_top_n (N={n})" if m == "l2_top_n" else m
                row[label] = _with_ci(rec[f"{m}_mean"], rec.get(f"{m}_ci_low"), rec.get(f"{m}_ci_high"))
        rows.append(row)
    return rows


def _comparison_rows(comparisons: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {
            "method": r["method"],
            "baseline": r["reference"],
            "metric": r["metric"] + (" (lower is better)" if r["lower_is_better"] else ""),
            "n_queries": r["n_queries"],
            "method - baseline [95% CI]": _with_ci(r["mean_difference"], r["ci_low"], r["ci_high"]),
            "fraction of queries better": _fmt(r["fraction_better"]),
        }
        for r in comparisons.to_dict(orient="records")
    ]


def _calibration_rows(uncertainty: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for method, e in uncertainty.items():
        if "coverage90_de20_mean" not in e:
            continue
        row: dict[str, Any] = {"method": method}
        for m in UNCERTAINTY_METRICS:
            row[f"{m} mean / median"] = f"{_fmt(e[f'{m}_mean'])} / {_fmt(e[f'{m}_median'])}"
        row["fraction of queries with coverage90_de20 in target"] = _fmt(e["coverage90_de20_in_target"])
        rows.append(row)
    return rows


def _reference_rows(uncertainty: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for method, e in uncertainty.items():
        ref = e.get("vs_reference")
        if not ref:
            continue
        row: dict[str, Any] = {"method": method, "reference": ref["reference"], "n_queries": ref["n_queries"]}
        for m in UNCERTAINTY_METRICS:
            row[m] = f"{_fmt(ref[m])} vs {_fmt(ref[f'reference_{m}'])}"
        for key in ("width90_de20_ratio", "width90_all_ratio", "crps_de20_ratio", "crps_all_ratio"):
            row[key] = _fmt(ref[key])
        rows.append(row)
    return rows


def _pooled_rows(uncertainty: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for method, e in uncertainty.items():
        if "coverage_90" not in e:
            continue
        keep = {k: _display(v) for k, v in e.items() if not isinstance(v, Mapping)}
        rows.append({"method": method, **{k: v for k, v in keep.items() if k not in _PER_QUERY_KEYS | set(_OOD_KEYS)}})
    return rows


def _coverage_histogram(per_query: pd.DataFrame) -> str:
    """Histogram of the per-query top-20-DE coverage of each method, the target band shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    bins = np.linspace(0.0, 1.0, 21)
    for method, sub in per_query.groupby("method", sort=False):
        ax.hist(sub["coverage90_de20"].to_numpy(dtype=float), bins=bins, alpha=0.5, label=str(method))
    ax.axvspan(*COVERAGE_TARGET, color="green", alpha=0.12, label="target")
    ax.axvline(0.9, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("coverage of the 90% interval, top-20 DE genes (per query)")
    ax.set_ylabel("queries")
    ax.legend(fontsize=8)
    return figure_to_html(fig, alt="per-query coverage histogram")


def _ood_scatter(per_query: pd.DataFrame) -> str:
    """OOD score against the per-query error (1 - Pearson delta top-20 DE, and MSE top-20 DE)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(_OOD_ERRORS), figsize=(4.5 * len(_OOD_ERRORS), 3.8), squeeze=False)
    has = per_query[np.isfinite(per_query["ood_score"].to_numpy(dtype=float))]
    for ax, (metric, label) in zip(axes.ravel(), _OOD_ERRORS.items(), strict=True):
        for method, sub in has.groupby("method", sort=False):
            err = sub[metric].to_numpy(dtype=float)
            ax.scatter(sub["ood_score"], 1.0 - err if metric == "pearson_delta_de20" else err, s=14, label=str(method))
        ax.set_xlabel("OOD score")
        ax.set_ylabel(label)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return figure_to_html(fig, alt="OOD score vs per-query error")


def _uncertainty_sections(evaluation: PerturbationEvaluation) -> list[tuple[str, Any]]:
    unc = evaluation.uncertainty
    sections: list[tuple[str, Any]] = []
    calib = _calibration_rows(unc)
    if calib:
        sections.append(("Calibration per query (90% intervals, summarised over queries)", calib))
        sections.append(
            ("Per-query coverage on the top-20 DE genes", _coverage_histogram(evaluation.uncertainty_per_query))
        )
    ref = _reference_rows(unc)
    if ref:
        sections.append(
            ("Uncertainty beside the reference sigma (method vs reference; ratio = method / reference)", ref)
        )
    pooled = _pooled_rows(unc)
    if pooled:
        sections.append(("Uncertainty pooled over genes x queries", pooled))
        for key, spec in _CURVES.items():
            sections.append((f"{spec.title} (pooled over genes x queries)", _curve_section(unc, key)))
    ood = [
        {"method": m, **{k: _display(e[k]) for k in _OOD_KEYS if k in e}}
        for m, e in unc.items()
        if "n_ood_queries" in e
    ]
    if ood:
        sections.append(("OOD score (AUROC against the named negatives; Spearman with the per-query error)", ood))
        sections.append(("OOD score vs per-query error", _ood_scatter(evaluation.per_query)))
    return sections


def write_perturbation_report(
    evaluation: PerturbationEvaluation,
    out_dir: str | Path,
    *,
    truths: Sequence[QueryTruth],
    predictions: Mapping[str, Sequence[QueryPrediction | None]],
    title: str = "Perturbation evaluation",
) -> dict[str, Path]:
    """Write ``out_dir/metrics.json`` and a self-contained ``out_dir/report.html``.

    Parameters
    ----------
    evaluation
        The result of :func:`~genailab.evaluation.perturbation.evaluate_perturbation_predictions`.
    out_dir
        Output directory, created if missing; both files are written atomically.
    truths, predictions
        The inputs that were evaluated (for the delta scatter plots of the first 12 queries).
    title
        Page title.

    Returns
    -------
    ``{"metrics": path of metrics.json, "report": path of report.html}``.

    Raises
    ------
    InvalidInputError
        If ``evaluation`` is not a :class:`~genailab.evaluation.perturbation.PerturbationEvaluation`,
        ``truths`` is empty or a method has not one prediction per query.
    """
    if not isinstance(evaluation, PerturbationEvaluation):
        raise InvalidInputError(f"evaluation is a {type(evaluation).__name__}; expected a PerturbationEvaluation.")
    truths = list(truths)
    if not truths:
        raise InvalidInputError("truths is empty; expected the sequence of QueryTruth that was evaluated.")
    for method, preds in predictions.items():
        if len(preds) != len(truths):
            raise InvalidInputError(
                f"predictions[{method!r}] has {len(preds)} entries; expected {len(truths)}, one per query."
            )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    sections: list[tuple[str, Any]] = [("How to read this", _how_to_read(evaluation.settings))]
    sections.append(("Methods side by side (mean [95% bootstrap CI] over queries)", _side_by_side(evaluation)))
    if evaluation.settings.get("e_distance_reference") is None:
        note = "<p>No <code>no_change</code> method with control cells: the energy distance has no reference.</p>"
        sections.append(("Energy distance reference", note))
    if not evaluation.comparisons.empty:
        sections.append(
            ("Comparisons with the baselines (paired over shared queries)", _comparison_rows(evaluation.comparisons))
        )
    sections.extend(_uncertainty_sections(evaluation))
    sections.append(
        (
            f"Predicted vs observed delta (first {min(len(truths), MAX_SCATTER_QUERIES)} queries)",
            _scatter_section(truths, predictions, N_DE),
        )
    )
    sections.append(("Summary per method (all columns)", _table_rows(evaluation.summary)))
    sections.append(("Per query", _table_rows(evaluation.per_query)))
    if not evaluation.uncertainty_per_query.empty:
        sections.append(("Uncertainty per query", _table_rows(evaluation.uncertainty_per_query)))
    sections.append(("Settings", [{"setting": k, "value": str(v)} for k, v in evaluation.settings.items()]))

    metrics_path = atomic_write_json(out / "metrics.json", evaluation.to_dict())
    report_path = write_html_report(out / "report.html", title, sections)
    return {"metrics": metrics_path, "report": report_path}
