"""Property tests: malformed inputs either work or raise a documented genailab error, never anything else."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genailab.data import (
    CountsDataset,
    align_genes,
    recover_counts,
    setup_anndata,
    validate_counts,
)
from genailab.errors import GenailabError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LABELS = st.sampled_from(["control", "ctrl", "A", "B", "A+B", "B+", "", "T cell", "1"])
CORRUPTIONS = st.sampled_from(["none", "nan", "inf", "negative", "fraction", "huge"])


def _matrix(draw, n_obs: int, n_vars: int) -> object:
    kind = draw(st.sampled_from(["float", "int", "csr", "csc", "object", "bool"]))
    values = np.asarray(
        draw(st.lists(st.integers(0, 20), min_size=n_obs * n_vars, max_size=n_obs * n_vars)), dtype=np.float64
    ).reshape(n_obs, n_vars)
    if n_obs and n_vars:
        corruption = draw(CORRUPTIONS)
        i, j = draw(st.integers(0, n_obs - 1)), draw(st.integers(0, n_vars - 1))
        values[i, j] = {
            "none": values[i, j],
            "nan": np.nan,
            "inf": np.inf,
            "negative": -3.0,
            "fraction": 0.5,
            "huge": 1e30,
        }[corruption]
    if kind == "int":
        return np.clip(np.nan_to_num(values, nan=0, posinf=0, neginf=0), -5, 1e6).astype(np.int64)
    if kind == "csr":
        return sp.csr_matrix(values)
    if kind == "csc":
        return sp.csc_matrix(values)
    if kind == "object":
        return values.astype(object)
    if kind == "bool":
        return values > 1
    return values.astype(np.float32)


def _obs(draw, n_obs: int) -> pd.DataFrame:
    cols = {}
    for name in draw(st.lists(st.sampled_from(["ct", "batch", "cond", "age", "dose"]), unique=True)):
        if name == "age":
            ages = draw(
                st.lists(
                    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just("x")),
                    min_size=n_obs,
                    max_size=n_obs,
                )
            )
            cols[name] = pd.array(ages, dtype=object) if any(isinstance(a, str) for a in ages) else ages
        elif name == "dose":
            cols[name] = draw(st.lists(st.sampled_from(["1", "1+1", "x", "0.5"]), min_size=n_obs, max_size=n_obs))
        else:
            labels = draw(st.lists(st.one_of(LABELS, st.none()), min_size=n_obs, max_size=n_obs))
            cols[name] = pd.Categorical(labels) if draw(st.booleans()) else labels
    return pd.DataFrame(cols, index=[f"c{i}" for i in range(n_obs)])


class Case:
    """An AnnData with a readable repr (anndata's own repr fails on a smuggled wrong-shaped layer)."""

    def __init__(self, adata: ad.AnnData, note: str) -> None:
        self.adata, self.note = adata, note

    def __repr__(self) -> str:
        x = self.adata.X
        dtype = getattr(x, "dtype", None)
        return f"Case({self.note}, X={type(x).__name__} {dtype}, obs={list(self.adata.obs.columns)})"


@st.composite
def malformed_adata(draw) -> Case:
    n_obs, n_vars = draw(st.integers(0, 6)), draw(st.integers(0, 5))
    adata = ad.AnnData(
        X=_matrix(draw, n_obs, n_vars),
        obs=_obs(draw, n_obs),
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_vars)]),
    )
    note = f"shape={adata.shape}"
    if draw(st.booleans()):
        shape = (n_obs, n_vars) if draw(st.booleans()) else (n_obs + 1, max(n_vars - 1, 0))
        layer = np.ones(shape, dtype=np.float32)
        if shape == adata.shape:
            adata.layers["counts"] = layer
        else:  # anndata refuses a wrong shape on assignment: smuggle it in to test our own checks
            adata._layers["counts"] = layer
        note += f", layer counts {shape}"
    return Case(adata, note)


SPEC_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "cell_type_key": st.sampled_from(["ct", "missing", ""]),
        "batch_key": st.sampled_from(["batch", "ct"]),
        "perturbation_key": st.sampled_from(["cond", "ct"]),
        "control_value": st.sampled_from(["control", "ctrl", "ct+rl", ""]),
        "combination_delimiter": st.sampled_from(["+", "_", ""]),
        "dose_key": st.sampled_from(["dose", "age"]),
        "continuous_covariate_keys": st.sampled_from([(), ("age",), ("ct",), ("age", "age")]),
        "layer": st.sampled_from(["counts", "nope"]),
    },
)


def _only_documented_errors(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except GenailabError:
        return None


@SETTINGS
@given(adata=malformed_adata(), layer=st.sampled_from([None, "counts", "missing"]), chunk=st.integers(1, 4))
def test_validate_counts_fuzz(adata, layer, chunk):
    summary = _only_documented_errors(validate_counts, adata.adata, layer=layer, chunk_size=chunk)
    if summary is not None:
        assert summary.n_obs > 0
        assert summary.n_vars > 0
        assert summary.max >= 0


@SETTINGS
@given(
    adata=malformed_adata(),
    fields=SPEC_FIELDS,
    other=malformed_adata(),
    unknown=st.sampled_from(["error", "unknown"]),
)
def test_setup_and_encode_fuzz(adata, fields, other, unknown):
    adata, other = adata.adata, other.adata
    registry = _only_documented_errors(setup_anndata, adata, **fields)
    if registry is None:
        return
    codes = registry.encode_categorical(adata)
    assert codes.shape == (adata.n_obs, len(registry.categorical_keys()))
    assert (codes >= 0).all()
    for target in (adata, other):
        got = _only_documented_errors(registry.encode_categorical, target, unknown=unknown)
        if got is not None:
            assert got.dtype == np.int64
            assert got.min(initial=0) >= -1
            if unknown == "error":
                assert got.min(initial=0) >= 0
        _only_documented_errors(registry.encode_continuous, target)
        _only_documented_errors(CountsDataset, target, registry, unknown=unknown)


@SETTINGS
@given(adata=malformed_adata(), method=st.sampled_from(["library_size", "min_nonzero"]))
def test_recover_counts_fuzz(adata, method):
    _only_documented_errors(recover_counts, adata.adata, source="X", method=method, library_key="age")
    _only_documented_errors(recover_counts, adata.adata, source="counts", method=method, library_key="age")


@SETTINGS
@given(
    source=st.lists(
        st.one_of(st.text(max_size=6), st.sampled_from(["ENSG00000167286", "ENSG00000167286.2"])), max_size=6
    ),
    target=st.lists(st.sampled_from(["A", "B", "ENSG00000167286", "C"]), max_size=4),
    min_overlap=st.one_of(st.integers(-1, 5), st.floats(-1, 2)),
)
def test_align_genes_fuzz(source, target, min_overlap):
    al = _only_documented_errors(align_genes, source, target, min_overlap=min_overlap)
    if al is not None:
        assert al.report.n_matched >= 1
        assert al.source_index.shape == (len(target),)
