"""The shared tokenizer contract, checked for every registered tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from genailab.errors import InvalidInputError
from genailab.tokenizers import TOKENIZERS, TokenBatch, TokenEncoder, TokenizerConfig, TokenizerResources

from . import GENES, build, make_counts, make_resources, randomise

NAMES = TOKENIZERS.names()


def test_every_tokenizer_is_registered():
    assert set(NAMES) == {"latent", "pathway", "grn", "grn+latent", "latent+pathway", "rank"}


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_and_finite(name):
    enc = build(name).eval()
    assert isinstance(enc, TokenEncoder)
    counts, library = make_counts()
    mu, logvar = enc(counts, library)
    assert mu.shape == logvar.shape == (counts.shape[0], enc.n_tokens, enc.token_dim)
    assert enc.token_dim == 4
    assert torch.isfinite(mu).all()
    assert torch.isfinite(logvar).all()
    assert logvar.min() >= -12.0
    assert logvar.max() <= 8.0


@pytest.mark.parametrize("name", NAMES)
def test_logvar_is_clamped(name):
    enc = build(name).eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.mul_(300.0)
    counts, library = make_counts()
    _, logvar = enc(counts, library)
    assert logvar.min() >= -12.0
    assert logvar.max() <= 8.0


@pytest.mark.parametrize("name", NAMES)
def test_token_names_match_n_tokens(name):
    enc = build(name)
    names = enc.token_names()
    assert len(names) == enc.n_tokens == len(set(names))
    assert all(isinstance(n, str) for n in names)


@pytest.mark.parametrize("name", NAMES)
def test_report_is_json_serialisable(name):
    report = build(name).report()
    assert json.loads(json.dumps(report)) == report
    assert report["tokenizer"] == name
    assert report["n_genes"] == len(GENES)


@pytest.mark.parametrize("name", NAMES)
def test_tokenize_returns_a_token_batch(name):
    enc = build(name).eval()
    counts, library = make_counts()
    tokens = enc.tokenize(counts, library)
    assert isinstance(tokens, TokenBatch)
    assert tokens.ids.dtype == torch.long
    assert tokens.mask.dtype == torch.bool
    assert tokens.ids.shape[0] == counts.shape[0]
    assert tokens.values.dim() == 3
    assert torch.isfinite(tokens.values).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    enc = randomise(build(name)).train()
    counts, library = make_counts()
    mu, logvar = enc(counts, library)
    (mu.pow(2).sum() + logvar.sum()).backward()
    params = [(n, p) for n, p in enc.named_parameters() if p.requires_grad]
    assert params
    for pname, p in params:
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert sum(float(p.grad.abs().sum()) for _, p in params) > 0


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic_and_samples_independent(name):
    enc = randomise(build(name)).eval()
    counts, library = make_counts()
    mu, logvar = enc(counts, library)
    mu2, _ = enc(counts, library)
    torch.testing.assert_close(mu, mu2)
    mu_one, logvar_one = enc(counts[1:2], library[1:2])
    torch.testing.assert_close(mu_one, mu[1:2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logvar_one, logvar[1:2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_decoder_logits_maps_tokens_to_genes(name):
    enc = build(name)
    head = enc.decoder_logits()
    if head is None:
        assert name not in {"pathway"}
        return
    z = torch.randn(3, enc.n_tokens, enc.token_dim, requires_grad=True)
    logits = head(z)
    assert logits.shape == (3, len(GENES))
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert z.grad is not None
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_rebuilt_from_saved_resources_loads_the_weights(name):
    """What LatentTokenVAE.from_pretrained does: resources -> JSON -> rebuild -> strict state dict."""
    enc = randomise(build(name)).eval()
    text = json.dumps(make_resources().to_dict())
    again = build(name, resources=TokenizerResources.from_dict(json.loads(text)))
    again.load_state_dict(enc.state_dict(), strict=True)
    again.eval()
    assert again.token_names() == enc.token_names()
    counts, library = make_counts()
    torch.testing.assert_close(again(counts, library)[0], enc(counts, library)[0])


def test_resources_round_trip():
    res = make_resources()
    back = TokenizerResources.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back == res
    assert back.edges is not None
    assert back.edges.sign.tolist() == res.edges.sign.tolist()
    assert back.gene_sets["SET_A"] == res.gene_sets["SET_A"]
    empty = TokenizerResources()
    assert TokenizerResources.from_dict(empty.to_dict()) == empty
    assert back != empty


def test_resources_reject_bad_values():
    with pytest.raises(InvalidInputError, match="unknown key"):
        TokenizerResources.from_dict({"genesets": {}})
    with pytest.raises(InvalidInputError, match="gene_medians"):
        TokenizerResources(gene_medians={"G00": 0.0})
    with pytest.raises(InvalidInputError, match="EdgeList"):
        TokenizerResources(edges=[("A", "B")])
    with pytest.raises(InvalidInputError, match="sequence of gene ids"):
        TokenizerResources(gene_sets={"S": "G00"})


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"name": "nope"}, "tokenizer.name"),
        ({"min_set_size": 0}, "min_set_size"),
        ({"max_sets": 0}, "max_sets"),
        ({"unassigned": "ignore"}, "unassigned"),
        ({"overlap": "max"}, "overlap"),
        ({"gene_dim": 10, "n_heads": 4}, "divisible"),
        ({"top_k": 0}, "top_k"),
        ({"n_layers": 1.5}, "n_layers"),
        ({"self_loops": "yes"}, "self_loops"),
        ({"n_free_tokens": -1}, "n_free_tokens"),
    ],
)
def test_config_rejects_bad_values(changes, match):
    with pytest.raises(InvalidInputError, match=match):
        TokenizerConfig(**changes)


def test_config_round_trips_and_lists_names():
    cfg = TokenizerConfig(name="pathway", max_sets=10, overlap="learned")
    assert TokenizerConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(InvalidInputError, match="'grn', 'grn\\+latent', 'latent'"):
        TokenizerConfig(name="graph")


@pytest.mark.parametrize(
    ("name", "resources", "match"),
    [
        ("pathway", TokenizerResources(), "--gene-sets"),
        ("latent+pathway", TokenizerResources(), "--gene-sets"),
        ("grn", TokenizerResources(), "--grn"),
        ("grn+latent", TokenizerResources(), "--grn"),
    ],
)
def test_missing_resources_name_the_option(name, resources, match):
    with pytest.raises(InvalidInputError, match=match):
        build(name, resources=resources)


@pytest.mark.parametrize("name", ["latent", "rank"])
def test_tokenizers_without_resources_build(name):
    enc = build(name, resources=TokenizerResources())
    counts, library = make_counts()
    assert torch.isfinite(enc(counts, library)[0]).all()


def test_duplicate_or_empty_genes_are_rejected():
    from genailab.tokenizers import build_tokenizer

    kwargs = {"n_tokens": 2, "token_dim": 2, "hidden_dims": (4,), "dropout": 0.0, "target_sum": 1e4}
    with pytest.raises(InvalidInputError, match="duplicate"):
        build_tokenizer(["A", "A"], config=TokenizerConfig(), **kwargs)
    with pytest.raises(InvalidInputError, match="empty"):
        build_tokenizer([], config=TokenizerConfig(name="rank"), **kwargs)
