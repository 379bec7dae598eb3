"""Condition tokens over registered obs keys, with per-key dropout to learned null tokens (CFG)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from genailab.config import Config, check_fraction, check_positive
from genailab.errors import InvalidInputError

__all__ = ["ConditionEncoder", "ConditionEncoderConfig"]


@dataclass(frozen=True)
class ConditionEncoderConfig(Config):
    """Config of :class:`ConditionEncoder`.

    Parameters
    ----------
    keys
        Condition keys (obs columns registered in the data registry), one token each.
    n_categories
        Per key: the number of categories of a categorical key, or 0 for a continuous key.
    dim
        Width C of each condition token.
    dropout
        Per key: probability of replacing the key's token by its learned null token during training
        (classifier-free guidance; Ho & Salimans 2022, arXiv:2207.12598). One value applies to all keys.
    """

    keys: tuple[str, ...] = ()
    n_categories: tuple[int, ...] = ()
    dim: int = 64
    dropout: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(set(self.keys)) != len(self.keys):
            raise InvalidInputError(f"keys={self.keys!r} lists a key twice.")
        if len(self.n_categories) != len(self.keys):
            raise InvalidInputError(f"n_categories has {len(self.n_categories)} entries but keys has {len(self.keys)}.")
        for key, n in zip(self.keys, self.n_categories, strict=True):
            check_positive(f"n_categories[{key!r}]", n, strict=False, integer=True)
        check_positive("dim", self.dim, integer=True)
        if len(self.dropout) not in (0, len(self.keys)):
            raise InvalidInputError(f"dropout has {len(self.dropout)} entries; expected 0 or {len(self.keys)}.")
        for key, p in zip(self.keys, self.dropout, strict=False):
            check_fraction(f"dropout[{key!r}]", p)

    @property
    def n_keys(self) -> int:
        """Number K of condition tokens."""
        return len(self.keys)

    def dropout_of(self, key: str) -> float:
        """The training dropout probability of ``key``."""
        return self.dropout[self.keys.index(key)] if self.dropout else 0.0


class ConditionEncoder(nn.Module):
    """Registered conditions -> ``(B, K, C)`` condition tokens.

    A categorical key embeds its category code; a continuous key (already standardised by the data
    registry) goes through ``Linear(1, C)``. Each key also has a learned null token, used

    - during training, for a random ``dropout[k]`` share of cells (classifier-free guidance);
    - at sampling, for the unconditional branch of guidance (:meth:`forward` with ``drop``);
    - for labels the registry mapped to ``-1`` under the explicit ``unknown`` policy.

    Parameters
    ----------
    config
        The encoder config.
    """

    def __init__(self, config: ConditionEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = nn.ModuleList(
            nn.Embedding(n, config.dim) if n > 0 else nn.Linear(1, config.dim) for n in config.n_categories
        )
        for emb in self.embeddings:
            nn.init.normal_(emb.weight, std=0.02)
        self.null = nn.Parameter(torch.zeros(config.n_keys, config.dim))
        self.register_buffer("p_drop", torch.tensor([config.dropout_of(k) for k in config.keys], dtype=torch.float32))

    @property
    def keys(self) -> tuple[str, ...]:
        """The condition keys, in token order."""
        return self.config.keys

    def add_categories(self, key: str, n_new: int) -> range:
        """Extend categorical ``key`` by ``n_new`` categories (a new donor, a new cell line).

        The new embedding rows start at the mean of the existing ones (the population-average condition,
        like the ``-1`` unknown code of :class:`~genailab.foundation.conditioning.CovariateEmbedding`),
        and ``config.n_categories`` is updated. The table is a new parameter that keeps the old one's
        ``requires_grad``, device and dtype: build the optimizer after calling this. Train only the
        conditioning with ``apply_tuning(model, TuningConfig(method="conditioning"))``.

        Parameters
        ----------
        key
            A categorical condition key.
        n_new
            Number of categories to add (>= 1).

        Returns
        -------
        The codes of the new categories.

        Raises
        ------
        InvalidInputError
            If ``key`` is unknown or continuous, or ``n_new < 1``.
        """
        if key not in self.keys:
            raise InvalidInputError(f"key={key!r} is not a condition key; this encoder has {list(self.keys)}.")
        check_positive("n_new", n_new, integer=True)
        j = self.keys.index(key)
        n_old = self.config.n_categories[j]
        if n_old == 0:
            raise InvalidInputError(f"key={key!r} is continuous; only categorical keys have categories to add.")
        old = self.embeddings[j]
        weight = old.weight.detach()  # (n_old, C)
        rows = weight.mean(dim=0, keepdim=True).expand(n_new, -1)  # (n_new, C)
        table = nn.Embedding(n_old + n_new, self.config.dim, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            table.weight.copy_(torch.cat([weight, rows], dim=0))  # (n_old + n_new, C)
        table.weight.requires_grad_(old.weight.requires_grad)
        self.embeddings[j] = table
        counts = list(self.config.n_categories)
        counts[j] = n_old + n_new
        self.config = dataclasses.replace(self.config, n_categories=tuple(counts))
        return range(n_old, n_old + n_new)

    def drop_mask(self, batch: int, keys: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
        """``(B, K)`` bool mask that nulls the given ``keys`` for every cell."""
        unknown = [k for k in keys if k not in self.keys]
        if unknown:
            raise InvalidInputError(
                f"unknown condition key(s) {unknown}; this model is conditioned on {list(self.keys)}."
            )
        cols = torch.tensor([k in keys for k in self.keys], dtype=torch.bool, device=device)
        return cols.expand(batch, -1)

    def forward(self, values: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Condition tokens.

        Parameters
        ----------
        values
            ``(B, K)`` float: category codes (``-1`` = unknown) for categorical keys and standardised
            values for continuous keys, in :attr:`keys` order.
        drop
            ``(B, K)`` bool: True replaces that key's token by its null token. ``None`` samples the
            training dropout in train mode and drops nothing in eval mode.

        Returns
        -------
        ``(B, K, C)`` condition tokens.
        """
        k = self.config.n_keys
        if values.ndim != 2 or values.shape[1] != k:
            raise InvalidInputError(f"values must have shape (B, {k}), got {tuple(values.shape)}.")
        b = values.shape[0]
        tokens = []
        for j, (emb, n) in enumerate(zip(self.embeddings, self.config.n_categories, strict=True)):
            v = values[:, j]
            if n > 0:
                codes = v.long()
                if bool((codes >= n).any()) or bool((codes < -1).any()):
                    raise InvalidInputError(f"codes of condition {self.keys[j]!r} must be in [-1, {n - 1}].")
                tok = emb(codes.clamp(min=0))  # (B, C)
                tok = torch.where((codes < 0).unsqueeze(-1), self.null[j].expand_as(tok), tok)
            else:
                tok = emb(v.unsqueeze(-1).to(emb.weight.dtype))  # (B, C)
            tokens.append(tok)
        out = torch.stack(tokens, dim=1)  # (B, K, C)
        if drop is None and self.training:
            drop = torch.rand(b, k, device=values.device) < self.p_drop  # (B, K)
        if drop is not None:
            out = torch.where(drop.unsqueeze(-1), self.null.unsqueeze(0).expand_as(out), out)
        return out
