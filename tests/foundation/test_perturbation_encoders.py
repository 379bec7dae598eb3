from __future__ import annotations

import numpy as np
import pytest
import torch

from genailab.errors import InvalidInputError, UnknownLabelError
from genailab.foundation.perturbation.encoders import (
    COMPOSERS,
    PERTURBATION_ENCODERS,
    AdditiveComposer,
    AttentionComposer,
    CompoundEncoder,
    GeneEncoder,
    PerturbationEncoderConfig,
    SumComposer,
)
from genailab.foundation.perturbation.vocab import PerturbationVocab


def _encoder(cls=GeneEncoder, *, n_prior=3, identity_dropout=0.0):
    cfg = PerturbationEncoderConfig(n_vocab=5, n_trained=3, n_prior=n_prior, dim=8, hidden_dim=8,
                                    identity_dropout=identity_dropout)  # fmt: skip
    enc = cls(cfg)
    prior = torch.randn(5, n_prior) if n_prior else torch.zeros(5, 1)
    has = torch.tensor([True, False, True, True, False])
    enc.set_priors(prior, has)
    return enc.eval()


def test_registries_list_names():
    assert set(PERTURBATION_ENCODERS.names()) == {"gene", "compound"}
    assert set(COMPOSERS.names()) == {"sum", "attention", "additive"}
    with pytest.raises(InvalidInputError, match="additive"):
        COMPOSERS.get("concat")


def test_gene_encoder_identity_and_prior_paths():
    enc = _encoder()
    ids = torch.tensor([[0, 3, -1], [4, -1, -1]])
    tok, mask = enc(ids, torch.ones(2, 3))
    assert tok.shape == (2, 3, 8)
    assert mask.tolist() == [[True, True, False], [True, False, False]]
    assert torch.all(tok[0, 2] == 0)  # padding is zero
    assert torch.all(tok[1, 0] == 0)  # id 4: untrained and no prior -> nothing to embed
    # id 3 is untrained: only its prior path contributes
    prior_only = enc.prior_mlp(enc.prior[3])
    assert torch.allclose(tok[0, 1], prior_only)


def test_identity_dropout_only_in_training_and_only_with_priors():
    enc = _encoder(identity_dropout=0.999)
    ids = torch.tensor([[0], [1]])
    enc.train()
    tok, _ = enc(ids, torch.ones(2, 1))
    assert torch.allclose(tok[0, 0], enc.prior_mlp(enc.prior[0]))  # identity hidden, prior kept
    assert torch.allclose(tok[1, 0], enc.identity.weight[1])  # no prior: identity never hidden
    enc.eval()
    tok, _ = enc(ids, torch.ones(2, 1))
    assert torch.allclose(tok[0, 0], enc.identity.weight[0] + enc.prior_mlp(enc.prior[0]))


def test_set_priors_checks_shapes():
    enc = _encoder()
    with pytest.raises(InvalidInputError, match="prior table"):
        enc.set_priors(torch.zeros(4, 3), torch.zeros(5, dtype=torch.bool))
    with pytest.raises(InvalidInputError, match="has_prior"):
        enc.set_priors(torch.zeros(5, 3), torch.zeros(2, dtype=torch.bool))


def test_compound_dose_response_is_monotone_and_zero_at_zero_dose():
    enc = _encoder(CompoundEncoder)
    with torch.no_grad():
        enc.log_slope.fill_(0.5)
    ids = torch.zeros(4, 1, dtype=torch.long)
    dose = torch.tensor([[0.0], [0.1], [1.0], [10.0]])
    tok, _ = enc(ids, dose)
    norms = tok.norm(dim=-1).view(-1)
    assert norms[0] == 0
    assert norms[1] < norms[2] < norms[3]
    # an unseen compound uses the mean curve
    r = enc.response(torch.tensor([[3]]), torch.tensor([[1.0]]))
    assert 0 < float(r.detach()) < 1


@pytest.mark.parametrize("cls", [SumComposer, AttentionComposer])
def test_composers_are_order_invariant(cls):
    comp = cls(8).eval()
    if isinstance(comp, AttentionComposer):
        torch.nn.init.normal_(comp.out.weight)  # make the interaction term non-zero
    tokens = torch.randn(3, 3, 8)
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    perm = torch.tensor([1, 0, 2])
    a = comp(tokens, mask)
    b = comp(tokens[:, perm], mask[:, perm])
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.isfinite(a).all()  # the empty row (a control) stays finite
    assert torch.all(a[2] == 0)


def test_attention_composer_starts_as_sum_and_additive_interaction_starts_at_zero():
    tokens = torch.randn(2, 2, 8)
    mask = torch.ones(2, 2, dtype=torch.bool)
    assert torch.allclose(AttentionComposer(8)(tokens, mask), SumComposer(8)(tokens, mask), atol=1e-6)
    add = AdditiveComposer(8)
    assert add.per_agent
    assert torch.allclose(add(tokens, mask), torch.zeros(2, 8), atol=1e-6)
    assert add.gate.item() == 0.0


def test_vocab_encode_pads_and_orders_trained_first():
    vocab = PerturbationVocab.build(["control", "B", "A+B"], prior_agents=["C", "A"])
    assert vocab.agents == ("A", "B", "C")
    assert vocab.n_trained == 2
    ids, dose = vocab.encode(["control", "A+B", "C"])
    assert ids.tolist() == [[-1, -1], [0, 1], [2, -1]]
    assert dose.tolist() == [[0, 0], [1, 1], [1, 0]]
    assert vocab.unseen("A+C") == ("C",)
    ids, dose = vocab.encode(["A+B"], ["1+0.5"])
    assert dose.tolist() == [[1.0, 0.5]]
    with pytest.raises(InvalidInputError, match="parts"):
        vocab.encode(["A+B"], ["1+2+3"])
    assert PerturbationVocab.from_dict(vocab.to_dict()) == vocab


def test_vocab_errors_are_clear():
    vocab = PerturbationVocab.build(["control", "KLF1"])
    with pytest.raises(UnknownLabelError, match="'ZZZ'.*no prior features"):
        vocab.encode(["ZZZ"])
    with pytest.raises(UnknownLabelError, match="joined with '\\+'"):
        vocab.encode(["KLF1_SET"])
    with pytest.raises(InvalidInputError, match="twice"):
        vocab.encode(["KLF1+KLF1"])
    with pytest.raises(InvalidInputError, match="contains the combination delimiter"):
        PerturbationVocab.build(["ctrl+x", "A"], control="ctrl+x")
    with pytest.raises(InvalidInputError, match="no perturbed cells"):
        PerturbationVocab.build(["control"])
    assert np.array_equal(vocab.encode(["control"])[0], [[-1]])
