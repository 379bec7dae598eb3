from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from genailab.constants import ADATA_KEYS, BATCH_KEYS
from genailab.data import DataSpec, make_dataloader
from genailab.errors import CheckpointError, GeneOverlapError, InvalidInputError, UnknownLabelError
from genailab.foundation.recipes import LatentTokenVAE, LatentTokenVAEConfig
from genailab.training import TrainConfig

from ..conftest import make_count_adata

FAST = TrainConfig(max_epochs=2, batch_size=32, progress_bar=False, early_stopping_patience=0)


def _model(adata, **over):
    return LatentTokenVAE.from_anndata(
        adata, DataSpec(batch_key="batch", cell_type_key="cell_type"), preset="tiny", overrides=over
    )


def _batch(model, adata):
    return next(iter(make_dataloader(model.count_dataset(adata), batch_size=16, shuffle=False)))


def test_config_validation_lists_choices():
    with pytest.raises(InvalidInputError, match="likelihood='gaussian'.*'nb'"):
        LatentTokenVAEConfig(n_genes=10, likelihood="gaussian")
    with pytest.raises(InvalidInputError, match="gene-condition"):
        LatentTokenVAEConfig(n_genes=10, dispersion="gene-condition")
    with pytest.raises(InvalidInputError, match="hidden_dims"):
        LatentTokenVAEConfig(n_genes=10, hidden_dims=())
    assert LatentTokenVAEConfig.base(20_000).latent_shape == (64, 256)


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
@pytest.mark.parametrize("dispersion", ["gene", "gene-cell", "gene-condition"])
def test_training_step_finite(tiny_adata, likelihood, dispersion):
    model = _model(tiny_adata, likelihood=likelihood, dispersion=dispersion)
    out = model.training_step(_batch(model, tiny_adata), epoch=0.5)
    assert torch.isfinite(out.loss)
    assert set(out.terms) == {"nll", "kl"}
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert 0 < out.metrics["kl_weight"] < 1  # warm-up in progress


def test_decoder_mean_scales_with_library(tiny_adata):
    model = _model(tiny_adata).eval()
    z = torch.randn(4, 4, 8)
    lib = torch.full((4, 1), 100.0)
    b = torch.zeros(4, dtype=torch.long)
    m1, m2 = model.decode(z, lib, b).mean, model.decode(z, 3 * lib, b).mean
    torch.testing.assert_close(m2, 3 * m1)
    torch.testing.assert_close(m1.sum(1), lib.squeeze(1))


def test_fit_calibrate_latent_and_round_trip(tiny_adata, tmp_path):
    model = _model(tiny_adata)
    result = model.fit(tiny_adata, FAST, out_dir=tmp_path / "run", seed=1)
    assert result.epochs == 2
    assert result.steps > 0
    assert result.best_val_loss is not None
    assert bool(model.calibrated)
    z = model.get_latent(tiny_adata, standardize=True)
    assert z.shape == (96, 4, 8)
    assert tiny_adata.obsm[ADATA_KEYS.LATENT].shape == (96, 32)
    assert tiny_adata.obsm[ADATA_KEYS.LATENT_TOKENS].shape == (96, 4, 8)
    np.testing.assert_allclose(z.reshape(96, -1).mean(0), 0, atol=0.35)  # standardised scale
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "run" / "logs" / "version_0" / "metrics.csv").is_file()

    model.save_pretrained(tmp_path / "m")
    loaded = LatentTokenVAE.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    assert loaded.genes == model.genes
    assert loaded.registry.categories == model.registry.categories
    np.testing.assert_allclose(
        loaded.get_latent(tiny_adata, key=None), model.get_latent(tiny_adata, key=None), atol=1e-6
    )
    torch.testing.assert_close(loaded.latent_std, model.latent_std)


def test_resume_continues_from_last_checkpoint(tiny_adata, tmp_path):
    torch.manual_seed(0)
    model = _model(tiny_adata)
    model.fit(tiny_adata, FAST, out_dir=tmp_path, seed=0)
    more = FAST.replace(max_epochs=4)
    result = _model(tiny_adata).fit(tiny_adata, more, out_dir=tmp_path, seed=0)
    assert result.resumed_from is not None
    assert result.epochs == 4
    # the history covers both segments (it travels in the checkpoint)
    assert [int(h["epoch"]) for h in result.history] == [0, 1, 2, 3]
    # the first segment's metrics survive the resume, and only the two remaining epochs ran
    assert (tmp_path / "logs" / "version_0" / "metrics.csv").is_file()
    second = pd.read_csv(tmp_path / "logs" / "version_1" / "metrics.csv")
    assert set(second["epoch"].dropna().astype(int)) == {2, 3}


def test_posterior_sampling_and_reconstruction(tiny_adata):
    model = _model(tiny_adata)
    model.calibrate(make_dataloader(model.count_dataset(tiny_adata), batch_size=32, shuffle=False))
    draws = model.sample_posterior(tiny_adata, n_samples=3, seed=0)
    assert draws.shape == (3, 96, 4, 8)
    rec = model.reconstruct(tiny_adata, sample=True, seed=0)
    assert rec.shape == (96, 32)
    assert np.all(rec == np.round(rec))
    assert rec.min() >= 0
    z_std = torch.zeros(3, 4, 8)
    lib = model.sample_library(torch.tensor([0, 1, -1]), 3, torch.Generator().manual_seed(0), z_std=z_std)
    assert lib.shape == (3, 1)
    assert (lib >= 1).all()
    with pytest.raises(InvalidInputError, match="z_std"):
        model.sample_library(torch.tensor([0, 1, -1]), 3)


@pytest.mark.parametrize("library_model", ["latent", "batch"])
def test_library_model_follows_cell_state(library_model):
    """Type-0 cells have 8x the library of the others: the latent library model gives generated type-0
    cells their large libraries; the per-batch model cannot tell the types apart."""
    adata = make_count_adata(n_obs=240, seed=4)
    is0 = (adata.obs["cell_type"] == "type0").to_numpy()
    x = adata.X.toarray()
    x[is0] = np.random.default_rng(0).poisson(x[is0] * 8.0)
    adata.X = type(adata.X)(x)
    model = _model(adata, library_model=library_model)
    model.fit(adata, train=TrainConfig(max_epochs=3, batch_size=64, progress_bar=False, early_stopping_patience=0))
    assert hasattr(model, "library_weight") == (library_model == "latent")
    z_std = torch.as_tensor(model.get_latent(adata, key=None, standardize=True))
    lib = model.sample_library(None, adata.n_obs, torch.Generator().manual_seed(0), z_std=z_std).view(-1).log()
    gap = float(lib[torch.as_tensor(is0)].mean() - lib[torch.as_tensor(~is0)].mean())  # true gap: log 8 = 2.08
    if library_model == "latent":
        assert gap > 1.2
    else:
        assert abs(gap) < 0.5


def test_config_without_library_model_loads_as_batch():
    legacy = LatentTokenVAEConfig(n_genes=10).to_dict()
    del legacy["library_model"]
    assert LatentTokenVAEConfig.from_dict(legacy).library_model == "batch"
    assert LatentTokenVAEConfig(n_genes=10).library_model == "latent"
    with pytest.raises(InvalidInputError, match="library_model='cell'"):
        LatentTokenVAEConfig(n_genes=10, library_model="cell")


def test_unknown_batch_label_policy(tiny_adata):
    model = _model(tiny_adata)
    new = make_count_adata(n_obs=8, seed=3)
    new.obs["batch"] = new.obs["batch"].cat.rename_categories({"b0": "b9"})
    with pytest.raises(UnknownLabelError, match="b9"):
        model.get_latent(new)
    z = model.get_latent(new, unknown="unknown", key=None)
    assert z.shape == (8, 4, 8)


def test_gene_alignment_zero_fills_missing_genes(tiny_adata):
    model = _model(tiny_adata)
    sub = tiny_adata[:, 4:].copy()  # 28 of 32 model genes present
    z = model.get_latent(sub, key=None)
    assert z.shape == (96, 4, 8)
    with pytest.raises(GeneOverlapError):
        model.get_latent(tiny_adata[:, :4].copy(), key=None)  # 12.5% < 50% default overlap


def test_corrupt_or_foreign_checkpoints_are_refused(tiny_adata, tmp_path):
    model = _model(tiny_adata)
    d = model.save_pretrained(tmp_path / "m")
    # truncated weights
    w = d / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        LatentTokenVAE.from_pretrained(d)
    w.write_bytes(data)
    LatentTokenVAE.from_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    # foreign class
    (d / "config.json").write_text(json.dumps({**cfg, "_class_name": "DiT"}))
    with pytest.raises(CheckpointError, match="holds a 'DiT'"):
        LatentTokenVAE.from_pretrained(d)
    # newer library version
    (d / "config.json").write_text(json.dumps({**cfg, "_genailab_version": "9.0.0"}))
    with pytest.raises(CheckpointError, match="cannot load"):
        LatentTokenVAE.from_pretrained(d)
    # not a genailab file at all / truncated json
    (d / "config.json").write_text('{"architectures": ["BertForMaskedLM"]}')
    with pytest.raises(CheckpointError, match="not a genailab config"):
        LatentTokenVAE.from_pretrained(d)
    (d / "config.json").write_text(json.dumps(cfg)[:20])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        LatentTokenVAE.from_pretrained(d)
    # mismatched shapes: config claims more genes than the weights have
    cfg["config"]["n_genes"] = 33
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError):
        LatentTokenVAE.from_pretrained(d)
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        LatentTokenVAE.from_pretrained(d)
    with pytest.raises(CheckpointError, match="does not exist"):
        LatentTokenVAE.from_pretrained(tmp_path / "nothing")


def test_genes_must_match_config():
    with pytest.raises(InvalidInputError, match="genes has 3 entries"):
        LatentTokenVAE(LatentTokenVAEConfig.tiny(4), genes=["a", "b", "c"])
    with pytest.raises(InvalidInputError, match="unique"):
        LatentTokenVAE(LatentTokenVAEConfig.tiny(2), genes=["a", "a"])


def test_bf16_autocast_forward(tiny_adata):
    model = _model(tiny_adata)
    batch = _batch(model, tiny_adata)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.training_step(batch)
    assert torch.isfinite(out.loss)
    assert BATCH_KEYS.COUNTS in batch


def test_seeded_evaluation_leaves_the_global_rng_alone(tiny_adata):
    model = _model(tiny_adata)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model.reconstruct(tiny_adata, sample=True, seed=7)
    model.evaluate_nll(tiny_adata, seed=7)
    torch.testing.assert_close(torch.rand(3), expected)
    a = model.reconstruct(tiny_adata, sample=True, seed=7)
    np.testing.assert_array_equal(a, model.reconstruct(tiny_adata, sample=True, seed=7))
