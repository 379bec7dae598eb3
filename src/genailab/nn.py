"""Shared layers and tensor functions used by several layers of the package (one home each).

- :func:`mlp`: Linear -> LayerNorm -> GELU -> Dropout stacks (encoders, tokenizers, delta heads).
- :func:`multi_head_attention`: scaled dot-product attention over heads with an optional key mask
  (DiT blocks, cross-attention conditioners, GRN pooling).
- :func:`log_normalize`: ``log1p(counts / library * target_sum)`` on tensors (the torch twin of
  :func:`genailab.data.log_normalize`, which works on numpy / scipy matrices).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["log_normalize", "mlp", "multi_head_attention"]


def mlp(dims: list[int], *, dropout: float, norm: bool = True) -> nn.Sequential:
    """Linear -> LayerNorm -> GELU -> Dropout for each consecutive pair of ``dims``."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        layers.append(nn.Linear(d_in, d_out))
        if norm:
            layers.append(nn.LayerNorm(d_out))
        layers.append(nn.GELU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def multi_head_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_heads: int,
    key_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Scaled dot-product attention over ``n_heads`` heads (Vaswani et al. 2017).

    Parameters
    ----------
    q
        ``(B, N, W)`` queries.
    k, v
        ``(B, M, W)`` keys and values.
    n_heads
        Number of heads; must divide ``W``.
    key_mask
        ``(B, M)`` bool, ``True`` = a real key that may be attended; ``None`` = all keys.
    dropout_p
        Attention dropout (pass 0 in eval mode).

    Returns
    -------
    ``(B, N, W)`` attended values.
    """
    b, n, w = q.shape
    m = k.shape[1]
    q = q.view(b, n, n_heads, w // n_heads).transpose(1, 2)  # (B, H, N, W/H)
    k = k.view(b, m, n_heads, w // n_heads).transpose(1, 2)  # (B, H, M, W/H)
    v = v.view(b, m, n_heads, w // n_heads).transpose(1, 2)  # (B, H, M, W/H)
    attn_mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, M)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)  # (B, H, N, W/H)
    return out.transpose(1, 2).reshape(b, n, w)  # (B, N, W)


def log_normalize(counts: torch.Tensor, library: torch.Tensor | None = None, target_sum: float = 1e4) -> torch.Tensor:
    """``log1p(counts / library * target_sum)``, with empty cells mapped to zeros.

    Parameters
    ----------
    counts
        ``(..., G)`` raw counts.
    library
        ``(..., 1)`` library sizes; ``None`` uses the row sums of ``counts``.
    target_sum
        Total each cell is scaled to before ``log1p``.

    Returns
    -------
    ``(..., G)`` log-normalised expression.
    """
    if library is None:
        library = counts.sum(-1, keepdim=True)
    return torch.log1p(counts * (target_sum / library.clamp(min=1.0)))
