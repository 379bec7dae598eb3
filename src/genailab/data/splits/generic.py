"""Generic split kinds: cells at random (``"random"``) and whole labels held out (``"category"``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from genailab.config import check_fraction
from genailab.data.splits.base import (
    SPLITS,
    Split,
    available_values,
    carve_random_val,
    check_val_seed,
    frame_labels,
    obs_frame,
    values_tuple,
)
from genailab.errors import InvalidInputError

__all__ = ["holdout_category_split", "random_split"]


@SPLITS.register("random")
def random_split(n_obs: int, *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0) -> Split:
    """Cells at random: ``test_fraction`` to test, ``val_fraction`` to validation, the rest to train.

    Parameters
    ----------
    n_obs
        Number of cells.
    val_fraction, test_fraction
        Fractions of all cells. ``test_fraction=0`` gives a train/validation split with an empty
        test set; any positive fraction holds out at least one cell.
    seed
        Seed of the permutation.

    Returns
    -------
    A :class:`Split` named ``"random"``.
    """
    if isinstance(n_obs, bool) or not isinstance(n_obs, (int, np.integer)) or n_obs < 2:
        raise InvalidInputError(f"n_obs={n_obs!r} must be an integer >= 2.")
    check_fraction("test_fraction", test_fraction)
    val_fraction, seed = check_val_seed(val_fraction, seed)
    if val_fraction + test_fraction >= 1:
        raise InvalidInputError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction} must be < 1 to leave training cells."
        )
    n_obs = int(n_obs)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_obs)
    n_test = max(1, int(round(test_fraction * n_obs))) if test_fraction > 0 else 0
    n_val = int(round(val_fraction * n_obs))
    if n_test + n_val >= n_obs:
        raise InvalidInputError(
            f"n_obs={n_obs} is too small for val_fraction={val_fraction} and test_fraction={test_fraction}: "
            "no training cells would be left."
        )
    params = {
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": float(test_fraction),
        "n_obs": n_obs,
    }
    return Split(
        "random",
        train=perm[n_test + n_val :],
        val=perm[n_test : n_test + n_val],
        test=perm[:n_test],
        params=params,
    )


@SPLITS.register("category")
def holdout_category_split(
    obs: pd.DataFrame,
    key: str,
    values: str | Sequence[str],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Hold out every cell whose ``obs[key]`` is one of ``values`` (a cell type, a donor, ...).

    Parameters
    ----------
    obs
        ``adata.obs`` (or the AnnData itself).
    key
        The ``obs`` column.
    values
        Label(s) to hold out (compared as strings).
    val_fraction
        Fraction of the remaining cells used for validation.
    seed
        Seed of the validation draw.

    Returns
    -------
    A :class:`Split` named ``"category"``.

    Raises
    ------
    InvalidInputError
        For a value absent from ``obs[key]`` (the message lists the available ones).
    """
    frame = obs_frame(obs)
    labels = frame_labels(frame, key, "key")
    held = values_tuple(values, "values")
    val_fraction, seed = check_val_seed(val_fraction, seed)
    present = set(labels.tolist())
    unknown = [v for v in held if v not in present]
    if unknown:
        raise InvalidInputError(
            f"values {unknown} not found in obs[{key!r}]; available values: {available_values(labels)}."
        )
    is_test = np.isin(labels, np.array(held, dtype=object))
    pool = np.flatnonzero(~is_test)
    if pool.size == 0:
        raise InvalidInputError(f"holding out {list(held)} leaves no training cells; hold out fewer values.")
    train, val = carve_random_val(pool, val_fraction, np.random.default_rng(seed))
    params = {
        "seed": seed,
        "key": key,
        "values": list(held),
        "val_fraction": val_fraction,
        "n_obs": len(labels),
    }
    return Split("category", train=train, val=val, test=np.flatnonzero(is_test), params=params)
