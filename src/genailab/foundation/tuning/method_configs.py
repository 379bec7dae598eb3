"""One typed config per tuning method (PEFT style), beside the flat :class:`TuningConfig`.

Each class holds only the options its method reads, with the same names, defaults and checks as the
fields of :class:`~genailab.foundation.tuning.TuningConfig`, the flat form that the CLI
(``--set tuning.rank=8``), YAML files and saved ``adapter.json`` files use. The two convert into each
other: ``TuningConfig(method="lora", rank=4).method_config() == LoraConfig(rank=4)`` and
``TuningConfig.from_method_config(LoraConfig(rank=4)) == TuningConfig(method="lora", rank=4)``;
:func:`~genailab.foundation.tuning.apply_tuning` takes either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from genailab.foundation.tuning.methods import METHOD_CONFIGS, MethodConfig

__all__ = [
    "AdapterConfig",
    "ConditioningConfig",
    "FullConfig",
    "LinearProbeConfig",
    "LoraConfig",
    "PartialConfig",
]


@METHOD_CONFIGS.register("full")
@dataclass(frozen=True)
class FullConfig(MethodConfig):
    """``"full"``: everything trains; no options."""

    method: ClassVar[str] = "full"


@METHOD_CONFIGS.register("conditioning")
@dataclass(frozen=True)
class ConditioningConfig(MethodConfig):
    """``"conditioning"``: only the conditioning paths train; no options."""

    method: ClassVar[str] = "conditioning"


@METHOD_CONFIGS.register("linear_probe")
@dataclass(frozen=True)
class LinearProbeConfig(MethodConfig):
    """``"linear_probe"``: only the output head trains.

    Parameters
    ----------
    head
        Qualified name of the output head; ``None`` = the last ``nn.Linear`` (or convolution) of the backbone.
    """

    method: ClassVar[str] = "linear_probe"
    head: str | None = None


@METHOD_CONFIGS.register("lora")
@dataclass(frozen=True)
class LoraConfig(MethodConfig):
    """``"lora"``: low-rank updates ``B @ A`` of the targeted Linears, through PEFT.

    Parameters
    ----------
    targets
        Aliases (``"attn"``, ``"mlp"``, ``"conditioning"``, ``"all_linear"``), regular expressions or
        exact module names.
    rank
        Rank r of the update.
    alpha
        Scaling numerator (the update is scaled by ``alpha / rank``); ``None`` = ``2 * rank``.
    dropout
        Dropout inside the added path.
    head
        The output head, which ``"all_linear"`` leaves out; ``None`` = found as for ``"linear_probe"``.
    adapter_name
        Name of the adapter (several can live side by side).
    peft
        Extra PEFT config fields, or ``{"type": ...}`` for another PEFT method.
    """

    method: ClassVar[str] = "lora"
    targets: tuple[str, ...] = ("attn",)
    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    head: str | None = None
    adapter_name: str = "default"
    peft: Mapping[str, Any] | None = None


@METHOD_CONFIGS.register("adapter")
@dataclass(frozen=True)
class AdapterConfig(MethodConfig):
    """``"adapter"``: Houlsby bottleneck adapters after the targeted sub-blocks.

    Parameters
    ----------
    targets
        ``"attn"`` / ``"attention"``, ``"mlp"``, regular expressions or exact module names.
    adapter_dim
        Bottleneck width.
    dropout
        Dropout inside the adapter.
    blocks
        Indices of the blocks that get adapters (negative counts from the end); ``None`` = every block.
    """

    method: ClassVar[str] = "adapter"
    targets: tuple[str, ...] = ("attn",)
    adapter_dim: int = 16
    dropout: float = 0.0
    blocks: tuple[int, ...] | None = None


@METHOD_CONFIGS.register("partial")
@dataclass(frozen=True)
class PartialConfig(MethodConfig):
    """``"partial"``: the last K blocks, the norm layers and/or modules matching patterns train.

    Parameters
    ----------
    last_k
        Unfreeze the last K entries of the block list (0 = none).
    train_norms
        Also unfreeze every norm layer that has parameters.
    patterns
        Regular expressions (``re.search``) of module names to unfreeze besides the last K blocks.
    """

    method: ClassVar[str] = "partial"
    last_k: int = 1
    train_norms: bool = True
    patterns: tuple[str, ...] = ()
