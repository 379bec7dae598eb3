"""Count heads and dispersion modes: shapes, library scaling, gene masks, gradients, errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from genailab.errors import InvalidInputError
from genailab.likelihoods import (
    COUNT_HEADS,
    DISPERSIONS,
    LOG_THETA_RANGE,
    CountHead,
    NBHead,
    NegativeBinomial,
    Poisson,
    PoissonHead,
    ZeroInflatedNegativeBinomial,
    ZINBHead,
    make_count_head,
    masked_nll,
)

B, H, G, C = 4, 8, 6, 3
HEAD_CASES = list(itertools.product(["nb", "zinb", "poisson"], ["gene", "gene-cell", "gene-condition"]))
EXPECTED_TYPE = {"nb": NegativeBinomial, "zinb": ZeroInflatedNegativeBinomial, "poisson": Poisson}


def _inputs(library: float = 500.0):
    h = torch.randn(B, H)
    lib = torch.full((B, 1), library)
    condition = torch.tensor([0, 1, 2, 1])
    return h, lib, condition


def _randomise(module: torch.nn.Module) -> None:
    """Move every parameter off its (often zero) initial value so tests see real variation."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))


# --------------------------------------------------------------------------------------------------
# registries
# --------------------------------------------------------------------------------------------------


def test_registries_hold_the_documented_names():
    assert DISPERSIONS.names() == ("gene", "gene-cell", "gene-condition")
    assert COUNT_HEADS.names() == ("nb", "poisson", "zinb")
    assert COUNT_HEADS.get("nb") is NBHead
    assert COUNT_HEADS.get("zinb") is ZINBHead
    assert COUNT_HEADS.get("poisson") is PoissonHead


def test_unknown_head_lists_registered_names():
    with pytest.raises(InvalidInputError, match="nb, poisson, zinb"):
        make_count_head("gaussian", H, G)


@pytest.mark.parametrize("name", ["nb", "zinb", "poisson"])
def test_unknown_dispersion_lists_registered_names(name):
    with pytest.raises(InvalidInputError, match="gene, gene-cell, gene-condition"):
        make_count_head(name, H, G, dispersion="gene-batch")


@pytest.mark.parametrize(("arg", "value"), [("n_hidden", 0), ("n_genes", -2), ("n_genes", 2.5), ("n_conditions", 0)])
def test_bad_sizes_raise(arg, value):
    kwargs = {"n_hidden": H, "n_genes": G, "n_conditions": None, arg: value}
    with pytest.raises(InvalidInputError, match=arg):
        make_count_head("nb", **kwargs)


# --------------------------------------------------------------------------------------------------
# dispersion modes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["gene", "gene-cell", "gene-condition"])
def test_dispersion_returns_positive_theta_starting_at_one(mode):
    disp = DISPERSIONS.get(mode)(H, G, n_conditions=C)
    h, _, condition = _inputs()
    theta = disp(h, condition)
    assert theta.shape == (B, G)
    torch.testing.assert_close(theta, torch.ones(B, G))
    _randomise(disp)
    theta = disp(h, condition)
    assert (theta > 0).all()
    assert torch.isfinite(theta).all()


def test_gene_dispersion_is_shared_across_cells():
    disp = DISPERSIONS.get("gene")(H, G)
    _randomise(disp)
    theta = disp(torch.randn(B, H))
    torch.testing.assert_close(theta, theta[:1].expand(B, G))


def test_gene_cell_dispersion_varies_by_cell_and_is_clamped():
    disp = DISPERSIONS.get("gene-cell")(H, G)
    _randomise(disp)
    theta = disp(torch.randn(B, H))
    assert not torch.allclose(theta[0], theta[1])
    extreme = disp(1e6 * torch.randn(B, H))
    low, high = LOG_THETA_RANGE
    assert (extreme >= torch.exp(torch.tensor(low)) * 0.999).all()
    assert (extreme <= torch.exp(torch.tensor(high)) * 1.001).all()


def test_gene_condition_dispersion_indexes_by_condition():
    disp = DISPERSIONS.get("gene-condition")(H, G, n_conditions=C)
    _randomise(disp)
    h, _, condition = _inputs()  # conditions 0, 1, 2, 1
    theta = disp(h, condition)
    torch.testing.assert_close(theta[1], theta[3])
    assert not torch.allclose(theta[0], theta[1])


@pytest.mark.parametrize("n_conditions", [None, 0, -1])
def test_gene_condition_needs_n_conditions(n_conditions):
    with pytest.raises(InvalidInputError, match="n_conditions"):
        DISPERSIONS.get("gene-condition")(H, G, n_conditions=n_conditions)
    with pytest.raises(InvalidInputError, match="n_conditions"):
        make_count_head("nb", H, G, dispersion="gene-condition", n_conditions=n_conditions)


@pytest.mark.parametrize(
    ("condition", "match"),
    [
        (None, "condition=None"),
        (torch.tensor([0, 1, 3, 0]), r"code 3; expected codes in \[0, 3\)"),
        (torch.tensor([0, -1, 2, 0]), r"code -1; expected codes in \[0, 3\)"),
        (torch.tensor([0.0, 1.0, 2.0, 0.0]), "integer tensor"),
        (torch.tensor([[0], [1], [2], [0]]), r"shape \(4, 1\); expected \(4,\)"),
    ],
    ids=["missing", "too-high", "negative", "float", "wrong-shape"],
)
def test_gene_condition_rejects_bad_condition(condition, match):
    head = make_count_head("nb", H, G, dispersion="gene-condition", n_conditions=C)
    h, lib, _ = _inputs()
    with pytest.raises(InvalidInputError, match=match):
        head(h, lib, condition=condition)


# --------------------------------------------------------------------------------------------------
# count heads
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "mode"), HEAD_CASES)
def test_head_returns_distribution_over_cells_and_genes(name, mode):
    head = make_count_head(name, H, G, dispersion=mode, n_conditions=C)
    assert isinstance(head, CountHead)
    h, lib, condition = _inputs()
    dist = head(h, lib, condition=condition)
    assert isinstance(dist, EXPECTED_TYPE[name])
    assert dist.batch_shape == (B, G)
    torch.testing.assert_close(dist.mu.sum(-1), lib.squeeze(-1))  # mu = library * softmax


@pytest.mark.parametrize(("name", "mode"), HEAD_CASES)
def test_mean_scales_linearly_with_library(name, mode):
    head = make_count_head(name, H, G, dispersion=mode, n_conditions=C)
    _randomise(head)
    h, _, condition = _inputs()
    lib = torch.tensor([[100.0], [250.0], [1000.0], [37.0]])
    mean1 = head(h, lib, condition=condition).mean
    mean2 = head(h, 2 * lib, condition=condition).mean
    torch.testing.assert_close(mean2, 2 * mean1)


def test_library_may_be_one_dimensional():
    head = make_count_head("nb", H, G)
    h, lib, _ = _inputs()
    torch.testing.assert_close(head(h, lib.squeeze(-1)).mean, head(h, lib).mean)


@pytest.mark.parametrize("name", ["nb", "zinb", "poisson"])
@pytest.mark.parametrize("per_cell", [False, True])
def test_gene_mask_renormalises_over_measured_genes(name, per_cell):
    head = make_count_head(name, H, G)
    _randomise(head)
    h, lib, _ = _inputs()
    mask = torch.tensor([True, False, True, True, False, True])
    if per_cell:
        mask = mask.expand(B, G).clone()
        mask[0, 0] = False
    dist = head(h, lib, gene_mask=mask)
    full_mask = mask.expand(B, G)
    assert (dist.mu[~full_mask] == 0).all()
    assert (dist.mean[~full_mask] == 0).all()
    torch.testing.assert_close(dist.mu.sum(-1), lib.squeeze(-1))


@pytest.mark.parametrize(("name", "mode"), HEAD_CASES)
def test_nll_gradient_is_finite_for_every_parameter(name, mode):
    head = make_count_head(name, H, G, dispersion=mode, n_conditions=C)
    h, lib, condition = _inputs()
    h.requires_grad_(True)
    mask = torch.tensor([True, True, False, True, True, True])
    dist = head(h, lib, condition=condition, gene_mask=mask)
    x = dist.sample()
    loss = masked_nll(dist, x, gene_mask=mask).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(h.grad).all()
    for pname, p in head.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


def test_poisson_head_has_no_dispersion_parameters():
    head = make_count_head("poisson", H, G, dispersion="gene-cell")
    assert {n for n, _ in head.named_parameters()} == {"scale_logits.weight", "scale_logits.bias"}


def test_zinb_head_adds_zero_inflation_logits():
    head = make_count_head("zinb", H, G)
    h, lib, _ = _inputs()
    dist = head(h, lib)
    torch.testing.assert_close(dist.zi_logits, head.zi_logits(h))


def test_head_is_deterministic_in_eval():
    head = make_count_head("zinb", H, G, dispersion="gene-cell").eval()
    h, lib, _ = _inputs()
    torch.testing.assert_close(head(h, lib).mean, head(h, lib).mean)


@pytest.mark.parametrize(
    ("h", "library", "match"),
    [
        (torch.randn(B, 2, H), torch.ones(B, 1), r"h has shape \(4, 2, 8\)"),
        (torch.randn(B, H + 1), torch.ones(B, 1), r"h has shape \(4, 9\); expected \(B, 8\)"),
        (torch.randn(B, H), torch.ones(B, 2), r"library has shape \(4, 2\)"),
        (torch.randn(B, H), torch.ones(B + 1, 1), r"library has shape \(5, 1\); expected \(4, 1\)"),
    ],
    ids=["h-3d", "h-width", "library-2-cols", "library-batch"],
)
def test_head_rejects_bad_shapes(h, library, match):
    head = make_count_head("nb", H, G)
    with pytest.raises(InvalidInputError, match=match):
        head(h, library)


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (torch.ones(G), "bool tensor"),
        (torch.ones(G + 1, dtype=torch.bool), r"shape \(6,\) or \(4, 6\)"),
        (torch.zeros(G, dtype=torch.bool), "every gene"),
    ],
    ids=["float", "wrong-length", "all-masked"],
)
def test_head_rejects_bad_gene_mask(mask, match):
    head = make_count_head("nb", H, G)
    h, lib, _ = _inputs()
    with pytest.raises(InvalidInputError, match=match):
        head(h, lib, gene_mask=mask)


# --------------------------------------------------------------------------------------------------
# masked_nll
# --------------------------------------------------------------------------------------------------


def test_masked_nll_sums_measured_genes_only():
    head = make_count_head("nb", H, G)
    _randomise(head)
    h, lib, _ = _inputs()
    mask = torch.tensor([True, False, True, True, False, True])
    dist = head(h, lib, gene_mask=mask)
    x = torch.poisson(dist.mean.detach() + 1.0)
    nll = masked_nll(dist, x, gene_mask=mask)
    assert nll.shape == (B,)
    torch.testing.assert_close(nll, -(dist.log_prob(x) * mask).sum(-1))
    x_changed = x.clone()
    x_changed[:, ~mask] = 50.0  # values at unmeasured genes do not matter
    torch.testing.assert_close(masked_nll(dist, x_changed, gene_mask=mask), nll)
    torch.testing.assert_close(masked_nll(dist, x), -dist.log_prob(x).sum(-1))


def test_masked_nll_rejects_bad_inputs():
    dist = make_count_head("nb", H, G)(*_inputs()[:2])
    with pytest.raises(InvalidInputError, match=r"x has shape \(6,\)"):
        masked_nll(dist, torch.zeros(G))
    with pytest.raises(InvalidInputError, match="gene_mask"):
        masked_nll(dist, torch.zeros(B, G), gene_mask=torch.ones(G))


def test_given_logits_replace_the_linear_map_and_are_shape_checked():
    head = make_count_head("nb", n_hidden=3, n_genes=5)
    h, lib = torch.randn(2, 3), torch.full((2, 1), 100.0)
    logits = torch.log(torch.tensor([[1.0, 1.0, 2.0, 4.0, 2.0]] * 2))
    dist = head(h, lib, logits=logits)
    assert torch.allclose(dist.mean, lib * torch.softmax(logits, -1))
    with pytest.raises(InvalidInputError, match="logits has shape"):
        head(h, lib, logits=torch.zeros(2, 4))
