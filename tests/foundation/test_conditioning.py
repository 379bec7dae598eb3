from __future__ import annotations

import pytest
import torch

from genailab.errors import InvalidInputError
from genailab.foundation.conditioning import CovariateEmbedding, CovariateEmbeddingConfig, FiLM


def test_film_is_identity_at_init_and_learns():
    film = FiLM(condition_dim=3, hidden_dim=5)
    h, c = torch.randn(4, 5), torch.randn(4, 3)
    torch.testing.assert_close(film(h, c), h)
    h3 = torch.randn(4, 7, 5)
    torch.testing.assert_close(film(h3, c), h3)
    film(h, c).sum().backward()
    assert film.proj.weight.grad.abs().sum() > 0


def test_covariate_embedding_shapes_and_unknown_is_mean():
    emb = CovariateEmbedding(CovariateEmbeddingConfig(n_categories=(3, 2), embedding_dim=4, n_continuous=1))
    cat = torch.tensor([[0, 1], [2, 0], [-1, 1]])
    cont = torch.randn(3, 1)
    out = emb(cat, cont)
    assert out.shape == (3, emb.out_dim) == (3, 9)
    torch.testing.assert_close(out[2, :4], emb.tables[0].weight.mean(0))
    torch.testing.assert_close(out[:, -1:], cont)


@pytest.mark.parametrize(
    ("cat", "cont", "match"),
    [
        (torch.tensor([[0]]), torch.zeros(1, 1), r"cat must have shape \(B, 2\)"),
        (torch.tensor([[3, 0]]), torch.zeros(1, 1), "outside"),
        (torch.tensor([[0, -2]]), torch.zeros(1, 1), "outside"),
        (torch.tensor([[0, 0]]), None, r"cont must have shape \(B, 1\)"),
    ],
)
def test_covariate_embedding_errors(cat, cont, match):
    emb = CovariateEmbedding(CovariateEmbeddingConfig(n_categories=(3, 2), embedding_dim=4, n_continuous=1))
    with pytest.raises(InvalidInputError, match=match):
        emb(cat, cont)
