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
    assert {"genailab", "no_change", "train_mean", "additive", "linear", "context_mean", "control_sd",
            "vae_oracle"} <= methods  # fmt: skip
    assert summary["warnings"]  # no library key: the report says row sums are used
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


# A short but real training budget (about a minute on 2 cores), and floors of its Pearson delta on the
# held-out 2/2-seen doubles: below a fully trained model, far above a stub or a broken pipeline (~0.05).
REAL = [
    "--set", "vae_train.max_epochs=30",
    "--set", "vae_train.progress_bar=false",
    "--set", "train.max_epochs=30",
    "--set", "train.progress_bar=false",
    "--set", "model.n_members=2",
    "--set", "model.mc_cells=500",
]  # fmt: skip
NORMAN_FLOOR = {"pearson_delta": 0.3, "pearson_delta_de20": 0.5}


@pytest.mark.real_data
def test_norman_combination_split_end_to_end(shared_data, tmp_path):
    data = shared_file(shared_data, "norman19_mcfaline23/norman19_mcfaline23_counts.h5ad")
    hallmark = shared_file(shared_data, "gene_sets/h.all.v7.5.1.symbols.gmt")
    grn = shared_file(shared_data, "grn/omnipath_TRRUST_subset_edges.tsv.gz")
    run = tmp_path / "run"
    argv = ["perturb", "train", str(data), "--context-key", "cell_type", "--split", "combo", "--seed", "0",
            "--library-key", "ncounts", "--gene-sets", str(hallmark), "--grn", str(grn), "--out", str(run),
            *REAL]  # fmt: skip
    assert main(argv) == 0
    held = json.loads((run / "run.json").read_text())["held_out"]
    assert set(held) == {"KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"}
    assert main(["perturb", "evaluate", str(run), str(data), "--out", str(tmp_path / "ev")]) == 0
    summary = json.loads((tmp_path / "ev" / "evaluate.json").read_text())
    rows = {r["method"]: r for r in summary["summary"]}
    assert rows["additive"]["n_queries"] == 5
    assert rows["genailab"]["n_queries"] == 5
    assert summary["library_key"] == "ncounts"
    assert not summary["warnings"]
    # a floor, not just finiteness: the 2/2-seen doubles' response is largely the sum of seen singles
    assert rows["genailab"]["pearson_delta_mean"] > NORMAN_FLOOR["pearson_delta"]
    assert rows["genailab"]["pearson_delta_de20_mean"] > NORMAN_FLOOR["pearson_delta_de20"]
    assert rows["additive"]["pearson_delta_de20_mean"] > 0.8  # the data and normalisation are sane


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


# ------------------------------------------------------------------ library key and k-fold splits
GMT_KFOLD = GMT + "\nS6\tna\tg4\tg3\tG13\tG14\tG15"


def _kfold_screen(n_per: int = 16, n_vars: int = 24, seed: int = 1):
    """Planted screen with four doubles (g4 only in a double) and a whole-transcriptome ``ncounts`` column."""
    import pandas as pd
    from scipy import sparse

    rng = np.random.default_rng(seed)
    effects = {
        "g1": (slice(0, 4), 3.0),
        "g2": (slice(4, 8), 3.0),
        "g3": (slice(8, 12), 0.25),
        "g4": (slice(12, 16), 3.0),
    }
    conditions = ("control", "g1", "g2", "g3", "g1+g2", "g1+g3", "g2+g3", "g3+g4")
    rows, labels, contexts, libs = [], [], [], []
    for ctx in ("A", "B"):
        base = rng.gamma(3.0, 1.0, n_vars)
        for cond in conditions:
            w = base.copy()
            for g in cond.split("+"):
                if g in effects:
                    w[effects[g][0]] *= effects[g][1]
            lib = rng.lognormal(np.log(300), 0.2, n_per)
            rows.append(rng.negative_binomial(8, 8 / (8 + w / w.sum() * lib[:, None])))
            labels += [cond] * n_per
            contexts += [ctx] * n_per
            libs.append(lib * 40)  # the matrix is a gene subset of a 40x larger transcriptome
    obs = pd.DataFrame({"condition": pd.Categorical(labels), "cell_type": pd.Categorical(contexts),
                        "ncounts": np.concatenate(libs)}, index=[f"c{i}" for i in range(len(labels))])  # fmt: skip
    var = pd.DataFrame(index=[f"G{j}" for j in range(n_vars)])
    return ad.AnnData(X=sparse.csr_matrix(np.vstack(rows).astype(np.float32)), obs=obs, var=var)


@pytest.fixture(scope="module")
def kfold_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kfold")
    data = tmp / "screen.h5ad"
    _kfold_screen().write_h5ad(data)
    gmt = tmp / "sets.gmt"
    gmt.write_text(GMT_KFOLD + "\n")
    return tmp, data, gmt


@pytest.fixture(scope="module")
def combo_kfold_run(kfold_files):
    tmp, data, gmt = kfold_files
    run = tmp / "combo_kfold"
    argv = ["perturb", "train", str(data), "--context-key", "cell_type", "--split", "combo_kfold",
            "--library-key", "ncounts", "--gene-sets", str(gmt), "--out", str(run), *FAST,
            "--set", "split_folds=2", "--set", "split_fold=1", "--set", "model.val_fraction=0.5"]  # fmt: skip
    assert main(argv) == 0
    return run


def test_combo_kfold_records_folds_seen_and_library_key(combo_kfold_run):
    split = json.loads((combo_kfold_run / "split.json").read_text())["params"]
    folds = split["folds"]
    assert split["fold"] == 1
    assert len(folds) == 2
    assert sorted(d for f in folds for d in f) == ["g1+g2", "g1+g3", "g2+g3", "g3+g4"]
    assert split["held_out"] == folds[1]
    assert split["seen"] == {d: ("1/2" if d == "g3+g4" else "2/2") for d in folds[1]}
    run = json.loads((combo_kfold_run / "run.json").read_text())
    assert run["seen"] == split["seen"]
    assert run["fold"] == 1
    assert run["library_key"] == "ncounts"
    assert not run["warnings"]
    cfg = json.loads((combo_kfold_run / "run_config.json").read_text())["config"]
    assert cfg["library_key"] == "ncounts"
    assert cfg["split_folds"] == 2
    assert json.loads((combo_kfold_run / "config.json").read_text())["config"]["library_key"] == "ncounts"


def test_evaluate_with_library_key_reports_by_seen(combo_kfold_run, kfold_files, tmp_path):
    _, data, _ = kfold_files
    rep = tmp_path / "ev"
    assert main(["perturb", "evaluate", str(combo_kfold_run), str(data), "--out", str(rep)]) == 0
    summary = json.loads((rep / "evaluate.json").read_text())
    assert summary["library_key"] == "ncounts"
    assert not summary["warnings"]
    seen = json.loads((combo_kfold_run / "run.json").read_text())["seen"]
    rows = summary["per_query"]
    assert {r["seen"] for r in rows} == set(seen.values())
    assert set(summary["by_seen"]) == set(seen.values())
    methods = {r["method"] for r in rows}
    assert {"genailab", "control_sd", "vae_oracle", "no_change", "additive", "train_mean"} <= methods
    # latent-additive needs both singles trained: only the 2/2-seen doubles
    assert {r["seen"] for r in rows if r["method"] == "latent_additive"} <= {"2/2"}
    assert {r["seen"] for r in rows if r["method"] == "additive"} <= {"2/2"}
    for row in summary["summary"]:
        if row["method"] == "genailab":
            assert np.isfinite(row["pearson_delta_mean"])
    # no-change carries the control cells: the energy distance has its reference
    assert all(r["e_distance"] is not None for r in rows if r["method"] == "no_change")
    assert "ceiling" in summary["settings"]["ceilings"]["vae_oracle"]
    assert (rep / "report.html").is_file()
    metrics = json.loads((rep / "metrics.json").read_text())
    assert all("seen" in r for r in metrics["per_query"])


def test_cell_eval_agrees_with_ours(combo_kfold_run, kfold_files, tmp_path):
    pytest.importorskip("cell_eval", reason="cell-eval (the [eval] extra) is not installed")
    _, data, _ = kfold_files
    rep = tmp_path / "ev"
    assert main(["perturb", "evaluate", str(combo_kfold_run), str(data), "--out", str(rep), "--cell-eval"]) == 0
    peer = json.loads((rep / "evaluate.json").read_text())["cell_eval"]
    rows = peer["per_query"]["genailab"]
    assert rows
    for row in rows:  # the same predicted cells, the same Pearson delta
        assert row["cell_eval_pearson_delta"] == pytest.approx(row["ours_pearson_delta_cells"], abs=1e-3)


def test_evaluate_without_library_key_warns_about_row_sums(combo_kfold_run, kfold_files, tmp_path):
    tmp, data, gmt = kfold_files
    run = tmp / "no_key"
    argv = ["perturb", "train", str(data), "--context-key", "cell_type", "--split", "single_kfold",
            "--gene-sets", str(gmt), "--out", str(run), *FAST, "--set", "split_folds=3",
            "--set", "split_fold=2"]  # fmt: skip
    assert main(argv) == 0
    run_info = json.loads((run / "run.json").read_text())
    assert any("ncounts" in w for w in run_info["warnings"])
    params = json.loads((run / "split.json").read_text())["params"]
    assert sorted(s for f in params["folds"] for s in f) == ["g1", "g2", "g3"]
    assert run_info["held_out"] == params["folds"][2]
    assert set(run_info["seen"].values()) == {"0/1"}


def test_context_pair_holds_out_one_pair_per_fold(kfold_files, tmp_path):
    _, data, gmt = kfold_files
    run = tmp_path / "pair"
    argv = ["perturb", "train", str(data), "--context-key", "cell_type", "--split", "context_pair",
            "--library-key", "ncounts", "--gene-sets", str(gmt), "--out", str(run), *FAST,
            "--set", "split_fold=3"]  # fmt: skip
    assert main(argv) == 0
    params = json.loads((run / "split.json").read_text())["params"]
    assert len(params["folds"]) == 14  # 7 perturbations x 2 contexts
    assert params["held_out_pairs"] == [params["folds"][3][0].split("@")]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--split", "combo_kfold", "--set", "split_fold=5"], "split_fold"),
        (["--split", "combo_kfold", "--set", "split_folds=1"], "split_folds"),
        (["--split", "combo_kfold", "--set", "split_folds=9"], "at least split_folds=9"),
        (["--split", "combo_kfold", "--holdout", "g1"], "--holdout"),
        (["--split", "context_pair", "--set", "split_fold=99"], "out of range"),
        (["--split", "combo_kfold", "--library-key", "nope"], "nope"),
    ],
)
def test_kfold_splits_refuse_bad_input(kfold_files, tmp_path, extra, match, capsys):
    _, data, gmt = kfold_files
    argv = ["perturb", "train", str(data), "--context-key", "cell_type", "--gene-sets", str(gmt),
            "--out", str(tmp_path / "r"), *FAST, *extra]  # fmt: skip
    assert main(argv) == 2
    assert match in capsys.readouterr().err
