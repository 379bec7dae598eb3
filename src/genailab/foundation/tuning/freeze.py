"""Freezing and the trainable-parameter report shared by every tuning method."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from genailab.errors import InvalidInputError

__all__ = ["TuningReport", "apply_freeze", "count_parameters"]


@dataclass(frozen=True)
class TuningReport:
    """What a tuning method did.

    Attributes
    ----------
    method
        The method's registered name (``"freeze"``, ``"lora"``, ...).
    targeted
        Qualified names of the modules the method touched.
    n_trainable, n_total
        Trainable and total parameter counts after the method ran.
    details
        Method-specific settings worth saving beside the weights (``adapter_name``, ``rank``, ...).
    """

    method: str
    targeted: tuple[str, ...]
    n_trainable: int
    n_total: int
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def trainable_fraction(self) -> float:
        """``n_trainable / n_total`` (0 for an empty model)."""
        return self.n_trainable / self.n_total if self.n_total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-data dict (JSON-serialisable when ``details`` is), with ``trainable_fraction``."""
        return {
            "method": self.method,
            "targeted": list(self.targeted),
            "n_trainable": self.n_trainable,
            "n_total": self.n_total,
            "trainable_fraction": self.trainable_fraction,
            "details": dict(self.details),
        }

    def __str__(self) -> str:
        return (
            f"{self.method}: {self.n_trainable:,} of {self.n_total:,} parameters trainable "
            f"({100 * self.trainable_fraction:.2f}%), {len(self.targeted)} module(s) touched"
        )


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """Return ``(n_trainable, n_total)`` parameter counts of ``module``."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, total


def apply_freeze(module: nn.Module, patterns: Sequence[str] | None = None) -> TuningReport:
    """Freeze ``module`` entirely, or only its sub-modules whose qualified names match ``patterns``.

    Parameters
    ----------
    module
        The model to freeze in place.
    patterns
        Regular expressions matched (``re.search``) against qualified sub-module names. ``None``
        freezes everything.

    Returns
    -------
    A :class:`TuningReport` listing the frozen modules.

    Raises
    ------
    InvalidInputError
        If a pattern matches no module.
    """
    if patterns is None:
        for p in module.parameters():
            p.requires_grad_(False)
        targeted: tuple[str, ...] = ("",)
    else:
        names = [name for name, _ in module.named_modules() if name]
        hits: list[str] = []
        for pattern in patterns:
            matched = [n for n in names if re.search(pattern, n)]
            if not matched:
                raise InvalidInputError(
                    f"freeze pattern {pattern!r} matches no module; module names include "
                    f"{names[:8]}{' ...' if len(names) > 8 else ''}."
                )
            hits.extend(matched)
        for name, sub in module.named_modules():
            if name in hits:
                for p in sub.parameters():
                    p.requires_grad_(False)
        targeted = tuple(dict.fromkeys(hits))
    trainable, total = count_parameters(module)
    return TuningReport("freeze", targeted, trainable, total)
