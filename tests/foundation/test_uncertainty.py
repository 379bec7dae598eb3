"""Conformal calibration and uncertainty scores on synthetic Gaussian data with a known truth."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import integrate, stats
from sklearn.metrics import roc_auc_score

from genailab.errors import InvalidInputError
from genailab.foundation.objectives import (
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


def gaussian_data(n: int, seed: int, *, raw_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heteroscedastic errors with true std ``s``; the model reports ``raw_scale * s``."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=n)
    s = rng.uniform(0.2, 2.0, size=n)
    y = mu + s * rng.normal(size=n)
    return y, mu, raw_scale * s


@pytest.mark.parametrize("raw_scale", [0.3, 1.0, 4.0])
def test_conformal_coverage_is_nominal_on_fresh_data(raw_scale: float) -> None:
    cal = ConformalCalibrator.fit(*gaussian_data(20000, 1, raw_scale=raw_scale))
    y, mu, sigma = gaussian_data(20000, 2, raw_scale=raw_scale)
    for level in LEVELS:
        lo, hi = cal.interval(mu, sigma, level)
        assert abs(interval_coverage(y, lo, hi) - level) < 0.02
    # the calibrated sigma undoes the wrong raw scale
    assert cal.sigma_scale * raw_scale == pytest.approx(1.0, rel=0.05)
    assert regression_ece(y, mu, cal.calibrated_sigma(sigma)) < 0.02


def test_conformal_quantile_is_the_ceil_order_statistic() -> None:
    scores = np.arange(1.0, 11.0)  # n = 10 distinct scores 1..10
    cal = ConformalCalibrator.fit(scores, np.zeros(10), np.ones(10), levels=(0.5, 0.9, 0.95), eps=0.0)
    # ceil(11 * 0.5) = 6 -> 6th smallest; ceil(11 * 0.9) = 10; ceil(11 * 0.95) = 11 > n -> max
    assert cal.quantiles == (6.0, 10.0, 10.0)
    assert cal.n_calibration == 10


def test_default_eps_and_zero_sigma() -> None:
    y, mu, sigma = gaussian_data(100, 0)
    cal = ConformalCalibrator.fit(y, mu, sigma)
    assert cal.eps == pytest.approx(1e-3 * np.median(sigma) + 1e-8)
    cal0 = ConformalCalibrator.fit(y, mu, np.zeros_like(sigma))  # all-zero sigma: eps = 1e-8 keeps it finite
    assert np.isfinite(cal0.quantiles).all()


def test_uncalibrated_uses_gaussian_quantiles() -> None:
    cal = ConformalCalibrator.uncalibrated()
    assert cal.quantiles[LEVELS.index(0.95)] == pytest.approx(1.959964, abs=1e-5)
    lo, hi = cal.interval(np.array([1.0]), np.array([2.0]), 0.5)
    assert hi[0] - 1.0 == pytest.approx(2.0 * stats.norm.ppf(0.75))
    np.testing.assert_allclose(cal.calibrated_sigma(np.array([0.5, 2.0])), [0.5, 2.0])


def test_round_trip_through_json() -> None:
    cal = ConformalCalibrator.fit(*gaussian_data(500, 3, raw_scale=2.0))
    again = ConformalCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again == cal
    with pytest.raises(InvalidInputError, match="keys"):
        ConformalCalibrator.from_dict({"levels": [0.5]})


def test_interval_unknown_level_lists_fitted_levels() -> None:
    cal = ConformalCalibrator.fit(*gaussian_data(50, 0))
    with pytest.raises(InvalidInputError, match=r"level=0\.7.*0\.5, 0\.8, 0\.9, 0\.95"):
        cal.interval(np.zeros(3), np.ones(3), 0.7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y_true": np.zeros(5)}, "shape mismatch"),
        ({"y_true": np.array([0.0, np.nan, 0.0, 0.0])}, "y_true contains"),
        ({"sigma": -np.ones(4)}, "sigma has 4 negative"),
        ({"levels": (0.5, 1.0)}, "levels="),
        ({"levels": ()}, "levels="),
        ({"eps": -1.0}, "eps="),
        ({"y_true": np.zeros(1), "y_pred": np.zeros(1), "sigma": np.ones(1)}, "at least 2"),
    ],
)
def test_fit_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {"y_true": np.zeros(4), "y_pred": np.zeros(4), "sigma": np.ones(4)} | kwargs
    extra = {k: args.pop(k) for k in ("levels", "eps") if k in args}
    with pytest.raises(InvalidInputError, match=match):
        ConformalCalibrator.fit(args["y_true"], args["y_pred"], args["sigma"], **extra)


def test_ece_zero_when_calibrated_large_when_misscaled() -> None:
    y, mu, sigma = gaussian_data(20000, 5)
    assert regression_ece(y, mu, sigma) < 0.015
    assert regression_ece(y, mu, 0.3 * sigma) > 0.2
    nominal, observed = calibration_curve(y, mu, 3.0 * sigma)
    assert nominal.shape == observed.shape == (19,)
    assert (observed >= nominal).all()  # over-dispersed: every interval over-covers
    assert np.all(np.diff(observed) >= 0)


@pytest.mark.parametrize(("y", "mu", "sigma"), [(0.3, 0.0, 1.0), (-2.0, 1.0, 0.5), (5.0, 5.0, 3.0)])
def test_crps_matches_numeric_integration(y: float, mu: float, sigma: float) -> None:
    dist = stats.norm(mu, sigma)
    left, _ = integrate.quad(lambda t: dist.cdf(t) ** 2, -np.inf, y)
    right, _ = integrate.quad(lambda t: (1 - dist.cdf(t)) ** 2, y, np.inf)
    assert gaussian_crps(np.array(y), np.array(mu), np.array(sigma)) == pytest.approx(left + right, rel=1e-6)


def test_crps_matches_monte_carlo_and_point_mass() -> None:
    rng = np.random.default_rng(0)
    x, x2 = rng.normal(1.0, 2.0, size=(2, 400000))
    mc = np.abs(x - 0.5).mean() - 0.5 * np.abs(x - x2).mean()  # E|X - y| - E|X - X'| / 2
    assert float(gaussian_crps(np.array(0.5), np.array(1.0), np.array(2.0))) == pytest.approx(mc, rel=0.01)
    np.testing.assert_allclose(gaussian_crps(np.array([1.0, -2.0]), 0.0, 0.0), [1.0, 2.0])
    with pytest.raises(InvalidInputError, match="sigma"):
        gaussian_crps(np.zeros(2), np.zeros(2), -np.ones(2))


def test_interval_coverage_counts_closed_interval() -> None:
    assert interval_coverage(np.array([0.0, 1.0, 2.0, 3.0]), 1.0, 2.0) == 0.5
    with pytest.raises(InvalidInputError, match="broadcast"):
        interval_coverage(np.zeros(3), np.zeros(2), np.ones(2))


def test_risk_coverage_monotone_example() -> None:
    errors = np.array([4.0, 1.0, 3.0, 2.0])
    uncertainty = np.array([0.9, 0.1, 0.7, 0.2])  # ranks the errors perfectly
    coverage, risk = risk_coverage(errors, uncertainty)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [1.0, 1.5, 2.0, 2.5])
    assert np.all(np.diff(risk) > 0)
    with pytest.raises(InvalidInputError, match="errors"):
        risk_coverage(np.zeros(3), np.zeros(4))


def test_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 5, 37).astype(float) + 0.5
    neg = rng.integers(0, 5, 53).astype(float)
    pos[:5] = 2.0
    neg[:5] = 2.0
    labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    assert auroc(pos, neg) == pytest.approx(roc_auc_score(labels, np.r_[pos, neg]))
    assert auroc(np.ones(3), np.ones(4)) == 0.5
    with pytest.raises(InvalidInputError, match="scores_negative"):
        auroc(np.ones(3), np.array([]))


def test_spearman_nan_without_warning_on_constant_input() -> None:
    assert spearman(np.arange(5.0), np.arange(5.0) ** 3) == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(spearman(np.ones(5), np.arange(5.0)))
    with pytest.raises(InvalidInputError, match="shape mismatch"):
        spearman(np.arange(3.0), np.arange(4.0))
