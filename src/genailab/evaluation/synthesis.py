"""How realistic are synthetic cells? Distances to real data, measured against a real-vs-real floor.

:func:`evaluate_synthesis` compares a synthetic AnnData with the real one it imitates:

1. **A fixed embedding fitted on real data only.** The real cells are split into three disjoint random
   parts of equal size (stratified by condition): F, A and B. ``log1p(counts / library * 1e4)`` of part
   F gives per-gene means and standard deviations (standardised values clipped to +-10) and a seeded
   PCA; the same transform maps A, B and the synthetic cells. None of the compared cells helped fit the
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

:func:`write_synthesis_report` writes ``metrics.json`` and a one-file ``report.html`` with tables and
plots (UMAP / PCA, mean-variance, zero fraction, library size).
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import scipy.sparse as sp

from genailab.errors import GeneOverlapError, InvalidCountsError, InvalidInputError, MissingKeyError
from genailab.evaluation.distribution import (
    classifier_auc,
    energy_distance,
    median_distance,
    mmd_rbf,
    wasserstein1,
)

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["SynthesisEmbedding", "evaluate_synthesis", "pca_embed", "write_synthesis_report"]

TARGET_SUM = 1e4  # counts per cell after normalisation, before log1p
CLIP = 10.0  # standardised log-expression is clipped to [-CLIP, CLIP]
MMD_SCALES = (0.5, 1.0, 2.0)
EPS = 1e-4
METRICS = ("mmd", "energy", "w1", "classifier_auc")

BANDWIDTH_RULE = (
    "h = median pairwise Euclidean distance of real part A in PC space (at most 1000 cells), per scope "
    f"(overall or per condition); MMD kernel = sum of RBF kernels with length scales h * {MMD_SCALES}; the "
    "same h is used for the synthetic value and the floor"
)
RATIO_RULE = "ratio = synthetic / max(floor, eps), eps = 1e-4 for mmd and classifier_auc, 1e-4 * h for energy and w1"

Matrix = np.ndarray | sp.csr_matrix


# --------------------------------------------------------------------------------------------------
# Inputs: counts, genes, keys
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Inputs:
    """Validated counts with syn's genes in real's order, plus string labels."""

    real: Matrix  # (n_real, G)
    syn: Matrix  # (n_syn, G), columns in real's gene order
    genes: list[str]
    real_cond: np.ndarray | None  # (n_real,) str
    syn_cond: np.ndarray | None  # (n_syn,) str
    real_cls: np.ndarray | None  # (n_real,) str
    syn_cls: np.ndarray | None  # (n_syn,) str


def _load_counts(adata: AnnData, layer: str | None, name: str) -> Matrix:
    """Counts of ``adata`` in memory as float64 CSR or dense; checked finite and non-negative."""
    from anndata import AnnData

    from genailab.data.counts import get_counts

    if not isinstance(adata, AnnData):
        raise InvalidInputError(f"{name} is a {type(adata).__name__}; expected an AnnData.")
    try:
        m = get_counts(adata, layer)
    except MissingKeyError as err:
        raise MissingKeyError(f"{name}: {err}") from err
    if hasattr(m, "to_memory"):  # anndata backed sparse dataset
        m = m.to_memory()
    elif not (sp.issparse(m) or isinstance(m, np.ndarray)):  # h5py dataset or array-like
        m = np.asarray(m[()])
    m = sp.csr_matrix(m, dtype=np.float64) if sp.issparse(m) else np.asarray(m, dtype=np.float64)
    values = m.data if sp.issparse(m) else m
    if not np.isfinite(values).all() or (values < 0).any():
        where = "X" if layer is None else f"layers[{layer!r}]"
        raise InvalidCountsError(
            f"{name}.{where} has negative or non-finite values; expected non-negative counts "
            "(pass layer=... naming the raw-count layer if X is log-normalised)."
        )
    return m


def _check_unique(adata: AnnData, name: str) -> None:
    dup = adata.var_names[adata.var_names.duplicated()]
    if len(dup):
        raise InvalidInputError(
            f"{name}.var_names has {len(dup)} duplicated gene names (e.g. {list(dup[:5])}); expected unique "
            f"names. Call {name}.var_names_make_unique() first."
        )


def _gene_order(real: AnnData, syn: AnnData) -> np.ndarray:
    """Column indices of syn giving real's gene order; GeneOverlapError when the gene sets differ."""
    _check_unique(real, "real")
    _check_unique(syn, "syn")
    rset, sset = set(real.var_names), set(syn.var_names)
    if rset != sset:
        missing = [g for g in real.var_names if g not in sset]
        extra = [g for g in syn.var_names if g not in rset]
        raise GeneOverlapError(
            f"syn must have the same genes as real ({real.n_vars} genes); {len(missing)} of real's genes are "
            f"missing from syn.var_names (e.g. {missing[:5]}) and {len(extra)} genes of syn are not in "
            f"real.var_names (e.g. {extra[:5]}). Align syn to real's genes first."
        )
    return syn.var_names.get_indexer(real.var_names)


def _labels(real: AnnData, syn: AnnData, key: str | None, argument: str) -> tuple[Any, Any]:
    if key is None:
        return None, None
    if not isinstance(key, str):
        raise InvalidInputError(f"{argument}={key!r}; expected an obs column name (str) or None.")
    for name, adata in (("real", real), ("syn", syn)):
        if key not in adata.obs.columns:
            cols = [str(c) for c in adata.obs.columns]
            raise MissingKeyError(
                f"{argument}={key!r} is not a column of {name}.obs (columns: {cols[:20]}"
                f"{', ...' if len(cols) > 20 else ''}); it must be a column of both real.obs and syn.obs."
            )
    return (
        real.obs[key].astype(str).to_numpy(),
        syn.obs[key].astype(str).to_numpy(),
    )


def _prepare(
    real: AnnData,
    syn: AnnData,
    *,
    layer: str | None,
    condition_key: str | None,
    classifier_key: str | None,
) -> _Inputs:
    real_counts = _load_counts(real, layer, "real")
    syn_counts = _load_counts(syn, layer, "syn")
    order = _gene_order(real, syn)
    if not np.array_equal(order, np.arange(len(order))):
        syn_counts = syn_counts[:, order]
    real_cond, syn_cond = _labels(real, syn, condition_key, "condition_key")
    real_cls, syn_cls = _labels(real, syn, classifier_key, "classifier_key")
    return _Inputs(real_counts, syn_counts, [str(g) for g in real.var_names], real_cond, syn_cond, real_cls, syn_cls)


# --------------------------------------------------------------------------------------------------
# Count statistics and the fixed PCA
# --------------------------------------------------------------------------------------------------


def _library(m: Matrix) -> np.ndarray:
    return np.asarray(m.sum(1)).ravel()  # (n,)


def _gene_stats(m: Matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-gene mean, variance (ddof=0) and fraction of zero entries, each ``(G,)``."""
    n = m.shape[0]
    if sp.issparse(m):
        mean = np.asarray(m.mean(0)).ravel()
        sq = np.asarray(m.multiply(m).mean(0)).ravel()
        nonzero = np.bincount(m.indices[m.data != 0], minlength=m.shape[1])
        return mean, np.maximum(sq - mean**2, 0.0), 1.0 - nonzero / n
    return m.mean(0), m.var(0), (m == 0).mean(0)


def _log_normalise(m: Matrix) -> np.ndarray:
    """Dense ``(n, G)`` float32 ``log1p(counts / library * 1e4)``; empty cells stay zero."""
    scale = TARGET_SUM / np.maximum(_library(m), 1e-12)
    if sp.issparse(m):
        out = sp.csr_matrix(sp.diags(scale) @ m)
        out.data = np.log1p(out.data)
        return out.toarray().astype(np.float32)
    return np.log1p(m * scale[:, None]).astype(np.float32)


@dataclass(frozen=True)
class _RealPCA:
    """Standardise with real statistics, clip, project: a transform fitted once on real cells."""

    gene_mean: np.ndarray  # (G,)
    gene_std: np.ndarray  # (G,)
    pca: Any  # fitted sklearn PCA

    @classmethod
    def fit(cls, counts: Matrix, n_pcs: int, seed: int) -> _RealPCA:
        from sklearn.decomposition import PCA

        x = _log_normalise(counts)  # (n, G)
        mean = x.mean(0)
        std = x.std(0)
        std = np.where(std > 0, std, 1.0)
        z = np.clip((x - mean) / std, -CLIP, CLIP)
        pca = PCA(n_components=n_pcs, random_state=seed).fit(z)
        return cls(mean, std, pca)

    def transform(self, counts: Matrix, chunk: int = 10_000) -> np.ndarray:
        """``(n, G)`` counts -> ``(n, n_pcs)`` float64 coordinates, ``chunk`` cells at a time."""
        parts = []
        for start in range(0, counts.shape[0], chunk):
            x = _log_normalise(counts[start : start + chunk])
            parts.append(self.pca.transform(np.clip((x - self.gene_mean) / self.gene_std, -CLIP, CLIP)))
        if not parts:
            return np.zeros((0, self.pca.n_components_))
        return np.vstack(parts).astype(np.float64)


def _effective_pcs(n_pcs: int, n_fit: int, n_genes: int) -> int:
    return int(max(1, min(n_pcs, n_fit - 1, n_genes)))


def _thirds(n: int, groups: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """``(n,)`` part of each real cell: 0 = A, 1 = B, 2 = F, in equal thirds, stratified by ``groups``.

    Cells are shuffled within each group, the groups laid end to end and the parts dealt in turn
    (A, B, F, A, ...): every group of 6 or more cells gets at least 2 cells in each part, and the parts
    stay balanced overall even when groups are tiny.
    """
    if groups is None:
        order = rng.permutation(n)
    else:
        order = np.concatenate([rng.permutation(np.flatnonzero(groups == g)) for g in np.unique(groups)])
    part = np.empty(n, dtype=int)
    part[order] = np.arange(n) % 3
    return part


@dataclass(frozen=True)
class SynthesisEmbedding:
    """Real and synthetic cells in the principal components used by :func:`evaluate_synthesis`.

    Attributes
    ----------
    z_real
        ``(n_real, k)`` coordinates of every real cell.
    z_syn
        ``(n_syn, k)`` coordinates of every synthetic cell.
    fit_idx
        Real cells that fitted the transform (part F); their coordinates are in-sample.
    a_idx
        Real reference cells (part A).
    b_idx
        Real floor cells (part B).
    """

    z_real: np.ndarray
    z_syn: np.ndarray
    fit_idx: np.ndarray
    a_idx: np.ndarray
    b_idx: np.ndarray

    @property
    def held_out_idx(self) -> np.ndarray:
        """Real cells not used to fit the transform (parts A and B), sorted."""
        return np.sort(np.concatenate([self.a_idx, self.b_idx]))


def _embed(inputs: _Inputs, n_pcs: int, seed: int) -> SynthesisEmbedding:
    part = _thirds(inputs.real.shape[0], inputs.real_cond, np.random.default_rng(seed))
    fit_idx, a_idx, b_idx = (np.flatnonzero(part == i) for i in (2, 0, 1))
    k = _effective_pcs(n_pcs, len(fit_idx), inputs.real.shape[1])
    fit = _RealPCA.fit(inputs.real[fit_idx], k, seed)
    return SynthesisEmbedding(fit.transform(inputs.real), fit.transform(inputs.syn), fit_idx, a_idx, b_idx)


def pca_embed(
    real: AnnData,
    syn: AnnData,
    *,
    condition_key: str | None = None,
    layer: str | None = None,
    n_pcs: int = 30,
    seed: int = 0,
) -> SynthesisEmbedding:
    """The principal-component embedding :func:`evaluate_synthesis` uses, with the same split.

    The real cells are split (seeded, stratified by ``condition_key``) into thirds F, A and B; the
    transform ``log1p(counts / library * 1e4)`` -> per-gene standardisation with part-F mean and standard
    deviation (clipped to +-10) -> seeded PCA is fitted on part F only and applied to every cell. syn's
    genes are reordered to real's order. Plot ``z_real[held_out_idx]`` against ``z_syn`` to compare
    out-of-sample projections only.

    Parameters
    ----------
    real, syn
        AnnData with raw counts and the same gene names.
    condition_key
        ``obs`` column of both objects used to stratify the split; ``None`` for a plain random split.
    layer
        Layer holding the counts in both objects; ``None`` for ``X``.
    n_pcs
        Number of components (reduced to ``|F| - 1`` or the gene count when smaller).
    seed
        Seed of the split and the PCA solver.

    Returns
    -------
    A :class:`SynthesisEmbedding`.
    """
    _check_int(n_pcs, "n_pcs", 1)
    _check_int(seed, "seed", 0)
    inputs = _prepare(real, syn, layer=layer, condition_key=condition_key, classifier_key=None)
    _check_sizes(inputs)
    return _embed(inputs, n_pcs, seed)


def _check_sizes(inputs: _Inputs) -> None:
    n_real, n_syn = inputs.real.shape[0], inputs.syn.shape[0]
    if n_real < 6 or n_syn < 2:
        raise InvalidInputError(
            f"real has {n_real} cells and syn {n_syn}; expected at least 6 real cells (split in thirds) "
            "and 2 synthetic cells."
        )


# --------------------------------------------------------------------------------------------------
# Splits and comparisons
# --------------------------------------------------------------------------------------------------


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidInputError(f"{name}={value!r}; expected an integer >= {minimum}.")


def _take(idx: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    if len(idx) <= size:
        return idx
    return np.sort(rng.choice(idx, size=size, replace=False))


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
            b_parts.append(_take(b_c, m_c, rng))
            s_parts.append(_take(s_c, m_c, rng))
        b_use, s_use = np.sort(np.concatenate(b_parts)), np.sort(np.concatenate(s_parts))
        if len(s_use) >= 2:
            return b_use, s_use, True
    m = min(len(b_idx), n_syn)
    return _take(b_idx, m, rng), _take(np.arange(n_syn), m, rng), False


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


def _mean_var_fit(mean: np.ndarray, var: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of ``log(var) ~ log(mean)`` over genes with mean > 0 and var > 0 (natural log)."""
    keep = (mean > 0) & (var > 0)
    if keep.sum() < 2:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(np.log(mean[keep]), np.log(var[keep]), 1)
    return float(slope), float(intercept)


def _marginals(a: Matrix, b: Matrix, s: Matrix) -> dict[str, Any]:
    """Count marginals of part A against synthetic ``s`` and against part B (the floor)."""
    from scipy.stats import wasserstein_distance

    stats = {"real": _gene_stats(a), "synthetic": _gene_stats(s), "floor": _gene_stats(b)}
    out: dict[str, Any] = {}
    (ma, va, za) = stats["real"]
    for key in ("synthetic", "floor"):
        m, v, z = stats[key]
        out.setdefault("log1p_mean_corr", {})[key] = _corr(np.log1p(ma), np.log1p(m))
        out.setdefault("log1p_var_corr", {})[key] = _corr(np.log1p(va), np.log1p(v))
        out.setdefault("zero_fraction_corr", {})[key] = _corr(za, z)
    fits = {k: _mean_var_fit(m, v) for k, (m, v, _) in stats.items()}
    for i, name in enumerate(("mean_var_slope", "mean_var_intercept")):
        ref = fits["real"][i]
        out[name] = {
            "real": ref,
            "synthetic": fits["synthetic"][i],
            "floor": fits["floor"][i],
            "synthetic_diff": fits["synthetic"][i] - ref,
            "floor_diff": fits["floor"][i] - ref,
        }
    logs = {"real": np.log1p(_library(a)), "synthetic": np.log1p(_library(s)), "floor": np.log1p(_library(b))}
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


def _clean(obj: Any) -> Any:
    """Plain Python types only; NaN and infinities become ``None`` so strict JSON works."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_clean(v) for v in obj.tolist()]
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

    with metrics ``mmd`` (V-statistic MMD^2), ``energy`` (V-statistic), ``w1`` and ``classifier_auc``.

    Raises
    ------
    GeneOverlapError
        If the two gene sets differ (the message counts and names differing genes).
    MissingKeyError
        If ``condition_key``/``classifier_key`` is not a column of both ``obs`` or ``layer`` is missing.
    InvalidInputError
        On bad arguments, too few cells or invalid counts.
    """
    _check_int(n_pcs, "n_pcs", 1)
    _check_int(seed, "seed", 0)
    _check_int(min_cells, "min_cells", 6)
    cls_key = condition_key if classifier_key is None else classifier_key
    inputs = _prepare(real, syn, layer=layer, condition_key=condition_key, classifier_key=cls_key)
    _check_sizes(inputs)
    n_real, n_syn = inputs.real.shape[0], inputs.syn.shape[0]
    emb = _embed(inputs, n_pcs, seed)
    z_real, z_syn, a_idx, b_idx = emb.z_real, emb.z_syn, emb.a_idx, emb.b_idx  # (n_real, k), (n_syn, k)
    k = z_real.shape[1]
    rng = np.random.default_rng([seed, 1])  # subsamples; the split used default_rng(seed)

    # Overall: A vs a synthetic subsample of |B| cells; A vs B (trimmed to the same size if syn is small).
    b_use, s_use, matched = _overall_samples(b_idx, n_syn, inputs.real_cond, inputs.syn_cond, rng)
    overall = _compare(z_real[a_idx], z_real[b_use], z_syn[s_use], seed)
    overall.update(n_compared=len(s_use), composition_matched=matched)
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
            b_c = _take(b_c, m_c, rng)
            s_c = _take(np.flatnonzero(inputs.syn_cond == value), m_c, rng)
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
    return _clean(
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


_HOW_TO_READ = """
<p><b>How to read this.</b> Real cells were split into three random thirds: F fits the principal
components, A is the reference and B the floor. Every distance compares real part A with (i) a synthetic
sample of the same size as B (<i>synthetic</i>) and (ii) real part B (<i>real-vs-real floor</i>): the floor
is the score a perfect generator would get at this sample size, so the <b>ratio</b> synthetic / floor is
about 1 for synthetic cells indistinguishable from real ones and grows as they drift (lower is better).
<code>classifier_auc</code> is the cross-validated ROC AUC of a gradient-boosted classifier separating real
from synthetic cells: the target is <b>0.5</b> (indistinguishable), 1.0 means every synthetic cell is
recognisable. MMD, energy, W1 and AUC are computed on principal components fitted on real part F only, so
no compared cell helped fit them. Marginals compare per-gene statistics of the counts; fidelity is the
accuracy with which a classifier trained on real cells recovers the label each synthetic cell was
generated for, next to its accuracy on held-out real cells.</p>
"""


def _metric_rows(scope: Mapping[str, Any], prefix: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    rows = []
    for name in METRICS:
        entry = scope.get(name) or {}
        row = dict(prefix or {})
        row.update(
            {
                "metric": name,
                "synthetic": _num(entry.get("synthetic")),
                "real-vs-real floor": _num(entry.get("floor")),
                "ratio": _num(entry.get("ratio")),
            }
        )
        rows.append(row)
    return rows


def _num(v: Any) -> Any:
    return "n/a" if v is None else v


_EMBED_NOTE = (
    "PCA fitted on one third of the real cells (part F); the real cells shown are the other two thirds, "
    "so real and synthetic points are both out-of-sample projections."
)


def _embed_2d(z: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``z`` by UMAP (fit on the joint PCs) or its first two PCs."""
    if method == "umap" and z.shape[0] > 3:
        try:
            import umap  # lazy: slow import and numba JIT on first use
        except ImportError as err:
            note = f"umap-learn could not be imported ({err}); showing the first two PCs instead. {_EMBED_NOTE}"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reducer = umap.UMAP(n_components=2, n_neighbors=min(15, z.shape[0] - 1), random_state=seed)
                return reducer.fit_transform(z), f"UMAP of the joint PCs. {_EMBED_NOTE}"
        return z[:, :2], note
    return z[:, :2], f"First two principal components. {_EMBED_NOTE}"


def _figures(
    inputs: _Inputs, emb: SynthesisEmbedding, embedding: str, seed: int, max_plot: int
) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genailab.evaluation.report import figure_to_html

    rng = np.random.default_rng(seed)
    ri = _take(emb.held_out_idx, max_plot, rng)  # real cells that did not fit the PCA
    si = _take(np.arange(emb.z_syn.shape[0]), max_plot, rng)
    z = np.vstack([emb.z_real[ri], emb.z_syn[si]])
    if z.shape[1] < 2:
        z = np.hstack([z, np.zeros((z.shape[0], 1))])
    xy, note = _embed_2d(z, embedding, seed)
    n_r = len(ri)
    sections: list[tuple[str, str]] = []

    panels = 1 if inputs.real_cond is None else 3
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.5), squeeze=False, sharex=True, sharey=True)
    ax = axes[0, 0]
    ax.scatter(xy[:n_r, 0], xy[:n_r, 1], s=4, alpha=0.5, label="real", color="tab:blue")
    ax.scatter(xy[n_r:, 0], xy[n_r:, 1], s=4, alpha=0.5, label="synthetic", color="tab:orange")
    ax.set_title("by source")
    ax.legend(markerscale=3)
    if inputs.real_cond is not None:
        labels = np.concatenate([inputs.real_cond[ri], inputs.syn_cond[si]])
        values = sorted(set(labels.tolist()))
        cmap = plt.get_cmap("tab10" if len(values) <= 10 else "tab20")
        for j, (title, sl) in enumerate(
            (("real, by condition", slice(0, n_r)), ("synthetic, by condition", slice(n_r, None)))
        ):
            ax = axes[0, j + 1]
            for i, v in enumerate(values):
                mask = labels[sl] == v
                ax.scatter(xy[sl][mask, 0], xy[sl][mask, 1], s=4, alpha=0.6, color=cmap(i % cmap.N), label=v)
            ax.set_title(title)
        if len(values) <= 20:
            axes[0, 2].legend(markerscale=3, fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    sections.append(("Embedding", f"<p>{html.escape(note)}</p>" + figure_to_html(fig, alt="embedding")))

    stats = {"real": _gene_stats(inputs.real), "synthetic": _gene_stats(inputs.syn)}
    colors = {"real": "tab:blue", "synthetic": "tab:orange"}
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for key, (mean, var, _) in stats.items():
        keep = (mean > 0) & (var > 0)
        ax.scatter(np.log(mean[keep]), np.log(var[keep]), s=6, alpha=0.5, color=colors[key], label=key)
        slope, intercept = _mean_var_fit(mean, var)
        if math.isfinite(slope):
            xs = np.linspace(np.log(mean[keep]).min(), np.log(mean[keep]).max(), 2)
            style = "-" if key == "real" else ":"
            label = f"{key} fit: slope {slope:.2f}"
            ax.plot(xs, intercept + slope * xs, color=colors[key], lw=1.8, ls=style, label=label)
    lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
    hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="Poisson (var = mean)")
    ax.set_xlabel("log mean count per gene")
    ax.set_ylabel("log variance per gene")
    ax.legend(fontsize=8)
    sections.append(("Mean-variance relationship", figure_to_html(fig, alt="mean-variance")))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(0, 1, 31)
    for key, (_, _, zf) in stats.items():
        axes[0].hist(zf, bins=bins, alpha=0.5, color=colors[key], label=key)
    axes[0].set_xlabel("fraction of cells with zero count (per gene)")
    axes[0].set_ylabel("genes")
    axes[0].legend()
    logs = {"real": np.log1p(_library(inputs.real)), "synthetic": np.log1p(_library(inputs.syn))}
    edges = np.linspace(min(v.min() for v in logs.values()), max(v.max() for v in logs.values()) + 1e-9, 41)
    for key, v in logs.items():
        axes[1].hist(v, bins=edges, alpha=0.5, color=colors[key], label=key, density=True)
    axes[1].set_xlabel("log1p(library size)")
    axes[1].set_ylabel("density")
    axes[1].legend()
    sections.append(("Zero fraction and library size", figure_to_html(fig, alt="zero fraction and library size")))
    return sections


def write_synthesis_report(
    out_dir: str | Path,
    real: AnnData,
    syn: AnnData,
    metrics: Mapping[str, Any] | None = None,
    *,
    condition_key: str | None = None,
    layer: str | None = None,
    seed: int = 0,
    embedding: Literal["umap", "pca"] = "umap",
    max_plot_cells: int = 5000,
) -> Path:
    """Write ``out_dir/metrics.json`` and a self-contained ``out_dir/report.html``.

    Parameters
    ----------
    out_dir
        Output directory (created if needed); both files are written atomically.
    real, syn
        The AnnData objects that were evaluated.
    metrics
        The result of :func:`evaluate_synthesis`; ``None`` computes it with ``condition_key``, ``layer``
        and ``seed``.
    condition_key
        ``obs`` column (in both objects) used to colour the embedding; ``None`` colours by source only.
    layer
        Layer holding the counts in both objects; ``None`` for ``X``.
    seed
        Seed of the PCA, UMAP and plot subsamples.
    embedding
        ``"umap"`` (umap-learn on the joint PCs of a PCA fitted on real cells; falls back to the first
        two PCs, with a note, when umap-learn cannot be imported) or ``"pca"`` (first two PCs, fast).
    max_plot_cells
        At most this many real and this many synthetic cells are embedded and plotted.

    Returns
    -------
    The path of ``report.html``.
    """
    from genailab.evaluation.report import write_html_report
    from genailab.io import atomic_write_json

    if embedding not in ("umap", "pca"):
        raise InvalidInputError(f"embedding={embedding!r}; expected one of 'umap', 'pca'.")
    _check_int(max_plot_cells, "max_plot_cells", 2)
    if metrics is None:
        metrics = evaluate_synthesis(real, syn, condition_key=condition_key, layer=layer, seed=seed)
    out = Path(out_dir)
    inputs = _prepare(real, syn, layer=layer, condition_key=condition_key, classifier_key=None)
    _check_sizes(inputs)
    n_pcs = int(metrics.get("settings", {}).get("n_pcs_requested", 30))
    emb = _embed(inputs, n_pcs, seed)

    sections: list[tuple[str, Any]] = [("How to read this", _HOW_TO_READ)]
    sections.append(("Summary (all cells)", _metric_rows(metrics.get("overall", {}))))
    per_cond = metrics.get("per_condition", {})
    if per_cond:
        rows = []
        for value, scope in per_cond.items():
            prefix = {"condition": value, "n real": scope.get("n_real"), "n syn": scope.get("n_syn")}
            rows.extend(_metric_rows(scope, prefix))
        sections.append(("Per condition", rows))
    skipped = metrics.get("skipped_conditions", [])
    if skipped:
        sections.append(("Skipped conditions", [dict(s) for s in skipped]))
    comp = metrics.get("composition")
    if comp:
        comp_rows = [
            {
                "condition": v,
                "real fraction": comp["real"].get(v),
                "synthetic fraction": comp["synthetic"].get(v),
            }
            for v in comp["real"]
        ]
        comp_rows.append({"condition": "total variation distance", "real fraction": comp["total_variation"]})
        sections.append(("Condition composition (all cells)", comp_rows))
    columns = {
        "real": "real part A",
        "synthetic": "synthetic",
        "floor": "real part B (floor)",
        "synthetic_diff": "synthetic - A",
        "floor_diff": "B - A",
        "ratio": "ratio",
    }
    marg_rows = [
        {"quantity": name, **{label: _num(entry.get(key)) for key, label in columns.items() if key in entry}}
        for name, entry in metrics.get("marginals", {}).items()
    ]
    if marg_rows:
        sections.append(("Count marginals (real part A vs synthetic, and vs real part B)", marg_rows))
    fid = metrics.get("fidelity", {})
    if "synthetic" in fid:
        fid_rows = [
            {
                "cells": "synthetic (label = generating condition)",
                **{k2: _num(v) for k2, v in fid["synthetic"].items()},
            },
            {"cells": "real part B (floor)", **{k2: _num(v) for k2, v in fid["floor"].items()}},
        ]
        sections.append((f"Cell-type fidelity ({fid.get('key')})", fid_rows))
    elif fid.get("note"):
        sections.append(("Cell-type fidelity", f"<p>{html.escape(str(fid['note']))}</p>"))
    sections.extend(_figures(inputs, emb, embedding, seed, max_plot_cells))
    settings = metrics.get("settings", {})
    sections.append(("Settings", [{"setting": k2, "value": _num(v)} for k2, v in settings.items()]))

    atomic_write_json(out / "metrics.json", metrics)
    return write_html_report(out / "report.html", "Synthetic cells vs real cells", sections)
