"""Which AnnData fields a model uses (:class:`DataSpec`) and their saved category maps (`DataRegistry`).

This is the genailab equivalent of scvi-tools' ``setup_anndata``: :func:`setup_anndata` checks that
every key named in the spec exists and is clean, and records the categories of each categorical key
(as sorted strings, so codes are deterministic), the single perturbations found in the perturbation
key, and the mean and standard deviation of each continuous covariate. The registry is saved beside a
model and used to encode new data exactly as the training data were encoded: labels never seen at
registration are never silently mapped to a known code.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from genailab.config import Config
from genailab.data.labels import label_strings, most_frequent, obs_column, obs_labels, parse_dose, split_label
from genailab.errors import InvalidInputError, MissingKeyError, UnknownLabelError
from genailab.io import atomic_write_json

__all__ = [
    "DataRegistry",
    "DataSpec",
    "label_strings",
    "obs_column",
    "obs_labels",
    "parse_dose",
    "setup_anndata",
    "split_label",
]

_SINGLE_KEY_FIELDS = ("cell_type_key", "tissue_key", "disease_key", "batch_key", "perturbation_key")


@dataclasses.dataclass(frozen=True)
class DataSpec(Config):
    """Which AnnData fields hold counts, labels, perturbations and covariates.

    Parameters
    ----------
    layer
        Layer with raw counts; ``None`` for ``adata.X``.
    cell_type_key, tissue_key, disease_key, batch_key
        ``obs`` columns of categorical labels (``None`` when absent).
    perturbation_key
        ``obs`` column naming the perturbation of each cell (e.g. ``control``, ``KLF1``, ``SET+KLF1``).
    control_value
        Label of unperturbed cells in ``perturbation_key``.
    combination_delimiter
        Separator of the single perturbations in a combination label.
    dose_key
        ``obs`` column of doses (``"1"`` or ``"1+1"`` for a combination); parsed by
        :meth:`DataRegistry.parse_dose`.
    categorical_covariate_keys, continuous_covariate_keys
        Further ``obs`` columns used as categorical / continuous covariates.
    """

    layer: str | None = None
    cell_type_key: str | None = None
    tissue_key: str | None = None
    disease_key: str | None = None
    batch_key: str | None = None
    perturbation_key: str | None = None
    control_value: str = "control"
    combination_delimiter: str = "+"
    dose_key: str | None = None
    categorical_covariate_keys: tuple[str, ...] = ()
    continuous_covariate_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("layer", *_SINGLE_KEY_FIELDS, "dose_key"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidInputError(f"DataSpec.{name}={value!r} must be a non-empty string or None.")
        for name in ("categorical_covariate_keys", "continuous_covariate_keys"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (tuple, list)):
                raise InvalidInputError(
                    f"DataSpec.{name}={value!r} must be a tuple of obs column names, e.g. ('donor',)."
                )
            for item in value:
                if not isinstance(item, str) or not item:
                    raise InvalidInputError(f"DataSpec.{name} contains {item!r}; expected non-empty strings.")
            object.__setattr__(self, name, tuple(value))
        for name in ("control_value", "combination_delimiter"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidInputError(f"DataSpec.{name}={value!r} must be a non-empty string.")
        if self.combination_delimiter in self.control_value:
            raise InvalidInputError(
                f"DataSpec.control_value={self.control_value!r} contains the combination_delimiter "
                f"{self.combination_delimiter!r}, so control labels would be split into several "
                "perturbations; choose another delimiter or control label."
            )
        seen: dict[str, str] = {}
        for field_name, key in self._all_keys():
            if key in seen:
                raise InvalidInputError(
                    f"obs column {key!r} is listed twice in DataSpec ({seen[key]} and {field_name}); "
                    "each obs column may play one role only."
                )
            seen[key] = field_name

    def _all_keys(self) -> list[tuple[str, str]]:
        out = [(name, getattr(self, name)) for name in _SINGLE_KEY_FIELDS if getattr(self, name) is not None]
        if self.dose_key is not None:
            out.append(("dose_key", self.dose_key))
        out += [("categorical_covariate_keys", k) for k in self.categorical_covariate_keys]
        out += [("continuous_covariate_keys", k) for k in self.continuous_covariate_keys]
        return out

    def categorical_keys(self) -> tuple[str, ...]:
        """Categorical ``obs`` keys in order: cell type, tissue, disease, batch, perturbation, covariates."""
        fixed = tuple(getattr(self, name) for name in _SINGLE_KEY_FIELDS if getattr(self, name) is not None)
        return fixed + self.categorical_covariate_keys

    def continuous_keys(self) -> tuple[str, ...]:
        """Continuous ``obs`` keys in encoding order."""
        return self.continuous_covariate_keys


@dataclasses.dataclass(frozen=True)
class DataRegistry:
    """The saved category maps and covariate statistics of a registered AnnData.

    Build it with :meth:`from_adata` or :func:`setup_anndata`; save it beside a model with
    :meth:`save` and use it to encode new data with :meth:`encode_categorical` and
    :meth:`encode_continuous`.

    Attributes
    ----------
    spec
        The :class:`DataSpec`.
    categories
        For each categorical key, its labels as sorted strings; a label's code is its position.
    perturbations
        Sorted unique single perturbations (combinations split on the delimiter, control excluded).
    continuous_means, continuous_stds
        Mean and standard deviation of each continuous key (a zero std is stored as 1).
    """

    spec: DataSpec
    categories: Mapping[str, tuple[str, ...]]
    perturbations: tuple[str, ...] = ()
    continuous_means: Mapping[str, float] = dataclasses.field(default_factory=dict)
    continuous_stds: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.spec, DataSpec):
            raise InvalidInputError(f"spec must be a DataSpec, got {type(self.spec).__name__}.")
        missing = [k for k in self.spec.categorical_keys() if k not in self.categories]
        if missing:
            raise InvalidInputError(f"DataRegistry: categories missing for categorical keys {missing}.")
        for key, cats in self.categories.items():
            if len(cats) == 0 or len(set(cats)) != len(cats):
                raise InvalidInputError(f"DataRegistry: categories of {key!r} must be non-empty and unique.")
        missing_c = [
            k for k in self.spec.continuous_keys() if k not in self.continuous_means or k not in self.continuous_stds
        ]
        if missing_c:
            raise InvalidInputError(f"DataRegistry: mean/std missing for continuous keys {missing_c}.")
        object.__setattr__(self, "categories", {k: tuple(v) for k, v in self.categories.items()})
        object.__setattr__(self, "perturbations", tuple(self.perturbations))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_adata(cls, adata: AnnData, spec: DataSpec) -> DataRegistry:
        """Check ``adata`` against ``spec`` and record its categories and covariate statistics.

        Parameters
        ----------
        adata
            In-memory or backed AnnData (only ``obs`` is read).
        spec
            The fields to register.

        Returns
        -------
        The registry.

        Raises
        ------
        MissingKeyError
            If a key is not an ``obs`` column (the message lists the available columns).
        InvalidInputError
            For missing (NaN) labels, a key without any label, a non-numeric or non-finite continuous
            covariate, a control value absent from the perturbation key, a malformed combination label
            or an unparsable dose.
        """
        if not isinstance(spec, DataSpec):
            raise InvalidInputError(f"spec must be a DataSpec, got {type(spec).__name__}.")
        if not isinstance(adata, AnnData):
            raise InvalidInputError(f"adata must be an anndata.AnnData, got {type(adata).__name__}.")
        categories: dict[str, tuple[str, ...]] = {}
        labels_by_key: dict[str, np.ndarray] = {}
        for key in spec.categorical_keys():
            series = obs_column(adata, key, "categorical key")
            labels, isna = label_strings(series)
            if isna.any():
                raise InvalidInputError(
                    f"obs[{key!r}] has {int(isna.sum())} of {len(isna)} cells with a missing (NaN) label; "
                    "fill them (e.g. adata.obs[key] = adata.obs[key].cat.add_categories('unknown')"
                    ".fillna('unknown')) or drop those cells."
                )
            cats = tuple(sorted(set(labels.tolist())))
            if not cats:
                raise InvalidInputError(f"obs[{key!r}] has no labels (adata has no cells); cannot register it.")
            categories[key] = cats
            labels_by_key[key] = labels
        perturbations: tuple[str, ...] = ()
        if spec.perturbation_key is not None:
            labels = labels_by_key[spec.perturbation_key]
            if spec.control_value not in categories[spec.perturbation_key]:
                raise InvalidInputError(
                    f"control value {spec.control_value!r} not found in obs[{spec.perturbation_key!r}]; "
                    f"most frequent values: {most_frequent(labels)}. Pass control_value=... naming the "
                    "label of unperturbed cells."
                )
            perturbations = _agents(categories[spec.perturbation_key], spec)
        if spec.dose_key is not None:
            _check_doses(adata, spec.dose_key, spec.combination_delimiter)
        means: dict[str, float] = {}
        stds: dict[str, float] = {}
        for key in spec.continuous_keys():
            values = _continuous(adata, key)
            if values.size == 0:
                raise InvalidInputError(f"obs[{key!r}] is empty (adata has no cells); cannot register it.")
            means[key] = float(values.mean())
            std = float(values.std())
            stds[key] = std if std > 0 else 1.0
        return cls(
            spec=spec,
            categories=categories,
            perturbations=perturbations,
            continuous_means=means,
            continuous_stds=stds,
        )

    # ------------------------------------------------------------------ encoding
    def categorical_keys(self) -> tuple[str, ...]:
        """Categorical keys in column order of :meth:`encode_categorical`."""
        return self.spec.categorical_keys()

    def continuous_keys(self) -> tuple[str, ...]:
        """Continuous keys in column order of :meth:`encode_continuous`."""
        return self.spec.continuous_keys()

    def n_categories(self, key: str) -> int:
        """Number of categories of a registered categorical key."""
        return len(self._cats(key))

    def key_index(self, key: str) -> int:
        """Column of ``key`` in the matrix returned by :meth:`encode_categorical`."""
        self._cats(key)
        return self.categorical_keys().index(key)

    def _cats(self, key: str) -> tuple[str, ...]:
        if key not in self.categories:
            raise MissingKeyError(
                f"key={key!r} is not a registered categorical key; registered keys: {list(self.categorical_keys())}."
            )
        return self.categories[key]

    def encode_categorical(self, adata: AnnData, unknown: Literal["error", "unknown"] = "error") -> np.ndarray:
        """Integer codes of the categorical keys, ``(n_obs, K)`` int64, in :meth:`categorical_keys` order.

        Parameters
        ----------
        adata
            AnnData with the registered ``obs`` columns.
        unknown
            What to do with labels not seen at registration (and missing labels): ``"error"`` raises;
            ``"unknown"`` gives them code ``-1``. genailab never maps an unseen label to a known code;
            a model decides what ``-1`` means (e.g. a learned "unknown" embedding or the null condition).

        Returns
        -------
        ``(n_obs, K)`` int64 codes (``K`` may be 0).

        Raises
        ------
        UnknownLabelError
            With ``unknown="error"``, for labels unseen at registration (lists up to 10 of them, the key
            and the known labels).
        MissingKeyError
            If a registered key is not an ``obs`` column.
        """
        if unknown not in ("error", "unknown"):
            raise InvalidInputError(f"unknown={unknown!r} is not allowed; expected 'error' or 'unknown'.")
        if not isinstance(adata, AnnData):
            raise InvalidInputError(f"adata must be an anndata.AnnData, got {type(adata).__name__}.")
        keys = self.categorical_keys()
        out = np.empty((adata.n_obs, len(keys)), dtype=np.int64)
        for j, key in enumerate(keys):
            out[:, j] = _encode_column(
                obs_column(adata, key, "registered categorical key"), key, self.categories[key], unknown
            )
        return out

    def encode_continuous(self, adata: AnnData) -> np.ndarray:
        """Continuous covariates standardised with the stored mean/std, shape ``(n_obs, C)`` float32.

        Raises
        ------
        MissingKeyError
            If a registered key is not an ``obs`` column.
        InvalidInputError
            If a column is not numeric or not finite.
        """
        if not isinstance(adata, AnnData):
            raise InvalidInputError(f"adata must be an anndata.AnnData, got {type(adata).__name__}.")
        keys = self.continuous_keys()
        out = np.empty((adata.n_obs, len(keys)), dtype=np.float32)
        for j, key in enumerate(keys):
            values = _continuous(adata, key)
            out[:, j] = (values - self.continuous_means[key]) / self.continuous_stds[key]
        return out

    def decode(self, key: str, codes: Any) -> np.ndarray:
        """Labels of ``codes`` for ``key`` (object array; code ``-1`` decodes to ``None``).

        Raises
        ------
        InvalidInputError
            For a code outside ``[-1, n_categories)``.
        """
        cats = self._cats(key)
        arr = np.asarray(codes)
        if arr.size and arr.dtype.kind not in "iu":
            raise InvalidInputError(f"codes must be integers, got dtype {arr.dtype}.")
        arr = arr.astype(np.int64)
        if arr.size and (arr.min() < -1 or arr.max() >= len(cats)):
            raise InvalidInputError(
                f"codes for {key!r} must be in [-1, {len(cats)}); got values from {arr.min()} to {arr.max()}."
            )
        lut = np.array([*cats, None], dtype=object)
        return lut[np.where(arr >= 0, arr, len(cats))]

    # ------------------------------------------------------------------ perturbations
    def split_combination(self, label: str) -> tuple[str, ...]:
        """Single perturbations of a label (``'SET+KLF1'`` -> ``('SET', 'KLF1')``; control -> ``()``).

        Parts equal to the control value are dropped (``'KLF1+ctrl'`` -> ``('KLF1',)``).
        """
        return split_label(
            label, self.spec.control_value, self.spec.combination_delimiter, key=self.spec.perturbation_key
        )

    def parse_dose(self, value: Any) -> tuple[float, ...]:
        """Doses of a dose label (``'1+1'`` -> ``(1.0, 1.0)``; ``0.5`` -> ``(0.5,)``)."""
        return parse_dose(value, self.spec.combination_delimiter, key=self.spec.dose_key)

    # ------------------------------------------------------------------ persistence
    def with_categories(self, key: str, labels: Sequence[str]) -> DataRegistry:
        """A copy with ``labels`` appended to the categories of ``key`` (existing codes unchanged).

        This is how a pretrained model learns a new condition value (a new donor, disease or cell
        line): the new labels get the next codes and the model extends its embedding table to match.
        Labels already registered are skipped.

        Raises
        ------
        MissingKeyError
            If ``key`` is not a registered categorical key.
        InvalidInputError
            If ``labels`` is empty.
        """
        cats = self._cats(key)
        new = [str(v) for v in dict.fromkeys(str(v) for v in labels) if str(v) not in set(cats)]
        if not list(labels):
            raise InvalidInputError(f"with_categories({key!r}, labels=[]): give at least one label to add.")
        return dataclasses.replace(self, categories={**self.categories, key: (*cats, *new)})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data, including the spec."""
        return {
            "class": "DataRegistry",
            "spec": self.spec.to_dict(),
            "categories": {k: list(v) for k, v in self.categories.items()},
            "perturbations": list(self.perturbations),
            "continuous": {
                k: {"mean": self.continuous_means[k], "std": self.continuous_stds[k]} for k in self.continuous_keys()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataRegistry:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, Mapping) or "spec" not in data or "categories" not in data:
            raise InvalidInputError("DataRegistry.from_dict: expected a mapping with 'spec' and 'categories'.")
        cont = data.get("continuous", {})
        try:
            return cls(
                spec=DataSpec.from_dict(data["spec"]),
                categories={str(k): tuple(str(c) for c in v) for k, v in data["categories"].items()},
                perturbations=tuple(str(p) for p in data.get("perturbations", ())),
                continuous_means={k: float(v["mean"]) for k, v in cont.items()},
                continuous_stds={k: float(v["std"]) for k, v in cont.items()},
            )
        except (TypeError, KeyError, AttributeError, ValueError) as err:
            if isinstance(err, InvalidInputError):
                raise
            raise InvalidInputError(f"DataRegistry.from_dict: malformed data ({type(err).__name__}: {err}).") from err

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Atomically write the registry as JSON."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DataRegistry:
        """Read a registry written by :meth:`save`."""
        p = Path(path)
        if not p.is_file():
            raise InvalidInputError(f"path={str(path)!r} does not exist or is not a file; expected a registry JSON.")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InvalidInputError(f"path={str(path)!r} is not valid JSON: {err}") from err
        return cls.from_dict(data)


def setup_anndata(adata: AnnData, spec: DataSpec | None = None, **spec_fields: Any) -> DataRegistry:
    """Register ``adata`` for a model: check the fields named by the spec and record their categories.

    Parameters
    ----------
    adata
        In-memory or backed AnnData; it is not modified.
    spec
        A :class:`DataSpec`; ``None`` builds one from ``spec_fields``.
    **spec_fields
        :class:`DataSpec` fields (``cell_type_key="bulk_labels"``, ...); with ``spec`` they override it.

    Returns
    -------
    The :class:`DataRegistry`.

    Raises
    ------
    InvalidInputError
        For an unknown spec field or a spec/obs problem (see :meth:`DataRegistry.from_adata`).

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata
    >>> adata = anndata.AnnData(np.ones((3, 2)), obs=pd.DataFrame({"ct": ["b", "a", "b"]}, index=list("xyz")))
    >>> reg = setup_anndata(adata, cell_type_key="ct")
    >>> reg.categories["ct"], reg.encode_categorical(adata)[:, 0].tolist()
    (('a', 'b'), [1, 0, 1])
    """
    valid = {f.name for f in dataclasses.fields(DataSpec)}
    unknown = sorted(set(spec_fields) - valid)
    if unknown:
        raise InvalidInputError(
            f"setup_anndata: unknown DataSpec field(s) {unknown}; valid fields are {sorted(valid)}."
        )
    if spec is None:
        spec = DataSpec(**spec_fields)
    elif not isinstance(spec, DataSpec):
        raise InvalidInputError(f"spec must be a DataSpec or None, got {type(spec).__name__}.")
    elif spec_fields:
        spec = spec.replace(**spec_fields)
    return DataRegistry.from_adata(adata, spec)


def _encode_column(series: pd.Series, key: str, categories: Sequence[str], unknown: str) -> np.ndarray:
    """Codes of one label column against its registered ``categories`` (-1 for unseen or missing labels)."""
    known = pd.Index(categories)
    if isinstance(series.dtype, pd.CategoricalDtype):
        lut = known.get_indexer([str(c) for c in series.cat.categories])
        raw = series.cat.codes.to_numpy().astype(np.int64)
        codes = np.where(raw >= 0, lut[np.maximum(raw, 0)] if lut.size else -1, -1)
    else:
        labels, isna = label_strings(series)
        codes = known.get_indexer(labels).astype(np.int64)
        codes[isna] = -1
    isna = series.isna().to_numpy()
    bad = codes < 0
    if bad.any() and unknown == "error":
        if isna.any():
            raise UnknownLabelError(
                f"obs[{key!r}] has {int(isna.sum())} cells with a missing (NaN) label; fill or drop "
                "them, or pass unknown='unknown' to encode them as -1."
            )
        labels, _ = label_strings(series[bad])
        unseen = sorted(set(labels.tolist()))
        shown = ", ".join(repr(u) for u in unseen[:10])
        more = f" (and {len(unseen) - 10} more)" if len(unseen) > 10 else ""
        known_list = list(categories)
        known_str = ", ".join(repr(k) for k in known_list[:30]) + (" ..." if len(known_list) > 30 else "")
        raise UnknownLabelError(
            f"obs[{key!r}] has {len(unseen)} label(s) not seen at registration: {shown}{more} "
            f"({int(bad.sum())} cells). Known labels: {known_str}. Register the data again, drop "
            "those cells, or pass unknown='unknown' to encode them as -1."
        )
    return codes


def _agents(labels: Sequence[str], spec: DataSpec) -> tuple[str, ...]:
    """Sorted unique single perturbations of the perturbation labels (combinations split, control excluded)."""
    singles: set[str] = set()
    for label in labels:
        singles.update(split_label(label, spec.control_value, spec.combination_delimiter, key=spec.perturbation_key))
    return tuple(sorted(singles))


def _check_doses(adata: AnnData, dose_key: str, delimiter: str) -> None:
    """Refuse missing or unparsable doses in ``obs[dose_key]``."""
    dose_labels, isna = label_strings(obs_column(adata, dose_key, "dose_key"))
    if isna.any():
        raise InvalidInputError(
            f"obs[{dose_key!r}] has {int(isna.sum())} cells with a missing (NaN) dose; fill or drop them."
        )
    for value in set(dose_labels.tolist()):
        parse_dose(value, delimiter, key=dose_key)


def _continuous(adata: AnnData, key: str) -> np.ndarray:
    series = obs_column(adata, key, "continuous key")
    if (
        isinstance(series.dtype, pd.CategoricalDtype)
        or not pd.api.types.is_numeric_dtype(series.dtype)
        or (pd.api.types.is_bool_dtype(series.dtype))
    ):
        raise InvalidInputError(
            f"obs[{key!r}] has dtype {series.dtype}; a continuous covariate must be numeric. "
            "Register it as a categorical covariate instead, or convert it with pd.to_numeric."
        )
    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        raise InvalidInputError(
            f"obs[{key!r}] has {int(bad.sum())} of {len(values)} cells with NaN or infinite values; fill or drop them."
        )
    return values
