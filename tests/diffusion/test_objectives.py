import dataclasses

import pytest
import torch

from genailab.diffusion import OBJECTIVES, DiffusionObjective, FlowObjective, make_objective
from genailab.errors import InvalidInputError

COMBOS = [
    ("eps", "linear"),
    ("eps", "cosine"),
    ("v", "linear"),
    ("v", "cosine"),
    ("x0", "linear"),
    ("x0", "cosine"),
    ("flow", "flow"),
]


def _batch(obj, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = 1.5 + 0.5 * torch.randn(64, 4, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(64, 4, 8, generator=g, dtype=torch.float64)
    t = obj.sample_t(64, generator=g).to(torch.float64)
    return x0, noise, t


@pytest.mark.parametrize(("name", "schedule"), COMBOS)
def test_exact_target_round_trips(name, schedule):
    obj = make_objective(name, schedule)
    x0, noise, t = _batch(obj)
    x_t = obj.add_noise(x0, noise, t)
    target = obj.target(x0, noise, t)
    x0_hat, eps_hat = obj.to_x0_eps(target, x_t, t)
    torch.testing.assert_close(obj.to_x0(target, x_t, t), x0)
    torch.testing.assert_close(obj.to_eps(target, x_t, t), noise)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, noise)
    torch.testing.assert_close(obj.from_x0(x0, x_t, t), target)
    loss = obj.loss(target, x0, noise, t)
    assert loss.shape == (64,)
    assert torch.all(loss.abs() < 1e-20)


@pytest.mark.parametrize(("name", "schedule"), COMBOS)
def test_exact_target_round_trips_float32(name, schedule):
    obj = make_objective(name, schedule)
    x0, noise, t = (v.float() for v in _batch(obj, seed=1))
    x_t = obj.add_noise(x0, noise, t)
    target = obj.target(x0, noise, t)
    torch.testing.assert_close(obj.to_x0(target, x_t, t), x0, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(obj.to_eps(target, x_t, t), noise, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize(("name", "schedule"), COMBOS)
def test_velocity_is_time_derivative_of_path(name, schedule):
    obj = make_objective(name, schedule)
    x0, noise, _ = _batch(obj)
    t = torch.linspace(0.05, 0.95, 64, dtype=torch.float64)
    h = 1e-6
    fd = (obj.add_noise(x0, noise, t + h) - obj.add_noise(x0, noise, t - h)) / (2 * h)
    x_t = obj.add_noise(x0, noise, t)
    velocity = obj.to_velocity(obj.target(x0, noise, t), x_t, t)
    torch.testing.assert_close(velocity, fd, rtol=1e-5, atol=1e-5)


def test_targets_match_their_definitions():
    x0, noise = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    t = torch.tensor([0.1, 0.5, 0.9])
    assert torch.equal(make_objective("eps").target(x0, noise, t), noise)
    assert torch.equal(make_objective("x0").target(x0, noise, t), x0)
    torch.testing.assert_close(make_objective("flow").target(x0, noise, t), noise - x0)
    v_obj = make_objective("v")
    alpha, sigma = v_obj.noise_schedule.alpha_sigma(t)
    expected = alpha[:, None, None] * noise - sigma[:, None, None] * x0
    torch.testing.assert_close(v_obj.target(x0, noise, t), expected)
    torch.testing.assert_close(
        make_objective("flow").add_noise(x0, noise, t), (1 - t)[:, None, None] * x0 + t[:, None, None] * noise
    )


def test_loss_is_per_sample_mse_with_weights():
    obj = make_objective("eps")
    x0, noise = torch.randn(4, 3, 2), torch.randn(4, 3, 2)
    t = obj.sample_t(4)
    pred = noise + 1.0
    torch.testing.assert_close(obj.loss(pred, x0, noise, t), torch.ones(4))
    weight = torch.tensor([0.0, 1.0, 2.0, 3.0])
    torch.testing.assert_close(obj.loss(pred, x0, noise, t, weight=weight), weight)
    with pytest.raises(InvalidInputError, match="weight must have shape \\(4,\\)"):
        obj.loss(pred, x0, noise, t, weight=torch.ones(4, 1))
    with pytest.raises(InvalidInputError, match="pred must have the shape of x0"):
        obj.loss(pred[:, :2], x0, noise, t)
    with pytest.raises(InvalidInputError, match="noise must have the shape of x0"):
        obj.add_noise(x0, noise[:2], t)


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_sample_t_range_and_reproducibility(name):
    obj = make_objective(name)
    t = obj.sample_t(2000, generator=torch.Generator().manual_seed(3))
    assert t.shape == (2000,)
    assert t.dtype == torch.float32
    assert t.min() >= obj.t_min
    assert t.max() <= 1.0
    assert abs(t.mean().item() - (1 + obj.t_min) / 2) < 0.03
    assert torch.equal(t, obj.sample_t(2000, generator=torch.Generator().manual_seed(3)))


def test_logit_normal_times_concentrate_mid_range():
    obj = FlowObjective(logit_normal=True)
    t = obj.sample_t(4000, generator=torch.Generator().manual_seed(0))
    assert 0.0 < t.min()
    assert t.max() < 1.0
    assert abs(t.mean().item() - 0.5) < 0.02
    assert t.std().item() < 0.25  # uniform on [0, 1] has std 0.289
    with pytest.raises(InvalidInputError, match="n=0"):
        obj.sample_t(0)


def test_make_objective_defaults_and_round_trip():
    assert make_objective("eps").schedule == "cosine"
    assert make_objective("flow").schedule == "flow"
    for name, schedule in COMBOS:
        obj = make_objective(name, schedule)
        assert isinstance(obj, DiffusionObjective)
        assert obj.name == name
        assert make_objective(obj.name, obj.schedule) == obj
        assert type(obj).from_dict(obj.to_dict()) == obj
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.schedule = "linear"  # type: ignore[misc]


def test_objective_errors_list_allowed_values():
    with pytest.raises(InvalidInputError, match="unknown diffusion objective 'score'.*eps, flow, v, x0"):
        make_objective("score")
    with pytest.raises(InvalidInputError, match="schedule='nope' is not allowed.*'cosine'"):
        make_objective("eps", "nope")
    with pytest.raises(InvalidInputError, match="schedule='flow' cannot be used with the 'eps' objective"):
        make_objective("eps", "flow")
    with pytest.raises(InvalidInputError, match="schedule='cosine' cannot be used with the 'flow' objective"):
        make_objective("flow", "cosine")
    with pytest.raises(InvalidInputError, match="t_min=1.0"):
        FlowObjective(t_min=1.0)
