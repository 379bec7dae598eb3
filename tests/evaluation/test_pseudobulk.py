from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from genailab.data import log_normalize
from genailab.errors import InvalidInputError, MissingKeyError, UnknownLabelError
from genailab.evaluation import PseudoBulk, pseudobulk


def _adata(seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    conditions = ["control"] * 6 + ["KLF1"] * 5 + ["SET+KLF1"] * 4 + ["control"] * 3 + ["KLF1"] * 2
    contexts = ["k562"] * 15 + ["hela"] * 5
    counts = rng.poisson(3.0, size=(len(conditions), 8)).astype(np.float32)
    counts[0] = 0  # an empty cell
    obs = pd.DataFrame({"condition": conditions, "cell_type": contexts}, index=[f"c{i}" for i in range(20)])
    var = pd.DataFrame(index=[f"G{j}" for j in range(8)])
    return ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var, layers={"dense": counts.copy()})


def test_log_normalize_dense_and_sparse():
    counts = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 4.0]])
    expected = np.log1p(np.array([[2500.0, 7500.0, 0.0], [0, 0, 0], [2500.0, 2500.0, 5000.0]]))
    np.testing.assert_allclose(log_normalize(counts), expected)
    out = log_normalize(sparse.csr_matrix(counts), target_sum=1e4)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, expected)
    np.testing.assert_allclose(log_normalize(counts, target_sum=10.0)[0], np.log1p([2.5, 7.5, 0.0]))


def test_log_normalize_errors():
    with pytest.raises(InvalidInputError, match="target_sum"):
        log_normalize(np.ones((2, 2)), target_sum=0)
    with pytest.raises(InvalidInputError, match="2-D"):
        log_normalize(np.ones(3))
    with pytest.raises(InvalidInputError, match="non-negative"):
        log_normalize(-np.ones((2, 2)))


def test_pseudobulk_means_match_manual():
    adata = _adata()
    pb = pseudobulk(adata, "condition", context_key="cell_type")
    assert pb.contexts == ("hela", "k562")
    assert pb.conditions == ("KLF1", "SET+KLF1", "control")
    assert pb.genes == tuple(f"G{j}" for j in range(8))
    lognorm = log_normalize(adata.X)
    mask = (adata.obs["condition"] == "KLF1").to_numpy() & (adata.obs["cell_type"] == "k562").to_numpy()
    np.testing.assert_allclose(pb.mean("KLF1", "k562"), lognorm[mask].mean(0))
    assert pb.n_cells[pb.keys.index(("KLF1", "k562"))] == 5
    ctrl = lognorm[:6].mean(0)
    np.testing.assert_allclose(pb.delta("SET+KLF1", "k562"), lognorm[11:15].mean(0) - ctrl)
    assert pb.has("KLF1", "hela")
    assert not pb.has("SET+KLF1", "hela")
    dense = pseudobulk(adata, "condition", context_key="cell_type", layer="dense")
    np.testing.assert_allclose(dense.means, pb.means)


def test_pseudobulk_without_context_and_indices():
    adata = _adata()
    pb = pseudobulk(adata, "condition")
    assert pb.contexts == ("",)
    np.testing.assert_allclose(pb.mean("KLF1"), log_normalize(adata.X)[[6, 7, 8, 9, 10, 18, 19]].mean(0))
    sub = pseudobulk(adata, "condition", context_key="cell_type", indices=np.arange(15))
    assert sub.contexts == ("k562",)
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[:15] = True
    np.testing.assert_allclose(pseudobulk(adata, "condition", context_key="cell_type", indices=mask).means, sub.means)


def test_singles():
    pb = pseudobulk(_adata(), "condition")
    assert pb.singles("SET+KLF1") == ("SET", "KLF1")
    assert pb.singles("KLF1") == ("KLF1",)
    assert pb.singles("control") == ()
    assert pb.singles("KLF1+control") == ("KLF1",)


def test_pseudobulk_errors():
    adata = _adata()
    with pytest.raises(MissingKeyError, match="available obs columns"):
        pseudobulk(adata, "perturbation")
    with pytest.raises(MissingKeyError, match="context_key='line'"):
        pseudobulk(adata, "condition", context_key="line")
    with pytest.raises(MissingKeyError):
        pseudobulk(adata, "condition", layer="counts")
    no_control = pseudobulk(adata, "condition", control="ctrl")  # allowed (e.g. a test set), deltas fail
    with pytest.raises(UnknownLabelError, match="no control cells"):
        no_control.delta("KLF1")
    with pytest.raises(InvalidInputError, match="no cells"):
        pseudobulk(adata, "condition", indices=np.array([], dtype=int))
    with pytest.raises(InvalidInputError, match=r"\[0, 20\)"):
        pseudobulk(adata, "condition", indices=[25])
    pb = pseudobulk(adata, "condition", context_key="cell_type", indices=np.arange(6, 20))
    with pytest.raises(UnknownLabelError, match="available conditions there"):
        pb.mean("MAPK1", "k562")
    with pytest.raises(UnknownLabelError, match="available contexts"):
        pb.mean("KLF1", "u87")
    with pytest.raises(UnknownLabelError, match="no control cells"):
        pb.delta("KLF1", "k562")
    np.testing.assert_allclose(pb.delta("KLF1", "hela"), pb.mean("KLF1", "hela") - pb.mean("control", "hela"))


def test_pseudobulk_validates_shapes():
    with pytest.raises(InvalidInputError, match="shape"):
        PseudoBulk(
            keys=(("control", ""),),
            means=np.zeros((2, 3)),
            n_cells=np.ones(1),
            genes=("a", "b", "c"),
            control="control",
            delimiter="+",
        )


def test_pseudobulk_with_library_key():
    adata = _adata()
    rng = np.random.default_rng(1)
    row_sums = np.asarray(adata.X.sum(axis=1)).ravel()
    adata.obs["ncounts"] = row_sums + rng.integers(100, 1000, adata.n_obs)  # whole-transcriptome totals
    pb = pseudobulk(adata, "condition", context_key="cell_type", library_key="ncounts")
    assert pb.library_key == "ncounts"
    assert pseudobulk(adata, "condition").library_key is None
    lognorm = log_normalize(adata.X, library=adata.obs["ncounts"].to_numpy())
    mask = (adata.obs["condition"] == "KLF1").to_numpy() & (adata.obs["cell_type"] == "k562").to_numpy()
    np.testing.assert_allclose(pb.mean("KLF1", "k562"), lognorm[mask].mean(0))
    # hand-computed for one cell: counts / ncounts * 1e4
    one = pseudobulk(adata, "condition", library_key="ncounts", indices=[7])
    x7 = adata.X[7].toarray().ravel()
    np.testing.assert_allclose(one.mean("KLF1"), np.log1p(x7 / adata.obs["ncounts"].iloc[7] * 1e4))
    # the whole-transcriptome scale gives smaller values than the row sums of the gene subset
    assert (pb.means <= pseudobulk(adata, "condition", context_key="cell_type").means + 1e-12).all()
    # integer library columns and a subset of rows work, with each row taking its own library
    adata.obs["n_int"] = adata.obs["ncounts"].astype(np.int64)
    sub = pseudobulk(adata, "condition", library_key="n_int", indices=np.arange(6, 20))
    np.testing.assert_allclose(sub.mean("KLF1"), lognorm[[6, 7, 8, 9, 10, 18, 19]].mean(0))


def test_pseudobulk_library_key_errors():
    adata = _adata()
    with pytest.raises(MissingKeyError, match=r"library_key='ncounts'.*available obs columns: 'condition'"):
        pseudobulk(adata, "condition", library_key="ncounts")
    with pytest.raises(InvalidInputError, match="numeric"):
        pseudobulk(adata, "condition", library_key="cell_type")
    adata.obs["neg"] = -1.0
    with pytest.raises(InvalidInputError, match="non-negative; 20 cells"):
        pseudobulk(adata, "condition", library_key="neg")
    adata.obs["nan"] = np.where(np.arange(20) == 3, np.nan, 100.0)
    with pytest.raises(InvalidInputError, match="1 cells"):
        pseudobulk(adata, "condition", library_key="nan")
    with pytest.raises(InvalidInputError, match="library_key"):
        PseudoBulk(
            keys=(("control", ""),),
            means=np.zeros((1, 1)),
            n_cells=np.ones(1),
            genes=("a",),
            control="control",
            delimiter="+",
            library_key="",
        )
