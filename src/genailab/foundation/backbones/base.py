"""The backbone contract and registry."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from genailab.config import Config, check_positive
from genailab.errors import CheckpointError, InvalidInputError
from genailab.registry import Registry
from genailab.serialization import load_state_dict_strict, read_config, save_weights, write_config

__all__ = ["BACKBONES", "Backbone", "BackboneConfig"]

BACKBONES: Registry = Registry("backbone")
B = TypeVar("B", bound="Backbone")


@dataclass(frozen=True)
class BackboneConfig(Config):
    """Fields every backbone config has.

    Parameters
    ----------
    n_tokens, token_dim
        Input sequence shape ``(N, D)``.
    out_dim
        Output token width ``D_out`` (``None`` = ``token_dim``).
    n_cond_tokens
        Number K of condition tokens (one per registered condition key; 0 = unconditional).
    cond_dim
        Width C of each condition token.
    """

    n_tokens: int = 8
    token_dim: int = 16
    out_dim: int | None = None
    n_cond_tokens: int = 0
    cond_dim: int = 0

    def __post_init__(self) -> None:
        check_positive("n_tokens", self.n_tokens, integer=True)
        check_positive("token_dim", self.token_dim, integer=True)
        if self.out_dim is not None:
            check_positive("out_dim", self.out_dim, integer=True)
        check_positive("n_cond_tokens", self.n_cond_tokens, strict=False, integer=True)
        check_positive("cond_dim", self.cond_dim, strict=False, integer=True)
        if (self.n_cond_tokens == 0) != (self.cond_dim == 0):
            raise InvalidInputError(
                f"n_cond_tokens={self.n_cond_tokens} and cond_dim={self.cond_dim} must both be 0 "
                "(unconditional) or both be positive."
            )

    @property
    def conditional(self) -> bool:
        """Whether the backbone takes condition tokens."""
        return self.n_cond_tokens > 0

    @property
    def output_dim(self) -> int:
        """``D_out``."""
        return self.out_dim if self.out_dim is not None else self.token_dim


class Backbone(nn.Module, abc.ABC):
    """Base class: shape checks plus ``save_pretrained`` / ``from_pretrained``.

    Subclasses set ``config_class`` and implement :meth:`_forward`.
    """

    config_class: ClassVar[type[BackboneConfig]] = BackboneConfig

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise InvalidInputError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}."
            )
        self.config = config

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Map tokens ``x`` ``(B, N, D)`` to ``(B, N, D_out)``; see the module docstring for the contract."""
        c = self.config
        if x.ndim != 3 or x.shape[1:] != (c.n_tokens, c.token_dim):
            raise InvalidInputError(f"x must have shape (B, {c.n_tokens}, {c.token_dim}), got {tuple(x.shape)}.")
        b = x.shape[0]
        if t is not None and t.shape != (b,):
            raise InvalidInputError(f"t must have shape ({b},), got {tuple(t.shape)}.")
        if c.conditional and (cond is None or cond.shape != (b, c.n_cond_tokens, c.cond_dim)):
            raise InvalidInputError(
                f"cond must have shape ({b}, {c.n_cond_tokens}, {c.cond_dim}) (condition tokens), "
                f"got {None if cond is None else tuple(cond.shape)}."
            )
        if mask is not None and mask.shape != (b, c.n_tokens):
            raise InvalidInputError(f"mask must have shape ({b}, {c.n_tokens}), got {tuple(mask.shape)}.")
        return self._forward(x, t, cond if c.conditional else None, mask)

    @abc.abstractmethod
    def _forward(
        self, x: torch.Tensor, t: torch.Tensor | None, cond: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Shape-checked forward pass."""

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` then ``config.json`` (atomically, config last)."""
        d = Path(directory)
        save_weights(d, self)
        write_config(d, type(self).__name__, self.config.to_dict())
        return d

    @classmethod
    def from_pretrained(cls: type[B], directory: str | Path, **_: Any) -> B:
        """Load a directory written by :meth:`save_pretrained`."""
        payload = read_config(directory, cls.__name__)
        try:
            config = cls.config_class.from_dict(payload["config"])
        except (InvalidInputError, TypeError) as err:
            raise CheckpointError(f"{str(directory)!r}: invalid config.json: {err}") from err
        model = cls(config)
        load_state_dict_strict(Path(directory), model)
        return model
