from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from genailab.data import get_counts, log_normalize, read_h5ad, recover_counts, validate_counts
from genailab.errors import InvalidCountsError, InvalidInputError, MissingKeyError

from .conftest import KANG, NORMAN


def _log_normalise(counts: np.ndarray, target_sum: float = 1e4) -> tuple[np.ndarray, np.ndarray]:
    lib = counts.sum(axis=1)
    return np.log1p(counts / lib[:, None] * target_sum).astype(np.float32), lib


# ------------------------------------------------------------------------------------------ read / get
def test_read_h5ad_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_h5ad(tmp_path / "missing.h5ad")
    with pytest.raises(InvalidInputError, match="is a directory"):
        read_h5ad(tmp_path)
    bad = tmp_path / "bad.h5ad"
    bad.write_text("not hdf5")
    with pytest.raises(InvalidInputError, match="not an h5ad"):
        read_h5ad(bad)


def test_read_h5ad_roundtrip_and_backed(tmp_path, make):
    a = make(sparse=True)
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    b = read_h5ad(path)
    assert (b.X != a.X).nnz == 0
    c = read_h5ad(path, backed=True)
    assert c.isbacked
    assert validate_counts(c) == validate_counts(a)


def test_get_counts_layers(make):
    a = make()
    a.layers["counts"] = sp.csr_matrix(a.X)
    assert get_counts(a) is a.X
    assert sp.issparse(get_counts(a, "counts"))
    with pytest.raises(MissingKeyError, match="'counts'") as info:
        get_counts(a, "raw_counts")
    assert "available layers" in str(info.value)
    a.X = None
    with pytest.raises(InvalidInputError, match="adata.X is None"):
        get_counts(a)
    with pytest.raises(InvalidInputError, match="AnnData"):
        get_counts(np.zeros((2, 2)))


# ------------------------------------------------------------------------------------------ validate
@pytest.mark.parametrize("fmt", ["dense", "csr", "csc", "int"])
def test_validate_counts_summary(make, fmt):
    a = make()
    dense = np.asarray(a.X)
    if fmt == "csr":
        a.X = sp.csr_matrix(dense)
    elif fmt == "csc":
        a.X = sp.csc_matrix(dense)
    elif fmt == "int":
        a.X = dense.astype(np.int32)
    s = validate_counts(a, chunk_size=7)
    assert (s.n_obs, s.n_vars) == dense.shape
    assert s.total == pytest.approx(dense.sum())
    assert s.max == dense.max()
    assert s.n_empty_cells == int((dense.sum(1) == 0).sum()) >= 1
    assert s.is_sparse == (fmt in ("csr", "csc"))


@pytest.mark.parametrize("sparse", [False, True])
def test_validate_counts_backed(tmp_path, make, sparse):
    a = make(sparse=sparse)
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    assert validate_counts(backed, chunk_size=5) == validate_counts(a)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(
    ("value", "word"), [(np.nan, "NaN"), (np.inf, "infinite"), (-2.0, "negative"), (0.693, "non-integer")]
)
def test_validate_counts_bad_values(make, sparse, value, word):
    a = make()
    x = np.asarray(a.X).copy()
    x[[3, 5, 40], 2] = value
    x[40, 7] = value
    a.X = sp.csr_matrix(x) if sparse else x
    with pytest.raises(InvalidCountsError) as info:
        validate_counts(a, chunk_size=16)
    msg = str(info.value)
    assert f"3 of {a.n_obs} cells and 2 of {a.n_vars} genes have {word} values" in msg
    assert "cell 'cell3'" in msg
    assert "gene 'GENE2'" in msg
    assert "layer='counts'" in msg
    assert "recover_counts" in msg


def test_validate_counts_layer_hint_and_use(make):
    a = make()
    a.layers["counts"] = a.X.copy()
    a.X = np.log1p(a.X)
    with pytest.raises(InvalidCountsError, match="'counts'"):
        validate_counts(a)
    assert validate_counts(a, layer="counts").total > 0


def test_validate_counts_empty_and_dtype():
    with pytest.raises(InvalidCountsError, match="empty"):
        validate_counts(ad.AnnData(np.zeros((0, 5), dtype=np.float32)))
    with pytest.raises(InvalidCountsError, match="empty"):
        validate_counts(ad.AnnData(np.zeros((4, 0), dtype=np.float32)))
    with pytest.raises(InvalidCountsError, match="dtype object"):
        validate_counts(ad.AnnData(np.array([["a", "b"]], dtype=object)))
    with pytest.raises(InvalidInputError, match="chunk_size"):
        validate_counts(ad.AnnData(np.ones((2, 2))), chunk_size=0)


# ------------------------------------------------------------------------------------------ recover
@pytest.mark.parametrize("sparse", [False, True])
def test_recover_counts_library_size(make, sparse):
    a = make(n_obs=40)
    counts = np.asarray(a.X)[1:]  # drop the empty cell: its library size is 0
    logn, lib = _log_normalise(counts)
    obs = a.obs.iloc[1:].copy()
    obs["n_counts"] = lib
    src = ad.AnnData(sp.csr_matrix(logn) if sparse else logn, obs=obs, var=a.var)
    src.raw = src
    src.X = np.zeros_like(logn)  # like scanpy's scaled X
    out, report = recover_counts(src, source="raw")
    got = out.X.toarray() if sparse else out.X
    assert sp.issparse(out.X) == sparse
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, counts)
    assert report.n_cells_inexact == 0
    assert report.max_residual < 0.1
    assert out.uns["genailab_count_recovery"]["method"] == "library_size"
    assert list(out.var_names) == list(a.var_names)
    assert list(out.obs_names) == list(obs.index)


def test_recover_counts_min_nonzero_and_layer(make):
    a = make(n_obs=30)
    counts = np.asarray(a.X)[1:].copy()
    counts[:, 0] = 1  # smallest non-zero count of every cell is 1
    logn, _ = _log_normalise(counts)
    src = ad.AnnData(np.zeros_like(logn), obs=a.obs.iloc[1:].copy(), var=a.var)
    src.layers["lognorm"] = sp.csr_matrix(logn)
    out, report = recover_counts(src, source="lognorm", method="min_nonzero")
    np.testing.assert_array_equal(out.X.toarray(), counts)
    assert report.method == "min_nonzero"


def test_recover_counts_errors(make):
    a = make(n_obs=30)
    counts = np.asarray(a.X)[1:]
    logn, lib = _log_normalise(counts)
    obs = a.obs.iloc[1:].copy()
    obs["n_counts"] = lib * 1.37  # wrong library sizes
    src = ad.AnnData(logn, obs=obs, var=a.var)
    with pytest.raises(InvalidCountsError, match="min_nonzero") as info:
        recover_counts(src, source="X")
    assert f"of {src.n_obs} cells" in str(info.value)
    with pytest.raises(MissingKeyError, match="adata.raw is None"):
        recover_counts(src)
    with pytest.raises(MissingKeyError, match="available obs columns"):
        recover_counts(src, source="X", library_key="library")
    with pytest.raises(MissingKeyError, match="neither"):
        recover_counts(src, source="nope")
    with pytest.raises(InvalidInputError, match="method"):
        recover_counts(src, source="X", method="median")  # type: ignore[arg-type]
    scaled = ad.AnnData(logn - 1.0, obs=obs)
    with pytest.raises(InvalidCountsError, match="negative"):
        recover_counts(scaled, source="X")


# ------------------------------------------------------------------------------------------ real data
@pytest.mark.real_data
def test_validate_kang_counts(shared):
    a = read_h5ad(shared(KANG))
    assert sp.issparse(a.X)
    assert a.X.format == "csr"
    s = validate_counts(a)
    assert (s.n_obs, s.n_vars) == (8684, 2511)
    assert s.is_sparse
    assert s.dtype == "int32"
    assert s.total > 0


@pytest.mark.real_data
def test_validate_norman_counts_and_lognorm_layer(shared):
    a = read_h5ad(shared(NORMAN))
    s = validate_counts(a)
    assert (s.n_obs, s.n_vars) == (5961, 500)
    with pytest.raises(InvalidCountsError, match="non-integer"):
        validate_counts(a, layer="log1p_norm_original")
    backed = read_h5ad(shared(NORMAN), backed=True)
    assert validate_counts(backed, chunk_size=1000) == s
    assert isinstance(a.obs, pd.DataFrame)


@pytest.mark.real_data
def test_recover_counts_scanpy_pbmc68k_reduced():
    sc = pytest.importorskip("scanpy", reason="scanpy's bundled pbmc68k_reduced is needed")
    raw = sc.datasets.pbmc68k_reduced()
    with pytest.raises(InvalidCountsError, match="recover_counts"):
        validate_counts(raw)  # X is scaled z-scores, not counts
    counts, report = recover_counts(raw, source="raw", method="library_size", library_key="n_counts")
    assert counts.shape == (700, 765)
    assert report.max_residual < 0.1
    assert report.n_cells_inexact == 0
    summary = validate_counts(counts)
    assert summary.dtype == "int32"
    assert summary.n_empty_cells == 0
    # only 765 of the genes were kept, so each row sums to at most the stored library size
    assert (np.asarray(counts.X.sum(1)).ravel() <= raw.obs["n_counts"].to_numpy()).all()


# ------------------------------------------------------------------------------------------ log_normalize(library=)
def test_log_normalize_with_library_hand_computed():
    counts = np.array([[1.0, 3.0, 0.0], [0.0, 2.0, 0.0], [2.0, 2.0, 4.0]])
    library = np.array([10.0, 20.0, 0.0])  # whole-transcriptome totals: larger than the subset's row sums
    expected = np.log1p(np.array([[1.0, 3.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))  # target_sum=10
    np.testing.assert_allclose(log_normalize(counts, target_sum=10.0, library=library), expected)
    np.testing.assert_allclose(log_normalize(sp.csr_matrix(counts), 10.0, library[:, None]), expected)
    # The default keeps the row sums, bit for bit as before.
    old = np.log1p(counts * np.divide(1e4, counts.sum(1, keepdims=True)))
    assert np.array_equal(log_normalize(counts), old)
    assert np.array_equal(log_normalize(counts, library=None), old)
    assert np.array_equal(log_normalize(counts, library=counts.sum(1)), old)


@pytest.mark.parametrize(
    ("library", "match"),
    [
        (np.ones(2), r"shape \(3,\)"),
        (np.ones((3, 2)), r"shape \(3,\)"),
        (np.array([1.0, np.nan, 2.0]), "finite and non-negative; 1 of 3"),
        (np.array([1.0, -1.0, 2.0]), "finite and non-negative"),
        (np.array(["a", "b", "c"]), "numeric"),
    ],
)
def test_log_normalize_library_errors(library, match):
    with pytest.raises(InvalidInputError, match=match):
        log_normalize(np.ones((3, 2)), library=library)
