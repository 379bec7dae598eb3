"""Distillation losses: a small student network learns from a frozen teacher's outputs and features.

* :func:`output_matching_loss` -- knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in
  a Neural Network", arXiv:1503.02531) for regression outputs: the student's prediction regresses the
  teacher's prediction at the same inputs. Diffusion networks output velocities or noise estimates, not
  logits, so there is no temperature: the soft target is the teacher's output itself.
* :func:`feature_matching_loss` -- "hints" (Romero et al. 2015, "FitNets", arXiv:1412.6550): intermediate
  student features, mapped to the teacher's width by a learned :class:`FeatureProjection`, regress the
  teacher's features at the same depth.

The losses are pure functions; the only parameters are the projections, an ``nn.Module`` that lives beside
the student during distillation and is discarded afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from genailab.errors import InvalidInputError

__all__ = ["FeatureProjection", "feature_matching_loss", "output_matching_loss"]


def _check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim < 1:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InvalidInputError(f"{name} must be a (B, ...) tensor, got {got}.")
    return value


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(dim=1)  # (B,)


def output_matching_loss(
    student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample mean squared error between student and (detached) teacher predictions.

    Parameters
    ----------
    student
        ``(B, ...)`` student output (e.g. a flow velocity ``(B, m, d)``).
    teacher
        ``(B, ...)`` teacher output at the same inputs; no gradient flows into it.
    weight
        Optional ``(B,)`` per-sample weights multiplying the error.

    Returns
    -------
    ``(B,)`` losses; zero exactly where the student equals the teacher.

    Raises
    ------
    InvalidInputError
        If the shapes differ or ``weight`` is not ``(B,)``.
    """
    student = _check_tensor("student", student)
    teacher = _check_tensor("teacher", teacher)
    if teacher.shape != student.shape:
        raise InvalidInputError(
            f"teacher must have the shape of student {tuple(student.shape)}, got {tuple(teacher.shape)}."
        )
    err = _per_sample_mse(student, teacher.detach().to(student.dtype))  # (B,)
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or weight.shape != err.shape:
            got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise InvalidInputError(f"weight must have shape {tuple(err.shape)} (one per sample), got {got}.")
        err = err * weight.to(err.dtype)
    return err


class FeatureProjection(nn.Module):
    """Learned linear maps from student feature widths to teacher feature widths, one per matched layer.

    Each map acts on the last dimension, so features of any shape ``(B, ..., W_s)`` become
    ``(B, ..., W_t)``. Every map starts as the identity embedding (``weight = eye(W_t, W_s)``, zero bias):
    equal widths give the identity, a narrower student is padded with zeros and a wider one truncated,
    so at initialisation the loss compares the student's features themselves with the teacher's.

    Parameters
    ----------
    student_widths, teacher_widths
        Feature widths ``W_s`` and ``W_t`` of the matched layers, in the same order.

    Examples
    --------
    >>> proj = FeatureProjection((64, 64), (96, 96))
    >>> [f.shape for f in proj([torch.randn(2, 4, 64), torch.randn(2, 4, 64)])]
    [torch.Size([2, 4, 96]), torch.Size([2, 4, 96])]
    """

    def __init__(self, student_widths: Sequence[int], teacher_widths: Sequence[int]) -> None:
        super().__init__()
        student_widths, teacher_widths = tuple(student_widths), tuple(teacher_widths)
        if not student_widths or len(student_widths) != len(teacher_widths):
            raise InvalidInputError(
                f"student_widths={student_widths} and teacher_widths={teacher_widths} must be non-empty and "
                "have one entry per matched layer."
            )
        for name, widths in (("student_widths", student_widths), ("teacher_widths", teacher_widths)):
            if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
                raise InvalidInputError(f"{name}={widths} must be positive integers.")
        self.student_widths, self.teacher_widths = student_widths, teacher_widths
        self.maps = nn.ModuleList(nn.Linear(ws, wt) for ws, wt in zip(student_widths, teacher_widths, strict=True))
        for layer in self.maps:
            nn.init.eye_(layer.weight)  # (W_t, W_s): identity embedding
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Project student features.

        Parameters
        ----------
        features
            One ``(B, ..., W_s[i])`` tensor per matched layer.

        Returns
        -------
        One ``(B, ..., W_t[i])`` tensor per matched layer.
        """
        if len(features) != len(self.maps):
            raise InvalidInputError(f"expected {len(self.maps)} student feature tensors, got {len(features)}.")
        out = []
        for i, (f, layer) in enumerate(zip(features, self.maps, strict=True)):
            f = _check_tensor(f"features[{i}]", f)
            if f.shape[-1] != layer.in_features:
                raise InvalidInputError(
                    f"features[{i}] has width {f.shape[-1]}, but the projection expects {layer.in_features}."
                )
            out.append(layer(f))  # (B, ..., W_t)
        return out


def feature_matching_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    projection: FeatureProjection | None = None,
    *,
    normalize: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """FitNets-style hint loss over matched layers, averaged over the layers.

    For layer ``l``: ``e_l = mean((P_l(s_l) - t_l)^2)`` over the non-batch dimensions, divided by the
    teacher feature's mean square ``mean(t_l^2) + eps`` when ``normalize`` (a relative error, so layers
    with large activations do not dominate and the loss is scale free).

    Parameters
    ----------
    student
        One ``(B, ..., W_s)`` student feature tensor per matched layer.
    teacher
        One ``(B, ..., W_t)`` teacher feature tensor per matched layer (detached).
    projection
        Maps student widths to teacher widths; ``None`` needs equal shapes.
    normalize
        Divide each layer's error by the teacher feature's per-sample mean square.
    eps
        Added to the normaliser.

    Returns
    -------
    ``(B,)`` losses; zero when the (projected) student features equal the teacher's.

    Raises
    ------
    InvalidInputError
        If the numbers of layers differ, the list is empty or a projected shape differs from the teacher's.
    """
    student, teacher = list(student), list(teacher)
    if not student or len(student) != len(teacher):
        raise InvalidInputError(
            f"student and teacher must list the same non-zero number of layers, got {len(student)} and {len(teacher)}."
        )
    projected = projection(student) if projection is not None else student
    losses = []
    for i, (s, t) in enumerate(zip(projected, teacher, strict=True)):
        s, t = _check_tensor(f"student[{i}]", s), _check_tensor(f"teacher[{i}]", t)
        if s.shape != t.shape:
            raise InvalidInputError(
                f"layer {i}: the (projected) student feature has shape {tuple(s.shape)}, the teacher's "
                f"{tuple(t.shape)}; give a FeatureProjection or match layers of the same layout."
            )
        t = t.detach().to(s.dtype)
        err = _per_sample_mse(s, t)  # (B,)
        if normalize:
            err = err / (t.pow(2).flatten(1).mean(dim=1) + eps)
        losses.append(err)
    return torch.stack(losses, dim=0).mean(dim=0)  # (B,)
