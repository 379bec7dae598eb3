"""Diffusion training objectives: what the network predicts and how to read its prediction back.

An objective pairs a noise schedule (:mod:`genailab.diffusion.schedules`) with a prediction type.
Training draws times with :meth:`DiffusionObjective.sample_t`, noises the data with
:meth:`~DiffusionObjective.add_noise` and regresses the network output on
:meth:`~DiffusionObjective.target` with :meth:`~DiffusionObjective.loss`. Samplers read a prediction
back as a clean-data estimate (:meth:`~DiffusionObjective.to_x0`), a noise estimate
(:meth:`~DiffusionObjective.to_eps`) or an ODE velocity (:meth:`~DiffusionObjective.to_velocity`).

Registered objectives (:data:`OBJECTIVES`), all with ``x_t = alpha x0 + sigma eps``:

``"eps"``
    DDPM noise prediction, target ``eps`` (Ho et al. 2020). VP schedule, default ``"cosine"``.
``"v"``
    Velocity ("v") prediction, target ``alpha eps - sigma x0`` (Salimans & Ho 2022). VP schedule.
``"x0"``
    Clean-data prediction, target ``x0``. VP schedule.
``"flow"``
    Rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2022) on ``alpha = 1 - t``,
    ``sigma = t``: target ``dx_t/dt = eps - x0``. Optional logit-normal time sampling (Esser et al.
    2024).

Objectives are frozen configs, rebuilt from their ``(name, schedule)`` strings by
:func:`make_objective`; like the schedules they hold no learnable state.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch

from genailab.config import Config, check_choice, check_fraction, check_positive
from genailab.diffusion.schedules import SCHEDULES, NoiseSchedule, broadcast_to, make_schedule
from genailab.errors import InvalidInputError
from genailab.registry import Registry

__all__ = [
    "OBJECTIVES",
    "DiffusionObjective",
    "EpsObjective",
    "FlowObjective",
    "VObjective",
    "X0Objective",
    "make_objective",
]

OBJECTIVES: Registry[type[DiffusionObjective]] = Registry("diffusion objective")


def _check_same_shape(name: str, a: torch.Tensor, ref: torch.Tensor, ref_name: str = "x0") -> None:
    if not isinstance(a, torch.Tensor) or a.shape != ref.shape:
        shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
        raise InvalidInputError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {shape}.")


def _time(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` on ``x``'s device, at least float32 so half-precision times keep the schedule accurate."""
    if not isinstance(t, torch.Tensor):
        raise InvalidInputError(f"t must be a (B,) tensor of times in [0, 1], got {type(t).__name__}.")
    dtype = torch.promote_types(t.dtype, torch.float32) if t.is_floating_point() else t.dtype
    return t.to(device=x.device, dtype=dtype)


@dataclass(frozen=True)
class DiffusionObjective(Config, abc.ABC):
    """Base class: a schedule plus a prediction parametrisation.

    Parameters
    ----------
    schedule
        Registered noise-schedule name (see :data:`~genailab.diffusion.schedules.SCHEDULES`).
    t_min
        Smallest training time: :meth:`sample_t` draws from ``[t_min, 1]``, and samplers never
        evaluate the network below it (their time grid ends at ``t_min``, then jumps to ``t = 0``).
    """

    name: ClassVar[str]
    #: Schedules this objective accepts; ``None`` means every variance-preserving schedule.
    allowed_schedules: ClassVar[tuple[str, ...] | None] = None

    schedule: str = "cosine"
    t_min: float = 1e-3

    def __post_init__(self) -> None:
        check_choice("schedule", self.schedule, SCHEDULES.names())
        allowed = self.allowed_schedules
        if allowed is None:
            allowed = tuple(n for n in SCHEDULES.names() if SCHEDULES.get(n).variance_preserving)
        if self.schedule not in allowed:
            raise InvalidInputError(
                f"schedule={self.schedule!r} cannot be used with the {self.name!r} objective; "
                f"expected one of {', '.join(map(repr, allowed))}."
            )
        check_fraction("t_min", self.t_min)

    # ------------------------------------------------------------------ schedule access
    @cached_property
    def noise_schedule(self) -> NoiseSchedule:
        """The :class:`~genailab.diffusion.schedules.NoiseSchedule` named by :attr:`schedule`."""
        return make_schedule(self.schedule)

    def _coefs(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, sigma = self.noise_schedule.alpha_sigma(_time(t, x))
        return broadcast_to(alpha, x), broadcast_to(sigma, x)

    # ------------------------------------------------------------------ training
    def sample_t(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Draw ``(n,)`` float32 training times uniformly in ``[t_min, 1]``."""
        check_positive("n", n, integer=True)
        u = torch.rand(n, generator=generator, device=device)
        return self.t_min + (1.0 - self.t_min) * u

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = alpha(t) x0 + sigma(t) noise``.

        Parameters
        ----------
        x0, noise
            ``(B, ...)`` clean data and standard normal noise of the same shape.
        t
            ``(B,)`` times.

        Returns
        -------
        ``(B, ...)`` noised data.
        """
        _check_same_shape("noise", noise, x0)
        alpha, sigma = self._coefs(t, x0)
        return alpha * x0 + sigma * noise

    @abc.abstractmethod
    def _target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def to_x0_eps(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Read a prediction back as ``(x0_hat, eps_hat)``, both ``(B, ...)``."""

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's regression target at ``x_t = add_noise(x0, noise, t)``, ``(B, ...)``."""
        _check_same_shape("noise", noise, x0)
        return self._target(x0, noise, t)

    def loss(
        self,
        pred: torch.Tensor,
        x0: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sample mean squared error ``mean((pred - target)^2)`` over the non-batch dimensions.

        Parameters
        ----------
        pred
            ``(B, ...)`` network output.
        x0, noise, t
            As in :meth:`target`.
        weight
            Optional ``(B,)`` per-sample weights multiplying the error.

        Returns
        -------
        ``(B,)`` losses; average them for the batch loss.
        """
        _check_same_shape("pred", pred, x0)
        err = (pred - self.target(x0, noise, t)).pow(2).flatten(1).mean(dim=1)  # (B,)
        if weight is not None:
            if not isinstance(weight, torch.Tensor) or weight.shape != err.shape:
                shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
                raise InvalidInputError(f"weight must have shape {tuple(err.shape)} (one per sample), got {shape}.")
            err = err * weight.to(err.dtype)
        return err

    # ------------------------------------------------------------------ conversions for samplers
    def to_x0(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Clean-data estimate ``x0_hat`` from a prediction, ``(B, ...)``."""
        return self.to_x0_eps(pred, x_t, t)[0]

    def to_eps(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noise estimate ``eps_hat`` from a prediction, ``(B, ...)``."""
        return self.to_x0_eps(pred, x_t, t)[1]

    def to_velocity(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ODE velocity ``dx/dt = alpha'(t) x0_hat + sigma'(t) eps_hat``, ``(B, ...)``.

        For the flow path this is the rectified-flow velocity ``eps_hat - x0_hat``; for VP schedules
        it is the probability-flow ODE (Song et al. 2021) written in ``(alpha, sigma)``.
        """
        x0_hat, eps_hat = self.to_x0_eps(pred, x_t, t)
        d_alpha, d_sigma = self.noise_schedule.derivatives(_time(t, x_t))
        return broadcast_to(d_alpha, x_t) * x0_hat + broadcast_to(d_sigma, x_t) * eps_hat

    def from_x0(self, x0_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_x0`: the prediction whose clean-data estimate is ``x0_hat``.

        Useful to wrap an x0-space denoiser (or an analytic one in tests) as this objective's network.
        Needs ``sigma(t) > 0``.
        """
        _check_same_shape("x_t", x_t, x0_hat, "x0_hat")
        alpha, sigma = self._coefs(t, x_t)
        eps_hat = (x_t - alpha * x0_hat) / sigma
        return self._target(x0_hat, eps_hat, t)


@OBJECTIVES.register("eps")
@dataclass(frozen=True)
class EpsObjective(DiffusionObjective):
    """Noise prediction, target ``eps`` (Ho et al. 2020 "Denoising Diffusion Probabilistic Models")."""

    name: ClassVar[str] = "eps"

    def _target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise

    def to_x0_eps(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x0 = (x_t - sigma eps) / alpha``."""
        alpha, sigma = self._coefs(t, x_t)
        return (x_t - sigma * pred) / alpha, pred


@OBJECTIVES.register("v")
@dataclass(frozen=True)
class VObjective(DiffusionObjective):
    """Velocity prediction ``v = alpha eps - sigma x0`` (Salimans & Ho 2022 "Progressive Distillation")."""

    name: ClassVar[str] = "v"

    def _target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self._coefs(t, x0)
        return alpha * noise - sigma * x0

    def to_x0_eps(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x0 = alpha x_t - sigma v``, ``eps = sigma x_t + alpha v`` (``alpha^2 + sigma^2 = 1``)."""
        alpha, sigma = self._coefs(t, x_t)
        return alpha * x_t - sigma * pred, sigma * x_t + alpha * pred


@OBJECTIVES.register("x0")
@dataclass(frozen=True)
class X0Objective(DiffusionObjective):
    """Clean-data prediction, target ``x0``."""

    name: ClassVar[str] = "x0"

    def _target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x0

    def to_x0_eps(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``eps = (x_t - alpha x0) / sigma`` (undefined at ``t = 0``)."""
        alpha, sigma = self._coefs(t, x_t)
        return pred, (x_t - alpha * pred) / sigma


@OBJECTIVES.register("flow")
@dataclass(frozen=True)
class FlowObjective(DiffusionObjective):
    """Rectified flow / flow matching: predict ``u = dx_t/dt = eps - x0`` on ``x_t = (1-t) x0 + t eps``.

    Liu et al. 2022 "Flow Straight and Fast"; Lipman et al. 2022 "Flow Matching for Generative
    Modeling". The sampler integrates ``dx/dt = u`` from ``t = 1`` (noise) to ``t = 0`` (data).

    Parameters
    ----------
    schedule
        Must be ``"flow"``.
    t_min
        Smallest training time (default 0: the flow target is defined at ``t = 0``).
    logit_normal
        Draw training times as ``sigmoid(N(0, 1))`` rescaled to ``[t_min, 1]``, which favours
        intermediate times (Esser et al. 2024 "Scaling Rectified Flow Transformers"), instead of
        uniformly.
    """

    name: ClassVar[str] = "flow"
    allowed_schedules: ClassVar[tuple[str, ...] | None] = ("flow",)

    schedule: str = "flow"
    t_min: float = 0.0
    logit_normal: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.logit_normal, bool):
            raise InvalidInputError(f"logit_normal={self.logit_normal!r} must be true or false.")

    def sample_t(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Draw ``(n,)`` training times in ``[t_min, 1]``: uniform, or logit-normal if requested."""
        if not self.logit_normal:
            return super().sample_t(n, generator=generator, device=device)
        check_positive("n", n, integer=True)
        u = torch.sigmoid(torch.randn(n, generator=generator, device=device))
        return self.t_min + (1.0 - self.t_min) * u

    def _target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def to_x0_eps(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x0 = x_t - t u``, ``eps = x_t + (1 - t) u``."""
        tt = broadcast_to(_time(t, x_t), x_t)
        return x_t - tt * pred, x_t + (1.0 - tt) * pred

    def to_velocity(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The prediction itself: the network models ``dx/dt`` directly."""
        return pred


def make_objective(name: str, schedule: str | None = None) -> DiffusionObjective:
    """Build a registered objective from its name and (optionally) a schedule name.

    Parameters
    ----------
    name
        ``"eps"``, ``"v"``, ``"x0"`` or ``"flow"`` (see :data:`OBJECTIVES`).
    schedule
        Noise-schedule name; ``None`` uses the objective's default (``"cosine"`` for the VP
        objectives, ``"flow"`` for ``"flow"``).

    Returns
    -------
    The frozen objective; ``make_objective(obj.name, obj.schedule)`` rebuilds ``obj`` when its other
    fields have their defaults.
    """
    cls = OBJECTIVES.get(name)
    if schedule is None:
        return cls()
    return cls(schedule=schedule)
