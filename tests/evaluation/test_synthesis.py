"""evaluate_synthesis / write_synthesis_report on tiny NB count data with a known truth."""

from __future__ import annotations

import json
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from genailab.errors import GeneOverlapError, InvalidCountsError, InvalidInputError, MissingKeyError
from genailab.evaluation.reports import write_synthesis_report
from genailab.evaluation.synthesis import evaluate_synthesis, pca_embed

METRICS = ("mmd", "energy", "w1", "classifier_auc")


def make_cells(seed: int, *, shift: float = 0.0, n: int = 200, n_genes: int = 50) -> ad.AnnData:
    """NB counts from 3 condition programs shared by every draw; ``shift`` perturbs per-gene means."""
    programs_rng = np.random.default_rng(123)
    programs = programs_rng.gamma(2.0, 1.0, size=(3, n_genes))
    gene_shift = np.exp(shift * programs_rng.normal(size=n_genes))
    rng = np.random.default_rng(seed)
    cond = rng.integers(0, 3, n)
    p = programs[cond] * gene_shift
    mu = p / p.sum(1, keepdims=True) * rng.lognormal(np.log(500), 0.3, n)[:, None]
    counts = rng.negative_binomial(5, 5 / (5 + mu)).astype(np.float32)
    obs = pd.DataFrame({"cond": pd.Categorical([f"c{c}" for c in cond])}, index=[f"d{seed}_{i}" for i in range(n)])
    var = pd.DataFrame(index=[f"G{j}" for j in range(n_genes)])
    return ad.AnnData(sparse.csr_matrix(counts), obs=obs, var=var)


@pytest.fixture(scope="module")
def real():
    return make_cells(0)


@pytest.fixture(scope="module")
def syn_same():
    return make_cells(1)


@pytest.fixture(scope="module")
def same(real, syn_same):
    return evaluate_synthesis(real, syn_same, condition_key="cond", seed=0)


@pytest.fixture(scope="module")
def shifted(real):
    return evaluate_synthesis(real, make_cells(1, shift=0.5), condition_key="cond", seed=0)


@pytest.fixture(scope="module")
def plain(real, syn_same):
    return evaluate_synthesis(real, syn_same, seed=0, n_pcs=10)


def test_same_generator_scores_like_the_floor(same):
    for name in METRICS:
        entry = same["overall"][name]
        assert set(entry) == {"synthetic", "floor", "ratio"}
        assert 0.6 < entry["ratio"] < 1.6, (name, entry)
    assert abs(same["overall"]["classifier_auc"]["synthetic"] - 0.5) < 0.2
    assert same["overall"]["composition_matched"] is True
    marg = same["marginals"]
    assert marg["log1p_mean_corr"]["synthetic"] > 0.9
    assert abs(marg["mean_var_slope"]["synthetic_diff"]) < 0.2
    assert same["fidelity"]["synthetic"]["accuracy"] > 0.9
    assert same["fidelity"]["floor"]["accuracy"] > 0.9


def test_shifted_generator_scores_worse(same, shifted):
    for name in METRICS:
        assert shifted["overall"][name]["ratio"] > same["overall"][name]["ratio"], name
        for cond, scope in shifted["per_condition"].items():
            assert scope[name]["synthetic"] > scope[name]["floor"], (cond, name)
    assert shifted["overall"]["mmd"]["ratio"] > 3
    assert shifted["overall"]["classifier_auc"]["synthetic"] > 0.85
    marg_same, marg_shift = same["marginals"], shifted["marginals"]
    assert marg_shift["log1p_mean_corr"]["synthetic"] < marg_same["log1p_mean_corr"]["synthetic"]
    # syn has at least |B_c| cells per condition, so the floor uses all of B and does not depend on syn.
    assert shifted["overall"]["mmd"]["floor"] == same["overall"]["mmd"]["floor"]


def test_result_structure_and_json(same):
    assert set(same) >= {
        "overall",
        "per_condition",
        "marginals",
        "fidelity",
        "settings",
        "skipped_conditions",
    }
    assert set(same["per_condition"]) == {"c0", "c1", "c2"}
    for scope in same["per_condition"].values():
        assert set(METRICS) <= set(scope)
        assert scope["n_real"] >= 10
        assert scope["n_syn"] >= 10
    settings = same["settings"]
    assert settings["n_pcs"] == 30
    assert settings["n_real"] == 200
    assert settings["n_syn"] == 200
    assert settings["n_real_fit"] + settings["n_real_a"] + settings["n_real_b"] == 200
    assert abs(settings["n_real_a"] - settings["n_real_b"]) <= 1
    assert "median" in settings["bandwidth_rule"]
    assert same["skipped_conditions"] == []
    assert same["composition"]["total_variation"] < 0.2
    json.dumps(same, allow_nan=False)


def test_deterministic(real, syn_same, plain):
    assert evaluate_synthesis(real, syn_same, seed=0, n_pcs=10) == plain


def test_genes_in_another_order_are_reordered(real, syn_same, plain):
    perm = np.random.default_rng(5).permutation(syn_same.n_vars)
    shuffled = syn_same[:, perm].copy()
    assert list(shuffled.var_names) != list(real.var_names)
    assert evaluate_synthesis(real, shuffled, seed=0, n_pcs=10) == plain


def test_dense_counts_match_sparse(real, syn_same, plain):
    syn = syn_same.copy()
    syn.X = syn.X.toarray()
    out = evaluate_synthesis(real, syn, seed=0, n_pcs=10)
    assert out["overall"] == plain["overall"]
    for name, entry in plain["marginals"].items():  # sparse and dense sums differ in the last bits
        assert out["marginals"][name] == pytest.approx(entry, rel=1e-9, abs=1e-12), name


def test_layer_is_used_for_both(real, syn_same, plain):
    r, s = real.copy(), syn_same.copy()
    for a in (r, s):
        a.layers["counts"] = a.X.copy()
        a.X = sparse.csr_matrix(np.log1p(a.X.toarray()))
    assert evaluate_synthesis(r, s, layer="counts", seed=0, n_pcs=10)["overall"] == plain["overall"]
    with pytest.raises(MissingKeyError, match="syn"):
        evaluate_synthesis(r, syn_same, layer="counts")


def test_small_conditions_are_skipped_and_listed(real, syn_same):
    syn = syn_same.copy()
    cond = syn.obs["cond"].astype(str).to_numpy()
    cond[:3] = "rare"
    syn.obs["cond"] = pd.Categorical(cond)
    out = evaluate_synthesis(real, syn, condition_key="cond", seed=0, n_pcs=10)
    assert [s["condition"] for s in out["skipped_conditions"]] == ["rare"]
    assert out["skipped_conditions"][0]["n_real"] == 0
    assert "rare" not in out["per_condition"]
    assert out["fidelity"]["n_syn_unseen_label"] == 3


def test_gene_mismatch_raises(real, syn_same):
    syn = syn_same.copy()
    syn.var_names = [*syn.var_names[:-2], "X1", "X2"]
    with pytest.raises(GeneOverlapError, match=r"2 of real's genes.*G48.*2 genes of syn.*X1"):
        evaluate_synthesis(real, syn)


def test_missing_condition_key_names_both_objects(real, syn_same):
    syn = syn_same.copy()
    syn.obs = syn.obs.rename(columns={"cond": "condition"})
    with pytest.raises(MissingKeyError, match=r"syn\.obs.*columns.*'condition'.*real\.obs and syn\.obs"):
        evaluate_synthesis(real, syn, condition_key="cond")
    with pytest.raises(MissingKeyError, match=r"real\.obs"):
        evaluate_synthesis(real, syn, condition_key="condition")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_pcs": 0}, "n_pcs"), ({"min_cells": 2}, "min_cells"), ({"seed": -1}, "seed")],
)
def test_argument_validation(real, syn_same, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        evaluate_synthesis(real, syn_same, **kwargs)


def test_negative_counts_rejected(real, syn_same):
    syn = syn_same.copy()
    syn.X = syn.X.toarray() - 1.0
    with pytest.raises(InvalidCountsError, match="syn"):
        evaluate_synthesis(real, syn)


def test_pca_embed_is_the_evaluation_split(real, syn_same):
    emb = pca_embed(real, syn_same, condition_key="cond", n_pcs=5)
    assert emb.z_real.shape == (200, 5)
    assert emb.z_syn.shape == (200, 5)
    parts = np.concatenate([emb.fit_idx, emb.a_idx, emb.b_idx])
    assert sorted(parts.tolist()) == list(range(200))  # disjoint thirds covering every real cell
    assert np.allclose(emb.z_real[emb.fit_idx].mean(0), 0, atol=1e-5)  # PCA centred on part F only
    assert not np.allclose(emb.z_real[emb.held_out_idx].mean(0), 0, atol=1e-5)
    cond = real.obs["cond"].astype(str).to_numpy()
    for value in np.unique(cond):  # stratified: each part holds about a third of each condition
        counts = [int((cond[idx] == value).sum()) for idx in (emb.fit_idx, emb.a_idx, emb.b_idx)]
        assert max(counts) - min(counts) <= 2


def test_report_writes_json_and_html(tmp_path, real, syn_same, same):
    path = write_synthesis_report(tmp_path / "rep", real, syn_same, same, condition_key="cond", embedding="pca")
    assert path == tmp_path / "rep" / "report.html"
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text()) == same
    text = path.read_text()
    assert "<table" in text
    assert text.count("<img") >= 3
    assert "real-vs-real floor" in text
    assert "How to read this" in text
    assert "c2" in text


def test_report_falls_back_to_pca_without_umap(tmp_path, monkeypatch, real, syn_same, plain):
    monkeypatch.setitem(sys.modules, "umap", None)  # makes `import umap` raise ImportError
    path = write_synthesis_report(tmp_path, real, syn_same, plain, embedding="umap")
    assert "umap-learn could not be imported" in path.read_text()


def test_report_rejects_unknown_embedding(tmp_path, real, syn_same, plain):
    with pytest.raises(InvalidInputError, match="embedding"):
        write_synthesis_report(tmp_path, real, syn_same, plain, embedding="tsne")
