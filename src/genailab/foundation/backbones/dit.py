"""DiT: a diffusion transformer over latent tokens (Peebles & Xie 2023, arXiv:2212.09748).

Tokens ``(B, N, D)`` are embedded per token to width W, given a learned positional embedding, run
through ``depth`` transformer blocks and projected back to ``D_out`` per token. How the timestep and
the condition enter each block is a registered :class:`~genailab.foundation.conditioning.Conditioner`
picked by name (``DiTConfig.conditioning``); the block itself is one generic class.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genailab.config import check_choice, check_fraction, check_positive
from genailab.errors import InvalidInputError
from genailab.foundation.backbones.base import BACKBONES, Backbone, BackboneConfig
from genailab.foundation.backbones.mlp import timestep_embedding
from genailab.foundation.conditioning.conditioners import (
    CONDITIONERS,
    ConditionContext,
    Conditioner,
)
from genailab.nn import multi_head_attention

__all__ = ["DiT", "DiTBlock", "DiTConfig"]


def _sized(n: int, d: int, k: int, c: int, hidden_dim: int, depth: int, n_heads: int) -> dict[str, Any]:
    """Fields of a size preset for ``n`` tokens of width ``d`` and ``k`` condition tokens of width ``c``."""
    return {"n_tokens": n, "token_dim": d, "n_cond_tokens": k, "cond_dim": c, "hidden_dim": hidden_dim,
            "depth": depth, "n_heads": n_heads}  # fmt: skip


@dataclass(frozen=True)
class DiTConfig(BackboneConfig):
    """Config of :class:`DiT`.

    Parameters
    ----------
    hidden_dim
        Token width W inside the transformer.
    depth
        Number of transformer blocks.
    n_heads
        Self-attention heads; must divide ``hidden_dim``.
    mlp_ratio
        MLP hidden width as a multiple of W.
    dropout
        Dropout on attention weights and inside the MLP.
    conditioning
        Name of a registered conditioner (:data:`~genailab.foundation.conditioning.CONDITIONERS`):
        ``"adaln"``, ``"film"`` or ``"cross_attention"`` (needs condition tokens).

    Notes
    -----
    Size presets. Parameters for 8x16 latent tokens (the VAE's ``small`` preset), unconditional.
    Throughput is training fwd+bwd+AdamW samples/s on a 2-core CPU (AMD EPYC, torch 2.13), with the
    machine shared by other jobs, so read it as a rough lower bound; BENCHMARKS.md has clean figures.
    ``small`` is the default of ``genailab synth train``: it trains on ~10k cells in minutes on a CPU.

    ======  ===  =====  =====  ===========  ==================================  ====================
    preset  W    depth  heads  params       samples/s, 8x16, batch 256, 1 thr.  params, 64x256 tokens
    ======  ===  =====  =====  ===========  ==================================  ====================
    tiny    64   2      4      168,656      ~5,900                              203,200
    small   128  3      4      961,808      ~1,650                              1,030,656
    base    256  6      4      7,374,608    ~250 (estimated)                    7,512,064
    large   512  8      8      38,881,808   ~115 (batch 64, 2 threads)          39,156,480
    ======  ===  =====  =====  ===========  ==================================  ====================
    """

    hidden_dim: int = 256
    depth: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    conditioning: str = "adaln"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("hidden_dim", self.hidden_dim, integer=True)
        check_positive("depth", self.depth, integer=True)
        check_positive("n_heads", self.n_heads, integer=True)
        check_positive("mlp_ratio", self.mlp_ratio)
        check_fraction("dropout", self.dropout)
        if self.hidden_dim % self.n_heads:
            raise InvalidInputError(f"hidden_dim={self.hidden_dim} must be divisible by n_heads={self.n_heads}.")
        check_choice("conditioning", self.conditioning, CONDITIONERS.names())
        if CONDITIONERS.get(self.conditioning).needs_condition_tokens and not self.conditional:
            unconditional = [n for n in CONDITIONERS.names() if not CONDITIONERS.get(n).needs_condition_tokens]
            raise InvalidInputError(
                f"conditioning={self.conditioning!r} needs condition tokens (n_cond_tokens > 0 and "
                f"cond_dim > 0); an unconditional model can use {', '.join(map(repr, unconditional))}."
            )

    @classmethod
    def tiny(
        cls, n_tokens: int, token_dim: int, n_cond_tokens: int = 0, cond_dim: int = 0, **overrides: Any
    ) -> DiTConfig:
        """W=64, depth 2, 4 heads."""
        return cls(**{**_sized(n_tokens, token_dim, n_cond_tokens, cond_dim, 64, 2, 4), **overrides})

    @classmethod
    def small(
        cls, n_tokens: int, token_dim: int, n_cond_tokens: int = 0, cond_dim: int = 0, **overrides: Any
    ) -> DiTConfig:
        """W=128, depth 3, 4 heads: sized to train on ~10k cells in minutes on a 2-core CPU (the default)."""
        return cls(**{**_sized(n_tokens, token_dim, n_cond_tokens, cond_dim, 128, 3, 4), **overrides})

    @classmethod
    def base(
        cls, n_tokens: int, token_dim: int, n_cond_tokens: int = 0, cond_dim: int = 0, **overrides: Any
    ) -> DiTConfig:
        """W=256, depth 6, 4 heads."""
        return cls(**{**_sized(n_tokens, token_dim, n_cond_tokens, cond_dim, 256, 6, 4), **overrides})

    @classmethod
    def large(
        cls, n_tokens: int, token_dim: int, n_cond_tokens: int = 0, cond_dim: int = 0, **overrides: Any
    ) -> DiTConfig:
        """W=512, depth 8, 8 heads (for a GPU, or 64 x 256 latents)."""
        return cls(**{**_sized(n_tokens, token_dim, n_cond_tokens, cond_dim, 512, 8, 8), **overrides})


class _SelfAttention(nn.Module):
    """Multi-head self-attention with an optional key-padding mask (Vaswani et al. 2017)."""

    def __init__(self, width: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(h).chunk(3, dim=-1)  # (B, N, W) each
        p = self.dropout if self.training else 0.0
        return self.out(multi_head_attention(q, k, v, self.n_heads, key_mask=mask, dropout_p=p))  # (B, N, W)


class DiTBlock(nn.Module):
    """Self-attention and MLP sub-layers; the conditioner owns the residual wiring around them.

    Parameters
    ----------
    width, n_heads, mlp_ratio, dropout
        As in :class:`DiTConfig`.
    conditioner
        A built :class:`~genailab.foundation.conditioning.Conditioner` with ``n_sublayers=2``.
    """

    def __init__(self, width: int, n_heads: int, mlp_ratio: float, dropout: float, conditioner: Conditioner) -> None:
        super().__init__()
        hidden = round(width * mlp_ratio)
        self.attn = _SelfAttention(width, n_heads, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout),
            nn.Linear(hidden, width),
        )
        self.conditioner = conditioner

    def forward(self, h: torch.Tensor, ctx: ConditionContext, mask: torch.Tensor | None) -> torch.Tensor:
        """``h`` ``(B, N, W)``, ``mask`` ``(B, N)`` bool (True = real token) -> ``(B, N, W)``."""
        attn = functools.partial(self.attn, mask=mask)
        return self.conditioner(h, ctx, (attn, self.mlp))


class _FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm then a per-token Linear W -> D_out, both zero-initialised."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, out_dim)
        for layer in (self.modulation, self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(emb)).unsqueeze(1).chunk(2, dim=-1)  # (B, 1, W) each
        return self.linear(self.norm(h) * (1 + scale) + shift)  # (B, N, D_out)


@BACKBONES.register("dit")
class DiT(Backbone):
    """Diffusion transformer over latent tokens (Peebles & Xie 2023, arXiv:2212.09748).

    ``forward(x (B, N, D), t (B,) | None, cond (B, K, C) | None, mask (B, N) bool | None) -> (B, N, D_out)``.

    The block embedding is ``MLP(sinusoidal(t))`` plus, when the conditioner pools
    (``adaln``, ``film``), ``Linear(flatten(cond))``; ``cross_attention`` attends to the K condition
    tokens instead. ``mask`` (True = real token) hides padding tokens from self-attention and zeroes
    their input values, so the outputs at real tokens do not depend on them; a sample whose mask is all
    False attends to every token rather than producing NaN. Every conditioning path and the final layer
    are zero-initialised, so the model outputs exactly zero at init.

    Parameters
    ----------
    config
        The :class:`DiTConfig`.
    """

    config_class = DiTConfig

    def __init__(self, config: DiTConfig) -> None:
        super().__init__(config)
        w = config.hidden_dim
        conditioner_cls: type[Conditioner] = CONDITIONERS.get(config.conditioning)
        self.inp = nn.Linear(config.token_dim, w)
        self.pos_emb = nn.Parameter(0.02 * torch.randn(1, config.n_tokens, w))
        self.time_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        pool = config.conditional and conditioner_cls.pools_condition
        self.cond_pool = nn.Linear(config.n_cond_tokens * config.cond_dim, w) if pool else None
        self.blocks = nn.ModuleList(
            DiTBlock(
                w,
                config.n_heads,
                config.mlp_ratio,
                config.dropout,
                conditioner_cls(w, emb_dim=w, cond_dim=config.cond_dim, n_heads=config.n_heads, n_sublayers=2),
            )
            for _ in range(config.depth)
        )
        self.final = _FinalLayer(w, config.output_dim)

    def _embed(self, b: int, t: torch.Tensor | None, cond: torch.Tensor | None, ref: torch.Tensor) -> torch.Tensor:
        """Block embedding ``(B, W)`` from the timestep and (pooled) condition."""
        emb = torch.zeros(b, self.config.hidden_dim, device=ref.device, dtype=ref.dtype)
        if t is not None:
            emb = emb + self.time_mlp(timestep_embedding(t, self.config.hidden_dim).to(ref.dtype))  # (B, W)
        if self.cond_pool is not None and cond is not None:
            emb = emb + self.cond_pool(cond.flatten(1))  # (B, K, C) -> (B, K*C) -> (B, W)
        return emb

    def _forward(
        self, x: torch.Tensor, t: torch.Tensor | None, cond: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)  # (B, N, D); padding values never enter
            mask = mask | ~mask.any(dim=1, keepdim=True)  # (B, N); all-padding sample: attend everywhere
        h = self.inp(x) + self.pos_emb  # (B, N, W)
        ctx = ConditionContext(self._embed(x.shape[0], t, cond, h), cond)
        for block in self.blocks:
            h = block(h, ctx, mask)  # (B, N, W)
        return self.final(h, ctx.emb)  # (B, N, D_out)
