"""Sparse graph attention, GRN tokens, the GRN + latent hybrid and edge harmonisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genailab.data import EdgeList, GeneIdMap, read_edges
from genailab.errors import InvalidInputError
from genailab.tokenizers import (
    GraphAttention,
    TokenizerResources,
    dense_graph_attention_reference,
    edge_index_from,
    harmonize_edges,
)
from genailab.tokenizers.hybrid import LearnedAdjacency
from genailab.tokenizers.sparse_attention import add_self_loops, segment_softmax

from ..conftest import shared_file
from . import GENES, build, make_counts, randomise


def random_graph(n_nodes: int, n_edges: int, seed: int = 0, isolated: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique random edges; the last ``isolated`` nodes have no incoming edge."""
    gen = torch.Generator().manual_seed(seed)
    pairs = torch.randperm(n_nodes * (n_nodes - isolated), generator=gen)[:n_edges]
    src, tgt = pairs % n_nodes, pairs // n_nodes
    sign = torch.randint(-1, 2, (n_edges,), generator=gen).float()
    return torch.stack([src, tgt]), sign


# ----------------------------------------------------------------------------- GraphAttention
@pytest.mark.parametrize("with_sign", [False, True])
def test_graph_attention_equals_dense_reference(with_sign):
    attn = GraphAttention(8, n_heads=2).eval()
    with torch.no_grad():
        attn.sign_bias.normal_()
    edge_index, sign = random_graph(12, 40)
    sign = sign if with_sign else None
    h = torch.randn(3, 12, 8, requires_grad=True)
    out = attn(h, edge_index, sign)
    ref = dense_graph_attention_reference(attn, h, edge_index, sign)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(out.pow(2).sum(), h)
    (grad_ref,) = torch.autograd.grad(ref.pow(2).sum(), h)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n_edges=st.integers(1, 50))
def test_graph_attention_ignores_non_neighbours(seed, n_edges):
    torch.manual_seed(seed)
    attn = GraphAttention(4, n_heads=2).eval()
    edge_index, sign = random_graph(10, n_edges, seed=seed)
    h = torch.randn(2, 10, 4)
    out = attn(h, edge_index, sign)
    target = int(edge_index[1, 0])
    neighbours = set(edge_index[0, edge_index[1] == target].tolist()) | {target}
    others = [g for g in range(10) if g not in neighbours]
    moved = h.clone()
    moved[:, others] = torch.randn(2, len(others), 4) * 5
    torch.testing.assert_close(attn(moved, edge_index, sign)[:, target], out[:, target])


def test_isolated_genes_output_zeros_without_nan():
    attn = randomise(GraphAttention(8, n_heads=2))
    edge_index, sign = random_graph(12, 30, isolated=3)
    h = torch.randn(2, 12, 8, requires_grad=True)
    out = attn(h, edge_index, sign)
    assert torch.equal(out[:, -3:], torch.zeros(2, 3, 8))
    out.sum().backward()
    assert torch.isfinite(h.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


def test_graph_attention_with_no_edges_is_zero():
    attn = GraphAttention(4, n_heads=1)
    out = attn(torch.randn(2, 5, 4), torch.zeros(2, 0, dtype=torch.long))
    assert torch.equal(out, torch.zeros(2, 5, 4))


def test_segment_softmax_sums_to_one_per_target():
    scores = torch.randn(2, 7, 3) * 10
    index = torch.tensor([0, 0, 2, 2, 2, 4, 0])
    w = segment_softmax(scores, index, 5)
    sums = torch.zeros(2, 5, 3).index_add_(1, index, w)
    torch.testing.assert_close(sums[:, [0, 2, 4]], torch.ones(2, 3, 3))
    torch.testing.assert_close(w[0, :2, 0], torch.softmax(scores[0, [0, 1, 6], 0], 0)[:2])


def test_add_self_loops_skips_existing_loops():
    edge_index = torch.tensor([[0, 1, 2], [1, 1, 0]])
    out, sign, n_added = add_self_loops(edge_index, torch.ones(3), 3)
    assert n_added == 2
    assert out[:, 3:].tolist() == [[0, 2], [0, 2]]
    assert sign[3:].tolist() == [0.0, 0.0]


def test_graph_attention_rejects_bad_edges():
    attn = GraphAttention(4)
    with pytest.raises(InvalidInputError, match="outside"):
        attn(torch.randn(1, 3, 4), torch.tensor([[0], [5]]))
    with pytest.raises(InvalidInputError, match="int64"):
        attn(torch.randn(1, 3, 4), torch.tensor([[0.0], [1.0]]))
    with pytest.raises(InvalidInputError, match="edge_sign"):
        attn(torch.randn(1, 3, 4), torch.tensor([[0], [1]]), torch.ones(2))
    with pytest.raises(InvalidInputError, match="divisible"):
        GraphAttention(6, n_heads=4)


# ----------------------------------------------------------------------------- edge indices
def test_edge_index_from_drops_unknown_and_duplicate_edges():
    edges = EdgeList(
        source=np.array(["G00", "G00", "G01", "X", "G02"]),
        target=np.array(["G01", "G01", "G02", "G01", "G02"]),
        sign=np.array([1.0, -1.0, -1.0, 1.0, 0.0]),
    )
    edge_index, sign, rep = edge_index_from(edges, GENES[:4])
    assert edge_index.tolist() == [[0, 1, 2], [1, 2, 2]]
    assert sign.tolist() == [1.0, -1.0, 0.0]
    assert rep["n_edges_outside_genes"] == 1
    assert rep["n_edges_duplicated"] == 1
    assert rep["n_edges_kept"] == 3
    assert rep["n_genes_without_regulator"] == 2  # G00 and G03
    looped, _, rep2 = edge_index_from(edges, GENES[:4], self_loops=True)
    assert rep2["n_self_loops_added"] == 3  # G02 -> G02 already exists
    assert looped.shape[1] == 6
    assert rep2["n_genes_without_regulator"] == 0


def test_edge_index_from_rejects_empty_and_disjoint_edges():
    empty = EdgeList(source=np.array([], dtype=str), target=np.array([], dtype=str), sign=np.array([]))
    with pytest.raises(InvalidInputError, match="empty"):
        edge_index_from(empty, GENES)
    with pytest.raises(InvalidInputError, match="none of the 1 edges"):
        edge_index_from(EdgeList(source=np.array(["A"]), target=np.array(["B"]), sign=np.ones(1)), GENES)
    ens = EdgeList(source=np.array(["ENSG00000167286"]), target=np.array(["ENSG00000156738"]), sign=np.ones(1))
    with pytest.raises(InvalidInputError, match="harmonize_edges"):
        edge_index_from(ens, GENES)


def test_harmonize_edges_translates_and_counts():
    id_map = GeneIdMap.from_pairs([(g, f"ENSG{i:011d}") for i, g in enumerate(GENES)])
    ens = [id_map.symbol_to_ensembl[g] for g in GENES]
    edges = EdgeList(
        source=np.array(["G00", "G01", "UNKNOWN"]), target=np.array(["G01", "G02", "G00"]), sign=np.ones(3)
    )
    with pytest.raises(InvalidInputError, match="id_map"):
        harmonize_edges(edges, ens)
    out, rep = harmonize_edges(edges, ens, id_map=id_map)
    assert out.source.tolist() == [ens[0], ens[1]]
    assert out.target.tolist() == [ens[1], ens[2]]
    assert rep["n_edges_kept"] == 2
    assert rep["n_edges_dropped"] == 1
    assert rep["n_untranslated"] == 1
    with pytest.raises(InvalidInputError, match="none of the"):
        harmonize_edges(EdgeList(source=np.array(["A"]), target=np.array(["B"]), sign=np.ones(1)), GENES)
    with pytest.raises(InvalidInputError, match="EdgeList"):
        harmonize_edges([("G00", "G01")], GENES)


# ------------------------------------------------------------------------------ GRN encoder
def test_grn_blocks_start_as_the_identity():
    enc = build("grn").eval()
    counts, library = make_counts()
    x = torch.log1p(counts * (1e4 / library.clamp(min=1)))
    h0 = enc.gene_embedding + enc.value_mlp(x.unsqueeze(-1))
    torch.testing.assert_close(enc.gene_tokens(counts, library), h0)


def test_grn_tokenize_gives_gene_tokens():
    enc = build("grn")
    counts, library = make_counts()
    tokens = enc.tokenize(counts, library)
    assert tokens.ids.shape == (4, len(GENES))
    assert tokens.values.shape == (4, len(GENES), 1)
    assert tokens.ids[0].tolist() == list(range(len(GENES)))
    assert tokens.mask.all()


def test_grn_gene_tokens_follow_the_graph():
    enc = randomise(build("grn", self_loops=False)).eval()
    edge_index = enc.edge_index
    target = int(edge_index[1, 0])
    neighbours = set(edge_index[0, edge_index[1] == target].tolist()) | {target}
    others = [g for g in range(len(GENES)) if g not in neighbours]
    counts, library = make_counts()
    moved = counts.clone()
    moved[:, others] += 3.0  # one layer: only direct regulators may change the target's token
    before = enc.gene_tokens(counts, library)[:, target]
    torch.testing.assert_close(enc.gene_tokens(moved, library)[:, target], before)


def test_grn_report_counts_edges():
    rep = build("grn").report()
    assert rep["n_edges_input"] == 60
    assert rep["self_loops"] is True
    assert rep["n_edges"] == rep["n_edges_kept"] + rep["n_self_loops_added"]


def test_grn_rejects_edges_outside_the_genes():
    far = EdgeList(source=np.array(["A"]), target=np.array(["B"]), sign=np.ones(1))
    with pytest.raises(InvalidInputError, match="none of the"):
        build("grn", resources=TokenizerResources(edges=far))


# ------------------------------------------------------------------------------- grn+latent
def test_learned_adjacency_is_identity_at_init():
    adj = LearnedAdjacency(5, 8)
    z = torch.randn(3, 5, 8)
    torch.testing.assert_close(adj(z), z)
    torch.testing.assert_close(adj.adjacency.sum(-1), torch.ones(5))
    adj(z).sum().backward()
    assert adj.gate.grad.abs().sum() > 0


def test_grn_latent_equals_grn_at_init_then_mixes_tokens():
    torch.manual_seed(0)
    hybrid = build("grn+latent").eval()
    counts, library = make_counts()
    plain = hybrid.grn(counts, library)
    torch.testing.assert_close(hybrid(counts, library)[0], plain[0])
    with torch.no_grad():
        hybrid.adjacency.gate.fill_(1.0)
        hybrid.adjacency.logits.normal_()
    assert not torch.allclose(hybrid(counts, library)[0], plain[0])
    assert hybrid.report()["tokenizer"] == "grn+latent"


# -------------------------------------------------------------------------------- real data
@pytest.mark.real_data
def test_collectri_edges_build_a_grn_encoder(shared_data):
    edges = read_edges(shared_file(shared_data, "grn/omnipath_CollecTRI_subset_edges.tsv.gz"))
    regulators, counts_per = np.unique(edges.source, return_counts=True)
    top = regulators[np.argsort(-counts_per)[:20]].tolist()
    targets = edges.target[np.isin(edges.source, top)]
    genes = list(dict.fromkeys([*top, *targets.tolist()]))[:300] + ["NOT_A_GENE_1"]
    kept, rep = harmonize_edges(edges, genes)
    assert 0 < rep["n_edges_kept"] < len(edges)
    assert rep["translated"] is False
    edge_index, _, rep2 = edge_index_from(kept, genes, self_loops=True)
    assert rep2["n_edges_outside_genes"] == 0
    assert rep2["n_genes_without_regulator"] == 0
    assert rep2["n_edges_kept"] > 300
    enc = randomise(build_real(genes, kept)).eval()
    counts = torch.poisson(torch.rand(2, len(genes)) * 2)
    mu, logvar = enc(counts, counts.sum(1, keepdim=True))
    assert mu.shape == (2, 3, 4)
    assert torch.isfinite(mu).all()
    assert torch.isfinite(logvar).all()


def build_real(genes, edges):
    from genailab.tokenizers import TokenizerConfig, build_tokenizer

    return build_tokenizer(
        genes,
        config=TokenizerConfig(name="grn", gene_dim=8, n_layers=1),
        n_tokens=3,
        token_dim=4,
        hidden_dims=(8,),
        dropout=0.0,
        target_sum=1e4,
        resources=TokenizerResources(edges=edges),
    )
