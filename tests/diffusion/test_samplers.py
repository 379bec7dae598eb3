"""Samplers against the exact denoiser of Gaussian data.

For x0 ~ N(m, s^2) per coordinate, E[x0 | x_t] = m + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha m),
so with that denoiser every sampler should return N(m, s^2) samples up to its discretisation error.
Steps used (chosen with a wide margin; worst observed error ~0.035 against the 0.05 tolerance):
ddpm 100, ddim 50, euler 50, heun 20 (39 NFE), dpm++2m 20.
"""

import math

import pytest
import torch

from genailab.diffusion import SAMPLERS, make_objective, nfe, sample, time_grid
from genailab.diffusion.samplers import ddim
from genailab.errors import InvalidInputError

M, S = 1.5, 0.5
SHAPE = (4000, 2, 3)
STEPS = {"ddpm": 100, "ddim": 50, "euler": 50, "heun": 20, "dpm++2m": 20}
OBJECTIVES = [("eps", "cosine"), ("v", "cosine"), ("x0", "cosine"), ("flow", "flow"), ("eps", "linear")]
DETERMINISTIC = ("ddim", "euler", "heun", "dpm++2m")


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny; on a loaded 2-core machine intra-op threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gaussian_denoiser(obj):
    """The exact network output for x0 ~ N(M, S^2), in ``obj``'s parametrisation."""

    def denoise(x_t, t):
        alpha, sigma = obj.noise_schedule.alpha_sigma(t)
        alpha = alpha.view(-1, *([1] * (x_t.ndim - 1)))
        sigma = sigma.view(-1, *([1] * (x_t.ndim - 1)))
        x0_hat = M + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (x_t - alpha * M)
        return obj.from_x0(x0_hat, x_t, t)

    return denoise


def test_every_sampler_is_covered():
    assert set(SAMPLERS.names()) == set(STEPS)


@pytest.mark.parametrize("sampler", sorted(STEPS))
@pytest.mark.parametrize(("objective", "schedule"), OBJECTIVES)
def test_samplers_reproduce_gaussian_data(sampler, objective, schedule):
    obj = make_objective(objective, schedule)
    g = torch.Generator().manual_seed(0)
    x = sample(sampler, gaussian_denoiser(obj), obj, SHAPE, steps=STEPS[sampler], generator=g)
    assert x.shape == SHAPE
    assert x.dtype == torch.float32
    assert abs(x.mean().item() - M) < 0.05
    assert abs(x.std().item() - S) < 0.05


@pytest.mark.parametrize("sampler", sorted(STEPS))
def test_reproducible_given_generator(sampler):
    obj = make_objective("v")
    den = gaussian_denoiser(obj)
    a = sample(sampler, den, obj, (8, 3), steps=5, generator=torch.Generator().manual_seed(1))
    b = sample(sampler, den, obj, (8, 3), steps=5, generator=torch.Generator().manual_seed(1))
    c = sample(sampler, den, obj, (8, 3), steps=5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_deterministic_samplers_depend_only_on_start(sampler):
    obj = make_objective("flow")
    den = gaussian_denoiser(obj)
    noise = torch.randn(8, 3, generator=torch.Generator().manual_seed(4))
    a = sample(sampler, den, obj, (8, 3), steps=6, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(123)
    b = sample(sampler, den, obj, (8, 3), steps=6, x_start=noise)
    torch.testing.assert_close(a, b)


def test_ddpm_is_stochastic_given_start():
    obj = make_objective("eps")
    den = gaussian_denoiser(obj)
    x1 = torch.randn(8, 3)
    a = sample("ddpm", den, obj, (8, 3), steps=5, x_start=x1, generator=torch.Generator().manual_seed(0))
    b = sample("ddpm", den, obj, (8, 3), steps=5, x_start=x1, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)


def test_ddim_eta_adds_noise():
    obj = make_objective("eps")
    den = gaussian_denoiser(obj)
    x1 = torch.randn(8, 3)
    a = ddim(den, obj, (8, 3), steps=5, x_start=x1, eta=0.0)
    b = ddim(den, obj, (8, 3), steps=5, x_start=x1, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(a, b)
    with pytest.raises(InvalidInputError, match="eta=-1"):
        ddim(den, obj, (8, 3), steps=5, eta=-1)


@pytest.mark.parametrize("sampler", sorted(STEPS))
@pytest.mark.parametrize(("objective", "schedule"), [("eps", "cosine"), ("flow", "flow")])
def test_partial_noising_stays_near_start(sampler, objective, schedule):
    obj = make_objective(objective, schedule)
    g = torch.Generator().manual_seed(5)
    x_real = M + S * torch.randn(512, 4, generator=g)
    t_start = 0.05
    t = torch.full((512,), t_start)
    x_start = obj.add_noise(x_real, torch.randn(512, 4, generator=g), t)
    sigma = obj.noise_schedule.alpha_sigma(t)[1][0].item()
    x = sample(sampler, gaussian_denoiser(obj), obj, (512, 4), steps=5, x_start=x_start, t_start=t_start, generator=g)
    rms = (x - x_real).pow(2).mean().sqrt().item()
    assert rms < 2 * sigma < 0.2  # a full run from t=1 would land ~0.7 away


@pytest.mark.parametrize("sampler", sorted(STEPS))
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_nfe_counts_network_calls(sampler, steps):
    obj = make_objective("x0")
    calls = []

    def den(x, t):
        calls.append(t[0].item())
        assert t.shape == (x.shape[0],)
        assert t.dtype == x.dtype
        return torch.zeros_like(x)

    x = sample(sampler, den, obj, (2, 3), steps=steps)
    assert len(calls) == nfe(sampler, steps)
    assert min(calls) >= obj.t_min
    assert calls[0] == 1.0
    assert torch.isfinite(x).all()
    assert nfe("heun", steps) == 2 * steps - 1


def test_time_grid():
    vp = make_objective("eps")
    grid = time_grid(vp, 5)
    assert grid.shape == (6,)
    assert grid.dtype == torch.float64
    torch.testing.assert_close(grid[:5], torch.linspace(1.0, vp.t_min, 5, dtype=torch.float64))
    assert grid[-1] == 0.0
    torch.testing.assert_close(
        time_grid(make_objective("flow"), 4, 0.5), torch.linspace(0.5, 0.0, 5, dtype=torch.float64)
    )
    assert time_grid(vp, 1).tolist() == [1.0, 0.0]


def test_float64_and_one_step():
    obj = make_objective("flow")
    x = sample("heun", gaussian_denoiser(obj), obj, (16, 2), steps=1, dtype=torch.float64)
    assert x.dtype == torch.float64
    torch.testing.assert_close(x, torch.full((16, 2), M, dtype=torch.float64))  # one step = E[x0]


def test_argument_errors():
    obj = make_objective("eps")
    den = gaussian_denoiser(obj)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidInputError, match=f"steps={bad!r} must be a positive integer"):
            sample("ddim", den, obj, (2, 3), steps=bad)
    for bad in (0.0, 1.5, math.nan):
        with pytest.raises(InvalidInputError, match="t_start=.* must be a number in \\(0, 1\\]"):
            sample("ddim", den, obj, (2, 3), steps=2, t_start=bad)
    with pytest.raises(InvalidInputError, match="t_start=0.0005 must be greater than the objective's t_min"):
        sample("ddim", den, obj, (2, 3), steps=2, t_start=0.0005, x_start=torch.zeros(2, 3))
    with pytest.raises(InvalidInputError, match="t_start=0.5 < 1 needs x_start"):
        sample("ddim", den, obj, (2, 3), steps=2, t_start=0.5)
    for bad_shape in ((), (2, 0), [2, -3], "23"):
        with pytest.raises(InvalidInputError, match="shape=.* must be a non-empty tuple"):
            sample("ddim", den, obj, bad_shape, steps=2)
    with pytest.raises(InvalidInputError, match="x_start must be a tensor of shape \\(2, 3\\)"):
        sample("ddim", den, obj, (2, 3), steps=2, x_start=torch.zeros(3, 2))
    with pytest.raises(InvalidInputError, match="denoise\\(x_t, t\\) must return a tensor of shape \\(2, 3\\)"):
        sample("ddim", lambda x, t: x[:, :1], obj, (2, 3), steps=2)
    with pytest.raises(InvalidInputError, match="objective must be a DiffusionObjective"):
        sample("ddim", den, "eps", (2, 3), steps=2)
    with pytest.raises(InvalidInputError, match="unknown sampler 'lms'.*ddim, ddpm, dpm\\+\\+2m, euler, heun"):
        sample("lms", den, obj, (2, 3), steps=2)
    with pytest.raises(InvalidInputError, match="unknown sampler"):
        nfe("lms", 3)
