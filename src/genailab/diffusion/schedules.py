"""Continuous-time noise schedules: ``x_t = alpha(t) * x0 + sigma(t) * eps`` for ``t`` in ``[0, 1]``.

``t = 0`` is clean data and ``t = 1`` is (almost) pure noise. A schedule holds no learnable state; it
maps a ``(B,)`` vector of times to the ``(B,)`` coefficients ``alpha`` and ``sigma`` and their time
derivatives (used by the probability-flow ODE samplers).

We write the few formulas by hand instead of wrapping ``diffusers`` schedulers: those are built around
discrete timestep indices (``0..999``) with their own off-by-one conventions and per-step state, while
our objectives and samplers work in continuous time on latent tokens ``(B, N, D)``, which keeps every
formula a small pure function that is tested directly.

Registered schedules (:data:`SCHEDULES`):

``"linear"``
    Variance-preserving (VP) continuous-time limit of DDPM's linear betas (``1e-4 .. 0.02`` over 1000
    steps; Ho et al. 2020, Song et al. 2021 "Score-Based Generative Modeling through SDEs"):
    ``alpha(t)^2 = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2))`` with ``beta_min = 0.1``,
    ``beta_max = 20``, ``sigma^2 = 1 - alpha^2``. At ``t = 1``, ``alpha ~ 6.6e-3`` (log-SNR ~ -10).
``"cosine"``
    VP cosine schedule of Nichol & Dhariwal 2021 (``s = 0.008``):
    ``alpha(t) = cos(pi/2 (t + s)/(1 + s)) / cos(pi/2 s/(1 + s))``. It reaches ``alpha = 0`` at
    ``t = 1``, where the log-SNR is ``-inf`` and an epsilon model cannot be turned into a clean-data
    estimate, so the angle stops short of ``pi/2`` at ``sigma(1) = sigma_max = 0.9999`` (``alpha(1) =
    0.0141``, log-SNR ``-8.5``, close to the linear schedule's end point). This plays the role of
    Nichol & Dhariwal's ``beta <= 0.999`` clipping without a kink (see :class:`CosineSchedule`).
``"flow"``
    Rectified-flow / optimal-transport path (Liu et al. 2022; Lipman et al. 2022): ``alpha = 1 - t``,
    ``sigma = t``. Not variance preserving.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch

from genailab.errors import InvalidInputError
from genailab.registry import Registry

__all__ = [
    "SCHEDULES",
    "CosineSchedule",
    "FlowSchedule",
    "LinearSchedule",
    "NoiseSchedule",
    "broadcast_to",
    "make_schedule",
]

SCHEDULES: Registry[type[NoiseSchedule]] = Registry("noise schedule")


def broadcast_to(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector ``(B,)`` to ``(B, 1, ..., 1)`` so it broadcasts against ``x``.

    Parameters
    ----------
    v
        ``(B,)`` per-sample values (times, ``alpha``, ``sigma``, weights).
    x
        ``(B, ...)`` tensor to broadcast against.

    Returns
    -------
    ``(B, 1, ..., 1)`` view of ``v`` with ``x.ndim`` dimensions, in ``x``'s dtype.
    """
    if v.ndim != 1 or x.ndim < 1 or v.shape[0] != x.shape[0]:
        raise InvalidInputError(
            f"expected a per-sample vector of shape ({x.shape[0] if x.ndim else '?'},) to broadcast "
            f"against x of shape {tuple(x.shape)}, got shape {tuple(v.shape)}."
        )
    return v.to(dtype=x.dtype).reshape(v.shape[0], *([1] * (x.ndim - 1)))


def _check_t(t: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.ndim != 1:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise InvalidInputError(f"t must be a (B,) tensor of times in [0, 1], got {shape}.")
    if not torch.is_floating_point(t):
        raise InvalidInputError(f"t must be a floating-point tensor, got dtype {t.dtype}.")
    return t


class NoiseSchedule(abc.ABC):
    """A Gaussian noising path ``x_t = alpha(t) x0 + sigma(t) eps`` over continuous ``t`` in ``[0, 1]``.

    Subclasses implement :meth:`alpha_sigma` and :meth:`derivatives`; nothing is learned.
    """

    name: ClassVar[str]
    variance_preserving: ClassVar[bool]

    @abc.abstractmethod
    def _alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    @abc.abstractmethod
    def _derivatives(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Signal and noise coefficients.

        Parameters
        ----------
        t
            ``(B,)`` floating-point times in ``[0, 1]``.

        Returns
        -------
        ``(alpha, sigma)``, each ``(B,)`` in ``[0, 1]``, in ``t``'s dtype.
        """
        return self._alpha_sigma(_check_t(t))

    def derivatives(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Time derivatives ``(d alpha / dt, d sigma / dt)``, each ``(B,)``.

        VP schedules have ``d sigma / dt = +inf`` at ``t = 0`` (``sigma ~ sqrt(t)``); samplers never
        evaluate there.
        """
        return self._derivatives(_check_t(t))

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """``log(alpha^2 / sigma^2)``, ``(B,)``; ``+inf`` at ``t = 0``, decreasing in ``t``."""
        alpha, sigma = self.alpha_sigma(t)
        return 2.0 * (torch.log(alpha) - torch.log(sigma))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@SCHEDULES.register("linear")
class LinearSchedule(NoiseSchedule):
    """VP schedule from DDPM's linear betas in continuous time (Ho et al. 2020; Song et al. 2021).

    ``alpha^2 = exp(-B(t))`` with ``B(t) = beta_min t + (beta_max - beta_min) t^2 / 2``.
    """

    name = "linear"
    variance_preserving = True
    beta_min: ClassVar[float] = 0.1
    beta_max: ClassVar[float] = 20.0

    def _integral(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def _alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        big_b = self._integral(t)
        alpha = torch.exp(-0.5 * big_b)
        sigma = torch.sqrt(-torch.expm1(-big_b))  # 1 - alpha^2 without cancellation near t = 0
        return alpha, sigma

    def _derivatives(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, sigma = self._alpha_sigma(t)
        beta = self.beta_min + (self.beta_max - self.beta_min) * t
        d_alpha = -0.5 * beta * alpha
        d_sigma = 0.5 * beta * alpha * alpha / sigma  # d/dt sqrt(1 - alpha^2)
        return d_alpha, d_sigma


@SCHEDULES.register("cosine")
class CosineSchedule(NoiseSchedule):
    """VP cosine schedule (Nichol & Dhariwal 2021, ``s = 0.008``) ending at ``sigma(1) = sigma_max``.

    ``alpha(t) = cos(phi(t)) / cos(phi_0)`` with the angle ``phi`` running linearly from
    ``phi_0 = pi/2 * s / (1 + s)`` at ``t = 0`` to ``phi_1 = arccos(alpha_min cos(phi_0))`` at ``t = 1``,
    where ``alpha_min = sqrt(1 - sigma_max^2)``. Nichol & Dhariwal's angle ends at ``pi/2`` (``alpha =
    0``); ending at ``phi_1`` instead compresses time by under 1% and keeps the schedule smooth, whereas
    clamping ``sigma`` would leave a flat stretch near ``t = 1`` (zero ODE velocity) and a kink that
    costs ODE solvers accuracy.

    Parameters
    ----------
    s
        Small offset that keeps ``sigma`` from being too small near ``t = 0``.
    sigma_max
        ``sigma(1)``, close to 1 so that ``alpha(1) > 0`` and the log-SNR stays finite at ``t = 1``.
    """

    name = "cosine"
    variance_preserving = True

    def __init__(self, s: float = 0.008, sigma_max: float = 0.9999) -> None:
        if not (isinstance(s, (int, float)) and math.isfinite(s) and 0.0 <= s < 1.0):
            raise InvalidInputError(f"s={s!r} must be a finite number in [0, 1).")
        if not (isinstance(sigma_max, (int, float)) and 0.0 < sigma_max < 1.0):
            raise InvalidInputError(f"sigma_max={sigma_max!r} must be in (0, 1) (1 would give alpha = 0).")
        self.s = float(s)
        self.sigma_max = float(sigma_max)
        self.alpha_min = math.sqrt(1.0 - self.sigma_max**2)
        self._phi0 = self.s / (1.0 + self.s) * (math.pi / 2)
        self._phi1 = math.acos(self.alpha_min * math.cos(self._phi0))
        if self._phi1 <= self._phi0:
            raise InvalidInputError(
                f"sigma_max={sigma_max!r} is too small for s={s!r}: sigma(0) would exceed sigma(1)."
            )

    def _alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self._phi0 + (self._phi1 - self._phi0) * t
        c0 = math.cos(self._phi0)
        alpha = torch.cos(phi) / c0
        # 1 - cos^2(phi)/cos^2(phi0) = sin(phi - phi0) sin(phi + phi0) / cos^2(phi0): no cancellation at t ~ 0
        sigma2 = torch.sin(phi - self._phi0) * torch.sin(phi + self._phi0) / c0**2
        return alpha, torch.sqrt(sigma2.clamp(min=0.0))

    def _derivatives(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, sigma = self._alpha_sigma(t)
        phi = self._phi0 + (self._phi1 - self._phi0) * t
        d_alpha = -torch.sin(phi) * (self._phi1 - self._phi0) / math.cos(self._phi0)
        return d_alpha, -alpha * d_alpha / sigma

    def __repr__(self) -> str:
        return f"CosineSchedule(s={self.s}, sigma_max={self.sigma_max})"


@SCHEDULES.register("flow")
class FlowSchedule(NoiseSchedule):
    """Rectified-flow (optimal-transport) path ``alpha = 1 - t``, ``sigma = t`` (Liu et al. 2022)."""

    name = "flow"
    variance_preserving = False

    def _alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 1.0 - t, t.clone()

    def _derivatives(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return -torch.ones_like(t), torch.ones_like(t)


def make_schedule(name: str) -> NoiseSchedule:
    """Build the registered schedule ``name`` with its default settings."""
    return SCHEDULES.get(name)()
