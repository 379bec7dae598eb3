"""The label grammar: reading ``obs`` label columns and splitting perturbation and dose labels.

One home for how a label is read and parsed, used by the registry (:mod:`genailab.data.spec`), the
splits (:mod:`genailab.data.splits`) and every layer above:

- :func:`obs_column`, :func:`label_strings`, :func:`obs_labels`: an ``obs`` column as strings, with the
  available columns listed when it is missing and missing values refused;
- :func:`split_label`: ``'SET+KLF1'`` -> ``('SET', 'KLF1')``, control -> ``()``, control parts dropped,
  empty parts refused;
- :func:`parse_dose`: ``'1+0.5'`` -> ``(1.0, 0.5)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from genailab.errors import InvalidInputError, MissingKeyError

__all__ = [
    "label_strings",
    "most_frequent",
    "obs_column",
    "obs_labels",
    "parse_dose",
    "split_label",
]


def _available(obs: pd.DataFrame, limit: int = 30) -> str:
    cols = [str(c) for c in obs.columns]
    if not cols:
        return "none (obs has no columns)"
    shown = ", ".join(repr(c) for c in cols[:limit])
    return shown + (f", ... ({len(cols)} in all)" if len(cols) > limit else "")


def obs_column(adata: Any, key: str, role: str) -> pd.Series:
    """``adata.obs[key]``; a non-AnnData or a missing column is refused with the available columns listed."""
    if not isinstance(adata, AnnData):
        raise InvalidInputError(f"adata must be an anndata.AnnData, got {type(adata).__name__}.")
    if key not in adata.obs.columns:
        raise MissingKeyError(f"{role}={key!r} is not an obs column; available obs columns: {_available(adata.obs)}.")
    return adata.obs[key]


def label_strings(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(labels as str objects, isna mask)`` for a label column (NaN entries become '')."""
    isna = series.isna().to_numpy()
    if isinstance(series.dtype, pd.CategoricalDtype):
        cats = np.array([str(c) for c in series.cat.categories] + [""], dtype=object)
        codes = series.cat.codes.to_numpy().astype(np.int64)
        labels = cats[np.where(codes >= 0, codes, len(cats) - 1)]
    else:
        labels = np.array([str(v) for v in series.to_numpy()], dtype=object)
        labels[isna] = ""
    return labels, isna


def obs_labels(adata: Any, key: str, argument: str) -> np.ndarray:
    """``obs[key]`` as an object array of strings; a missing column or missing values are refused.

    Parameters
    ----------
    adata
        The AnnData to read.
    key
        The obs column.
    argument
        The option or argument that named ``key`` (used in the error message).
    """
    labels, isna = label_strings(obs_column(adata, key, argument))
    if isna.any():
        raise InvalidInputError(f"obs[{key!r}] has {int(isna.sum())} missing values; fill or drop them.")
    return labels


def most_frequent(labels: np.ndarray, n: int = 5) -> str:
    """The ``n`` most frequent labels with their counts, for error messages: ``"'a' (3), 'b' (1)"``."""
    counts = pd.Series(labels).value_counts()
    return ", ".join(f"{lab!r} ({c})" for lab, c in counts.head(n).items())


def split_label(label: Any, control: str, delimiter: str, *, key: str | None) -> tuple[str, ...]:
    """The agents of a perturbation label (the one label grammar): ``'SET+KLF1'`` -> ``('SET', 'KLF1')``.

    The control label gives ``()``; control parts of a combination (``'ctrl+KLF1'``) are dropped; an empty
    part (``'A++B'``) is refused. ``key`` names the obs column in the error message.
    """
    if not isinstance(label, str):
        raise InvalidInputError(f"perturbation label {label!r} must be a string.")
    if label == control:
        return ()
    parts = label.split(delimiter)
    if any(p == "" for p in parts):
        where = f"obs[{key!r}]" if key else "perturbation"
        raise InvalidInputError(
            f"{where} label {label!r} has an empty part when split on {delimiter!r}; "
            "expected names joined by the delimiter, e.g. 'SET+KLF1'."
        )
    return tuple(p for p in parts if p != control)


def parse_dose(value: Any, delimiter: str, *, key: str | None) -> tuple[float, ...]:
    """One dose per agent: a number, or numbers joined by ``delimiter`` (``'1+0.5'``); refused otherwise."""
    where = f"obs[{key!r}]" if key else "dose"
    if isinstance(value, bool):
        raise InvalidInputError(f"{where} value {value!r} is not a dose; expected a number or e.g. '1+1'.")
    if isinstance(value, (int, float, np.integer, np.floating)):
        parts_f = (float(value),)
    else:
        text = str(value)
        try:
            parts_f = tuple(float(p) for p in text.split(delimiter))
        except ValueError:
            raise InvalidInputError(
                f"{where} value {value!r} is not a dose; expected a number or numbers joined by "
                f"{delimiter!r} (e.g. '1+1')."
            ) from None
    if not all(math.isfinite(p) for p in parts_f):
        raise InvalidInputError(f"{where} value {value!r} is not finite.")
    return parts_f
