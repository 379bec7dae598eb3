"""Resolved run configs for CLI commands: YAML + ``--set`` overrides, checked against the types."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genailab.config import Config, apply_overrides, check_positive, load_yaml_overrides, parse_set_options
from genailab.data import DataSpec
from genailab.errors import InvalidInputError
from genailab.foundation.recipes.count_vae import PRESETS, LatentTokenVAEConfig
from genailab.training import TrainConfig

__all__ = ["VAERunConfig", "resolve_run_config", "versions"]


@dataclass(frozen=True)
class VAERunConfig(Config):
    """Everything ``genailab vae train`` needs, as one typed config.

    ``vae`` holds overrides of :class:`~genailab.foundation.recipes.LatentTokenVAEConfig` fields
    (``n_genes`` and ``n_batches`` come from the data); they are validated against that class.
    """

    seed: int = 0
    preset: str = "small"
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    vae: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        check_positive("seed", self.seed, strict=False, integer=True)
        if self.preset not in PRESETS:
            raise InvalidInputError(
                f"preset={self.preset!r} is not allowed; expected one of {', '.join(PRESETS)}."
            )
        probe = LatentTokenVAEConfig.tiny(1, n_batches=1)
        known = set(LatentTokenVAEConfig.__dataclass_fields__) - {"n_genes", "n_batches"}
        for key, _ in self.vae:
            if key not in known:
                raise InvalidInputError(f"unknown config key 'vae.{key}'; valid keys are {sorted(known)}.")
        apply_overrides(probe, dict(self.vae))  # type-check the values early

    def vae_overrides(self) -> dict[str, str]:
        """The ``vae.*`` overrides as a dict."""
        return dict(self.vae)


def resolve_run_config(
    config_path: str | Path | None, sets: list[str], *, cli: dict[str, Any] | None = None
) -> VAERunConfig:
    """Defaults <- YAML file <- explicit CLI options <- ``--set key=value`` (later wins)."""
    flat: dict[str, Any] = {}
    if config_path is not None:
        flat.update(load_yaml_overrides(config_path))
    flat.update({k: v for k, v in (cli or {}).items() if v is not None})
    flat.update(parse_set_options(sets))
    vae_items = {k.split(".", 1)[1]: str(v) for k, v in flat.items() if k.startswith("vae.")}
    rest = {k: v for k, v in flat.items() if not k.startswith("vae.")}
    config = apply_overrides(VAERunConfig(), rest)
    return config.replace(vae=tuple(sorted(vae_items.items())))


def versions() -> dict[str, str]:
    """Versions of Python, genailab and the main dependencies (saved beside every output)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("genailab", "torch", "numpy", "anndata", "scanpy", "lightning", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
