"""The :class:`Split` record, the :data:`SPLITS` registry of split kinds and the helpers the splitters share.

A split kind is registered once, by the module that defines it (:mod:`.generic`,
:mod:`.perturbation`, :mod:`.holdout`); ``SPLITS.get(name)`` returns its function and an unknown name
raises an error listing the registered kinds.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genailab.config import check_fraction
from genailab.data.labels import most_frequent, split_label
from genailab.errors import InvalidInputError, MissingKeyError
from genailab.io import atomic_write_json
from genailab.registry import Registry

__all__ = [
    "SPLITS",
    "SPLITTERS",
    "Split",
    "available_values",
    "carve_random_val",
    "check_seed",
    "check_val_seed",
    "frame_labels",
    "holdout_count",
    "label_parts",
    "obs_frame",
    "values_tuple",
]

#: Every split kind by name (``"random"``, ``"combination"``, ``"holdout"``, ...): the one registry.
SPLITS: Registry[Callable[..., Split]] = Registry("split")
#: The former name of :data:`SPLITS` (the same object).
SPLITTERS = SPLITS


def _index_array(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise InvalidInputError(
            f"Split.{name} must be a 1-D integer index array, got shape {arr.shape} dtype {arr.dtype}."
        )
    arr = np.sort(arr.astype(np.int64))
    if arr[0] < 0:
        raise InvalidInputError(f"Split.{name} has negative indices (e.g. {int(arr[0])}).")
    if (np.diff(arr) == 0).any():
        raise InvalidInputError(f"Split.{name} lists some cells twice.")
    return arr


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """Row indices of the train, validation and test cells, plus the parameters that produced them.

    Attributes
    ----------
    name
        The splitter's registered name (``"random"``, ``"combination"``, ...).
    train, val, test
        Sorted, disjoint int64 row indices. ``val`` may be empty; ``test`` may be empty only when the
        split asked for none (``params["test_fraction"] == 0``, a train/validation split).
    params
        JSON-serialisable parameters (seed, held-out values, ``n_obs``, ...).
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInputError(f"Split.name={self.name!r} must be a non-empty string.")
        for part in ("train", "val", "test"):
            object.__setattr__(self, part, _index_array(part, getattr(self, part)))
        if self.test.size == 0 and self.params.get("test_fraction") != 0:
            raise InvalidInputError(
                f"split {self.name!r}: the held-out set is empty (test has no cells); hold out values that "
                "occur in the data or a larger fraction."
            )
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            common = np.intersect1d(getattr(self, a), getattr(self, b))
            if common.size:
                raise InvalidInputError(
                    f"split {self.name!r}: {a} and {b} share {common.size} cells (e.g. {int(common[0])}); "
                    "they must be disjoint."
                )
        if not isinstance(self.params, Mapping):
            raise InvalidInputError(f"Split.params must be a mapping, got {type(self.params).__name__}.")
        try:
            params = json.loads(json.dumps(dict(self.params)))
        except (TypeError, ValueError) as err:
            raise InvalidInputError(f"Split.params must be JSON-serialisable: {err}") from err
        object.__setattr__(self, "params", params)
        n_obs = params.get("n_obs")
        if isinstance(n_obs, int):
            top = max(
                (int(getattr(self, p)[-1]) for p in ("train", "val", "test") if getattr(self, p).size),
                default=-1,
            )
            if top >= n_obs:
                raise InvalidInputError(f"split {self.name!r}: index {top} is out of range for n_obs={n_obs}.")

    @property
    def sizes(self) -> dict[str, int]:
        """Number of cells in each part."""
        return {"train": int(self.train.size), "val": int(self.val.size), "test": int(self.test.size)}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        return (
            self.name == other.name
            and all(np.array_equal(getattr(self, p), getattr(other, p)) for p in ("train", "val", "test"))
            and dict(self.params) == dict(other.params)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Split(name={self.name!r}, sizes={self.sizes}, params={dict(self.params)!r})"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "name": self.name,
            "train": self.train.tolist(),
            "val": self.val.tolist(),
            "test": self.test.tolist(),
            "params": dict(self.params),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Split:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"Split.from_dict: expected a mapping, got {type(data).__name__}.")
        missing = [k for k in ("name", "train", "val", "test") if k not in data]
        if missing:
            raise InvalidInputError(f"Split.from_dict: missing key(s) {missing}.")
        return cls(
            name=data["name"],
            train=np.asarray(data["train"], dtype=np.int64),
            val=np.asarray(data["val"], dtype=np.int64),
            test=np.asarray(data["test"], dtype=np.int64),
            params=dict(data.get("params", {})),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Atomically write the split as JSON."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Split:
        """Read a split written by :meth:`save`."""
        p = Path(path)
        if not p.is_file():
            raise InvalidInputError(f"path={str(path)!r} does not exist or is not a file; expected a split JSON.")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InvalidInputError(f"path={str(path)!r} is not valid JSON: {err}") from err
        return cls.from_dict(data)


# ------------------------------------------------------------------------- helpers shared by the splitters
def check_seed(seed: Any) -> int:
    """``seed`` as an int; anything but a non-negative integer is refused."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed={seed!r} must be a non-negative integer.")
    return int(seed)


def obs_frame(obs: Any) -> pd.DataFrame:
    """``obs`` itself, or ``adata.obs`` for an AnnData."""
    from anndata import AnnData

    if isinstance(obs, AnnData):
        return obs.obs
    if isinstance(obs, pd.DataFrame):
        return obs
    raise InvalidInputError(f"obs must be a pandas DataFrame (adata.obs) or an AnnData, got {type(obs).__name__}.")


def frame_labels(obs: pd.DataFrame, key: Any, argument: str) -> np.ndarray:
    """``obs[key]`` as an object array of strings; a missing column or a missing label is refused."""
    if not isinstance(key, str):
        raise InvalidInputError(f"{argument}={key!r} must be an obs column name (str).")
    if key not in obs.columns:
        cols = ", ".join(repr(str(c)) for c in obs.columns[:30]) or "none"
        raise MissingKeyError(f"{argument}={key!r} is not an obs column; available obs columns: {cols}.")
    series = obs[key]
    isna = series.isna().to_numpy()
    if isna.any():
        raise InvalidInputError(
            f"obs[{key!r}] has {int(isna.sum())} cells with a missing (NaN) label; fill or drop them."
        )
    return np.array([str(v) for v in series.to_numpy()], dtype=object)


def values_tuple(values: Any, argument: str) -> tuple[str, ...]:
    """One value or a sequence of values as a non-empty tuple of strings."""
    if isinstance(values, str):
        return (values,)
    if not isinstance(values, Sequence) and not isinstance(values, (np.ndarray, pd.Index, set, frozenset)):
        raise InvalidInputError(f"{argument}={values!r} must be a string or a sequence of strings.")
    out = tuple(str(v) for v in values)
    if not out:
        raise InvalidInputError(f"{argument} is empty; name at least one value to hold out.")
    return out


def available_values(labels: np.ndarray, limit: int = 30) -> str:
    """The distinct labels, quoted, for error messages."""
    uniq = sorted(set(labels.tolist()))
    return ", ".join(repr(u) for u in uniq[:limit]) + (f", ... ({len(uniq)} in all)" if len(uniq) > limit else "")


def carve_random_val(pool: np.ndarray, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split ``pool`` into (train, val) at random; ``val`` has ``round(val_fraction * len(pool))`` cells."""
    n_val = int(round(val_fraction * pool.size))
    perm = rng.permutation(pool.size)
    return np.sort(pool[perm[n_val:]]), np.sort(pool[perm[:n_val]])


def holdout_count(n: Any, total: int, argument: str) -> int:
    """An int count, or a float fraction of ``total`` (at least 1)."""
    if isinstance(n, bool) or not isinstance(n, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"{argument}={n!r} must be a positive integer or a fraction in (0, 1).")
    if isinstance(n, (float, np.floating)):
        if not 0 < n < 1:
            raise InvalidInputError(f"{argument}={n!r} as a float must be a fraction in (0, 1).")
        return max(1, int(round(float(n) * total)))
    if n < 1:
        raise InvalidInputError(f"{argument}={n!r} must be >= 1.")
    return int(n)


def label_parts(
    labels: np.ndarray, control: str, delimiter: str, key: str
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]:
    """Unique labels, inverse codes and the single perturbations of each unique label."""
    if not isinstance(control, str) or not control:
        raise InvalidInputError(f"control={control!r} must be a non-empty string.")
    if not isinstance(delimiter, str) or not delimiter:
        raise InvalidInputError(f"delimiter={delimiter!r} must be a non-empty string.")
    if delimiter in control:
        raise InvalidInputError(f"control={control!r} contains the delimiter {delimiter!r}; choose another delimiter.")
    uniq, inv = np.unique(labels.astype(str), return_inverse=True)
    if control not in set(uniq.tolist()):
        raise InvalidInputError(
            f"control value {control!r} not found in obs[{key!r}]; most frequent values: "
            f"{most_frequent(labels)}. Pass control=... naming the label of unperturbed cells."
        )
    parts = [tuple(dict.fromkeys(split_label(label, control, delimiter, key=key))) for label in uniq.tolist()]
    return uniq, inv, parts


def check_val_seed(val_fraction: float, seed: int) -> tuple[float, int]:
    """The checked ``(val_fraction, seed)`` every splitter takes."""
    check_fraction("val_fraction", val_fraction)
    return float(val_fraction), check_seed(seed)
