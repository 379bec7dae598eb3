"""Perturbation-response metrics, evaluation and report on tiny synthetic log-normalised data."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from genailab.errors import InvalidInputError
from genailab.evaluation.perturbation import (
    METRICS,
    PerturbationEvaluation,
    QueryPrediction,
    QueryTruth,
    evaluate_perturbation_predictions,
    gene_set_indices,
    query_metrics,
    top_de_genes,
)
from genailab.evaluation.reports import write_perturbation_report
from genailab.foundation.objectives import ConformalCalibrator

G = 30
GENES = [f"g{i}" for i in range(G)]
DE = np.array([3, 7, 11, 19, 25])  # planted DE genes


def make_query(condition: str, seed: int, *, shift: float = 2.0, n: int = 40) -> QueryTruth:
    rng = np.random.default_rng(seed)
    base = np.linspace(0.5, 3.0, G)
    control = base + 0.3 * rng.normal(size=(n, G))
    effect = np.zeros(G)
    effect[DE] = shift * np.where(np.arange(DE.size) % 2 == 0, 1.0, -1.0)
    effect += 0.05 * rng.normal(size=G)  # small off-target effect so no delta is exactly zero
    perturbed = base + effect + 0.3 * rng.normal(size=(n, G))
    return QueryTruth(condition, "K562", perturbed, control)


def perfect(truth: QueryTruth, **kwargs: object) -> QueryPrediction:
    return QueryPrediction(truth.perturbed.mean(0), **kwargs)


def test_top_de_genes_finds_planted_genes_and_breaks_ties_by_index() -> None:
    truth = make_query("A", 0)
    assert set(top_de_genes(truth.perturbed, truth.control, 5)) == set(DE)
    assert top_de_genes(truth.perturbed, truth.control, 100).shape == (G,)  # k capped at G
    const = np.ones((4, 6))
    assert top_de_genes(const, const + 1.0, 3).tolist() == [0, 1, 2]  # zero variance in both: t = 0
    with pytest.raises(InvalidInputError, match="k=0"):
        top_de_genes(truth.perturbed, truth.control, 0)


def test_perfect_prediction_scores_perfectly() -> None:
    truth = make_query("A", 0)
    m = query_metrics(perfect(truth), truth)
    assert set(m) == set(METRICS)
    assert m["pearson_delta"] == pytest.approx(1.0)
    assert m["pearson_delta_de20"] == pytest.approx(1.0)
    assert m["mse_de20"] == pytest.approx(0.0)
    assert m["l2_top_n"] == pytest.approx(0.0)
    assert m["direction_acc_de20"] == 1.0
    assert m["r2_mean_de100"] == pytest.approx(1.0)
    assert math.isnan(m["pathway_pearson"])  # no gene sets
    assert math.isnan(m["e_distance"])  # no predicted cells


def test_no_change_prediction_gives_nan_delta_correlation_without_warnings() -> None:
    truth = make_query("A", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = query_metrics(QueryPrediction(truth.control.mean(0)), truth)
    assert math.isnan(m["pearson_delta"])
    assert math.isnan(m["pearson_delta_de20"])
    assert m["direction_acc_de20"] == 0.0
    assert m["mse_de20"] > 1.0


def test_metrics_match_hand_computation() -> None:
    truth = make_query("A", 1)
    rng = np.random.default_rng(5)
    pred = QueryPrediction(truth.perturbed.mean(0) + 0.2 * rng.normal(size=G))
    m = query_metrics(pred, truth, n_expressed=10)
    obs, ctrl = truth.perturbed.mean(0), truth.control.mean(0)
    de = top_de_genes(truth.perturbed, truth.control, 20)
    assert m["pearson_delta"] == pytest.approx(np.corrcoef(pred.mean - ctrl, obs - ctrl)[0, 1])
    assert m["mse_de20"] == pytest.approx(np.mean((pred.mean[de] - obs[de]) ** 2))
    top = np.argsort(-ctrl)[:10]
    assert m["l2_top_n"] == pytest.approx(np.linalg.norm(pred.mean[top] - obs[top]))
    from sklearn.metrics import r2_score

    assert m["r2_mean_de100"] == pytest.approx(r2_score(obs, pred.mean))  # n_de_r2 >= G: all genes


def test_pathway_metrics_on_planted_sets() -> None:
    truth = make_query("A", 0, shift=3.0)
    sets = gene_set_indices(
        {
            "up": ["g3", "g11", "g25", "g0", "g1"],  # planted +3 genes dominate
            "down": ["g7", "g19", "g2", "g4", "g5"],  # planted -3 genes dominate
            "flat": ["g8", "g9", "g10", "g12", "g13", "g14"],
            "small": ["g3", "g7"],  # < 5 genes: dropped
            "missing": ["x1", "x2", "x3", "x4", "x5", "g3"],  # only 1 known gene: dropped
        },
        GENES,
    )
    assert sorted(sets) == ["down", "flat", "up"]
    np.testing.assert_array_equal(sets["up"], [0, 1, 3, 11, 25])
    m = query_metrics(perfect(truth), truth, gene_sets=sets)
    assert m["pathway_pearson"] == pytest.approx(1.0)
    assert m["pathway_sign_agreement"] == 1.0
    flipped = QueryPrediction(2 * truth.control.mean(0) - truth.perturbed.mean(0))  # delta negated
    m2 = query_metrics(flipped, truth, gene_sets=sets)
    assert m2["pathway_pearson"] == pytest.approx(-1.0)
    assert m2["pathway_sign_agreement"] == 0.0
    two = {k: sets[k] for k in ("up", "down")}
    assert math.isnan(query_metrics(perfect(truth), truth, gene_sets=two)["pathway_pearson"])


def test_gene_set_indices_rejects_duplicate_genes() -> None:
    with pytest.raises(InvalidInputError, match="genes has duplicated"):
        gene_set_indices({"a": ["g0"]}, ["g0", "g0"])


def test_e_distance_small_for_real_cells_large_for_shifted() -> None:
    truth = make_query("A", 0)
    same = query_metrics(perfect(truth, cells=make_query("A", 9).perturbed), truth)["e_distance"]
    shifted = query_metrics(perfect(truth, cells=truth.control), truth)["e_distance"]
    assert shifted > 5 * abs(same)


def make_setup() -> tuple[list[QueryTruth], dict[str, list[QueryPrediction | None]]]:
    truths = [make_query("A", 0), make_query("B", 1), make_query("A+B", 2, shift=1.0)]
    rng = np.random.default_rng(3)
    noisy = []
    for t in truths:
        err_sd = rng.uniform(0.05, 0.5, size=G)
        mean = t.perturbed.mean(0) + err_sd * rng.normal(size=G)
        noisy.append(QueryPrediction(mean, sigma=0.5 * err_sd, cells=t.perturbed + 0.1, ood_score=float(rng.random())))
    baseline = [QueryPrediction(t.control.mean(0)) for t in truths[:2]] + [None]  # does not apply to A+B
    return truths, {"model": noisy, "control": baseline}


def test_evaluate_two_methods_with_a_skipped_query() -> None:
    truths, preds = make_setup()
    cal = ConformalCalibrator.uncalibrated()
    ev = evaluate_perturbation_predictions(
        truths,
        preds,
        genes=GENES,
        gene_sets={"s1": GENES[:6], "s2": GENES[6:12], "s3": GENES[12:18]},
        calibrator=cal,
        seen_ood_scores={"model": [0.1, 0.2, 0.3, 0.4]},
        n_pcs=5,
    )
    assert isinstance(ev, PerturbationEvaluation)
    assert len(ev.per_query) == 5
    assert ev.per_query.groupby("method").size().to_dict() == {"control": 2, "model": 3}
    assert {"n_cells", "ood_score", *METRICS} <= set(ev.per_query.columns)
    summary = ev.summary.set_index("method")
    assert summary.loc["model", "n_queries"] == 3
    assert summary.loc["control", "n_queries"] == 2
    assert "pearson_delta_de20_mean" in summary.columns
    assert "pearson_delta_de20_sd" in summary.columns
    assert summary.loc["model", "pearson_delta_mean"] > 0.8
    assert np.isfinite(ev.per_query.loc[ev.per_query["method"] == "model", "pathway_pearson"]).all()
    assert math.isnan(summary.loc["control", "e_distance_mean"])
    # uncertainty only for the method with sigma
    assert list(ev.uncertainty) == ["model"]
    unc = ev.uncertainty["model"]
    for key in ("coverage_50", "coverage_80", "coverage_90", "coverage_95", "crps", "ece", "spearman_sigma_error"):
        assert 0.0 <= unc[key] <= 1.0 or key == "spearman_sigma_error"
    assert unc["coverage_95"] < 0.95  # raw sigma is half the true error sd: under-covers
    assert 0.0 <= unc["ood_auroc"] <= 1.0
    assert len(unc["calibration_curve"]["nominal"]) == len(unc["calibration_curve"]["observed"]) == 19
    assert len(unc["risk_coverage"]["coverage"]) <= 200
    assert unc["risk_coverage"]["coverage"][-1] == 1.0
    assert ev.settings["n_pcs"] == 5
    json.dumps(ev.to_dict(), allow_nan=False)  # strict JSON: nan became None


def test_calibrator_fixes_coverage() -> None:
    truths, preds = make_setup()
    model = preds["model"]
    y = np.concatenate([t.perturbed.mean(0) for t in truths])
    cal = ConformalCalibrator.fit(y, np.concatenate([p.mean for p in model]), np.concatenate([p.sigma for p in model]))
    ev = evaluate_perturbation_predictions(truths, {"model": model}, genes=GENES, calibrator={"model": cal})
    assert ev.uncertainty["model"]["calibrated"] is True
    assert ev.uncertainty["model"]["coverage_90"] >= 0.9  # in-sample conformal: at least nominal


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda p: p["model"].pop(), r"predictions\['model'\] has 2 entries; expected 3"),
        (lambda p: p["model"].__setitem__(1, QueryPrediction(np.zeros(G - 1))), r"predictions\['model'\]\[1\].*mean"),
        (
            lambda p: p["model"].__setitem__(0, QueryPrediction(np.zeros(G), sigma=np.zeros(3))),
            r"predictions\['model'\]\[0\] \(query 'A', 'K562'\)\.sigma",
        ),
        (lambda p: p["model"].__setitem__(2, QueryPrediction(np.zeros(G), cells=np.zeros((4, 2)))), "cells"),
        (lambda p: p["control"].__setitem__(0, "oops"), "expected a QueryPrediction or None"),
    ],
)
def test_evaluate_rejects_bad_predictions(change: object, match: str) -> None:
    truths, preds = make_setup()
    change(preds)
    with pytest.raises(InvalidInputError, match=match):
        evaluate_perturbation_predictions(truths, preds, genes=GENES)


def test_evaluate_rejects_bad_truths() -> None:
    truths, preds = make_setup()
    with pytest.raises(InvalidInputError, match=r"truths\[0\].*perturbed"):
        evaluate_perturbation_predictions(truths, preds, genes=GENES[:-1])
    with pytest.raises(InvalidInputError, match="truths"):
        evaluate_perturbation_predictions([], preds, genes=GENES)


def test_report_writes_json_and_html(tmp_path) -> None:
    truths, preds = make_setup()
    ev = evaluate_perturbation_predictions(truths, preds, genes=GENES, n_pcs=5)
    paths = write_perturbation_report(ev, tmp_path / "new" / "dir", truths=truths, predictions=preds)
    assert paths["metrics"].exists()
    assert paths["report"].exists()
    data = json.loads(paths["metrics"].read_text())
    assert {r["method"] for r in data["summary"]} == {"model", "control"}
    assert data["uncertainty"]["model"]["coverage_90"] is not None
    text = paths["report"].read_text()
    assert "<th>pearson_delta_de20_mean</th>" in text
    assert "<th>condition</th>" in text
    # delta scatter, per-query coverage histogram, calibration, risk-coverage, OOD vs error
    assert text.count("data:image/png;base64") == 5
    assert "L2 over the top-N expressed genes (N=30)" in text
    assert "pooled over genes x queries" in text
