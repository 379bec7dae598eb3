"""Block conditioners: how the block embedding and condition tokens enter one transformer block.

Every conditioner has the same interface, so a backbone picks one by name from :data:`CONDITIONERS`
when it is built and never branches on the mode in ``forward``:

- constructor ``cls(width, *, emb_dim, cond_dim=0, n_heads=1, n_sublayers=2)``;
- ``forward(h, ctx, sublayers=()) -> h'`` with ``h`` of shape ``(B, N, W)``, ``ctx`` a
  :class:`ConditionContext` and ``sublayers`` the block's residual sub-layers (callables mapping
  normalised states ``(B, N, W) -> (B, N, W)``, e.g. self-attention then the MLP). The conditioner owns
  the residual wiring around them and decides where the condition enters;
- class attribute ``pools_condition``: whether the backbone adds the pooled condition tokens to the
  block embedding ``ctx.emb`` (cross-attention reads the tokens themselves instead), and
  ``needs_condition_tokens``: whether it is meaningless for an unconditional model.

Every added conditioning path is zero-initialised, so with no sub-layers each conditioner is the
identity at init (``h' == h``); adaLN-Zero and cross-attention are the identity even with sub-layers.

========================  ===================================================================
name                      what it does
========================  ===================================================================
``"adaln"``               adaLN-Zero (Peebles & Xie 2023, arXiv:2212.09748): shift / scale / gate
                          of every sub-layer regressed from ``ctx.emb`` (timestep + pooled condition)
``"film"``                plain pre-norm sub-layers, then FiLM of the token states from ``ctx.emb``
                          (Perez et al. 2018, arXiv:1709.07871)
``"cross_attention"``     tokens attend to the condition tokens (Vaswani et al. 2017; Rombach et al.
                          2022, arXiv:2112.10752), then adaLN-Zero sub-layers on the timestep alone
========================  ===================================================================
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from genailab.config import check_positive
from genailab.errors import InvalidInputError
from genailab.foundation.conditioning.film import FiLM
from genailab.nn import multi_head_attention
from genailab.registry import Registry

__all__ = [
    "CONDITIONERS",
    "AdaLNZero",
    "ConditionContext",
    "Conditioner",
    "CrossAttention",
    "CrossAttentionConditioner",
    "FiLMConditioner",
    "Sublayer",
]

CONDITIONERS: Registry = Registry("conditioner")

Sublayer = Callable[[torch.Tensor], torch.Tensor]
"""A residual branch: normalised token states ``(B, N, W)`` -> ``(B, N, W)``."""


@dataclass(frozen=True)
class ConditionContext:
    """What one block is conditioned on.

    Parameters
    ----------
    emb
        ``(B, E)`` block embedding: timestep embedding, plus the pooled condition when the
        conditioner's ``pools_condition`` is true.
    tokens
        ``(B, K, C)`` condition tokens, or ``None`` for an unconditional model.
    """

    emb: torch.Tensor
    tokens: torch.Tensor | None = None


class CrossAttention(nn.Module):
    """Queries ``(B, N, W)`` attend to condition tokens ``(B, K, C)`` projected to width W.

    The output projection is zero-initialised, so the residual branch adds nothing at init.

    Parameters
    ----------
    width
        Query width W.
    cond_dim
        Condition-token width C.
    n_heads
        Number of heads; must divide W.
    """

    def __init__(self, width: int, cond_dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(cond_dim, 2 * width)
        self.out = nn.Linear(width, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``h`` ``(B, N, W)``, ``tokens`` ``(B, K, C)`` -> ``(B, N, W)``."""
        k, v = self.kv(tokens).chunk(2, dim=-1)  # (B, K, W) each
        return self.out(multi_head_attention(self.q(h), k, v, self.n_heads))  # (B, N, W)


class Conditioner(nn.Module, abc.ABC):
    """Base class of the block conditioners (see the module docstring for the contract).

    Parameters
    ----------
    width
        Token width W.
    emb_dim
        Width E of the block embedding ``ctx.emb``.
    cond_dim
        Width C of the condition tokens (0 = unconditional).
    n_heads
        Attention heads (used by cross-attention); must divide W.
    n_sublayers
        The most residual sub-layers one call wraps (2 for attention + MLP).
    """

    pools_condition: ClassVar[bool] = True
    needs_condition_tokens: ClassVar[bool] = False

    def __init__(self, width: int, *, emb_dim: int, cond_dim: int = 0, n_heads: int = 1, n_sublayers: int = 2) -> None:
        super().__init__()
        check_positive("width", width, integer=True)
        check_positive("emb_dim", emb_dim, integer=True)
        check_positive("cond_dim", cond_dim, strict=False, integer=True)
        check_positive("n_heads", n_heads, integer=True)
        check_positive("n_sublayers", n_sublayers, integer=True)
        if width % n_heads:
            raise InvalidInputError(f"width={width} must be divisible by n_heads={n_heads}.")
        self.width, self.emb_dim, self.cond_dim = width, emb_dim, cond_dim
        self.n_heads, self.n_sublayers = n_heads, n_sublayers

    def _check_sublayers(self, sublayers: Sequence[Sublayer]) -> None:
        if len(sublayers) > self.n_sublayers:
            raise InvalidInputError(
                f"{type(self).__name__} was built for at most n_sublayers={self.n_sublayers} sub-layers, "
                f"got {len(sublayers)}."
            )

    @abc.abstractmethod
    def forward(self, h: torch.Tensor, ctx: ConditionContext, sublayers: Sequence[Sublayer] = ()) -> torch.Tensor:
        """Run the residual ``sublayers`` on ``h`` ``(B, N, W)`` under the condition; same shape out."""


@CONDITIONERS.register("adaln")
class AdaLNZero(Conditioner):
    """adaLN-Zero: ``h + gate * f(LN(h) * (1 + scale) + shift)`` per sub-layer ``f``.

    Shift, scale and gate of every sub-layer come from one Linear on ``SiLU(ctx.emb)``, zero-initialised,
    so every gate is 0 and the block is the identity at init (Peebles & Xie 2023, arXiv:2212.09748).
    """

    def __init__(self, width: int, *, emb_dim: int, cond_dim: int = 0, n_heads: int = 1, n_sublayers: int = 2) -> None:
        super().__init__(width, emb_dim=emb_dim, cond_dim=cond_dim, n_heads=n_heads, n_sublayers=n_sublayers)
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(emb_dim, 3 * width * n_sublayers)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, h: torch.Tensor, ctx: ConditionContext, sublayers: Sequence[Sublayer] = ()) -> torch.Tensor:
        """Apply each sub-layer as an adaLN-Zero residual branch; ``(B, N, W)`` -> ``(B, N, W)``."""
        self._check_sublayers(sublayers)
        mod = self.modulation(F.silu(ctx.emb)).unsqueeze(1)  # (B, 1, 3 * n_sublayers * W)
        mods = mod.chunk(3 * self.n_sublayers, dim=-1)  # 3 * n_sublayers x (B, 1, W)
        for i, f in enumerate(sublayers):
            shift, scale, gate = mods[3 * i : 3 * i + 3]  # (B, 1, W) each
            h = h + gate * f(self.norm(h) * (1 + scale) + shift)  # (B, N, W)
        return h


@CONDITIONERS.register("film")
class FiLMConditioner(Conditioner):
    """Plain pre-norm residual sub-layers, then FiLM of the token states from ``SiLU(ctx.emb)``.

    The FiLM projection is zero-initialised (``h' = h`` at init); the sub-layers themselves are ordinary
    pre-norm residual branches (Perez et al. 2018, arXiv:1709.07871).
    """

    def __init__(self, width: int, *, emb_dim: int, cond_dim: int = 0, n_heads: int = 1, n_sublayers: int = 2) -> None:
        super().__init__(width, emb_dim=emb_dim, cond_dim=cond_dim, n_heads=n_heads, n_sublayers=n_sublayers)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(n_sublayers))
        self.film = FiLM(emb_dim, width)

    def forward(self, h: torch.Tensor, ctx: ConditionContext, sublayers: Sequence[Sublayer] = ()) -> torch.Tensor:
        """Pre-norm residual sub-layers then FiLM; ``(B, N, W)`` -> ``(B, N, W)``."""
        self._check_sublayers(sublayers)
        for norm, f in zip(self.norms, sublayers, strict=False):
            h = h + f(norm(h))  # (B, N, W)
        return self.film(h, F.silu(ctx.emb))  # (B, N, W)


@CONDITIONERS.register("cross_attention")
class CrossAttentionConditioner(Conditioner):
    """Pre-norm cross-attention to the condition tokens, then adaLN-Zero sub-layers on ``ctx.emb``.

    The condition tokens are attended, not pooled (``pools_condition = False``), so ``ctx.emb`` carries
    the timestep only. The cross-attention output projection and the adaLN modulation are
    zero-initialised: the identity at init.
    """

    pools_condition: ClassVar[bool] = False
    needs_condition_tokens: ClassVar[bool] = True

    def __init__(self, width: int, *, emb_dim: int, cond_dim: int = 0, n_heads: int = 1, n_sublayers: int = 2) -> None:
        super().__init__(width, emb_dim=emb_dim, cond_dim=cond_dim, n_heads=n_heads, n_sublayers=n_sublayers)
        if cond_dim < 1:
            raise InvalidInputError(
                f"the cross_attention conditioner needs condition tokens (cond_dim >= 1), got cond_dim={cond_dim}."
            )
        self.norm = nn.LayerNorm(width)
        self.cross = CrossAttention(width, cond_dim, n_heads)
        self.adaln = AdaLNZero(width, emb_dim=emb_dim, n_sublayers=n_sublayers)

    def forward(self, h: torch.Tensor, ctx: ConditionContext, sublayers: Sequence[Sublayer] = ()) -> torch.Tensor:
        """Cross-attention residual, then the sub-layers under adaLN-Zero; ``(B, N, W)`` -> same."""
        if ctx.tokens is None:
            raise InvalidInputError("the cross_attention conditioner needs condition tokens, got None.")
        h = h + self.cross(self.norm(h), ctx.tokens)  # (B, N, W)
        return self.adaln(h, ctx, sublayers)
