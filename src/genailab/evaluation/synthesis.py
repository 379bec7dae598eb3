"""How realistic are synthetic cells? Distances to real data, measured against a real-vs-real floor.

:func:`evaluate_synthesis` compares a synthetic AnnData with the real one it imitates:

1. **A fixed embedding fitted on real data only** (:mod:`genailab.evaluation.synthesis_embedding`). The
   real cells are split into three disjoint random parts of equal size (stratified by condition): F, A
   and B. ``log1p(counts / library * 1e4)`` of part F gives per-gene means and standard deviations
   (standardised values clipped to +-10) and a seeded PCA; the same transform maps A, B and the
   synthetic cells. None of the compared cells helped fit the
   transform: cells that did are easy to tell from cells that did not (in-sample PC scores are inflated
   when genes outnumber cells; a detector separates them with AUC ~0.97 on pbmc68k_reduced at 30 PCs),
   which would make any generator look bad, or a floor look too good.
2. **Distances with a floor.** Each metric compares part A with a synthetic subsample the size of B
   (``synthetic``) and part A with part B (``floor``: what a perfect generator, i.e. fresh real cells,
   would score at this sample size). ``ratio = synthetic / floor`` is ~1 for a perfect generator and
   grows as the synthetic cells drift. MMD^2 and the energy distance are the biased V-statistics here:
   always >= 0, and the floor carries exactly the same finite-sample offset as the synthetic value.
   The floor is clipped below at ``eps`` (``1e-4`` for MMD^2 and AUC, ``1e-4 * h`` for the energy
   distance and W1, ``h`` being the median distance below) so a degenerate floor never divides by zero.
3. The MMD length scale ``h`` is the **median pairwise Euclidean distance of real part A** in PC space
   (on at most 1000 cells), per scope (overall, or one condition); kernels at ``h * (0.5, 1, 2)`` are
   summed; the same ``h`` serves the synthetic value and the floor.
4. Metrics overall and per condition, per-gene marginals on counts, and cell-type fidelity (a classifier
   trained on part A predicts the label each synthetic cell was generated for).

:func:`~genailab.evaluation.reports.synthesis.write_synthesis_report` writes ``metrics.json`` and a
one-file ``report.html`` with tables and plots (UMAP / PCA, mean-variance, zero fraction, library size);
it is still importable from here.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from genailab.config import check_count
from genailab.evaluation.distribution import (
    classifier_auc,
    energy_distance,
    median_distance,
    mmd_rbf,
    wasserstein1,
)
from genailab.evaluation.synthesis_embedding import (
    CLIP,
    TARGET_SUM,
    Matrix,
    SynthesisEmbedding,
    check_sizes,
    embed_inputs,
    gene_stats,
    library_sizes,
    mean_var_fit,
    pca_embed,
    prepare_inputs,
    subsample,
)

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["SynthesisEmbedding", "clean_json", "evaluate_synthesis", "pca_embed"]

MMD_SCALES = (0.5, 1.0, 2.0)
EPS = 1e-4
METRICS = ("mmd", "energy", "w1", "classifier_auc")

BANDWIDTH_RULE = (
    "h = median pairwise Euclidean distance of real part A in PC space (at most 1000 cells), per scope "
    f"(overall or per condition); MMD kernel = sum of RBF kernels with length scales h * {MMD_SCALES}; the "
    "same h is used for the synthetic value and the floor"
)
RATIO_RULE = "ratio = synthetic / max(floor, eps), eps = 1e-4 for mmd and classifier_auc, 1e-4 * h for energy and w1"


# --------------------------------------------------------------------------------------------------
# Splits and comparisons
# --------------------------------------------------------------------------------------------------


def _overall_samples(
    b_idx: np.ndarray,
    n_syn: int,
    real_cond: np.ndarray | None,
    syn_cond: np.ndarray | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Equal-size index sets into real part B and into syn for the overall comparison.

    Without conditions: ``min(|B|, n_syn)`` random cells of each. With conditions the parts are
    stratified, so A and B have the same composition; a synthetic sample of random composition would
    be penalised for composition noise that the floor does not have (about +25% MMD^2 at 100 cells).
    So the synthetic sample copies B's composition: ``min(|B_c|, n_syn_c)`` cells of each condition
    ``c`` from both (conditions absent from either side drop out). Composition is reported apart.
    Falls back to the unmatched rule when fewer than 2 cells would remain.

    Returns
    -------
    ``(b_use, syn_use, composition_matched)``.
    """
    if real_cond is not None and syn_cond is not None:
        b_parts, s_parts = [], []
        for value in np.unique(real_cond[b_idx]):
            b_c = b_idx[real_cond[b_idx] == value]
            s_c = np.flatnonzero(syn_cond == value)
            m_c = min(len(b_c), len(s_c))
            b_parts.append(subsample(b_c, m_c, rng))
            s_parts.append(subsample(s_c, m_c, rng))
        b_use, s_use = np.sort(np.concatenate(b_parts)), np.sort(np.concatenate(s_parts))
        if len(s_use) >= 2:
            return b_use, s_use, True
    m = min(len(b_idx), n_syn)
    return subsample(b_idx, m, rng), subsample(np.arange(n_syn), m, rng), False


def _composition(real_cond: np.ndarray, syn_cond: np.ndarray) -> dict[str, Any]:
    """Condition proportions in all real and all synthetic cells and their total variation distance."""
    values = sorted(set(real_cond.tolist()) | set(syn_cond.tolist()))
    p = {v: float((real_cond == v).mean()) for v in values}
    q = {v: float((syn_cond == v).mean()) for v in values}
    tv = 0.5 * sum(abs(p[v] - q[v]) for v in values)
    return {"real": p, "synthetic": q, "total_variation": tv}


def _ratio(synthetic: float, floor: float, eps: float) -> float:
    return float(synthetic / max(floor, eps))


def _compare(za: np.ndarray, zb: np.ndarray, zs: np.ndarray, seed: int) -> dict[str, Any]:
    """Every distance of ``(A, synthetic)`` and of ``(A, B)`` in PC space, with ratios."""
    h = median_distance(za, seed=seed)
    fns = {
        "mmd": lambda u, v: mmd_rbf(u, v, bandwidth=h, scales=MMD_SCALES, seed=seed, unbiased=False),
        "energy": lambda u, v: energy_distance(u, v, seed=seed, unbiased=False),
        "w1": lambda u, v: wasserstein1(u, v, seed=seed),
        "classifier_auc": lambda u, v: classifier_auc(u, v, seed=seed),
    }
    eps = {"mmd": EPS, "energy": EPS * h, "w1": EPS * h, "classifier_auc": EPS}
    out: dict[str, Any] = {}
    for name, fn in fns.items():
        syn_v, floor_v = fn(za, zs), fn(za, zb)
        out[name] = {"synthetic": syn_v, "floor": floor_v, "ratio": _ratio(syn_v, floor_v, eps[name])}
    out["bandwidth"] = h
    return out


def _corr(u: np.ndarray, v: np.ndarray) -> float:
    if u.std() == 0 or v.std() == 0:
        return float("nan")
    return float(np.corrcoef(u, v)[0, 1])


def _marginals(a: Matrix, b: Matrix, s: Matrix) -> dict[str, Any]:
    """Count marginals of part A against synthetic ``s`` and against part B (the floor)."""
    from scipy.stats import wasserstein_distance

    stats = {"real": gene_stats(a), "synthetic": gene_stats(s), "floor": gene_stats(b)}
    out: dict[str, Any] = {}
    (ma, va, za) = stats["real"]
    for key in ("synthetic", "floor"):
        m, v, z = stats[key]
        out.setdefault("log1p_mean_corr", {})[key] = _corr(np.log1p(ma), np.log1p(m))
        out.setdefault("log1p_var_corr", {})[key] = _corr(np.log1p(va), np.log1p(v))
        out.setdefault("zero_fraction_corr", {})[key] = _corr(za, z)
    fits = {k: mean_var_fit(m, v) for k, (m, v, _) in stats.items()}
    for i, name in enumerate(("mean_var_slope", "mean_var_intercept")):
        ref = fits["real"][i]
        out[name] = {
            "real": ref,
            "synthetic": fits["synthetic"][i],
            "floor": fits["floor"][i],
            "synthetic_diff": fits["synthetic"][i] - ref,
            "floor_diff": fits["floor"][i] - ref,
        }
    logs = {
        "real": np.log1p(library_sizes(a)),
        "synthetic": np.log1p(library_sizes(s)),
        "floor": np.log1p(library_sizes(b)),
    }
    out["log1p_library_mean"] = {k: float(v.mean()) for k, v in logs.items()}
    out["log1p_library_median"] = {k: float(np.median(v)) for k, v in logs.items()}
    w_syn = float(wasserstein_distance(logs["real"], logs["synthetic"]))
    w_floor = float(wasserstein_distance(logs["real"], logs["floor"]))
    out["log1p_library_w1"] = {"synthetic": w_syn, "floor": w_floor, "ratio": _ratio(w_syn, w_floor, EPS)}
    return out


def _fidelity(
    za: np.ndarray, la: np.ndarray, zb: np.ndarray, lb: np.ndarray, zs: np.ndarray, ls: np.ndarray, seed: int
) -> dict[str, Any]:
    """Accuracy of a part-A-trained classifier on synthetic cells (their generating label) and on part B."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = np.unique(la)
    if len(classes) < 2:
        return {"note": f"skipped: real part A has a single label ({classes.tolist()})"}
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    clf.fit(za, la)
    seen = np.isin(ls, classes)
    out: dict[str, Any] = {
        "classifier": "StandardScaler + LogisticRegression on PCs of real part A",
        "n_syn_unseen_label": int((~seen).sum()),
        "unseen_labels": sorted(set(ls[~seen].tolist()))[:20],
    }
    per_label: dict[str, dict[str, Any]] = {str(c): {} for c in classes}
    for key, z, lab in (("synthetic", zs[seen], ls[seen]), ("floor", zb, lb)):
        if len(lab) == 0:
            out[key] = {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "n": 0}
            continue
        pred = clf.predict(z)
        recalls = {}
        for c in np.unique(lab):
            recalls[str(c)] = float((pred[lab == c] == c).mean())
            per_label[str(c)][key] = recalls[str(c)]
        out[key] = {
            "accuracy": float((pred == lab).mean()),
            "balanced_accuracy": float(np.mean(list(recalls.values()))),
            "n": len(lab),
        }
    out["accuracy_ratio"] = _ratio(out["synthetic"]["accuracy"], out["floor"]["accuracy"], EPS)
    out["per_label_recall"] = per_label
    return out


def clean_json(obj: Any) -> Any:
    """A copy of ``obj`` in plain Python types; NaN and infinities become ``None`` so strict JSON works.

    Parameters
    ----------
    obj
        Nested mappings, sequences, numpy arrays and scalars.

    Returns
    -------
    Dicts (string keys), lists, bools, ints, floats, ``None`` and other leaves unchanged.
    """
    if isinstance(obj, Mapping):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [clean_json(v) for v in obj.tolist()]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def evaluate_synthesis(
    real: AnnData,
    syn: AnnData,
    *,
    condition_key: str | None = None,
    layer: str | None = None,
    n_pcs: int = 30,
    seed: int = 0,
    classifier_key: str | None = None,
    min_cells: int = 10,
) -> dict[str, Any]:
    """Compare synthetic cells with real ones, each distance next to its real-vs-real floor.

    See the module docstring for the procedure. Everything is deterministic given ``seed``.

    Parameters
    ----------
    real, syn
        AnnData of raw counts (non-negative; synthetic values need not be integers) with the same gene
        set; syn's genes are reordered to real's order.
    condition_key
        ``obs`` column of both objects with the condition (e.g. cell type) each cell belongs to or was
        generated for. Enables the per-condition metrics and stratifies the split of the real cells.
    layer
        Layer holding the counts in **both** objects; ``None`` for ``X``.
    n_pcs
        Principal components of the fixed embedding (reduced to ``|F| - 1`` or the gene count).
    seed
        Seed of the split, the subsamples, the PCA and the classifiers.
    classifier_key
        ``obs`` column (in both objects) with the labels for the fidelity classifier; defaults to
        ``condition_key``. No fidelity entry when both are ``None``.
    min_cells
        Conditions with fewer than ``min_cells`` real or synthetic cells are skipped (>= 6, so each real
        part holds at least 2 cells of the condition).

    Returns
    -------
    A JSON-serialisable dict (NaN stored as ``None``)::

        {"overall": {metric: {"synthetic", "floor", "ratio"}, ..., "bandwidth", "n_compared",
                     "composition_matched"},
         "per_condition": {value: {same as overall, "n_real", "n_syn"}},
         "marginals": {"log1p_mean_corr": {"synthetic", "floor"}, ..., "mean_var_slope": {...},
                       "log1p_library_w1": {"synthetic", "floor", "ratio"}, ...},
         "fidelity": {"synthetic": {"accuracy", "balanced_accuracy", "n"}, "floor": {...}, ...},
         "settings": {...}, "skipped_conditions": [{"condition", "n_real", "n_syn", "reason"}],
         "composition": {"real": {value: fraction}, "synthetic": {...}, "total_variation"} or None}

    with metrics ``mmd`` (V-statistic MMD^2), ``energy`` (V-statistic), ``w1`` and ``classifier_auc``
    (gradient-boosted detector); ``overall`` also holds ``classifier_auc_rf`` (a random-forest detector).

    Raises
    ------
    GeneOverlapError
        If the two gene sets differ (the message counts and names differing genes).
    MissingKeyError
        If ``condition_key``/``classifier_key`` is not a column of both ``obs`` or ``layer`` is missing.
    InvalidInputError
        On bad arguments, too few cells or invalid counts.
    """
    check_count(n_pcs, "n_pcs", 1)
    check_count(seed, "seed", 0)
    check_count(min_cells, "min_cells", 6)
    cls_key = condition_key if classifier_key is None else classifier_key
    inputs = prepare_inputs(real, syn, layer=layer, condition_key=condition_key, classifier_key=cls_key)
    check_sizes(inputs)
    n_real, n_syn = inputs.real.shape[0], inputs.syn.shape[0]
    emb = embed_inputs(inputs, n_pcs, seed)
    z_real, z_syn, a_idx, b_idx = emb.z_real, emb.z_syn, emb.a_idx, emb.b_idx  # (n_real, k), (n_syn, k)
    k = z_real.shape[1]
    rng = np.random.default_rng([seed, 1])  # subsamples; the split used default_rng(seed)

    # Overall: A vs a synthetic subsample of |B| cells; A vs B (trimmed to the same size if syn is small).
    b_use, s_use, matched = _overall_samples(b_idx, n_syn, inputs.real_cond, inputs.syn_cond, rng)
    overall = _compare(z_real[a_idx], z_real[b_use], z_syn[s_use], seed)
    overall.update(n_compared=len(s_use), composition_matched=matched)
    rf = [classifier_auc(z_real[a_idx], z, seed=seed, detector="rf") for z in (z_syn[s_use], z_real[b_use])]
    overall["classifier_auc_rf"] = {"synthetic": rf[0], "floor": rf[1], "ratio": _ratio(rf[0], rf[1], EPS)}
    marginals = _marginals(inputs.real[a_idx], inputs.real[b_use], inputs.syn[s_use])

    per_condition: dict[str, Any] = {}
    skipped: list[dict[str, Any]] = []
    if inputs.real_cond is not None:
        values = sorted(set(inputs.real_cond.tolist()) | set(inputs.syn_cond.tolist()))
        for value in values:
            n_r = int((inputs.real_cond == value).sum())
            n_s = int((inputs.syn_cond == value).sum())
            if n_r < min_cells or n_s < min_cells:
                skipped.append(
                    {
                        "condition": value,
                        "n_real": n_r,
                        "n_syn": n_s,
                        "reason": f"fewer than min_cells={min_cells} real or synthetic cells",
                    }
                )
                continue
            a_c = a_idx[inputs.real_cond[a_idx] == value]
            b_c = b_idx[inputs.real_cond[b_idx] == value]
            m_c = min(len(b_c), n_s)
            b_c = subsample(b_c, m_c, rng)
            s_c = subsample(np.flatnonzero(inputs.syn_cond == value), m_c, rng)
            entry = _compare(z_real[a_c], z_real[b_c], z_syn[s_c], seed)
            entry.update(n_real=n_r, n_syn=n_s, n_compared=m_c)
            per_condition[value] = entry

    if inputs.real_cls is not None:
        fidelity = _fidelity(
            z_real[a_idx],
            inputs.real_cls[a_idx],
            z_real[b_idx],
            inputs.real_cls[b_idx],
            z_syn,
            inputs.syn_cls,
            seed,
        )
        fidelity["key"] = cls_key
    else:
        fidelity = {"note": "skipped: no classifier_key or condition_key given"}

    settings = {
        "n_pcs": k,
        "n_pcs_requested": n_pcs,
        "seed": seed,
        "layer": layer,
        "condition_key": condition_key,
        "classifier_key": cls_key,
        "min_cells": min_cells,
        "n_real": n_real,
        "n_syn": n_syn,
        "n_genes": inputs.real.shape[1],
        "n_real_fit": len(emb.fit_idx),
        "n_real_a": len(a_idx),
        "n_real_b": len(b_idx),
        "split": "real cells in random thirds F (fits the PCA), A (reference), B (floor), stratified by condition",
        "embedding": (
            f"PCA fitted on real part F only: log1p(counts / library * {TARGET_SUM:g}), genes standardised "
            f"with part-F mean and std, clipped to +-{CLIP:g}"
        ),
        "comparison": "metric(A, synthetic subsample of |B| cells) vs floor metric(A, B)",
        "bandwidth_rule": BANDWIDTH_RULE,
        "mmd_scales": list(MMD_SCALES),
        "statistics": "mmd and energy are V-statistics (>= 0; the floor has the same finite-sample offset)",
        "detector": ("HistGradientBoostingClassifier, stratified 5-fold ROC AUC, classes balanced by subsampling"),
        "ratio_rule": RATIO_RULE,
    }
    return clean_json(
        {
            "overall": overall,
            "per_condition": per_condition,
            "marginals": marginals,
            "fidelity": fidelity,
            "settings": settings,
            "skipped_conditions": skipped,
            "composition": (None if inputs.real_cond is None else _composition(inputs.real_cond, inputs.syn_cond)),
        }
    )


def __getattr__(name: str) -> Any:
    """Serve ``write_synthesis_report`` from its new home, :mod:`genailab.evaluation.reports.synthesis`.

    Resolved on first access rather than imported at the top: the report module builds on this one,
    so a top-level import would be an import cycle.
    """
    if name == "write_synthesis_report":
        return importlib.import_module("genailab.evaluation.reports.synthesis").write_synthesis_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
