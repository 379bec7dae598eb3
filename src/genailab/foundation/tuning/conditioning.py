"""Conditioning-only tuning: retrain how conditions enter the network, keep the network itself frozen.

The trained modules are the condition encoder (its embedding tables and null tokens), the pooling of
condition tokens into the block embedding and every modulation regressed from it (adaLN-Zero, FiLM,
cross-attention), i.e. the "steering wheel" of a conditional generator. With
:meth:`~genailab.foundation.conditioning.ConditionEncoder.add_categories` a new condition value (a new
donor or cell line) extends its key's table and trains without touching the rest (in the spirit of
textual inversion, Gal et al. 2022, arXiv:2208.01618).
"""

from __future__ import annotations

import re

from torch import nn

from genailab.errors import InvalidInputError
from genailab.foundation.conditioning import ConditionEncoder, CovariateEmbedding, FiLM
from genailab.foundation.conditioning.conditioners import Conditioner
from genailab.foundation.tuning.freeze import TuningReport
from genailab.foundation.tuning.methods import (
    TUNING_METHODS,
    TuningConfig,
    check_not_applied,
    freeze_all,
    make_report,
    mark_applied,
    top_level,
    unfreeze,
    walk,
)

__all__ = ["CONDITIONING_NAMES", "CONDITIONING_TYPES", "apply_conditioning", "conditioning_modules"]

CONDITIONING_TYPES: tuple[type[nn.Module], ...] = (Conditioner, ConditionEncoder, FiLM, CovariateEmbedding)
"""Module types that are conditioning paths wherever they sit."""

CONDITIONING_NAMES = re.compile(r"cond_pool|cond_proj|modulation|context")
"""Last name components (full match) of conditioning modules: ``cond_pool``, ``blocks.0.modulation``, ..."""


def conditioning_modules(module: nn.Module) -> tuple[str, ...]:
    """Qualified names of the conditioning modules of ``module`` (outermost only), in module order.

    A module counts when it is a :data:`CONDITIONING_TYPES` instance or its last name component fully
    matches :data:`CONDITIONING_NAMES` (``cond_pool``, ``cond_proj``, ``modulation``, ``context``,
    which covers ``final.modulation``).
    """
    hits = [
        name
        for name, m in walk(module)
        if isinstance(m, CONDITIONING_TYPES) or (name and CONDITIONING_NAMES.fullmatch(name.rpartition(".")[2]))
    ]
    return top_level(hits)


def apply_conditioning(module: nn.Module) -> TuningReport:
    """Freeze ``module``, then unfreeze only its conditioning modules (:func:`conditioning_modules`).

    Adds no module, so the output is unchanged until training.

    Raises
    ------
    InvalidInputError
        If ``module`` has no conditioning module with parameters, or the method was already applied.
    """
    check_not_applied(module, "conditioning")
    targeted = conditioning_modules(module)
    modules = dict(walk(module))
    if not any(p.numel() for n in targeted for p in modules[n].parameters()):
        raise InvalidInputError(
            f"{type(module).__name__} has no conditioning module with parameters (a Conditioner, "
            "ConditionEncoder, FiLM or CovariateEmbedding, or a module named cond_pool / cond_proj / "
            "modulation / context); conditioning-only tuning has nothing to train."
        )
    freeze_all(module)
    unfreeze(modules[n] for n in targeted)
    mark_applied(module, "conditioning")
    return make_report(module, "conditioning", targeted)


@TUNING_METHODS.register("conditioning")
def _conditioning(module: nn.Module, config: TuningConfig) -> TuningReport:
    return apply_conditioning(module)
