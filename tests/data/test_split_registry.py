"""The one registry of split kinds: every kind by name, the old import paths, the label grammar."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import genailab.data as data
import genailab.data.perturbation_splits as perturbation_splits
import genailab.data.splits as splits
from genailab.data import SPLITS, SPLITTERS, Split
from genailab.errors import InvalidInputError

LABELS = np.array(["control"] * 6 + ["A"] * 4 + ["B"] * 4 + ["C"] * 4 + ["A+B"] * 3 + ["A+C"] * 3 + ["B+C"] * 3)
CONTEXTS = np.array(["x", "y", "z"] * (len(LABELS) // 3), dtype=object)
CELL_TYPES = np.resize(np.array(["T", "B"]), len(LABELS))
OBS = pd.DataFrame(
    {"condition": LABELS, "line": CONTEXTS, "cell_type": CELL_TYPES}, index=[f"c{i}" for i in range(len(LABELS))]
)

# kind -> (direct function, args, kwargs): calling SPLITS.get(kind)(*args, **kwargs) must give the same split.
CASES = {
    "random": (data.random_split, (len(LABELS),), {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 3}),
    "category": (data.holdout_category_split, (OBS, "cell_type", "B"), {"seed": 1}),
    "perturbation": (data.holdout_perturbation_split, (OBS, "condition"), {"n_holdout": 1, "seed": 2}),
    "combination": (data.combination_split, (OBS, "condition"), {"seen": 2, "seed": 4}),
    "context": (data.context_split, (OBS, "condition", "line", [("A", "x")]), {"seed": 5}),
    "holdout": (data.holdout_split, (LABELS, CONTEXTS), {"everywhere": ["B"], "pairs": [("C", "y")]}),
}


def test_every_registered_kind_is_covered():
    assert set(SPLITS.names()) == set(CASES)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_kind_by_name_gives_the_direct_result(kind):
    fn, args, kwargs = CASES[kind]
    assert SPLITS.get(kind) is fn
    by_name = SPLITS.get(kind)(*args, **kwargs)
    assert isinstance(by_name, Split)
    assert by_name == fn(*args, **kwargs)
    assert by_name.test.size > 0


def test_unknown_kind_lists_the_registered_names():
    with pytest.raises(InvalidInputError, match="registered splits are") as err:
        SPLITS.get("leave_one_out")
    for name in SPLITS.names():
        assert name in str(err.value)


def test_old_names_and_paths_are_the_same_objects():
    assert SPLITTERS is SPLITS
    for name in ("carve_validation", "holdout_split", "parse_holdouts", "VAL_KINDS"):
        assert getattr(perturbation_splits, name) is getattr(splits, name)
    for name in (
        "SPLITTERS",
        "Split",
        "combination_split",
        "context_split",
        "holdout_category_split",
        "holdout_perturbation_split",
        "random_split",
    ):
        assert getattr(splits, name) is getattr(data, name)


@pytest.mark.parametrize("label", ["A++B", "+A"])
def test_splits_refuse_an_empty_label_part(label):
    bad = np.where(LABELS == "A+B", label, LABELS)
    with pytest.raises(InvalidInputError, match="empty part"):
        data.holdout_split(bad, CONTEXTS, everywhere=["B"])
    with pytest.raises(InvalidInputError, match="empty part"):
        data.holdout_perturbation_split(OBS.assign(condition=bad), "condition", ["B"])


def test_control_parts_are_dropped_like_split_label():
    labels = np.where(LABELS == "A", "A+control", LABELS)
    split = data.holdout_perturbation_split(OBS.assign(condition=labels), "condition", ["A"])
    assert set(labels[split.test]) == {"A+control", "A+B", "A+C"}
