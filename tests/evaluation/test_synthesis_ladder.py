"""The synthesis diagnosis ladder: resampled floors, the rungs, the per-type verdict, and synth evaluate --model."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from genailab.data import DataSpec
from genailab.errors import InvalidInputError
from genailab.evaluation.synthesis_floor import floor_spread, neighbourhood_stats, resampled_mmd, resampled_w1
from genailab.evaluation.synthesis_ladder import (
    count_model_gap,
    ladder_rows,
    latent_prior_gap,
    posterior_predictive,
    score_generator,
    synthesis_ladder,
    vae_ceiling,
)
from genailab.foundation.recipes import LatentTokenVAE
from genailab.foundation.recipes.latent_prior import GaussianLatentPrior
from genailab.training import TrainConfig

from .test_synthesis import make_cells


def test_resampled_mmd_is_near_one_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 5))
    same = resampled_mmd(real, rng.normal(size=(200, 5)), n_boot=10)
    shifted = resampled_mmd(real, rng.normal(1.0, 1.0, size=(200, 5)), n_boot=10)
    assert 0.5 < same["ratio"] < 2.0
    assert shifted["ratio"] > 5
    assert same["floor_q025"] <= same["floor"] <= same["floor_q975"]
    lo, hi = shifted["ratio_interval"]
    assert lo <= shifted["ratio"] <= hi
    assert "note" in resampled_mmd(real[:3], real, n_boot=2)  # too few to split


def test_neighbourhood_stats_tell_collapse_from_blur():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(400, 4))
    collapsed = rng.normal(scale=0.05, size=(400, 4))
    blurred = rng.normal(scale=2.5, size=(400, 4))
    c, b = neighbourhood_stats(real, collapsed), neighbourhood_stats(real, blurred)
    assert c["coverage"]["synthetic"] < 0.5 * c["coverage"]["floor"]
    assert c["variance_ratio"]["synthetic"] < 0.1
    assert b["precision"]["synthetic"] < 0.7 * b["precision"]["floor"]
    assert b["variance_ratio"]["synthetic"] > 3
    assert 0.7 < c["variance_ratio"]["floor"] < 1.4


def test_resampled_w1_and_count_model_gap_see_library_shifts():
    real = make_cells(0, n=240)
    same = make_cells(1, n=240)
    big = make_cells(2, n=240)
    big.X = big.X * 3  # three times the library size, same profiles
    ok = count_model_gap(real, same, condition_key="cond", n_boot=5)
    bad = count_model_gap(real, big, condition_key="cond", n_boot=5)
    assert ok["overall"]["log_library_w1"]["ratio"] < 3
    assert bad["overall"]["log_library_w1"]["ratio"] > 5
    for scope in bad["per_condition"].values():
        assert scope["log_library_mean_diff"]["synthetic"] > 0.8
        assert scope["gene_zero_fraction_excess"]["synthetic"] < 0  # deeper sequencing -> fewer zeros
    assert set(ok["per_condition"]) == {"c0", "c1", "c2"}
    w = resampled_w1(np.zeros(10) + np.arange(10), np.arange(10) + 100.0, n_boot=3)
    assert w["ratio"] > 10


def test_floor_spread_and_score_generator(tmp_path):
    real, syn = make_cells(0), make_cells(1, shift=0.5)
    spread = floor_spread(real, syn, condition_key="cond", n_boot=5)
    assert set(spread["per_condition"]) == {"c0", "c1", "c2"}
    assert spread["overall"]["ratio"] > 2
    metrics = score_generator(real, make_cells(1), condition_key="cond", n_boot=5)
    assert "floor_spread" in metrics
    assert 0.5 < metrics["floor_spread"]["overall"]["ratio"] < 2
    json.dumps(metrics, allow_nan=False)


def _two_types(n: int, seed: int) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    types = np.arange(n) % 2
    programs = np.full((2, 30), 0.2)
    programs[0, :15] = 5.0
    programs[1, 15:] = 5.0
    mu = programs[types] / programs[types].sum(1, keepdims=True) * rng.lognormal(np.log(300), 0.2, n)[:, None]
    counts = rng.negative_binomial(10, 10 / (10 + mu)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"t{t}" for t in types]),
            "donor": pd.Categorical([f"d{(i // 2) % 2}" for i in range(n)]),
        },
        index=[f"s{seed}_{i}" for i in range(n)],
    )
    return ad.AnnData(sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(30)]))


@pytest.fixture(scope="module")
def trained():
    train, heldout = _two_types(240, 0), _two_types(120, 1)
    vae = LatentTokenVAE.from_anndata(train, DataSpec(batch_key="donor"), preset="tiny")
    vae.fit(train, TrainConfig(max_epochs=15, batch_size=32, progress_bar=False, early_stopping_patience=0), seed=0)
    return vae, train, heldout


def test_posterior_predictive_and_ceiling(trained):
    vae, train, heldout = trained
    pp = posterior_predictive(vae, heldout, seed=0)
    assert pp.shape == heldout.shape
    np.testing.assert_array_equal(pp.X.toarray(), posterior_predictive(vae, heldout, seed=0).X.toarray())
    assert list(pp.obs["cell_type"]) == list(heldout.obs["cell_type"])
    with pytest.raises(InvalidInputError, match="latent="):
        posterior_predictive(vae, heldout, latent="mode")
    ceiling = vae_ceiling(vae, train, heldout, condition_key="cell_type", n_boot=3)
    assert set(ceiling["posterior_predictive"]["per_condition"]) == {"t0", "t1"}
    assert ceiling["aggregate_posterior"] is not None
    assert set(ceiling["aggregate_posterior"]["floor_spread"]["per_condition"]) == {"t0", "t1"}


def test_latent_prior_gap_ranks_per_type_prior_above_pooled(trained):
    vae, train, heldout = trained
    per_type = GaussianLatentPrior.fit(vae, train, ("cell_type", "donor"))
    pooled = GaussianLatentPrior.fit(vae, train, ())
    good = latent_prior_gap(per_type, heldout, condition_key="cell_type", n_boot=5)
    syn_pooled = pooled.sample(heldout.n_obs, {}, seed=0)
    syn_pooled.obs["cell_type"] = heldout.obs["cell_type"].astype(str).to_numpy()
    bad = latent_prior_gap(pooled, heldout, condition_key="cell_type", synthetic=syn_pooled, n_boot=5)
    for t in ("t0", "t1"):
        assert bad["per_condition"][t]["mmd"]["ratio"] > 2 * good["per_condition"][t]["mmd"]["ratio"]
        assert good["per_condition"][t]["neighbourhood"]["coverage"]["synthetic"] > 0
    json.dumps(good, allow_nan=False)


def test_synthesis_ladder_rows_and_verdicts(trained):
    vae, train, heldout = trained
    prior = GaussianLatentPrior.fit(vae, train, ("cell_type", "donor"), covariance="diag")
    syn = prior.sample(like=heldout, seed=0)
    ladder = synthesis_ladder(prior, heldout, syn, condition_key="cell_type", real_train=train, n_boot=3, n_pcs=10)
    json.dumps(ladder, allow_nan=False)
    rows = {r["condition"]: r for r in ladder["per_type"]}
    assert set(rows) == {"all cells", "t0", "t1"}
    for r in rows.values():
        for key in ("generator_mmd_ratio", "ceiling_mmd_ratio", "latent_mmd_ratio", "library_w1_ratio"):
            assert r[key] is not None, key
            assert r[key] >= 0, key
    verdict = ladder_rows(
        None,
        None,
        {"overall": {"mmd": {"ratio": 4.0}}, "per_condition": {}},
        {"overall": {"log_library_w1": {"ratio": 1.0}}, "per_condition": {}},
    )
    assert verdict[0]["held_back_by"] == ["latent prior"]


def test_evaluate_synth_with_model_dir_reports_the_ladder(tmp_path):
    from genailab.workflows import evaluate_synth, sample_synth, train_synth_on
    from genailab.workflows.runconfig import SynthRunConfig

    train, heldout = _two_types(160, 0), _two_types(90, 1)
    config = SynthRunConfig(seed=0, data=DataSpec(batch_key="donor"), condition_keys=("cell_type", "donor"))
    config = config.replace(
        vae_preset="tiny",
        backbone_preset="tiny",
        vae_train=config.vae_train.replace(max_epochs=2, progress_bar=False),
        train=config.train.replace(max_epochs=2, progress_bar=False),
        diffusion=config.diffusion.replace(steps=3, sampler="euler"),
    )
    train_synth_on(train, tmp_path / "run", config)
    heldout.write_h5ad(tmp_path / "heldout.h5ad")
    sample_synth(tmp_path / "run", tmp_path / "syn.h5ad", like=tmp_path / "heldout.h5ad", seed=0)
    metrics = evaluate_synth(
        tmp_path / "heldout.h5ad",
        tmp_path / "syn.h5ad",
        tmp_path / "eval",
        condition_key="cell_type",
        model_dir=tmp_path / "run",
        n_boot=3,
    )
    ladder = metrics["ladder"]
    assert {r["condition"] for r in ladder["per_type"]} == {"all cells", "t0", "t1"}
    assert ladder["heldout"]["real_is_training_data"] is False
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["ladder"]["per_type"] == ladder["per_type"]
    assert "Where the gap comes from" in (tmp_path / "eval" / "report.html").read_text()
