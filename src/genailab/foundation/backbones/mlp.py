"""The simple MLP baseline backbone (the seed's "compare to baselines")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from genailab.config import check_fraction, check_positive
from genailab.foundation.backbones.base import BACKBONES, Backbone, BackboneConfig

__all__ = ["MLPBackbone", "MLPBackboneConfig", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of times ``t`` ``(B,)`` in [0, 1] -> ``(B, dim)`` (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0).unsqueeze(-1) * freqs  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    return torch.nn.functional.pad(emb, (0, dim - 2 * half))


@dataclass(frozen=True)
class MLPBackboneConfig(BackboneConfig):
    """Config of :class:`MLPBackbone`.

    Parameters
    ----------
    hidden_dim
        Width of the residual blocks.
    depth
        Number of residual blocks.
    dropout
        Dropout inside each block.
    """

    hidden_dim: int = 256
    depth: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("hidden_dim", self.hidden_dim, integer=True)
        check_positive("depth", self.depth, integer=True)
        check_fraction("dropout", self.dropout)

    @classmethod
    def _sized(
        cls, n_tokens: int, token_dim: int, n_cond_tokens: int, cond_dim: int, hidden_dim: int, depth: int, **kw: Any
    ) -> MLPBackboneConfig:
        return cls(
            **{"n_tokens": n_tokens, "token_dim": token_dim, "n_cond_tokens": n_cond_tokens, "cond_dim": cond_dim,
               "hidden_dim": hidden_dim, "depth": depth, **kw}
        )  # fmt: skip

    @classmethod
    def tiny(
        cls, n_tokens: int, token_dim: int, n_cond_tokens: int = 0, cond_dim: int = 0, **kw: Any
    ) -> MLPBackboneConfig:
        """Width 64, 2 blocks (tests and smoke runs)."""
        return cls._sized(n_tokens, token_dim, n_cond_tokens, cond_dim, 64, 2, **kw)

    @classmethod
    def small(
        cls, n_tokens: int, token_dim: int, n_cond_tokens: int = 0, cond_dim: int = 0, **kw: Any
    ) -> MLPBackboneConfig:
        """Width 512, 3 blocks: the baseline denoiser."""
        return cls._sized(n_tokens, token_dim, n_cond_tokens, cond_dim, 512, 3, **kw)

    @classmethod
    def base(
        cls, n_tokens: int, token_dim: int, n_cond_tokens: int = 0, cond_dim: int = 0, **kw: Any
    ) -> MLPBackboneConfig:
        """Width 1024, 4 blocks."""
        return cls._sized(n_tokens, token_dim, n_cond_tokens, cond_dim, 1024, 4, **kw)


class _ResidualBlock(nn.Module):
    """LayerNorm -> adaptive shift/scale from the embedding -> MLP, added to the input (zero-init)."""

    def __init__(self, width: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(emb_dim, 3 * width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, width))
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(emb).chunk(3, dim=-1)  # (B, W) each
        return h + gate * self.mlp(self.norm(h) * (1 + scale) + shift)  # (B, W)


@BACKBONES.register("mlp")
class MLPBackbone(Backbone):
    """Flatten tokens, run adaLN-Zero residual MLP blocks conditioned on time and condition, unflatten.

    Every block's modulation (and so its gate) starts at zero, and the output layer is zero, so the
    network outputs zeros at init (Peebles & Xie 2023, arXiv:2212.09748, adaLN-Zero).
    """

    config_class = MLPBackboneConfig

    def __init__(self, config: MLPBackboneConfig) -> None:
        super().__init__(config)
        n, d, w = config.n_tokens, config.token_dim, config.hidden_dim
        self.emb_dim = w
        self.time_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.cond_proj = nn.Linear(config.n_cond_tokens * config.cond_dim, w) if config.conditional else None
        self.inp = nn.Linear(n * d, w)
        self.blocks = nn.ModuleList(_ResidualBlock(w, w, config.dropout) for _ in range(config.depth))
        self.out_norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, n * config.output_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _forward(
        self, x: torch.Tensor, t: torch.Tensor | None, cond: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        b = x.shape[0]
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)  # padding tokens contribute nothing
        h = self.inp(x.flatten(1))  # (B, W)
        emb = torch.zeros(b, self.emb_dim, device=x.device, dtype=h.dtype)
        if t is not None:
            emb = emb + self.time_mlp(timestep_embedding(t, self.emb_dim))  # (B, W)
        if self.cond_proj is not None and cond is not None:
            emb = emb + self.cond_proj(cond.flatten(1))  # (B, K, C) -> (B, K*C) -> (B, W)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.out_norm(h)).view(b, self.config.n_tokens, self.config.output_dim)  # (B, N, D_out)
