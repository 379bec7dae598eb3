"""Samplers: integrate a trained denoiser from noise (``t = 1``) back to data (``t = 0``).

Every sampler is a pure function registered in :data:`SAMPLERS` with one signature::

    sampler(denoise, objective, shape, *, steps, generator=None, x_start=None, t_start=1.0,
            device=None, dtype=torch.float32) -> Tensor

``denoise(x_t, t_vec) -> pred`` returns the network output in the objective's parametrisation (with
classifier-free guidance already combined by the caller, see :mod:`genailab.diffusion.guidance`),
for ``x_t`` of ``shape`` ``(B, ...)`` and ``t_vec`` of shape ``(B,)``. Samplers do not disable
autograd; call them under ``torch.no_grad()`` for a network.

Start. Without ``x_start`` sampling starts from ``x = N(0, I)`` at ``t = 1`` (also for VP schedules,
whose ``alpha(1)`` is small but not 0). With ``x_start`` it starts from ``x_start`` at ``t_start``
(SDEdit, Meng et al. 2022: pass ``objective.add_noise(x_real, noise, t_start)``).

Time grid (:func:`time_grid`). The network is evaluated at ``steps`` times spaced uniformly in ``t``
from ``t_start`` down to ``t_end = objective.t_min`` (``1e-3`` for the VP objectives, ``0`` for flow,
so the network is never queried below the times it was trained on), and the final step lands on
``t = 0`` by returning the clean-data estimate ``x0_hat`` of the last evaluation. For VP schedules
this removes the residual noise ``sigma(t_end)``; for flow (``t_end = 0``) it equals the Euler step
``x - t u`` to ``t = 0``. In both cases the grid is ``t_0 = t_start > ... > t_{steps-1} > t_steps = 0``
with a network evaluation at every point but the last.

Registered samplers and network evaluations (NFE) per call (:func:`nfe`):

============  ==============  ===============================================================
name          NFE             method
============  ==============  ===============================================================
``ddpm``      ``steps``       ancestral sampling with the posterior ``q(x_s | x_t, x0_hat)``
                              (Ho et al. 2020); stochastic
``ddim``      ``steps``       DDIM (Song et al. 2021); deterministic for ``eta = 0``, ancestral
                              (DDPM-like) for ``eta = 1``
``euler``     ``steps``       first-order Euler on ``dx/dt = objective.to_velocity(...)``
                              (rectified-flow ODE or VP probability-flow ODE)
``heun``      ``2 steps - 1`` second-order Heun on the same ODE (Karras et al. 2022); the last
                              step is a plain Euler step
``dpm++2m``   ``steps``       DPM-Solver++(2M) multistep in data-prediction form on
                              ``lambda = log(alpha / sigma)`` (Lu et al. 2022); first-order
                              (= DDIM) on the first step
============  ==============  ===============================================================

All coefficients are computed in float64 from the schedule and applied in ``dtype``. The update
formulas hold for any schedule whose ``sigma / alpha`` increases with ``t`` (VP and flow).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from genailab.diffusion.objectives import DiffusionObjective
from genailab.errors import InvalidInputError
from genailab.registry import Registry

__all__ = [
    "SAMPLERS",
    "Denoiser",
    "Sampler",
    "ddim",
    "ddpm",
    "dpmpp_2m",
    "euler",
    "heun",
    "nfe",
    "sample",
    "time_grid",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Sampler(Protocol):
    """Signature every registered sampler has (see the module docstring)."""

    def __call__(
        self,
        denoise: Denoiser,
        objective: DiffusionObjective,
        shape: Sequence[int],
        *,
        steps: int,
        generator: torch.Generator | None = None,
        x_start: torch.Tensor | None = None,
        t_start: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Return ``shape`` samples at ``t = 0`` after ``nfe(name, steps)`` calls of ``denoise``."""
        ...


SAMPLERS: Registry[Sampler] = Registry("sampler")
_NFE: dict[str, Callable[[int], int]] = {}


def _register(name: str, evaluations: Callable[[int], int]) -> Callable[[Sampler], Sampler]:
    def decorator(fn: Sampler) -> Sampler:
        SAMPLERS.register(name)(fn)
        _NFE[name] = evaluations
        return fn

    return decorator


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"steps={steps!r} must be a positive integer.")


def nfe(sampler_name: str, steps: int) -> int:
    """Number of ``denoise`` calls one run of sampler ``sampler_name`` with ``steps`` steps makes.

    ``steps`` for ``ddpm``, ``ddim``, ``euler`` and ``dpm++2m``; ``2 * steps - 1`` for ``heun``.
    """
    SAMPLERS.get(sampler_name)  # raises listing the registered samplers
    _check_steps(steps)
    return _NFE[sampler_name](steps)


def time_grid(objective: DiffusionObjective, steps: int, t_start: float = 1.0) -> torch.Tensor:
    """The ``(steps + 1,)`` float64 times a sampler visits, decreasing from ``t_start`` to 0.

    The first ``steps`` entries (where the network is evaluated) are uniform from ``t_start`` to
    ``objective.t_min``; the last entry is 0. With ``t_min = 0`` this is ``linspace(t_start, 0,
    steps + 1)``.
    """
    _check_steps(steps)
    t_end = float(objective.t_min)
    if t_end > 0.0:
        evals = torch.linspace(t_start, t_end, steps, dtype=torch.float64)
        return torch.cat([evals, torch.zeros(1, dtype=torch.float64)])
    return torch.linspace(t_start, 0.0, steps + 1, dtype=torch.float64)


class _Run:
    """Validated inputs of one sampler call: the start point, the time grid and its coefficients."""

    def __init__(
        self,
        denoise: Denoiser,
        objective: DiffusionObjective,
        shape: Sequence[int],
        steps: int,
        generator: torch.Generator | None,
        x_start: torch.Tensor | None,
        t_start: float,
        device: torch.device | str | None,
        dtype: torch.dtype,
    ) -> None:
        if not callable(denoise):
            raise InvalidInputError(f"denoise must be callable as denoise(x_t, t), got {type(denoise).__name__}.")
        if not isinstance(objective, DiffusionObjective):
            raise InvalidInputError(
                f"objective must be a DiffusionObjective (see make_objective), got {type(objective).__name__}."
            )
        if (
            not isinstance(shape, (tuple, list, torch.Size))
            or len(shape) == 0
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        ):
            raise InvalidInputError(f"shape={shape!r} must be a non-empty tuple of positive integers (B, ...).")
        _check_steps(steps)
        if (
            isinstance(t_start, bool)
            or not isinstance(t_start, (int, float))
            or not math.isfinite(t_start)
            or not 0.0 < t_start <= 1.0
        ):
            raise InvalidInputError(f"t_start={t_start!r} must be a number in (0, 1].")
        if t_start <= objective.t_min:
            raise InvalidInputError(
                f"t_start={t_start!r} must be greater than the objective's t_min={objective.t_min!r}."
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise InvalidInputError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise InvalidInputError(f"dtype={dtype!r} must be a floating-point torch.dtype.")
        shape = tuple(shape)
        if x_start is None:
            if t_start < 1.0:
                raise InvalidInputError(
                    f"t_start={t_start!r} < 1 needs x_start "
                    "(e.g. objective.add_noise(x_real, noise, t_start)); "
                    "without x_start sampling starts from pure noise at t_start=1.0."
                )
            x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        else:
            if not isinstance(x_start, torch.Tensor) or tuple(x_start.shape) != shape:
                got = tuple(x_start.shape) if isinstance(x_start, torch.Tensor) else type(x_start).__name__
                raise InvalidInputError(f"x_start must be a tensor of shape {shape}, got {got}.")
            x = x_start.to(device=device if device is not None else x_start.device, dtype=dtype)
        self.denoise = denoise
        self.objective = objective
        self.generator = generator
        self.x = x
        self.times = time_grid(objective, steps, float(t_start)).tolist()
        alpha, sigma = objective.noise_schedule.alpha_sigma(torch.tensor(self.times, dtype=torch.float64))
        self.alpha = alpha.tolist()
        self.sigma = sigma.tolist()

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Evaluate the network at ``x`` and scalar time ``t``; returns ``pred`` of ``x``'s shape."""
        t_vec = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)  # (B,)
        pred = self.denoise(x, t_vec)
        if not isinstance(pred, torch.Tensor) or pred.shape != x.shape:
            got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
            raise InvalidInputError(f"denoise(x_t, t) must return a tensor of shape {tuple(x.shape)}, got {got}.")
        return pred

    def t_vec(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """``(B,)`` vector filled with ``t``."""
        return torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise from the run's generator."""
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)

    def posterior(self, i: int) -> tuple[float, float, float]:
        """Coefficients of ``q(x_s | x_t, x0) = N(a x_t + b x0, var)`` from ``t = t_i`` to ``s = t_{i+1}``.

        With ``alpha_ts = alpha_t / alpha_s`` and ``sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2``:
        ``a = alpha_ts sigma_s^2 / sigma_t^2``, ``b = alpha_s sigma_ts^2 / sigma_t^2``,
        ``var = sigma_ts^2 sigma_s^2 / sigma_t^2`` (Kingma et al. 2021 "Variational Diffusion Models").
        """
        a_t, s_t, a_s, s_s = self.alpha[i], self.sigma[i], self.alpha[i + 1], self.sigma[i + 1]
        a_ts = a_t / a_s
        s2_ts = max(s_t**2 - a_ts**2 * s_s**2, 0.0)
        return a_ts * s_s**2 / s_t**2, a_s * s2_ts / s_t**2, s2_ts * s_s**2 / s_t**2


@_register("ddpm", lambda steps: steps)
def ddpm(
    denoise: Denoiser,
    objective: DiffusionObjective,
    shape: Sequence[int],
    *,
    steps: int,
    generator: torch.Generator | None = None,
    x_start: torch.Tensor | None = None,
    t_start: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Ancestral DDPM sampling: ``x_s ~ q(x_s | x_t, x0_hat)`` between consecutive grid times.

    See the module docstring for the arguments. Stochastic: draws noise from ``generator``.

    Returns
    -------
    ``shape`` samples at ``t = 0``.
    """
    run = _Run(denoise, objective, shape, steps, generator, x_start, t_start, device, dtype)
    x = run.x
    for i in range(steps):
        t = run.times[i]
        x0_hat = objective.to_x0(run(x, t), x, run.t_vec(x, t))
        if i == steps - 1:
            return x0_hat
        a, b, var = run.posterior(i)
        x = a * x + b * x0_hat + math.sqrt(var) * run.randn_like(x)
    raise AssertionError("unreachable")  # pragma: no cover


@_register("ddim", lambda steps: steps)
def ddim(
    denoise: Denoiser,
    objective: DiffusionObjective,
    shape: Sequence[int],
    *,
    steps: int,
    generator: torch.Generator | None = None,
    x_start: torch.Tensor | None = None,
    t_start: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM: ``x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z`` (Song et al. 2021).

    Parameters
    ----------
    eta
        Stochasticity: ``c = eta * sqrt(posterior variance)``. ``0`` (default) is the deterministic
        DDIM / first-order probability-flow solver; ``1`` matches DDPM's ancestral step in law.

    Returns
    -------
    ``shape`` samples at ``t = 0``.
    """
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise InvalidInputError(f"eta={eta!r} must be a finite number >= 0 (0 = deterministic DDIM).")
    run = _Run(denoise, objective, shape, steps, generator, x_start, t_start, device, dtype)
    x = run.x
    for i in range(steps):
        t = run.times[i]
        x0_hat, eps_hat = objective.to_x0_eps(run(x, t), x, run.t_vec(x, t))
        if i == steps - 1:
            return x0_hat
        a_s, s_s = run.alpha[i + 1], run.sigma[i + 1]
        c = eta * math.sqrt(run.posterior(i)[2])
        x = a_s * x0_hat + math.sqrt(max(s_s**2 - c**2, 0.0)) * eps_hat
        if c > 0:
            x = x + c * run.randn_like(x)
    raise AssertionError("unreachable")  # pragma: no cover


@_register("euler", lambda steps: steps)
def euler(
    denoise: Denoiser,
    objective: DiffusionObjective,
    shape: Sequence[int],
    *,
    steps: int,
    generator: torch.Generator | None = None,
    x_start: torch.Tensor | None = None,
    t_start: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Euler steps ``x_s = x_t + (s - t) dx/dt`` on the objective's ODE (flow or probability flow).

    Returns
    -------
    ``shape`` samples at ``t = 0``.
    """
    run = _Run(denoise, objective, shape, steps, generator, x_start, t_start, device, dtype)
    x = run.x
    for i in range(steps):
        t, s = run.times[i], run.times[i + 1]
        t_vec = run.t_vec(x, t)
        pred = run(x, t)
        if i == steps - 1:
            return objective.to_x0(pred, x, t_vec)
        x = x + (s - t) * objective.to_velocity(pred, x, t_vec)
    raise AssertionError("unreachable")  # pragma: no cover


@_register("heun", lambda steps: 2 * steps - 1)
def heun(
    denoise: Denoiser,
    objective: DiffusionObjective,
    shape: Sequence[int],
    *,
    steps: int,
    generator: torch.Generator | None = None,
    x_start: torch.Tensor | None = None,
    t_start: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Heun's second-order method (explicit trapezoid) on the objective's ODE (Karras et al. 2022).

    Each step but the last evaluates the velocity at both ends; the last one returns ``x0_hat``.

    Returns
    -------
    ``shape`` samples at ``t = 0``.
    """
    run = _Run(denoise, objective, shape, steps, generator, x_start, t_start, device, dtype)
    x = run.x
    for i in range(steps):
        t, s = run.times[i], run.times[i + 1]
        t_vec = run.t_vec(x, t)
        pred = run(x, t)
        if i == steps - 1:
            return objective.to_x0(pred, x, t_vec)
        d = objective.to_velocity(pred, x, t_vec)
        x_euler = x + (s - t) * d
        d_end = objective.to_velocity(run(x_euler, s), x_euler, run.t_vec(x, s))
        x = x + (s - t) * 0.5 * (d + d_end)
    raise AssertionError("unreachable")  # pragma: no cover


@_register("dpm++2m", lambda steps: steps)
def dpmpp_2m(
    denoise: Denoiser,
    objective: DiffusionObjective,
    shape: Sequence[int],
    *,
    steps: int,
    generator: torch.Generator | None = None,
    x_start: torch.Tensor | None = None,
    t_start: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): data prediction on ``lambda = log(alpha/sigma)``.

    With ``h_i = lambda_s - lambda_t`` and ``r_i = h_{i-1} / h_i``::

        D   = (1 + 1/(2 r)) x0_hat_i - 1/(2 r) x0_hat_{i-1}      (D = x0_hat_i on the first step)
        x_s = (sigma_s / sigma_t) x_t - alpha_s (exp(-h) - 1) D

    written as ``(sigma_s/sigma_t) x_t + (alpha_s - alpha_t sigma_s / sigma_t) D`` so that the flow
    schedule's ``lambda(1) = -inf`` needs no special case. First order (= DDIM) is used on the first
    step, after an infinite ``h`` (the flow start) and on the update that lands on ``t_end =
    objective.t_min`` ("lower order final", as in Lu et al.'s and diffusers' implementations): on a
    grid uniform in ``t`` a VP schedule's last ``h`` is several times the previous one, and the
    second-order extrapolation with ``r << 1`` overshoots (by +30% in standard deviation on Gaussian
    data at 10 steps). The final jump to ``t = 0`` returns ``x0_hat`` (for flow, ``t_end = 0`` and
    that jump is the step onto ``t_end``).

    Returns
    -------
    ``shape`` samples at ``t = 0``.
    """
    run = _Run(denoise, objective, shape, steps, generator, x_start, t_start, device, dtype)
    alpha = torch.tensor(run.alpha, dtype=torch.float64)
    sigma = torch.tensor(run.sigma, dtype=torch.float64)
    lam = (torch.log(alpha) - torch.log(sigma)).tolist()  # lambda_i; -inf where alpha = 0, +inf at t = 0
    x = run.x
    x0_prev: torch.Tensor | None = None
    h_prev = math.nan
    for i in range(steps):
        t = run.times[i]
        x0_hat = objective.to_x0(run(x, t), x, run.t_vec(x, t))
        if i == steps - 1:
            return x0_hat
        h = lam[i + 1] - lam[i]
        d = x0_hat
        second_order = x0_prev is not None and 0.0 < h_prev < math.inf and 0.0 < h < math.inf
        if second_order and run.times[i + 1] > objective.t_min:  # first order on the step onto t_end
            r = h_prev / h
            d = (1.0 + 0.5 / r) * x0_hat - (0.5 / r) * x0_prev
        a_t, a_s, s_t, s_s = run.alpha[i], run.alpha[i + 1], run.sigma[i], run.sigma[i + 1]
        x = (s_s / s_t) * x + (a_s - a_t * s_s / s_t) * d
        x0_prev, h_prev = x0_hat, h
    raise AssertionError("unreachable")  # pragma: no cover


def sample(
    name: str,
    denoise: Denoiser,
    objective: DiffusionObjective,
    shape: Sequence[int],
    **kwargs: Any,
) -> torch.Tensor:
    """Run the sampler registered as ``name``; ``kwargs`` are its keyword arguments (``steps``, ...).

    Examples
    --------
    >>> from genailab.diffusion import make_objective
    >>> obj = make_objective("flow")
    >>> x = sample("euler", lambda x, t: torch.zeros_like(x), obj, (2, 3), steps=4)
    >>> x.shape
    torch.Size([2, 3])
    """
    return SAMPLERS.get(name)(denoise, objective, shape, **kwargs)
