from __future__ import annotations

import numpy as np
import pytest
import torch

from genailab.errors import CheckpointError, InvalidInputError, MissingKeyError, UnknownLabelError
from genailab.foundation.recipes import (
    FORMULATIONS,
    LatentTokenVAE,
    PerturbDeltaConfig,
    PerturbDeltaModel,
)
from genailab.foundation.recipes.perturb.calibration import read_calibration, write_calibration
from genailab.training import TrainConfig

from ..conftest import make_gene_priors, make_perturb_adata

FAST = TrainConfig(max_epochs=2, batch_size=64, progress_bar=False, early_stopping_patience=0, val_fraction=0.0)


@pytest.fixture(scope="module")
def adata():
    return make_perturb_adata()


@pytest.fixture(scope="module")
def vae(adata):
    model = LatentTokenVAE.from_anndata(adata, preset="tiny")
    model.fit(adata, FAST, seed=0)
    return model


def _rows(adata, *conditions, context=None):
    lab = adata.obs["condition"].astype(str).to_numpy()
    ctx = adata.obs["cell_type"].astype(str).to_numpy()
    keep = np.isin(lab, conditions) & (True if context is None else ctx == context)
    return np.flatnonzero(keep)


def _model(adata, vae, rows=None, **cfg):
    cfg = {"n_members": 2, "groups_per_batch": 4, "cells_per_group": 8, "mc_cells": 200,
           "context_keys": ("cell_type",), **cfg}  # fmt: skip
    sub = adata if rows is None else adata[rows]
    return PerturbDeltaModel.from_anndata(
        sub,
        vae,
        perturbation_key="condition",
        priors=make_gene_priors(),
        config=PerturbDeltaConfig(**cfg),
        backbone="mlp",
        backbone_preset="tiny",
    )


@pytest.fixture(scope="module")
def trained(adata, vae):
    train = _rows(adata, "control", "g1", "g2", "g1+g2")
    val = _rows(adata, "g3")
    model = _model(adata, vae, train)
    model.fit(adata, train, val, FAST, seed=0)
    return model


@pytest.mark.parametrize(("formulation", "composer"), [("shift", "additive"), ("delta", "attention"),
                                                       ("delta", "additive"), ("shift", "sum")])  # fmt: skip
def test_members_start_as_the_identity(adata, vae, formulation, composer):
    model = _model(adata, vae, formulation=formulation, composer=composer)
    z = torch.randn(5, *vae.config.latent_shape)
    ids, dose = model.vocab.encode(["g1", "g1+g2", "control", "g3", "g4"])
    codes = torch.zeros(5, 1)
    for net in model.nets:
        net.eval()
        assert torch.allclose(net(z, torch.as_tensor(ids), torch.as_tensor(dose), codes), z)


def test_direct_formulation_keeps_controls_and_generates_the_rest(adata, vae):
    model = _model(adata, vae, formulation="direct", composer="attention")
    z = torch.randn(2, *vae.config.latent_shape)
    ids, dose = model.vocab.encode(["control", "g1"])
    out = model.nets[0].eval()(z, torch.as_tensor(ids), torch.as_tensor(dose), torch.zeros(2, 1))
    assert torch.allclose(out[0], z[0])
    assert torch.allclose(out[1], torch.zeros_like(z[1]))  # zero-initialised generator output
    assert set(FORMULATIONS.names()) == {"delta", "shift", "direct"}


def test_config_is_validated():
    with pytest.raises(InvalidInputError, match="formulation") as err:
        PerturbDeltaConfig(formulation="nope")
    assert all(name in str(err.value) for name in FORMULATIONS.names())  # an unknown name lists the registered ones
    with pytest.raises(InvalidInputError, match="nll_weight > 0"):
        PerturbDeltaConfig(finetune="decoder")
    with pytest.raises(InvalidInputError, match="formulation='delta'"):
        PerturbDeltaConfig(formulation="direct", composer="additive")
    with pytest.raises(InvalidInputError, match="finetune"):
        PerturbDeltaConfig(finetune="all", nll_weight=1.0)


def test_from_anndata_refuses_bad_keys(adata, vae):
    with pytest.raises(InvalidInputError, match="control='ctrl' is not a value"):
        PerturbDeltaModel.from_anndata(adata, vae, perturbation_key="condition", control="ctrl")
    with pytest.raises(MissingKeyError, match="perturbation_key='cond'"):
        PerturbDeltaModel.from_anndata(adata, vae, perturbation_key="cond")
    with pytest.raises(MissingKeyError, match="donor"):
        PerturbDeltaModel.from_anndata(
            adata, vae, perturbation_key="condition", config=PerturbDeltaConfig(context_keys=("donor",))
        )


def test_only_the_steering_wheel_trains(trained, vae):
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    assert all(not p.requires_grad for p in trained.vae.parameters())
    for k, v in trained.vae.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert trained.tuning_report.n_trainable == 0
    # members differ (independent seeds) and moved away from the identity
    w0 = torch.cat([p.flatten() for p in trained.nets[0].backbone.parameters()])
    w1 = torch.cat([p.flatten() for p in trained.nets[1].backbone.parameters()])
    assert not torch.allclose(w0, w1)


def test_fit_calibrates_on_validation_conditions(trained):
    assert trained.calibrator is not None
    assert trained.val_conditions == [["g3", "A"], ["g3", "B"]]
    assert trained.ood_reference > 0
    assert len(trained.seen_ood_scores) == 6  # g1, g2, g1+g2 in two contexts
    # the training groups' scores are on the combined scale: seen agents (prior distance 0), half the
    # disagreement relative to its median on the validation conditions
    scale = trained.ood_model.disagreement_scale
    assert np.median(trained.seen_ood_scores) == pytest.approx(0.5 * trained.ood_reference / scale)
    assert len(trained.ood_negatives) == 2  # the validation conditions' scores, about 1 by construction
    assert np.median(trained.ood_negatives) == pytest.approx(1.0, abs=0.3)


def test_predict_writes_cell_level_counterfactuals(trained, adata):
    controls = adata[_rows(adata, "control", context="A")].copy()
    out = trained.predict(controls, "g1+g2", seed=0)
    assert out.n_obs == controls.n_obs
    assert out.var_names.tolist() == list(trained.vae.genes)
    x = out.X.toarray()
    assert np.all(x >= 0)
    assert np.allclose(x, np.round(x))
    for layer in ("mean", "lower_90", "upper_90"):
        assert out.layers[layer].shape == x.shape
    assert np.all(out.layers["lower_90"] <= out.layers["mean"] + 1e-6)
    assert np.all(out.layers["mean"] <= out.layers["upper_90"] + 1e-6)
    for col in ("mean_response", "delta", "sigma", "lower_90", "upper_90"):
        assert col in out.var
    info = out.uns["genailab_perturb"]
    assert info["perturbation"] == "g1+g2"
    assert info["context"] == "A"
    assert info["calibrated"]
    assert np.isfinite(out.obs["ood_score"]).all()
    assert out.obs["control_cell"].tolist() == controls.obs_names.tolist()
    again = trained.predict(controls, "g1+g2", seed=0)
    assert np.array_equal(again.X.toarray(), x)


def test_predict_bad_input(trained, adata):
    controls = adata[_rows(adata, "control")].copy()
    with pytest.raises(InvalidInputError, match="several contexts"):
        trained.predict(controls, "g1")
    with pytest.raises(UnknownLabelError, match="'g9'"):
        trained.predict(controls, "g9", context={"cell_type": "A"})
    with pytest.raises(InvalidInputError, match="no control cells .* in context"):
        trained.predict(controls, "g1", context={"cell_type": "Z"})
    unlabeled = adata[_rows(adata, "control", context="A")].copy()
    del unlabeled.obs["cell_type"]
    with pytest.raises(InvalidInputError, match="never seen in training.*allow_ood"):
        trained.predict(unlabeled, "g1", context={"cell_type": "Z"})
    with pytest.raises(MissingKeyError, match="context column"):
        trained.predict(unlabeled, "g1")
    with pytest.raises(InvalidInputError, match="no control cells"):
        trained.predict(adata[_rows(adata, "g1")].copy(), "g2", context={"cell_type": "A"})
    with pytest.raises(InvalidInputError, match="not context keys"):
        trained.predict(controls, "g1", context={"donor": "x"})


def test_unseen_context_with_allow_ood_is_flagged(trained, adata):
    controls = adata[_rows(adata, "control", context="A")].copy()
    del controls.obs["cell_type"]
    del controls.obs["condition"]  # a file of control cells only
    out = trained.predict(controls, "g1", context={"cell_type": "new_line"}, allow_ood=True)
    info = out.uns["genailab_perturb"]
    assert info["unseen_context"]
    assert info["ood"]


def test_unseen_agent_is_predicted_through_priors(trained, adata):
    controls = adata[_rows(adata, "control", context="B")].copy()
    pred = trained.predict_response(controls, "g4")
    assert pred.novelty["unseen_agents"] == ["g4"]
    assert pred.mean.shape == (adata.n_vars,)
    assert np.isfinite(pred.sigma).all()
    assert pred.counts.shape == (controls.n_obs, adata.n_vars)


def test_save_load_round_trip(trained, adata, tmp_path):
    trained.save_pretrained(tmp_path / "m")
    loaded = PerturbDeltaModel.from_pretrained(tmp_path / "m")
    controls = adata[_rows(adata, "control", context="A")].copy()
    a = trained.predict_response(controls, "g1", seed=3)
    b = loaded.predict_response(controls, "g1", seed=3)
    np.testing.assert_allclose(a.mean, b.mean, atol=1e-6)
    np.testing.assert_allclose(a.sigma, b.sigma, atol=1e-6)
    assert loaded.calibrator == trained.calibrator
    assert loaded.seen_ood_scores == pytest.approx(trained.seen_ood_scores)


def test_load_refuses_incomplete_or_changed_directories(trained, tmp_path):
    d = trained.save_pretrained(tmp_path / "m")
    (d / "member_1.safetensors").unlink()
    with pytest.raises(CheckpointError):
        PerturbDeltaModel.from_pretrained(d)
    d2 = trained.save_pretrained(tmp_path / "m2")
    (d2 / "config.json").unlink()
    with pytest.raises(CheckpointError):
        PerturbDeltaModel.from_pretrained(d2)


def test_decoder_finetuning_trains_a_copy_per_member(adata, vae, tmp_path):
    rows = _rows(adata, "control", "g1", "g2")
    model = _model(adata, vae, rows, finetune="decoder", nll_weight=1.0, n_members=1)
    before = {k: v.clone() for k, v in vae.decoder.state_dict().items()}
    model.fit(adata, rows, None, FAST, seed=1)
    assert model.calibrator is None  # no validation conditions
    tuned = model.decoders[0].decoder.state_dict()
    assert any(not torch.equal(tuned[k], before[k]) for k in before)
    assert all(torch.equal(v, before[k]) for k, v in vae.decoder.state_dict().items())
    model.save_pretrained(tmp_path / "ft")
    loaded = PerturbDeltaModel.from_pretrained(tmp_path / "ft")
    for k, v in loaded.decoders[0].decoder.state_dict().items():
        assert torch.equal(v, tuned[k])


def test_fit_needs_controls_in_every_context(adata, vae):
    rows = np.setdiff1d(_rows(adata, "control", "g1"), _rows(adata, "control", context="B"))
    model = _model(adata, vae, _rows(adata, "control", "g1"))
    with pytest.raises(InvalidInputError, match="no control cells in context 'B'"):
        model.fit(adata, rows, None, FAST)


def test_calibration_json_has_one_home(trained, tmp_path):
    write_calibration(tmp_path, trained)
    values = read_calibration(tmp_path)
    assert set(values) == {"calibrator", "ood_reference", "seen_ood_scores", "val_conditions", "ood_negatives",
                           "ood_model", "base_shift", "de_sigma_factor", "observed_singles"}  # fmt: skip
    assert values["de_sigma_factor"] == pytest.approx(trained.de_sigma_factor)
    assert trained.de_sigma_factor >= 1.0
    assert values["calibrator"] == trained.calibrator
    assert values["ood_reference"] == pytest.approx(trained.ood_reference)
    assert values["val_conditions"] == trained.val_conditions
    assert values["ood_negatives"] == pytest.approx(trained.ood_negatives)
    assert values["ood_model"] == trained.ood_model
    assert set(values["base_shift"].contexts) == {"A", "B"}
    np.testing.assert_allclose(values["base_shift"].mean, trained.base_shift.mean)
    # a file written before the OOD model and the base shift: disagreement-only score, no base
    (tmp_path / "calibration.json").write_text('{"calibrator": null, "ood_reference": 2.0}')
    old = read_calibration(tmp_path)
    assert (old["ood_negatives"], old["ood_model"], old["base_shift"]) == ([], None, None)
    assert old["de_sigma_factor"] == 1.0  # one conformal multiplier for every gene, as before
    (tmp_path / "observed_singles.safetensors").unlink()
    assert read_calibration(tmp_path)["observed_singles"] is None  # no anchors: latent composition
    (tmp_path / "calibration.json").write_text('{"calibrator": {"levels": 1}}')
    with pytest.raises(CheckpointError, match="calibration.json"):
        read_calibration(tmp_path)


def test_from_pretrained_refuses_an_adapted_directory(tmp_path):
    d = tmp_path / "adapted"
    d.mkdir()
    (d / "adapter.json").write_text("{}")
    (d / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="load_model"):
        PerturbDeltaModel.from_pretrained(d)


def test_old_module_path_keeps_its_public_names():
    from genailab.foundation.recipes.perturb import model as old

    for name in ("FORMULATIONS", "PerturbDeltaConfig", "PerturbDeltaModel", "PerturbDeltaNet", "ResponsePrediction"):
        assert hasattr(old, name), name


def test_response_size_stratum_gets_its_own_conformal_multiplier():
    """Errors grow with the response; one pooled multiplier under-covers the responders, the stratum fixes it."""
    from genailab.foundation.objectives.uncertainty import ConformalCalibrator
    from genailab.foundation.recipes.perturb.calibration import (
        DE_STRATUM_GENES,
        de_stratum,
        fit_de_sigma_factor,
        stratified_sigma,
    )

    rng = np.random.default_rng(0)
    n, g = 60, 400
    control = rng.normal(1.0, 0.3, (n, g))
    shift = np.zeros((n, g))
    for i in range(n):  # each query moves its own 20 genes strongly
        shift[i, rng.choice(g, DE_STRATUM_GENES, replace=False)] = rng.choice([-1.5, 1.5], DE_STRATUM_GENES)
    mean = control + shift
    sigma = np.full((n, g), 0.05)
    y = mean + rng.normal(0, 0.05, (n, g)) + rng.normal(0, 0.5, (n, g)) * (shift != 0)
    assert (de_stratum(mean[0], control[0]) == (shift[0] != 0)).all()
    half = n // 2
    factor = fit_de_sigma_factor(y[:half], mean[:half], sigma[:half], control[:half])
    assert factor > 3.0

    def responder_coverage(f: float) -> float:
        sd = np.stack([stratified_sigma(s, m, c, f) for s, m, c in zip(sigma, mean, control, strict=True)])
        cal = ConformalCalibrator.fit(y[:half], mean[:half], sd[:half])
        lo, hi = cal.interval(mean[half:], sd[half:], 0.9)
        inside = (y[half:] >= lo) & (y[half:] <= hi)
        return float(inside[shift[half:] != 0].mean())

    assert responder_coverage(1.0) < 0.6  # pooled: the quiet genes set the multiplier
    assert 0.82 <= responder_coverage(factor) <= 0.98
    # no responders to separate: the factor stays 1
    assert fit_de_sigma_factor(control, control, sigma, control) == 1.0


def _observed_mean(adata, rows):
    from genailab.data import log_normalize

    return log_normalize(adata.X[rows].toarray()).mean(0)


def test_anchored_seen_single_is_its_observed_response(trained, adata):
    """composition='anchored': a trained single predicts the observed training response exactly."""
    anchors = trained.observed_singles
    assert anchors is not None
    assert sorted(anchors.keys) == [("g1", "A"), ("g1", "B"), ("g2", "A"), ("g2", "B")]  # g3 is validation
    ctrl = _rows(adata, "control", context="A")
    want = _observed_mean(adata, ctrl) + (_observed_mean(adata, _rows(adata, "g1", context="A"))
                                          - _observed_mean(adata, ctrl))  # fmt: skip
    shrunk = trained.predict_response(adata[ctrl].copy(), "g1", seed=0, max_controls=None)
    saved = anchors.stderr.copy()
    try:
        anchors.stderr[:] = 0.0  # a precisely measured single: exactly its observed response
        pred = trained.predict_response(adata[ctrl].copy(), "g1", seed=0, max_controls=None)
    finally:
        anchors.stderr[:] = saved
    np.testing.assert_allclose(pred.mean, want, atol=1e-4)  # no member has a say in an observed single's mean
    np.testing.assert_allclose(pred.members, np.broadcast_to(pred.members[0], pred.members.shape), atol=1e-4)
    assert (pred.sigma > 0).any()  # but their spread on it stays the uncertainty
    # 20 cells per condition: noisy genes are shrunk toward the decoded latent shift, never past it
    assert 0 < np.abs(shrunk.mean - want).max() < np.abs(want - shrunk.control_mean).max()
    # the double of two seen singles: their gene-space sum plus a (decoded) interaction, not the latent path
    double = trained.predict_response(adata[ctrl].copy(), "g1+g2", seed=0, max_controls=None)
    additive = want + _observed_mean(adata, _rows(adata, "g2", context="A")) - _observed_mean(adata, ctrl)
    latent = _model(adata, trained.vae, composition="latent")
    latent.nets, latent.base_shift = trained.nets, trained.base_shift
    plain = latent.predict_response(adata[ctrl].copy(), "g1+g2", seed=0, max_controls=None)
    truth = _observed_mean(adata, _rows(adata, "g1+g2", context="A"))
    assert np.abs(double.mean - truth).mean() < np.abs(plain.mean - truth).mean()
    assert np.abs(double.mean - truth).mean() < np.abs(additive - truth).mean() * 1.5  # near the additive sum
    # an unseen agent is not anchored: the plain latent path
    unseen = trained.predict_response(adata[_rows(adata, "control", context="B")].copy(), "g4", seed=0)
    assert np.isfinite(unseen.mean).all()
    assert (unseen.sigma > 0).any()


def test_observed_singles_round_trip_and_corruption(trained, tmp_path):
    from genailab.foundation.recipes.perturb.anchors import ObservedSingles

    d = trained.save_pretrained(tmp_path / "m")
    loaded = PerturbDeltaModel.from_pretrained(d)
    assert loaded.observed_singles.keys == trained.observed_singles.keys
    np.testing.assert_array_equal(loaded.observed_singles.responses, trained.observed_singles.responses)
    (d / "observed_singles.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="observed_singles"):
        PerturbDeltaModel.from_pretrained(d)
    o = trained.observed_singles
    bad = ObservedSingles(o.keys, o.responses[:, :3], o.shifts, o.stderr, o.n_cells)
    with pytest.raises(CheckpointError, match="expects"):
        bad.check_shapes(trained.vae.config.n_genes, trained.vae.config.latent_shape, where="test")
    with pytest.raises(InvalidInputError, match="composition='gene'"):
        PerturbDeltaConfig(composition="gene")
