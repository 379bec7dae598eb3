import math

import pytest
import torch

from genailab.diffusion import SCHEDULES, CosineSchedule, broadcast_to, make_schedule
from genailab.errors import InvalidInputError

T = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
VP = ("linear", "cosine")


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_alpha_sigma_in_unit_interval_and_monotone(name):
    alpha, sigma = make_schedule(name).alpha_sigma(T)
    assert alpha.shape == sigma.shape == T.shape
    assert ((alpha >= 0) & (alpha <= 1) & (sigma >= 0) & (sigma <= 1)).all()
    assert (alpha.diff() < 0).all()
    assert (sigma.diff() > 0).all()
    log_snr = make_schedule(name).log_snr(T[1:-1])  # +inf at t=0; -inf at t=1 for flow only
    assert torch.isfinite(log_snr).all()
    assert (log_snr.diff() < 0).all()


@pytest.mark.parametrize("name", VP)
def test_vp_schedules_preserve_variance(name):
    sch = make_schedule(name)
    alpha, sigma = sch.alpha_sigma(T)
    assert sch.variance_preserving
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(T))


def test_flow_schedule_is_linear_path():
    sch = make_schedule("flow")
    alpha, sigma = sch.alpha_sigma(T)
    assert not sch.variance_preserving
    torch.testing.assert_close(alpha + sigma, torch.ones_like(T))
    torch.testing.assert_close(sigma, T)


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_endpoints(name):
    alpha, sigma = make_schedule(name).alpha_sigma(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert alpha[0] == pytest.approx(1.0)
    assert sigma[0] == pytest.approx(0.0)
    expected_alpha1 = {"linear": math.exp(-0.5 * (0.1 + 0.5 * 19.9)), "cosine": math.sqrt(1 - 0.9999**2)}
    assert alpha[1].item() == pytest.approx(expected_alpha1.get(name, 0.0), abs=1e-12)
    assert alpha[1] < 0.02
    assert sigma[1] > 0.9998
    assert make_schedule(name).log_snr(torch.zeros(1))[0] == math.inf


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_derivatives_match_finite_differences(name):
    sch = make_schedule(name)
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    h = 1e-6
    a_hi, s_hi = sch.alpha_sigma(t + h)
    a_lo, s_lo = sch.alpha_sigma(t - h)
    d_alpha, d_sigma = sch.derivatives(t)
    torch.testing.assert_close(d_alpha, (a_hi - a_lo) / (2 * h), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_sigma, (s_hi - s_lo) / (2 * h), rtol=1e-5, atol=1e-6)


def test_linear_matches_ddpm_discrete_betas():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    alpha, _ = make_schedule("linear").alpha_sigma(t)
    torch.testing.assert_close(alpha**2, alpha_bar, rtol=0, atol=2e-3)


def test_cosine_close_to_nichol_dhariwal():
    f = lambda t: torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    alpha, _ = make_schedule("cosine").alpha_sigma(T)
    torch.testing.assert_close(alpha**2, f(T) / f(torch.zeros(1, dtype=torch.float64)), rtol=0, atol=1e-2)


def test_cosine_small_t_has_no_cancellation():
    _, sigma = make_schedule("cosine").alpha_sigma(torch.tensor([1e-5], dtype=torch.float32))
    _, sigma64 = make_schedule("cosine").alpha_sigma(torch.tensor([1e-5], dtype=torch.float64))
    assert sigma.item() == pytest.approx(sigma64.item(), rel=1e-4)


def test_schedule_argument_errors():
    with pytest.raises(InvalidInputError, match="unknown noise schedule 'nope'.*cosine, flow, linear"):
        make_schedule("nope")
    with pytest.raises(InvalidInputError, match="t must be a \\(B,\\) tensor"):
        make_schedule("flow").alpha_sigma(torch.zeros(2, 2))
    with pytest.raises(InvalidInputError, match="floating-point"):
        make_schedule("flow").alpha_sigma(torch.zeros(2, dtype=torch.long))
    with pytest.raises(InvalidInputError, match="sigma_max"):
        CosineSchedule(sigma_max=1.0)


def test_broadcast_to():
    x = torch.zeros(3, 4, 5)
    v = torch.arange(3.0)
    b = broadcast_to(v, x)
    assert b.shape == (3, 1, 1)
    assert torch.equal((b + x)[:, 2, 3], v)
    with pytest.raises(InvalidInputError, match="per-sample vector of shape \\(3,\\)"):
        broadcast_to(torch.zeros(4), x)
