from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from genailab.data import load_shared, pbmc68k_reduced, read_h5ad, shared_data_dir, validate_counts
from genailab.errors import InvalidInputError

from .conftest import PBMC


def test_shared_data_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GENAILAB_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    with pytest.raises(InvalidInputError, match="is absent from"):
        load_shared("kang2018_pbmc_ctrl")
    monkeypatch.setenv("GENAILAB_SHARED_DATA", str(tmp_path / "missing"))
    with pytest.warns(UserWarning, match="not a directory"):
        shared_data_dir()


def test_load_shared_unknown_name():
    with pytest.raises(InvalidInputError, match="available: kang2018_pbmc_ctrl, norman19_mcfaline23, pbmc68k_reduced"):
        load_shared("pbmc3k")


@pytest.mark.real_data
def test_pbmc68k_reduced_matches_shared_counts(shared):
    pytest.importorskip("scanpy", reason="pbmc68k_reduced() needs scanpy")
    ref = read_h5ad(shared(PBMC))
    adata = pbmc68k_reduced()
    assert adata.shape == (700, 765)
    assert sp.issparse(adata.X)
    assert adata.X.dtype == np.int32
    assert list(adata.var_names) == list(ref.var_names)
    assert list(adata.obs_names) == list(ref.obs_names)
    assert (adata.X != ref.X).nnz == 0
    report = adata.uns["genailab_count_recovery"]
    assert report["max_residual"] < 0.1
    assert report["n_cells_inexact"] == 0
    assert adata.obs["bulk_labels"].nunique() == 10
    assert validate_counts(adata).n_empty_cells == 0


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("pbmc68k_reduced", (700, 765)),
        ("kang2018_pbmc_ctrl", (8684, 2511)),
        ("norman19_mcfaline23", (5961, 500)),
    ],
)
def test_load_shared(name, shape):
    if shared_data_dir() is None:
        pytest.skip("shared real-data folder not found (set GENAILAB_SHARED_DATA)")
    try:
        adata = load_shared(name, backed=True)
    except InvalidInputError as err:
        pytest.skip(str(err))
    assert adata.shape == shape
    assert adata.isbacked
