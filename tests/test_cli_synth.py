from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

from genailab.cli import main
from genailab.constants import ADATA_KEYS

from .conftest import make_count_adata

FAST = [
    "--set",
    "vae_preset=tiny",
    "--set",
    "vae_train.max_epochs=2",
    "--set",
    "vae_train.progress_bar=false",
    "--set",
    "backbone_preset=tiny",
    "--set",
    "train.max_epochs=2",
    "--set",
    "train.progress_bar=false",
    "--set",
    "diffusion.steps=3",
    "--set",
    "diffusion.sampler=euler",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("synth")
    data = tmp / "data.h5ad"
    make_count_adata(n_obs=96, n_vars=24).write_h5ad(data)
    run = tmp / "run"
    code = main(
        [
            "synth",
            "train",
            str(data),
            "--out",
            str(run),
            "--condition-keys",
            "cell_type,batch",
            "--batch-key",
            "batch",
            *FAST,
        ]
    )
    assert code == 0
    return data, run


def test_train_writes_model_and_run_files(trained):
    _, run = trained
    for name in (
        "config.json",
        "model.safetensors",
        "backbone_config.json",
        "conditioning_config.json",
        "vae_source.json",
        "run.json",
        "run_config.json",
        "vae/config.json",
        "vae/model.safetensors",
    ):
        assert (run / name).is_file(), name
    summary = json.loads((run / "run.json").read_text())
    assert summary["config"]["condition_keys"] == ["cell_type", "batch"]
    assert summary["tuning"].startswith("freeze: 0 of")


def test_sample_conditions_like_counterfactual_evaluate(trained, tmp_path):
    data, run = trained
    syn = tmp_path / "syn.h5ad"
    assert (
        main(
            [
                "synth",
                "sample",
                str(run),
                "--n",
                "8",
                "--condition",
                "cell_type=type2",
                "--condition",
                "batch=b1",
                "--out",
                str(syn),
                "--steps",
                "3",
                "--guidance",
                "2",
            ]
        )
        == 0
    )
    a = ad.read_h5ad(syn)
    assert a.shape == (8, 24)
    assert set(a.obs["cell_type"]) == {"type2"}
    assert a.obsm[ADATA_KEYS.SYNTH_LATENT].shape[0] == 8
    assert json.loads((tmp_path / "syn.h5ad.run.json").read_text())["n_obs"] == 8

    like = tmp_path / "like.h5ad"
    assert (
        main(
            [
                "synth",
                "sample",
                str(run),
                "--like",
                str(data),
                "--out",
                str(like),
                "--guidance",
                "cell_type=2,batch=0",
            ]
        )
        == 0
    )
    b = ad.read_h5ad(like)
    assert b.n_obs == 96
    x = b.X.toarray()
    assert np.all(x == np.round(x))

    cf = tmp_path / "cf.h5ad"
    assert (
        main(
            [
                "synth",
                "counterfactual",
                str(run),
                str(data),
                "--set-condition",
                "batch=b0",
                "--out",
                str(cf),
                "--strength",
                "0.5",
            ]
        )
        == 0
    )
    c = ad.read_h5ad(cf)
    assert c.n_obs == 96
    assert set(c.obs["batch"]) == {"b0"}

    rep = tmp_path / "report"
    assert main(["synth", "evaluate", str(data), str(like), "--condition-key", "cell_type", "--out", str(rep)]) == 0
    assert (rep / "report.html").is_file()
    assert "overall" in json.loads((rep / "metrics.json").read_text())


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--n", "0", "--condition", "cell_type=type1", "--condition", "batch=b0"], "positive integer"),
        (
            [
                "--n",
                "3",
                "--condition",
                "tissue=x",
                "--condition",
                "cell_type=type1",
                "--condition",
                "batch=b0",
            ],
            "unknown condition key",
        ),
        (["--n", "3", "--condition", "cell_type=type9", "--condition", "batch=b0"], "type9"),
        (
            ["--n", "3", "--condition", "cell_type=type1", "--condition", "batch=b0", "--guidance", "nan"],
            "finite",
        ),
        (
            ["--n", "3", "--condition", "cell_type=type1", "--condition", "batch=b0", "--guidance", "lots"],
            "must be a number",
        ),
        (["--n", "3", "--condition", "cell_typetype1"], "key=value"),
    ],
)
def test_sample_bad_input(trained, tmp_path, capsys, argv, match):
    _, run = trained
    assert main(["synth", "sample", str(run), "--out", str(tmp_path / "o.h5ad"), *argv]) == 2
    assert match in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "o.h5ad").exists()


def test_like_reference_lacking_a_condition_column(trained, tmp_path, capsys):
    data, run = trained
    ref = ad.read_h5ad(data)
    del ref.obs["batch"]
    ref.write_h5ad(tmp_path / "ref.h5ad")
    assert (
        main(
            [
                "synth",
                "sample",
                str(run),
                "--like",
                str(tmp_path / "ref.h5ad"),
                "--out",
                str(tmp_path / "o.h5ad"),
            ]
        )
        == 2
    )
    assert "batch" in capsys.readouterr().err


def test_sampling_from_untrained_dir(tmp_path, capsys):
    (tmp_path / "never").mkdir()
    assert main(["synth", "sample", str(tmp_path / "never"), "--n", "3", "--out", str(tmp_path / "o.h5ad")]) == 2
    assert "incomplete" in capsys.readouterr().err


def test_evaluate_mismatched_genes(trained, tmp_path, capsys):
    data, _ = trained
    other = make_count_adata(n_obs=40, n_vars=20)
    other.var_names = [f"X{i}" for i in range(20)]
    other.write_h5ad(tmp_path / "other.h5ad")
    assert main(["synth", "evaluate", str(data), str(tmp_path / "other.h5ad"), "--out", str(tmp_path / "r")]) == 2
    assert "genes" in capsys.readouterr().err
