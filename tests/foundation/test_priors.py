from __future__ import annotations

import json

import numpy as np
import pytest

from genailab.data.gene_sets import EdgeList
from genailab.errors import CheckpointError, InvalidInputError
from genailab.foundation.perturbation import GenePriors, build_gene_priors
from genailab.foundation.perturbation.priors import FEATURES_NAME, META_NAME
from tests.conftest import shared_file

GMT = "S1\td\tA\tB\tC\tD\nS2\td\tA\tB\tE\nS3\td\tF\tG\tH\nS4\td\tG\tH\tI\tJ\nS5\td\tC\tD\tK\nS6\td\tI\tJ\tK\tL\n"


def _edges() -> EdgeList:
    src = ["TF1"] * 3 + ["TF2"] * 3 + ["COMPLEX:TF1_TF2", "TF3", "TF3"]
    tgt = ["A", "B", "C", "G", "H", "I", "A", "TF1", "J"]
    sign = [1, 1, -1, 1, 1, 0, 1, -1, 1]
    return EdgeList(source=np.array(src), target=np.array(tgt), sign=np.array(sign, dtype=float))


def _cos(priors: GenePriors, a: str, b: str, block: slice | None = None) -> float:
    x, has = priors.lookup([a, b])
    assert has.all()
    if block is not None:
        x = x[:, block]
    return float(x[0] @ x[1] / (np.linalg.norm(x[0]) * np.linalg.norm(x[1])))


@pytest.fixture
def gmt_path(tmp_path):
    p = tmp_path / "sets.gmt"
    p.write_text(GMT)
    return p


def test_gene_set_block_similarity(gmt_path):
    priors = build_gene_priors(gene_sets=[gmt_path], n_components=4)
    assert priors.sources == ("gene_sets",)
    assert priors.features.dtype == np.float32
    assert priors.genes == tuple(sorted("ABCDEFGHIJKL"))
    np.testing.assert_allclose(np.linalg.norm(priors.features, axis=1), 1.0, atol=1e-5)
    assert _cos(priors, "A", "B") > _cos(priors, "A", "G") + 0.3
    assert _cos(priors, "G", "H") > _cos(priors, "G", "C") + 0.3


def test_gene_sets_from_mapping_match_file(gmt_path):
    sets = {line.split("\t")[0]: line.split("\t")[2:] for line in GMT.strip().split("\n")}
    a = build_gene_priors(gene_sets=[gmt_path], n_components=4)
    b = build_gene_priors(gene_sets=[sets], n_components=4)
    np.testing.assert_allclose(a.features, b.features, atol=1e-6)


def test_grn_block_neighbourhood_and_complex():
    priors = build_gene_priors(grn=[_edges()], n_components=8)
    assert priors.sources == ("grn",)
    assert "COMPLEX:TF1_TF2" not in priors
    assert {"TF1", "TF2", "TF3", "A", "J"} <= set(priors.genes)
    # A and B share the activating regulator TF1; A and G have different regulators.
    assert _cos(priors, "A", "B") > _cos(priors, "A", "G")
    assert _cos(priors, "G", "H") > _cos(priors, "G", "A")


def test_grn_readout_restriction():
    readout = [f"R{i}" for i in range(25)]
    src = ["TF1"] * 25 + ["TFX"] * 3 + ["TF2"] * 10
    tgt = readout + ["N1", "N2", "N3"] + readout[:10]
    edges = EdgeList(source=np.array(src), target=np.array(tgt), sign=np.ones(len(src)))
    restricted = build_gene_priors(grn=[edges], readout_genes=readout, n_components=8)
    full = build_gene_priors(grn=[edges], n_components=8)
    assert "TFX" in full
    assert "TFX" not in restricted  # its only targets are unmeasured and nothing regulates it
    assert "N1" in restricted  # still described by its regulator
    # Too few readout targets hit: all target columns are kept.
    few = build_gene_priors(grn=[edges], readout_genes=readout[:5], n_components=8)
    assert "TFX" in few


def test_blocks_concatenate_with_zeros(gmt_path):
    priors = build_gene_priors(gene_sets=[gmt_path], grn=[_edges()], n_components=16)
    assert priors.sources == ("gene_sets", "grn")
    assert sum(priors.block_dims) == priors.dim
    gs = slice(0, priors.block_dims[0])
    grn = slice(priors.block_dims[0], priors.dim)
    feats, has = priors.lookup(["TF1", "E", "A"])
    assert has.all()
    assert np.all(feats[0, gs] == 0)  # TF1: no gene sets
    assert np.linalg.norm(feats[0, grn]) > 0.99
    assert np.all(feats[1, grn] == 0)  # E: not in the GRN
    assert np.linalg.norm(feats[1, gs]) > 0.99
    assert np.linalg.norm(feats[2, gs]) > 0.99
    assert np.linalg.norm(feats[2, grn]) > 0.99


def test_lookup_unknown_genes(gmt_path):
    priors = build_gene_priors(gene_sets=[gmt_path], n_components=3)
    feats, has = priors.lookup(["A", "NOPE", "B"])
    assert feats.shape == (3, priors.dim)
    assert feats.dtype == np.float32
    np.testing.assert_array_equal(has, [True, False, True])
    assert np.all(feats[1] == 0)
    assert "A" in priors
    assert "NOPE" not in priors
    empty, has0 = priors.lookup([])
    assert empty.shape == (0, priors.dim)
    assert has0.shape == (0,)
    with pytest.raises(InvalidInputError, match="single string"):
        priors.lookup("A")


def test_deterministic_for_seed_large_randomized_path():
    rng = np.random.default_rng(1)
    genes = [f"G{i}" for i in range(1500)]
    sets = {f"S{j}": list(rng.choice(genes, size=20, replace=False)) for j in range(800)}
    a = build_gene_priors(gene_sets=[sets], n_components=8, seed=3)
    b = build_gene_priors(gene_sets=[sets], n_components=8, seed=3)
    assert a.genes == b.genes
    np.testing.assert_array_equal(a.features, b.features)


def test_n_components_capped(gmt_path):
    priors = build_gene_priors(gene_sets=[gmt_path], n_components=100)
    assert priors.dim <= 6  # six sets: capped at the rank


def test_save_load_round_trip(tmp_path, gmt_path):
    priors = build_gene_priors(gene_sets=[gmt_path], grn=[_edges()], n_components=3)
    priors.save(tmp_path / "p")
    loaded = GenePriors.load(tmp_path / "p")
    assert loaded.genes == priors.genes
    assert loaded.sources == priors.sources
    assert loaded.block_dims == priors.block_dims
    np.testing.assert_array_equal(loaded.features, priors.features)


def test_load_errors(tmp_path, gmt_path):
    priors = build_gene_priors(gene_sets=[gmt_path], n_components=3)
    with pytest.raises(CheckpointError, match="missing"):
        GenePriors.load(tmp_path / "absent")
    d = tmp_path / "p"
    priors.save(d)
    (d / FEATURES_NAME).write_bytes((d / FEATURES_NAME).read_bytes()[:20])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        GenePriors.load(d)
    priors.save(d)
    meta = json.loads((d / META_NAME).read_text())
    meta["genes"] = meta["genes"][:-1]
    (d / META_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="inconsistent"):
        GenePriors.load(d)
    (d / META_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid"):
        GenePriors.load(d)


def test_build_errors(tmp_path, gmt_path):
    with pytest.raises(InvalidInputError, match="both are empty"):
        build_gene_priors()
    with pytest.raises(InvalidInputError, match="n_components"):
        build_gene_priors(gene_sets=[gmt_path], n_components=0)
    with pytest.raises(InvalidInputError, match="sequences"):
        build_gene_priors(gene_sets=str(gmt_path))
    with pytest.raises(InvalidInputError, match=r"gene_sets\[0\]"):
        build_gene_priors(gene_sets=[3])
    with pytest.raises(InvalidInputError, match="no genes"):
        build_gene_priors(gene_sets=[{"S": []}])
    with pytest.raises(InvalidInputError, match="shape"):
        GenePriors(genes=("A",), features=np.zeros((2, 3)), sources=("x",), block_dims=(3,))
    with pytest.raises(InvalidInputError, match="unique"):
        GenePriors(genes=("A", "A"), features=np.zeros((2, 3)), sources=("x",), block_dims=(3,))
    with pytest.raises(InvalidInputError, match="block_dims"):
        GenePriors(genes=("A",), features=np.zeros((1, 3)), sources=("x",), block_dims=(2,))


@pytest.mark.real_data
def test_real_priors_hallmark_go_collectri(shared_data):
    import anndata as ad

    adata = ad.read_h5ad(shared_file(shared_data, "norman19_mcfaline23/norman19_mcfaline23_counts.h5ad"))
    priors = build_gene_priors(
        gene_sets=[
            shared_file(shared_data, "gene_sets/h.all.v7.5.1.symbols.gmt"),
            shared_file(shared_data, "gene_sets/GO_BP_propagated_15-500_human_symbols.gmt.gz"),
        ],
        grn=[shared_file(shared_data, "grn/omnipath_CollecTRI_subset_edges.tsv.gz")],
        readout_genes=list(adata.var_names),
        n_components=32,
    )
    assert priors.sources == ("gene_sets", "grn")
    assert priors.dim == 64
    assert len(priors) > 10_000
    gs = slice(0, priors.block_dims[0])
    assert _cos(priors, "MAP2K3", "MAP2K6") > _cos(priors, "MAP2K3", "KLF1")
    assert _cos(priors, "MAP2K3", "MAP2K6", gs) > _cos(priors, "MAP2K3", "KLF1", gs)

    conditions = {str(c) for c in adata.obs["condition"].unique()} - {"control"}
    perturbed = sorted({g for c in conditions for g in c.split("+")})
    _, has = priors.lookup(perturbed)
    missing = [g for g, h in zip(perturbed, has, strict=True) if not h]
    print(f"gene-prior coverage of perturbed genes: {int(has.sum())}/{len(perturbed)}, missing {missing}")
    assert {"IER5L", "MAP4K5"} <= set(missing)  # in neither GO/Hallmark nor CollecTRI
    assert "ZBTB10" in priors  # absent from GO but in Hallmark and CollecTRI
    assert has.mean() > 0.85


def test_prior_distance_to_trained_agents():
    from genailab.foundation.perturbation import MAX_PRIOR_DISTANCE, prior_distance

    feats = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.1, 0.0], [-1.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    priors = GenePriors(("a", "b", "near_a", "far", "zero"), feats, ("x",), (3,))
    d = prior_distance(priors, ["near_a", "far", "zero", "unknown", "a"], ["a", "b"])
    cos_near = 1.0 / np.sqrt(1.01)
    np.testing.assert_allclose(d[:2], [1 - cos_near, 1 + 1 / np.sqrt(2)], atol=1e-6)  # far: opposite to both
    assert d[2] == d[3] == MAX_PRIOR_DISTANCE  # no (non-zero) priors: maximal
    assert d[4] == 0.0  # a reference agent itself
    assert (prior_distance(None, ["a", "x"], ["a"]) == [0.0, MAX_PRIOR_DISTANCE]).all()
    assert (prior_distance(priors, ["a"], []) == [MAX_PRIOR_DISTANCE]).all()  # nothing to compare with
    with pytest.raises(InvalidInputError, match="sequences"):
        prior_distance(priors, "a", ["a"])
