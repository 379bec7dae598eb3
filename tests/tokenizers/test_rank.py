"""Geneformer-style rank tokens and their encoder."""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genailab.errors import InvalidInputError
from genailab.tokenizers import RankTokenEncoder, TokenizerResources, gene_medians_from_geneformer, rank_tokenize

from ..conftest import shared_file
from . import GENES, build, make_counts, randomise


def test_rank_tokenize_orders_by_value_with_ties_by_index():
    counts = torch.tensor([[0.0, 5.0, 3.0, 5.0, 1.0]])
    tokens = rank_tokenize(counts, torch.tensor([[14.0]]), top_k=5, target_sum=14.0)
    assert tokens.ids.tolist() == [[1, 3, 2, 4, -1]]
    assert tokens.mask.tolist() == [[True, True, True, True, False]]
    expected = torch.log1p(torch.tensor([5.0, 5.0, 3.0, 1.0, 0.0]))
    torch.testing.assert_close(tokens.values[0, :, 0], expected)


def test_rank_tokenize_divides_by_medians_and_truncates():
    counts = torch.tensor([[4.0, 3.0, 2.0, 0.0]])
    medians = torch.tensor([8.0, 1.0, 1.0, 1.0])
    tokens = rank_tokenize(counts, torch.tensor([[9.0]]), medians, top_k=2, target_sum=9.0)
    assert tokens.ids.tolist() == [[1, 2]]  # gene 0 sinks: 4 / 8 = 0.5
    torch.testing.assert_close(tokens.values[0, :, 0], torch.log1p(torch.tensor([3.0, 2.0])))


def test_empty_cell_is_all_padding():
    tokens = rank_tokenize(torch.zeros(2, 6), torch.zeros(2, 1), top_k=4)
    assert (tokens.ids == -1).all()
    assert not tokens.mask.any()
    assert (tokens.values == 0).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), log2_scale=st.integers(-3, 6))
def test_rank_tokens_are_invariant_to_library_scaling(seed, log2_scale):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.poisson(torch.rand(3, 12, generator=gen) * 4, generator=gen)
    library = counts.sum(1, keepdim=True) + 10.0
    medians = torch.rand(12, generator=gen) + 0.5
    c = 2.0**log2_scale
    a = rank_tokenize(counts, library, medians, top_k=8)
    b = rank_tokenize(counts * c, library * c, medians, top_k=8)
    assert torch.equal(a.ids, b.ids)
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.values, b.values)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_rank_tokens_are_equivariant_to_gene_permutation(seed):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randperm(12, generator=gen).float().expand(2, -1).clone()  # distinct values: no ties
    counts[1] = counts[1].flip(0)
    medians = torch.rand(12, generator=gen) + 0.5
    library = counts.sum(1, keepdim=True)
    perm = torch.randperm(12, generator=gen)
    names = [f"g{i}" for i in range(12)]
    a = rank_tokenize(counts, library, medians, top_k=6)
    b = rank_tokenize(counts[:, perm], library, medians[perm], top_k=6)
    to_names = lambda ids, genes: [[genes[i] if i >= 0 else None for i in row] for row in ids.tolist()]  # noqa: E731
    assert to_names(a.ids, names) == to_names(b.ids, [names[i] for i in perm])
    torch.testing.assert_close(a.values, b.values)


def test_rank_tokenize_rejects_bad_shapes():
    with pytest.raises(InvalidInputError, match="library"):
        rank_tokenize(torch.ones(2, 3), torch.ones(2))
    with pytest.raises(InvalidInputError, match="medians"):
        rank_tokenize(torch.ones(2, 3), torch.ones(2, 1), torch.ones(4))
    with pytest.raises(InvalidInputError, match="top_k"):
        rank_tokenize(torch.ones(2, 3), torch.ones(2, 1), top_k=0)


def test_rank_encoder_handles_empty_cells_and_scaling():
    enc = randomise(build("rank")).eval()
    counts, library = make_counts()
    mu, logvar = enc(counts, library)
    assert torch.isfinite(mu[-1]).all()
    assert torch.isfinite(logvar[-1]).all()
    mu2, _ = enc(counts * 4, library * 4)
    torch.testing.assert_close(mu2, mu)
    mu_all_empty, _ = enc(torch.zeros(2, len(GENES)), torch.zeros(2, 1))
    assert torch.isfinite(mu_all_empty).all()


def test_rank_encoder_uses_the_medians_it_was_built_with():
    enc = build("rank")
    medians = dict(zip(GENES[:16], (1 + i % 5 for i in range(16)), strict=True))
    assert enc.medians.tolist() == [float(medians.get(g, 1.0)) for g in GENES]
    assert enc.report()["n_genes_with_median"] == 16
    assert enc.report()["top_k"] == 10
    assert build("rank", resources=TokenizerResources()).medians.eq(1).all()
    assert isinstance(enc, RankTokenEncoder)


def test_gene_medians_from_geneformer_maps_symbols_and_versions():
    medians = {"ENSG01": 2.0, "ENSG02": 0.5, "ENSG03": float("nan")}
    name_id = {"A": "ENSG01", "B": "ENSG02", "C": "ENSG03"}
    assert gene_medians_from_geneformer(medians, name_id, ["A", "B", "C", "D"]) == {"A": 2.0, "B": 0.5}
    ens = ["ENSG00000000001.3", "ENSG00000000002"]
    out = gene_medians_from_geneformer({"ENSG00000000001": 3.0}, None, ens)
    assert out == {"ENSG00000000001.3": 3.0}
    with pytest.raises(InvalidInputError, match="name_id"):
        gene_medians_from_geneformer(medians, None, ["A", "B"])
    with pytest.raises(InvalidInputError, match="no model gene"):
        gene_medians_from_geneformer(medians, name_id, ["X", "Y"])
    with pytest.raises(InvalidInputError, match="empty"):
        gene_medians_from_geneformer({}, name_id, ["A"])


@pytest.mark.real_data
def test_geneformer_medians_from_the_real_dictionaries(shared_data):
    with shared_file(shared_data, "geneformer_dicts/gene_median_dictionary.pkl").open("rb") as fh:
        median_dict = pickle.load(fh)
    with shared_file(shared_data, "geneformer_dicts/gene_name_id_dict.pkl").open("rb") as fh:
        name_id = pickle.load(fh)
    genes = ["CD3D", "MS4A1", "GAPDH", "NKG7", "NOT_A_GENE"]
    out = gene_medians_from_geneformer(median_dict, name_id, genes)
    assert set(out) == {"CD3D", "MS4A1", "GAPDH", "NKG7"}
    assert out["CD3D"] == pytest.approx(float(median_dict[name_id["CD3D"]]))
    assert all(v > 0 for v in out.values())
    ensembl = [name_id[g] for g in genes[:4]]
    assert gene_medians_from_geneformer(median_dict, None, ensembl) == {name_id[g]: out[g] for g in genes[:4]}
    enc = build("rank", resources=TokenizerResources(gene_medians={GENES[0]: out["GAPDH"]}))
    assert enc.medians[0] == pytest.approx(out["GAPDH"])
