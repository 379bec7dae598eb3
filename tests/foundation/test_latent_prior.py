"""GaussianLatentPrior: per-group Gaussians over a frozen VAE, decoded like LatentDiffusionModel."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from genailab.constants import ADATA_KEYS
from genailab.data import DataSpec
from genailab.errors import InvalidInputError, MissingKeyError, UnknownLabelError
from genailab.foundation.recipes import LatentTokenVAE
from genailab.foundation.recipes.latent_prior import GaussianLatentPrior
from genailab.training import TrainConfig


def two_types(n: int = 160, n_genes: int = 30, seed: int = 0) -> ad.AnnData:
    """Two cell types with disjoint highly expressed gene blocks, two donors."""
    rng = np.random.default_rng(seed)
    types = np.arange(n) % 2
    programs = np.full((2, n_genes), 0.2)
    programs[0, : n_genes // 2] = 5.0
    programs[1, n_genes // 2 :] = 5.0
    mu = programs[types] / programs[types].sum(1, keepdims=True) * rng.lognormal(np.log(300), 0.2, n)[:, None]
    counts = rng.negative_binomial(10, 10 / (10 + mu)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"t{t}" for t in types]),
            "donor": pd.Categorical([f"d{(i // 2) % 2}" for i in range(n)]),
        },
        index=[f"c{i}" for i in range(n)],
    )
    return ad.AnnData(sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]))


@pytest.fixture(scope="module")
def data():
    return two_types()


@pytest.fixture(scope="module")
def vae(data):
    model = LatentTokenVAE.from_anndata(data, DataSpec(batch_key="donor"), preset="tiny")
    model.fit(data, TrainConfig(max_epochs=15, batch_size=32, progress_bar=False, early_stopping_patience=0), seed=0)
    return model


def _type_mean_error(real: ad.AnnData, syn: ad.AnnData) -> float:
    """Mean absolute difference of per-type mean log-normalised expression."""

    def logn(x):
        x = np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=float)
        return np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4)

    lr, ls = logn(real.X), logn(syn.X)
    errs = []
    for t in ("t0", "t1"):
        r = lr[(real.obs["cell_type"].astype(str) == t).to_numpy()].mean(0)
        s = ls[(syn.obs["cell_type"].astype(str) == t).to_numpy()].mean(0)
        errs.append(np.abs(r - s).mean())
    return float(np.mean(errs))


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_per_type_gaussians_beat_a_pooled_gaussian(vae, data, covariance):
    prior = GaussianLatentPrior.fit(vae, data, ("cell_type", "donor"), covariance=covariance)
    assert len(prior.groups) == 4
    syn = prior.sample(like=data, seed=0)
    assert syn.shape == data.shape
    x = syn.X.toarray()
    assert np.all(x == np.round(x))
    assert x.min() >= 0
    assert syn.obsm[ADATA_KEYS.SYNTH_LATENT].shape == (data.n_obs, *vae.config.latent_shape)
    assert list(syn.obs["cell_type"]) == list(data.obs["cell_type"].astype(str))
    # A single Gaussian over all cells (no condition keys) cannot place each type's cells.
    pooled = GaussianLatentPrior.fit(vae, data, (), covariance=covariance)
    syn_pooled = pooled.sample(data.n_obs, {}, seed=0)
    syn_pooled.obs["cell_type"] = data.obs["cell_type"].astype(str).to_numpy()
    assert _type_mean_error(data, syn) < 0.5 * _type_mean_error(data, syn_pooled)


def test_seeded_and_conditions(vae, data):
    prior = GaussianLatentPrior.fit(vae, data, ("cell_type", "donor"), covariance="diag", shrinkage=5.0)
    a = prior.sample(20, {"cell_type": "t1", "donor": "d0"}, seed=3)
    b = prior.sample(20, {"cell_type": "t1", "donor": "d0"}, seed=3)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    c = prior.sample(20, {"cell_type": "t1", "donor": "d0"}, seed=4)
    assert not np.array_equal(a.X.toarray(), c.X.toarray())
    assert set(a.obs["cell_type"]) == {"t1"}
    assert a.uns[ADATA_KEYS.SAMPLING]["n_backed_off"] == 0
    rows = prior.summary()
    assert {r["cell_type"] for r in rows} == {"t0", "t1"}
    assert all(0 < r["pooled_weight"] < 1 for r in rows)


def test_unseen_combination_backs_off_unknown_value_is_refused(vae, data):
    sub = data[~((data.obs["cell_type"] == "t0") & (data.obs["donor"] == "d1")).to_numpy()].copy()
    prior = GaussianLatentPrior.fit(vae, sub, ("cell_type", "donor"))
    syn = prior.sample(5, {"cell_type": "t0", "donor": "d1"}, seed=0)
    assert syn.uns[ADATA_KEYS.SAMPLING]["n_backed_off"] == 5
    with pytest.raises(UnknownLabelError, match="not seen in training"):
        prior.sample(5, {"cell_type": "t9", "donor": "d0"})
    with pytest.raises(InvalidInputError, match="must give a value"):
        prior.sample(5, {"cell_type": "t0"})
    with pytest.raises(InvalidInputError, match="either like"):
        prior.sample(5, like=data)
    with pytest.raises(InvalidInputError, match="covariance"):
        GaussianLatentPrior.fit(vae, data, ("cell_type",), covariance="tied")
    with pytest.raises(MissingKeyError, match="not obs columns"):
        GaussianLatentPrior.fit(vae, data, ("tissue",))
