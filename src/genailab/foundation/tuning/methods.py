"""Tuning methods by name: one config, one entry point, one registry.

"Don't fine-tune the world, fine-tune the steering wheel": a pretrained backbone stays frozen and small
modules train. Every registered method has the signature ``method(module, config) -> TuningReport``:
it first freezes everything, then makes only its own parameters trainable, and reports which modules
it touched. Methods that add modules (``"adapter"``, ``"lora"``) zero-initialise them, so the tuned
model computes exactly what the pretrained one did until it is trained.

==================  ======================================================================
name                what trains
==================  ======================================================================
``"full"``          everything
``"linear_probe"``  only the output head (a linear probe over frozen features)
``"adapter"``       Houlsby bottleneck adapters after the attention / MLP sub-blocks
``"lora"``          low-rank updates of the targeted Linears, through PEFT (or any PEFT method)
``"partial"``       the last K blocks, the norm layers, and/or modules matching patterns
``"conditioning"``  the conditioning paths: condition encoder, pooling, modulations
==================  ======================================================================

The helpers below (module walks, head and block discovery, the "applied twice" guard) are shared by
the method modules; they import nothing heavy (PEFT is imported inside the LoRA functions only).
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from genailab.config import Config, check_choice, check_fraction, check_positive
from genailab.errors import InvalidInputError
from genailab.foundation.backbones.base import Backbone
from genailab.foundation.tuning.freeze import TuningReport, count_parameters
from genailab.registry import Registry

__all__ = ["METHOD_CONFIGS", "TUNING_METHODS", "MethodConfig", "TuningConfig", "apply_tuning"]

TuningMethod = Callable[[nn.Module, "TuningConfig"], TuningReport]
TUNING_METHODS: Registry[TuningMethod] = Registry("tuning method")


@dataclass(frozen=True)
class MethodConfig(Config):
    """Base of the per-method configs (:class:`~genailab.foundation.tuning.LoraConfig`, ...).

    Each holds only the options its method reads (PEFT style: one config per method); :class:`TuningConfig`
    is the flat form the CLI, YAML and ``adapter.json`` use, and converts to and from these with
    :meth:`TuningConfig.method_config` and :meth:`TuningConfig.from_method_config`.
    """

    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        # Validated (and normalised, e.g. ``peft``) exactly as the same fields of the flat config.
        flat = TuningConfig.from_method_config(self)
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, getattr(flat, f.name))


#: Method name -> its :class:`MethodConfig` subclass.
METHOD_CONFIGS: Registry[type[MethodConfig]] = Registry("tuning method config")

_APPLIED_ATTR = "_genailab_tuning_applied"


@dataclass(frozen=True)
class TuningConfig(Config):
    """Config of :func:`apply_tuning`: which method, and its settings (the flat form of every method's options).

    The CLI, YAML files and ``adapter.json`` use this form; :meth:`method_config` gives the method's own
    typed config (e.g. :class:`~genailab.foundation.tuning.LoraConfig`) with only the options it reads.

    Parameters
    ----------
    method
        Registered tuning method (:data:`TUNING_METHODS`): ``"full"``, ``"linear_probe"``, ``"adapter"``,
        ``"lora"``, ``"partial"`` or ``"conditioning"``.
    targets
        ``lora`` / ``adapter``: what to adapt. Aliases ``"attn"`` / ``"attention"``, ``"mlp"``,
        ``"conditioning"`` and ``"all_linear"`` (LoRA only for the last two), or regular expressions
        (``re.search``) / exact qualified module names.
    rank
        ``lora``: rank r of the update ``B @ A``.
    alpha
        ``lora``: scaling numerator (the update is scaled by ``alpha / rank``); ``None`` = ``2 * rank``.
    dropout
        ``lora`` / ``adapter``: dropout inside the added path.
    adapter_dim
        ``adapter``: bottleneck width.
    blocks
        ``adapter``: indices of the blocks that get adapters (negative counts from the end); ``None`` =
        every block.
    last_k
        ``partial``: unfreeze the last K entries of the block list (0 = none, e.g. with ``patterns``).
    train_norms
        ``partial``: also unfreeze every norm layer that has parameters.
    patterns
        ``partial``: regular expressions (``re.search``) of module names to unfreeze besides the last K
        blocks (set ``last_k=0`` to unfreeze only these).
    head
        ``linear_probe``: qualified name of the output head; ``None`` = the last ``nn.Linear`` (or
        convolution) of the backbone in module order (``final.linear`` for DiT, ``out`` for the MLP).
    adapter_name
        ``lora``: name of the adapter (one "persona"; several can live side by side).
    peft
        ``lora``: extra PEFT config fields, e.g. ``{"use_dora": True}``; with a ``"type"`` key another
        PEFT method, e.g. ``{"type": "IA3"}`` or ``{"type": "LoHa", "r": 4}`` (then ``rank``, ``alpha``
        and ``dropout`` are not used and the fields are that method's own). A string is parsed as YAML
        (the CLI's ``--set 'tuning.peft={use_dora: true}'``).
    """

    method: str = "full"
    targets: tuple[str, ...] = ("attn",)
    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    adapter_dim: int = 16
    blocks: tuple[int, ...] | None = None
    last_k: int = 1
    train_norms: bool = True
    patterns: tuple[str, ...] = ()
    head: str | None = None
    adapter_name: str = "default"
    peft: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        check_choice("method", self.method, TUNING_METHODS.names())
        if not self.targets:
            raise InvalidInputError("targets=() is empty; name at least one target (e.g. 'attn').")
        check_regexes("targets", self.targets)
        check_positive("rank", self.rank, integer=True)
        if self.alpha is not None:
            check_positive("alpha", self.alpha)
        check_fraction("dropout", self.dropout)
        check_positive("adapter_dim", self.adapter_dim, integer=True)
        if self.blocks is not None:
            if not self.blocks:
                raise InvalidInputError("blocks=() selects no block; use None for every block.")
            for i, b in enumerate(self.blocks):
                if isinstance(b, bool) or not isinstance(b, int):
                    raise InvalidInputError(f"blocks[{i}]={b!r} must be an integer block index.")
        check_positive("last_k", self.last_k, strict=False, integer=True)
        if not isinstance(self.train_norms, bool):
            raise InvalidInputError(f"train_norms={self.train_norms!r} must be true or false.")
        check_regexes("patterns", self.patterns)
        if self.head is not None and (not isinstance(self.head, str) or not self.head):
            raise InvalidInputError(f"head={self.head!r} must be a non-empty module name or None.")
        check_adapter_name(self.adapter_name)
        if self.peft is not None:
            object.__setattr__(self, "peft", as_peft_mapping(self.peft))

    def method_config(self) -> MethodConfig:
        """The typed config of :attr:`method`, holding only the options that method reads."""
        cls = METHOD_CONFIGS.get(self.method)
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def from_method_config(cls, config: MethodConfig) -> TuningConfig:
        """The flat config of a per-method ``config`` (options of other methods keep their defaults)."""
        if not isinstance(config, MethodConfig):
            raise InvalidInputError(f"config must be a MethodConfig (e.g. LoraConfig), got {type(config).__name__}.")
        return cls(method=config.method, **{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})


def check_regexes(name: str, values: Iterable[str]) -> None:
    """Raise unless every entry of ``values`` is a non-empty, valid regular expression."""
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v:
            raise InvalidInputError(f"{name}[{i}]={v!r} must be a non-empty string.")
        try:
            re.compile(v)
        except re.error as err:
            raise InvalidInputError(f"{name}[{i}]={v!r} is not a valid regular expression: {err}.") from None


def as_peft_mapping(value: Any) -> Mapping[str, Any]:
    """Validate ``TuningConfig.peft`` (parsing a YAML string) and return a read-only copy."""
    if isinstance(value, str):
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise InvalidInputError(f"peft={value!r} is not a valid YAML mapping: {err}") from None
    if not isinstance(value, Mapping):
        raise InvalidInputError(
            f"peft={value!r} must be a mapping of PEFT config fields, e.g. {{'use_dora': True}} or {{'type': 'IA3'}}."
        )
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise InvalidInputError(f"peft keys must be strings, got {bad}.")
    if "target_modules" in value:
        raise InvalidInputError("peft['target_modules'] is not allowed; set tuning.targets instead.")
    return types.MappingProxyType(dict(value))


def check_adapter_name(name: Any) -> None:
    """Raise unless ``name`` is a non-empty adapter name without dots (PEFT keys on it)."""
    if not isinstance(name, str) or not name or "." in name:
        raise InvalidInputError(f"adapter_name={name!r} must be a non-empty string without '.'.")


def apply_tuning(module: nn.Module, config: TuningConfig | MethodConfig) -> TuningReport:
    """Apply the registered tuning method ``config.method`` to ``module`` in place.

    Parameters
    ----------
    module
        The model to tune, e.g. a backbone or ``nn.ModuleDict({"backbone": ..., "conditioning": ...})``.
    config
        The :class:`TuningConfig`, or a per-method config such as ``LoraConfig(rank=4)``.

    Returns
    -------
    The method's :class:`TuningReport` (trainable vs total parameters, touched modules).

    Raises
    ------
    InvalidInputError
        If the method was already applied to ``module``, or a target / pattern matches nothing.
    """
    if not isinstance(module, nn.Module):
        raise InvalidInputError(f"module must be a torch.nn.Module, got {type(module).__name__}.")
    if isinstance(config, MethodConfig):
        config = TuningConfig.from_method_config(config)
    if not isinstance(config, TuningConfig):
        raise InvalidInputError(
            f"config must be a TuningConfig or a method config ({', '.join(c.__name__ for c in _method_configs())}), "
            f"got {type(config).__name__}."
        )
    return TUNING_METHODS.get(config.method)(module, config)


def _method_configs() -> list[type[MethodConfig]]:
    return [METHOD_CONFIGS.get(n) for n in METHOD_CONFIGS.names()]


# --- helpers shared by the method modules ------------------------------------------------------------


def freeze_all(module: nn.Module) -> None:
    """Set ``requires_grad=False`` on every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(False)


def unfreeze(modules: Iterable[nn.Module]) -> None:
    """Set ``requires_grad=True`` on every parameter of each module."""
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(True)


def make_report(module: nn.Module, method: str, targeted: Iterable[str], **details: Any) -> TuningReport:
    """Count parameters after a method ran and build its :class:`TuningReport`."""
    trainable, total = count_parameters(module)
    return TuningReport(method, tuple(targeted), trainable, total, dict(details))


def check_not_applied(module: nn.Module, method: str) -> None:
    """Raise if ``method`` was already applied to ``module`` (see :func:`mark_applied`)."""
    if method in getattr(module, _APPLIED_ATTR, ()):
        raise InvalidInputError(
            f"tuning method {method!r} was already applied to this {type(module).__name__}; "
            "apply each method once, to a freshly loaded model."
        )


def mark_applied(module: nn.Module, method: str) -> None:
    """Record that ``method`` was applied to ``module``."""
    object.__setattr__(module, _APPLIED_ATTR, (*getattr(module, _APPLIED_ATTR, ()), method))


def is_tuning_module(module: nn.Module) -> bool:
    """Whether ``module`` was added by a tuning method (an adapter or a PEFT layer's internals)."""
    return bool(getattr(module, "is_tuning_module", False))


def is_peft_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a PEFT tuner layer (duck-typed, so PEFT need not be imported)."""
    return hasattr(module, "get_base_layer") and hasattr(module, "adapter_layer_names")


def walk(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``named_modules()`` without the insides of PEFT layers and added adapters.

    A PEFT layer is listed under its own name (as the layer it wraps); an added adapter is left out
    with everything below it.
    """
    out: list[tuple[str, nn.Module]] = []
    skip: str | None = None  # named_modules is a pre-order walk: a skipped subtree is contiguous
    for name, m in module.named_modules():
        if skip is not None and (skip == "" or name.startswith(skip + ".")):
            continue
        skip = None
        if is_tuning_module(m):
            skip = name
            continue
        out.append((name, m))
        if is_peft_layer(m):
            skip = name
    return out


def base_of(module: nn.Module) -> nn.Module:
    """The layer a PEFT layer wraps, or ``module`` itself."""
    return module.get_base_layer() if is_peft_layer(module) else module


def linear_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> ``nn.Linear`` (or the PEFT layer wrapping one), in module order."""
    return {n: m for n, m in walk(module) if n and isinstance(base_of(m), nn.Linear)}


def top_level(names: Iterable[str]) -> tuple[str, ...]:
    """Drop names that lie inside another listed name (``a.b`` inside ``a``), keeping order."""
    names = list(dict.fromkeys(names))
    return tuple(n for n in names if not any(n != o and (o == "" or n.startswith(o + ".")) for o in names))


def match_names(names: Iterable[str], pattern: str) -> list[str]:
    """``[pattern]`` when it is one of ``names`` (exact names win), else the names it ``re.search``-es."""
    names = list(names)
    if pattern in names:
        return [pattern]
    regex = re.compile(pattern)
    return [n for n in names if regex.search(n)]


def preview(names: Iterable[str], k: int = 10) -> str:
    """The first ``k`` names, for error messages."""
    names = list(names)
    return f"{names[:k]}{' ...' if len(names) > k else ''}"


def find_head(module: nn.Module, head: str | None = None) -> str:
    """Qualified name of the output head of ``module``.

    Parameters
    ----------
    module
        A backbone, or a container holding one (the recipes' ``ModuleDict``).
    head
        An explicit module name; ``None`` picks the last ``nn.Linear`` or convolution of the first
        :class:`~genailab.foundation.backbones.Backbone` inside ``module`` (of ``module`` itself when it
        holds no backbone), in module order.

    Raises
    ------
    InvalidInputError
        If ``head`` names no module with parameters, or no candidate exists.
    """
    modules = dict(walk(module))
    if head is not None:
        if head not in modules or not any(True for _ in modules[head].parameters()):
            candidates = [n for n, m in modules.items() if n and isinstance(base_of(m), (nn.Linear, nn.Conv1d))]
            raise InvalidInputError(
                f"head={head!r} is not a module with parameters; Linear / Conv1d names include "
                f"{preview(reversed(candidates))} (last first)."
            )
        return head
    scope = next((n for n, m in modules.items() if isinstance(m, Backbone)), "")
    layer_types = (nn.Linear, nn.modules.conv._ConvNd)
    candidates = [
        n
        for n, m in modules.items()
        if n and (scope == "" or n.startswith(scope + ".")) and isinstance(base_of(m), layer_types)
    ]
    if not candidates:
        raise InvalidInputError(f"{type(module).__name__} has no nn.Linear or convolution to use as the head.")
    return candidates[-1]


def find_block_lists(module: nn.Module, names: tuple[str, ...] = ("blocks",)) -> list[tuple[str, nn.ModuleList]]:
    """Every ``nn.ModuleList`` whose last name component is in ``names``, in module order."""
    return [(n, m) for n, m in walk(module) if isinstance(m, nn.ModuleList) and n.rpartition(".")[2] in names]


def pick_blocks(n_blocks: int, indices: tuple[int, ...] | None, list_name: str) -> list[int]:
    """Normalise block ``indices`` (negative from the end; ``None`` = all) against ``n_blocks``."""
    if indices is None:
        return list(range(n_blocks))
    out = []
    for i in indices:
        if not -n_blocks <= i < n_blocks:
            raise InvalidInputError(
                f"blocks contains {i}, but {list_name or 'the module'} has {n_blocks} blocks "
                f"(valid indices {-n_blocks}..{n_blocks - 1})."
            )
        out.append(i % n_blocks)
    return sorted(set(out))
