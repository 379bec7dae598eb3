"""Classifier-free guidance (CFG): combine conditional and unconditional predictions.

Pure functions on network outputs of any shape ``(B, ...)``, in whatever parametrisation the
objective uses (eps, v, x0 or flow velocity; the combination is linear, so it commutes with the
objectives' affine conversions at a fixed ``x_t``). Training drops conditions to a learned null
(``ConditionDropout``); at inference the caller evaluates the network with and without the condition
and combines the two here before handing the result to a sampler.

* :func:`cfg_combine` -- Ho & Salimans 2022 "Classifier-Free Diffusion Guidance":
  ``uncond + s (cond - uncond)``.
* :func:`compose_guidance` -- compositional, per-condition-key guidance (Liu et al. 2022
  "Compositional Visual Generation with Composable Diffusion Models"), e.g. a separate scale for the
  cell type and for the perturbation.
* :func:`guided_denoiser` -- wraps a conditional network into the guided ``(x, t) -> prediction``
  denoiser a sampler calls, picking :func:`cfg_combine` (one joint scale) or :func:`compose_guidance`
  (per-key scales); the caller supplies only the network and its full / nulled conditions.
* :func:`check_guidance` -- validates a guidance setting (one scale or ``{key: scale}``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from genailab.diffusion.samplers import Denoiser
from genailab.errors import InvalidInputError

__all__ = ["ConditionFn", "GuidedModel", "cfg_combine", "check_guidance", "compose_guidance", "guided_denoiser"]

#: ``(x_t (B, ...), t (B,), cond) -> (B, ...)`` prediction of a conditional network (``cond=None``: unconditional).
GuidedModel = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
#: ``nulled keys -> cond``: the network's condition input with those keys replaced by their null condition.
ConditionFn = Callable[[tuple[str, ...]], Any]


def _check_scale(name: str, scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise InvalidInputError(f"{name}={scale!r} must be a finite number (1 = no guidance, 0 = unconditional).")
    return float(scale)


def _check_like(name: str, value: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    if not isinstance(value, torch.Tensor) or value.shape != ref.shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InvalidInputError(f"{name} must be a tensor with the shape of {ref_name} {tuple(ref.shape)}, got {got}.")


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance ``uncond + scale * (cond - uncond)``.

    Parameters
    ----------
    cond, uncond
        ``(B, ...)`` predictions with the condition and with the null condition.
    scale
        Guidance scale ``s``: ``1`` returns ``cond``, ``0`` returns ``uncond``, ``> 1`` extrapolates
        away from the unconditional prediction.

    Returns
    -------
    ``(B, ...)`` guided prediction.

    Raises
    ------
    InvalidInputError
        If ``scale`` (reported as ``guidance_scale``) is not finite or the shapes differ.
    """
    s = _check_scale("guidance_scale", scale)
    if not isinstance(cond, torch.Tensor):
        raise InvalidInputError(f"cond must be a tensor, got {type(cond).__name__}.")
    _check_like("uncond", uncond, cond, "cond")
    if s == 1.0:
        return cond
    if s == 0.0:
        return uncond
    return uncond + s * (cond - uncond)


def compose_guidance(
    full: torch.Tensor, dropped: Mapping[str, torch.Tensor], scales: Mapping[str, float]
) -> torch.Tensor:
    """Compositional CFG with one scale per condition key.

    ``full + sum_k (s_k - 1) * (full - dropped[k])``, where ``full`` is the prediction with every
    condition and ``dropped[k]`` the prediction with key ``k`` replaced by its null condition (all
    other keys kept). This is the composable-diffusion sum of Liu et al. 2022 (per-attribute
    guidance). With one key ``k`` it equals ``cfg_combine(full, dropped[k], s_k)``; with every
    ``s_k = 1`` it returns ``full``.

    Parameters
    ----------
    full
        ``(B, ...)`` prediction with all conditions.
    dropped
        ``{key: (B, ...)}`` predictions with that key nulled.
    scales
        ``{key: s_k}`` guidance scales; every key must be in ``dropped``. Keys of ``dropped`` missing
        from ``scales`` are ignored (scale 1).

    Returns
    -------
    ``(B, ...)`` guided prediction.

    Raises
    ------
    InvalidInputError
        For a scale key absent from ``dropped``, a non-finite scale or mismatched shapes.
    """
    if not isinstance(full, torch.Tensor):
        raise InvalidInputError(f"full must be a tensor, got {type(full).__name__}.")
    if not isinstance(dropped, Mapping) or not isinstance(scales, Mapping):
        raise InvalidInputError(
            f"dropped and scales must be mappings keyed by condition name, got "
            f"{type(dropped).__name__} and {type(scales).__name__}."
        )
    missing = sorted(set(scales) - set(dropped))
    if missing:
        raise InvalidInputError(
            f"scales has key(s) {missing} with no prediction in dropped; dropped has keys {sorted(dropped)}."
        )
    out = full
    for key, scale in scales.items():
        s = _check_scale(f"guidance_scale[{key!r}]", scale)
        _check_like(f"dropped[{key!r}]", dropped[key], full, "full")
        if s != 1.0:
            out = out + (s - 1.0) * (full - dropped[key])
    return out


def check_guidance(scale: float | Mapping[str, float]) -> None:
    """Check a guidance setting: one finite scale, or ``{key: finite scale}``.

    Raises
    ------
    InvalidInputError
        Naming the offending scale (``guidance_scale`` or the key) and its value.
    """
    items = scale.items() if isinstance(scale, Mapping) else [("guidance_scale", scale)]
    for name, s in items:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise InvalidInputError(f"guidance scale {name}={s!r} must be a finite number.")


def guided_denoiser(
    model_fn: GuidedModel,
    keys: Sequence[str],
    guidance: float | Mapping[str, float],
    condition: ConditionFn,
) -> Denoiser:
    """Classifier-free-guided denoiser ``(x_t, t) -> prediction`` over a conditional network.

    With one scale ``s`` the network is evaluated with every condition and with every condition
    nulled and combined by :func:`cfg_combine`; with ``{key: s_k}`` it is evaluated with every
    condition and once per key whose scale is not 1 with that key nulled, combined by
    :func:`compose_guidance`. Scale 1 (or no key with a scale other than 1) costs one network call per
    step. The conditions are built once, here, not at every step.

    Parameters
    ----------
    model_fn
        ``(x_t (B, ...), t (B,), cond) -> (B, ...)`` network prediction.
    keys
        The network's condition keys, in order; ``()`` = an unconditional network, called with
        ``cond=None`` (``guidance`` is then ignored).
    guidance
        One scale for all keys jointly, or ``{key: scale}`` per key (keys left out keep scale 1).
    condition
        ``condition(nulled)`` returns the network's ``cond`` with the keys in ``nulled`` replaced by
        their null condition; ``condition(())`` is the full condition.

    Returns
    -------
    The guided denoiser ``(x_t (B, ...), t (B,)) -> (B, ...)`` for :func:`~genailab.diffusion.sample`.

    Raises
    ------
    InvalidInputError
        For a per-key scale whose key is not in ``keys``.
    """
    keys = tuple(keys)
    if not keys:
        return lambda x, t: model_fn(x, t, None)
    full_cond = condition(())
    if isinstance(guidance, Mapping):
        unknown = [k for k in guidance if k not in keys]
        if unknown:
            raise InvalidInputError(f"guidance for unknown condition key(s) {unknown}; keys are {list(keys)}.")
        active = {k: float(s) for k, s in guidance.items() if float(s) != 1.0}
        dropped = {k: condition((k,)) for k in active}

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            full = model_fn(x, t, full_cond)
            if not active:
                return full
            outs = {k: model_fn(x, t, c) for k, c in dropped.items()}  # {key: (B, ...)}
            return compose_guidance(full, outs, active)

        return denoise
    scale = float(guidance)
    null_cond = condition(keys)

    def denoise_joint(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        full = model_fn(x, t, full_cond)
        if scale == 1.0:
            return full
        return cfg_combine(full, model_fn(x, t, null_cond), scale)

    return denoise_joint
