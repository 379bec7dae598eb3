"""Reading and checking count matrices, and recovering counts from log-normalised data.

Every generative model in genailab models raw integer counts. :func:`validate_counts` checks a matrix
chunk by chunk (in memory, sparse or backed, never densifying the whole matrix) and, when it is not a
count matrix, says which cells and genes are affected and how to fix it. :func:`recover_counts`
inverts the common ``log1p(normalize_total(counts))`` preprocessing exactly when it can be inverted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from genailab.data.reading import (
    adata_layers,
    check_adata,
    format_names,
    get_counts,
    is_backed_sparse,
    is_h5py_dataset,
    matrix_name,
    read_h5ad,
)
from genailab.errors import InvalidCountsError, InvalidInputError, MissingKeyError

__all__ = [
    "CountsSummary",
    "RecoveryReport",
    "get_counts",
    "is_backed_sparse",
    "log_normalize",
    "read_h5ad",
    "recover_counts",
    "validate_counts",
]

RECOVERY_UNS_KEY = "genailab_count_recovery"

# Dense chunks are capped at this many elements so that a wide backed matrix never loads a huge block.
_DENSE_CHUNK_ELEMENTS = 4_000_000


def _row_chunks(matrix: Any, chunk_size: int) -> Iterator[tuple[int, np.ndarray | sp.csr_matrix]]:
    """Yield ``(row_offset, chunk)`` with ``chunk`` a dense array or an in-memory CSR matrix."""
    n_obs, n_vars = matrix.shape
    sparse = sp.issparse(matrix) or is_backed_sparse(matrix)
    step = chunk_size if sparse else max(1, min(chunk_size, _DENSE_CHUNK_ELEMENTS // max(n_vars, 1)))
    if sp.issparse(matrix) and matrix.format not in ("csr", "csc"):
        matrix = matrix.tocsr()
    for start in range(0, n_obs, step):
        stop = min(start + step, n_obs)
        chunk = matrix[start:stop]
        if sp.issparse(chunk):
            chunk = sp.csr_matrix(chunk)
        else:
            chunk = np.asarray(chunk)
        yield start, chunk


@dataclasses.dataclass(frozen=True)
class CountsSummary:
    """Summary of a validated count matrix.

    Attributes
    ----------
    n_obs, n_vars
        Shape of the matrix.
    total
        Sum of all counts.
    max
        Largest count.
    is_sparse
        Whether the matrix is stored sparse (in memory or backed).
    dtype
        The stored dtype, as a string.
    n_empty_cells
        Cells whose counts are all zero (allowed, but most models cannot learn from them).
    """

    n_obs: int
    n_vars: int
    total: float
    max: float
    is_sparse: bool
    dtype: str
    n_empty_cells: int


_PROBLEMS = ("NaN", "infinite", "negative", "non-integer")


def validate_counts(adata: AnnData, layer: str | None = None, chunk_size: int = 10_000) -> CountsSummary:
    """Check that a matrix holds raw counts: finite, non-negative integers.

    Rows are read ``chunk_size`` at a time, so backed and sparse matrices are never densified whole
    (for sparse chunks only the stored values are inspected). Cells whose counts are all zero are
    allowed and counted in :attr:`CountsSummary.n_empty_cells`.

    Parameters
    ----------
    adata
        In-memory or backed AnnData.
    layer
        Layer holding the counts; ``None`` for ``adata.X``.
    chunk_size
        Largest number of rows read at once (dense chunks are further capped to ~4 M values).

    Returns
    -------
    A :class:`CountsSummary`.

    Raises
    ------
    InvalidCountsError
        If ``adata`` has no cells or no genes, or any value is NaN, infinite, negative or not an
        integer. The message says how many cells and genes are affected, gives an example and how to
        fix it: pass ``layer='counts'`` if raw counts are stored in a layer, or use
        :func:`genailab.data.recover_counts` if the data are log-normalised with an invertible
        per-cell normalisation.
    MissingKeyError
        If ``layer`` does not exist.

    Examples
    --------
    >>> import numpy as np, anndata
    >>> validate_counts(anndata.AnnData(np.array([[0, 2], [1, 0]], dtype=np.float32))).total
    3.0
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidInputError(f"chunk_size={chunk_size!r} must be a positive integer.")
    matrix = get_counts(adata, layer)
    name = matrix_name(layer)
    n_obs, n_vars = (int(s) for s in matrix.shape)
    if n_obs == 0 or n_vars == 0:
        raise InvalidCountsError(
            f"{name} is empty ({n_obs} cells x {n_vars} genes); expected at least one cell and one gene. "
            "Check the filtering steps that produced this AnnData."
        )
    dtype = np.dtype(matrix.dtype)
    is_float = dtype.kind == "f"
    is_sparse = sp.issparse(matrix) or is_backed_sparse(matrix)
    bad_cells = {p: np.zeros(n_obs, dtype=bool) for p in _PROBLEMS}
    bad_genes = {p: np.zeros(n_vars, dtype=bool) for p in _PROBLEMS}
    examples: dict[str, tuple[float, int, int]] = {}
    total = 0.0
    vmax = -math.inf
    n_empty = 0
    for start, chunk in _row_chunks(matrix, chunk_size):
        if isinstance(chunk, np.ndarray):
            values = chunk
            masks = _problem_masks(values, is_float)
            for p, m in masks.items():
                if m is None or not m.any():
                    continue
                bad_cells[p][start : start + chunk.shape[0]] |= m.any(axis=1)
                bad_genes[p] |= m.any(axis=0)
                if p not in examples:
                    r, c = (int(i[0]) for i in np.nonzero(m))
                    examples[p] = (float(values[r, c]), start + r, c)
            finite = values if not is_float else np.where(np.isfinite(values), values, 0)
            row_sums = finite.sum(axis=1, dtype=np.float64)
            chunk_max = float(finite.max()) if finite.size else 0.0
        else:
            data = chunk.data
            masks = _problem_masks(data, is_float)
            if any(m is not None and m.any() for m in masks.values()):
                rows = np.repeat(np.arange(chunk.shape[0]), np.diff(chunk.indptr))
                for p, m in masks.items():
                    if m is None or not m.any():
                        continue
                    bad_cells[p][start + rows[m]] = True
                    bad_genes[p][chunk.indices[m]] = True
                    if p not in examples:
                        k = int(np.flatnonzero(m)[0])
                        examples[p] = (float(data[k]), start + int(rows[k]), int(chunk.indices[k]))
            finite = data if not is_float else np.where(np.isfinite(data), data, 0)
            row_sums = np.asarray(
                sp.csr_matrix((finite, chunk.indices, chunk.indptr), shape=chunk.shape).sum(axis=1),
                dtype=np.float64,
            ).ravel()
            chunk_max = float(finite.max()) if finite.size else 0.0
            if finite.size < chunk.shape[0] * chunk.shape[1]:
                chunk_max = max(chunk_max, 0.0)
        total += float(row_sums.sum())
        n_empty += int((row_sums == 0).sum())
        vmax = max(vmax, chunk_max)
    problems = [p for p in _PROBLEMS if p in examples]
    if problems:
        parts = []
        for p in problems:
            value, r, c = examples[p]
            parts.append(
                f"{int(bad_cells[p].sum())} of {n_obs} cells and {int(bad_genes[p].sum())} of {n_vars} genes "
                f"have {p} values (e.g. {value:.4g} at cell {str(adata.obs_names[r])!r}, "
                f"gene {str(adata.var_names[c])!r})"
            )
        other_layers = [k for k in adata_layers(adata).keys() if k != layer]
        hint = (
            "Pass layer='counts' (or whichever layer holds raw counts; available layers: "
            f"{format_names(other_layers)}) "
            "if raw counts are stored in a layer, or use genailab.data.recover_counts if the data are "
            "log-normalised with an invertible per-cell normalisation (log1p of normalize_total)."
        )
        raise InvalidCountsError(f"{name} is not a raw count matrix: {'; '.join(parts)}. {hint}")
    return CountsSummary(
        n_obs=n_obs,
        n_vars=n_vars,
        total=total,
        max=float(vmax),
        is_sparse=bool(is_sparse),
        dtype=str(dtype),
        n_empty_cells=n_empty,
    )


def _problem_masks(values: np.ndarray, is_float: bool) -> dict[str, np.ndarray | None]:
    """Boolean masks of NaN, infinite, negative and non-integer entries (None when impossible)."""
    if not is_float:
        return {"NaN": None, "infinite": None, "negative": values < 0, "non-integer": None}
    nan = np.isnan(values)
    inf = np.isinf(values)
    finite = ~(nan | inf)
    with np.errstate(invalid="ignore"):
        negative = finite & (values < 0)
        nonint = finite & (values != np.rint(values))
    return {"NaN": nan, "infinite": inf, "negative": negative, "non-integer": nonint}


@dataclasses.dataclass(frozen=True)
class RecoveryReport:
    """What :func:`recover_counts` did.

    Attributes
    ----------
    method
        ``"library_size"`` or ``"min_nonzero"``.
    source
        ``"raw"``, ``"X"`` or the layer name the values were read from.
    max_residual
        Largest distance between a recovered value and its nearest integer, before rounding.
    n_cells
        Number of cells.
    n_cells_inexact
        Cells whose largest residual exceeds ``tolerance`` (0 on success).
    tolerance
        The tolerance used.
    """

    method: str
    source: str
    max_residual: float
    n_cells: int
    n_cells_inexact: int
    tolerance: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-data dict (stored in ``uns['genailab_count_recovery']``)."""
        return dataclasses.asdict(self)


def recover_counts(
    adata: AnnData,
    *,
    source: str = "raw",
    method: Literal["library_size", "min_nonzero"] = "library_size",
    library_key: str | None = "n_counts",
    target_sum: float = 1e4,
    tolerance: float = 0.1,
) -> tuple[AnnData, RecoveryReport]:
    """Recover integer counts from ``log1p(normalize_total(counts))`` data by inverting it exactly.

    Many public datasets ship only log-normalised values ``x = log1p(counts / s_i * target_sum)``
    with a per-cell size ``s_i``. When ``s_i`` is known (``method="library_size"``: the library
    sizes stored in ``obs[library_key]``), ``counts = expm1(x) * s_i / target_sum``. When it is not,
    ``method="min_nonzero"`` assumes each cell's smallest non-zero count is 1 and divides each cell's
    ``expm1(x)`` by its smallest non-zero value. The result is rounded to integers; if any value is
    more than ``tolerance`` away from an integer the inversion is not exact and an error is raised.

    Parameters
    ----------
    adata
        AnnData holding log-normalised values.
    source
        Where the values are: ``"raw"`` (``adata.raw.X``, with ``adata.raw.var_names``), ``"X"``
        (``adata.X``) or a layer name. ``"raw"`` and ``"X"`` take precedence over layers of those names.
    method
        ``"library_size"`` or ``"min_nonzero"`` (see above).
    library_key
        ``obs`` column of per-cell library sizes (``method="library_size"`` only).
    target_sum
        The ``target_sum`` of the original ``normalize_total`` call (``method="library_size"`` only).
    tolerance
        Largest allowed distance to the nearest integer before rounding, in ``(0, 0.5)``.

    Returns
    -------
    adata_counts
        A new AnnData with int32 counts in ``X`` (CSR if the input was sparse), the same ``obs`` and
        ``obsm``, the ``var`` of the source (``adata.raw.var`` for ``source="raw"``), and the report in
        ``uns['genailab_count_recovery']``.
    report
        A :class:`RecoveryReport`.

    Raises
    ------
    MissingKeyError
        If ``adata.raw`` is absent for ``source="raw"``, the layer does not exist, or
        ``obs[library_key]`` is missing.
    InvalidCountsError
        If the values are not finite and non-negative, or rounding is not exact for some cells (the
        message says how many and suggests the other method).
    InvalidInputError
        For a bad argument.

    Examples
    --------
    scanpy's bundled ``pbmc68k_reduced`` keeps ``raw.X = log1p(normalize_total(counts, 1e4))`` for its
    765 genes and the library sizes in ``obs['n_counts']``; the inversion is exact (max residual
    about 0.08 before rounding):

    >>> import scanpy as sc  # doctest: +SKIP
    >>> counts, report = recover_counts(sc.datasets.pbmc68k_reduced(), source="raw",
    ...                                 method="library_size", library_key="n_counts")  # doctest: +SKIP
    >>> counts.shape, report.n_cells_inexact  # doctest: +SKIP
    ((700, 765), 0)
    """
    check_adata(adata)
    if method not in ("library_size", "min_nonzero"):
        raise InvalidInputError(f"method={method!r} is not allowed; expected 'library_size' or 'min_nonzero'.")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 0.5:
        raise InvalidInputError(f"tolerance={tolerance!r} must be a number in (0, 0.5).")
    if not isinstance(source, str) or not source:
        raise InvalidInputError(f"source={source!r} must be 'raw', 'X' or a layer name.")

    if source == "raw":
        if adata.raw is None:
            raise MissingKeyError(
                "source='raw' but adata.raw is None; pass source='X' or a layer name "
                f"(available layers: {format_names(adata_layers(adata).keys())})."
            )
        matrix = adata.raw.X
        var = adata.raw.var.copy()
        var.index = pd.Index([str(v) for v in adata.raw.var_names])
    elif source == "X":
        matrix = get_counts(adata, None)
        var = adata.var.copy()
    else:
        if source not in adata_layers(adata):
            raise MissingKeyError(
                f"source={source!r} is neither 'raw', 'X' nor a layer of adata; available layers: "
                f"{format_names(adata_layers(adata).keys())}."
            )
        matrix = get_counts(adata, source)
        var = adata.var.copy()
    where = "adata.raw.X" if source == "raw" else matrix_name(None if source == "X" else source)
    if is_h5py_dataset(matrix) or is_backed_sparse(matrix):
        matrix = matrix[:] if is_h5py_dataset(matrix) else matrix.to_memory()
    if np.dtype(matrix.dtype).kind not in "uif":
        raise InvalidCountsError(f"{where} has dtype {matrix.dtype}; expected numeric log-normalised values.")
    n_obs = int(matrix.shape[0])
    if n_obs == 0 or matrix.shape[1] == 0:
        raise InvalidCountsError(f"{where} is empty (shape {tuple(matrix.shape)}); nothing to recover.")

    sparse = sp.issparse(matrix)
    if sparse:
        csr = sp.csr_matrix(matrix, copy=True)
        csr.sum_duplicates()
        values = csr.data.astype(np.float64)
        rows = np.repeat(np.arange(n_obs), np.diff(csr.indptr))
    else:
        dense = np.asarray(matrix, dtype=np.float64)
        values = dense.ravel()
        rows = np.repeat(np.arange(n_obs), dense.shape[1])
    if not np.isfinite(values).all():
        n_bad = len(np.unique(rows[~np.isfinite(values)]))
        raise InvalidCountsError(
            f"{where}: {n_bad} of {n_obs} cells have NaN or infinite values; cannot recover counts."
        )
    if (values < 0).any():
        n_bad = len(np.unique(rows[values < 0]))
        raise InvalidCountsError(
            f"{where}: {n_bad} of {n_obs} cells have negative values, so it is not log1p-normalised data "
            "(scaled or centred data cannot be inverted). Use source='raw' or the layer holding "
            "log1p(normalize_total(counts))."
        )
    with np.errstate(over="ignore"):
        expm1 = np.expm1(values)

    if method == "library_size":
        if library_key is None:
            raise InvalidInputError("method='library_size' needs library_key (an obs column of library sizes).")
        if library_key not in adata.obs.columns:
            raise MissingKeyError(
                f"library_key={library_key!r} is not an obs column; available obs columns: "
                f"{format_names(adata.obs.columns)}. Use method='min_nonzero' if library sizes are unknown."
            )
        if (
            isinstance(target_sum, bool)
            or not isinstance(target_sum, (int, float))
            or not (math.isfinite(target_sum) and target_sum > 0)
        ):
            raise InvalidInputError(f"target_sum={target_sum!r} must be a positive finite number.")
        lib = pd.to_numeric(adata.obs[library_key], errors="coerce").to_numpy(dtype=np.float64)
        if not (np.isfinite(lib) & (lib > 0)).all():
            n_bad = int((~(np.isfinite(lib) & (lib > 0))).sum())
            raise InvalidInputError(
                f"obs[{library_key!r}] must hold positive finite library sizes; {n_bad} of {n_obs} cells do not."
            )
        scale = lib / float(target_sum)
    else:
        scale = np.ones(n_obs)
        positive = expm1 > 0
        mins = np.full(n_obs, np.inf)
        np.minimum.at(mins, rows[positive], expm1[positive])
        has = np.isfinite(mins)
        scale[has] = 1.0 / mins[has]
    with np.errstate(over="ignore", invalid="ignore"):
        recovered = expm1 * scale[rows]
    if not np.isfinite(recovered).all():
        n_bad = len(np.unique(rows[~np.isfinite(recovered)]))
        raise InvalidCountsError(
            f"{where}: {n_bad} of {n_obs} cells give infinite counts when inverted (values too large for "
            "log1p-normalised data); check source= and that the values are log1p(normalize_total(counts))."
        )
    rounded = np.rint(recovered)
    residual = np.abs(recovered - rounded)
    per_cell = np.zeros(n_obs)
    np.maximum.at(per_cell, rows, residual)
    inexact = per_cell > tolerance
    max_residual = float(per_cell.max())
    report = RecoveryReport(
        method=method,
        source=source,
        max_residual=max_residual,
        n_cells=n_obs,
        n_cells_inexact=int(inexact.sum()),
        tolerance=float(tolerance),
    )
    if report.n_cells_inexact:
        other = "min_nonzero" if method == "library_size" else "library_size"
        worst = int(np.argmax(per_cell))
        raise InvalidCountsError(
            f"recover_counts(method={method!r}): {report.n_cells_inexact} of {n_obs} cells have values more "
            f"than tolerance={tolerance} from an integer (max residual {max_residual:.3g} at cell "
            f"{str(adata.obs_names[worst])!r}), so {where} is not exactly invertible this way. "
            f"Try method={other!r}, check library_key/target_sum, or check that the data are "
            "log1p(normalize_total(counts)) without further scaling."
        )
    if rounded.size and rounded.max() > np.iinfo(np.int32).max:
        raise InvalidCountsError(f"{where}: recovered counts exceed the int32 range (max {rounded.max():.3g}).")
    ints = rounded.astype(np.int32)
    if sparse:
        x_out: Any = sp.csr_matrix((ints, csr.indices.copy(), csr.indptr.copy()), shape=csr.shape)
        x_out.eliminate_zeros()
    else:
        x_out = ints.reshape(dense.shape)
    out = AnnData(X=x_out, obs=adata.obs.copy(), var=var)
    for key in adata.obsm.keys():
        out.obsm[key] = adata.obsm[key].copy()
    out.uns[RECOVERY_UNS_KEY] = report.to_dict()
    return out, report


def log_normalize(counts: Any, target_sum: float = 1e4, library: Any = None) -> np.ndarray:
    """Library-size normalise and log-transform counts: ``log1p(counts / library * target_sum)``.

    Parameters
    ----------
    counts
        Count matrix, shape ``(N, G)``, dense or scipy sparse.
    target_sum
        Total each cell is scaled to before ``log1p``.
    library
        Per-cell library sizes, shape ``(N,)`` (or ``(N, 1)``), e.g. ``obs['ncounts']``: the whole-transcriptome
        UMI total of each cell when ``counts`` holds a gene subset (highly variable genes), so that values are on
        the standard scale. ``None`` uses the row sums of ``counts``.

    Returns
    -------
    np.ndarray
        Dense float64 array of shape ``(N, G)``; rows whose library (or total) is 0 stay 0.

    Raises
    ------
    InvalidInputError
        If ``counts`` is not 2-D, holds negative or non-finite values, ``target_sum`` is not positive, or
        ``library`` does not have one finite non-negative value per cell.

    Examples
    --------
    >>> import numpy as np
    >>> log_normalize(np.array([[1.0, 3.0]]), target_sum=10.0, library=np.array([10.0])).round(3)
    array([[0.693, 1.386]])
    """
    if isinstance(target_sum, bool) or not np.isfinite(target_sum) or target_sum <= 0:
        raise InvalidInputError(f"target_sum={target_sum!r} must be a positive finite number (e.g. 1e4).")
    x = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise InvalidInputError(f"counts must be a 2-D (cells, genes) matrix, got shape {x.shape}.")
    if x.size and (not np.isfinite(x).all() or x.min() < 0):
        raise InvalidInputError("counts must be finite and non-negative; got negative, NaN or infinite values.")
    if library is None:
        total = x.sum(axis=1, keepdims=True)  # (N, 1)
    else:
        total = _library_column(library, x.shape[0])  # (N, 1)
    scale = np.divide(target_sum, total, out=np.zeros_like(total), where=total > 0)
    return np.log1p(x * scale)


def _library_column(library: Any, n_obs: int) -> np.ndarray:
    """Check per-cell library sizes and return them as a float64 ``(N, 1)`` column."""
    try:
        lib = np.asarray(library, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"library must be numeric per-cell library sizes, shape ({n_obs},): {err}.") from err
    if lib.shape == (n_obs, 1):
        lib = lib[:, 0]
    if lib.shape != (n_obs,):
        raise InvalidInputError(f"library must have shape ({n_obs},) (one size per cell), got {lib.shape}.")
    if lib.size and (not np.isfinite(lib).all() or lib.min() < 0):
        bad = int((~np.isfinite(lib) | (lib < 0)).sum())
        raise InvalidInputError(
            f"library must be finite and non-negative; {bad} of {n_obs} cells have negative, NaN or infinite sizes."
        )
    return lib[:, None]
