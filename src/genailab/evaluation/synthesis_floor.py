"""Real-vs-real floors with their spread: resampled two-sample statistics for the synthesis ladder.

A single real-vs-real floor is one draw: for a cell type with a few dozen held-out cells it varies
several-fold between splits. The functions here resample it. Each resample splits one set of real
points at random into a reference ``R1`` and a floor half ``R2``; the floor is ``stat(R1, R2)`` and the
synthetic value ``stat(R1, S)`` with ``S`` a random subsample of the synthetic points the size of
``R2``, so both carry the same finite-sample offset. Reported: the medians, the floor's 2.5/97.5%
quantiles and ``ratio = median synthetic / median floor`` with the interval the floor's quantiles give.

- :func:`resampled_mmd`: MMD^2 (RBF kernels at the median distance of ``R1`` times 0.5, 1, 2,
  V-statistic, as :func:`~genailab.evaluation.synthesis.evaluate_synthesis` computes it);
- :func:`resampled_w1`: 1-D Wasserstein distance (e.g. of log library sizes);
- :func:`neighbourhood_stats`: precision and coverage of k-nearest-neighbour balls (Naeem et al. 2020,
  arXiv:2002.09797) and the variance ratio: does a generator miss modes (coverage below the floor) or
  blur them (precision below the floor, variance ratio above 1)?
- :func:`floor_spread`: the resampled MMD of a synthetic AnnData per condition, in the principal
  components :func:`~genailab.evaluation.synthesis.evaluate_synthesis` uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from genailab.config import check_count
from genailab.evaluation.distribution import median_distance, mmd_rbf
from genailab.evaluation.synthesis import MMD_SCALES
from genailab.evaluation.synthesis_embedding import check_sizes, embed_inputs, prepare_inputs, subsample

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["floor_spread", "neighbourhood_stats", "ratio_of", "resampled_mmd", "resampled_stat", "resampled_w1"]

EPS = 1e-12


def resampled_stat(
    real: np.ndarray,
    syn: np.ndarray,
    stat: Callable[[np.ndarray, np.ndarray], float],
    *,
    n_boot: int = 20,
    seed: int = 0,
    n_ref: int | None = None,
) -> dict[str, Any]:
    """``stat(R1, S)`` next to the floor ``stat(R1, R2)`` over random splits of ``real``.

    Parameters
    ----------
    real
        ``(n, ...)`` real points (at least 4).
    syn
        ``(n_syn, ...)`` synthetic points (at least 2).
    stat
        A two-sample statistic, lower = closer.
    n_boot
        Number of random splits.
    seed
        Seed of the splits and subsamples.
    n_ref
        Size of ``R1`` (default: half of ``real``); ``R2`` is the rest, trimmed to ``len(syn)``.

    Returns
    -------
    ``{"synthetic", "floor"}`` (medians over splits), ``"floor_q025"``, ``"floor_q975"``,
    ``"floor_sd"``, ``"ratio"`` (median synthetic / median floor), ``"ratio_interval"``
    (``[median synthetic / floor_q975, median synthetic / floor_q025]``), ``"n_boot"``, ``"n_compared"``.
    """
    check_count(n_boot, "n_boot", 1)
    n = len(real)
    n_ref = n // 2 if n_ref is None else int(n_ref)
    m = min(n - n_ref, len(syn))
    if n_ref < 2 or m < 2:
        return {"note": f"skipped: {n} real and {len(syn)} synthetic points are too few to split"}
    rng = np.random.default_rng(seed)
    syn_v, floor_v = [], []
    for _ in range(n_boot):
        perm = rng.permutation(n)
        r1, r2 = real[perm[:n_ref]], real[perm[n_ref : n_ref + m]]
        s = syn[subsample(np.arange(len(syn)), m, rng)]
        syn_v.append(stat(r1, s))
        floor_v.append(stat(r1, r2))
    syn_med, floor_arr = float(np.median(syn_v)), np.asarray(floor_v)
    q025, q50, q975 = (float(np.quantile(floor_arr, q)) for q in (0.025, 0.5, 0.975))
    return {
        "synthetic": syn_med,
        "floor": q50,
        "floor_q025": q025,
        "floor_q975": q975,
        "floor_sd": float(floor_arr.std()),
        "ratio": syn_med / max(q50, EPS),
        "ratio_interval": [syn_med / max(q975, EPS), syn_med / max(q025, EPS)],
        "n_boot": n_boot,
        "n_compared": m,
    }


def _mmd_stat(seed: int) -> Callable[[np.ndarray, np.ndarray], float]:
    def stat(r1: np.ndarray, other: np.ndarray) -> float:
        h = median_distance(r1, seed=seed)
        return mmd_rbf(r1, other, bandwidth=h, scales=MMD_SCALES, seed=seed, unbiased=False)

    return stat


def resampled_mmd(real: np.ndarray, syn: np.ndarray, *, n_boot: int = 20, seed: int = 0) -> dict[str, Any]:
    """MMD^2 of ``(n, p)`` points with a resampled floor.

    The RBF length scale is the median pairwise distance of each split's reference half ``R1``, with
    kernels at ``h * (0.5, 1, 2)`` summed (V-statistic), as in ``evaluate_synthesis``.

    Parameters
    ----------
    real, syn
        ``(n, p)`` real and ``(n_syn, p)`` synthetic points.
    n_boot, seed
        Random splits and their seed.

    Returns
    -------
    The dict of :func:`resampled_stat`.
    """
    return resampled_stat(np.asarray(real, float), np.asarray(syn, float), _mmd_stat(seed), n_boot=n_boot, seed=seed)


def resampled_w1(real: np.ndarray, syn: np.ndarray, *, n_boot: int = 20, seed: int = 0) -> dict[str, Any]:
    """1-D Wasserstein distance of values with a resampled floor.

    Parameters
    ----------
    real, syn
        ``(n,)`` real and ``(n_syn,)`` synthetic values (e.g. ``log1p`` library sizes).
    n_boot, seed
        Random splits and their seed.

    Returns
    -------
    The dict of :func:`resampled_stat`.
    """
    from scipy.stats import wasserstein_distance

    return resampled_stat(
        np.asarray(real, float).ravel(),
        np.asarray(syn, float).ravel(),
        lambda u, v: float(wasserstein_distance(u, v)),
        n_boot=n_boot,
        seed=seed,
    )


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    d = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0.0))
    return np.sort(d, axis=1)[:, min(k, len(x) - 1)]  # column 0 is the point itself


def _cross_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def neighbourhood_stats(
    real: np.ndarray, syn: np.ndarray, *, k: int = 5, max_n: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Precision, coverage and variance ratio of ``syn`` against ``real``, each beside its real floor.

    ``real`` is split at random into a reference half ``R1`` and a floor half ``R2``; ``S`` is a
    synthetic subsample the size of ``R2``. With ``r_i`` the distance from reference point ``i`` to its
    ``k``-th nearest reference neighbour: **precision** is the fraction of ``S`` inside some ball
    ``B(x_i, r_i)`` (low = off-manifold or blurred samples), **coverage** the fraction of reference
    points whose ball holds a point of ``S`` (low = missed modes); the floor uses ``R2`` for ``S``.
    **variance_ratio** is ``trace Cov(S) / trace Cov(R1)`` (above 1 = over-dispersed, below 1 =
    collapsed), and **mean_shift** the squared distance of the means over ``trace Cov(R1)``.

    Parameters
    ----------
    real, syn
        ``(n, p)`` and ``(n_syn, p)`` points.
    k
        Neighbourhood size.
    max_n
        Each half is subsampled to at most ``max_n`` points.
    seed
        Seed of the split and subsamples.

    Returns
    -------
    ``{"precision", "coverage", "variance_ratio", "mean_shift"}`` each ``{"synthetic", "floor"}``, plus
    ``"k"``, ``"n_reference"``, ``"n_compared"``; or ``{"note"}`` when there are too few points.
    """
    real, syn = np.asarray(real, float), np.asarray(syn, float)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(real))
    half = len(real) // 2
    r1 = real[subsample(np.sort(perm[:half]), max_n, rng)]
    r2 = real[subsample(np.sort(perm[half:]), max_n, rng)]
    m = min(len(r2), len(syn))
    if len(r1) <= k or m < 2:
        return {"note": f"skipped: {len(real)} real and {len(syn)} synthetic points are too few (k={k})"}
    s = syn[subsample(np.arange(len(syn)), m, rng)]
    r2 = r2[:m]
    radii = _knn_radii(r1, k)  # (n1,)
    trace = float(np.var(r1, axis=0).sum())
    out: dict[str, Any] = {"k": k, "n_reference": len(r1), "n_compared": m}
    for key, other in (("synthetic", s), ("floor", r2)):
        inside = _cross_dists(r1, other) <= radii[:, None]  # (n1, m)
        out.setdefault("precision", {})[key] = float(inside.any(0).mean())
        out.setdefault("coverage", {})[key] = float(inside.any(1).mean())
        out.setdefault("variance_ratio", {})[key] = float(np.var(other, axis=0).sum()) / max(trace, EPS)
        shift = float(((other.mean(0) - r1.mean(0)) ** 2).sum())
        out.setdefault("mean_shift", {})[key] = shift / max(trace, EPS)
    return out


def floor_spread(
    real: AnnData,
    syn: AnnData,
    *,
    condition_key: str | None = None,
    layer: str | None = None,
    n_pcs: int = 30,
    seed: int = 0,
    n_boot: int = 20,
    min_cells: int = 10,
) -> dict[str, Any]:
    """Resampled MMD of synthetic vs real cells, overall and per condition, in evaluate_synthesis's PCs.

    The principal components are those :func:`~genailab.evaluation.synthesis.evaluate_synthesis`
    fits with the same ``seed`` and ``n_pcs`` (on real part F); the resampling splits the other real
    cells (parts A and B) of each scope at random (:func:`resampled_mmd`).

    Parameters
    ----------
    real, syn
        AnnData of counts with the same genes.
    condition_key
        ``obs`` column of both with the condition (e.g. cell type); ``None`` for overall only.
    layer, n_pcs, seed
        As for ``evaluate_synthesis``.
    n_boot
        Random splits per scope.
    min_cells
        Conditions with fewer held-out real or synthetic cells are skipped.

    Returns
    -------
    ``{"overall": {...}, "per_condition": {value: {...}}, "settings": {...}}`` with the entries of
    :func:`resampled_stat`.
    """
    inputs = prepare_inputs(real, syn, layer=layer, condition_key=condition_key, classifier_key=None)
    check_sizes(inputs)
    emb = embed_inputs(inputs, n_pcs, seed)
    held = emb.held_out_idx
    out: dict[str, Any] = {"overall": resampled_mmd(emb.z_real[held], emb.z_syn, n_boot=n_boot, seed=seed)}
    per: dict[str, Any] = {}
    if inputs.real_cond is not None:
        for value in sorted(set(inputs.real_cond[held].tolist())):
            r = emb.z_real[held[inputs.real_cond[held] == value]]
            s = emb.z_syn[inputs.syn_cond == value]
            if len(r) < min_cells or len(s) < min_cells:
                continue
            per[value] = resampled_mmd(r, s, n_boot=n_boot, seed=seed)
    out["per_condition"] = per
    out["settings"] = {
        "space": f"PCs of evaluate_synthesis (n_pcs={n_pcs}, seed={seed}); real parts A and B pooled and re-split",
        "n_boot": n_boot,
        "min_cells": min_cells,
    }
    return out


def ratio_of(entry: Mapping[str, Any] | None) -> float | None:
    """The ``ratio`` of a resampled entry.

    Parameters
    ----------
    entry
        A :func:`resampled_stat` dict, or ``None``.

    Returns
    -------
    The ratio, or ``None`` when the entry is missing or was skipped.
    """
    return None if not entry or "ratio" not in entry else float(entry["ratio"])
