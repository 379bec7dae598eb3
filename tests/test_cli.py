from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

from genailab.cli import main
from genailab.constants import ADATA_KEYS
from genailab.foundation.recipes import LatentTokenVAE

from .conftest import make_count_adata

FAST = ["--set", "train.max_epochs=2", "--set", "train.progress_bar=false", "--set", "preset=tiny"]


@pytest.fixture
def h5ad(tmp_path):
    path = tmp_path / "data.h5ad"
    make_count_adata().write_h5ad(path)
    return path


def test_help_everywhere(capsys):
    assert main([]) in (0, 2)  # no arguments shows the help (click exits 2 for that)
    for argv in (
        ["--help"],
        ["vae", "--help"],
        ["vae", "train", "--help"],
        ["vae", "encode", "--help"],
        ["demo", "--help"],
    ):
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "--batch-key" in out
    assert "--set" in out


def test_train_then_encode(h5ad, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "vae",
                "train",
                str(h5ad),
                "--out",
                str(run),
                "--batch-key",
                "batch",
                "--seed",
                "3",
                *FAST,
                "--set",
                "vae.n_tokens=2",
                "--set",
                "vae.likelihood=zinb",
            ]
        )
        == 0
    )
    summary = json.loads((run / "run.json").read_text())
    assert summary["seed"] == 3
    assert summary["config"]["data"]["batch_key"] == "batch"
    assert summary["model"]["n_tokens"] == 2
    assert summary["model"]["likelihood"] == "zinb"
    assert summary["versions"]["torch"].startswith("2.")
    assert "val_nll_per_cell" in summary["metrics"]
    for name in (
        "config.json",
        "model.safetensors",
        "genes.json",
        "registry.json",
        "split.json",
        "run_config.json",
    ):
        assert (run / name).is_file(), name
    model = LatentTokenVAE.from_pretrained(run)
    assert model.config.n_batches == 2

    out = tmp_path / "enc.h5ad"
    assert main(["vae", "encode", str(run), str(h5ad), "--out", str(out)]) == 0
    enc = ad.read_h5ad(out)
    assert enc.obsm[ADATA_KEYS.LATENT].shape == (96, 2 * 8)
    assert enc.obsm[ADATA_KEYS.LATENT_TOKENS].shape == (96, 2, 8)
    assert json.loads((tmp_path / "enc.h5ad.run.json").read_text())["n_obs"] == 96
    np.testing.assert_allclose(enc.obsm[ADATA_KEYS.LATENT_TOKENS], model.get_latent(enc, key=None), atol=1e-6)


def test_yaml_config_and_rerun_with_other_config_refused(h5ad, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: tiny\ntrain:\n  max_epochs: 1\n  progress_bar: false\nvae:\n  token_dim: 4\n")
    run = tmp_path / "run"
    assert main(["vae", "train", str(h5ad), "--out", str(run), "--config", str(cfg)]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["token_dim"] == 4
    assert main(["vae", "train", str(h5ad), "--out", str(run), "--config", str(cfg), "--seed", "5"]) == 2
    assert "different config" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--set", "train.nope=1"], "unknown config key 'train.nope'"),
        (["--set", "vae.bogus=1"], "unknown config key 'vae.bogus'"),
        (["--set", "vae.n_tokens=zero"], "must be an integer"),
        (["--batch-key", "donor"], "donor"),
        (["--layer", "counts"], "counts"),
    ],
)
def test_refused_input_exits_2_without_traceback(h5ad, tmp_path, capsys, extra, match):
    code = main(["vae", "train", str(h5ad), "--out", str(tmp_path / "r"), *FAST, *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert match in err.replace("\n", " ")
    assert "Traceback" not in err


def test_bad_counts_and_missing_files(tmp_path, capsys):
    bad = make_count_adata()
    bad.X = bad.X.toarray() * 0.5
    path = tmp_path / "bad.h5ad"
    bad.write_h5ad(path)
    assert main(["vae", "train", str(path), "--out", str(tmp_path / "r"), *FAST]) == 2
    assert "non-integer" in capsys.readouterr().err
    assert main(["vae", "train", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "r")]) == 2
    assert main(["vae", "encode", str(tmp_path / "nomodel"), str(path), "--out", str(tmp_path / "o.h5ad")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unwritable_output(h5ad, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["vae", "train", str(h5ad), "--out", str(blocker / "run"), *FAST]) == 2
    assert "cannot be written" in capsys.readouterr().err


def test_debug_shows_traceback(h5ad, tmp_path, capsys):
    assert main(["--debug", "vae", "train", str(h5ad), "--out", str(tmp_path / "r"), "--set", "bogus=1"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_backed_training_equals_in_memory(h5ad, tmp_path):
    """Streaming from disk (--backed) sees the same batches, so it trains to the same weights."""
    from safetensors.torch import load_file

    args = [
        "--set",
        "preset=tiny",
        "--set",
        "train.max_epochs=2",
        "--set",
        "train.progress_bar=false",
        "--set",
        "vae.dropout=0.0",
    ]
    assert main(["vae", "train", str(h5ad), "--out", str(tmp_path / "mem"), *args]) == 0
    assert main(["vae", "train", str(h5ad), "--out", str(tmp_path / "disk"), "--backed", *args]) == 0
    a = load_file(str(tmp_path / "mem" / "model.safetensors"))
    b = load_file(str(tmp_path / "disk" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
