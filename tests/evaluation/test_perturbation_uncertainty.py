"""Per-query uncertainty, the reference sigma and OOD scores with honest negatives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genailab.errors import InvalidInputError
from genailab.evaluation.perturbation import QueryPrediction, evaluate_perturbation_predictions
from genailab.evaluation.perturbation_uncertainty import UNCERTAINTY_METRICS, query_uncertainty
from genailab.evaluation.reports import write_perturbation_report
from genailab.foundation.objectives import ConformalCalibrator

from .test_perturbation_protocol import GENES, gaussian_predictions, make_truths


def test_per_query_coverage_of_a_calibrated_gaussian_is_nominal() -> None:
    truths = make_truths(30)
    preds = {"model": gaussian_predictions(truths), "overconfident": gaussian_predictions(truths, sigma_scale=0.3)}
    ev = evaluate_perturbation_predictions(truths, preds, genes=GENES, n_boot=100)
    upq = ev.uncertainty_per_query
    assert list(upq.columns) == ["method", "condition", "context", *UNCERTAINTY_METRICS]
    assert len(upq) == 60
    model = ev.uncertainty["model"]
    assert model["coverage90_all_mean"] == pytest.approx(0.9, abs=0.02)
    assert model["coverage90_de20_mean"] == pytest.approx(0.9, abs=0.05)
    assert 0.8 < model["coverage90_de20_median"] <= 0.95
    assert model["coverage90_de20_in_target"] > 0.5
    assert model["width90_all_mean"] == pytest.approx(2 * 1.6449 * 0.2, rel=1e-3)  # Gaussian 90%: +-1.645 sd
    assert model["coverage_90"] == pytest.approx(0.9, abs=0.02)  # pooled figures stay
    bad = ev.uncertainty["overconfident"]
    assert bad["coverage90_de20_mean"] < 0.5
    assert bad["coverage90_de20_in_target"] < 0.1
    assert bad["crps_all_mean"] > model["crps_all_mean"]
    assert "vs_reference" not in model
    json.dumps(ev.to_dict(), allow_nan=False)


def test_query_uncertainty_uses_the_calibrator_and_needs_a_sigma() -> None:
    truth = make_truths(1)[0]
    pred = gaussian_predictions([truth], sigma_scale=0.5)[0]
    raw = query_uncertainty(pred, truth, ConformalCalibrator.uncalibrated())
    doubled = ConformalCalibrator.uncalibrated().to_dict()
    doubled["quantiles"] = [2 * q for q in doubled["quantiles"]]
    wide = query_uncertainty(pred, truth, ConformalCalibrator.from_dict(doubled))
    assert wide["width90_all"] == pytest.approx(2 * raw["width90_all"])
    assert wide["coverage90_all"] > raw["coverage90_all"]
    no_90 = query_uncertainty(pred, truth, ConformalCalibrator.uncalibrated(levels=(0.5,)))  # Gaussian fallback
    assert no_90["width90_all"] == pytest.approx(raw["width90_all"])
    with pytest.raises(InvalidInputError, match="sigma"):
        query_uncertainty(QueryPrediction(pred.mean), truth, ConformalCalibrator.uncalibrated())


def test_reference_sigma_that_is_too_wide_shows_ratio_above_one() -> None:
    truths = make_truths(10)
    model = gaussian_predictions(truths)
    wide = [QueryPrediction(p.mean, sigma=4 * p.sigma) for p in model]  # same mean, a 4x too wide sigma
    ev = evaluate_perturbation_predictions(
        truths,
        {"model": model, "wide_sd": wide},
        genes=GENES,
        sigma_reference={"model": "wide_sd", "wide_sd": "model"},
        n_boot=100,
    )
    vs = ev.uncertainty["model"]["vs_reference"]
    assert vs["reference"] == "wide_sd"
    assert vs["n_queries"] == 10
    assert vs["width90_all_ratio"] == pytest.approx(0.25)
    assert vs["crps_all_ratio"] < 1.0
    assert vs["reference_coverage90_all"] > vs["coverage90_all"]
    too_wide = ev.uncertainty["wide_sd"]["vs_reference"]
    assert too_wide["width90_de20_ratio"] == pytest.approx(4.0)
    assert too_wide["width90_all_ratio"] > 1.0
    assert too_wide["crps_all_ratio"] > 1.0
    assert too_wide["crps_de20_ratio"] > 1.0
    with pytest.raises(InvalidInputError, match="sigma_reference names 'control_sd'"):
        evaluate_perturbation_predictions(
            truths, {"model": model}, genes=GENES, sigma_reference={"model": "control_sd"}
        )


def ood_setup(n: int = 8) -> tuple[list, dict[str, list[QueryPrediction | None]]]:
    """Queries whose error grows with the OOD score (OOD score k, mean off by k * v)."""
    truths = make_truths(n)
    v = np.random.default_rng(9).normal(size=len(GENES))
    preds = [
        QueryPrediction(t.perturbed.mean(0) + 0.3 * (k + 1) * v, ood_score=float(5 + k)) for k, t in enumerate(truths)
    ]
    return truths, {"model": preds}


def test_ood_auroc_uses_honest_negatives_and_says_which() -> None:
    truths, preds = ood_setup()
    seen = {"model": [20.0, 21.0, 22.0]}  # seen training scores above every query score
    ev = evaluate_perturbation_predictions(truths, preds, genes=GENES, seen_ood_scores=seen, n_boot=100)
    e = ev.uncertainty["model"]
    assert e["ood_negatives_kind"] == "seen"
    assert e["ood_auroc"] == 0.0
    assert e["n_ood_negatives"] == 3
    negatives = {"model": [0.0, 0.5, 1.0, 4.9]}  # validation conditions: all below the queries
    ev = evaluate_perturbation_predictions(
        truths, preds, genes=GENES, seen_ood_scores=seen, ood_negatives=negatives, n_boot=100
    )
    e = ev.uncertainty["model"]
    assert e["ood_negatives_kind"] == "validation"
    assert e["ood_auroc"] == 1.0
    assert e["n_ood_negatives"] == 4
    assert e["n_ood_queries"] == 8
    assert "calibration_curve" not in e  # no sigma: only the OOD entries
    with pytest.raises(InvalidInputError, match="ood_negatives"):
        evaluate_perturbation_predictions(truths, preds, genes=GENES, ood_negatives=[0.0, 1.0])


def test_spearman_ood_error_sign() -> None:
    truths, preds = ood_setup()
    e = evaluate_perturbation_predictions(truths, preds, genes=GENES, n_boot=100).uncertainty["model"]
    assert "ood_auroc" not in e  # no negatives at all
    assert e["spearman_ood_error_mse_de20"] == pytest.approx(1.0)
    assert e["spearman_ood_error_pearson_de20"] > 0.8
    flipped = {
        "model": [QueryPrediction(p.mean, ood_score=-p.ood_score) for p in preds["model"]]
    }  # the most wrong queries get the lowest score
    e = evaluate_perturbation_predictions(truths, flipped, genes=GENES, n_boot=100).uncertainty["model"]
    assert e["spearman_ood_error_mse_de20"] == pytest.approx(-1.0)
    assert e["spearman_ood_error_pearson_de20"] < -0.8


def test_report_shows_calibration_reference_ood_and_comparisons(tmp_path) -> None:
    truths = make_truths(6, n=20)
    model = gaussian_predictions(truths)
    for k, p in enumerate(model):
        p.ood_score = float(k)
    preds = {
        "model": model,
        "control_sd": [QueryPrediction(p.mean, sigma=3 * p.sigma) for p in model],
        "additive": gaussian_predictions(truths, sd=0.4, seed=7),
        "no_change": [QueryPrediction(t.control.mean(0), cells=t.control) for t in truths],
    }
    ev = evaluate_perturbation_predictions(
        truths,
        preds,
        genes=GENES,
        sigma_reference={"model": "control_sd"},
        ood_negatives={"model": [-1.0, 0.5]},
        n_pcs=5,
        n_boot=100,
    )
    paths = write_perturbation_report(ev, tmp_path, truths=truths, predictions=preds)
    text = paths["report"].read_text()
    for heading in (
        "Methods side by side",
        "Comparisons with the baselines",
        "Calibration per query",
        "Per-query coverage on the top-20 DE genes",
        "Uncertainty beside the reference sigma",
        "Uncertainty pooled over genes x queries",
        "OOD score vs per-query error",
        "L2 over the top-N expressed genes (N=200)",
    ):
        assert heading in text
    assert "<th>e_distance_ratio_to_no_change</th>" in text
    data = json.loads(paths["metrics"].read_text())
    assert {"summary", "per_query", "comparisons", "uncertainty", "uncertainty_per_query", "settings"} <= set(data)
    assert data["uncertainty"]["model"]["vs_reference"]["reference"] == "control_sd"
    assert data["uncertainty"]["model"]["ood_negatives_kind"] == "validation"
    assert data["settings"]["l2_top_n"] == 200
