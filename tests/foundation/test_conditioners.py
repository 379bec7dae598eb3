from __future__ import annotations

import pytest
import torch
from torch import nn

from genailab.errors import InvalidInputError
from genailab.foundation.conditioning import (
    CONDITIONERS,
    AdaLNZero,
    ConditionContext,
    CrossAttentionConditioner,
    FiLMConditioner,
)

W, E, C, K, N = 8, 6, 3, 2, 5
NAMES = ("adaln", "cross_attention", "film")


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny shapes gain nothing from intra-op threads, and on a shared 2-core machine OpenMP barriers
    # make each op 100x slower; restore the global setting afterwards.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(name: str):
    return CONDITIONERS.get(name)(W, emb_dim=E, cond_dim=C, n_heads=2, n_sublayers=2)


def make_ctx(batch: int = 3) -> ConditionContext:
    return ConditionContext(torch.randn(batch, E), torch.randn(batch, K, C))


def sublayers():
    return (nn.Sequential(nn.Linear(W, W), nn.Tanh()), nn.Linear(W, W))


def perturb(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


def test_registry_names_and_classes():
    assert CONDITIONERS.names() == NAMES
    assert CONDITIONERS.get("adaln") is AdaLNZero
    assert CONDITIONERS.get("film") is FiLMConditioner
    assert CONDITIONERS.get("cross_attention") is CrossAttentionConditioner
    with pytest.raises(InvalidInputError, match="adaln, cross_attention, film"):
        CONDITIONERS.get("concat")


@pytest.mark.parametrize("name", NAMES)
def test_identity_at_init(name):
    cond, h, ctx = make(name), torch.randn(3, N, W), make_ctx()
    torch.testing.assert_close(cond(h, ctx), h, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["adaln", "cross_attention"])
def test_identity_at_init_with_sublayers(name):
    cond, h, ctx = make(name), torch.randn(3, N, W), make_ctx()
    torch.testing.assert_close(cond(h, ctx, sublayers()), h, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_zero_initialised_paths_get_gradients(name):
    cond, h, ctx = make(name), torch.randn(3, N, W, requires_grad=True), make_ctx()
    out = cond(h, ctx, sublayers())
    assert out.shape == h.shape
    out.pow(2).sum().backward()
    zero_init = [p for p in cond.parameters() if p.ndim == 2 and p.abs().sum() == 0]
    assert zero_init  # each conditioner has a zero-initialised path ...
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in zero_init)  # ... that can learn
    assert torch.isfinite(h.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_samples_are_independent(name):
    cond, h, ctx = perturb(make(name)), torch.randn(3, N, W), make_ctx()
    subs = sublayers()
    full = cond(h, ctx, subs)
    one = cond(h[1:2], ConditionContext(ctx.emb[1:2], ctx.tokens[1:2]), subs)
    torch.testing.assert_close(one, full[1:2])


@pytest.mark.parametrize("name", NAMES)
def test_condition_changes_output_after_perturbing(name):
    cond, h = perturb(make(name)), torch.randn(2, N, W)
    ctx_a, ctx_b = make_ctx(2), make_ctx(2)
    assert not torch.allclose(cond(h, ctx_a, sublayers()[:1]), cond(h, ctx_b, sublayers()[:1]))


def test_cross_attention_ignores_tokens_at_init_and_reads_them_after_perturbing():
    cond, h, emb = make("cross_attention"), torch.randn(2, N, W), torch.randn(2, E)
    a, b = ConditionContext(emb, torch.randn(2, K, C)), ConditionContext(emb, torch.randn(2, K, C))
    torch.testing.assert_close(cond(h, a), cond(h, b), rtol=0, atol=0)
    with torch.no_grad():
        cond.cross.out.weight.normal_()
    assert not torch.allclose(cond(h, a), cond(h, b))


def test_cross_attention_pools_nothing_and_needs_tokens():
    assert CrossAttentionConditioner.pools_condition is False
    assert AdaLNZero.pools_condition
    assert FiLMConditioner.pools_condition
    with pytest.raises(InvalidInputError, match="cond_dim >= 1"):
        CrossAttentionConditioner(W, emb_dim=E, cond_dim=0)
    with pytest.raises(InvalidInputError, match="needs condition tokens"):
        make("cross_attention")(torch.randn(1, N, W), ConditionContext(torch.randn(1, E), None))


def test_constructor_and_sublayer_errors():
    with pytest.raises(InvalidInputError, match="divisible by n_heads"):
        AdaLNZero(6, emb_dim=E, n_heads=4)
    with pytest.raises(InvalidInputError, match="n_sublayers=1"):
        AdaLNZero(W, emb_dim=E, n_sublayers=1)(torch.randn(1, N, W), make_ctx(1), sublayers())
