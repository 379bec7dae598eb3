"""The perturbation evaluation protocol: intervals, paired comparisons, per-query uncertainty, OOD, energy reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from genailab.errors import InvalidInputError
from genailab.evaluation.perturbation import (
    LOWER_IS_BETTER,
    METRICS,
    QueryPrediction,
    QueryTruth,
    bootstrap_ci,
    evaluate_perturbation_predictions,
    paired_difference,
)

G = 200
GENES = [f"g{i}" for i in range(G)]


def make_truths(n_queries: int, *, seed: int = 0, n: int = 30) -> list[QueryTruth]:
    rng = np.random.default_rng(seed)
    base = np.linspace(0.5, 3.0, G)
    control = base + 0.3 * rng.normal(size=(n, G))
    truths = []
    for q in range(n_queries):
        effect = np.zeros(G)
        de = rng.choice(G, 25, replace=False)
        effect[de] = rng.choice([-1.5, 1.5], 25)
        perturbed = base + effect + 0.3 * rng.normal(size=(n, G))
        truths.append(QueryTruth(f"P{q}", "K562", perturbed, control))
    return truths


def gaussian_predictions(
    truths: list[QueryTruth], *, sd: float = 0.2, sigma_scale: float = 1.0, seed: int = 1
) -> list[QueryPrediction | None]:
    """Means drawn from N(truth, sd^2) per gene: a sigma of ``sd`` is calibrated."""
    rng = np.random.default_rng(seed)
    out: list[QueryPrediction | None] = []
    for t in truths:
        y = t.perturbed.mean(0)
        out.append(QueryPrediction(y + sd * rng.normal(size=G), sigma=np.full(G, sigma_scale * sd)))
    return out


# --------------------------------------------------------------------------------------------------
# Intervals and paired comparisons
# --------------------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_mean_and_shrinks_with_more_queries() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (8, 200):
        v = rng.normal(1.0, 1.0, size=n)
        lo, hi = bootstrap_ci(v, n_boot=2000, seed=3)
        assert lo < v.mean() < hi
        widths.append(hi - lo)
    assert widths[1] < 0.4 * widths[0]
    assert bootstrap_ci([1.0, 2.0, 3.0], seed=5) == bootstrap_ci([1.0, 2.0, 3.0], seed=5)  # seeded
    assert all(math.isnan(x) for x in bootstrap_ci([1.0, float("nan")]))  # one finite value: no interval
    with pytest.raises(InvalidInputError, match="n_boot"):
        bootstrap_ci([1.0, 2.0], n_boot=0)


def test_summary_has_intervals_that_contain_the_mean_and_shrink() -> None:
    widths = []
    for n_queries in (4, 24):
        truths = make_truths(n_queries)
        ev = evaluate_perturbation_predictions(truths, {"model": gaussian_predictions(truths)}, genes=GENES, n_boot=500)
        row = ev.summary.iloc[0]
        for m in ("pearson_delta", "mse_de20", "l2_top_n"):
            assert row[f"{m}_ci_low"] <= row[f"{m}_mean"] <= row[f"{m}_ci_high"]
        widths.append(row["mse_de20_ci_high"] - row["mse_de20_ci_low"])
    assert widths[1] < widths[0]


def _per_query(values: dict[str, list[float]], metric: str) -> pd.DataFrame:
    rows = [
        {"method": m, "condition": f"P{i}", "context": "c", metric: v}
        for m, vs in values.items()
        for i, v in enumerate(vs)
    ]
    return pd.DataFrame(rows)


def test_paired_difference_sign_and_lower_is_better() -> None:
    higher = _per_query({"m": [0.9, 0.8, 0.7, 0.6, 0.1], "r": [0.5, 0.5, 0.5, 0.5, 0.5]}, "pearson_delta")
    d = paired_difference(higher, "pearson_delta", "m", "r", seed=0)
    assert d["mean_difference"] == pytest.approx(0.12)
    assert d["fraction_better"] == pytest.approx(0.8)
    assert d["ci_low"] <= d["mean_difference"] <= d["ci_high"]
    assert d["lower_is_better"] is False
    assert d["n_queries"] == 5
    assert "mse_de20" in LOWER_IS_BETTER
    assert "l2_top_n" in LOWER_IS_BETTER
    lower = _per_query({"m": [0.1, 0.2, 0.9], "r": [0.5, 0.5, 0.5]}, "mse_de20")
    d = paired_difference(lower, "mse_de20", "m", "r")
    assert d["mean_difference"] == pytest.approx(-0.1)
    assert d["fraction_better"] == pytest.approx(2 / 3)  # smaller MSE wins
    assert d["lower_is_better"] is True
    # only the queries both scored, with finite values, are paired
    partial = _per_query({"m": [1.0, 2.0, float("nan")], "r": [0.0, 0.0, 0.0, 0.0]}, "pearson_delta")
    assert paired_difference(partial, "pearson_delta", "m", "r")["n_queries"] == 2
    with pytest.raises(InvalidInputError, match="'zz' has no rows"):
        paired_difference(higher, "pearson_delta", "m", "zz")
    with pytest.raises(InvalidInputError, match="no column"):
        paired_difference(higher, "mse_de20", "m", "r")


def test_comparisons_table_every_method_against_each_baseline() -> None:
    truths = make_truths(6)
    preds = {
        "model": gaussian_predictions(truths, sd=0.05),
        "additive": gaussian_predictions(truths, sd=0.5, seed=2),
        "no_change": [QueryPrediction(t.control.mean(0)) for t in truths],
        "other": gaussian_predictions(truths, sd=0.3, seed=3),
    }
    ev = evaluate_perturbation_predictions(truths, preds, genes=GENES, n_boot=200)
    comp = ev.comparisons
    pairs = set(zip(comp["method"], comp["reference"], strict=True))
    assert ("model", "additive") in pairs
    assert ("model", "no_change") in pairs
    assert ("other", "additive") in pairs
    assert not any(m == r for m, r in pairs)
    assert "other" not in set(comp["reference"])  # not named in compare_to
    assert "train_mean" not in set(comp["reference"])  # named but absent: skipped
    row = comp[(comp["method"] == "model") & (comp["reference"] == "additive") & (comp["metric"] == "mse_de20")]
    assert row["mean_difference"].item() < 0
    assert row["fraction_better"].item() == 1.0
    # a no-change delta has no Pearson: those pairs have no shared finite query and no row
    assert comp[(comp["reference"] == "no_change") & (comp["metric"] == "pearson_delta")].empty
    assert ev.settings["compare_to"] == ["additive", "no_change"]
    data = json.loads(json.dumps(ev.to_dict(), allow_nan=False))
    assert len(data["comparisons"]) == len(comp)


# --------------------------------------------------------------------------------------------------
# Honest labels and the energy-distance reference
# --------------------------------------------------------------------------------------------------


def test_l2_top_n_label_is_capped_at_the_gene_count() -> None:
    truths = make_truths(3)
    preds = {"model": gaussian_predictions(truths)}
    ev = evaluate_perturbation_predictions(truths, preds, genes=GENES)
    assert ev.settings["l2_top_n"] == G
    assert "l2_top1000" not in METRICS
    assert "l2_top1000" not in ev.per_query.columns
    ev10 = evaluate_perturbation_predictions(truths, preds, genes=GENES, top_n=10)
    assert ev10.settings["l2_top_n"] == 10
    t, p = truths[0], preds["model"][0]
    top = np.argsort(-t.control.mean(0), kind="stable")[:10]
    want = np.linalg.norm(p.mean[top] - t.perturbed.mean(0)[top])
    assert ev10.per_query["l2_top_n"].iloc[0] == pytest.approx(want)
    with pytest.raises(InvalidInputError, match="top_n"):
        evaluate_perturbation_predictions(truths, preds, genes=GENES, top_n=0)


def test_e_distance_ratio_to_no_change() -> None:
    truths = make_truths(3, n=20)
    rng = np.random.default_rng(4)
    preds = {
        "no_change": [QueryPrediction(t.control.mean(0), cells=t.control) for t in truths],
        "model": [
            QueryPrediction(t.perturbed.mean(0), cells=t.perturbed + 0.05 * rng.normal(size=t.perturbed.shape))
            for t in truths
        ],
        "mean_only": gaussian_predictions(truths),
    }
    ev = evaluate_perturbation_predictions(truths, preds, genes=GENES, n_pcs=5, n_boot=100)
    pq = ev.per_query.set_index("method")
    np.testing.assert_allclose(pq.loc["no_change", "e_distance_ratio_to_no_change"], 1.0)
    assert (pq.loc["model", "e_distance_ratio_to_no_change"] < 0.5).all()
    assert pq.loc["mean_only", "e_distance_ratio_to_no_change"].isna().all()
    s = ev.summary.set_index("method")
    assert s.loc["no_change", "e_distance_ratio_to_no_change_mean"] == pytest.approx(1.0)
    assert ev.settings["e_distance_reference"] == "no_change"
    cols = list(ev.per_query.columns)
    assert cols.index("e_distance_ratio_to_no_change") == cols.index("e_distance") + 1
    # without no-change cells there is no reference
    ev2 = evaluate_perturbation_predictions(truths, {"model": preds["model"]}, genes=GENES, n_pcs=5, n_boot=100)
    assert ev2.settings["e_distance_reference"] is None
    assert ev2.per_query["e_distance_ratio_to_no_change"].isna().all()
