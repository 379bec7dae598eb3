"""Pathway tokens, their structured decoder, NMF modules and gene-set harmonisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genailab.data import GeneIdMap, read_gmt
from genailab.errors import InvalidInputError
from genailab.tokenizers import (
    PathwayLogits,
    TokenizerResources,
    fit_nmf_modules,
    harmonize_gene_sets,
    pathway_layout,
)

from ..conftest import shared_file
from . import GENE_SETS, GENES, UNASSIGNED, build, make_counts, randomise

MAP = GeneIdMap.from_pairs([(g, f"ENSG{i:011d}") for i, g in enumerate(GENES)])


# ------------------------------------------------------------------------------------- layout
def test_layout_keeps_large_sets_and_a_residual_token():
    layout = pathway_layout(GENE_SETS, GENES, min_set_size=3)
    assert layout.token_names == ("SET_A", "SET_B", "SET_C", "residual")
    rep = layout.report
    assert rep["sets_dropped_small"] == {"TINY": 2}
    assert rep["n_genes_in_sets"] == 19
    assert rep["n_genes_unassigned"] == len(UNASSIGNED) == 5
    assert rep["n_memberships"] == 8 + 8 + 6 + 5  # overlapping genes count once per set
    residual = layout.gene_index[layout.set_index == 3]
    assert sorted(residual.tolist()) == UNASSIGNED


def test_layout_max_sets_prefers_largest_then_name():
    sets = {"Z": GENES[:6], "B": GENES[6:10], "A": GENES[10:14], "C": GENES[14:17]}
    layout = pathway_layout(sets, GENES, min_set_size=3, max_sets=2)
    assert layout.token_names[:2] == ("Z", "A")  # Z has 6; A and B tie at 4, A wins by name; input order kept
    assert layout.report["sets_dropped_max_sets"] == ["B", "C"]


def test_layout_drop_mode_reports_dropped_genes():
    layout = pathway_layout(GENE_SETS, GENES, min_set_size=3, unassigned="drop")
    assert "residual" not in layout.token_names
    assert layout.report["n_genes_dropped"] == 5
    assert set(layout.gene_index.tolist()).isdisjoint(UNASSIGNED)


def test_layout_counts_unknown_genes_and_rejects_too_small_sets():
    layout = pathway_layout({"S": (*GENES[:4], "NOT_A_GENE")}, GENES, min_set_size=3)
    assert layout.report["n_set_genes_not_in_model"] == 1
    with pytest.raises(InvalidInputError, match="min_set_size=9"):
        pathway_layout(GENE_SETS, GENES, min_set_size=9)
    with pytest.raises(InvalidInputError, match="--gene-sets"):
        pathway_layout({}, GENES)


# ------------------------------------------------------------------------------------ encoder
def test_set_tokens_ignore_genes_outside_every_set():
    enc = randomise(build("pathway")).eval()
    counts, library = make_counts()
    mu, logvar = enc(counts, library)
    changed = counts.clone()
    changed[:, UNASSIGNED] += 7.0  # library held fixed: only the out-of-set genes move
    mu2, logvar2 = enc(changed, library)
    torch.testing.assert_close(mu2[:, :3], mu[:, :3])
    torch.testing.assert_close(logvar2[:, :3], logvar[:, :3])
    assert not torch.allclose(mu2[:, 3], mu[:, 3])  # the residual token moved


def test_each_token_reads_only_its_members():
    enc = randomise(build("pathway")).eval()
    counts, library = make_counts()
    mu, _ = enc(counts, library)
    changed = counts.clone()
    changed[:, 14] += 5.0  # G14 is only in SET_C
    mu2, _ = enc(changed, library)
    torch.testing.assert_close(mu2[:, [0, 1, 3]], mu[:, [0, 1, 3]])
    assert not torch.allclose(mu2[:, 2], mu[:, 2])


def test_membership_weights_are_sparse():
    enc = build("pathway")
    n_mem = enc.report()["n_memberships"]
    assert enc.member_weight.shape == (n_mem, enc.set_dim)
    assert max(p.numel() for p in enc.parameters()) <= n_mem * enc.set_dim


def test_tokenize_returns_set_states():
    enc = build("pathway").eval()
    counts, library = make_counts()
    tokens = enc.tokenize(counts, library)
    assert tokens.values.shape == (4, 4, enc.set_dim)
    assert tokens.ids[0].tolist() == [0, 1, 2, 3]
    assert tokens.mask.all()


def test_set_states_equal_the_dense_sum():
    enc = randomise(build("pathway")).eval()
    counts, library = make_counts()
    x = torch.log1p(counts * (1e4 / library.clamp(min=1)))
    states = enc.set_states(counts, library)
    for k in range(enc.n_tokens):
        rows = (enc.set_index == k).nonzero().flatten()
        expected = x[:, enc.gene_index[rows]] @ enc.member_weight[rows] + enc.set_bias[k]
        torch.testing.assert_close(states[:, k], expected)


def test_drop_mode_has_no_residual_token():
    enc = build("pathway", unassigned="drop")
    assert enc.token_names() == ["SET_A", "SET_B", "SET_C"]
    assert enc.report()["n_genes_dropped"] == 5


# ------------------------------------------------------------------------------------ decoder
def _dense_logits(head: PathwayLogits, z: torch.Tensor, gene_index, set_index) -> torch.Tensor:
    alpha = head.overlap()
    out = head.bias.expand(z.shape[0], -1).clone()
    for e, (g, k) in enumerate(zip(gene_index.tolist(), set_index.tolist(), strict=True)):
        out[:, g] = out[:, g] + alpha[e] * (z[:, k] @ head.weight[e])
    return out


@pytest.mark.parametrize("overlap", ["average", "learned"])
def test_decoder_matches_the_explicit_sum(overlap):
    enc = build("pathway", overlap=overlap)
    head = randomise(enc.decoder_logits())
    z = torch.randn(3, enc.n_tokens, enc.token_dim)
    expected = _dense_logits(head, z, enc.gene_index, enc.set_index)
    torch.testing.assert_close(head(z), expected)


def test_average_overlap_is_the_mean_over_sets():
    enc = build("pathway")
    alpha = enc.decoder_logits().overlap()
    degree = torch.bincount(enc.gene_index, minlength=len(GENES)).float()
    torch.testing.assert_close(alpha, 1.0 / degree[enc.gene_index])
    assert alpha[enc.gene_index == 6].tolist() == [0.5, 0.5]  # G06 is in SET_A and SET_B


def test_learned_overlap_equals_average_at_init_and_sums_to_one():
    enc_avg, enc_learned = build("pathway"), build("pathway", overlap="learned")
    learned = enc_learned.decoder_logits()
    torch.testing.assert_close(learned.overlap(), enc_avg.decoder_logits().overlap())
    with torch.no_grad():
        learned.overlap.logits.normal_()
    sums = torch.zeros(len(GENES)).index_add_(0, enc_learned.gene_index, learned.overlap())
    covered = torch.bincount(enc_learned.gene_index, minlength=len(GENES)) > 0
    torch.testing.assert_close(sums[covered], torch.ones(int(covered.sum())))
    z = torch.randn(2, enc_learned.n_tokens, enc_learned.token_dim)
    learned(z).sum().backward()
    assert learned.overlap.logits.grad is not None
    assert learned.overlap.logits.grad.abs().sum() > 0


def test_dropped_genes_decode_to_their_bias_only():
    enc = build("pathway", unassigned="drop")
    head = randomise(enc.decoder_logits())
    z1, z2 = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    out1, out2 = head(z1), head(z2)
    torch.testing.assert_close(out1[:, UNASSIGNED], head.bias[UNASSIGNED].expand(2, -1))
    torch.testing.assert_close(out1[:, UNASSIGNED], out2[:, UNASSIGNED])


def test_residual_token_decodes_the_unassigned_genes():
    enc = build("pathway")
    head = randomise(enc.decoder_logits())
    z = torch.randn(2, enc.n_tokens, enc.token_dim)
    moved = z.clone()
    moved[:, 3] += 1.0  # residual token
    delta = (head(moved) - head(z)).abs().sum(0)
    assert (delta[UNASSIGNED] > 0).all()
    assert (delta[[g for g in range(len(GENES)) if g not in UNASSIGNED]] == 0).all()


# -------------------------------------------------------------------------------- harmonising
def test_harmonize_gene_sets_keeps_model_genes_and_counts_unknown():
    sets = {"S1": ("G00", "G01", "NOPE"), "S2": ("NOPE2",), "S3": ("G02", "G02")}
    out, rep = harmonize_gene_sets(sets, GENES)
    assert out == {"S1": ("G00", "G01"), "S3": ("G02",)}
    assert rep["sets_without_model_genes"] == ["S2"]
    assert rep["n_not_in_model"] == 2
    assert rep["translated"] is False


def test_harmonize_gene_sets_translates_with_an_id_map():
    ens_genes = [MAP.symbol_to_ensembl[g] for g in GENES]
    with pytest.raises(InvalidInputError, match="id_map"):
        harmonize_gene_sets(GENE_SETS, ens_genes)
    out, rep = harmonize_gene_sets({**GENE_SETS, "X": ("UNMAPPED", "G00")}, ens_genes, id_map=MAP)
    assert rep["translated"] is True
    assert rep["n_untranslated"] == 1
    assert out["SET_A"] == tuple(ens_genes[:8])
    assert out["X"] == (ens_genes[0],)


def test_harmonize_gene_sets_rejects_empty_and_disjoint():
    with pytest.raises(InvalidInputError, match="empty"):
        harmonize_gene_sets({}, GENES)
    with pytest.raises(InvalidInputError, match="shares a gene"):
        harmonize_gene_sets({"S": ("X1", "X2")}, GENES)


# ------------------------------------------------------------------------------- NMF modules
def _planted_expression(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    activity = rng.gamma(1.0, 1.0, size=(40, 3))
    loadings = np.zeros((3, len(GENES)))
    for i in range(3):
        loadings[i, i * 8 : (i + 1) * 8] = rng.uniform(1.0, 2.0, 8)
    return np.log1p(activity @ loadings + 0.01 * rng.random((40, len(GENES))))


def test_nmf_modules_recover_planted_programs_and_are_deterministic():
    x = _planted_expression()
    modules = fit_nmf_modules(x, GENES, n_modules=3, genes_per_module=8, seed=0)
    assert list(modules) == ["module_00", "module_01", "module_02"]
    found = sorted(sorted(int(g[1:]) // 8 for g in genes) for genes in modules.values())
    assert found == [[0] * 8, [1] * 8, [2] * 8]
    assert fit_nmf_modules(x, GENES, n_modules=3, genes_per_module=8, seed=0) == modules


def test_nmf_modules_feed_the_pathway_tokenizer():
    modules = fit_nmf_modules(_planted_expression(), GENES, n_modules=3, genes_per_module=6)
    enc = build("pathway", resources=TokenizerResources(gene_sets=modules))
    assert enc.token_names()[:3] == ["module_00", "module_01", "module_02"]
    counts, library = make_counts()
    assert torch.isfinite(enc(counts, library)[0]).all()


@pytest.mark.parametrize(
    ("x", "kwargs", "match"),
    [
        (-np.ones((5, 24)), {}, "non-negative"),
        (np.ones((5, 23)), {}, "one column per gene"),
        (np.ones((5, 24)), {"n_modules": 6}, "n_modules"),
        (np.ones((5, 24)), {"n_modules": 2, "genes_per_module": 30}, "genes_per_module"),
        (np.zeros((5, 24)), {"n_modules": 2, "genes_per_module": 5}, "all zeros"),
    ],
)
def test_nmf_modules_reject_bad_input(x, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        fit_nmf_modules(x, GENES, **kwargs)


# ---------------------------------------------------------------------------------- real data
@pytest.mark.real_data
def test_hallmark_sets_map_onto_ensembl_model_genes(shared_data):
    sets = read_gmt(shared_file(shared_data, "gene_sets/h.all.v7.5.1.symbols.gmt"))
    id_map = GeneIdMap.from_tsv(shared_file(shared_data, "gene_sets/orgHs_symbol_ensembl_entrez.tsv.gz"))
    symbols = sorted({g for members in sets.values() for g in members})[::4]  # ~1k Hallmark genes
    model = [e for e in id_map.translate(symbols, to="ensembl") if e is not None] + ["ENSG99999999999"]
    with pytest.raises(InvalidInputError, match="id_map"):
        harmonize_gene_sets(sets, model)
    mapped, rep = harmonize_gene_sets(sets, model, id_map=id_map)
    assert rep["translated"]
    assert rep["source_id_type"] == "symbol"
    assert rep["model_id_type"] == "ensembl"
    assert len(mapped) == 50
    assert all(g.startswith("ENSG") for m in mapped.values() for g in m)
    assert rep["n_not_in_model"] > 0  # the Hallmark genes left out of the model
    enc = build_real(model, mapped)
    assert enc.report()["n_sets_kept"] == 50
    assert enc.report()["n_genes_unassigned"] == 1
    counts = torch.poisson(torch.rand(2, len(model)) * 3)
    mu, _ = enc(counts, counts.sum(1, keepdim=True))
    assert mu.shape == (2, 51, 4)
    assert torch.isfinite(mu).all()
    assert enc.decoder_logits()(mu).shape == (2, len(model))


def build_real(genes, gene_sets):
    from genailab.tokenizers import TokenizerConfig, build_tokenizer

    return build_tokenizer(
        genes,
        config=TokenizerConfig(name="pathway"),
        n_tokens=8,
        token_dim=4,
        hidden_dims=(16,),
        dropout=0.0,
        target_sum=1e4,
        resources=TokenizerResources(gene_sets=gene_sets),
    ).eval()
