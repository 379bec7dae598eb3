"""Pseudo-bulk profiles of perturbation experiments: mean log-normalised expression per condition and context.

Perturbation-response baselines (:mod:`genailab.evaluation.baselines`) and metrics compare *population*
means: the mean ``log1p(counts / library * 1e4)`` of the cells of one perturbation (``"KLF1"``,
``"SET+KLF1"``) in one context (a cell line), and its *delta* from the control cells of the same context.

When the matrix is a gene subset (e.g. 500 highly variable genes), the standard library is the cell's
whole-transcriptome total (``obs['ncounts']``, ``library_key=``), not the row sum over the subset: otherwise one
UMI weighs ~100 times more than on the scale of GEARS, Ahlmann-Eltze et al. or PerturBench.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from genailab.data.counts import get_counts, log_normalize
from genailab.data.labels import split_label
from genailab.errors import InvalidInputError, MissingKeyError, UnknownLabelError

__all__ = ["PseudoBulk", "pseudobulk"]

_CHUNK_ROWS = 4096


@dataclasses.dataclass(frozen=True, eq=False)
class PseudoBulk:
    """Mean log-normalised expression of each (condition, context) group.

    Parameters
    ----------
    keys
        ``(condition, context)`` of each group, length ``K``; ``context`` is ``""`` without a context key.
    means
        Group means, shape ``(K, G)``.
    n_cells
        Cells per group, shape ``(K,)``.
    genes
        Gene names, length ``G``.
    control
        The control condition label.
    delimiter
        Separator of the single perturbations in a combination label (``"SET+KLF1"``).
    library_key
        The ``obs`` column of per-cell library sizes the means were normalised by, or ``None`` when each cell was
        normalised by its row sum over ``genes``.
    """

    keys: tuple[tuple[str, str], ...]
    means: np.ndarray
    n_cells: np.ndarray
    genes: tuple[str, ...]
    control: str
    delimiter: str
    library_key: str | None = None
    _index: dict[tuple[str, str], int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = tuple((str(c), str(x)) for c, x in self.keys)
        means = np.asarray(self.means, dtype=np.float64)
        n_cells = np.asarray(self.n_cells, dtype=np.int64)
        genes = tuple(str(g) for g in self.genes)
        if means.shape != (len(keys), len(genes)) or n_cells.shape != (len(keys),):
            raise InvalidInputError(
                f"PseudoBulk means must have shape (K={len(keys)}, G={len(genes)}) and n_cells (K,), got "
                f"{means.shape} and {n_cells.shape}."
            )
        if len(set(keys)) != len(keys):
            raise InvalidInputError("PseudoBulk keys must be unique (condition, context) pairs.")
        if not self.delimiter:
            raise InvalidInputError(f"delimiter={self.delimiter!r} must be a non-empty string such as '+'.")
        if self.library_key is not None and not (isinstance(self.library_key, str) and self.library_key):
            raise InvalidInputError(f"library_key={self.library_key!r} must be a non-empty obs column name or None.")
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "n_cells", n_cells)
        object.__setattr__(self, "genes", genes)
        object.__setattr__(self, "_index", {k: i for i, k in enumerate(keys)})

    @property
    def n_genes(self) -> int:
        """Number of genes ``G``."""
        return len(self.genes)

    @property
    def contexts(self) -> tuple[str, ...]:
        """Sorted distinct contexts."""
        return tuple(sorted({x for _, x in self.keys}))

    @property
    def conditions(self) -> tuple[str, ...]:
        """Sorted distinct conditions (control included)."""
        return tuple(sorted({c for c, _ in self.keys}))

    def has(self, condition: str, context: str = "") -> bool:
        """Whether the ``(condition, context)`` group is present.

        Parameters
        ----------
        condition
            Condition label.
        context
            Context label (``""`` without a context key).

        Returns
        -------
        bool
            ``True`` if the group has cells.
        """
        return (condition, context) in self._index

    def has_control(self, context: str = "") -> bool:
        """Whether ``context`` has control cells.

        Parameters
        ----------
        context
            Context label.

        Returns
        -------
        bool
            ``True`` if ``(control, context)`` is a group.
        """
        return self.has(self.control, context)

    def mean(self, condition: str, context: str = "") -> np.ndarray:
        """Mean log-normalised expression of a group.

        Parameters
        ----------
        condition
            Condition label.
        context
            Context label.

        Returns
        -------
        np.ndarray
            Shape ``(G,)``.

        Raises
        ------
        UnknownLabelError
            If the group is absent (the message lists the available conditions of that context).
        """
        i = self._index.get((condition, context))
        if i is None:
            if context not in self.contexts:
                raise UnknownLabelError(
                    f"context={context!r} is not in this pseudo-bulk; available contexts: {list(self.contexts)}."
                )
            available = sorted(c for c, x in self.keys if x == context)
            raise UnknownLabelError(
                f"condition={condition!r} has no cells in context={context!r}; available conditions there: {available}."
            )
        return self.means[i]

    def control_mean(self, context: str = "") -> np.ndarray:
        """Mean of the control cells of ``context``.

        Parameters
        ----------
        context
            Context label.

        Returns
        -------
        np.ndarray
            Shape ``(G,)``.

        Raises
        ------
        UnknownLabelError
            If ``context`` has no control cells (the contexts that have them are listed).
        """
        if not self.has_control(context):
            with_control = [x for x in self.contexts if self.has_control(x)]
            raise UnknownLabelError(
                f"context={context!r} has no control cells (control={self.control!r}); contexts with controls: "
                f"{with_control}."
            )
        return self.means[self._index[(self.control, context)]]

    def delta(self, condition: str, context: str = "") -> np.ndarray:
        """Mean of a group minus the control mean of the same context.

        Parameters
        ----------
        condition
            Condition label.
        context
            Context label.

        Returns
        -------
        np.ndarray
            Shape ``(G,)``.

        Raises
        ------
        UnknownLabelError
            If the group is absent or its context has no control cells.
        """
        return self.mean(condition, context) - self.control_mean(context)

    def singles(self, condition: str) -> tuple[str, ...]:
        """Single perturbations of a condition label (``"SET+KLF1"`` -> ``("SET", "KLF1")``).

        Parameters
        ----------
        condition
            Condition label.

        Returns
        -------
        tuple[str, ...]
            Its parts (:func:`genailab.data.split_label`, the one label grammar) without repeats or the control
            label; ``()`` for the control.
        """
        return tuple(dict.fromkeys(split_label(str(condition), self.control, self.delimiter, key=None)))

    def perturbed_keys(self, context: str | None = None) -> tuple[tuple[str, str], ...]:
        """Non-control groups whose context has control cells (so that their delta is defined).

        Parameters
        ----------
        context
            Restrict to this context; ``None`` for all.

        Returns
        -------
        tuple[tuple[str, str], ...]
            ``(condition, context)`` pairs in storage order.
        """
        return tuple(
            (c, x)
            for c, x in self.keys
            if c != self.control and self.has_control(x) and (context is None or x == context)
        )


def _obs_labels(adata: Any, key: str, argument: str) -> np.ndarray:
    obs = adata.obs
    if key not in obs.columns:
        cols = ", ".join(repr(str(c)) for c in obs.columns) or "none"
        raise MissingKeyError(f"{argument}={key!r} is not an obs column; available obs columns: {cols}.")
    series = obs[key]
    if series.isna().any():
        raise InvalidInputError(
            f"obs[{key!r}] ({argument}) has {int(series.isna().sum())} missing values; label every cell or drop them."
        )
    return series.astype(str).to_numpy()


def _obs_library(adata: Any, key: str) -> np.ndarray:
    obs = adata.obs
    if key not in obs.columns:
        cols = ", ".join(repr(str(c)) for c in obs.columns) or "none"
        raise MissingKeyError(
            f"library_key={key!r} is not an obs column (per-cell library sizes, e.g. 'ncounts'); available obs "
            f"columns: {cols}."
        )
    series = obs[key]
    if not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)):
        raise InvalidInputError(
            f"obs[{key!r}] (library_key) must hold numeric per-cell library sizes, got dtype {series.dtype}."
        )
    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        raise InvalidInputError(
            f"obs[{key!r}] (library_key) must be finite and non-negative; {int(bad.sum())} cells have missing, "
            "negative or infinite library sizes."
        )
    return values


def _row_indices(indices: Any, n_obs: int) -> np.ndarray:
    if indices is None:
        return np.arange(n_obs)
    idx = np.asarray(indices)
    if idx.dtype == bool:
        if idx.shape != (n_obs,):
            raise InvalidInputError(f"indices is a boolean mask of shape {idx.shape}; expected ({n_obs},).")
        return np.flatnonzero(idx)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise InvalidInputError(f"indices must be 1-D integer row indices or a boolean mask, got dtype {idx.dtype}.")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n_obs):
        raise InvalidInputError(f"indices must lie in [0, {n_obs}); got values from {idx.min()} to {idx.max()}.")
    return np.unique(idx)


def pseudobulk(
    adata: Any,
    perturbation_key: str,
    *,
    context_key: str | None = None,
    control: str = "control",
    delimiter: str = "+",
    layer: str | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
    library_key: str | None = None,
) -> PseudoBulk:
    """Mean log-normalised expression (:func:`log_normalize`) of each (condition, context) group of cells.

    Parameters
    ----------
    adata
        AnnData of raw counts.
    perturbation_key
        ``obs`` column of condition labels (``"control"``, ``"KLF1"``, ``"SET+KLF1"``).
    context_key
        ``obs`` column of contexts (e.g. cell line); ``None`` puts every cell in context ``""``.
    control
        Label of the control condition.
    delimiter
        Separator of single perturbations in combination labels.
    layer
        Layer holding the counts; ``None`` for ``adata.X``.
    indices
        Rows to use (integer indices or a boolean mask); ``None`` for all cells.
    library_key
        ``obs`` column of per-cell library sizes (e.g. ``"ncounts"``, the whole-transcriptome UMI total when the
        matrix is a gene subset); ``None`` normalises each cell by its row sum. Recorded as
        :attr:`PseudoBulk.library_key`.

    Returns
    -------
    PseudoBulk
        Groups sorted by (condition, context).

    Raises
    ------
    MissingKeyError
        If ``perturbation_key``, ``context_key``, ``library_key`` or ``layer`` is absent.
    InvalidInputError
        If labels are missing, library sizes are not finite non-negative numbers, or ``indices`` is invalid or
        selects no cells.

    Notes
    -----
    The selected cells need not include controls (e.g. a held-out test set); :meth:`PseudoBulk.delta` and the
    baselines raise when a context they need has no control cells.
    """
    matrix = get_counts(adata, layer)
    conditions = _obs_labels(adata, perturbation_key, "perturbation_key")
    contexts = (
        np.full(adata.n_obs, "", dtype=object)
        if context_key is None
        else _obs_labels(adata, context_key, "context_key")
    )
    library = None if library_key is None else _obs_library(adata, library_key)
    rows = _row_indices(indices, adata.n_obs)
    if rows.size == 0:
        raise InvalidInputError("indices selects no cells; expected at least one.")
    groups = pd.MultiIndex.from_arrays([conditions[rows], contexts[rows].astype(str)])
    codes, uniques = pd.factorize(groups, sort=True)
    n_groups, n_genes = len(uniques), int(matrix.shape[1])
    sums = np.zeros((n_groups, n_genes), dtype=np.float64)
    for start in range(0, rows.size, _CHUNK_ROWS):
        chunk_rows = rows[start : start + _CHUNK_ROWS]
        chunk = matrix[chunk_rows]
        lognorm = log_normalize(chunk, library=None if library is None else library[chunk_rows])  # (n, G)
        onehot = sparse.csr_matrix(
            (np.ones(chunk_rows.size), (codes[start : start + _CHUNK_ROWS], np.arange(chunk_rows.size))),
            shape=(n_groups, chunk_rows.size),
        )
        sums += onehot @ lognorm
    n_cells = np.bincount(codes, minlength=n_groups)
    return PseudoBulk(
        keys=tuple((str(c), str(x)) for c, x in uniques),
        means=sums / n_cells[:, None],
        n_cells=n_cells,
        genes=tuple(str(g) for g in adata.var_names),
        control=control,
        delimiter=delimiter,
        library_key=library_key,
    )
