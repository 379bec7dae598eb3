"""Count distributions: scipy agreement, exact and Monte-Carlo moments, sampling limits, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from genailab.likelihoods import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial

N_DRAWS = 40_000


def _assert_moments(draws: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor, n_se: float = 5.0) -> None:
    """Sample mean and variance within ``n_se`` standard errors of the analytic ones, per column."""
    d = draws.double()
    n = d.shape[0]
    m = d.mean(0)
    centred = d - m
    v = centred.pow(2).mean(0)
    se_mean = torch.sqrt(v / n)
    se_var = torch.sqrt((centred.pow(4).mean(0) - v**2) / n)
    assert ((m - mean.double()).abs() <= n_se * se_mean + 1e-12).all(), (m, mean)
    assert ((v - variance.double()).abs() <= n_se * se_var + 1e-12).all(), (v, variance)


def _is_count(t: torch.Tensor) -> bool:
    return bool(((t >= 0) & (t == t.round())).all())


# --------------------------------------------------------------------------------------------------
# NegativeBinomial
# --------------------------------------------------------------------------------------------------


def test_nb_log_prob_matches_scipy_and_broadcasts():
    mu = torch.tensor([[0.5, 4.0, 60.0]], dtype=torch.float64)  # (1, 3)
    theta = torch.tensor([[0.2], [5.0]], dtype=torch.float64)  # (2, 1)
    nb = NegativeBinomial(mu, theta)
    assert nb.batch_shape == (2, 3)
    x = torch.tensor([[0.0, 3.0, 70.0], [1.0, 0.0, 55.0]], dtype=torch.float64)
    m, t = nb.mu.numpy(), nb.theta.numpy()
    np.testing.assert_allclose(nb.log_prob(x).numpy(), stats.nbinom.logpmf(x.numpy(), t, t / (t + m)), rtol=1e-10)


def test_nb_moments_exact_and_match_scipy():
    nb = NegativeBinomial(torch.tensor([2.0, 10.0]), torch.tensor([1.0, 5.0]))
    torch.testing.assert_close(nb.mean, torch.tensor([2.0, 10.0]))
    torch.testing.assert_close(nb.variance, torch.tensor([6.0, 30.0]))
    n, p = 5.0, 5.0 / 15.0
    assert stats.nbinom.var(n, p) == pytest.approx(30.0)


def test_nb_monte_carlo_moments():
    torch.manual_seed(1)
    nb = NegativeBinomial(torch.tensor([0.3, 5.0, 80.0, 4.0]), torch.tensor([0.5, 3.0, 50.0, 1e8]))
    draws = nb.sample((N_DRAWS,))
    assert draws.shape == (N_DRAWS, 4)
    assert draws.dtype == torch.float32
    assert _is_count(draws)
    _assert_moments(draws, nb.mean, nb.variance)


def test_nb_sampling_is_robust_at_extremes():
    torch.manual_seed(2)
    nb = NegativeBinomial(torch.tensor([0.0, 1e-8, 3.0, 1e6, 2.0]), torch.tensor([1.0, 1e-3, 1e30, 1e-3, 1e-8]))
    draws = nb.sample((2000,))
    assert torch.isfinite(draws).all()
    assert _is_count(draws)
    assert (draws[:, 0] == 0).all()  # mu = 0
    assert draws[:, 2].mean().item() == pytest.approx(3.0, rel=0.1)  # Poisson limit, variance ~ mean
    assert draws[:, 2].var().item() == pytest.approx(3.0, rel=0.15)


def test_nb_sample_has_no_grad_and_log_prob_does():
    mu = torch.tensor([3.0, 1.0], requires_grad=True)
    theta = torch.tensor([2.0, 0.5], requires_grad=True)
    nb = NegativeBinomial(mu, theta)
    assert not nb.sample().requires_grad
    nb.log_prob(torch.tensor([1.0, 4.0])).sum().backward()
    assert torch.isfinite(mu.grad).all()
    assert torch.isfinite(theta.grad).all()


def test_nb_expand_and_sample_shape():
    nb = NegativeBinomial(torch.tensor([1.0, 2.0]), torch.tensor(3.0))
    big = nb.expand((4, 2))
    assert isinstance(big, NegativeBinomial)
    assert big.batch_shape == (4, 2)
    assert big.sample((3,)).shape == (3, 4, 2)
    torch.testing.assert_close(big.log_prob(torch.ones(4, 2)), nb.log_prob(torch.ones(2)).expand(4, 2))


def test_nb_bfloat16_parameters():
    nb = NegativeBinomial(torch.tensor([2.0, 30.0]).bfloat16(), torch.tensor([1.0, 4.0]).bfloat16())
    assert nb.log_prob(torch.tensor([1.0, 25.0])).dtype == torch.float32
    draws = nb.sample((5,))
    assert draws.dtype == torch.float32
    assert _is_count(draws)


def test_nb_float64_parameters_sample_float64():
    nb = NegativeBinomial(torch.tensor([2.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
    assert nb.sample((3,)).dtype == torch.float64


# --------------------------------------------------------------------------------------------------
# ZeroInflatedNegativeBinomial
# --------------------------------------------------------------------------------------------------


def test_zinb_properties_and_variance_formula_by_summation():
    mu = torch.tensor([0.7, 6.0, 40.0], dtype=torch.float64)
    theta = torch.tensor([0.4, 2.0, 15.0], dtype=torch.float64)
    zi_logits = torch.tensor([-1.0, 0.3, 2.0], dtype=torch.float64)
    zinb = ZeroInflatedNegativeBinomial(mu, theta, zi_logits)
    assert isinstance(zinb, NegativeBinomial)
    torch.testing.assert_close(zinb.zi_probs, torch.sigmoid(zi_logits))
    torch.testing.assert_close(zinb.zi_logits, zi_logits)
    x = torch.arange(0, 6000, dtype=torch.float64)[:, None]  # (K, 1) support, enough for these parameters
    p = torch.exp(zinb.log_prob(x.expand(-1, 3)))
    torch.testing.assert_close(p.sum(0), torch.ones(3, dtype=torch.float64))
    mean = (p * x).sum(0)
    var = (p * x**2).sum(0) - mean**2
    torch.testing.assert_close(zinb.mean, mean)
    torch.testing.assert_close(zinb.variance, var)
    pi = torch.sigmoid(zi_logits)
    torch.testing.assert_close(zinb.variance, (1 - pi) * mu * (1 + mu / theta + pi * mu))


def test_zinb_log_prob_matches_scipy_mixture():
    mu, theta, logit = 5.0, 1.5, 0.4
    zinb = ZeroInflatedNegativeBinomial(
        torch.tensor(mu, dtype=torch.float64), torch.tensor(theta, dtype=torch.float64), torch.tensor(logit)
    )
    x = np.arange(0, 30.0)
    pi = 1 / (1 + np.exp(-logit))
    ref = np.log(pi * (x == 0) + (1 - pi) * stats.nbinom.pmf(x, theta, theta / (theta + mu)))
    np.testing.assert_allclose(zinb.log_prob(torch.tensor(x)).numpy(), ref, rtol=1e-6)


def test_zinb_without_inflation_equals_nb():
    mu, theta = torch.tensor([0.5, 3.0, 20.0]), torch.tensor([1.0, 0.2, 8.0])
    x = torch.tensor([0.0, 2.0, 17.0])
    zinb = ZeroInflatedNegativeBinomial(mu, theta, torch.full((3,), -30.0))
    torch.testing.assert_close(zinb.log_prob(x), NegativeBinomial(mu, theta).log_prob(x), rtol=0, atol=1e-6)


def test_zinb_monte_carlo_moments():
    torch.manual_seed(3)
    zinb = ZeroInflatedNegativeBinomial(
        torch.tensor([0.8, 6.0, 50.0]), torch.tensor([0.6, 3.0, 20.0]), torch.tensor([-1.5, 0.0, 1.0])
    )
    draws = zinb.sample((N_DRAWS,))
    assert _is_count(draws)
    _assert_moments(draws, zinb.mean, zinb.variance)
    zero_frac = (draws == 0).float().mean(0)
    p0 = torch.exp(zinb.log_prob(torch.zeros(3)))
    assert ((zero_frac - p0).abs() < 5 * torch.sqrt(p0 * (1 - p0) / N_DRAWS)).all()


def test_zinb_expand_keeps_zero_inflation():
    zinb = ZeroInflatedNegativeBinomial(torch.tensor([1.0, 2.0]), torch.tensor(3.0), torch.tensor([0.0, 1.0]))
    big = zinb.expand((5, 2))
    assert isinstance(big, ZeroInflatedNegativeBinomial)
    assert big.zi_logits.shape == (5, 2)
    torch.testing.assert_close(big.mean[0], zinb.mean)


# --------------------------------------------------------------------------------------------------
# Poisson
# --------------------------------------------------------------------------------------------------


def test_poisson_log_prob_mu_alias_and_moments():
    rate = torch.tensor([0.2, 3.0, 150.0], dtype=torch.float64)
    pois = Poisson(rate)
    assert isinstance(pois, torch.distributions.Poisson)
    assert pois.mu is pois.rate
    x = torch.tensor([1.0, 0.0, 140.0], dtype=torch.float64)
    np.testing.assert_allclose(pois.log_prob(x).numpy(), stats.poisson.logpmf(x.numpy(), rate.numpy()), rtol=1e-10)
    torch.testing.assert_close(pois.mean, rate)
    torch.testing.assert_close(pois.variance, rate)


def test_poisson_monte_carlo_moments_and_bfloat16():
    torch.manual_seed(4)
    pois = Poisson(torch.tensor([0.3, 4.0, 90.0]))
    draws = pois.sample((N_DRAWS,))
    assert _is_count(draws)
    _assert_moments(draws, pois.mean, pois.variance)
    low = Poisson(torch.tensor([3.0, 1e6]).bfloat16())
    assert low.log_prob(torch.tensor([2.0, 1e6])).dtype == torch.float32
    assert low.sample((2,)).dtype == torch.float32
    assert isinstance(low.expand((4, 2)), Poisson)


def test_all_distributions_expose_mu_and_linear_mean_in_library():
    scale = torch.tensor([0.1, 0.3, 0.6])
    for lib in (100.0, 200.0):
        mu = lib * scale
        dists = [NegativeBinomial(mu, 2.0), ZeroInflatedNegativeBinomial(mu, 2.0, 0.5), Poisson(mu)]
        for d in dists:
            torch.testing.assert_close(d.mu, mu)
    mean = lambda lib: ZeroInflatedNegativeBinomial(lib * scale, 2.0, 0.5).mean  # noqa: E731
    torch.testing.assert_close(mean(200.0), 2 * mean(100.0))


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------


def _make(name: str, validate_args: bool | None = True):
    mu, theta = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0])
    return {
        "nb": lambda: NegativeBinomial(mu, theta, validate_args=validate_args),
        "zinb": lambda: ZeroInflatedNegativeBinomial(mu, theta, torch.zeros(2), validate_args=validate_args),
        "poisson": lambda: Poisson(mu, validate_args=validate_args),
    }[name]()


@pytest.mark.parametrize("name", ["nb", "zinb", "poisson"])
@pytest.mark.parametrize("value", [[-1.0, 0.0], [0.5, 1.0]], ids=["negative", "non-integer"])
def test_log_prob_rejects_non_counts(name, value):
    with pytest.raises(ValueError, match="support"):
        _make(name).log_prob(torch.tensor(value))


@pytest.mark.parametrize("name", ["nb", "zinb", "poisson"])
def test_log_prob_without_validation_accepts_anything(name):
    out = _make(name, validate_args=False).log_prob(torch.tensor([0.5, 1.0]))
    assert out.shape == (2,)


@pytest.mark.parametrize(
    ("make", "param"),
    [
        (lambda: NegativeBinomial(torch.tensor([-1.0]), torch.tensor([1.0]), validate_args=True), "mu"),
        (lambda: NegativeBinomial(torch.tensor([1.0]), torch.tensor([0.0]), validate_args=True), "theta"),
        (
            lambda: ZeroInflatedNegativeBinomial(
                torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([float("nan")]), validate_args=True
            ),
            "zi_logits",
        ),
        (lambda: Poisson(torch.tensor([-2.0]), validate_args=True), "rate"),
    ],
)
def test_invalid_parameters_raise_value_error(make, param):
    with pytest.raises(ValueError, match=param):
        make()


def test_default_validation_follows_torch_setting():
    prior = torch.distributions.Distribution._validate_args
    try:
        torch.distributions.Distribution.set_default_validate_args(False)
        NegativeBinomial(torch.tensor([-1.0]), torch.tensor([1.0]))  # no check
        torch.distributions.Distribution.set_default_validate_args(True)
        with pytest.raises(ValueError, match="mu"):
            NegativeBinomial(torch.tensor([-1.0]), torch.tensor([1.0]))
    finally:
        torch.distributions.Distribution.set_default_validate_args(prior)
