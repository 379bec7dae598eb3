from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from genailab.data import DataRegistry, DataSpec, read_h5ad, setup_anndata
from genailab.errors import InvalidInputError, MissingKeyError, UnknownLabelError

from .conftest import NORMAN


# ------------------------------------------------------------------------------------------ DataSpec
def test_spec_categorical_key_order():
    spec = DataSpec(
        batch_key="batch",
        cell_type_key="cell_type",
        perturbation_key="condition",
        categorical_covariate_keys=["cell_line"],  # a list is stored as a tuple
        continuous_covariate_keys=("age",),
    )
    assert spec.categorical_keys() == ("cell_type", "batch", "condition", "cell_line")
    assert spec.continuous_keys() == ("age",)
    assert spec.categorical_covariate_keys == ("cell_line",)


def test_spec_roundtrip():
    spec = DataSpec(cell_type_key="ct", dose_key="dose", categorical_covariate_keys=("a", "b"))
    assert DataSpec.from_dict(json.loads(spec.to_json())) == spec
    with pytest.raises(InvalidInputError, match="unknown key"):
        DataSpec.from_dict({"cell_type": "ct"})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"combination_delimiter": ""}, "combination_delimiter"),
        ({"control_value": ""}, "control_value"),
        ({"control_value": "ctrl+0"}, "contains the combination_delimiter"),
        ({"cell_type_key": "x", "batch_key": "x"}, "listed twice"),
        ({"cell_type_key": "x", "categorical_covariate_keys": ("x",)}, "listed twice"),
        ({"dose_key": "d", "continuous_covariate_keys": ("d",)}, "listed twice"),
        ({"cell_type_key": ""}, "non-empty string"),
        ({"batch_key": 3}, "non-empty string"),
        ({"categorical_covariate_keys": "donor"}, "tuple of obs column names"),
        ({"continuous_covariate_keys": ("age", 1)}, "non-empty strings"),
    ],
)
def test_spec_validation(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        DataSpec(**kwargs)


# ------------------------------------------------------------------------------------------ registration
def _registry(adata):
    return setup_anndata(
        adata,
        cell_type_key="cell_type",
        batch_key="batch",
        perturbation_key="condition",
        dose_key="dose",
        categorical_covariate_keys=("cell_line",),
        continuous_covariate_keys=("age",),
    )


def test_setup_anndata_categories(adata):
    reg = _registry(adata)
    assert reg.categories["cell_type"] == ("B", "NK", "T")
    assert reg.categories["condition"] == tuple(sorted(adata.obs["condition"].unique()))
    assert reg.perturbations == ("A", "B", "C", "D", "E")
    assert reg.key_index("condition") == 2
    assert reg.n_categories("batch") == 2
    with pytest.raises(MissingKeyError, match="registered keys"):
        reg.n_categories("donor")


def test_encode_decode(adata):
    reg = _registry(adata)
    codes = reg.encode_categorical(adata)
    assert codes.shape == (adata.n_obs, 4)
    assert codes.dtype == np.int64
    for key in reg.categorical_keys():
        decoded = reg.decode(key, codes[:, reg.key_index(key)])
        np.testing.assert_array_equal(decoded.astype(str), adata.obs[key].astype(str).to_numpy())
    cont = reg.encode_continuous(adata)
    assert cont.shape == (adata.n_obs, 1)
    assert cont.dtype == np.float32
    assert abs(cont.mean()) < 1e-5
    assert cont.std() == pytest.approx(1.0, abs=1e-4)
    assert reg.decode("batch", np.array([-1, 0])).tolist() == [None, "b1"]
    with pytest.raises(InvalidInputError, match=r"\[-1, 2\)"):
        reg.decode("batch", [5])


def test_encode_is_independent_of_category_order(adata):
    reg = _registry(adata)
    other = adata.copy()
    other.obs["cell_type"] = other.obs["cell_type"].cat.reorder_categories(["T", "NK", "B"])
    other.obs["batch"] = other.obs["batch"].astype(str)  # plain strings, not categorical
    np.testing.assert_array_equal(reg.encode_categorical(other), reg.encode_categorical(adata))


def test_unused_categories_are_ignored(adata):
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.add_categories(["unused"])
    assert "unused" not in _registry(adata).categories["cell_type"]


def test_unknown_labels(adata):
    reg = _registry(adata)
    new = adata[:10].copy()
    new.obs["cell_type"] = pd.Categorical(["Mono"] * 5 + ["T"] * 5)
    with pytest.raises(UnknownLabelError) as info:
        reg.encode_categorical(new)
    msg = str(info.value)
    assert "'Mono'" in msg
    assert "obs['cell_type']" in msg
    assert "'NK'" in msg
    assert "unknown='unknown'" in msg
    codes = reg.encode_categorical(new, unknown="unknown")
    col = codes[:, reg.key_index("cell_type")]
    assert (col[:5] == -1).all()
    assert (col[5:] == reg.categories["cell_type"].index("T")).all()
    # other columns untouched
    np.testing.assert_array_equal(np.delete(codes, 0, axis=1), np.delete(reg.encode_categorical(adata[:10]), 0, axis=1))
    many = adata[:20].copy()
    many.obs["cell_type"] = [f"x{i}" for i in range(20)]
    with pytest.raises(UnknownLabelError, match="and 10 more"):
        reg.encode_categorical(many)


def test_registration_errors(adata):
    with pytest.raises(MissingKeyError, match="available obs columns") as info:
        setup_anndata(adata, cell_type_key="celltype")
    assert "'cell_type'" in str(info.value)
    bad = adata.copy()
    bad.obs["cell_type"] = bad.obs["cell_type"].astype(object)
    bad.obs.iloc[[1, 2, 3], bad.obs.columns.get_loc("cell_type")] = np.nan
    with pytest.raises(InvalidInputError, match="3 of 72 cells with a missing"):
        setup_anndata(bad, cell_type_key="cell_type")
    with pytest.raises(InvalidInputError, match=r"control value 'ctrl' not found in obs\['condition'\]"):
        setup_anndata(adata, perturbation_key="condition", control_value="ctrl")
    with pytest.raises(InvalidInputError, match="must be numeric"):
        setup_anndata(adata, continuous_covariate_keys=("cell_type",))
    nan_age = adata.copy()
    nan_age.obs.loc["cell4", "age"] = np.inf
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        setup_anndata(nan_age, continuous_covariate_keys=("age",))
    with pytest.raises(InvalidInputError, match="unknown DataSpec field"):
        setup_anndata(adata, celltype_key="x")
    with pytest.raises(InvalidInputError, match="no labels"):
        setup_anndata(adata[:0].copy(), cell_type_key="cell_type")
    malformed = adata.copy()
    malformed.obs["condition"] = malformed.obs["condition"].astype(str).replace({"A+B": "A++B"})
    with pytest.raises(InvalidInputError, match="empty part"):
        setup_anndata(malformed, perturbation_key="condition")
    bad_dose = adata.copy()
    bad_dose.obs["dose"] = "high"
    with pytest.raises(InvalidInputError, match="is not a dose"):
        setup_anndata(bad_dose, dose_key="dose")


def test_spec_override_and_numeric_labels(adata):
    adata.obs["donor"] = np.arange(adata.n_obs) % 3 + 1015  # integer labels
    reg = setup_anndata(adata, DataSpec(cell_type_key="cell_type"), batch_key="donor")
    assert reg.spec.cell_type_key == "cell_type"
    assert reg.categories["donor"] == ("1015", "1016", "1017")
    assert reg.encode_categorical(adata)[:3, reg.key_index("donor")].tolist() == [0, 1, 2]


def test_combination_and_dose(adata):
    reg = _registry(adata)
    assert reg.split_combination("A+B") == ("A", "B")
    assert reg.split_combination("control") == ()
    assert reg.split_combination("A+control") == ("A",)
    assert reg.parse_dose("1+1") == (1.0, 1.0)
    assert reg.parse_dose(0.5) == (0.5,)
    with pytest.raises(InvalidInputError, match="not a dose"):
        reg.parse_dose("a+1")


def test_registry_save_load(adata, tmp_path):
    reg = _registry(adata)
    path = reg.save(tmp_path / "registry.json")
    loaded = DataRegistry.load(path)
    assert loaded == reg
    np.testing.assert_array_equal(loaded.encode_categorical(adata), reg.encode_categorical(adata))
    np.testing.assert_array_equal(loaded.encode_continuous(adata), reg.encode_continuous(adata))
    assert DataRegistry.from_dict(json.loads(json.dumps(reg.to_dict()))) == reg
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        DataRegistry.load(tmp_path / "bad.json")
    with pytest.raises(InvalidInputError, match="does not exist"):
        DataRegistry.load(tmp_path / "missing.json")


def test_registry_without_keys(adata):
    reg = setup_anndata(adata)
    assert reg.encode_categorical(adata).shape == (adata.n_obs, 0)
    assert reg.encode_continuous(adata).shape == (adata.n_obs, 0)


@pytest.mark.real_data
def test_norman_registry(shared):
    a = read_h5ad(shared(NORMAN))
    reg = setup_anndata(a, perturbation_key="condition", cell_type_key="cell_type", dose_key="dose")
    assert reg.categories["cell_type"] == ("A172", "T98G", "U87MG", "k562")
    assert {"KLF1", "SET", "MAPK1", "TBX3"} <= set(reg.perturbations)
    assert "control" not in reg.perturbations
    assert len(reg.perturbations) == 31
    assert reg.parse_dose("1+1") == (1.0, 1.0)


def test_with_categories_appends_new_labels_and_keeps_codes(adata):
    reg = setup_anndata(adata, DataSpec(batch_key="batch"))
    old = reg.categories["batch"]
    ext = reg.with_categories("batch", ["donor_new", old[0], "donor_new"])
    assert ext.categories["batch"] == (*old, "donor_new")  # old codes unchanged, duplicates/known skipped
    assert reg.categories["batch"] == old  # a copy: the original registry is unchanged
    assert ext.n_categories("batch") == len(old) + 1
    with pytest.raises(MissingKeyError, match="not a registered categorical key"):
        reg.with_categories("nope", ["x"])
    with pytest.raises(InvalidInputError, match="at least one label"):
        reg.with_categories("batch", [])
