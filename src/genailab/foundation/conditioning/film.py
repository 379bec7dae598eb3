"""FiLM: feature-wise linear modulation (Perez et al., 2018, arXiv:1709.07871)."""

from __future__ import annotations

import torch
from torch import nn

from genailab.errors import InvalidInputError

__all__ = ["FiLM"]


class FiLM(nn.Module):
    """``h' = h * (1 + scale(cond)) + shift(cond)``; zero-initialised, so ``h' == h`` at init.

    Parameters
    ----------
    condition_dim
        Width C of the condition vector.
    hidden_dim
        Width D of the modulated hidden states.
    """

    def __init__(self, condition_dim: int, hidden_dim: int) -> None:
        super().__init__()
        if condition_dim < 1 or hidden_dim < 1:
            raise InvalidInputError(
                f"FiLM needs condition_dim >= 1 and hidden_dim >= 1, got {condition_dim}, {hidden_dim}."
            )
        self.proj = nn.Linear(condition_dim, 2 * hidden_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Modulate ``h``.

        Parameters
        ----------
        h
            ``(B, D)`` or ``(B, N, D)`` hidden states.
        cond
            ``(B, C)`` condition vector.

        Returns
        -------
        Modulated hidden states, same shape as ``h``.
        """
        scale, shift = self.proj(cond).chunk(2, dim=-1)  # (B, D) each
        if h.ndim == 3:
            scale, shift = scale.unsqueeze(1), shift.unsqueeze(1)  # (B, 1, D)
        return h * (1.0 + scale) + shift
