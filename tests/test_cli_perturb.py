from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

from genailab.cli import main

from .conftest import make_perturb_adata, shared_file

FAST = [
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
    "--set", "prior_components=2",
]  # fmt: skip

GMT = "\n".join(
    [
        "S1\tna\tg1\tg4\tG0\tG1",
        "S2\tna\tg2\tG4\tG5",
        "S3\tna\tg3\tG8\tG9\tg4",
        "S4\tna\tg1\tg2\tG2",
        "S5\tna\tG10\tG11\tG12",
    ]
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("perturb")
    data = tmp / "screen.h5ad"
    make_perturb_adata().write_h5ad(data)
    gmt = tmp / "sets.gmt"
    gmt.write_text(GMT + "\n")
    return tmp, data, gmt


@pytest.fixture(scope="module")
def trained(files):
    tmp, data, gmt = files
    run = tmp / "run"
    argv = ["perturb", "train", str(data), "--perturbation-key", "condition", "--control", "control",
            "--context-key", "cell_type", "--holdout", "g3", "--holdout", "g2@B", "--gene-sets", str(gmt),
            "--out", str(run), *FAST]  # fmt: skip
    assert main(argv) == 0
    return run


def test_train_writes_model_split_and_run_files(trained):
    for name in ("config.json", "member_0.safetensors", "member_1.safetensors", "perturbation.json",
                 "calibration.json", "gene_priors.json", "split.json", "run.json", "run_config.json",
                 "vae/config.json", "member_0/checkpoints/last.ckpt"):  # fmt: skip
        assert (trained / name).exists(), name
    run = json.loads((trained / "run.json").read_text())
    assert run["held_out"] == ["g3"]
    assert run["held_out_pairs"] == [["g2", "B"]]
    assert run["n_frozen_parameters"] > 0
    assert run["n_trainable_parameters"] > 0
    split = json.loads((trained / "split.json").read_text())
    assert split["params"]["val_kind"] == "agent"


def test_predict_and_evaluate(trained, files, tmp_path):
    _, data, _ = files
    adata = ad.read_h5ad(data)
    controls = adata[(adata.obs["condition"] == "control") & (adata.obs["cell_type"] == "B")].copy()
    controls.write_h5ad(tmp_path / "ctrl.h5ad")
    out = tmp_path / "pred.h5ad"
    argv = ["perturb", "predict", str(trained), "--controls", str(tmp_path / "ctrl.h5ad"),
            "--perturbation", "g1+g3", "--context", "B", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    pred = ad.read_h5ad(out)
    assert pred.n_obs == controls.n_obs
    assert {"mean", "lower_90", "upper_90"} <= set(pred.layers)
    assert "ood_score" in pred.obs
    assert pred.uns["genailab_perturb"]["unseen_agents"] == ["g3"]
    assert json.loads((tmp_path / "pred.h5ad.json").read_text())["n_cells"] == controls.n_obs
    rep = tmp_path / "report"
    assert main(["perturb", "evaluate", str(trained), str(data), "--out", str(rep)]) == 0
    summary = json.loads((rep / "evaluate.json").read_text())
    assert summary["n_queries"] == 3  # g3 in A and B, g2 in B
    methods = {row["method"] for row in summary["summary"]}
    assert {"genailab", "no_change", "train_mean", "additive", "linear", "context_mean"} <= methods
    assert "coverage_90" in summary["uncertainty"]["genailab"]
    assert (rep / "report.html").is_file()
    assert (rep / "metrics.json").is_file()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--control", "ctrl"], "ctrl"),
        (["--holdout", "g9"], "matches no cells"),
        (["--holdout", "g1@Z"], "matches no cells"),
        (["--split", "sideways"], "split"),
    ],
)
def test_train_refuses_bad_input(files, tmp_path, extra, match, capsys):
    _, data, gmt = files
    argv = ["perturb", "train", str(data), "--context-key", "cell_type", "--gene-sets", str(gmt),
            "--out", str(tmp_path / "r"), *FAST, *extra]  # fmt: skip
    if "--holdout" not in extra and "--split" not in extra:
        argv += ["--holdout", "g3"]
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_pair_holdout_needs_a_context_key(files, tmp_path, capsys):
    _, data, gmt = files
    argv = ["perturb", "train", str(data), "--holdout", "g1@A", "--out", str(tmp_path / "r"), *FAST]
    assert main(argv) == 2
    assert "--context-key" in capsys.readouterr().err


def test_unseen_agent_without_priors_is_refused(files, tmp_path, capsys):
    _, data, _ = files
    argv = ["perturb", "train", str(data), "--context-key", "cell_type", "--holdout", "g3",
            "--out", str(tmp_path / "r"), *FAST]  # fmt: skip
    assert main(argv) == 2
    assert "no prior features" in capsys.readouterr().err


def test_predict_refuses_bad_queries(trained, files, tmp_path, capsys):
    _, data, _ = files
    adata = ad.read_h5ad(data)
    ctrl = adata[(adata.obs["condition"] == "control") & (adata.obs["cell_type"] == "A")].copy()
    del ctrl.obs["cell_type"]
    ctrl.write_h5ad(tmp_path / "c.h5ad")
    base = [
        "perturb",
        "predict",
        str(trained),
        "--controls",
        str(tmp_path / "c.h5ad"),
        "--out",
        str(tmp_path / "p.h5ad"),
    ]
    assert main([*base, "--perturbation", "BOGUS", "--context", "A"]) == 2
    assert "BOGUS" in capsys.readouterr().err
    assert main([*base, "--perturbation", "g1", "--context", "NEW"]) == 2
    assert "--allow-ood" in capsys.readouterr().err
    assert main([*base, "--perturbation", "g1", "--context", "NEW", "--allow-ood"]) == 0
    assert ad.read_h5ad(tmp_path / "p.h5ad").uns["genailab_perturb"]["ood"]


def test_evaluate_refuses_other_data(trained, tmp_path, capsys):
    other = make_perturb_adata(n_per=10)
    other.write_h5ad(tmp_path / "o.h5ad")
    assert main(["perturb", "evaluate", str(trained), str(tmp_path / "o.h5ad"), "--out", str(tmp_path / "e")]) == 2
    assert "trained on" in capsys.readouterr().err


@pytest.mark.real_data
def test_norman_combination_split_end_to_end(shared_data, tmp_path):
    data = shared_file(shared_data, "norman19_mcfaline23/norman19_mcfaline23_counts.h5ad")
    hallmark = shared_file(shared_data, "gene_sets/h.all.v7.5.1.symbols.gmt")
    grn = shared_file(shared_data, "grn/omnipath_TRRUST_subset_edges.tsv.gz")
    run = tmp_path / "run"
    argv = ["perturb", "train", str(data), "--context-key", "cell_type", "--split", "combo", "--seed", "0",
            "--gene-sets", str(hallmark), "--grn", str(grn), "--out", str(run), *FAST]  # fmt: skip
    assert main(argv) == 0
    held = json.loads((run / "run.json").read_text())["held_out"]
    assert set(held) == {"KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"}
    assert main(["perturb", "evaluate", str(run), str(data), "--out", str(tmp_path / "ev")]) == 0
    summary = json.loads((tmp_path / "ev" / "evaluate.json").read_text())
    rows = {r["method"]: r for r in summary["summary"]}
    assert rows["additive"]["n_queries"] == 5
    assert rows["genailab"]["n_queries"] == 5
    assert np.isfinite(rows["genailab"]["pearson_delta_de20_mean"])


def test_chemical_screen_with_smiles_and_doses(tmp_path):
    pytest.importorskip("rdkit", reason="RDKit (the [chem] extra) is not installed")
    from .foundation.test_compounds import SMILES, _chemical_screen

    adata = _chemical_screen()
    adata.write_h5ad(tmp_path / "chem.h5ad")
    smiles = tmp_path / "smiles.tsv"
    smiles.write_text("name\tsmiles\n" + "".join(f"{k}\t{v}\n" for k, v in SMILES.items()))
    run = tmp_path / "run"
    argv = ["perturb", "train", str(tmp_path / "chem.h5ad"), "--holdout", "caffeine", "--smiles", str(smiles),
            "--dose-key", "dose", "--set", "model.encoder=compound", "--out", str(run), *FAST]  # fmt: skip
    assert main(argv) == 0
    ctrl = adata[adata.obs["condition"] == "control"].copy()
    ctrl.write_h5ad(tmp_path / "ctrl.h5ad")
    out = tmp_path / "p.h5ad"
    argv = ["perturb", "predict", str(run), "--controls", str(tmp_path / "ctrl.h5ad"), "--perturbation", "caffeine",
            "--dose", "10", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    info = ad.read_h5ad(out).uns["genailab_perturb"]
    assert info["dose"] == "10"
    assert info["unseen_agents"] == ["caffeine"]
