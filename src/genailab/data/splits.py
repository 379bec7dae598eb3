"""Train/validation/test splits of cells, saved as JSON so every run can be reproduced.

Each splitter is a pure function of ``obs`` (or ``n_obs``) and a seed, registered by name in
:data:`SPLITTERS` so configs and the CLI pick one by name:

======================  ==================================================================================
``"random"``            :func:`random_split`: cells at random.
``"category"``          :func:`holdout_category_split`: hold out whole labels (a cell type, a donor).
``"perturbation"``      :func:`holdout_perturbation_split`: hold out single perturbations (unseen genes).
``"combination"``       :func:`combination_split`: hold out double perturbations with 0, 1 or 2 seen singles.
``"context"``           :func:`context_split`: hold out a perturbation in one context (cell line) only.
======================  ==================================================================================

In every perturbation split the control cells stay in the training set, and the validation set is
carved at random from the remaining (non-test) cells.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from genailab.config import check_fraction
from genailab.errors import InvalidInputError, MissingKeyError
from genailab.io import atomic_write_json
from genailab.registry import Registry

__all__ = [
    "SPLITTERS",
    "Split",
    "combination_split",
    "context_split",
    "holdout_category_split",
    "holdout_perturbation_split",
    "random_split",
]

SPLITTERS: Registry[Callable[..., Split]] = Registry("split")


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


# ---------------------------------------------------------------------------------------------- helpers
def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed={seed!r} must be a non-negative integer.")
    return int(seed)


def _obs_frame(obs: Any) -> pd.DataFrame:
    from anndata import AnnData

    if isinstance(obs, AnnData):
        return obs.obs
    if isinstance(obs, pd.DataFrame):
        return obs
    raise InvalidInputError(f"obs must be a pandas DataFrame (adata.obs) or an AnnData, got {type(obs).__name__}.")


def _labels(obs: pd.DataFrame, key: Any, argument: str) -> np.ndarray:
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


def _values_tuple(values: Any, argument: str) -> tuple[str, ...]:
    if isinstance(values, str):
        return (values,)
    if not isinstance(values, Sequence) and not isinstance(values, (np.ndarray, pd.Index, set, frozenset)):
        raise InvalidInputError(f"{argument}={values!r} must be a string or a sequence of strings.")
    out = tuple(str(v) for v in values)
    if not out:
        raise InvalidInputError(f"{argument} is empty; name at least one value to hold out.")
    return out


def _available(labels: np.ndarray, limit: int = 30) -> str:
    uniq = sorted(set(labels.tolist()))
    return ", ".join(repr(u) for u in uniq[:limit]) + (f", ... ({len(uniq)} in all)" if len(uniq) > limit else "")


def _carve_val(pool: np.ndarray, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split ``pool`` into (train, val) at random; ``val`` has ``round(val_fraction * len(pool))`` cells."""
    n_val = int(round(val_fraction * pool.size))
    perm = rng.permutation(pool.size)
    return np.sort(pool[perm[n_val:]]), np.sort(pool[perm[:n_val]])


def _count(n: Any, total: int, argument: str) -> int:
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


def _parts_of(
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
        top = pd.Series(labels).value_counts().head(5)
        raise InvalidInputError(
            f"control value {control!r} not found in obs[{key!r}]; most frequent values: "
            + ", ".join(f"{k!r} ({v})" for k, v in top.items())
            + ". Pass control=... naming the label of unperturbed cells."
        )
    parts: list[tuple[str, ...]] = []
    for label in uniq.tolist():
        if label == control:
            parts.append(())
            continue
        split = label.split(delimiter)
        if any(p == "" for p in split):
            raise InvalidInputError(
                f"obs[{key!r}] label {label!r} has an empty part when split on {delimiter!r}; "
                "expected names joined by the delimiter, e.g. 'SET+KLF1'."
            )
        parts.append(tuple(dict.fromkeys(p for p in split if p != control)))
    return uniq, inv, parts


def _common(val_fraction: float, seed: int) -> tuple[float, int]:
    check_fraction("val_fraction", val_fraction)
    return float(val_fraction), _check_seed(seed)


# --------------------------------------------------------------------------------------------- splitters
@SPLITTERS.register("random")
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
    val_fraction, seed = _common(val_fraction, seed)
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


@SPLITTERS.register("category")
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
    frame = _obs_frame(obs)
    labels = _labels(frame, key, "key")
    held = _values_tuple(values, "values")
    val_fraction, seed = _common(val_fraction, seed)
    present = set(labels.tolist())
    unknown = [v for v in held if v not in present]
    if unknown:
        raise InvalidInputError(f"values {unknown} not found in obs[{key!r}]; available values: {_available(labels)}.")
    is_test = np.isin(labels, np.array(held, dtype=object))
    pool = np.flatnonzero(~is_test)
    if pool.size == 0:
        raise InvalidInputError(f"holding out {list(held)} leaves no training cells; hold out fewer values.")
    train, val = _carve_val(pool, val_fraction, np.random.default_rng(seed))
    params = {
        "seed": seed,
        "key": key,
        "values": list(held),
        "val_fraction": val_fraction,
        "n_obs": len(labels),
    }
    return Split("category", train=train, val=val, test=np.flatnonzero(is_test), params=params)


@SPLITTERS.register("perturbation")
def holdout_perturbation_split(
    obs: pd.DataFrame,
    perturbation_key: str,
    perturbations: str | Sequence[str] | None = None,
    *,
    n_holdout: int | float | None = None,
    control: str = "control",
    delimiter: str = "+",
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Hold out single perturbations: every cell whose condition contains one of them goes to test.

    Parameters
    ----------
    obs
        ``adata.obs`` (or the AnnData itself).
    perturbation_key
        ``obs`` column of conditions (``control``, ``KLF1``, ``SET+KLF1``).
    perturbations
        Single perturbations to hold out; ``None`` draws ``n_holdout`` of them at random with ``seed``.
    n_holdout
        Number (int) or fraction (float in (0, 1)) of the singles to draw when ``perturbations`` is None.
    control
        Label of control cells (always in train).
    delimiter
        Separator of combination labels.
    val_fraction
        Fraction of the non-test, non-control cells used for validation.
    seed
        Seed of the draws.

    Returns
    -------
    A :class:`Split` named ``"perturbation"``; ``params['held_out']`` lists the held-out singles.
    """
    frame = _obs_frame(obs)
    labels = _labels(frame, perturbation_key, "perturbation_key")
    val_fraction, seed = _common(val_fraction, seed)
    uniq, inv, parts = _parts_of(labels, control, delimiter, perturbation_key)
    singles = sorted({p for ps in parts for p in ps})
    if not singles:
        raise InvalidInputError(f"obs[{perturbation_key!r}] has no perturbed cells (only {control!r}).")
    rng = np.random.default_rng(seed)
    if perturbations is not None:
        if n_holdout is not None:
            raise InvalidInputError("pass either perturbations=... or n_holdout=..., not both.")
        held = _values_tuple(perturbations, "perturbations")
        unknown = [p for p in held if p not in singles]
        if unknown:
            shown = ", ".join(repr(s) for s in singles[:30])
            raise InvalidInputError(
                f"perturbations {unknown} not found in obs[{perturbation_key!r}]; available single "
                f"perturbations: {shown}."
            )
    else:
        if n_holdout is None:
            raise InvalidInputError("pass perturbations=[...] to hold out, or n_holdout=k to draw k singles at random.")
        k = _count(n_holdout, len(singles), "n_holdout")
        if k >= len(singles):
            raise InvalidInputError(
                f"n_holdout={n_holdout!r} would hold out {k} of the {len(singles)} single perturbations; "
                "leave at least one for training."
            )
        held = tuple(sorted(rng.choice(np.array(singles, dtype=object), size=k, replace=False).tolist()))
    held_set = set(held)
    test_label = np.array([bool(held_set.intersection(ps)) for ps in parts])
    control_label = np.array([ps == () for ps in parts])
    is_test = test_label[inv]
    is_control = control_label[inv]
    train_val, val = _carve_val(np.flatnonzero(~is_test & ~is_control), val_fraction, rng)
    train = np.union1d(train_val, np.flatnonzero(is_control))
    params = {
        "seed": seed,
        "perturbation_key": perturbation_key,
        "held_out": list(held),
        "control": control,
        "delimiter": delimiter,
        "val_fraction": val_fraction,
        "n_obs": len(labels),
    }
    return Split("perturbation", train=train, val=val, test=np.flatnonzero(is_test), params=params)


@SPLITTERS.register("combination")
def combination_split(
    obs: pd.DataFrame,
    perturbation_key: str,
    *,
    seen: Literal[0, 1, 2],
    n_holdout: int | float | None = None,
    control: str = "control",
    delimiter: str = "+",
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Hold out double perturbations of which ``seen`` (0, 1 or 2) constituent singles are trained on.

    Only doubles whose two singles are both present in the data as single-perturbation cells
    qualify. Held-out doubles go to test. With ``seen=2`` both singles stay in train. With ``seen=1``
    one single of each held-out double (chosen with ``seed``) is removed, with ``seen=0`` both are:
    every cell whose condition contains a removed single (the single itself or another combination
    with it) is removed from train and validation and is *not* put in test, so test metrics cover
    the held-out doubles only. Those cells are listed in ``params['excluded']`` and the removed singles
    in ``params['removed_singles']`` (evaluate them separately as unseen singles if you like).
    Doubles are drawn in a seeded random order and kept when they are consistent with the doubles
    already held out (a single kept for one double is never removed for another).

    Parameters
    ----------
    obs
        ``adata.obs`` (or the AnnData itself).
    perturbation_key
        ``obs`` column of conditions.
    seen
        How many singles of each held-out double stay in train: 0, 1 or 2.
    n_holdout
        Number (int) or fraction (float in (0, 1)) of the qualifying doubles to hold out; ``None``
        holds out as many as possible.
    control
        Label of control cells (always in train).
    delimiter
        Separator of combination labels.
    val_fraction
        Fraction of the remaining non-control cells used for validation.
    seed
        Seed of the draws.

    Returns
    -------
    A :class:`Split` named ``"combination"``; ``params`` holds ``held_out`` (doubles), ``removed_singles``,
    ``excluded`` (row indices) and ``qualifying`` (all doubles that could be held out).

    Raises
    ------
    InvalidInputError
        If no double qualifies, or fewer than ``n_holdout`` can be held out consistently.
    """
    if isinstance(seen, bool) or seen not in (0, 1, 2):
        raise InvalidInputError(f"seen={seen!r} is not allowed; expected 0, 1 or 2.")
    frame = _obs_frame(obs)
    labels = _labels(frame, perturbation_key, "perturbation_key")
    val_fraction, seed = _common(val_fraction, seed)
    uniq, inv, parts = _parts_of(labels, control, delimiter, perturbation_key)
    single_labels = {ps[0] for ps in parts if len(ps) == 1}
    doubles = [(str(lab), ps) for lab, ps in zip(uniq.tolist(), parts, strict=True) if len(ps) == 2]
    qualifying = [(lab, ps) for lab, ps in doubles if ps[0] in single_labels and ps[1] in single_labels]
    if not qualifying:
        shown = ", ".join(repr(lab) for lab, _ in doubles[:10]) or "none"
        raise InvalidInputError(
            f"no double perturbation in obs[{perturbation_key!r}] has both of its singles present as "
            "single-perturbation "
            f"cells, so none can be held out with seen={seen}; doubles found: {shown}."
        )
    rng = np.random.default_rng(seed)
    target = len(qualifying) if n_holdout is None else _count(n_holdout, len(qualifying), "n_holdout")
    if target > len(qualifying):
        raise InvalidInputError(
            f"n_holdout={n_holdout!r} exceeds the {len(qualifying)} qualifying doubles "
            f"({', '.join(lab for lab, _ in qualifying)})."
        )
    held: list[str] = []
    removed: set[str] = set()
    protected: set[str] = set()
    for i in rng.permutation(len(qualifying)):
        if len(held) == target:
            break
        label, (a, b) = qualifying[int(i)]
        if seen == 2:
            if a in removed or b in removed:
                continue
            protected.update((a, b))
        elif seen == 0:
            if a in protected or b in protected:
                continue
            removed.update((a, b))
        else:
            options = [(a, b), (b, a)] if rng.random() < 0.5 else [(b, a), (a, b)]
            choice = next(
                ((keep, drop) for keep, drop in options if keep not in removed and drop not in protected),
                None,
            )
            if choice is None:
                continue
            protected.add(choice[0])
            removed.add(choice[1])
        held.append(label)
    if n_holdout is not None and len(held) < target:
        raise InvalidInputError(
            f"only {len(held)} of the requested {target} doubles can be held out consistently with "
            f"seen={seen}; "
            "lower n_holdout."
        )
    held_set = set(held)
    test_label = np.array([lab in held_set for lab in uniq.tolist()])
    excluded_label = np.array([bool(removed.intersection(ps)) for ps in parts]) & ~test_label
    control_label = np.array([ps == () for ps in parts])
    is_test, is_excluded, is_control = test_label[inv], excluded_label[inv], control_label[inv]
    train_val, val = _carve_val(np.flatnonzero(~is_test & ~is_excluded & ~is_control), val_fraction, rng)
    train = np.union1d(train_val, np.flatnonzero(is_control))
    params = {
        "seed": seed,
        "perturbation_key": perturbation_key,
        "seen": int(seen),
        "held_out": sorted(held),
        "removed_singles": sorted(removed),
        "excluded": np.flatnonzero(is_excluded).tolist(),
        "qualifying": [lab for lab, _ in qualifying],
        "control": control,
        "delimiter": delimiter,
        "val_fraction": val_fraction,
        "n_obs": len(labels),
    }
    return Split("combination", train=train, val=val, test=np.flatnonzero(is_test), params=params)


@SPLITTERS.register("context")
def context_split(
    obs: pd.DataFrame,
    perturbation_key: str,
    context_key: str,
    holdouts: Sequence[tuple[str, str]],
    *,
    control: str = "control",
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Hold out perturbation ``P`` in context ``C`` (a cell line, a donor) for each pair in ``holdouts``.

    Test holds the cells whose condition is exactly ``P`` and whose context is ``C``. ``P`` stays in
    train in the other contexts and the control cells of ``C`` stay in train, so the task is to
    transfer the response of ``P`` to context ``C``.

    Parameters
    ----------
    obs
        ``adata.obs`` (or the AnnData itself).
    perturbation_key
        ``obs`` column of conditions.
    context_key
        ``obs`` column of contexts (e.g. ``cell_type``).
    holdouts
        ``(perturbation, context)`` pairs.
    control
        Label of control cells (always in train; cannot be held out).
    val_fraction
        Fraction of the remaining non-control cells used for validation.
    seed
        Seed of the validation draw.

    Returns
    -------
    A :class:`Split` named ``"context"``; ``params['only_in_holdout_context']`` lists held-out
    perturbations that no training context has.

    Raises
    ------
    InvalidInputError
        For a malformed pair, an unknown perturbation or context, or a pair without cells.
    """
    frame = _obs_frame(obs)
    labels = _labels(frame, perturbation_key, "perturbation_key")
    contexts = _labels(frame, context_key, "context_key")
    val_fraction, seed = _common(val_fraction, seed)
    if isinstance(holdouts, (str, bytes)) or not isinstance(holdouts, Sequence) or len(holdouts) == 0:
        raise InvalidInputError(
            f"holdouts={holdouts!r} must be a non-empty sequence of (perturbation, context) pairs, "
            "e.g. [('MAPK1', 'U87MG')]."
        )
    present_p, present_c = set(labels.tolist()), set(contexts.tolist())
    is_test = np.zeros(len(labels), dtype=bool)
    pairs: list[list[str]] = []
    for pair in holdouts:
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InvalidInputError(f"holdouts item {pair!r} must be a (perturbation, context) pair.")
        p, c = str(pair[0]), str(pair[1])
        if p == control:
            raise InvalidInputError(f"holdouts item {pair!r}: control cells cannot be held out; they stay in train.")
        if p not in present_p:
            raise InvalidInputError(
                f"perturbation {p!r} not found in obs[{perturbation_key!r}]; available: {_available(labels)}."
            )
        if c not in present_c:
            raise InvalidInputError(
                f"context {c!r} not found in obs[{context_key!r}]; available: {_available(contexts)}."
            )
        cells = (labels == p) & (contexts == c)
        if not cells.any():
            in_ctx = sorted(set(contexts[labels == p].tolist()))
            raise InvalidInputError(
                f"no cells have perturbation {p!r} in context {c!r}; {p!r} occurs in contexts {in_ctx}."
            )
        is_test |= cells
        pairs.append([p, c])
    is_control = labels == control
    pool = np.flatnonzero(~is_test & ~is_control)
    train_val, val = _carve_val(pool, val_fraction, np.random.default_rng(seed))
    train = np.union1d(train_val, np.flatnonzero(is_control))
    trained = set(labels[~is_test].tolist())
    params = {
        "seed": seed,
        "perturbation_key": perturbation_key,
        "context_key": context_key,
        "holdouts": pairs,
        "only_in_holdout_context": sorted({p for p, _ in pairs if p not in trained}),
        "control": control,
        "val_fraction": val_fraction,
        "n_obs": len(labels),
    }
    return Split("context", train=train, val=val, test=np.flatnonzero(is_test), params=params)
