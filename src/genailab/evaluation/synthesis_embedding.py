"""Inputs, count statistics and the fixed PCA embedding behind synthesis evaluation.

Real and synthetic AnnData become :class:`SynthesisInputs` (validated counts, syn's genes in real's
order, string labels; :func:`prepare_inputs`). The real cells are split into three seeded thirds F, A
and B (stratified by condition); ``log1p(counts / library * 1e4)`` of part F (via
:func:`genailab.data.log_normalize`) gives per-gene means and standard deviations (standardised values
clipped to +-10) and a seeded PCA, which maps every real and synthetic cell
(:func:`embed_inputs`, :func:`pca_embed`). :func:`gene_stats`, :func:`library_sizes` and
:func:`mean_var_fit` are the per-gene and per-cell count statistics the metrics and the report share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from genailab.config import check_count
from genailab.data.counts import get_counts, log_normalize
from genailab.errors import GeneOverlapError, InvalidCountsError, InvalidInputError, MissingKeyError

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "CLIP",
    "TARGET_SUM",
    "SynthesisEmbedding",
    "SynthesisInputs",
    "check_sizes",
    "embed_inputs",
    "gene_stats",
    "library_sizes",
    "mean_var_fit",
    "pca_embed",
    "prepare_inputs",
    "subsample",
]

TARGET_SUM = 1e4  # counts per cell after normalisation, before log1p
CLIP = 10.0  # standardised log-expression is clipped to [-CLIP, CLIP]
_DENSE_CHUNK_ELEMENTS = 4_000_000  # cells are log-normalised in dense float64 blocks of at most this size

Matrix = np.ndarray | sp.csr_matrix


# --------------------------------------------------------------------------------------------------
# Inputs: counts, genes, keys
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthesisInputs:
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


def prepare_inputs(
    real: AnnData,
    syn: AnnData,
    *,
    layer: str | None,
    condition_key: str | None,
    classifier_key: str | None,
) -> SynthesisInputs:
    """Load and check both count matrices, put syn's genes in real's order and read the label columns.

    Parameters
    ----------
    real, syn
        AnnData of non-negative counts with the same (unique) gene names.
    layer
        Layer holding the counts in both objects; ``None`` for ``X``.
    condition_key, classifier_key
        ``obs`` columns of both objects, or ``None``.

    Returns
    -------
    The :class:`SynthesisInputs` (float64 CSR or dense counts, labels as ``str`` arrays).

    Raises
    ------
    GeneOverlapError
        If the gene sets differ.
    MissingKeyError
        If a key or ``layer`` is missing.
    InvalidInputError
        On a non-AnnData input, duplicated gene names or invalid counts.
    """
    real_counts = _load_counts(real, layer, "real")
    syn_counts = _load_counts(syn, layer, "syn")
    order = _gene_order(real, syn)
    if not np.array_equal(order, np.arange(len(order))):
        syn_counts = syn_counts[:, order]
    real_cond, syn_cond = _labels(real, syn, condition_key, "condition_key")
    real_cls, syn_cls = _labels(real, syn, classifier_key, "classifier_key")
    return SynthesisInputs(
        real_counts, syn_counts, [str(g) for g in real.var_names], real_cond, syn_cond, real_cls, syn_cls
    )


# --------------------------------------------------------------------------------------------------
# Count statistics and the fixed PCA
# --------------------------------------------------------------------------------------------------


def library_sizes(m: Matrix) -> np.ndarray:
    """Total count of each cell, ``(n,)``.

    Parameters
    ----------
    m
        ``(n, G)`` counts, dense or CSR.

    Returns
    -------
    The row sums as a 1-D array.
    """
    return np.asarray(m.sum(1)).ravel()  # (n,)


def gene_stats(m: Matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-gene mean, variance (ddof=0) and fraction of zero entries, each ``(G,)``.

    Parameters
    ----------
    m
        ``(n, G)`` counts, dense or CSR.

    Returns
    -------
    ``(mean, variance, zero_fraction)``, each ``(G,)``.
    """
    n = m.shape[0]
    if sp.issparse(m):
        mean = np.asarray(m.mean(0)).ravel()
        sq = np.asarray(m.multiply(m).mean(0)).ravel()
        nonzero = np.bincount(m.indices[m.data != 0], minlength=m.shape[1])
        return mean, np.maximum(sq - mean**2, 0.0), 1.0 - nonzero / n
    return m.mean(0), m.var(0), (m == 0).mean(0)


def _log_expression(m: Matrix) -> np.ndarray:
    """Dense ``(n, G)`` float32 ``log1p(counts / library * 1e4)``; empty cells stay zero.

    :func:`genailab.data.log_normalize` on blocks of cells, so the dense float64 intermediate stays
    small; the float32 result is the only full-size array.
    """
    n, n_genes = m.shape
    out = np.empty((n, n_genes), dtype=np.float32)
    step = max(1, _DENSE_CHUNK_ELEMENTS // max(n_genes, 1))
    for start in range(0, n, step):
        out[start : start + step] = log_normalize(m[start : start + step], target_sum=TARGET_SUM)
    return out


@dataclass(frozen=True)
class _RealPCA:
    """Standardise with real statistics, clip, project: a transform fitted once on real cells."""

    gene_mean: np.ndarray  # (G,)
    gene_std: np.ndarray  # (G,)
    pca: Any  # fitted sklearn PCA

    @classmethod
    def fit(cls, counts: Matrix, n_pcs: int, seed: int) -> _RealPCA:
        from sklearn.decomposition import PCA

        x = _log_expression(counts)  # (n, G)
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
            x = _log_expression(counts[start : start + chunk])
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
    """Real and synthetic cells in the principal components of synthesis evaluation.

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


def embed_inputs(inputs: SynthesisInputs, n_pcs: int, seed: int) -> SynthesisEmbedding:
    """Split the real cells in thirds, fit the transform on part F and project every cell.

    Parameters
    ----------
    inputs
        The prepared inputs; the split is stratified by ``inputs.real_cond``.
    n_pcs
        Requested components (reduced to ``|F| - 1`` or the gene count).
    seed
        Seed of the split and the PCA solver.

    Returns
    -------
    The :class:`SynthesisEmbedding`.
    """
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
    """The principal-component embedding synthesis evaluation uses, with the same split.

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
    check_count(n_pcs, "n_pcs", 1)
    check_count(seed, "seed", 0)
    inputs = prepare_inputs(real, syn, layer=layer, condition_key=condition_key, classifier_key=None)
    check_sizes(inputs)
    return embed_inputs(inputs, n_pcs, seed)


def check_sizes(inputs: SynthesisInputs) -> None:
    """Raise unless there are at least 6 real cells (split in thirds) and 2 synthetic cells.

    Parameters
    ----------
    inputs
        The prepared inputs.

    Raises
    ------
    InvalidInputError
        If either side has too few cells.
    """
    n_real, n_syn = inputs.real.shape[0], inputs.syn.shape[0]
    if n_real < 6 or n_syn < 2:
        raise InvalidInputError(
            f"real has {n_real} cells and syn {n_syn}; expected at least 6 real cells (split in thirds) "
            "and 2 synthetic cells."
        )


def subsample(idx: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``size`` entries of ``idx``: all of them, or a sorted random subset without replacement.

    Parameters
    ----------
    idx
        ``(n,)`` indices.
    size
        The largest number of indices to keep.
    rng
        Draws the subset when ``n > size``.

    Returns
    -------
    ``idx`` itself when ``n <= size``, else ``(size,)`` sorted indices.
    """
    if len(idx) <= size:
        return idx
    return np.sort(rng.choice(idx, size=size, replace=False))


def mean_var_fit(mean: np.ndarray, var: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of ``log(var) ~ log(mean)`` over genes with mean > 0 and var > 0 (natural log).

    Parameters
    ----------
    mean, var
        ``(G,)`` per-gene mean and variance of counts.

    Returns
    -------
    ``(slope, intercept)``; both ``nan`` when fewer than 2 genes qualify.
    """
    keep = (mean > 0) & (var > 0)
    if keep.sum() < 2:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(np.log(mean[keep]), np.log(var[keep]), 1)
    return float(slope), float(intercept)
