"""Which latent tokens moved: per-token shift between two groups of cells.

With pathway tokens (one token per gene set) a shift of a token reads as "this pathway changed"; with
any tokenizer it says which latent coordinates separate two conditions. :func:`token_shift` ranks the
tokens by a standardised effect size (the multivariate analogue of Cohen's d per token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from genailab.errors import InvalidInputError

__all__ = ["token_shift"]


def _as_tokens(tokens: Any, argument: str) -> np.ndarray:
    if hasattr(tokens, "detach"):  # torch.Tensor
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens, dtype=np.float64)
    if arr.ndim != 3:
        raise InvalidInputError(f"{argument} has shape {arr.shape}; expected (cells, m, d) latent tokens.")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{argument} holds NaN or infinite values.")
    return arr


def token_shift(tokens_a: Any, tokens_b: Any, names: Sequence[str]) -> pd.DataFrame:
    """Rank latent tokens by how far group B moved from group A.

    For token j: ``shift_j = || mean_b(z_j) - mean_a(z_j) ||_2`` and
    ``effect_j = shift_j / s_j`` with ``s_j`` the pooled within-group standard deviation of token j
    (square root of the pooled variance averaged over its d dimensions). A token whose spread is zero
    gets ``effect = inf`` if it moved, 0 if not.

    Parameters
    ----------
    tokens_a, tokens_b
        ``(N_a, m, d)`` and ``(N_b, m, d)`` latent tokens (numpy arrays or torch tensors).
    names
        The ``m`` token names (e.g. ``encoder.token_names()``).

    Returns
    -------
    DataFrame with columns ``token``, ``shift``, ``effect``, sorted by ``effect`` descending (ties keep
    the token order).

    Raises
    ------
    InvalidInputError
        If the shapes disagree, fewer than 3 cells are given in all, or ``names`` has the wrong length.
    """
    a = _as_tokens(tokens_a, "tokens_a")
    b = _as_tokens(tokens_b, "tokens_b")
    if a.shape[1:] != b.shape[1:]:
        raise InvalidInputError(f"tokens_a {a.shape} and tokens_b {b.shape} must share the token shape (m, d).")
    names = [str(n) for n in names]
    if len(names) != a.shape[1]:
        raise InvalidInputError(f"names has {len(names)} entries; expected one per token ({a.shape[1]}).")
    n_a, n_b = a.shape[0], b.shape[0]
    if n_a < 1 or n_b < 1 or n_a + n_b < 3:
        raise InvalidInputError(f"need at least one cell per group and 3 in all; got {n_a} and {n_b}.")
    shift = np.linalg.norm(b.mean(0) - a.mean(0), axis=-1)  # (m,)
    ss = ((a - a.mean(0)) ** 2).sum(0) + ((b - b.mean(0)) ** 2).sum(0)  # (m, d)
    pooled_sd = np.sqrt(ss.mean(-1) / (n_a + n_b - 2))  # (m,)
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = np.where(pooled_sd > 0, shift / pooled_sd, np.where(shift > 0, np.inf, 0.0))
    table = pd.DataFrame({"token": names, "shift": shift, "effect": effect})
    return table.sort_values("effect", ascending=False, kind="stable").reset_index(drop=True)
