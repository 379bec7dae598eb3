"""AnnData output of latent-diffusion sampling: the ``obs`` of synthetic and counterfactual cells and the result.

Formatting only (no network, no randomness): :class:`~genailab.foundation.recipes.LatentDiffusionModel`
draws latents and counts, and these functions lay them out as AnnData.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from genailab.constants import ADATA_KEYS

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

__all__ = ["counterfactual_obs", "samples_to_anndata", "synthetic_obs"]


def synthetic_obs(columns: Mapping[str, Any], n: int, categorical: Collection[str]) -> pd.DataFrame:
    """``obs`` of ``n`` synthetic cells named ``syn_0 ... syn_{n-1}``.

    Parameters
    ----------
    columns
        ``{key: (n,) values}`` in the model's condition-key order.
    n
        Number of cells.
    categorical
        Keys stored as categoricals of their string labels.
    """
    import pandas as pd

    obs = pd.DataFrame(dict(columns), index=[f"syn_{i}" for i in range(n)])
    for k in columns:
        if k in categorical:
            obs[k] = pd.Categorical(obs[k].astype(str))
    return obs


def counterfactual_obs(obs: pd.DataFrame, values: Mapping[str, Any]) -> pd.DataFrame:
    """A copy of real cells' ``obs`` with each key's new condition in ``obs[key]`` and the old in ``key_original``.

    Parameters
    ----------
    obs
        The real cells' ``obs``.
    values
        ``{key: one value or (n,) values}``, the conditions the cells were re-generated under.
    """
    obs = obs.copy()
    for k, v in values.items():
        obs[f"{k}_original"] = obs[k].astype(str)
        obs[k] = np.asarray(v, dtype=object).astype(str) if np.ndim(v) else str(v)
    return obs


def samples_to_anndata(
    counts: np.ndarray,
    z_std: torch.Tensor,
    obs: pd.DataFrame,
    library: torch.Tensor,
    genes: Sequence[str],
    settings: Mapping[str, Any],
) -> AnnData:
    """Generated cells as AnnData.

    Parameters
    ----------
    counts
        ``(n, G)`` int32 counts, stored as CSR in ``X``.
    z_std
        ``(n, m, d)`` standardised latents, stored in ``obsm["X_genailab_synthetic_latent"]``.
    obs
        ``obs`` of the ``n`` cells; ``library`` ``(n, 1)`` is added as ``obs["library_size"]``.
    library
        ``(n, 1)`` library sizes the counts were drawn with.
    genes
        The ``G`` gene identifiers (``var_names``).
    settings
        Sampling settings for ``uns["genailab_sampling"]`` (non-scalar values stored as strings).
    """
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    var = pd.DataFrame(index=pd.Index(list(genes), name="gene"))
    out = ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var)
    out.obsm[ADATA_KEYS.SYNTH_LATENT] = z_std.numpy()
    out.obs["library_size"] = library.view(-1).numpy()
    out.uns[ADATA_KEYS.SAMPLING] = {
        k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in settings.items()
    }
    return out
