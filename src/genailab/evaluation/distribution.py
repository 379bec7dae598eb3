"""Two-sample distances between point clouds (e.g. PCA coordinates of real and synthetic cells).

Pure functions of two ``(n, p)`` float arrays: no fitted state is kept between calls. Large inputs are
subsampled (without replacement, seeded) to ``max_n`` rows per set so the cost stays bounded.

- :func:`mmd_rbf`: squared maximum mean discrepancy with a sum of Gaussian (RBF) kernels
  (Gretton et al., 2012, *A kernel two-sample test*, JMLR 13).
- :func:`energy_distance`: ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (Szekely & Rizzo, 2013, *Energy statistics*).
- :func:`wasserstein1`: exact earth mover's distance between equal-size empirical samples.
- :func:`classifier_auc`: cross-validated ROC AUC of a gradient-boosted real-vs-synthetic detector
  (the "classifier two-sample test", Lopez-Paz & Oquab, 2017, ICLR).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from genailab.errors import InvalidInputError

__all__ = ["classifier_auc", "energy_distance", "median_distance", "mmd_rbf", "wasserstein1"]


def _as_2d(a: object, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2:
        raise InvalidInputError(f"{name} has shape {arr.shape}; expected a 2-D array (n_samples, n_features).")
    if arr.shape[0] < 2:
        raise InvalidInputError(f"{name} has {arr.shape[0]} rows; expected at least 2 samples.")
    if arr.shape[1] < 1:
        raise InvalidInputError(f"{name} has shape {arr.shape}; expected at least 1 feature column.")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values; expected finite numbers.")
    return arr


def _check_pair(x: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = _as_2d(x, "x"), _as_2d(y, "y")
    if xa.shape[1] != ya.shape[1]:
        raise InvalidInputError(
            f"x has {xa.shape[1]} features but y has {ya.shape[1]}; expected the same number of columns."
        )
    return xa, ya


def _check_max_n(max_n: int) -> None:
    if isinstance(max_n, bool) or not isinstance(max_n, int | np.integer) or max_n < 2:
        raise InvalidInputError(f"max_n={max_n!r}; expected an integer >= 2.")


def _subsample(a: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rows of ``a`` drawn without replacement (all of ``a`` when it has at most ``n`` rows)."""
    if a.shape[0] <= n:
        return a
    return a[np.sort(rng.choice(a.shape[0], size=n, replace=False))]


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(n, m)`` squared Euclidean distances, clipped at 0 against round-off."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _mean_offdiag(k: np.ndarray, unbiased: bool) -> float:
    """Mean of a square within-sample matrix; ``unbiased`` drops the diagonal (U-statistic)."""
    n = k.shape[0]
    if unbiased:
        return float((k.sum() - np.trace(k)) / (n * (n - 1)))
    return float(k.mean())


def median_distance(x: np.ndarray, y: np.ndarray | None = None, *, max_n: int = 1000, seed: int = 0) -> float:
    """Median pairwise Euclidean distance of the pooled sample (the "median heuristic").

    Parameters
    ----------
    x, y
        ``(n, p)`` and ``(m, p)`` arrays; ``y=None`` uses ``x`` alone.
    max_n
        The pooled sample is subsampled to at most ``max_n`` rows before the ``O(max_n^2)`` distances.
    seed
        Seed of the subsample.

    Returns
    -------
    The median over distinct pairs; 1.0 when every point coincides (so kernels stay defined).
    """
    _check_max_n(max_n)
    pooled = _as_2d(x, "x") if y is None else np.vstack(_check_pair(x, y))
    pooled = _subsample(pooled, max_n, np.random.default_rng(seed))
    d = np.sqrt(_sq_dists(pooled, pooled)[np.triu_indices(pooled.shape[0], k=1)])
    med = float(np.median(d))
    return med if med > 0 else 1.0


def mmd_rbf(
    x: np.ndarray,
    y: np.ndarray,
    *,
    bandwidth: float | None = None,
    scales: Sequence[float] = (0.5, 1.0, 2.0),
    max_n: int = 2000,
    seed: int = 0,
    unbiased: bool = True,
) -> float:
    """Squared maximum mean discrepancy (MMD^2) with a sum of RBF kernels.

    The kernel is ``k(a, b) = sum_s exp(-||a - b||^2 / (2 (s h)^2))`` over ``s`` in ``scales``, so it
    takes values in ``[0, len(scales)]``. The base length scale ``h`` is ``bandwidth`` when given;
    otherwise the **median heuristic**: the median pairwise Euclidean distance of the pooled sample
    ``x`` and ``y`` (after subsampling, computed on at most 1000 pooled rows, see
    :func:`median_distance`). Pass an explicit ``bandwidth`` to compare several MMDs on one scale.

    Parameters
    ----------
    x, y
        ``(n, p)`` and ``(m, p)`` samples, at least 2 rows each.
    bandwidth
        Base length scale ``h`` (> 0); ``None`` for the median heuristic.
    scales
        Multipliers of ``h``; one RBF kernel per entry, summed.
    max_n
        Each set is subsampled (seeded, without replacement) to at most ``max_n`` rows.
    seed
        Seed of the subsamples.
    unbiased
        ``True``: the unbiased U-statistic (Gretton et al. 2012, eq. 3): zero in expectation when the
        distributions are equal, so it can be slightly **negative**. ``False``: the biased V-statistic
        (diagonal kept), always >= 0 with a positive finite-sample offset of order ``1/n``.

    Returns
    -------
    MMD^2 (not its square root).
    """
    xa, ya = _check_pair(x, y)
    _check_max_n(max_n)
    scales = tuple(float(s) for s in scales)
    if not scales or any(not np.isfinite(s) or s <= 0 for s in scales):
        raise InvalidInputError(f"scales={scales!r}; expected a non-empty sequence of positive numbers.")
    rng = np.random.default_rng(seed)
    xa, ya = _subsample(xa, max_n, rng), _subsample(ya, max_n, rng)
    if bandwidth is None:
        h = median_distance(xa, ya, seed=seed)
    else:
        h = float(bandwidth)
        if not np.isfinite(h) or h <= 0:
            raise InvalidInputError(f"bandwidth={bandwidth!r}; expected a positive number or None.")

    def kernel(d2: np.ndarray) -> np.ndarray:
        return sum(np.exp(-d2 / (2.0 * (s * h) ** 2)) for s in scales)

    kxx = _mean_offdiag(kernel(_sq_dists(xa, xa)), unbiased)
    kyy = _mean_offdiag(kernel(_sq_dists(ya, ya)), unbiased)
    kxy = float(kernel(_sq_dists(xa, ya)).mean())
    return kxx + kyy - 2.0 * kxy


def energy_distance(x: np.ndarray, y: np.ndarray, *, max_n: int = 2000, seed: int = 0, unbiased: bool = True) -> float:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` with Euclidean norms.

    Parameters
    ----------
    x, y
        ``(n, p)`` and ``(m, p)`` samples, at least 2 rows each.
    max_n
        Each set is subsampled (seeded, without replacement) to at most ``max_n`` rows.
    seed
        Seed of the subsamples.
    unbiased
        ``True``: within-sample means exclude the zero self-distances (U-statistics), zero in
        expectation for equal distributions and possibly slightly negative. ``False``: V-statistics
        (self-distances included), always >= 0.

    Returns
    -------
    The energy distance (squared-distance units of the energy metric; not square-rooted, unlike
    :func:`scipy.stats.energy_distance`).
    """
    xa, ya = _check_pair(x, y)
    _check_max_n(max_n)
    rng = np.random.default_rng(seed)
    xa, ya = _subsample(xa, max_n, rng), _subsample(ya, max_n, rng)
    dxy = float(np.sqrt(_sq_dists(xa, ya)).mean())
    dxx = _mean_offdiag(np.sqrt(_sq_dists(xa, xa)), unbiased)
    dyy = _mean_offdiag(np.sqrt(_sq_dists(ya, ya)), unbiased)
    return 2.0 * dxy - dxx - dyy


def wasserstein1(x: np.ndarray, y: np.ndarray, *, max_n: int = 1000, seed: int = 0) -> float:
    """Wasserstein-1 (earth mover's) distance between two empirical samples, with Euclidean cost.

    Both sets are subsampled (seeded, without replacement) to the same size
    ``n = min(len(x), len(y), max_n)``. Between two uniform empirical distributions of equal size the
    optimal transport plan is a permutation (Birkhoff-von Neumann), so the minimum-cost assignment from
    :func:`scipy.optimize.linear_sum_assignment` gives the **exact** W1 of the two subsamples:
    ``W1 = min_perm mean_i ||x_i - y_perm(i)||``. The cost is ``O(n^3)``; keep ``max_n`` near 1000.

    Parameters
    ----------
    x, y
        ``(n, p)`` and ``(m, p)`` samples, at least 2 rows each.
    max_n
        Largest subsample size.
    seed
        Seed of the subsamples.

    Returns
    -------
    W1 in the units of the coordinates.
    """
    from scipy.optimize import linear_sum_assignment

    xa, ya = _check_pair(x, y)
    _check_max_n(max_n)
    rng = np.random.default_rng(seed)
    n = min(xa.shape[0], ya.shape[0], max_n)
    xa, ya = _subsample(xa, n, rng), _subsample(ya, n, rng)
    cost = np.sqrt(_sq_dists(xa, ya))
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def classifier_auc(
    x: np.ndarray, y: np.ndarray, *, seed: int = 0, n_folds: int = 5, max_n: int = 2000, detector: str = "gbdt"
) -> float:
    """Cross-validated ROC AUC of a classifier told to separate ``x`` (e.g. real) from ``y`` (synthetic).

    The default detector (``"gbdt"``) is scikit-learn's :class:`~sklearn.ensemble.HistGradientBoostingClassifier`
    (100 boosting rounds, no early stopping, at least ``min(20, n_train // 10)`` (>= 2) cells per leaf so
    that small sets can still be split, seeded): it picks up shifts in location, scale, correlation
    and multi-modality, which a linear detector misses, and fits a few thousand points in about a second
    (it runs on one OpenMP thread). ``"rf"`` is a :class:`~sklearn.ensemble.RandomForestClassifier`
    (200 trees, the same leaf size, one job), a second detector with another inductive bias.
    Classes are balanced by subsampling both sets to ``min(len(x), len(y), max_n)`` rows; the AUC is
    the mean over ``n_folds`` stratified folds (fewer when a class is that small).

    Parameters
    ----------
    x, y
        ``(n, p)`` and ``(m, p)`` samples, at least 2 rows each.
    seed
        Seed of the subsamples, the folds and the classifier.
    n_folds
        Number of cross-validation folds (>= 2).
    max_n
        Largest number of rows per class.
    detector
        ``"gbdt"`` (gradient-boosted trees) or ``"rf"`` (random forest).

    Returns
    -------
    ROC AUC: 0.5 when the two sets are indistinguishable, 1.0 when perfectly separable (values a little
    below 0.5 are chance).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    if detector not in ("gbdt", "rf"):
        raise InvalidInputError(f"detector={detector!r}; expected 'gbdt' or 'rf'.")
    xa, ya = _check_pair(x, y)
    _check_max_n(max_n)
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise InvalidInputError(f"n_folds={n_folds!r}; expected an integer >= 2.")
    rng = np.random.default_rng(seed)
    n = min(xa.shape[0], ya.shape[0], max_n)
    xa, ya = _subsample(xa, n, rng), _subsample(ya, n, rng)
    features = np.vstack([xa, ya])  # (2n, p)
    labels = np.r_[np.zeros(n, dtype=int), np.ones(n, dtype=int)]  # (2n,)
    cv = StratifiedKFold(n_splits=int(min(n_folds, n)), shuffle=True, random_state=seed)
    aucs = []
    # One OpenMP thread: on a few thousand rows threads save little, and on a busy machine their
    # spin-waiting makes each fit tens of times slower.
    with threadpool_limits(limits=1, user_api="openmp"):
        for train, test in cv.split(features, labels):
            leaf = int(np.clip(len(train) // 10, 2, 20))  # sklearn's 20, smaller for tiny sets
            if detector == "rf":
                clf = RandomForestClassifier(n_estimators=200, min_samples_leaf=leaf, n_jobs=1, random_state=seed)
            else:
                clf = HistGradientBoostingClassifier(
                    max_iter=100, min_samples_leaf=leaf, early_stopping=False, random_state=seed
                )
            clf.fit(features[train], labels[train])
            aucs.append(roc_auc_score(labels[test], clf.predict_proba(features[test])[:, 1]))
    return float(np.mean(aucs))
