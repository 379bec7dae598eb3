"""Log-density functions against scipy, 50-digit references, limits and low precision."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from genailab.likelihoods.functional import log_nb_positive, log_poisson, log_zinb_positive

MUS = np.logspace(-6, 6, 13)
THETAS = np.array([1e-3, 1e-1, 1.0, 10.0, 1e3, 1e5, 1e7])
XS = np.array([0, 1, 2, 5, 17, 100, 1e3, 1e4, 1e6])


def _t64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _scipy_nb(x, mu, theta):
    return stats.nbinom.logpmf(x, theta, theta / (theta + mu))


def _textbook_nb(x, mu, theta):
    """The scvi-tools formula, exact enough in float64 for moderate parameters."""
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
        + theta * torch.log(theta / (theta + mu))
        + x * torch.log(mu / (theta + mu))
    )


def _mp_nb(x: float, mu: float, theta: float) -> float:
    import mpmath

    with mpmath.workdps(50):
        x, mu, theta = mpmath.mpf(x), mpmath.mpf(mu), mpmath.mpf(theta)
        value = (
            mpmath.loggamma(x + theta)
            - mpmath.loggamma(theta)
            - mpmath.loggamma(x + 1)
            + theta * mpmath.log(theta / (theta + mu))
            + x * mpmath.log(mu / (theta + mu))
        )
        return float(value)


# --------------------------------------------------------------------------------------------------
# negative binomial
# --------------------------------------------------------------------------------------------------


def test_nb_matches_scipy_on_extreme_grid():
    m, t, x = np.meshgrid(MUS, THETAS, XS, indexing="ij")
    ours = log_nb_positive(_t64(x), _t64(m), _t64(t))
    assert ours.dtype == torch.float64
    ref = _scipy_nb(x, m, t)
    # scipy itself loses ~2e-5 (relative) where p = theta / (theta + mu) rounds near 1.
    np.testing.assert_allclose(ours.numpy(), ref, rtol=5e-5, atol=1e-6)


def test_nb_matches_50_digit_reference_in_float64_and_float32():
    pytest.importorskip("mpmath")
    grid = list(itertools.product([0, 1, 7, 1e3, 1e6], [1e-6, 0.1, 3.0, 1e3, 1e6], [1e-3, 0.5, 20.0, 1e5, 1e8]))
    x, mu, theta = (np.array(v) for v in zip(*grid, strict=True))
    ref = np.array([_mp_nb(*g) for g in grid])
    scale = np.maximum(1.0, np.abs(ref))
    got64 = log_nb_positive(_t64(x), _t64(mu), _t64(theta)).numpy()
    assert np.max(np.abs(got64 - ref) / scale) < 1e-9
    got32 = log_nb_positive(*(torch.tensor(v, dtype=torch.float32) for v in (x, mu, theta)))
    assert got32.dtype == torch.float32
    assert np.max(np.abs(got32.double().numpy() - ref) / scale) < 1e-4


@settings(max_examples=60, deadline=None)
@given(
    log_mu=st.floats(-4, 5),
    log_theta=st.floats(-2, 6),
    x=st.integers(0, 20_000),
)
def test_nb_property_matches_scipy(log_mu, log_theta, x):
    mu, theta = 10.0**log_mu, 10.0**log_theta
    got = log_nb_positive(_t64(x), _t64(mu), _t64(theta)).item()
    ref = float(_scipy_nb(x, mu, theta))
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_nb_approaches_poisson_for_huge_theta_in_float32():
    x = torch.arange(0, 40, dtype=torch.float32)
    for rate in (0.01, 7.3, 25.0):
        got = log_nb_positive(x, torch.tensor(rate), torch.tensor(1e8))
        ref = stats.poisson.logpmf(x.numpy(), rate)
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_nb_pmf_sums_to_one():
    x = _t64(np.arange(0, 4000))
    for mu, theta in [(0.3, 0.2), (5.0, 2.0), (40.0, 1e6)]:
        total = torch.exp(log_nb_positive(x, _t64(mu), _t64(theta))).sum().item()
        assert total == pytest.approx(1.0, abs=1e-9)


def test_nb_zero_mean_puts_all_mass_at_zero():
    lp = log_nb_positive(torch.tensor([0.0, 1.0, 5.0]), torch.tensor(0.0), torch.tensor(2.0))
    assert lp[0].item() == 0.0
    assert (lp[1:] < -15).all()


def test_nb_finite_and_nonpositive_at_extremes_with_finite_gradients():
    values = list(
        itertools.product(
            [0.0, 1.0, 10.0, 1e3, 1e6], [0.0, 1e-8, 1e-3, 1.0, 1e3, 1e6], [1e-8, 1e-3, 1.0, 1e3, 1e8, 1e12]
        )
    )
    x, mu, theta = (torch.tensor(v, dtype=torch.float32) for v in zip(*values, strict=True))
    mu.requires_grad_(True)
    theta.requires_grad_(True)
    lp = log_nb_positive(x, mu, theta)
    assert torch.isfinite(lp).all()
    assert (lp <= 1e-5).all()
    lp.sum().backward()
    assert torch.isfinite(mu.grad).all()
    assert torch.isfinite(theta.grad).all()


def test_nb_gradcheck_float64():
    x = _t64([0.0, 1, 3, 7, 20, 100, 5, 0, 2, 0.5, 1e4])
    mu = _t64([0.5, 1, 2.9, 50, 20, 1e4, 1e-2, 3, 2.0, 0.3, 1e4 + 50]).requires_grad_()
    theta = _t64([1.0, 0.01, 1e7, 2, 5.9, 0.1, 1e3, 6.0, 6.1, 1e-3, 30]).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, t: log_nb_positive(x, m, t), (mu, theta))
    x_pos = x[x > 0].clone().requires_grad_()
    keep = x > 0
    assert torch.autograd.gradcheck(lambda a: log_nb_positive(a, mu.detach()[keep], theta.detach()[keep]), (x_pos,))


def test_nb_float32_gradients_match_float64_textbook():
    x = _t64([0.0, 1, 3, 7, 20, 100, 5, 2])
    mu = _t64([0.5, 1, 2.9, 50, 20, 1e4, 1e-2, 2.0]).requires_grad_()
    theta = _t64([1.0, 0.01, 1e4, 2, 5.9, 0.1, 1e3, 6.1]).requires_grad_()
    ref_mu, ref_theta = torch.autograd.grad(_textbook_nb(x, mu, theta).sum(), (mu, theta))
    mu32 = mu.detach().float().requires_grad_()
    theta32 = theta.detach().float().requires_grad_()
    got_mu, got_theta = torch.autograd.grad(log_nb_positive(x.float(), mu32, theta32).sum(), (mu32, theta32))
    torch.testing.assert_close(got_mu.double(), ref_mu, rtol=1e-4, atol=1e-5)
    # compare d/dlog(theta), the scale at which theta is learned
    torch.testing.assert_close((got_theta.double() * theta), ref_theta * theta, rtol=1e-4, atol=1e-5)


def test_nb_theta_gradient_is_not_rounding_noise_in_poisson_limit():
    # d log NB / d log(theta) at theta -> inf is ~((x - mu)^2 - x) / (2 theta): tiny, not O(1) noise.
    x = torch.tensor([0.0, 3.0, 9.0])
    theta = torch.full((3,), 1e8, requires_grad=True)
    log_nb_positive(x, torch.tensor(3.0), theta).sum().backward()
    assert (theta.grad * theta).abs().max() < 1e-5


def test_nb_second_derivative_raises():
    mu = torch.tensor([2.0], requires_grad=True)
    (g,) = torch.autograd.grad(
        log_nb_positive(torch.tensor([3.0]), mu, torch.tensor([1.0])).sum(), mu, create_graph=True
    )
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), mu)


def test_nb_broadcasts_and_accepts_numbers():
    lp = log_nb_positive(torch.zeros(4, 3), torch.ones(3), 2.0)
    assert lp.shape == (4, 3)
    assert lp.dtype == torch.float32
    lp_int = log_nb_positive(torch.tensor([0, 2, 5]), torch.tensor([1.0, 2.0, 3.0]), torch.tensor(2.0))
    torch.testing.assert_close(lp_int, log_nb_positive(torch.tensor([0.0, 2, 5]), torch.tensor([1.0, 2, 3]), 2.0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_nb_low_precision_inputs_upcast_to_float32(dtype):
    x = torch.tensor([0.0, 1.0, 4.0, 30.0, 200.0])
    mu = torch.tensor([0.01, 1.3, 5.0, 25.0, 180.0])
    theta = torch.tensor([0.2, 1.0, 3.0, 12.0, 1e4])
    got = log_nb_positive(x.to(dtype), mu.to(dtype), theta.to(dtype))
    assert got.dtype == torch.float32
    # identical to float32 on the rounded values, and close to float32 on the exact ones
    torch.testing.assert_close(got, log_nb_positive(x.to(dtype).float(), mu.to(dtype).float(), theta.to(dtype).float()))
    torch.testing.assert_close(got, log_nb_positive(x, mu, theta), rtol=0.02, atol=0.05)


def test_nb_bfloat16_extremes_are_finite():
    x = torch.tensor([0.0, 1.0, 1e4, 5.0], dtype=torch.bfloat16)
    mu = torch.tensor([1e-8, 1e6, 1e4, 5.0], dtype=torch.bfloat16)
    theta = torch.tensor([1e8, 1e-3, 0.1, 1e30], dtype=torch.bfloat16)
    assert torch.isfinite(log_nb_positive(x, mu, theta)).all()


# --------------------------------------------------------------------------------------------------
# zero-inflated negative binomial
# --------------------------------------------------------------------------------------------------


def test_zinb_without_inflation_equals_nb():
    x = torch.tensor([0.0, 0.0, 1.0, 4.0, 50.0])
    mu = torch.tensor([0.5, 10.0, 1.0, 3.0, 45.0])
    theta = torch.tensor([1.0, 0.3, 2.0, 1e8, 5.0])
    nb = log_nb_positive(x, mu, theta)
    torch.testing.assert_close(log_zinb_positive(x, mu, theta, torch.full_like(x, -30.0)), nb, rtol=0, atol=1e-6)
    torch.testing.assert_close(log_zinb_positive(x, mu, theta, torch.full_like(x, -float("inf"))), nb)


def test_zinb_zero_probability_is_dropout_plus_nb_zero():
    mu, theta = _t64([0.2, 3.0, 50.0, 1e4]), _t64([0.5, 2.0, 1e3, 0.1])
    zi_logits = _t64([-2.0, 0.0, 1.5, 8.0])
    pi = torch.sigmoid(zi_logits)
    expected = pi + (1 - pi) * torch.exp(log_nb_positive(torch.zeros(4, dtype=torch.float64), mu, theta))
    got = torch.exp(log_zinb_positive(torch.zeros(4, dtype=torch.float64), mu, theta, zi_logits))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_zinb_matches_scipy_mixture():
    x = np.arange(0, 60, dtype=np.float64)
    for mu, theta, logit in [(0.4, 0.3, -1.0), (12.0, 2.0, 0.5), (30.0, 1e5, 3.0)]:
        pi = 1 / (1 + np.exp(-logit))
        ref = np.log(pi * (x == 0) + (1 - pi) * stats.nbinom.pmf(x, theta, theta / (theta + mu)))
        got = log_zinb_positive(_t64(x), _t64(mu), _t64(theta), _t64(logit)).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-10)


def test_zinb_full_inflation_is_point_mass_and_gradients_finite():
    x = torch.tensor([0.0, 2.0])
    lp = log_zinb_positive(x, torch.tensor(3.0), torch.tensor(1.0), torch.tensor(float("inf")))
    assert lp[0].item() == 0.0
    assert lp[1].item() == -float("inf")
    mu = torch.tensor([0.0, 1e-8, 4.0, 1e6], requires_grad=True)
    zi = torch.tensor([-30.0, 0.0, 30.0, 2.0], requires_grad=True)
    log_zinb_positive(torch.tensor([0.0, 1.0, 0.0, 3.0]), mu, torch.tensor(2.0), zi).sum().backward()
    assert torch.isfinite(mu.grad).all()
    assert torch.isfinite(zi.grad).all()


def test_zinb_bfloat16_close_to_float32():
    x = torch.tensor([0.0, 1.0, 6.0])
    mu, theta, zi = (
        torch.tensor([2.0, 1.0, 5.0]),
        torch.tensor([1.0, 3.0, 20.0]),
        torch.tensor([-1.0, 0.5, 2.0]),
    )
    got = log_zinb_positive(x.bfloat16(), mu.bfloat16(), theta.bfloat16(), zi.bfloat16())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, log_zinb_positive(x, mu, theta, zi), rtol=0.02, atol=0.05)


# --------------------------------------------------------------------------------------------------
# Poisson
# --------------------------------------------------------------------------------------------------


def test_poisson_matches_scipy():
    rate, x = np.meshgrid(np.logspace(-6, 6, 13), XS, indexing="ij")
    got = log_poisson(_t64(x), _t64(rate)).numpy()
    np.testing.assert_allclose(got, stats.poisson.logpmf(x, rate), rtol=1e-9, atol=1e-9)


def test_poisson_float32_accurate_for_large_counts():
    x = torch.tensor([999_000.0, 1_000_000.0, 1_001_500.0])
    got = log_poisson(x, torch.tensor(1e6))
    ref = stats.poisson.logpmf(x.double().numpy(), 1e6)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-3)


def test_poisson_zero_rate_and_low_precision():
    assert log_poisson(torch.tensor(0.0), torch.tensor(0.0)).item() == 0.0
    got = log_poisson(torch.tensor([0.0, 3.0]).bfloat16(), torch.tensor([1e-8, 1e6]).bfloat16())
    assert got.dtype == torch.float32
    assert torch.isfinite(got).all()
    rate = torch.tensor([0.0, 1e-8, 2.0], requires_grad=True)
    log_poisson(torch.tensor([0.0, 1.0, 5.0]), rate).sum().backward()
    assert torch.isfinite(rate.grad).all()


def test_poisson_gradcheck_float64():
    x = _t64([0.0, 1, 3, 50, 0.5])
    rate = _t64([0.5, 2.0, 3.0, 40.0, 1e-3]).requires_grad_()
    assert torch.autograd.gradcheck(lambda r: log_poisson(x, r), (rate,))
    x_pos = x[1:].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: log_poisson(a, rate.detach()[1:]), (x_pos,))


def test_gradients_pass_straight_through_the_mean_clamp():
    # mu below eps is clamped in the value, but its gradient still points up (softmax underflow).
    mu = torch.tensor([1e-12, 1e-12], requires_grad=True)
    rate = torch.tensor([1e-12], requires_grad=True)
    log_nb_positive(torch.tensor([2.0, 0.0]), mu, torch.tensor(1.0)).sum().backward()
    log_poisson(torch.tensor([2.0]), rate).sum().backward()
    assert mu.grad[0] > 1e6
    assert mu.grad[1] == pytest.approx(-1.0, rel=1e-6)
    assert rate.grad[0] > 1e6


@pytest.mark.parametrize("density", [0.02, 0.1, 0.3])
def test_sparse_path_matches_dense_values_and_gradients(density):
    """The CPU fast path for mostly-zero counts gives the dense path's values and gradients."""
    from genailab.likelihoods import functional as F_

    gen = torch.Generator().manual_seed(0)
    shape = (64, 128)
    x = torch.poisson(torch.full(shape, 3.0), generator=gen) * (torch.rand(shape, generator=gen) < density)
    mu = torch.rand(shape, generator=gen).mul(20).add(1e-3).requires_grad_()
    theta = torch.rand(shape[1], generator=gen).mul(50).add(0.05).requires_grad_()
    assert F_._nonzero_index(x) is not None
    sparse = log_nb_positive(x, mu, theta)
    gs = torch.autograd.grad(sparse.sum(), (mu, theta))
    old = F_._SPARSE_BELOW
    try:
        F_._SPARSE_BELOW = 0.0  # force the dense path
        assert F_._nonzero_index(x) is None
        dense = log_nb_positive(x, mu, theta)
        gd = torch.autograd.grad(dense.sum(), (mu, theta))
    finally:
        F_._SPARSE_BELOW = old
    torch.testing.assert_close(sparse, dense, rtol=1e-6, atol=1e-5)
    for a, b in zip(gs, gd, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
