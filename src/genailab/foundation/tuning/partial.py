"""Full fine-tuning and partial unfreezing (the last K blocks, the norms, or modules by pattern).

Partial fine-tuning keeps the early, general layers of a pretrained network frozen and retrains the
last ones (Yosinski et al. 2014, arXiv:1411.1792); training the normalisation layers alone is a strong
cheap baseline (Frankle et al. 2021, arXiv:2003.00152).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from genailab.config import check_positive
from genailab.errors import InvalidInputError
from genailab.foundation.tuning.freeze import TuningReport
from genailab.foundation.tuning.methods import (
    TUNING_METHODS,
    TuningConfig,
    check_not_applied,
    find_block_lists,
    freeze_all,
    make_report,
    mark_applied,
    match_names,
    preview,
    top_level,
    unfreeze,
    walk,
)

__all__ = ["NORM_TYPES", "apply_full", "apply_partial"]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm*d and InstanceNorm*d
)
"""Module types :func:`apply_partial` treats as norm layers."""

_BLOCK_LIST_NAMES = ("blocks",)
_FALLBACK_BLOCK_LIST_NAMES = ("up",)  # UNet1D: its decoder levels, the blocks closest to the output


def apply_full(module: nn.Module) -> TuningReport:
    """Make every parameter of ``module`` trainable (ordinary fine-tuning).

    Raises
    ------
    InvalidInputError
        If ``"full"`` was already applied to ``module``.
    """
    check_not_applied(module, "full")
    unfreeze([module])
    mark_applied(module, "full")
    return make_report(module, "full", ("",))


def apply_partial(
    module: nn.Module, *, last_k: int = 1, train_norms: bool = True, patterns: Sequence[str] = ()
) -> TuningReport:
    """Freeze ``module``, then unfreeze its last ``last_k`` blocks, its norms and modules by pattern.

    Parameters
    ----------
    module
        The model. Its block list is every ``nn.ModuleList`` named ``blocks`` found anywhere in it (the
        last K entries of each are unfrozen); a :class:`~genailab.foundation.backbones.UNet1D` has none
        and uses its ``up`` list instead.
    last_k
        Number of trailing blocks to unfreeze (0 = none).
    train_norms
        Also unfreeze every norm layer (:data:`NORM_TYPES`) that has parameters.
    patterns
        Regular expressions (``re.search``) or exact names of modules to unfreeze as well.

    Returns
    -------
    A :class:`TuningReport` listing the unfrozen modules.

    Raises
    ------
    InvalidInputError
        If ``last_k > 0`` but the module has no block list and no ``patterns`` were given, ``last_k``
        exceeds the number of blocks, a pattern matches nothing, nothing would train, or the method was
        already applied.
    """
    check_positive("last_k", last_k, strict=False, integer=True)
    check_not_applied(module, "partial")
    modules = dict(walk(module))
    names = [n for n in modules if n]
    chosen: list[str] = []
    if last_k > 0:
        lists = find_block_lists(module, _BLOCK_LIST_NAMES) or find_block_lists(module, _FALLBACK_BLOCK_LIST_NAMES)
        if not lists and not patterns:
            raise InvalidInputError(
                f"partial tuning with last_k={last_k} needs a block list (an nn.ModuleList named "
                f"{_BLOCK_LIST_NAMES[0]!r}, or {_FALLBACK_BLOCK_LIST_NAMES[0]!r} for a U-Net), but "
                f"{type(module).__name__} has none; pass patterns of module names to unfreeze instead."
            )
        for list_name, blocks in lists:
            if last_k > len(blocks):
                raise InvalidInputError(
                    f"last_k={last_k} exceeds the {len(blocks)} blocks of {list_name!r}; use at most {len(blocks)}."
                )
            chosen += [f"{list_name}.{i}" for i in range(len(blocks) - last_k, len(blocks))]
    if train_norms:
        chosen += [n for n, m in modules.items() if isinstance(m, NORM_TYPES) and any(True for _ in m.parameters())]
    for pattern in patterns:
        hits = match_names(names, pattern)
        if not hits:
            raise InvalidInputError(
                f"partial pattern {pattern!r} matches no module; module names include {preview(names)}."
            )
        chosen += hits
    picked = set(top_level(chosen))
    targeted = [n for n in modules if n in picked and any(True for _ in modules[n].parameters())]  # module order
    if not targeted:
        raise InvalidInputError(
            f"partial tuning with last_k={last_k}, train_norms={train_norms}, patterns={tuple(patterns)} "
            "would train no parameter; raise last_k or add patterns."
        )
    freeze_all(module)
    unfreeze(modules[n] for n in targeted)
    mark_applied(module, "partial")
    return make_report(module, "partial", targeted, last_k=last_k, train_norms=train_norms, patterns=list(patterns))


@TUNING_METHODS.register("full")
def _full(module: nn.Module, config: TuningConfig) -> TuningReport:
    return apply_full(module)


@TUNING_METHODS.register("partial")
def _partial(module: nn.Module, config: TuningConfig) -> TuningReport:
    c = config.method_config()  # PartialConfig
    return apply_partial(module, last_k=c.last_k, train_norms=c.train_norms, patterns=c.patterns)
