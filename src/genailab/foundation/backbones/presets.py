"""One home for backbone lookup: registered names, size presets, configs from presets, and their JSON form.

Recipes, the distillation student and the run-config checks all size a backbone the same way: a
registered name, one of its config class's preset classmethods (``tiny``, ``small``, ``base``, ...)
called with the latent shape and the condition-token shape, then dotted overrides.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from genailab.config import apply_overrides
from genailab.errors import CheckpointError, InvalidInputError
from genailab.foundation.backbones.base import BACKBONES, Backbone, BackboneConfig

__all__ = [
    "backbone_config",
    "backbone_from_dict",
    "backbone_name",
    "backbone_presets",
    "backbone_to_dict",
    "build_backbone",
]


def backbone_name(backbone: nn.Module) -> str:
    """The name under which ``backbone``'s class is registered in :data:`BACKBONES`."""
    for name in BACKBONES.names():
        if BACKBONES.get(name) is type(backbone):
            return name
    raise InvalidInputError(f"backbone {type(backbone).__name__} is not registered in BACKBONES.")


def backbone_presets(name: str) -> tuple[str, ...]:
    """Size presets (classmethods such as ``tiny``, ``small``) of the registered backbone ``name``."""
    cls = BACKBONES.get(name).config_class
    inherited = set(dir(BackboneConfig))
    return tuple(
        sorted(
            n
            for n in dir(cls)
            if not n.startswith("_") and n not in inherited and isinstance(inspect.getattr_static(cls, n), classmethod)
        )
    )


def backbone_config(
    name: str,
    preset: str,
    n_tokens: int,
    token_dim: int,
    n_cond_tokens: int = 0,
    cond_dim: int = 0,
    *,
    overrides: Mapping[str, Any] | None = None,
    argument: str = "backbone_preset",
) -> BackboneConfig:
    """The config of backbone ``name`` at size ``preset`` for ``(n_tokens, token_dim)`` latents, then overrides.

    Parameters
    ----------
    name
        A registered backbone (``dit``, ``unet``, ``mlp``).
    preset
        One of :func:`backbone_presets` ``(name)``.
    n_tokens, token_dim
        The latent shape ``(m, d)`` the backbone maps to itself.
    n_cond_tokens, cond_dim
        Number and width of the condition tokens (0 = unconditional).
    overrides
        Dotted ``field: value`` overrides applied to the preset (type-checked).
    argument
        The option that named the preset, for the error message.

    Raises
    ------
    InvalidInputError
        An unknown backbone (the message lists the registered ones) or preset (lists the presets).
    """
    cls = BACKBONES.get(name).config_class
    presets = backbone_presets(name)
    if preset not in presets:
        raise InvalidInputError(
            f"backbone {name!r} has no preset {preset!r}; {argument} must be one of {', '.join(map(repr, presets))}."
        )
    config = getattr(cls, preset)(n_tokens, token_dim, n_cond_tokens, cond_dim)
    return apply_overrides(config, dict(overrides or {})) if overrides else config


def build_backbone(name: str, config: BackboneConfig) -> Backbone:
    """Instantiate the registered backbone ``name`` from its config."""
    return BACKBONES.get(name)(config)


def backbone_to_dict(backbone: nn.Module) -> dict[str, Any]:
    """``{"name": registered name, **config fields}``: how model directories store a backbone's config."""
    return {"name": backbone_name(backbone), **backbone.config.to_dict()}


def backbone_from_dict(raw: Mapping[str, Any]) -> Backbone:
    """Rebuild a backbone (untrained) from :func:`backbone_to_dict`'s output.

    Raises
    ------
    CheckpointError
        The stored name or config is not valid.
    """
    fields = dict(raw)
    try:
        name = fields.pop("name")
        cls = BACKBONES.get(name)
        return cls(cls.config_class.from_dict(fields))
    except (InvalidInputError, TypeError, KeyError) as err:
        raise CheckpointError(f"invalid backbone config {dict(raw)!r}: {err}") from err
