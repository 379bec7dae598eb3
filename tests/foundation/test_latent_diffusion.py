from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genailab.constants import ADATA_KEYS
from genailab.data import DataSpec
from genailab.errors import CheckpointError, InvalidInputError, MissingKeyError, UnknownLabelError
from genailab.foundation.recipes import LatentDiffusionConfig, LatentDiffusionModel, LatentTokenVAE
from genailab.training import TrainConfig

from ..conftest import make_count_adata

FAST = TrainConfig(max_epochs=2, batch_size=32, progress_bar=False, early_stopping_patience=0)


@pytest.fixture(scope="module")
def adata():
    return make_count_adata(n_obs=96, n_vars=24)


@pytest.fixture(scope="module")
def vae(adata):
    spec = DataSpec(batch_key="batch", categorical_covariate_keys=("cell_type",), continuous_covariate_keys=("age",))
    model = LatentTokenVAE.from_anndata(adata, spec, preset="tiny")
    model.fit(adata, FAST, seed=0)
    return model


def _ldm(vae, keys=("cell_type", "batch"), **cfg):
    config = LatentDiffusionConfig(objective="flow", sampler="euler", steps=4, **cfg)
    return LatentDiffusionModel.from_vae(
        vae, condition_keys=keys, backbone="dit", backbone_preset="tiny", config=config
    )


def test_vae_is_frozen_and_only_diffusion_trains(vae, adata):
    model = _ldm(vae)
    assert model.tuning_report.n_trainable == 0
    before = {k: v.clone() for k, v in model.vae.state_dict().items()}
    model.fit(adata, FAST, seed=0)
    for k, v in model.vae.state_dict().items():
        assert torch.equal(before[k], v), k
    assert model.ema is None  # EMA weights were copied into the live modules after training


def test_sample_with_conditions_and_like(vae, adata):
    model = _ldm(vae, keys=("cell_type", "batch", "age"))
    model.fit(adata, FAST, seed=0)
    syn = model.sample(10, {"cell_type": "type1", "batch": "b0", "age": 40.0}, seed=3)
    assert syn.shape == (10, 24)
    x = syn.X.toarray()
    assert np.all(x == np.round(x))
    assert x.min() >= 0
    assert set(syn.obs["cell_type"]) == {"type1"}
    assert syn.obsm[ADATA_KEYS.SYNTH_LATENT].shape == (10, 4, 8)
    assert syn.uns[ADATA_KEYS.SAMPLING]["steps"] == 4
    again = model.sample(10, {"cell_type": "type1", "batch": "b0", "age": 40.0}, seed=3)
    np.testing.assert_array_equal(again.X.toarray(), x)  # seeded
    like = model.sample(like=adata[:7], seed=0, guidance_scale={"cell_type": 2.0, "batch": 0.0})
    np.testing.assert_allclose(like.obs["age"].to_numpy(dtype=float), adata.obs["age"][:7].to_numpy())
    assert like.n_obs == 7
    assert list(like.obs["cell_type"]) == list(adata.obs["cell_type"][:7].astype(str))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"n": 0, "conditions": {"cell_type": "type1", "batch": "b0", "age": 1.0}},
            InvalidInputError,
            "positive",
        ),
        ({"n": 2.5, "conditions": {}}, InvalidInputError, "positive integer"),
        (
            {"n": 2, "conditions": {"tissue": "x", "cell_type": "type1", "batch": "b0", "age": 1}},
            InvalidInputError,
            "unknown condition key",
        ),
        (
            {"n": 2, "conditions": {"cell_type": "type9", "batch": "b0", "age": 1.0}},
            UnknownLabelError,
            "type9",
        ),
        ({"n": 2, "conditions": {"cell_type": "type1"}}, InvalidInputError, "must give a value"),
        (
            {
                "n": 2,
                "conditions": {"cell_type": "type1", "batch": "b0", "age": 1.0},
                "guidance_scale": float("nan"),
            },
            InvalidInputError,
            "finite",
        ),
        (
            {
                "n": 2,
                "conditions": {"cell_type": "type1", "batch": "b0", "age": 1.0},
                "guidance_scale": {"tissue": 2},
            },
            InvalidInputError,
            "unknown condition key",
        ),
    ],
)
def test_sampling_bad_input(vae, kwargs, error, match):
    model = _ldm(vae, keys=("cell_type", "batch", "age"))
    with pytest.raises(error, match=match):
        model.sample(**kwargs)


def test_like_reference_missing_column(vae, adata):
    model = _ldm(vae)
    ref = adata[:5].copy()
    del ref.obs["batch"]
    with pytest.raises(MissingKeyError, match="batch"):
        model.sample(like=ref)


def test_counterfactual_is_cell_paired(vae, adata):
    model = _ldm(vae)
    model.fit(adata, FAST, seed=0)
    cf = model.counterfactual(adata[:12], {"batch": "b1"}, strength=0.5, seed=0)
    assert list(cf.obs_names) == list(adata.obs_names[:12])
    assert set(cf.obs["batch"]) == {"b1"}
    assert list(cf.obs["batch_original"]) == list(adata.obs["batch"][:12].astype(str))
    np.testing.assert_allclose(np.asarray(cf.obs["library_size"]), np.asarray(adata[:12].X.sum(1)).ravel())
    with pytest.raises(InvalidInputError, match="strength"):
        model.counterfactual(adata[:3], {"batch": "b1"}, strength=0.0)
    with pytest.raises(InvalidInputError, match="set_conditions"):
        model.counterfactual(adata[:3], {"donor": "x"})


def test_save_load_round_trip_and_hash_check(vae, adata, tmp_path):
    model = _ldm(vae)
    model.fit(adata, FAST, seed=0)
    model.save_pretrained(tmp_path / "ldm")
    loaded = LatentDiffusionModel.from_pretrained(tmp_path / "ldm")
    a = model.sample(6, {"cell_type": "type0", "batch": "b1"}, seed=1)
    b = loaded.sample(6, {"cell_type": "type0", "batch": "b1"}, seed=1)
    np.testing.assert_allclose(a.obsm[ADATA_KEYS.SYNTH_LATENT], b.obsm[ADATA_KEYS.SYNTH_LATENT], atol=1e-5)
    # tamper with the VAE: loading must refuse it
    cfg_path = tmp_path / "ldm" / "vae" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["config"]["kl_weight"] = 0.5
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="hash mismatch"):
        LatentDiffusionModel.from_pretrained(tmp_path / "ldm")


def test_untrained_directory_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="missing"):
        LatentDiffusionModel.from_pretrained(tmp_path / "empty")


def test_condition_key_must_be_registered(vae):
    with pytest.raises(MissingKeyError, match="not registered"):
        LatentDiffusionModel.from_vae(vae, condition_keys=("tissue",), backbone="dit", backbone_preset="tiny")
