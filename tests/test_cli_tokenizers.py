"""``genailab synth train --tokenizer ...``: every tokenizer trains and samples through the one pipeline."""

from __future__ import annotations

import json
import pickle

import anndata as ad
import numpy as np
import pytest
import torch

from genailab.cli import main

from .conftest import make_count_adata, shared_file
from .test_cli_synth import FAST

GMT = "\n".join(
    [
        "SET_A\tna\tG0\tG1\tG2\tG3\tG4\tG5",
        "SET_B\tna\tG4\tG5\tG6\tG7\tG8\tG9",
        "SET_C\tna\tG10\tG11\tG12\tG13\tG14\tUNKNOWN_GENE",
    ]
)
EDGES = "source\ttarget\tmor\n" + "\n".join(f"G{i}\tG{(i * 7 + 3) % 24}\t{1 if i % 3 else -1}" for i in range(24))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    data = tmp / "data.h5ad"
    make_count_adata(n_obs=96, n_vars=24).write_h5ad(data)
    (tmp / "sets.gmt").write_text(GMT + "\n")
    (tmp / "edges.tsv").write_text(EDGES + "\n")
    with (tmp / "medians.pkl").open("wb") as fh:
        pickle.dump({f"G{i}": 1.0 + i / 10 for i in range(24)}, fh)
    return tmp, data


RESOURCES = {
    "latent": [],
    "pathway": ["--gene-sets", "sets.gmt", "--set", "tokenizer.min_set_size=3"],
    "latent+pathway": ["--gene-sets", "sets.gmt", "--set", "tokenizer.min_set_size=3"],
    "grn": ["--grn", "edges.tsv"],
    "grn+latent": ["--grn", "edges.tsv"],
    "rank": ["--gene-medians", "medians.pkl", "--set", "tokenizer.top_k=12"],
}


@pytest.mark.parametrize("tokenizer", list(RESOURCES))
def test_every_tokenizer_trains_saves_and_samples(files, tmp_path, tokenizer):
    from genailab.foundation.recipes import LatentDiffusionModel

    tmp, data = files
    extra = [str(tmp / a) if a.endswith((".gmt", ".tsv", ".pkl")) else a for a in RESOURCES[tokenizer]]
    run = tmp_path / "run"
    argv = ["synth", "train", str(data), "--out", str(run), "--condition-keys", "cell_type", "--tokenizer", tokenizer,
            *extra, *FAST]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((run / "vae" / "tokenizer.json").read_text())
    assert isinstance(saved["report"], dict)
    vae_run = json.loads((run / "vae" / "run.json").read_text())
    assert vae_run["tokenizer"]["name"] == tokenizer
    model = LatentDiffusionModel.from_pretrained(run)
    assert model.vae.config.tokenizer.name == tokenizer
    names = model.vae.encoder.token_names()
    assert len(names) == model.vae.config.n_tokens
    if "pathway" in tokenizer:
        assert {"SET_A", "SET_B", "SET_C"} <= set(names)
        assert saved["resources"]["gene_sets"]["SET_C"] == ["G10", "G11", "G12", "G13", "G14"]  # unknown dropped
    syn = tmp_path / "syn.h5ad"
    assert main(["synth", "sample", str(run), "--n", "5", "--condition", "cell_type=type1", "--out", str(syn)]) == 0
    s = ad.read_h5ad(syn)
    assert s.n_obs == 5
    assert np.isfinite(s.X.toarray() if hasattr(s.X, "toarray") else s.X).all()


def test_pathway_tokenizer_uses_the_structured_decoder(files, tmp_path):
    from genailab.foundation.recipes import LatentTokenVAE

    tmp, data = files
    out = tmp_path / "vae"
    argv = ["vae", "train", str(data), "--out", str(out), "--set", "preset=tiny", "--set", "train.max_epochs=1",
            "--set", "train.progress_bar=false", "--set", "tokenizer.name=pathway", "--set",
            f"gene_sets={tmp / 'sets.gmt'}", "--set", "tokenizer.min_set_size=3", "--set",
            "tokenizer.overlap=learned"]  # fmt: skip
    assert main(argv) == 0
    vae = LatentTokenVAE.from_pretrained(out)
    assert vae.decoder.logits is not None  # genes are written by the tokens of their sets
    assert vae.decoder.head.scale_logits is None
    x = torch.ones(2, 24)
    dist = vae.decode(torch.zeros(2, *vae.config.latent_shape), x.sum(1, keepdim=True))
    assert dist.mean.shape == (2, 24)


def test_data_driven_modules_are_fitted_and_saved(files, tmp_path):
    tmp, data = files
    run = tmp_path / "run"
    argv = ["synth", "train", str(data), "--out", str(run), "--tokenizer", "pathway", "--gene-sets", "nmf:3",
            "--set", "tokenizer.min_set_size=2", *FAST]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((run / "vae" / "tokenizer.json").read_text())
    assert len(saved["resources"]["gene_sets"]) == 3
    assert json.loads((run / "vae" / "run.json").read_text())["tokenizer"]["gene_sets"]["source"] == "nmf"
    syn = tmp_path / "syn.h5ad"  # an unconditional model samples too
    assert main(["synth", "sample", str(run), "--n", "4", "--out", str(syn)]) == 0
    assert ad.read_h5ad(syn).n_obs == 4


def test_resource_for_another_tokenizer_and_id_mismatch_are_refused(files, tmp_path, capsys):
    tmp, data = files
    argv = ["synth", "train", str(data), "--out", str(tmp_path / "a"), "--grn", str(tmp / "edges.tsv"), *FAST]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--grn" in err
    assert "grn" in err
    ens = tmp / "ensembl.gmt"
    ens.write_text("SET_E\tna\tENSG00000000003\tENSG00000000005\tENSG00000000419\n")
    argv = ["synth", "train", str(data), "--out", str(tmp_path / "b"), "--tokenizer", "pathway", "--gene-sets",
            str(ens), *FAST]  # fmt: skip
    assert main(argv) == 2
    assert "ensembl" in capsys.readouterr().err.lower()


@pytest.mark.real_data
def test_hallmark_pathway_tokens_on_kang_symbols(shared_data, tmp_path):
    """The real Hallmark GMT (symbols) matched to Kang's Ensembl var_names through var['feature']."""
    import scipy.sparse as sp

    from genailab.data import read_h5ad

    kang = read_h5ad(shared_file(shared_data, "kang2018_pbmc_ctrl/kang2018_pbmc_ctrl_counts.h5ad"))
    sub = kang[:300].copy()
    sub.X = sp.csr_matrix(sub.X)
    data = tmp_path / "kang.h5ad"
    sub.write_h5ad(data)
    out = tmp_path / "vae"
    gmt = shared_file(shared_data, "gene_sets/h.all.v7.5.1.symbols.gmt")
    argv = ["vae", "train", str(data), "--out", str(out), "--set", "preset=tiny", "--set", "train.max_epochs=1",
            "--set", "train.progress_bar=false", "--set", "tokenizer.name=pathway", "--set", f"gene_sets={gmt}",
            "--set", "symbols_key=feature"]  # fmt: skip
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    kept = run["tokenizer"]["gene_sets"]
    assert kept["source"].endswith("h.all.v7.5.1.symbols.gmt")
    saved = json.loads((out / "tokenizer.json").read_text())["resources"]["gene_sets"]
    assert len(saved) >= 40  # most Hallmark sets keep >= 5 of Kang's 2,511 genes
    assert all(g.startswith("ENSG") for genes in saved.values() for g in genes)
