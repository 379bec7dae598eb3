"""Encoding cells for the perturbation recipe: latents by the frozen VAE, agent ids and doses, context codes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from genailab.data.spec import obs_labels
from genailab.errors import InvalidInputError, MissingKeyError

if TYPE_CHECKING:
    from anndata import AnnData

    from genailab.foundation.recipes.perturb.model import PerturbDeltaModel

__all__ = ["Cells", "cell_data", "context_codes", "context_labels", "controls_by_context", "obs_library"]


@dataclass
class Cells:
    """Per-cell inputs of a dataset, computed once (latents by the frozen VAE)."""

    z: torch.Tensor  # (N, m, d) standardised latents
    labels: np.ndarray  # (N,) condition labels
    contexts: np.ndarray  # (N,) context labels ("" without context keys)
    context_codes: torch.Tensor  # (N, K) float codes
    ids: torch.Tensor  # (N, S)
    dose: torch.Tensor  # (N, S)
    counts_ds: Any  # CountsDataset aligned to the VAE's genes
    library: np.ndarray | None = None  # (N,) whole-transcriptome libraries (config.library_key), else None

    def norm_library(self, rows: np.ndarray) -> np.ndarray | None:
        """``(n,)`` libraries of ``rows`` for log-normalisation (``None``: row sums of the counts)."""
        return None if self.library is None else self.library[np.asarray(rows, dtype=np.int64)]


def context_codes(
    adata: AnnData,
    keys: Sequence[str],
    categories: Mapping[str, Sequence[str]],
    context: Mapping[str, str] | None = None,
) -> np.ndarray:
    """``(n, K)`` codes of ``adata``'s cells for the context ``keys`` (``context`` overrides obs); unseen -> ``-1``.

    Parameters
    ----------
    adata
        The cells.
    keys
        The context keys (obs columns), in code order.
    categories
        Per context key, its training categories; a code is the position of the value.
    context
        Values that replace obs columns, e.g. ``{'cell_type': 'k562'}``.
    """
    out = np.zeros((adata.n_obs, len(keys)), dtype=np.float32)
    for j, key in enumerate(keys):
        if context is not None and key in context:
            values = np.full(adata.n_obs, str(context[key]), dtype=object)
        else:
            values = obs_labels(adata, key, "context key")
        lut = {c: i for i, c in enumerate(categories[key])}
        out[:, j] = [lut.get(str(v), -1) for v in values]
    return out


def context_labels(adata: AnnData, keys: Sequence[str], context: Mapping[str, str] | None = None) -> np.ndarray:
    """``(n,)`` context label of each cell (values of the context ``keys`` joined by ``|``; ``''`` without keys)."""
    if not keys:
        return np.full(adata.n_obs, "", dtype=object)
    cols = []
    for key in keys:
        if context is not None and key in context:
            cols.append(np.full(adata.n_obs, str(context[key]), dtype=object))
        else:
            cols.append(obs_labels(adata, key, "context key"))
    return np.array(["|".join(map(str, t)) for t in zip(*cols, strict=True)], dtype=object)


def obs_library(adata: AnnData, key: str | None) -> np.ndarray | None:
    """``(n,)`` whole-transcriptome library sizes ``adata.obs[key]`` (``None`` when ``key`` is ``None``).

    Raises
    ------
    MissingKeyError
        ``adata.obs`` has no column ``key``.
    InvalidInputError
        A value is not a finite positive number.
    """
    if key is None:
        return None
    if key not in adata.obs.columns:
        shown = ", ".join(map(repr, list(adata.obs.columns)[:10]))
        raise MissingKeyError(
            f"library_key={key!r} is not an obs column (columns: {shown}); it names the whole-transcriptome "
            "library size of each cell (e.g. 'ncounts')."
        )
    try:
        lib = np.asarray(adata.obs[key], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"obs[{key!r}] must hold numeric library sizes: {err}") from err
    if lib.size and (not np.isfinite(lib).all() or lib.min() <= 0):
        raise InvalidInputError(f"obs[{key!r}] must hold finite positive library sizes.")
    return lib


def cell_data(model: PerturbDeltaModel, adata: AnnData, rows: np.ndarray) -> Cells:
    """Latents and encodings of ``adata``'s cells under ``model`` (latents computed for ``rows`` only).

    Cells without a perturbation column are controls; cells without the context columns get the
    context ``'?'`` and codes ``-1`` (the caller passes their codes to the query). With
    ``config.library_key`` the cells carry their whole-transcriptome libraries (a missing column is a
    :class:`~genailab.errors.MissingKeyError`).
    """
    keys, vocab, vae = model.config.context_keys, model.vocab, model.vae
    library = obs_library(adata, model.config.library_key)
    if model.perturbation_key in adata.obs.columns:
        labels = obs_labels(adata, model.perturbation_key, "perturbation_key")
    else:  # a file of control cells only
        labels = np.full(adata.n_obs, vocab.control, dtype=object)
    doses = obs_labels(adata, model.dose_key, "dose_key") if model.dose_key in adata.obs.columns else None
    z = torch.zeros(adata.n_obs, *vae.config.latent_shape)
    if len(rows):
        sub = adata[np.sort(rows)]
        z[torch.as_tensor(np.sort(rows))] = torch.as_tensor(vae.get_latent(sub, key=None, standardize=True))
    ids = np.full((adata.n_obs, 1), -1, dtype=np.int64)
    dose = np.zeros((adata.n_obs, 1), dtype=np.float32)
    if len(rows):
        r_ids, r_dose = vocab.encode(labels[rows], None if doses is None else doses[rows])
        ids = np.full((adata.n_obs, r_ids.shape[1]), -1, dtype=np.int64)
        dose = np.zeros((adata.n_obs, r_ids.shape[1]), dtype=np.float32)
        ids[rows], dose[rows] = r_ids, r_dose
    known = all(k in adata.obs.columns for k in keys)
    contexts = context_labels(adata, keys) if known else np.full(adata.n_obs, "?", dtype=object)
    codes = context_codes(adata, keys, model.context_categories) if known else np.full((adata.n_obs, len(keys)), -1.0)
    return Cells(
        z=z,
        labels=labels,
        contexts=contexts,
        context_codes=torch.as_tensor(codes, dtype=torch.float32),
        ids=torch.as_tensor(ids),
        dose=torch.as_tensor(dose),
        counts_ds=vae.count_dataset(adata),
        library=library,
    )


def controls_by_context(cells: Cells, rows: np.ndarray, control: str) -> dict[str, np.ndarray]:
    """Per context label, the control cells (label ``control``) among ``rows``."""
    ctrl = rows[cells.labels[rows] == control]
    return {c: ctrl[cells.contexts[ctrl] == c] for c in np.unique(cells.contexts[ctrl]).tolist()}
