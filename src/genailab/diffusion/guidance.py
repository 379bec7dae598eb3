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
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from genailab.errors import InvalidInputError

__all__ = ["cfg_combine", "compose_guidance"]


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
