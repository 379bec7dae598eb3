"""The perturbation recipe on a planted-effect screen: it must beat the simple baselines, normalise by
whole-transcriptome libraries when asked, start unseen agents from the mean training shift, warn on
agents far from the trained ones, and decode latent baselines (tests that fail on a stub).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genailab.data import log_normalize
from genailab.errors import InvalidInputError, MissingKeyError
from genailab.foundation.perturbation import GenePriors, prior_distance
from genailab.foundation.recipes import LatentTokenVAE, PerturbDeltaConfig, PerturbDeltaModel
from genailab.foundation.recipes.perturb import decode_shift_response, observed_latent_shift
from genailab.foundation.recipes.perturb.base_shift import base_for_codes, fit_base_shift
from genailab.foundation.recipes.perturb.ood import PAIR_TERM, OODModel
from genailab.training import TrainConfig

from ..conftest import make_perturb_adata


def _train(epochs: int) -> TrainConfig:
    return TrainConfig(
        max_epochs=epochs, batch_size=64, progress_bar=False, early_stopping_patience=0, val_fraction=0.0
    )


@pytest.fixture(scope="module")
def screen():
    """The planted screen with whole-transcriptome libraries 5-20x the 24-gene row sums."""
    adata = make_perturb_adata(n_per=30)
    rng = np.random.default_rng(1)
    adata.obs["ncounts"] = np.asarray(adata.X.sum(1)).ravel() * rng.uniform(5, 20, adata.n_obs)
    return adata


@pytest.fixture(scope="module")
def vae(screen):
    model = LatentTokenVAE.from_anndata(screen, preset="tiny", overrides={"kl_weight": 0.1})
    model.fit(screen, _train(100), seed=0)
    return model


@pytest.fixture(scope="module")
def priors():
    """g1-g3 orthogonal; g4 next to g1; g5 opposite to all three trained agents."""
    feats = np.zeros((5, 6), np.float32)
    feats[0, 0] = feats[1, 1] = feats[2, 2] = 1.0
    feats[3] = feats[0] + 0.1 * np.eye(6, dtype=np.float32)[3]
    feats[4, :3] = -1.0
    return GenePriors(("g1", "g2", "g3", "g4", "g5"), feats, ("test",), (6,))


def _rows(adata, *conditions, context=None):
    lab = adata.obs["condition"].astype(str).to_numpy()
    ctx = adata.obs["cell_type"].astype(str).to_numpy()
    keep = np.isin(lab, conditions) & (True if context is None else ctx == context)
    return np.flatnonzero(keep)


def _model(adata, vae, priors, rows, **cfg):
    cfg = {"n_members": 2, "groups_per_batch": 4, "cells_per_group": 16, "mc_cells": 300,
           "context_keys": ("cell_type",), "library_key": "ncounts", **cfg}  # fmt: skip
    return PerturbDeltaModel.from_anndata(
        adata[rows], vae, perturbation_key="condition", priors=priors, config=PerturbDeltaConfig(**cfg),
        backbone="mlp", backbone_preset="tiny",
    )  # fmt: skip


def _observed_mean(adata, rows):
    x = adata.X[rows].toarray()
    return log_normalize(x, library=adata.obs["ncounts"].to_numpy()[rows]).mean(0)


@pytest.fixture(scope="module")
def held_out(screen, vae, priors):
    """Trained on control, g1, g2, g3 (both contexts); g1+g2 in B validates; g1+g2 in A is never seen."""
    train = _rows(screen, "control", "g1", "g2", "g3")
    val = _rows(screen, "g1+g2", context="B")
    model = _model(screen, vae, priors, train)
    model.fit(screen, train, val, _train(60), seed=0)
    return model


def _pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------------------------------- beats baselines
def test_held_out_combination_beats_no_change_and_train_mean(held_out, screen):
    controls = screen[_rows(screen, "control", context="A")].copy()
    pred = held_out.predict_response(controls, "g1+g2", seed=0)
    observed = _observed_mean(screen, _rows(screen, "g1+g2", context="A"))
    ctrl = pred.control_mean
    train_mean = np.mean([_observed_mean(screen, _rows(screen, g, context="A")) for g in ("g1", "g2", "g3")], 0)
    model_r = _pearson(pred.mean - ctrl, observed - ctrl)
    train_mean_r = _pearson(train_mean - ctrl, observed - ctrl)
    assert model_r > 0.85
    assert model_r > train_mean_r + 0.05, (model_r, train_mean_r)
    model_l2, no_change_l2 = np.linalg.norm(pred.mean - observed), np.linalg.norm(ctrl - observed)
    assert model_l2 < 0.7 * no_change_l2, (model_l2, no_change_l2)
    assert model_l2 < np.linalg.norm(train_mean - observed)
    # 30 cells per single: the observed singles are noisy, and the anchored composition shrinks their
    # residuals toward the decoded latent, so it beats their plain gene-space sum (additive)
    singles = [_observed_mean(screen, _rows(screen, g, context="A")) for g in ("g1", "g2")]
    additive = singles[0] + singles[1] - _observed_mean(screen, _rows(screen, "control", context="A"))
    assert model_l2 < np.linalg.norm(additive - observed), (model_l2, np.linalg.norm(additive - observed))
    # the planted blocks: genes 0-7 up, the rest not
    delta = pred.mean - ctrl
    assert (delta[:8] > 0).all()
    assert delta[:8].mean() > delta[8:].mean() + 0.2


# ---------------------------------------------------------------------------------------- library_key
def test_library_key_normalises_by_whole_transcriptome_libraries(held_out, screen):
    row = _rows(screen, "control", context="A")[:1]
    one = screen[row].copy()
    pred = held_out.predict_response(one, "g1", seed=0)
    x, lib = screen.X[row].toarray()[0], float(screen.obs["ncounts"].iloc[row[0]])
    np.testing.assert_allclose(pred.control_mean, np.log1p(x / lib * 1e4), rtol=1e-5)  # by hand
    assert not np.allclose(pred.control_mean, np.log1p(x / x.sum() * 1e4))  # not the 24-gene row sum
    np.testing.assert_allclose(pred.library, [lib])  # the predicted cell carries its control cell's library
    # the mean response is on that scale: the planted g1 block rises from the control's level
    assert (pred.mean - pred.control_mean)[:4].mean() > 0.3
    del one.obs["ncounts"]
    with pytest.raises(MissingKeyError, match="ncounts"):
        held_out.predict_response(one, "g1")


def test_library_key_applies_to_the_calibration_targets(screen, vae, priors, monkeypatch):
    from genailab.foundation.recipes.perturb import calibration

    seen = {}
    fit = calibration.ConformalCalibrator.fit

    def spy(y, mu, sd, *args, **kwargs):
        seen["y"] = np.asarray(y)
        return fit(y, mu, sd, *args, **kwargs)

    monkeypatch.setattr(calibration.ConformalCalibrator, "fit", staticmethod(spy))
    train, val = _rows(screen, "control", "g1", "g2"), _rows(screen, "g3")
    model = _model(screen, vae, priors, train, n_members=1)
    model.fit(screen, train, val, _train(1), seed=0)
    expected = [_observed_mean(screen, _rows(screen, "g3", context=c)) for c in ("A", "B")]
    np.testing.assert_allclose(seen["y"], np.stack(expected), rtol=1e-5)


def test_without_library_key_predictions_use_row_sums(screen, vae, priors):
    model = _model(screen, vae, priors, _rows(screen, "control", "g1"), library_key=None)
    one = screen[_rows(screen, "control", context="A")[:1]].copy()
    pred = model.predict_response(one, "g1")
    x = one.X.toarray()[0]
    np.testing.assert_allclose(pred.control_mean, np.log1p(x / x.sum() * 1e4), rtol=1e-5)
    assert pred.library is None


# ---------------------------------------------------------------------------------------- base shift
def test_unseen_agent_starts_from_the_mean_training_shift(screen, vae, priors):
    train = _rows(screen, "control", "g1", "g2", "g3", "g1+g2")
    model = _model(screen, vae, priors, train)  # members output zeros until trained
    cells = model.cell_data(screen, train)
    model.base_shift = fit_base_shift(cells, train, model.vocab)
    assert set(model.base_shift.contexts) == {"A", "B"}
    ctrl_a = _rows(screen, "control", context="A")
    shifts = [observed_latent_shift(model, screen, _rows(screen, c, context="A"), ctrl_a) for c in ("g1", "g2", "g3")]
    shifts.append(observed_latent_shift(model, screen, _rows(screen, "g1+g2", context="A"), ctrl_a) / 2)
    np.testing.assert_allclose(model.base_shift.contexts["A"], np.mean(shifts, 0), atol=1e-4)  # per-agent mean
    z = cells.z[torch.as_tensor(ctrl_a[:5])]
    codes = torch.zeros(5, 1)  # context A
    base = base_for_codes(model, np.zeros(1))
    for label, n_agents in (("g4", 1), ("g4+g5", 2), ("control", 0)):
        ids, dose = model.vocab.encode([label] * 5)
        out = model.nets[0].eval()(z, torch.as_tensor(ids), torch.as_tensor(dose), codes, base=base)
        expected = n_agents * np.broadcast_to(base.numpy(), z.shape)
        np.testing.assert_allclose((out - z).detach().numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(base_for_codes(model, -np.ones(1)).numpy(), model.base_shift.mean, atol=1e-6)
    # the prediction starts there too: an unseen agent's mean response moves like the training mean
    pred = model.predict_response(screen[ctrl_a].copy(), "g4", seed=0)
    train_mean = np.mean([_observed_mean(screen, _rows(screen, g, context="A")) for g in ("g1", "g2", "g3")], 0)
    assert _pearson(pred.mean - pred.control_mean, train_mean - pred.control_mean) > 0.7
    off = _model(screen, vae, priors, train, base_shift="none")
    off.base_shift = model.base_shift
    assert base_for_codes(off, np.zeros(1)) is None  # config says none: no base, even if one is set


def test_fit_stores_the_base_shift_and_old_configs_load_without_it(held_out, screen, tmp_path):
    assert held_out.config.base_shift == "context_mean"
    assert set(held_out.base_shift.contexts) == {"A", "B"}
    d = held_out.save_pretrained(tmp_path / "m")
    payload = json.loads((d / "config.json").read_text())
    for key in ("base_shift", "library_key"):  # a config.json written before these fields
        del payload["config"][key]
    (d / "config.json").write_text(json.dumps(payload))
    old = PerturbDeltaModel.from_pretrained(d)
    assert (old.config.base_shift, old.config.library_key) == ("none", None)
    with pytest.raises(InvalidInputError, match="base_shift"):
        PerturbDeltaConfig(base_shift="median")


# ---------------------------------------------------------------------------------------- OOD
def test_ood_score_rises_with_prior_distance_to_the_trained_agents(held_out, screen, priors):
    controls = screen[_rows(screen, "control", context="A")].copy()
    near = held_out.predict_response(controls, "g4", seed=0)
    far = held_out.predict_response(controls, "g5", seed=0)
    d_near, d_far = prior_distance(priors, ["g4", "g5"], ["g1", "g2", "g3"])
    assert near.prior_distance == pytest.approx(d_near)
    assert far.prior_distance == pytest.approx(d_far)
    assert d_far > 1.5 > 0.01 > d_near
    assert far.ood_score > near.ood_score + 1.0
    seen = held_out.predict_response(controls, "g1", seed=0)
    assert seen.prior_distance == 0.0


def test_ood_negatives_are_the_validation_conditions(held_out, tmp_path):
    assert held_out.val_conditions == [["g1+g2", "B"]]
    ood = held_out.ood_model
    assert ood.trained_agents == ("g1", "g2", "g3")
    assert ood.unseen_pair(["g1", "g2"])  # the pair was never trained
    # one validation condition: its disagreement is the scale, prior distance 0, an unseen pair
    assert held_out.ood_negatives == pytest.approx([0.5 + PAIR_TERM])
    loaded = PerturbDeltaModel.from_pretrained(held_out.save_pretrained(tmp_path / "m"))
    assert loaded.ood_negatives == pytest.approx(held_out.ood_negatives)
    assert loaded.ood_model == ood


def test_ood_model_combines_normalised_components():
    ood = OODModel(disagreement_scale=2.0, distance_scale=0.4, trained_agents=("a", "b"), trained_pairs=(("b", "a"),))
    assert ood.score(2.0, 0.4, ["a"]) == pytest.approx(1.0)
    assert ood.score(4.0, 0.0, ["a", "b"]) == pytest.approx(1.0)  # a trained pair: no pair term
    assert ood.score(0.0, 0.0, ["a", "c"]) == pytest.approx(PAIR_TERM)
    tiny = OODModel(disagreement_scale=1.0, distance_scale=0.0, trained_agents=("a",))
    assert np.isfinite(tiny.score(1.0, 2.0, ["z"]))  # the distance scale is floored
    assert OODModel.from_dict(ood.to_dict()) == ood


# ---------------------------------------------------------------------------------------- latent baselines
def test_vae_oracle_reproduces_a_training_condition(held_out, screen):
    ctrl = _rows(screen, "control", context="A")
    rows = _rows(screen, "g1", context="A")
    shift = observed_latent_shift(held_out, screen, rows, ctrl)
    assert shift.shape == tuple(held_out.vae.config.latent_shape)
    oracle = decode_shift_response(held_out, screen, ctrl, shift, seed=0)
    observed = _observed_mean(screen, rows)
    assert np.linalg.norm(oracle.mean - observed) < 0.5 * np.linalg.norm(oracle.control_mean - observed)
    np.testing.assert_allclose(oracle.library, screen.obs["ncounts"].to_numpy()[ctrl])
    assert oracle.sigma is None
    assert np.isnan(oracle.ood_score)
    assert oracle.counts.shape == (len(ctrl), screen.n_vars)
    zero = decode_shift_response(held_out, screen, ctrl, np.zeros_like(shift), seed=0)
    np.testing.assert_allclose(zero.mean, zero.control_mean, atol=1e-6)  # no shift, no change
    # latent additive: the singles' observed shifts summed predict the unseen double
    additive = shift + observed_latent_shift(held_out, screen, _rows(screen, "g2", context="A"), ctrl)
    pred = decode_shift_response(held_out, screen, ctrl, additive, seed=0)
    double = _observed_mean(screen, _rows(screen, "g1+g2", context="A"))
    assert np.linalg.norm(pred.mean - double) < 0.7 * np.linalg.norm(pred.control_mean - double)
    with pytest.raises(InvalidInputError, match="latent shape"):
        decode_shift_response(held_out, screen, ctrl, np.zeros(3))
    with pytest.raises(InvalidInputError, match="empty"):
        observed_latent_shift(held_out, screen, np.array([], dtype=int), ctrl)
