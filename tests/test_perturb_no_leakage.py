"""No held-out cell reaches training: changing only the test cells changes nothing that ``perturb train`` fits.

The VAE (weights, latent scale, library model), the ensemble members, the gene priors, the normalisation
statistics, early stopping, the conformal calibration and the OOD reference / validation negatives are all
fitted by ``perturb train``. If any of them saw a held-out cell, multiplying the held-out cells' counts (and
their whole-transcriptome library sizes) would change a saved file. Every saved weight and calibration file
must stay byte-identical.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import sparse

from genailab.cli import main

from .conftest import make_perturb_adata

FAST = [
    "--set", "vae_preset=tiny", "--set", "vae_train.max_epochs=3", "--set", "vae_train.progress_bar=false",
    "--set", "backbone_preset=tiny", "--set", "backbone_config.hidden_dim=32", "--set", "train.max_epochs=3",
    "--set", "train.progress_bar=false", "--set", "model.n_members=2", "--set", "model.cells_per_group=8",
    "--set", "model.mc_cells=200", "--set", "prior_components=2",
]  # fmt: skip
GMT = "S1\tna\tg1\tg4\tG0\tG1\nS2\tna\tg2\tG4\tG5\nS3\tna\tg3\tG8\tG9\tg4\nS4\tna\tg1\tg2\tG2\n"
FITTED = ("member_0.safetensors", "member_1.safetensors", "vae/model.safetensors", "calibration.json",
          "gene_priors.json", "split.json")  # fmt: skip


def _train(tmp, name, adata, gmt):
    data = tmp / f"{name}.h5ad"
    adata.write_h5ad(data)
    run = tmp / name
    argv = ["perturb", "train", str(data), "--perturbation-key", "condition", "--control", "control",
            "--context-key", "cell_type", "--holdout", "g3", "--holdout", "g1+g2@B", "--gene-sets", str(gmt),
            "--library-key", "ncounts", "--seed", "5", "--out", str(run), *FAST]  # fmt: skip
    assert main(argv) == 0
    return run


@pytest.mark.slow
def test_changing_only_held_out_cells_changes_nothing_fitted(tmp_path):
    gmt = tmp_path / "sets.gmt"
    gmt.write_text(GMT)
    clean = make_perturb_adata()
    clean.obs["ncounts"] = np.asarray(clean.X.sum(1)).ravel() * 40.0
    run_a = _train(tmp_path, "clean", clean, gmt)
    test = np.asarray(json.loads((run_a / "split.json").read_text())["test"], dtype=int)
    assert test.size > 0

    poisoned = clean.copy()
    x = poisoned.X.toarray()
    x[test] = x[test] * 7 + 3  # very different held-out cells, still integer counts
    poisoned.X = sparse.csr_matrix(x)
    poisoned.obs.iloc[test, poisoned.obs.columns.get_loc("ncounts")] *= 11.0
    run_b = _train(tmp_path, "poisoned", poisoned, gmt)

    for name in FITTED:
        a, b = run_a / name, run_b / name
        if not a.exists():
            assert not b.exists(), name
            continue
        assert a.read_bytes() == b.read_bytes(), f"{name} depends on held-out cells"
