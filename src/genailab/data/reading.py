"""Reading AnnData files and finding their count matrix, with clear errors for a missing file or layer.

:func:`read_h5ad` and :func:`get_counts` are the entry points; the small helpers (:func:`check_adata`,
:func:`adata_layers`, :func:`matrix_name`, :func:`format_names`, :func:`is_backed_sparse`) are shared
with :mod:`genailab.data.counts`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from genailab.errors import InvalidCountsError, InvalidInputError, MissingKeyError

__all__ = [
    "adata_layers",
    "check_adata",
    "format_names",
    "get_counts",
    "is_backed_sparse",
    "is_h5py_dataset",
    "matrix_name",
    "read_h5ad",
]


def is_backed_sparse(matrix: Any) -> bool:
    """Whether ``matrix`` is an anndata backed sparse dataset (CSR or CSC on disk)."""
    try:
        from anndata.abc import CSCDataset, CSRDataset
    except ImportError:  # anndata < 0.11
        from anndata._core.sparse_dataset import BaseCompressedSparseDataset

        return isinstance(matrix, BaseCompressedSparseDataset)
    return isinstance(matrix, (CSRDataset, CSCDataset))


def is_h5py_dataset(matrix: Any) -> bool:
    """Whether ``matrix`` is an h5py dataset (a dense matrix of a backed AnnData)."""
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency of anndata
        return False
    return isinstance(matrix, h5py.Dataset)


def check_adata(adata: Any, argument: str = "adata") -> AnnData:
    """``adata`` itself; anything but an AnnData is refused with how to read one."""
    if not isinstance(adata, AnnData):
        raise InvalidInputError(
            f"{argument} must be an anndata.AnnData, got {type(adata).__name__}. "
            "Read an .h5ad file with genailab.data.read_h5ad(path)."
        )
    return adata


def read_h5ad(path: str | os.PathLike[str], backed: bool = False) -> AnnData:
    """Read an ``.h5ad`` file, with a clear error for a missing or malformed file.

    Parameters
    ----------
    path
        Path to an ``.h5ad`` file.
    backed
        Open in backed read-only mode (``backed="r"``): ``X`` stays on disk and is read on demand,
        while ``obs``, ``var`` and ``layers`` are loaded into memory.

    Returns
    -------
    The AnnData object.

    Raises
    ------
    InvalidInputError
        If the file does not exist, is a directory, or is not a readable h5ad (HDF5) file.
    """
    import anndata
    import h5py

    if not isinstance(backed, bool):
        raise InvalidInputError(f"backed={backed!r} must be True or False.")
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"path={str(path)!r} does not exist; expected an .h5ad file.")
    if not p.is_file():
        raise InvalidInputError(f"path={str(path)!r} is a directory; expected an .h5ad file.")
    if not h5py.is_hdf5(p):
        raise InvalidInputError(
            f"path={str(path)!r} is not an h5ad file (not HDF5). Convert other formats with anndata or "
            "scanpy first (e.g. scanpy.read_10x_h5, anndata.read_loom) and write them with write_h5ad."
        )
    try:
        return anndata.read_h5ad(p, backed="r" if backed else None)
    except Exception as err:  # anndata raises many types for a malformed file
        raise InvalidInputError(
            f"path={str(path)!r} is an HDF5 file but could not be read as an h5ad (AnnData) file: "
            f"{type(err).__name__}: {err}"
        ) from err


def adata_layers(adata: AnnData) -> Any:
    """``adata.layers``, turning anndata's own shape check into a genailab error."""
    try:
        return adata.layers
    except ValueError as err:  # anndata validates every layer on access
        raise InvalidInputError(
            f"adata.layers is inconsistent with adata's shape {tuple(adata.shape)}: {err} "
            "Remove or fix the offending layer."
        ) from err


def matrix_name(layer: str | None) -> str:
    """``adata.X`` or ``adata.layers[...]``, for messages."""
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def get_counts(adata: AnnData, layer: str | None = None) -> Any:
    """Return the count matrix of ``adata`` (``X`` or ``layers[layer]``) without densifying it.

    Parameters
    ----------
    adata
        In-memory or backed AnnData.
    layer
        Layer holding the counts; ``None`` for ``adata.X``.

    Returns
    -------
    The matrix object itself: a :class:`numpy.ndarray`, a scipy sparse matrix, an h5py dataset or an
    anndata backed sparse dataset (backed mode).

    Raises
    ------
    MissingKeyError
        If ``layer`` is not a layer of ``adata`` (the message lists the available layers).
    InvalidInputError
        If ``adata`` is not an AnnData, ``adata.X`` is ``None``, the matrix has the wrong shape, or
        its dtype is not numeric.
    """
    check_adata(adata)
    if layer is not None and not isinstance(layer, str):
        raise InvalidInputError(f"layer={layer!r} must be a layer name (str) or None for adata.X.")
    if layer is None:
        matrix = adata.X
        if matrix is None:
            raise InvalidInputError(
                "adata.X is None; expected a count matrix. Pass layer=... naming the layer that holds the "
                f"counts (available layers: {format_names(adata_layers(adata).keys())})."
            )
    else:
        if layer not in adata_layers(adata):
            available = format_names(adata_layers(adata).keys())
            raise MissingKeyError(
                f"layer={layer!r} is not a layer of adata; available layers: {available}. "
                "Pass layer=None to use adata.X."
            )
        matrix = adata_layers(adata)[layer]
    shape = tuple(getattr(matrix, "shape", ()))
    if shape != tuple(adata.shape):
        raise InvalidInputError(
            f"{matrix_name(layer)} has shape {shape}, expected {tuple(adata.shape)} (n_obs, n_vars)."
        )
    dtype = np.dtype(getattr(matrix, "dtype", object))
    if dtype.kind not in "uif":
        raise InvalidCountsError(
            f"{matrix_name(layer)} has dtype {dtype}; expected a numeric (integer or float) count matrix. "
            "Convert it, e.g. adata.X = adata.X.astype(np.float32), or pass the layer that holds raw counts."
        )
    return matrix


def format_names(items: Any, limit: int = 20) -> str:
    """Up to ``limit`` names quoted and joined, with the total when there are more (``"none"`` when empty)."""
    items = [str(i) for i in items]
    if not items:
        return "none"
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")
