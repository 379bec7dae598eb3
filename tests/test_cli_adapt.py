"""``genailab synth adapt | synth distill | perturb adapt``: the pretrain-then-adapt workflow end to end."""

from __future__ import annotations

import json
import shutil

import anndata as ad
import numpy as np
import pytest
import torch

from genailab.cli import main
from genailab.errors import CheckpointError

from .conftest import make_count_adata, make_perturb_adata
from .test_cli_synth import FAST as SYNTH_FAST

ADAPT_FAST = ["--set", "train.max_epochs=2", "--set", "train.progress_bar=false", "--set", "train.val_fraction=0"]


@pytest.fixture(scope="module")
def synth_base(tmp_path_factory):
    """A tiny synthesis model on batches b0/b1 (condition keys cell_type, batch; no VAE batch key)."""
    tmp = tmp_path_factory.mktemp("adapt")
    full = make_count_adata(n_obs=144, n_vars=24, n_batches=3)
    base_data, new_data = tmp / "base.h5ad", tmp / "new.h5ad"
    batch = full.obs["batch"].astype(str).to_numpy()
    full[batch != "b2"].copy().write_h5ad(base_data)
    new = full[batch == "b2"].copy()
    new.obs["batch"] = new.obs["batch"].astype(str).replace({"b2": "donor_new"})
    new.write_h5ad(new_data)
    run = tmp / "base"
    argv = ["synth", "train", str(base_data), "--out", str(run), "--condition-keys", "cell_type,batch", *SYNTH_FAST]
    assert main(argv) == 0
    return tmp, run, new_data


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("lora", ["--set", "tuning.rank=2"]),
        ("adapter", ["--set", "tuning.adapter_dim=4"]),
        ("conditioning", []),
        ("partial", ["--set", "tuning.last_k=1"]),
        ("linear_probe", []),
        ("full", []),
    ],
)
def test_synth_adapt_each_method_saves_small_dir_that_samples_the_new_donor(synth_base, tmp_path, method, extra):
    tmp, base, new_data = synth_base
    out = tmp_path / method
    assert main(["synth", "adapt", str(base), str(new_data), "--tuning", method, "--out", str(out), *extra,
                 *ADAPT_FAST]) == 0  # fmt: skip
    info = json.loads((out / "adapter.json").read_text())
    assert info["base"]["path"] == str(base.resolve())
    assert info["new_categories"] == {"batch": ["donor_new"]}
    assert info["report"]["method"] == method
    assert not (out / "model.safetensors").exists()  # only the adapter weights are saved
    summary = json.loads((out / "run.json").read_text())
    assert summary["report"]["n_trainable"] == info["report"]["n_trainable"] > 0
    base_size = (base / "model.safetensors").stat().st_size
    if method != "full":
        assert (out / "adapter.safetensors").stat().st_size < base_size
    syn = tmp_path / "syn.h5ad"
    argv = ["synth", "sample", str(out), "--n", "6", "--condition", "cell_type=type0", "--condition",
            "batch=donor_new", "--out", str(syn)]  # fmt: skip
    assert main(argv) == 0
    s = ad.read_h5ad(syn)
    assert s.n_obs == 6
    assert set(s.obs["batch"].astype(str)) == {"donor_new"}


def test_adapted_model_reloads_identically_and_refuses_a_changed_base(synth_base, tmp_path):
    from genailab.foundation.recipes import LatentDiffusionModel, load_model

    tmp, base, new_data = synth_base
    base_copy = tmp_path / "base"
    shutil.copytree(base, base_copy)
    out = tmp_path / "lora"
    assert main(["synth", "adapt", str(base_copy), str(new_data), "--tuning", "lora", "--out", str(out),
                 *ADAPT_FAST]) == 0  # fmt: skip
    a = load_model(out, expected=LatentDiffusionModel)
    b = load_model(out, expected=LatentDiffusionModel)
    x = torch.randn(3, *a.vae.config.latent_shape)
    t = torch.full((3,), 0.5)
    cond = a.conditioning(torch.tensor([[0.0, 2.0]] * 3))
    assert torch.equal(a.backbone(x, t, cond), b.backbone(x, t, cond))
    assert a.adapter_info["report"]["method"] == "lora"
    # the adapter changed the base's output (trained LoRA weights are loaded, not the identity init)
    plain = LatentDiffusionModel.from_pretrained(base_copy)
    c0 = plain.conditioning(torch.tensor([[0.0, 1.0]] * 3))
    c1 = a.conditioning(torch.tensor([[0.0, 1.0]] * 3))
    assert not torch.allclose(plain.backbone(x, t, c0), a.backbone(x, t, c1))
    # a base whose weights changed is refused
    weights = base_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(CheckpointError, match="hash mismatch"):
        load_model(out, expected=LatentDiffusionModel)


def test_adapt_refuses_an_unknown_method_and_a_target_matching_nothing(synth_base, tmp_path, capsys):
    tmp, base, new_data = synth_base
    argv = ["synth", "adapt", str(base), str(new_data), "--tuning", "lorax", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "lorax" in capsys.readouterr().err
    argv = ["synth", "adapt", str(base), str(new_data), "--tuning", "lora", "--set", "tuning.targets=[nothing_here]",
            "--out", str(tmp_path / "y"), *ADAPT_FAST]  # fmt: skip
    assert main(argv) == 2
    assert "nothing_here" in capsys.readouterr().err


def test_synth_distill_student_is_smaller_and_samples(synth_base, tmp_path):
    from genailab.foundation.recipes import LatentDiffusionModel

    tmp, base, _ = synth_base
    out = tmp_path / "student"
    argv = ["synth", "distill", str(base), "--student-preset", "tiny", "--steps", "2", "--out", str(out),
            "--set", "distill.n_pairs=64", "--set", "distill.teacher_steps=4", *ADAPT_FAST]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "distill.json").read_text())
    assert record["teacher_dir"] == str(base.resolve())
    assert record["student"]["n_params"] <= record["teacher"]["n_params"]  # both tiny here
    student = LatentDiffusionModel.from_pretrained(out)
    assert student.config.steps == 2
    assert student.config.sampler == "euler"
    syn = tmp_path / "syn.h5ad"
    assert main(["synth", "sample", str(out), "--n", "4", "--condition", "cell_type=type1", "--condition",
                 "batch=b0", "--out", str(syn)]) == 0  # fmt: skip
    assert ad.read_h5ad(syn).n_obs == 4


# ------------------------------------------------------------------------------------ perturbation
PERTURB_FAST = [
    "--set", "vae_preset=tiny",
    "--set", "vae_train.max_epochs=2",
    "--set", "vae_train.progress_bar=false",
    "--set", "backbone_preset=tiny",
    "--set", "backbone_config.hidden_dim=32",
    "--set", "train.max_epochs=2",
    "--set", "train.progress_bar=false",
    "--set", "model.n_members=2",
    "--set", "model.cells_per_group=8",
    "--set", "model.mc_cells=200",
]  # fmt: skip


@pytest.fixture(scope="module")
def perturb_base(tmp_path_factory):
    """A perturbation model trained in context A only; the new data are context B's cells."""
    tmp = tmp_path_factory.mktemp("perturb_adapt")
    screen = make_perturb_adata()
    ctx = screen.obs["cell_type"].astype(str).to_numpy()
    base_data, new_data = tmp / "a.h5ad", tmp / "b.h5ad"
    screen[ctx == "A"].copy().write_h5ad(base_data)
    screen[ctx == "B"].copy().write_h5ad(new_data)
    run = tmp / "base"
    argv = ["perturb", "train", str(base_data), "--perturbation-key", "condition", "--context-key", "cell_type",
            "--split", "all", "--out", str(run), *PERTURB_FAST]  # fmt: skip
    assert main(argv) == 0
    return tmp, run, new_data


@pytest.mark.parametrize("method", ["conditioning", "lora", "full"])
def test_perturb_adapt_to_a_new_context_then_predict(perturb_base, tmp_path, method):
    from genailab.foundation.recipes import PerturbDeltaModel, load_model

    tmp, base, new_data = perturb_base
    out = tmp_path / method
    argv = ["perturb", "adapt", str(base), str(new_data), "--tuning", method, "--out", str(out),
            "--set", "train.max_epochs=2", "--set", "train.progress_bar=false"]  # fmt: skip
    assert main(argv) == 0
    info = json.loads((out / "adapter.json").read_text())
    assert info["kind"] == "perturbation"
    assert info["new_categories"] == {"cell_type": ["B"]}
    model = load_model(out, expected=PerturbDeltaModel)
    assert model.context_categories["cell_type"] == ("A", "B")
    if method == "lora":
        assert any("lora" in name for name, _ in model.nets[0].named_parameters())
    new = ad.read_h5ad(new_data)
    controls = new[new.obs["condition"].astype(str) == "control"].copy()
    pred = model.predict_response(controls, "g1", context={"cell_type": "B"}, seed=0)
    assert pred.mean.shape == (new.n_vars,)
    assert np.isfinite(pred.mean).all()
    assert pred.novelty["unseen_context"] is False


def test_perturb_adapt_refuses_distill(perturb_base, tmp_path, capsys):
    _, base, new_data = perturb_base
    argv = ["perturb", "adapt", str(base), str(new_data), "--tuning", "distill", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "synthesis" in capsys.readouterr().err
