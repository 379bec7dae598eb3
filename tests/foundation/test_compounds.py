from __future__ import annotations

import builtins

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from genailab.errors import InvalidInputError, MissingKeyError
from genailab.foundation.perturbation import compound_priors, read_smiles
from genailab.foundation.recipes import LatentTokenVAE, PerturbDeltaConfig, PerturbDeltaModel
from genailab.training import TrainConfig

pytest.importorskip("rdkit", reason="RDKit (the [chem] extra) is not installed")

SMILES = {
    "aspirin": "CC(=O)OC1=CC=CC=C1C(=O)O",
    "salicylic": "OC(=O)C1=CC=CC=C1O",
    "caffeine": "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
}
FAST = TrainConfig(max_epochs=2, batch_size=64, progress_bar=False, early_stopping_patience=0, val_fraction=0.0)


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_fingerprints_reflect_structure():
    pri = compound_priors(SMILES, n_bits=512)
    assert pri.genes == ("aspirin", "caffeine", "salicylic")
    assert pri.dim == 512
    f, has = pri.lookup(["aspirin", "salicylic", "caffeine", "unknown"])
    assert has.tolist() == [True, True, True, False]
    assert set(np.unique(f)) <= {0.0, 1.0}
    assert _cos(f[0], f[1]) > _cos(f[0], f[2])


def test_bad_smiles_and_missing_rdkit(monkeypatch):
    with pytest.raises(InvalidInputError, match="'bad'.*cannot parse"):
        compound_priors({"bad": "C1CC(("})
    with pytest.raises(InvalidInputError, match="empty"):
        compound_priors({})
    real_import = builtins.__import__

    def no_rdkit(name, *args, **kw):
        if name.startswith("rdkit"):
            raise ImportError("no rdkit")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_rdkit)
    with pytest.raises(InvalidInputError, match=r"genailab\[chem\]"):
        compound_priors(SMILES)


def test_read_smiles(tmp_path):
    p = tmp_path / "s.tsv"
    p.write_text("compound\tSMILES\naspirin\tCC(=O)OC1=CC=CC=C1C(=O)O\nx\t\n")
    assert read_smiles(p) == {"aspirin": "CC(=O)OC1=CC=CC=C1C(=O)O"}
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(MissingKeyError, match="smiles"):
        read_smiles(tmp_path / "bad.csv")
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_smiles(tmp_path / "none.tsv")


def _chemical_screen(seed=0, n_per=16, n_vars=20):
    """Control + aspirin / caffeine at three doses; aspirin raises genes 0-3 with dose, caffeine 4-7."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(3.0, 1.0, n_vars)
    rows, labels, doses = [], [], []
    for drug, sl in (("control", None), ("aspirin", slice(0, 4)), ("caffeine", slice(4, 8))):
        for dose in (0.1, 1.0, 10.0) if sl else (0.0,):
            w = base.copy()
            if sl is not None:
                w[sl] *= 1 + 3 * dose / (dose + 1.0)
            mu = w / w.sum() * rng.lognormal(np.log(300), 0.2, n_per)[:, None]
            rows.append(rng.negative_binomial(8, 8 / (8 + mu)))
            labels += [drug] * n_per
            doses += [dose] * n_per
    obs = pd.DataFrame({"condition": labels, "dose": doses}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(sparse.csr_matrix(np.vstack(rows).astype(np.float32)), obs=obs,
                      var=pd.DataFrame(index=[f"G{j}" for j in range(n_vars)]))  # fmt: skip


def test_compound_model_trains_and_predicts_doses_and_unseen_compounds():
    adata = _chemical_screen()
    vae = LatentTokenVAE.from_anndata(adata, preset="tiny")
    vae.fit(adata, FAST, seed=0)
    config = PerturbDeltaConfig(encoder="compound", n_members=2, cells_per_group=8, groups_per_batch=4,
                                mc_cells=200)  # fmt: skip
    model = PerturbDeltaModel.from_anndata(
        adata, vae, perturbation_key="condition", dose_key="dose", priors=compound_priors(SMILES, n_bits=64),
        config=config, backbone="mlp", backbone_preset="tiny",
    )  # fmt: skip
    assert model.vocab.agents[: model.vocab.n_trained] == ("aspirin", "caffeine")
    rows = np.arange(adata.n_obs)
    model.fit(adata, rows, None, FAST, seed=0)
    controls = adata[adata.obs["condition"] == "control"].copy()
    low = model.predict_response(controls, "aspirin", dose=0.1)
    high = model.predict_response(controls, "aspirin", dose=10)
    assert not np.allclose(low.mean, high.mean)
    unseen = model.predict_response(controls, "salicylic", dose=1)
    assert unseen.novelty["unseen_agents"] == ["salicylic"]
    assert np.isfinite(unseen.mean).all()
    out = model.predict(controls, "aspirin", dose="1")
    assert out.uns["genailab_perturb"]["dose"] == "1"
