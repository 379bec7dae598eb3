"""Mini-batches of counts and covariates from an AnnData, in memory or backed on disk.

:class:`CountsDataset` is indexed by a *list* of positions and returns a whole batch with one
fancy-index read, so a training step costs one vectorised read instead of a Python loop over cells.
:class:`BatchSampler` decides which positions form each batch from ``(n, seed, epoch)`` only, so the
same seed gives the same batches whether the data are dense, sparse, in memory or backed, and
``num_replicas``/``rank`` shard the batches for distributed data parallel training.
:func:`make_dataloader` wires the two into a :class:`torch.utils.data.DataLoader`.

Batch dict (keys from :data:`genailab.constants.BATCH_KEYS`), for ``B`` cells and ``G`` model genes:

==============  ===============  =====================================================================
``COUNTS``      (B, G) float32   raw counts (in the model's gene order when aligned; missing genes 0)
``LIBRARY``     (B, 1) float32   sum of ``COUNTS`` over the row, i.e. over the measured model genes
``CAT_COVS``    (B, K) int64     codes of the registered categorical keys (``K`` may be 0)
``CONT_COVS``   (B, C) float32   standardised continuous covariates (``C`` may be 0)
``INDICES``     (B,) int64       row of each cell in the AnnData
``GENE_MASK``   (G,) bool        measured model genes (all True without an alignment)
==============  ===============  =====================================================================
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from torch.utils.data import DataLoader, Dataset, Sampler

from genailab.config import check_count
from genailab.constants import BATCH_KEYS
from genailab.data.counts import get_counts, is_backed_sparse
from genailab.data.genes import GeneAlignment, apply_alignment
from genailab.data.spec import DataRegistry
from genailab.errors import InvalidInputError

__all__ = ["BatchSampler", "CountsDataset", "TensorBatchDataset", "make_dataloader"]


def _sparse_dataset(group: Any) -> Any:
    try:
        from anndata.io import sparse_dataset
    except ImportError:  # anndata < 0.11
        from anndata.experimental import sparse_dataset
    return sparse_dataset(group)


class _RowReader:
    """Reads rows of a count matrix: in memory (dense or CSR) or backed (h5py dataset or sparse group).

    A backed reader re-opens the file in each process that uses it (DataLoader workers), since an
    HDF5 handle must not be shared across ``fork``; it pickles without the handle.
    """

    def __init__(self, matrix: Any, filename: str | None) -> None:
        self.backed = filename is not None and (is_backed_sparse(matrix) or _is_h5py(matrix))
        self.filename = filename if self.backed else None
        if not self.backed:
            if sp.issparse(matrix) and matrix.format != "csr":
                matrix = sp.csr_matrix(matrix)  # row reads from CSC/COO are slow; convert once
            elif not sp.issparse(matrix):
                matrix = np.asarray(matrix)
        self._matrix: Any = matrix
        self._pid = os.getpid()
        self._file: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self.backed:
            state["_matrix"] = None
            state["_file"] = None
        return state

    def _handle(self) -> Any:
        if self._matrix is None or self._pid != os.getpid():
            import h5py

            self._file = h5py.File(self.filename, "r")
            node = self._file["X"]
            self._matrix = _sparse_dataset(node) if isinstance(node, h5py.Group) else node
            self._pid = os.getpid()
        return self._matrix

    def read(self, rows: np.ndarray) -> np.ndarray | sp.csr_matrix:
        """Rows ``rows`` (any order, duplicates allowed) as a dense array or a CSR matrix."""
        if not self.backed:
            return self._matrix[rows]
        matrix = self._handle()
        uniq, inverse = np.unique(rows, return_inverse=True)  # h5py needs increasing indices
        block = matrix[uniq]
        if sp.issparse(block):
            block = sp.csr_matrix(block)
        return block[inverse]


def _is_h5py(matrix: Any) -> bool:
    import h5py

    return isinstance(matrix, h5py.Dataset)


class CountsDataset(Dataset):
    """Batches of counts and covariates from an AnnData (see the module docstring for the batch dict).

    Parameters
    ----------
    adata
        In-memory (dense or sparse) or backed (``backed="r"``) AnnData. Nothing is densified beyond
        the requested rows; covariates are encoded once (``obs`` is in memory even when backed).
    registry
        A :class:`~genailab.data.DataRegistry`; ``None`` gives empty covariate matrices.
    layer
        Layer with the counts; ``None`` uses ``registry.spec.layer`` (or ``adata.X``).
    alignment
        A :class:`~genailab.data.GeneAlignment` mapping ``adata``'s genes to a model's genes; counts
        are then returned in the model's gene order with unmeasured genes zero-filled.
    indices
        Rows of ``adata`` to use (e.g. ``split.train``); position ``i`` of the dataset is row
        ``indices[i]``. ``None`` uses all rows.
    unknown
        Passed to :meth:`DataRegistry.encode_categorical`: ``"error"`` or ``"unknown"`` (code -1).

    Notes
    -----
    ``dataset[i]`` with an int returns a batch of one cell (shapes ``(1, G)``, ...); ``dataset[[i, j]]``
    returns a batch of those cells in that order. Use :func:`make_dataloader` rather than PyTorch's
    default per-item batching.
    """

    def __init__(
        self,
        adata: AnnData,
        registry: DataRegistry | None = None,
        *,
        layer: str | None = None,
        alignment: GeneAlignment | None = None,
        indices: np.ndarray | None = None,
        unknown: Literal["error", "unknown"] = "error",
    ) -> None:
        if not isinstance(adata, AnnData):
            raise InvalidInputError(f"adata must be an anndata.AnnData, got {type(adata).__name__}.")
        if registry is not None and not isinstance(registry, DataRegistry):
            raise InvalidInputError(f"registry must be a DataRegistry or None, got {type(registry).__name__}.")
        if alignment is not None and not isinstance(alignment, GeneAlignment):
            raise InvalidInputError(f"alignment must be a GeneAlignment or None, got {type(alignment).__name__}.")
        if layer is None and registry is not None:
            layer = registry.spec.layer
        matrix = get_counts(adata, layer)
        filename = str(adata.filename) if adata.isbacked and layer is None and adata.filename is not None else None
        self._reader = _RowReader(matrix, filename)
        n_obs, n_vars = adata.shape
        if alignment is not None and alignment.n_source != n_vars:
            raise InvalidInputError(
                f"alignment expects {alignment.n_source} dataset genes but adata has {n_vars}; build it with "
                "align_genes(adata.var_names, model_genes)."
            )
        self.alignment = alignment
        if indices is None:
            rows = np.arange(n_obs, dtype=np.int64)
        else:
            rows = np.asarray(indices)
            if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
                raise InvalidInputError(
                    f"indices must be a 1-D integer array, got shape {rows.shape} dtype {rows.dtype}."
                )
            rows = rows.astype(np.int64)
            if rows.size and (rows.min() < 0 or rows.max() >= n_obs):
                raise InvalidInputError(
                    f"indices must be in [0, {n_obs}); got values from {rows.min()} to {rows.max()}."
                )
        self.indices = rows
        if registry is not None:
            self._cat = registry.encode_categorical(adata, unknown=unknown)[rows]
            self._cont = registry.encode_continuous(adata)[rows]
        else:
            self._cat = np.zeros((rows.size, 0), dtype=np.int64)
            self._cont = np.zeros((rows.size, 0), dtype=np.float32)
        n_genes = n_vars if alignment is None else alignment.n_target
        mask = np.ones(n_genes, dtype=bool) if alignment is None else alignment.mask
        self._gene_mask = torch.from_numpy(np.ascontiguousarray(mask))

    @property
    def n_genes(self) -> int:
        """Genes per row of ``COUNTS`` (the model's genes when aligned)."""
        return int(self._gene_mask.shape[0])

    @property
    def gene_mask(self) -> torch.Tensor:
        """``(G,)`` bool: measured genes."""
        return self._gene_mask.clone()

    def __len__(self) -> int:
        return int(self.indices.size)

    def _positions(self, idx: Any) -> np.ndarray:
        if isinstance(idx, torch.Tensor):
            idx = idx.numpy()
        pos = np.asarray(idx)
        if pos.ndim == 0:
            pos = pos.reshape(1)
        if pos.ndim != 1 or (pos.size and pos.dtype.kind not in "iu"):
            raise InvalidInputError(f"index must be an int or a 1-D list of ints, got {idx!r}.")
        pos = pos.astype(np.int64)
        n = len(self)
        if pos.size and (pos.min() < -n or pos.max() >= n):
            raise IndexError(f"positions must be in [-{n}, {n}); got values from {pos.min()} to {pos.max()}.")
        return np.where(pos < 0, pos + n, pos)

    def _dense_rows(self, rows: np.ndarray) -> np.ndarray:
        """``(B, G)`` float32 counts of AnnData rows ``rows`` (aligned when an alignment is set)."""
        block = self._reader.read(rows)
        if self.alignment is not None:
            return apply_alignment(block, self.alignment)
        if sp.issparse(block):
            return block.toarray().astype(np.float32, copy=False)
        return np.asarray(block, dtype=np.float32)

    def __getitem__(self, idx: Any) -> dict[str, torch.Tensor]:
        pos = self._positions(idx)
        rows = self.indices[pos]
        counts = self._dense_rows(rows)  # (B, G)
        library = counts.sum(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)  # (B, 1)
        return {
            BATCH_KEYS.COUNTS: torch.from_numpy(np.ascontiguousarray(counts)),
            BATCH_KEYS.LIBRARY: torch.from_numpy(library),
            BATCH_KEYS.CAT_COVS: torch.from_numpy(np.ascontiguousarray(self._cat[pos])),
            BATCH_KEYS.CONT_COVS: torch.from_numpy(np.ascontiguousarray(self._cont[pos])),
            BATCH_KEYS.INDICES: torch.from_numpy(rows.copy()),
            BATCH_KEYS.GENE_MASK: self._gene_mask.clone(),
        }


class BatchSampler(Sampler[list[int]]):
    """Yields lists of dataset positions, one list per batch.

    The order is ``np.random.default_rng((seed, epoch)).permutation(n)`` (or ``range(n)`` without
    shuffling), so batches depend only on ``(n, seed, epoch)``, never on how the data are stored.
    For distributed training each of ``num_replicas`` ranks takes every ``num_replicas``-th position
    of the order, padded by wrapping around (like :class:`torch.utils.data.DistributedSampler`) so
    all ranks get the same number of batches; the shards are disjoint except for the padding and
    together cover all positions.

    Parameters
    ----------
    n
        Number of positions (``len(dataset)``).
    batch_size
        Positions per batch.
    shuffle
        Permute each epoch.
    seed
        Seed of the permutation.
    drop_last
        Drop the last, incomplete batch of each rank.
    num_replicas, rank
        Distributed data parallel sharding.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.n = check_count(n, "n", 0)
        self.batch_size = check_count(batch_size, "batch_size", 1)
        self.seed = check_count(seed, "seed", 0)
        self.num_replicas = check_count(num_replicas, "num_replicas", 1)
        self.rank = check_count(rank, "rank", 0)
        if self.rank >= self.num_replicas:
            raise InvalidInputError(f"rank={rank!r} must be < num_replicas={num_replicas!r}.")
        for name, flag in (("shuffle", shuffle), ("drop_last", drop_last)):
            if not isinstance(flag, bool):
                raise InvalidInputError(f"{name}={flag!r} must be True or False.")
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch`` (call before each epoch when shuffling)."""
        self.epoch = check_count(epoch, "epoch", 0)

    def _shard(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n)
        else:
            order = np.arange(self.n)
        if self.num_replicas > 1 and self.n > 0:
            total = math.ceil(self.n / self.num_replicas) * self.num_replicas
            if total > self.n:
                order = np.concatenate([order, np.resize(order, total - self.n)])
            order = order[self.rank :: self.num_replicas]
        return order

    def __iter__(self) -> Iterator[list[int]]:
        shard = self._shard()
        for start in range(0, shard.size, self.batch_size):
            batch = shard[start : start + self.batch_size]
            if self.drop_last and batch.size < self.batch_size:
                return
            yield batch.tolist()

    def __len__(self) -> int:
        per_rank = math.ceil(self.n / self.num_replicas) if self.n else 0
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)


def _identity(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


class TensorBatchDataset(Dataset):
    """Whole-batch reads from in-memory tensors that share their first dimension.

    Used for data derived once and kept in memory, e.g. the standardised latents of a frozen VAE that
    a diffusion model trains on. ``dataset[positions]`` returns ``{name: tensor[positions]}``.

    Parameters
    ----------
    tensors
        Named tensors, each ``(n, ...)``.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        sizes = {k: int(v.shape[0]) for k, v in tensors.items()}
        if not sizes or len(set(sizes.values())) != 1:
            raise InvalidInputError(f"tensors must be non-empty and share their first dimension, got {sizes}.")
        self.tensors = tensors
        self.n = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: Any) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(np.atleast_1d(np.asarray(idx, dtype=np.int64)))
        return {k: v.index_select(0, index) for k, v in self.tensors.items()}


def make_dataloader(
    dataset: CountsDataset | TensorBatchDataset,
    *,
    batch_size: int = 128,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose every step reads one whole batch from ``dataset`` with one fancy index.

    Parameters
    ----------
    dataset
        A :class:`CountsDataset` (any dataset indexable by a list of positions works).
    batch_size
        Cells per batch (positive int).
    shuffle, seed, drop_last, num_replicas, rank
        See :class:`BatchSampler`; call ``loader.sampler.set_epoch(epoch)`` before each epoch.
    num_workers
        Worker processes (backed files are re-opened in each worker).
    pin_memory
        Pin batches in page-locked memory for faster host-to-GPU copies.

    Returns
    -------
    A :class:`torch.utils.data.DataLoader` yielding batch dicts.
    """
    check_count(batch_size, "batch_size", 1)
    check_count(num_workers, "num_workers", 0)
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise InvalidInputError(f"dataset must be a CountsDataset, got {type(dataset).__name__}.")
    sampler = BatchSampler(
        len(dataset),
        batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        num_replicas=num_replicas,
        rank=rank,
    )
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        collate_fn=_identity,
        num_workers=int(num_workers),
        pin_memory=bool(pin_memory),
    )
