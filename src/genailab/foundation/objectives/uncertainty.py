"""Calibrated predictive uncertainty of per-gene mean responses: conformal intervals and their scores.

A perturbation model that predicts a per-gene mean ``mu`` also reports a raw predictive standard
deviation ``sigma`` (e.g. a GEARS-style uncertainty head, or the spread of an ensemble). Raw sigmas
rank genes by uncertainty but are rarely on the right scale. :class:`ConformalCalibrator` rescales them
with normalised-score split conformal prediction (Lei et al. 2018, "Distribution-free predictive
inference for regression", JASA; Angelopoulos & Bates 2021, "A gentle introduction to conformal
prediction"): on held-out calibration data the scores ``|y - mu| / (sigma + eps)`` give, for each level
``q``, a multiplier ``q_level`` such that ``mu +- q_level * (sigma + eps)`` covers a fresh value with
probability at least ``q`` (exchangeability assumed).

The scores of the resulting uncertainty are pure functions: :func:`gaussian_crps`,
:func:`interval_coverage`, :func:`regression_ece` and :func:`calibration_curve` (Kuleshov et al. 2018,
"Accurate uncertainties for deep learning using calibrated regression", ICML), :func:`risk_coverage`,
:func:`auroc` (out-of-distribution detection) and :func:`spearman`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from genailab.errors import InvalidInputError

__all__ = [
    "LEVELS",
    "ConformalCalibrator",
    "auroc",
    "calibration_curve",
    "default_eps",
    "gaussian_crps",
    "interval_coverage",
    "regression_ece",
    "risk_coverage",
    "spearman",
]

LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
ONE_SIGMA = math.erf(1.0 / math.sqrt(2.0))  # 0.6827: P(|Z| <= 1) for a standard normal Z
_ECE_LEVELS = np.linspace(0.05, 0.95, 19)


def default_eps(sigma: np.ndarray) -> float:
    """What normalised conformal scores ``|error| / (sigma + eps)`` add to sigma: ``1e-3 * median(sigma) + 1e-8``.

    Keeps the scores of genes with ``sigma == 0`` finite while leaving every other scale unchanged.
    """
    return 1e-3 * float(np.median(sigma)) + 1e-8


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _finite(a: object, name: str) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"{name} cannot be read as a float array ({err}); expected numbers.") from err
    if arr.size == 0:
        raise InvalidInputError(f"{name} is empty (shape {arr.shape}); expected at least one value.")
    if not np.isfinite(arr).all():
        raise InvalidInputError(
            f"{name} contains {int((~np.isfinite(arr)).sum())} NaN or infinite values; expected finite numbers."
        )
    return arr


def _same_shape(**arrays: np.ndarray) -> None:
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise InvalidInputError(f"shape mismatch: {described}; expected equal shapes.")


def _broadcast(**arrays: np.ndarray) -> list[np.ndarray]:
    try:
        return list(np.broadcast_arrays(*arrays.values()))
    except ValueError as err:
        described = ", ".join(f"{name} {a.shape}" for name, a in arrays.items())
        raise InvalidInputError(
            f"shapes do not broadcast: {described}; expected equal or broadcastable shapes."
        ) from err


def _nonneg_sigma(sigma: object, name: str = "sigma") -> np.ndarray:
    s = _finite(sigma, name)
    if (s < 0).any():
        raise InvalidInputError(f"{name} has {int((s < 0).sum())} negative values (min {s.min():.4g}); expected >= 0.")
    return s


def _check_levels(levels: object, name: str = "levels") -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in np.atleast_1d(np.asarray(levels, dtype=np.float64)))
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"{name}={levels!r} cannot be read as numbers; expected levels in (0, 1).") from err
    if not out:
        raise InvalidInputError(f"{name}={levels!r} is empty; expected at least one level in (0, 1).")
    bad = [v for v in out if not (0.0 < v < 1.0)]
    if bad:
        raise InvalidInputError(f"{name}={levels!r} has values {bad} outside (0, 1); expected each level in (0, 1).")
    if len(set(out)) != len(out):
        raise InvalidInputError(f"{name}={levels!r} has repeated values; expected distinct levels.")
    return out


def _conformal_quantile(sorted_scores: np.ndarray, level: float) -> float:
    """The ``ceil((n + 1) * level)``-th smallest score; the largest score when that index exceeds ``n``."""
    n = sorted_scores.size
    k = math.ceil((n + 1) * level - 1e-12)  # guard against round-off pushing an exact integer up by one
    return float(sorted_scores[min(max(k, 1), n) - 1])


# --------------------------------------------------------------------------------------------------
# Conformal calibration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConformalCalibrator:
    """Normalised-score split-conformal multipliers of a raw predictive standard deviation.

    Attributes
    ----------
    levels
        Nominal central coverage levels, each in (0, 1).
    quantiles
        One multiplier per level: the interval at ``levels[i]`` is ``y_pred +- quantiles[i] * (sigma + eps)``.
    sigma_scale
        Multiplier turning ``sigma + eps`` into a calibrated Gaussian standard deviation: the 68.27%
        empirical quantile (linear interpolation) of the normalised calibration scores, which is 1 when
        the raw sigma already is the standard deviation of Gaussian errors.
    eps
        Added to sigma before dividing, so genes with ``sigma == 0`` get finite scores.
    n_calibration
        Number of calibration values the multipliers were fitted on.
    """

    levels: tuple[float, ...]
    quantiles: tuple[float, ...]
    sigma_scale: float
    eps: float
    n_calibration: int

    def __post_init__(self) -> None:
        levels = _check_levels(self.levels)
        if len(self.quantiles) != len(levels):
            raise InvalidInputError(
                f"quantiles has {len(self.quantiles)} values but levels has {len(levels)}; expected one per level."
            )
        quantiles = tuple(float(q) for q in self.quantiles)
        if not all(math.isfinite(q) and q >= 0 for q in quantiles):
            raise InvalidInputError(f"quantiles={quantiles!r}; expected finite values >= 0.")
        if not (math.isfinite(self.sigma_scale) and self.sigma_scale >= 0):
            raise InvalidInputError(f"sigma_scale={self.sigma_scale!r}; expected a finite value >= 0.")
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise InvalidInputError(f"eps={self.eps!r}; expected a finite value >= 0.")
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "quantiles", quantiles)
        object.__setattr__(self, "sigma_scale", float(self.sigma_scale))
        object.__setattr__(self, "eps", float(self.eps))
        object.__setattr__(self, "n_calibration", int(self.n_calibration))

    @classmethod
    def fit(
        cls,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        sigma: np.ndarray,
        *,
        levels: Sequence[float] = LEVELS,
        eps: float | None = None,
    ) -> ConformalCalibrator:
        """Fit the multipliers on held-out calibration data.

        Parameters
        ----------
        y_true, y_pred, sigma
            Observed values, predicted means and raw predictive standard deviations of any equal shape
            (e.g. ``(n_queries, G)``); flattened, finite, at least 2 values, ``sigma >= 0``.
        levels
            Nominal central coverage levels, each in (0, 1).
        eps
            Added to sigma before dividing; ``None`` uses :func:`default_eps`.

        Returns
        -------
        The fitted calibrator. For each level ``q`` the multiplier is the ``ceil((n + 1) q)``-th smallest
        normalised score ``|y_true - y_pred| / (sigma + eps)`` (the largest score when
        ``ceil((n + 1) q) > n``), which gives coverage ``>= q`` on exchangeable fresh data.
        """
        yt, yp = _finite(y_true, "y_true"), _finite(y_pred, "y_pred")
        s = _nonneg_sigma(sigma)
        _same_shape(y_true=yt, y_pred=yp, sigma=s)
        if yt.size < 2:
            raise InvalidInputError(f"y_true has {yt.size} value; expected at least 2 calibration values.")
        lv = _check_levels(levels)
        if eps is None:
            eps = default_eps(s)
        elif not (isinstance(eps, int | float | np.floating) and math.isfinite(eps) and eps >= 0):
            raise InvalidInputError(f"eps={eps!r}; expected a finite number >= 0 or None.")
        denom = s.ravel() + float(eps)
        if (denom <= 0).any():
            raise InvalidInputError(
                f"sigma + eps is 0 for {int((denom <= 0).sum())} values (eps={eps!r}); expected eps > 0."
            )
        scores = np.sort(np.abs(yt.ravel() - yp.ravel()) / denom)
        quantiles = tuple(_conformal_quantile(scores, q) for q in lv)
        sigma_scale = float(np.quantile(scores, ONE_SIGMA))
        return cls(lv, quantiles, sigma_scale, float(eps), int(scores.size))

    @classmethod
    def uncalibrated(cls, levels: Sequence[float] = LEVELS, *, eps: float = 0.0) -> ConformalCalibrator:
        """The identity calibrator: Gaussian quantiles ``norm.ppf((1 + level) / 2)`` of the raw sigma.

        Parameters
        ----------
        levels
            Nominal central coverage levels, each in (0, 1).
        eps
            Added to sigma.

        Returns
        -------
        A calibrator with ``sigma_scale = 1`` and ``n_calibration = 0``.
        """
        lv = _check_levels(levels)
        quantiles = tuple(float(stats.norm.ppf((1.0 + q) / 2.0)) for q in lv)
        return cls(lv, quantiles, 1.0, float(eps), 0)

    def _quantile(self, level: float) -> float:
        for lv, q in zip(self.levels, self.quantiles, strict=True):
            if math.isclose(float(level), lv, rel_tol=0.0, abs_tol=1e-9):
                return q
        raise InvalidInputError(f"level={level!r} was not fitted; expected one of {list(self.levels)}.")

    def interval(self, y_pred: np.ndarray, sigma: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Conformal central interval at ``level``.

        Parameters
        ----------
        y_pred, sigma
            Predicted means and raw standard deviations (broadcastable shapes, ``sigma >= 0``).
        level
            One of :attr:`levels`.

        Returns
        -------
        ``(lower, upper) = y_pred -+ q_level * (sigma + eps)``.
        """
        q = self._quantile(level)
        mu, s = _broadcast(y_pred=_finite(y_pred, "y_pred"), sigma=_nonneg_sigma(sigma))
        half = q * (s + self.eps)
        return mu - half, mu + half

    def calibrated_sigma(self, sigma: np.ndarray) -> np.ndarray:
        """Calibrated Gaussian standard deviation ``sigma_scale * (sigma + eps)``.

        Parameters
        ----------
        sigma
            Raw predictive standard deviations, ``>= 0``.

        Returns
        -------
        Array of the shape of ``sigma``.
        """
        return self.sigma_scale * (_nonneg_sigma(sigma) + self.eps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; :meth:`from_dict` restores an equal calibrator.

        Returns
        -------
        ``{"levels", "quantiles", "sigma_scale", "eps", "n_calibration"}`` with lists for the tuples.
        """
        return {
            "levels": list(self.levels),
            "quantiles": list(self.quantiles),
            "sigma_scale": self.sigma_scale,
            "eps": self.eps,
            "n_calibration": self.n_calibration,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConformalCalibrator:
        """Rebuild a calibrator from :meth:`to_dict` output.

        Parameters
        ----------
        d
            Mapping with exactly the keys of :meth:`to_dict`.

        Returns
        -------
        The calibrator.
        """
        keys = ("levels", "quantiles", "sigma_scale", "eps", "n_calibration")
        if not isinstance(d, Mapping) or set(d) != set(keys):
            got = sorted(d) if isinstance(d, Mapping) else type(d).__name__
            raise InvalidInputError(f"d has keys {got}; expected exactly {list(keys)}.")
        return cls(
            tuple(float(v) for v in d["levels"]),
            tuple(float(v) for v in d["quantiles"]),
            float(d["sigma_scale"]),
            float(d["eps"]),
            int(d["n_calibration"]),
        )


# --------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------


def gaussian_crps(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Continuous ranked probability score of ``N(mu, sigma^2)`` at ``y``, elementwise (lower is better).

    Closed form (Gneiting & Raftery 2007): ``sigma * (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))`` with
    ``z = (y - mu) / sigma``; where ``sigma == 0`` the forecast is a point mass and the CRPS is ``|y - mu|``.

    Parameters
    ----------
    y, mu, sigma
        Observations, means and standard deviations (broadcastable, finite, ``sigma >= 0``).

    Returns
    -------
    The broadcast array of CRPS values.
    """
    yy, m, s = _broadcast(y=_finite(y, "y"), mu=_finite(mu, "mu"), sigma=_nonneg_sigma(sigma))
    err = yy - m
    pos = s > 0
    safe = np.where(pos, s, 1.0)
    z = err / safe
    crps = safe * (z * (2.0 * stats.norm.cdf(z) - 1.0) + 2.0 * stats.norm.pdf(z) - 1.0 / math.sqrt(math.pi))
    return np.where(pos, crps, np.abs(err))


def interval_coverage(y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Fraction of ``y`` inside the closed interval ``[lower, upper]``.

    Parameters
    ----------
    y, lower, upper
        Broadcastable finite arrays.

    Returns
    -------
    Coverage in [0, 1].
    """
    yy, lo, hi = _broadcast(y=_finite(y, "y"), lower=_finite(lower, "lower"), upper=_finite(upper, "upper"))
    return float(((yy >= lo) & (yy <= hi)).mean())


def calibration_curve(
    y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, *, levels: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Observed coverage of Gaussian central intervals ``mu +- norm.ppf((1 + p) / 2) * sigma``.

    Parameters
    ----------
    y, mu, sigma
        Observations, means and (calibrated) standard deviations, broadcastable, ``sigma >= 0``.
    levels
        Nominal levels ``p`` in (0, 1); ``None`` uses ``np.linspace(0.05, 0.95, 19)``.

    Returns
    -------
    ``(nominal, observed)``, each ``(n_levels,)``; a calibrated model lies on the diagonal.
    """
    nominal = _ECE_LEVELS.copy() if levels is None else np.asarray(_check_levels(levels))
    yy, m, s = _broadcast(y=_finite(y, "y"), mu=_finite(mu, "mu"), sigma=_nonneg_sigma(sigma))
    abs_err = np.abs(yy - m).ravel()
    s = s.ravel()
    z = stats.norm.ppf((1.0 + nominal) / 2.0)  # (L,)
    observed = (abs_err[None, :] <= z[:, None] * s[None, :]).mean(1)  # (L,)
    return nominal, observed


def regression_ece(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, *, levels: Sequence[float] | None = None) -> float:
    """Expected calibration error of Gaussian central intervals (Kuleshov et al. 2018 style).

    Parameters
    ----------
    y, mu, sigma
        Observations, means and (calibrated) standard deviations, broadcastable, ``sigma >= 0``.
    levels
        Nominal levels in (0, 1); ``None`` uses ``np.linspace(0.05, 0.95, 19)``.

    Returns
    -------
    Mean over levels of ``|observed coverage - nominal|``: ~0 when calibrated, up to ~0.5.
    """
    nominal, observed = calibration_curve(y, mu, sigma, levels=levels)
    return float(np.abs(observed - nominal).mean())


def risk_coverage(errors: np.ndarray, uncertainty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Risk-coverage curve: keep the ``k`` most certain predictions and report their mean error.

    Parameters
    ----------
    errors, uncertainty
        Equal-shape finite arrays (flattened); ties in ``uncertainty`` keep their input order.

    Returns
    -------
    ``(coverage, risk)``, each ``(n,)``: ``coverage[k-1] = k / n`` and ``risk[k-1]`` the mean error of
    the ``k`` predictions with the smallest uncertainty. Useful uncertainty makes risk increase with
    coverage.
    """
    e, u = _finite(errors, "errors").ravel(), _finite(uncertainty, "uncertainty").ravel()
    _same_shape(errors=e, uncertainty=u)
    order = np.argsort(u, kind="stable")
    n = e.size
    k = np.arange(1, n + 1)
    return k / n, np.cumsum(e[order]) / k


def auroc(scores_positive: np.ndarray, scores_negative: np.ndarray) -> float:
    """Area under the ROC curve: ``P(positive score > negative score)``, ties counted 1/2.

    Computed from the Mann-Whitney U statistic on average ranks.

    Parameters
    ----------
    scores_positive, scores_negative
        Finite 1-D-able arrays, each non-empty.

    Returns
    -------
    AUROC in [0, 1]; 0.5 for uninformative scores.
    """
    pos = _finite(scores_positive, "scores_positive").ravel()
    neg = _finite(scores_negative, "scores_negative").ravel()
    ranks = stats.rankdata(np.concatenate([pos, neg]))  # average ranks handle ties
    n1, n0 = pos.size, neg.size
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    return float(u / (n1 * n0))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equal-shape arrays (flattened).

    Parameters
    ----------
    a, b
        Finite arrays of equal shape.

    Returns
    -------
    The correlation, or ``nan`` (without a warning) when either input is constant or has < 2 values.
    """
    x, y = _finite(a, "a").ravel(), _finite(b, "b").ravel()
    _same_shape(a=x, b=y)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)
