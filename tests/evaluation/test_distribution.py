"""Two-sample distances: zero-ish for equal distributions, monotone in a shift, exact where checkable."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist
from scipy.stats import energy_distance as scipy_energy
from scipy.stats import wasserstein_distance

from genailab.errors import InvalidInputError
from genailab.evaluation.distribution import (
    classifier_auc,
    energy_distance,
    median_distance,
    mmd_rbf,
    wasserstein1,
)

DISTANCES = [mmd_rbf, energy_distance, wasserstein1]


def gaussians(shift: float, n: int = 200, p: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = rng.normal(size=(n, p))
    y[:, 0] += shift
    return x, y


@pytest.mark.parametrize("fn", [mmd_rbf, energy_distance])
def test_unbiased_statistic_near_zero_for_same_distribution(fn):
    x, y = gaussians(0.0)
    shifted = fn(*gaussians(1.0))
    assert abs(fn(x, y)) < 0.05 * shifted


@pytest.mark.parametrize("fn", [*DISTANCES, classifier_auc])
def test_monotone_in_shift(fn):
    values = [fn(*gaussians(s)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values), values
    assert values[-1] > values[0]


@pytest.mark.parametrize("fn", [mmd_rbf, energy_distance])
def test_v_statistic_nonnegative_and_above_u_statistic(fn):
    x, y = gaussians(0.0, n=50)
    biased, unbiased = fn(x, y, unbiased=False), fn(x, y, unbiased=True)
    assert biased >= 0
    assert biased > unbiased


def test_mmd_matches_brute_force():
    x, y = gaussians(0.7, n=6, p=2)
    h, scales = 1.3, (0.5, 2.0)

    def k(a, b):
        return sum(np.exp(-np.sum((a - b) ** 2) / (2 * (s * h) ** 2)) for s in scales)

    def mean_k(u, v, skip_diag):
        vals = [k(u[i], v[j]) for i in range(len(u)) for j in range(len(v)) if not (skip_diag and i == j)]
        return np.mean(vals)

    expected = mean_k(x, x, True) + mean_k(y, y, True) - 2 * mean_k(x, y, False)
    assert mmd_rbf(x, y, bandwidth=h, scales=scales) == pytest.approx(expected, rel=1e-10)


def test_mmd_default_bandwidth_is_median_heuristic():
    x, y = gaussians(0.5, n=40)
    h = float(np.median(pdist(np.vstack([x, y]))))
    assert median_distance(x, y) == pytest.approx(h)
    assert mmd_rbf(x, y) == pytest.approx(mmd_rbf(x, y, bandwidth=h))


def test_energy_v_statistic_matches_scipy_in_1d():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 1)), rng.normal(0.5, 1.0, size=(40, 1))
    assert energy_distance(x, y, unbiased=False) == pytest.approx(scipy_energy(x[:, 0], y[:, 0]) ** 2)


def test_w1_exact_in_1d():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(60, 1)), rng.exponential(size=(60, 1))
    assert wasserstein1(x, y) == pytest.approx(wasserstein_distance(x[:, 0], y[:, 0]), rel=1e-10)


def test_w1_subsamples_to_equal_size_deterministically():
    x, y = gaussians(1.0, n=80)
    a = wasserstein1(x, y[:50], max_n=30, seed=3)
    assert a == wasserstein1(x, y[:50], max_n=30, seed=3)
    assert a > 0


def test_auc_near_half_for_same_and_high_for_separated():
    x, y = gaussians(0.0)
    assert abs(classifier_auc(x, y) - 0.5) < 0.1
    assert classifier_auc(*gaussians(3.0)) > 0.9


def test_auc_balances_unequal_sets():
    x, y = gaussians(3.0)
    assert classifier_auc(x, y[:40], n_folds=3) > 0.9


@pytest.mark.parametrize("fn", [*DISTANCES, classifier_auc])
@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.zeros(5), np.zeros((5, 2)), "2-D"),
        (np.zeros((5, 2)), np.zeros((5, 3)), "same number of columns"),
        (np.zeros((1, 2)), np.zeros((5, 2)), "at least 2"),
        (np.full((5, 2), np.nan), np.zeros((5, 2)), "finite"),
    ],
)
def test_shape_validation(fn, x, y, match):
    with pytest.raises(InvalidInputError, match=match):
        fn(x, y)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bandwidth": 0.0}, "bandwidth"),
        ({"scales": ()}, "scales"),
        ({"scales": (1.0, -1.0)}, "scales"),
        ({"max_n": 1}, "max_n"),
    ],
)
def test_mmd_argument_validation(kwargs, match):
    x, y = gaussians(0.0, n=10)
    with pytest.raises(InvalidInputError, match=match):
        mmd_rbf(x, y, **kwargs)


def test_auc_argument_validation():
    x, y = gaussians(0.0, n=10)
    with pytest.raises(InvalidInputError, match="n_folds"):
        classifier_auc(x, y, n_folds=1)


def test_random_forest_detector_separates_shifted_sets_only():
    rng = np.random.default_rng(0)
    x, same, shifted = rng.normal(size=(300, 5)), rng.normal(size=(300, 5)), rng.normal(0.8, 1.0, (300, 5))
    assert classifier_auc(x, shifted, detector="rf") > 0.8
    assert abs(classifier_auc(x, same, detector="rf") - 0.5) < 0.1
    with pytest.raises(InvalidInputError, match="detector='svm'"):
        classifier_auc(x, same, detector="svm")
