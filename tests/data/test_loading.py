from __future__ import annotations

import time

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from genailab.constants import BATCH_KEYS
from genailab.data import (
    BatchSampler,
    CountsDataset,
    align_genes,
    make_dataloader,
    read_h5ad,
    setup_anndata,
)
from genailab.errors import InvalidInputError

from .conftest import KANG


def _registry(adata):
    return setup_anndata(
        adata, cell_type_key="cell_type", perturbation_key="condition", continuous_covariate_keys=("age",)
    )


def _batches(dataset, **kwargs):
    return list(make_dataloader(dataset, **kwargs))


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_batch_contents(adata):
    reg = _registry(adata)
    ds = CountsDataset(adata, reg)
    batch = ds[[5, 0, 17]]
    x = np.asarray(adata.X)
    assert batch[BATCH_KEYS.COUNTS].dtype == torch.float32
    assert batch[BATCH_KEYS.COUNTS].shape == (3, adata.n_vars)
    np.testing.assert_array_equal(batch[BATCH_KEYS.COUNTS].numpy(), x[[5, 0, 17]])
    np.testing.assert_array_equal(batch[BATCH_KEYS.LIBRARY].numpy(), x[[5, 0, 17]].sum(1, keepdims=True))
    assert batch[BATCH_KEYS.LIBRARY].shape == (3, 1)
    assert batch[BATCH_KEYS.LIBRARY][1, 0] == 0
    np.testing.assert_array_equal(batch[BATCH_KEYS.CAT_COVS].numpy(), reg.encode_categorical(adata)[[5, 0, 17]])
    assert batch[BATCH_KEYS.CAT_COVS].dtype == torch.int64
    np.testing.assert_allclose(batch[BATCH_KEYS.CONT_COVS].numpy(), reg.encode_continuous(adata)[[5, 0, 17]])
    assert batch[BATCH_KEYS.INDICES].tolist() == [5, 0, 17]
    assert batch[BATCH_KEYS.GENE_MASK].dtype == torch.bool
    assert batch[BATCH_KEYS.GENE_MASK].all()
    single = ds[4]
    assert single[BATCH_KEYS.COUNTS].shape == (1, adata.n_vars)
    assert single[BATCH_KEYS.INDICES].tolist() == [4]
    empty_covs = CountsDataset(adata)[[1, 2]]
    assert empty_covs[BATCH_KEYS.CAT_COVS].shape == (2, 0)
    assert empty_covs[BATCH_KEYS.CONT_COVS].shape == (2, 0)


def test_indices_subset(adata):
    rows = np.array([10, 3, 50, 7])
    ds = CountsDataset(adata, _registry(adata), indices=rows)
    assert len(ds) == 4
    batch = ds[[0, 2, -1]]
    assert batch[BATCH_KEYS.INDICES].tolist() == [10, 50, 7]
    np.testing.assert_array_equal(batch[BATCH_KEYS.COUNTS].numpy(), np.asarray(adata.X)[[10, 50, 7]])
    with pytest.raises(IndexError):
        ds[[4]]
    with pytest.raises(InvalidInputError, match="indices"):
        CountsDataset(adata, indices=np.array([0, 999]))


def test_dense_and_csr_identical(make):
    dense, csr = make(), make(sparse=True)
    _assert_same(
        _batches(CountsDataset(dense, _registry(dense)), batch_size=16, seed=3),
        _batches(CountsDataset(csr, _registry(csr)), batch_size=16, seed=3),
    )
    csc = make()
    csc.X = sp.csc_matrix(csc.X)
    _assert_same(_batches(CountsDataset(csc), batch_size=16), _batches(CountsDataset(dense), batch_size=16))


@pytest.mark.parametrize("sparse", [False, True])
def test_in_memory_and_backed_identical(tmp_path, make, sparse):
    a = make(sparse=sparse)
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    backed = read_h5ad(path, backed=True)
    reg = _registry(a)
    kwargs = {"batch_size": 10, "seed": 7, "shuffle": True}
    _assert_same(_batches(CountsDataset(a, reg), **kwargs), _batches(CountsDataset(backed, reg), **kwargs))
    # duplicate and unsorted rows in one batch (h5py needs sorted unique reads)
    ds = CountsDataset(backed, reg)
    np.testing.assert_array_equal(ds[[9, 2, 9, 0]][BATCH_KEYS.COUNTS].numpy(), CountsDataset(a)[[9, 2, 9, 0]]["counts"])


def test_backed_with_workers(tmp_path, make):
    a = make(sparse=True)
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    ds = CountsDataset(read_h5ad(path, backed=True))
    with_workers = _batches(ds, batch_size=16, seed=1, num_workers=2)
    _assert_same(with_workers, _batches(CountsDataset(a), batch_size=16, seed=1))


def test_alignment_zero_fills(adata):
    model_genes = ["GENE3", "NEW1", "GENE0", "NEW2", "GENE23"]
    al = align_genes(adata.var_names, model_genes)
    ds = CountsDataset(adata, alignment=al)
    batch = ds[list(range(8))]
    x = np.asarray(adata.X)[:8]
    counts = batch[BATCH_KEYS.COUNTS].numpy()
    assert counts.shape == (8, 5)
    assert ds.n_genes == 5
    np.testing.assert_array_equal(counts[:, [0, 2, 4]], x[:, [3, 0, 23]])
    assert (counts[:, [1, 3]] == 0).all()
    assert batch[BATCH_KEYS.GENE_MASK].tolist() == [True, False, True, False, True]
    np.testing.assert_array_equal(batch[BATCH_KEYS.LIBRARY].numpy()[:, 0], counts.sum(1))
    csr = adata.copy()
    csr.X = sp.csr_matrix(csr.X)
    _assert_same([CountsDataset(csr, alignment=al)[list(range(8))]], [batch])
    other = align_genes(["GENE0", "GENE1"], ["GENE0"])
    with pytest.raises(InvalidInputError, match="alignment expects 2"):
        CountsDataset(adata, alignment=other)


def test_sampler_epochs_and_determinism():
    s = BatchSampler(50, 8, seed=1)
    e0 = list(s)
    assert e0 == list(BatchSampler(50, 8, seed=1))
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1
    assert sorted(sum(e0, [])) == sorted(sum(e1, [])) == list(range(50))
    assert len(s) == 7
    assert [len(b) for b in e0][-1] == 2
    assert len(BatchSampler(50, 8, drop_last=True)) == len(list(BatchSampler(50, 8, drop_last=True))) == 6
    assert sum(list(BatchSampler(10, 4, shuffle=False)), []) == list(range(10))
    assert list(BatchSampler(0, 4)) == []


@pytest.mark.parametrize("n", [37, 40])
def test_sampler_ddp_shards(n):
    shards = [list(BatchSampler(n, 4, seed=2, num_replicas=4, rank=r)) for r in range(4)]
    flat = [sum(batches, []) for batches in shards]
    assert len({len(f) for f in flat}) == 1
    assert len({len(b) for b in shards}) == 1
    assert set().union(*map(set, flat)) == set(range(n))  # cover
    total = sum(len(f) for f in flat)
    assert total == 4 * int(np.ceil(n / 4))
    assert total - len(set().union(*map(set, flat))) == total - n  # only the padding repeats
    assert all(len(BatchSampler(n, 4, num_replicas=4, rank=r)) == len(shards[r]) for r in range(4))


def test_validation_errors(adata):
    with pytest.raises(InvalidInputError, match="batch_size"):
        make_dataloader(CountsDataset(adata), batch_size=0)
    with pytest.raises(InvalidInputError, match="batch_size"):
        BatchSampler(10, 2.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="rank"):
        BatchSampler(10, 2, num_replicas=2, rank=2)
    with pytest.raises(InvalidInputError, match="AnnData"):
        CountsDataset(np.zeros((3, 3)))  # type: ignore[arg-type]


def test_throughput_csr():
    rng = np.random.default_rng(0)
    x = sp.random(4000, 2500, density=0.1, format="csr", dtype=np.float32, random_state=rng)
    x.data = np.ceil(x.data * 10)
    ds = CountsDataset(ad.AnnData(x))
    loader = make_dataloader(ds, batch_size=256)
    start = time.perf_counter()
    n = sum(b[BATCH_KEYS.COUNTS].shape[0] for b in loader)
    rate = n / (time.perf_counter() - start)
    assert n == 4000
    assert rate > 10_000, f"{rate:.0f} cells/s"


@pytest.mark.real_data
def test_kang_backed_matches_memory(shared):
    path = shared(KANG)
    mem, backed = read_h5ad(path), read_h5ad(path, backed=True)
    reg = setup_anndata(mem, cell_type_key="cluster_id", batch_key="sample_id")
    idx = np.arange(0, mem.n_obs, 7)
    a = CountsDataset(mem, reg, indices=idx)
    b = CountsDataset(backed, reg, indices=idx)
    batch = list(BatchSampler(len(idx), 64, seed=0))[3]
    _assert_same([a[batch]], [b[batch]])
