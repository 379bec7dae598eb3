"""Tiny synthetic AnnData fixtures and real-data helpers for the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from genailab.data import shared_data_dir

CONDITIONS = ("control", "A", "B", "C", "D", "A+B", "A+C", "B+C", "C+E")


@pytest.fixture(autouse=True)
def _seed() -> None:
    np.random.seed(0)
    torch.manual_seed(0)


def make_adata(
    n_obs: int = 72,
    n_vars: int = 24,
    *,
    sparse: bool = False,
    seed: int = 0,
    dtype: type = np.float32,
) -> ad.AnnData:
    """Counts with obs: cell_type, batch, condition (singles, doubles, control), cell_line, age, dose."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(0.6, 3.0, size=(n_obs, n_vars))).astype(dtype)
    counts[0] = 0  # one empty cell
    conditions = np.array(CONDITIONS, dtype=object)[np.arange(n_obs) % len(CONDITIONS)]
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice(["T", "B", "NK"], size=n_obs)),
            "batch": pd.Categorical(np.where(np.arange(n_obs) % 2 == 0, "b1", "b2")),
            "condition": pd.Categorical(conditions),
            "cell_line": pd.Categorical(np.array(["L1", "L2", "L3"])[(np.arange(n_obs) // len(CONDITIONS)) % 3]),
            "age": rng.normal(50, 10, size=n_obs),
            "dose": pd.Categorical(["1+1" if "+" in c else "1" for c in conditions]),
        },
        index=[f"cell{i}" for i in range(n_obs)],
    )
    var = pd.DataFrame(index=[f"GENE{j}" for j in range(n_vars)])
    return ad.AnnData(X=sp.csr_matrix(counts) if sparse else counts, obs=obs, var=var)


@pytest.fixture
def adata() -> ad.AnnData:
    return make_adata()


@pytest.fixture
def adata_csr() -> ad.AnnData:
    return make_adata(sparse=True)


def shared_file(relative: str) -> Path:
    """Path of a file in the shared real-data folder, or skip the test with the reason."""
    root = shared_data_dir()
    if root is None:
        pytest.skip("shared real-data folder not found (set GENAILAB_SHARED_DATA or put shared/data beside the repo)")
    path = root / relative
    if not path.is_file():
        pytest.skip(f"real-data file {relative} is absent from {root}")
    return path


KANG = "kang2018_pbmc_ctrl/kang2018_pbmc_ctrl_counts.h5ad"
NORMAN = "norman19_mcfaline23/norman19_mcfaline23_counts.h5ad"
PBMC = "pbmc68k_reduced/pbmc68k_reduced_counts_recovered.h5ad"
ORG_HS = "gene_sets/orgHs_symbol_ensembl_entrez.tsv.gz"


@pytest.fixture
def make() -> object:
    """The :func:`make_adata` factory."""
    return make_adata


@pytest.fixture
def shared() -> object:
    """The :func:`shared_file` helper (skips when the file is absent)."""
    return shared_file
