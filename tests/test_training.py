from __future__ import annotations

import pytest
import torch

from genailab.data import DataSpec, make_dataloader
from genailab.errors import InvalidInputError
from genailab.foundation.recipes import LatentTokenVAE
from genailab.training import TrainConfig, fit_recipe

from .conftest import make_count_adata


def test_train_config_validation():
    with pytest.raises(InvalidInputError, match="precision='fp8'"):
        TrainConfig(precision="fp8")
    with pytest.raises(InvalidInputError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(InvalidInputError, match="val_fraction"):
        TrainConfig(val_fraction=1.0)


def test_frozen_recipe_is_refused():
    adata = make_count_adata(n_obs=32, n_vars=16)
    model = LatentTokenVAE.from_anndata(adata, DataSpec(), preset="tiny")
    for p in model.parameters():
        p.requires_grad_(False)
    loader = make_dataloader(model.count_dataset(adata), batch_size=16)
    with pytest.raises(InvalidInputError, match="no trainable parameters"):
        fit_recipe(model, loader, None, TrainConfig(max_epochs=1, progress_bar=False))


def test_bf16_mixed_precision_trains():
    adata = make_count_adata(n_obs=32, n_vars=16)
    model = LatentTokenVAE.from_anndata(adata, DataSpec(), preset="tiny")
    loader = make_dataloader(model.count_dataset(adata), batch_size=16)
    cfg = TrainConfig(max_epochs=1, progress_bar=False, precision="bf16-mixed", accelerator="cpu")
    result = fit_recipe(model, loader, None, cfg)
    assert result.steps == 2
    assert result.final_train_loss is not None
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.slow
def test_ddp_spawn_two_cpu_processes_shard_the_data(tmp_path):
    adata = make_count_adata(n_obs=64, n_vars=16)
    model = LatentTokenVAE.from_anndata(adata, DataSpec(), preset="tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = make_dataloader(model.count_dataset(adata), batch_size=16, shuffle=True)
    cfg = TrainConfig(
        max_epochs=1,
        progress_bar=False,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        early_stopping_patience=0,
    )
    result = fit_recipe(model, loader, None, cfg, out_dir=tmp_path)
    # 64 cells / 2 ranks / 16 per batch = 2 steps per rank (unsharded would be 4)
    assert result.steps == 2
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights came back
