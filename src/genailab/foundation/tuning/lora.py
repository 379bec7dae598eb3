"""LoRA and the other PEFT methods on any ``nn.Module`` (Hu et al. 2021, arXiv:2106.09685).

A LoRA layer adds ``(alpha / r) * B @ A`` to a frozen Linear's weight, with ``A`` ``(r, in)`` random and
``B`` ``(out, r)`` zero, so the model is unchanged at init and only ``A`` and ``B`` train. The layers
come from Hugging Face PEFT (``peft.inject_adapter_in_model``), which works on plain modules: it
replaces the targeted ``nn.Linear`` attributes in place, so forwards that call ``self.qkv(h)`` pick the
LoRA layer up. PEFT is imported inside the functions only (it takes seconds to import).

Our additions are the target aliases, resolved to exact Linear names and checked *before* PEFT runs,
the freeze-everything-else contract, named adapters ("personas") that can be switched, merged and
saved apart, and :func:`apply_peft` for any other injectable PEFT method (DoRA, IA3, LoHa, LoKr, ...).

==================  =================================================================================
target alias        Linears it selects (names matched with ``re.search``)
==================  =================================================================================
``"attn"``          attention projections: ``attn.qkv``, ``attn.out``, and the cross-attention
``"attention"``     ``cross.q`` / ``cross.kv`` / ``cross.out`` of the conditioners when present
``"mlp"``           ``mlp.<i>``
``"conditioning"``  every Linear inside a conditioning module (``cond_pool``, ``modulation``, ...; see
                    :func:`~genailab.foundation.tuning.conditioning.conditioning_modules`)
``"all_linear"``    every Linear except the output head (:func:`~genailab.foundation.tuning.methods.find_head`)
==================  =================================================================================

Any other target is a regular expression (``re.search``) or an exact qualified name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from genailab.config import check_fraction, check_positive
from genailab.errors import CheckpointError, InvalidInputError
from genailab.foundation.tuning.conditioning import conditioning_modules
from genailab.foundation.tuning.freeze import TuningReport
from genailab.foundation.tuning.methods import (
    TUNING_METHODS,
    TuningConfig,
    check_adapter_name,
    find_head,
    freeze_all,
    is_peft_layer,
    linear_layers,
    make_report,
    match_names,
    preview,
    walk,
)

__all__ = ["LORA_ALIASES", "LoRA", "apply_peft", "resolve_lora_targets"]

_ATTENTION = r"(^|\.)(attn|attention|self_attn|cross|cross_attn)\.(inner\.)?[^.]+$"  # inner: under an adapter
LORA_ALIASES: dict[str, str] = {"attn": _ATTENTION, "attention": _ATTENTION, "mlp": r"(^|\.)mlp\.(inner\.)?\d+$"}
"""Regex aliases of :func:`resolve_lora_targets`; ``"conditioning"`` and ``"all_linear"`` are resolved by type."""


def resolve_lora_targets(module: nn.Module, targets: Sequence[str] | str, head: str | None = None) -> tuple[str, ...]:
    """Resolve LoRA targets to the exact qualified names of ``module``'s Linears, in module order.

    Parameters
    ----------
    module
        The model.
    targets
        Aliases (see the module docstring), regular expressions or exact names.
    head
        The output head excluded by ``"all_linear"`` (``None`` = :func:`find_head`'s choice).

    Raises
    ------
    InvalidInputError
        If a target matches no Linear (checked before anything is injected).
    """
    if isinstance(targets, str):
        targets = (targets,)
    if not targets:
        raise InvalidInputError("target_modules=() names no target; use e.g. ('attention',).")
    linears = list(linear_layers(module))
    out: list[str] = []
    for target in targets:
        if target == "all_linear":
            excluded = find_head(module, head)
            hits = [n for n in linears if n != excluded]
        elif target == "conditioning":
            scopes = conditioning_modules(module)
            hits = [n for n in linears if any(s == "" or n == s or n.startswith(s + ".") for s in scopes)]
        else:
            try:
                hits = match_names(linears, LORA_ALIASES.get(target, target))
            except re.error as err:
                raise InvalidInputError(f"LoRA target {target!r} is not a valid regular expression: {err}.") from None
        if not hits:
            raise InvalidInputError(
                f"LoRA target {target!r} matches no nn.Linear of {type(module).__name__}; its Linears are "
                f"{preview(linears)}; aliases are {sorted([*LORA_ALIASES, 'all_linear', 'conditioning'])}."
            )
        out += hits
    return tuple(dict.fromkeys(out))


def _exact(names: Sequence[str]) -> str:
    """A PEFT ``target_modules`` regex (PEFT full-matches strings) selecting exactly ``names``."""
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def _layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, PEFT layer)`` pairs of ``module``."""
    return [(n, m) for n, m in walk(module) if is_peft_layer(m)]


def _holds(layer: nn.Module, adapter_name: str) -> bool:
    return any(adapter_name in getattr(layer, attr) for attr in layer.adapter_layer_names)


def _require_adapter(module: nn.Module, adapter_name: str) -> None:
    names = LoRA.adapter_names(module)
    if adapter_name not in names:
        raise InvalidInputError(
            f"adapter_name={adapter_name!r} is not an adapter of this {type(module).__name__}; "
            f"it has {list(names) or 'none'}."
        )


def _require_unmerged(module: nn.Module, action: str) -> None:
    if any(layer.merged for _, layer in _layers(module)):
        raise InvalidInputError(f"cannot {action} while adapters are merged; call LoRA.unmerge(module) first.")


def _inject(module: nn.Module, peft_config: Any, adapter_name: str, method: str, **details: Any) -> TuningReport:
    """Inject ``peft_config`` as ``adapter_name``, freeze everything else, make it the active adapter."""
    import peft

    if not isinstance(peft_config, peft.PeftConfig):
        raise InvalidInputError(f"peft_config must be a peft.PeftConfig, got {type(peft_config).__name__}.")
    check_adapter_name(adapter_name)
    existing = LoRA.adapter_names(module)
    if adapter_name in existing:
        raise InvalidInputError(
            f"this {type(module).__name__} already has an adapter named {adapter_name!r} "
            f"(adapters: {list(existing)}); choose another adapter_name."
        )
    _require_unmerged(module, "add an adapter")
    if getattr(peft_config, "feedforward_modules", ()) is None:
        raise InvalidInputError(
            f"{type(peft_config).__name__}.feedforward_modules is None; PEFT can only infer it for "
            "transformers models: pass a list (e.g. [] to scale every target's output)."
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
        try:
            peft.inject_adapter_in_model(peft_config, module, adapter_name=adapter_name)
        except (ValueError, KeyError, TypeError) as err:
            raise InvalidInputError(
                f"PEFT could not inject {type(peft_config).__name__} as {adapter_name!r} into "
                f"{type(module).__name__}: {err}"
            ) from err
    freeze_all(module)
    for _, layer in _layers(module):
        layer.set_adapter(adapter_name)  # active, and the only trainable PEFT weights
    targeted = [n for n, layer in _layers(module) if _holds(layer, adapter_name)]
    peft_type = str(getattr(peft_config.peft_type, "value", peft_config.peft_type))
    return make_report(module, method, targeted, adapter_name=adapter_name, peft_type=peft_type, **details)


def apply_peft(module: nn.Module, peft_config: Any, adapter_name: str = "default") -> TuningReport:
    """Inject any injectable PEFT method into ``module``; only its weights train.

    Parameters
    ----------
    module
        The model (any ``nn.Module``).
    peft_config
        A ``peft.PeftConfig``: ``LoraConfig`` (also DoRA with ``use_dora=True``), ``IA3Config`` (pass
        ``feedforward_modules``), ``LoHaConfig``, ``LoKrConfig``, ... Its ``target_modules`` use PEFT's
        own matching (a string is full-matched; see :func:`resolve_lora_targets` for our aliases).
    adapter_name
        Name of the new adapter; it becomes the active one.

    Returns
    -------
    A :class:`TuningReport` whose ``method`` is the PEFT type in lower case (``"lora"``, ``"ia3"``).

    Raises
    ------
    InvalidInputError
        If the adapter name exists, the targets match nothing, or PEFT rejects the config.
    """
    import peft

    if not isinstance(peft_config, peft.PeftConfig):
        raise InvalidInputError(f"peft_config must be a peft.PeftConfig, got {type(peft_config).__name__}.")
    method = str(getattr(peft_config.peft_type, "value", peft_config.peft_type)).lower()
    return _inject(module, peft_config, adapter_name, method)


def _peft_config_class(name: str) -> type:
    """The PEFT config class of a PEFT type name (``"IA3"``, ``"loha"``, ...)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    for key, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items():
        if str(getattr(key, "value", key)).upper() == str(name).upper():
            return cls
    known = sorted(str(getattr(k, "value", k)) for k in PEFT_TYPE_TO_CONFIG_MAPPING)
    raise InvalidInputError(f"peft type={name!r} is not a PEFT method; known types are {known}.")


class LoRA:
    """LoRA adapters through PEFT, by name (Hu et al. 2021, arXiv:2106.09685).

    All methods are static and act on the module in place::

        report = LoRA.wrap(backbone, rank=8, target_modules=["attention"])
        LoRA.add(backbone, "donor_b", rank=8)  # a second persona, now active
        LoRA.set_active(backbone, "default")
        weights = LoRA.state_dict(backbone, "default")  # adapter weights only

    Only the active adapter is trainable; the base weights stay frozen.
    """

    @staticmethod
    def wrap(
        module: nn.Module,
        rank: int = 8,
        target_modules: Sequence[str] | str = ("attention",),
        alpha: float | None = None,
        dropout: float = 0.0,
        adapter_name: str = "default",
        **peft_kwargs: Any,
    ) -> TuningReport:
        """Freeze ``module`` and add its first LoRA adapter; see :meth:`add` for the arguments.

        Raises
        ------
        InvalidInputError
            If ``module`` already has PEFT adapters (use :meth:`add` for another named adapter).
        """
        existing = LoRA.adapter_names(module)
        if existing:
            raise InvalidInputError(
                f"this {type(module).__name__} is already wrapped with adapter(s) {list(existing)}; "
                f"use LoRA.add(module, {adapter_name!r}, ...) for another named adapter."
            )
        return LoRA.add(
            module, adapter_name, rank=rank, target_modules=target_modules, alpha=alpha, dropout=dropout, **peft_kwargs
        )

    @staticmethod
    def add(
        module: nn.Module,
        adapter_name: str,
        *,
        rank: int = 8,
        target_modules: Sequence[str] | str = ("attention",),
        alpha: float | None = None,
        dropout: float = 0.0,
        **peft_kwargs: Any,
    ) -> TuningReport:
        """Add a named LoRA adapter, make it the active (and only trainable) one.

        Parameters
        ----------
        module
            The model (any ``nn.Module``).
        adapter_name
            Name of the new adapter; must not exist yet.
        rank
            Rank r of each update.
        target_modules
            Aliases, regular expressions or exact names (see the module docstring).
        alpha
            The update is scaled by ``alpha / rank``; ``None`` = ``2 * rank``.
        dropout
            Dropout on the LoRA input.
        **peft_kwargs
            Further ``peft.LoraConfig`` fields, e.g. ``use_dora=True`` (DoRA, Liu et al. 2024,
            arXiv:2402.09353) or ``use_rslora=True``.

        Returns
        -------
        A :class:`TuningReport` (``method="lora"``) listing the adapted Linears.

        Raises
        ------
        InvalidInputError
            If a target matches no Linear, the name exists, or ``peft_kwargs`` holds an unknown field.
        """
        check_positive("rank", rank, integer=True)
        if alpha is not None:
            check_positive("alpha", alpha)
        check_fraction("dropout", dropout)
        check_adapter_name(adapter_name)
        if adapter_name in LoRA.adapter_names(module):
            raise InvalidInputError(
                f"this {type(module).__name__} already has an adapter named {adapter_name!r}; "
                "choose another adapter_name."
            )
        names = resolve_lora_targets(module, target_modules)
        import peft

        lora_alpha = float(alpha) if alpha is not None else 2.0 * rank
        fields = {f.name for f in dataclasses.fields(peft.LoraConfig)}
        unknown = sorted(set(peft_kwargs) - fields)
        clashing = sorted(set(peft_kwargs) & {"r", "lora_alpha", "lora_dropout", "target_modules"})
        if unknown or clashing:
            raise InvalidInputError(
                f"peft options {unknown or clashing} are not allowed here: unknown LoraConfig fields or set "
                "through rank / alpha / dropout / target_modules."
            )
        config = peft.LoraConfig(
            r=rank, lora_alpha=lora_alpha, lora_dropout=dropout, target_modules=_exact(names), **peft_kwargs
        )
        use_dora = bool(peft_kwargs.get("use_dora", False))
        return _inject(module, config, adapter_name, "lora", rank=rank, alpha=lora_alpha, use_dora=use_dora)

    @staticmethod
    def adapter_names(module: nn.Module) -> tuple[str, ...]:
        """Names of the PEFT adapters in ``module``, in the order they were added."""
        names: dict[str, None] = {}
        for _, layer in _layers(module):
            for attr in layer.adapter_layer_names:
                names.update(dict.fromkeys(getattr(layer, attr).keys()))
        return tuple(names)

    @staticmethod
    def set_active(module: nn.Module, adapter_name: str) -> None:
        """Make ``adapter_name`` the adapter the forward uses, and the only trainable one."""
        _require_adapter(module, adapter_name)
        _require_unmerged(module, "switch adapters")
        for _, layer in _layers(module):
            layer.set_adapter(adapter_name)

    @staticmethod
    def merge(module: nn.Module) -> None:
        """Fold the active adapter into the base weights (faster inference; same outputs).

        Raises
        ------
        InvalidInputError
            If ``module`` has no adapter or is already merged.
        """
        layers = _layers(module)
        if not layers:
            raise InvalidInputError(f"this {type(module).__name__} has no adapter to merge.")
        _require_unmerged(module, "merge again")
        for _, layer in layers:
            layer.merge()

    @staticmethod
    def unmerge(module: nn.Module) -> None:
        """Undo :meth:`merge`, restoring the base weights.

        Raises
        ------
        InvalidInputError
            If nothing is merged.
        """
        merged = [layer for _, layer in _layers(module) if layer.merged]
        if not merged:
            raise InvalidInputError(f"this {type(module).__name__} has no merged adapter to unmerge.")
        for layer in merged:
            layer.unmerge()

    @staticmethod
    @contextlib.contextmanager
    def disable(module: nn.Module) -> Iterator[None]:
        """Context manager: inside it the module computes its base (pretrained) output.

        Merged adapters are unmerged for the duration and merged back after; ``requires_grad`` flags are
        restored on exit.
        """
        layers = [layer for _, layer in _layers(module)]
        if not layers:
            raise InvalidInputError(f"this {type(module).__name__} has no adapter to disable.")
        flags = [(p, p.requires_grad) for p in module.parameters()]
        merged = [layer for layer in layers if layer.merged]
        for layer in merged:
            layer.unmerge()
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in layers:
                layer.enable_adapters(True)
            for layer in merged:
                layer.merge()
            for p, flag in flags:
                p.requires_grad_(flag)

    @staticmethod
    def _holder(module: nn.Module, adapter_name: str) -> tuple[str, nn.Module]:
        """The sub-module PEFT stored ``adapter_name``'s config on (where it was injected), with its name."""
        for name, m in module.named_modules():
            if adapter_name in getattr(m, "peft_config", {}):
                return name, m
        raise InvalidInputError(
            f"adapter {adapter_name!r} has no PEFT config in this {type(module).__name__}; was it added with "
            "LoRA.wrap / LoRA.add / apply_peft?"
        )

    @staticmethod
    def state_dict(module: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
        """The weights of one adapter only (copies), keyed by ``<layer>.lora_A.weight`` etc.

        The keys do not contain the adapter name, so a state dict saved from one name loads into another.
        """
        import peft

        _require_adapter(module, adapter_name)
        prefix, holder = LoRA._holder(module, adapter_name)
        state = peft.get_peft_model_state_dict(holder, adapter_name=adapter_name, save_embedding_layers=False)
        lead = f"{prefix}." if prefix else ""
        return {f"{lead}{k}": v.detach().clone() for k, v in state.items()}

    @staticmethod
    def load_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], adapter_name: str = "default") -> None:
        """Load weights written by :meth:`state_dict` into an existing adapter ``adapter_name``.

        Build the module and add the adapter with the same settings first (e.g. :meth:`wrap`).

        Raises
        ------
        CheckpointError
            If keys are missing or unexpected, or a shape differs.
        InvalidInputError
            If the adapter does not exist or adapters are merged.
        """
        import peft

        _require_adapter(module, adapter_name)
        _require_unmerged(module, "load adapter weights")
        expected = LoRA.state_dict(module, adapter_name)
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(
            k
            for k in set(expected) & set(state)
            if not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape
        )
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"adapter state for {adapter_name!r} does not fit this module: missing {preview(missing, 5)}, "
                f"unexpected {preview(unexpected, 5)}, wrong shape or type {preview(wrong, 5)}."
            )
        prefix, holder = LoRA._holder(module, adapter_name)
        cut = len(prefix) + 1 if prefix else 0
        result = peft.set_peft_model_state_dict(
            holder, {k[cut:]: v for k, v in state.items()}, adapter_name=adapter_name
        )
        if getattr(result, "unexpected_keys", None):
            raise CheckpointError(f"PEFT did not use the keys {preview(result.unexpected_keys, 5)}.")


@TUNING_METHODS.register("lora")
def _lora(module: nn.Module, config: TuningConfig) -> TuningReport:
    config = config.method_config()  # LoraConfig
    extra = dict(config.peft or {})
    peft_type = extra.pop("type", "LORA")
    names = resolve_lora_targets(module, config.targets, config.head)  # exact names: checked before PEFT runs
    if str(peft_type).upper() == "LORA":
        return LoRA.add(
            module,
            config.adapter_name,
            rank=config.rank,
            target_modules=names,
            alpha=config.alpha,
            dropout=config.dropout,
            **extra,
        )
    cls = _peft_config_class(peft_type)
    if "feedforward_modules" in {f.name for f in dataclasses.fields(cls)}:
        extra.setdefault("feedforward_modules", [])  # IA3: scale every target's output unless told otherwise
    try:
        peft_config = cls(target_modules=_exact(names), **extra)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"peft={dict(config.peft or {})!r} is not a valid {cls.__name__}: {err}") from err
    return _inject(module, peft_config, config.adapter_name, "lora")
