from __future__ import annotations

import numpy as np
import pytest

from genailab.data import (
    SPLITTERS,
    Split,
    combination_split,
    context_split,
    holdout_category_split,
    holdout_perturbation_split,
    random_split,
    read_h5ad,
)
from genailab.errors import InvalidInputError, MissingKeyError

from .conftest import NORMAN


def _check_partition(split: Split, n_obs: int, *, cover: bool = True) -> None:
    parts = [split.train, split.val, split.test]
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == allidx.size  # disjoint
    if cover:
        assert allidx.size == n_obs


def test_registry_names():
    assert SPLITTERS.names() == (
        "category",
        "combination",
        "context",
        "holdout",
        "perturbation",
        "random",
    )
    assert SPLITTERS.get("random") is random_split
    with pytest.raises(InvalidInputError, match="registered splits are"):
        SPLITTERS.get("donor")


def test_random_split_deterministic_and_roundtrip(tmp_path):
    s = random_split(100, val_fraction=0.2, test_fraction=0.1, seed=3)
    _check_partition(s, 100)
    assert s.sizes == {"train": 70, "val": 20, "test": 10}
    assert random_split(100, val_fraction=0.2, test_fraction=0.1, seed=3) == s
    assert random_split(100, val_fraction=0.2, test_fraction=0.1, seed=4) != s
    loaded = Split.load(s.save(tmp_path / "split.json"))
    assert loaded == s
    assert loaded.params["seed"] == 3
    assert Split.from_dict(s.to_dict()) == s
    with pytest.raises(InvalidInputError, match="must be < 1"):
        random_split(10, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(InvalidInputError, match="n_obs"):
        random_split(1)


def test_random_train_val_split_has_empty_test_only_when_asked():
    s = random_split(50, val_fraction=0.2, test_fraction=0.0, seed=0)
    assert s.sizes == {"train": 40, "val": 10, "test": 0}
    assert Split.from_dict(s.to_dict()) == s
    assert random_split(50, val_fraction=0.2, test_fraction=0.01, seed=0).sizes["test"] == 1


def test_split_validation():
    with pytest.raises(InvalidInputError, match="held-out set is empty"):
        Split("x", train=[0, 1], val=[], test=[])
    with pytest.raises(InvalidInputError, match="share 1 cells"):
        Split("x", train=[0, 1], val=[], test=[1, 2])
    with pytest.raises(InvalidInputError, match="twice"):
        Split("x", train=[0, 0], val=[], test=[1])
    with pytest.raises(InvalidInputError, match="out of range"):
        Split("x", train=[0], val=[], test=[5], params={"n_obs": 5})
    with pytest.raises(InvalidInputError, match="JSON"):
        Split("x", train=[0], val=[], test=[1], params={"f": object()})
    s = Split("x", train=[3, 0], val=[], test=[1])
    assert s.train.tolist() == [0, 3]


def test_category_split(adata):
    s = holdout_category_split(adata.obs, "cell_line", ["L2"], val_fraction=0.25, seed=0)
    _check_partition(s, adata.n_obs)
    assert set(adata.obs["cell_line"].iloc[s.test]) == {"L2"}
    assert "L2" not in set(adata.obs["cell_line"].iloc[np.concatenate([s.train, s.val])])
    assert holdout_category_split(adata, "cell_line", "L2", val_fraction=0.25, seed=0) == s
    with pytest.raises(InvalidInputError, match="available values: 'L1', 'L2', 'L3'"):
        holdout_category_split(adata.obs, "cell_line", ["L9"])
    with pytest.raises(MissingKeyError, match="available obs columns"):
        holdout_category_split(adata.obs, "line", ["L1"])
    with pytest.raises(InvalidInputError, match="no training cells"):
        holdout_category_split(adata.obs, "batch", ["b1", "b2"])


def _conditions(adata, idx):
    return set(adata.obs["condition"].astype(str).iloc[idx])


def test_perturbation_split(adata):
    s = holdout_perturbation_split(adata.obs, "condition", ["A"], val_fraction=0.2, seed=1)
    _check_partition(s, adata.n_obs)
    assert _conditions(adata, s.test) == {"A", "A+B", "A+C"}
    assert "control" in _conditions(adata, s.train)
    assert "control" not in _conditions(adata, s.val)
    assert (adata.obs["condition"].iloc[s.train] == "control").sum() == (adata.obs["condition"] == "control").sum()
    r1 = holdout_perturbation_split(adata.obs, "condition", n_holdout=2, seed=5)
    assert r1 == holdout_perturbation_split(adata.obs, "condition", n_holdout=2, seed=5)
    assert len(r1.params["held_out"]) == 2
    drawn = {
        tuple(holdout_perturbation_split(adata.obs, "condition", n_holdout=2, seed=k).params["held_out"])
        for k in range(8)
    }
    assert len(drawn) > 1
    with pytest.raises(InvalidInputError, match="available single perturbations"):
        holdout_perturbation_split(adata.obs, "condition", ["Z"])
    with pytest.raises(InvalidInputError, match="n_holdout"):
        holdout_perturbation_split(adata.obs, "condition")
    with pytest.raises(InvalidInputError, match="control value 'ctrl' not found"):
        holdout_perturbation_split(adata.obs, "condition", ["A"], control="ctrl")


@pytest.mark.parametrize("seen", [0, 1, 2])
def test_combination_split(adata, seen):
    s = combination_split(adata.obs, "condition", seen=seen, seed=0, val_fraction=0.2)
    p = s.params
    # qualifying doubles: both singles present as single-perturbation cells (C+E does not: no E cells)
    assert p["qualifying"] == ["A+B", "A+C", "B+C"]
    held = p["held_out"]
    assert held
    assert _conditions(adata, s.test) == set(held)
    excluded = np.asarray(p["excluded"], dtype=np.int64)
    _check_partition(s, adata.n_obs, cover=False)
    assert s.train.size + s.val.size + s.test.size + excluded.size == adata.n_obs
    assert np.intersect1d(excluded, np.concatenate([s.train, s.val, s.test])).size == 0
    seen_conditions = _conditions(adata, np.concatenate([s.train, s.val]))
    seen_singles = {part for c in seen_conditions for part in c.split("+") if c != "control"}
    for double in held:
        assert sum(single in seen_singles for single in double.split("+")) == seen
    assert not set(p["removed_singles"]) & seen_singles
    assert combination_split(adata.obs, "condition", seen=seen, seed=0, val_fraction=0.2) == s


def test_combination_split_n_holdout_and_errors(adata):
    s = combination_split(adata.obs, "condition", seen=2, n_holdout=1, seed=2)
    assert len(s.params["held_out"]) == 1
    with pytest.raises(InvalidInputError, match="exceeds the 3 qualifying"):
        combination_split(adata.obs, "condition", seen=2, n_holdout=4)
    with pytest.raises(InvalidInputError, match="seen"):
        combination_split(adata.obs, "condition", seen=3)  # type: ignore[arg-type]
    only_singles = adata[~adata.obs["condition"].astype(str).str.contains(r"\+")].copy()
    with pytest.raises(InvalidInputError, match="no double perturbation"):
        combination_split(only_singles.obs, "condition", seen=2)


def test_context_split(adata):
    s = context_split(adata.obs, "condition", "cell_line", [("A", "L1"), ("B+C", "L2")], val_fraction=0.2, seed=0)
    _check_partition(s, adata.n_obs)
    test = adata.obs.iloc[s.test]
    assert set(zip(test["condition"].astype(str), test["cell_line"].astype(str), strict=True)) == {
        ("A", "L1"),
        ("B+C", "L2"),
    }
    train = adata.obs.iloc[s.train]
    assert "A" in set(train["condition"])
    assert "control" in set(train.loc[train["cell_line"] == "L1", "condition"])
    assert (train["condition"] == "control").sum() == (adata.obs["condition"] == "control").sum()
    with pytest.raises(InvalidInputError, match="context 'L9' not found"):
        context_split(adata.obs, "condition", "cell_line", [("A", "L9")])
    with pytest.raises(InvalidInputError, match="control cells cannot be held out"):
        context_split(adata.obs, "condition", "cell_line", [("control", "L1")])
    with pytest.raises(InvalidInputError, match="pairs"):
        context_split(adata.obs, "condition", "cell_line", [])


@pytest.mark.real_data
def test_norman_combination_split(shared):
    obs = read_h5ad(shared(NORMAN)).obs
    s = combination_split(obs, "condition", seen=2, seed=0)
    # doubles of norman19 whose two singles were also profiled as singles
    assert s.params["qualifying"] == [
        "KLF1+MAP2K6",
        "KLF1+TGFBR2",
        "MAP2K3+MAP2K6",
        "MAP2K3+SLC38A2",
        "MAPK1+TGFBR2",
    ]
    assert s.sizes["test"] == 500
    assert s.params["removed_singles"] == []
    s0 = combination_split(obs, "condition", seen=0, n_holdout=2, seed=0)
    removed = set(s0.params["removed_singles"])
    assert len(removed) == 4
    conds = set(obs["condition"].astype(str).iloc[np.concatenate([s0.train, s0.val])])
    assert not {part for c in conds for part in c.split("+")} & removed


@pytest.mark.real_data
def test_mcfaline_context_split(shared):
    obs = read_h5ad(shared(NORMAN)).obs
    mc = obs[obs["dataset"] == "mcfaline23"]
    s = context_split(mc, "condition", "cell_type", [("MAPK1", "U87MG"), ("SGK1", "A172")], seed=0)
    test = mc.iloc[s.test]
    assert set(test["cell_type"].astype(str)) == {"U87MG", "A172"}
    train = mc.iloc[s.train]
    assert {"A172", "T98G"} <= set(train.loc[train["condition"] == "MAPK1", "cell_type"].astype(str))
    assert "U87MG" in set(train.loc[train["condition"] == "control", "cell_type"].astype(str))
    assert s.params["only_in_holdout_context"] == []
