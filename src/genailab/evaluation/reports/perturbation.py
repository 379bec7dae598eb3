"""The perturbation report: ``metrics.json`` plus a one-file ``report.html`` of a perturbation evaluation.

:func:`write_perturbation_report` lays out a
:class:`~genailab.evaluation.perturbation.PerturbationEvaluation` as tables (per-method summary,
uncertainty scores, per-query metrics, settings) and figures (calibration and risk-coverage curves,
predicted vs observed delta for the first queries).
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
from genailab.evaluation.reports.html import figure_to_html, write_html_report
from genailab.io import atomic_write_json

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["write_perturbation_report"]

MAX_SCATTER_QUERIES = 12
N_DE = 20  # outlined genes of each delta scatter

_HOW_TO_READ = """
<p>Each query is one perturbation in one context. <code>delta</code> = mean expression minus the observed
control mean of the context; DE genes are the top genes by |Welch t| of observed perturbed vs control cells.
Higher is better for Pearson, direction accuracy, R&sup2; and pathway agreement; lower is better for MSE, L2 and
the energy distance (in PCA space of the observed cells). Uncertainty: coverage should match its nominal level,
ECE and CRPS are lower-is-better, and a useful sigma makes the risk grow with coverage.</p>
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

    sections: list[tuple[str, Any]] = [("How to read this", _HOW_TO_READ)]
    sections.append(("Summary per method (mean and sd across queries)", _table_rows(evaluation.summary)))
    if evaluation.uncertainty:
        scalar_rows = [
            {"method": m, **{k: v for k, v in e.items() if not isinstance(v, Mapping)}}
            for m, e in evaluation.uncertainty.items()
        ]
        sections.append(("Uncertainty", [{k: _display(v) for k, v in r.items()} for r in scalar_rows]))
        if any("calibration_curve" in e for e in evaluation.uncertainty.values()):
            for key, spec in _CURVES.items():
                sections.append((spec.title, _curve_section(evaluation.uncertainty, key)))
    sections.append(
        (
            f"Predicted vs observed delta (first {min(len(truths), MAX_SCATTER_QUERIES)} queries)",
            _scatter_section(truths, predictions, N_DE),
        )
    )
    sections.append(("Per query", _table_rows(evaluation.per_query)))
    sections.append(("Settings", [{"setting": k, "value": str(v)} for k, v in evaluation.settings.items()]))

    metrics_path = atomic_write_json(out / "metrics.json", evaluation.to_dict())
    report_path = write_html_report(out / "report.html", title, sections)
    return {"metrics": metrics_path, "report": report_path}
