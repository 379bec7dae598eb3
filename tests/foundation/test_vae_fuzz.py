"""Random malformed AnnData thrown at the model API: only documented genailab errors come out."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

from genailab.data import DataSpec
from genailab.errors import GenailabError
from genailab.foundation.recipes import LatentTokenVAE

from ..conftest import make_count_adata

_BASE = make_count_adata(n_obs=24, n_vars=12)
_MODEL = LatentTokenVAE.from_anndata(_BASE, DataSpec(batch_key="batch"), preset="tiny")


@st.composite
def malformed(draw):
    n = draw(st.integers(0, 6))
    g = draw(st.integers(0, 14))
    kind = draw(st.sampled_from(["ok", "nan", "inf", "neg", "frac", "huge"]))
    x = np.asarray(draw(st.lists(st.integers(0, 50), min_size=n * g, max_size=n * g)), dtype=np.float64)
    x = x.reshape(n, g)
    if n * g:
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, g - 1))
        x[i, j] = {"ok": x[i, j], "nan": np.nan, "inf": np.inf, "neg": -3, "frac": 0.5, "huge": 1e12}[kind]
    names = draw(st.sampled_from(["model", "shifted", "random"]))
    genes = {
        "model": [f"G{k}" for k in range(g)],
        "shifted": [f"G{k + 6}" for k in range(g)],
        "random": [f"X{k}" for k in range(g)],
    }[names]
    obs = pd.DataFrame(index=[f"c{k}" for k in range(n)])
    batch = draw(st.sampled_from(["known", "unknown", "missing", "nan"]))
    if batch != "missing":
        labels = {"known": "b0", "unknown": "b7", "nan": None}[batch]
        obs["batch"] = pd.Categorical([labels] * n)
    matrix = sparse.csr_matrix(x) if draw(st.booleans()) else x
    return ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=pd.Index(genes).astype(str)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(adata=malformed(), unknown=st.sampled_from(["error", "unknown"]))
def test_get_latent_only_raises_documented_errors(adata, unknown):
    try:
        z = _MODEL.get_latent(adata, key=None, unknown=unknown)
    except GenailabError:
        return
    assert z.shape == (adata.n_obs, 4, 8)
    assert np.isfinite(z).all()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(adata=malformed())
def test_from_anndata_only_raises_documented_errors(adata):
    try:
        model = LatentTokenVAE.from_anndata(adata, DataSpec(batch_key="batch"), preset="tiny")
    except GenailabError:
        return
    assert model.config.n_genes == adata.n_vars
    assert model.config.n_batches == 1


def test_fuzz_model_is_usable():
    assert _MODEL.get_latent(_BASE, key=None).shape == (24, 4, 8)
    with pytest.raises(GenailabError):
        _MODEL.get_latent(_BASE[:, :0].copy(), key=None)
