"""Bottleneck adapters (Houlsby et al. 2019, arXiv:1902.00751).

A small residual MLP ``y + up(gelu(down(y)))`` is inserted after a frozen sub-block (the attention or
the MLP of a transformer block) and only it trains. ``up`` is zero-initialised, so every adapted
sub-block, and the whole model, computes exactly what it did before until the adapters train.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from genailab.config import check_fraction, check_positive
from genailab.errors import InvalidInputError
from genailab.foundation.tuning.freeze import TuningReport
from genailab.foundation.tuning.methods import (
    TUNING_METHODS,
    TuningConfig,
    base_of,
    find_block_lists,
    freeze_all,
    linear_layers,
    make_report,
    pick_blocks,
    preview,
    walk,
)

__all__ = ["ADAPTER_ALIASES", "AdapterWrapper", "BottleneckAdapter", "add_adapters", "remove_adapters"]

ADAPTER_ALIASES: dict[str, str] = {"attn": "attn", "attention": "attn", "mlp": "mlp"}
"""Target aliases -> the sub-block name (full match, relative to a block) they wrap."""

_LORA_ONLY_ALIASES = ("conditioning", "all_linear")


class BottleneckAdapter(nn.Module):
    """``up(dropout(gelu(down(x))))``: width -> bottleneck -> width, ``up`` zero-initialised.

    Houlsby et al. 2019, arXiv:1902.00751. The caller adds the result to its input (see
    :class:`AdapterWrapper`), so the adapter starts as the identity of the residual path.

    Parameters
    ----------
    width
        Input and output width W.
    bottleneck
        Hidden width (W -> bottleneck -> W).
    dropout
        Dropout on the hidden activations.
    """

    is_tuning_module: ClassVar[bool] = True

    def __init__(self, width: int, bottleneck: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        check_positive("width", width, integer=True)
        check_positive("bottleneck", bottleneck, integer=True)
        check_fraction("dropout", dropout)
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(..., W)`` -> ``(..., W)``."""
        return self.up(self.dropout(F.gelu(self.down(x))))  # (..., W)


class AdapterWrapper(nn.Module):
    """Run a frozen sub-block, then add a :class:`BottleneckAdapter` of its output.

    ``forward(*args, **kwargs) = y + adapter(y)`` with ``y = inner(*args, **kwargs)``, so the wrapper
    accepts whatever the inner module does (e.g. the DiT attention's ``mask=`` keyword).

    Parameters
    ----------
    inner
        The wrapped sub-block; must return one tensor ``(..., W)``.
    adapter
        The adapter of width W.
    """

    def __init__(self, inner: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.inner = inner
        self.adapter = adapter

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Inner output ``y`` ``(..., W)`` plus ``adapter(y)``; same shape."""
        y = self.inner(*args, **kwargs)  # (..., W)
        return y + self.adapter(y)  # (..., W)


def _output_width(name: str, inner: nn.Module) -> int:
    """Width of ``inner``'s output: the ``out_features`` of its last Linear in module order."""
    linears = list(linear_layers(inner).values())
    if not linears:
        raise InvalidInputError(
            f"cannot infer the output width of {name!r} ({type(inner).__name__}): it holds no nn.Linear; "
            "adapters wrap sub-blocks that end in a Linear (attention, MLP)."
        )
    return int(base_of(linears[-1]).out_features)


def _targets(module: nn.Module, where: Sequence[str], blocks: tuple[int, ...] | None) -> list[str]:
    """Qualified names of the sub-blocks to wrap, checking that every entry of ``where`` matches."""
    lists = find_block_lists(module)
    if not lists:
        raise InvalidInputError(
            f"{type(module).__name__} has no block list (an nn.ModuleList named 'blocks') to add adapters to."
        )
    names: list[str] = []
    for entry in where:
        if entry in _LORA_ONLY_ALIASES:
            raise InvalidInputError(
                f"adapter target {entry!r} is a LoRA alias; adapters wrap block sub-modules: "
                f"{sorted(ADAPTER_ALIASES)} or a regular expression of names inside a block."
            )
        regex = re.compile(ADAPTER_ALIASES.get(entry, entry))
        hits: list[str] = []
        inside: list[str] = []  # relative names seen in the blocks, for the error message
        for list_name, block_list in lists:
            for i in pick_blocks(len(block_list), blocks, list_name):
                taken: list[str] = []
                for rel, _ in walk(block_list[i]):
                    if not rel or any(rel.startswith(t + ".") for t in taken):
                        continue
                    inside.append(rel)
                    if regex.fullmatch(rel):
                        taken.append(rel)
                        hits.append(f"{list_name}.{i}.{rel}")
        if not hits:
            raise InvalidInputError(
                f"adapter target {entry!r} matches no sub-module of the blocks; names inside a block include "
                f"{preview(dict.fromkeys(inside))}."
            )
        names += hits
    return list(dict.fromkeys(names))


def add_adapters(
    module: nn.Module,
    *,
    where: Sequence[str] = ("attn", "mlp"),
    blocks: tuple[int, ...] | None = None,
    bottleneck: int = 16,
    dropout: float = 0.0,
) -> TuningReport:
    """Freeze ``module`` and wrap sub-blocks of its blocks in :class:`AdapterWrapper`; only adapters train.

    Parameters
    ----------
    module
        The model; its blocks are the entries of every ``nn.ModuleList`` named ``blocks`` in it (DiT and
        MLP backbones, also inside the recipes' ``ModuleDict``).
    where
        Sub-blocks to adapt: aliases ``"attn"`` / ``"attention"`` and ``"mlp"``, or regular expressions
        fully matching a module name relative to its block (``"conditioner.cross"``).
    blocks
        Block indices (negative from the end); ``None`` = every block.
    bottleneck
        Adapter hidden width.
    dropout
        Dropout inside the adapters.

    Returns
    -------
    A :class:`TuningReport` (``method="adapter"``) listing the wrapped sub-blocks.

    Raises
    ------
    InvalidInputError
        If an entry of ``where`` matches nothing, a block index is out of range, or a target already
        holds an adapter (adapters are added once; :func:`remove_adapters` undoes them).
    """
    if isinstance(where, str):
        where = (where,)
    if not where:
        raise InvalidInputError("where=() names no sub-block; use e.g. ('attn', 'mlp').")
    check_positive("bottleneck", bottleneck, integer=True)
    check_fraction("dropout", dropout)
    names = _targets(module, where, blocks)
    wrapped = [n for n in names if isinstance(module.get_submodule(n), AdapterWrapper)]
    if wrapped:
        raise InvalidInputError(f"adapters were already added to {wrapped}; apply the adapter method once.")
    freeze_all(module)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        inner = getattr(parent, child)
        adapter = BottleneckAdapter(_output_width(name, inner), bottleneck, dropout)
        ref = next(inner.parameters(), None)
        if ref is not None:
            adapter = adapter.to(device=ref.device, dtype=ref.dtype)
        setattr(parent, child, AdapterWrapper(inner, adapter))
    return make_report(module, "adapter", names, bottleneck=bottleneck, where=list(where))


def remove_adapters(module: nn.Module) -> tuple[str, ...]:
    """Put back the original sub-blocks in place of every :class:`AdapterWrapper`; return their names.

    The restored sub-blocks keep their ``requires_grad`` flags (frozen after :func:`add_adapters`).

    Raises
    ------
    InvalidInputError
        If ``module`` holds no adapter.
    """
    names = [n for n, m in module.named_modules() if isinstance(m, AdapterWrapper)]
    if not names:
        raise InvalidInputError(f"{type(module).__name__} holds no adapter to remove.")
    for name in reversed(names):  # innermost first, should wrappers ever nest
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        setattr(parent, child, getattr(parent, child).inner)
    return tuple(names)


@TUNING_METHODS.register("adapter")
def _adapter(module: nn.Module, config: TuningConfig) -> TuningReport:
    c = config.method_config()  # AdapterConfig
    return add_adapters(module, where=c.targets, blocks=c.blocks, bottleneck=c.adapter_dim, dropout=c.dropout)
