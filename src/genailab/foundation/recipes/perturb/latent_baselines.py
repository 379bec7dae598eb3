"""Latent baselines on the recipe's frozen VAE: observed latent shifts and their decoded responses.

Two baselines a latent perturbation model must be read against are built from these:

- ``latent_additive``: decode the sum of the singles' observed latent shifts (training cells);
- ``vae_oracle``: decode the observed latent shift of the held-out cells themselves. It uses the
  test cells, so it is not a method but a *ceiling*: the best any latent-shift model can do through
  this VAE (what the bottleneck costs).

:func:`decode_shift_response` builds its mean exactly as the model's predictions are built
(:func:`~genailab.foundation.recipes.perturb.prediction.query`): the observed control mean plus the
shift of the decoded, sampled cells, log-normalised with the same library rule (``library_key``), so
that a baseline and the model differ only in the latent shift.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from genailab.constants import BATCH_KEYS
from genailab.errors import InvalidInputError
from genailab.foundation.recipes.perturb.prediction import ResponsePrediction, decoded_shift, library_column
from genailab.nn import log_normalize as log_normalize_tensor

if TYPE_CHECKING:
    from anndata import AnnData

    from genailab.foundation.recipes.perturb.model import PerturbDeltaModel

__all__ = ["decode_shift_response", "observed_latent_shift"]


def _rows(rows: np.ndarray, what: str, n_obs: int) -> np.ndarray:
    out = np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(out) == 0:
        raise InvalidInputError(f"{what} is empty; a latent shift needs cells.")
    if out.min() < 0 or out.max() >= n_obs:
        raise InvalidInputError(f"{what} holds rows outside [0, {n_obs}).")
    return out


def _latents(model: PerturbDeltaModel, adata: AnnData, rows: np.ndarray) -> np.ndarray:
    """``(n, m, d)`` standardised latents of ``rows`` by the frozen VAE encoder."""
    return np.asarray(model.vae.get_latent(adata[np.sort(rows)], key=None, standardize=True), dtype=np.float64)


@torch.no_grad()
def observed_latent_shift(
    model: PerturbDeltaModel, adata: AnnData, rows: np.ndarray, control_rows: np.ndarray
) -> np.ndarray:
    """Mean standardised latent of ``rows`` minus that of ``control_rows`` (the frozen VAE encoder).

    Parameters
    ----------
    model
        The perturbation model whose VAE encodes (the members are not used).
    adata
        The cells (counts over the VAE's genes, or a superset).
    rows
        Rows of the perturbed cells (e.g. one condition in one context).
    control_rows
        Rows of the control cells of the same context.

    Returns
    -------
    np.ndarray
        ``(m, d)`` observed latent shift on the standardised latent scale (what the model's
        members predict).

    Examples
    --------
    >>> shift = observed_latent_shift(model, adata, rows_of("KLF1"), control_rows)  # doctest: +SKIP
    >>> oracle = decode_shift_response(model, adata, control_rows, shift)  # doctest: +SKIP
    """
    model.eval()
    rows = _rows(rows, "rows", adata.n_obs)
    control_rows = _rows(control_rows, "control_rows", adata.n_obs)
    return _latents(model, adata, rows).mean(0) - _latents(model, adata, control_rows).mean(0)


@torch.no_grad()
def decode_shift_response(
    model: PerturbDeltaModel,
    adata: AnnData,
    control_rows: np.ndarray,
    shift: np.ndarray,
    *,
    seed: int = 0,
    max_controls: int | None = 1000,
) -> ResponsePrediction:
    """Decode every control latent plus ``shift`` with the frozen VAE: the response of a latent shift.

    Parameters
    ----------
    model
        The perturbation model (its VAE decodes, its ``config.mc_cells`` and ``library_key`` apply).
    adata, control_rows
        The cells and the rows of the control cells to shift (one context).
    shift
        ``(m, d)`` latent shift on the standardised scale, e.g. from :func:`observed_latent_shift`
        (or a sum of them: the latent-additive baseline of a combination).
    seed
        Seeds the count sampling and the draw of ``max_controls`` controls.
    max_controls
        Use at most this many control cells (``None`` = all).

    Returns
    -------
    ResponsePrediction
        ``mean`` (observed control mean plus the decoded shift, log1p counts per 10k with the model's
        library rule), ``control_mean``, ``counts`` (one sampled cell per control cell), ``expected``,
        ``library`` (the control cells' libraries under ``library_key``, else ``None``) and
        ``members`` (``mean`` as one row); ``sigma`` is ``None`` and ``ood_score`` NaN.

    Raises
    ------
    MissingKeyError
        The model has a ``library_key`` that ``adata.obs`` lacks.
    """
    model.eval()
    rng = np.random.default_rng(seed)
    rows = _rows(control_rows, "control_rows", adata.n_obs)
    if max_controls is not None and len(rows) > max_controls:
        rows = np.sort(rng.choice(rows, max_controls, replace=False))
    shape = tuple(model.vae.config.latent_shape)
    shift = np.asarray(shift, dtype=np.float32)
    if shift.shape != shape:
        raise InvalidInputError(f"shift has shape {shift.shape}; the VAE's latent shape is {shape}.")
    cells = model.cell_data(adata, rows)
    read = cells.counts_ds[rows.tolist()]
    counts, library = read[BATCH_KEYS.COUNTS], read[BATCH_KEYS.LIBRARY]  # (n, G), (n,)
    z_base = cells.z[torch.as_tensor(rows)]  # (n, m, d)
    z = z_base + torch.as_tensor(shift).unsqueeze(0)
    norm_library = cells.norm_library(rows)
    lib_col = library_column(norm_library)
    reps = max(1, math.ceil(model.config.mc_cells / len(rows)))
    delta, expected, draws = decoded_shift(
        model.vae, z_base, z, library, model.vae.batch_index(read), reps=reps, seed=seed * 104729, norm_library=lib_col
    )
    control_mean = log_normalize_tensor(counts, lib_col).mean(0)  # (G,)
    mean = (control_mean + delta).numpy()
    return ResponsePrediction(
        mean=mean,
        sigma=None,
        members=mean[None, :],
        control_mean=control_mean.numpy(),
        counts=draws.numpy(),
        expected=expected.numpy(),
        ood_score=float("nan"),
        novelty={},
        control_rows=rows,
        context=str(cells.contexts[rows[0]]),
        library=norm_library,
    )
