from __future__ import annotations

import numpy as np
import pytest

from genailab.data.perturbation_splits import carve_validation, holdout_split, parse_holdouts
from genailab.errors import InvalidInputError

LABELS = np.array(["control"] * 5 + ["A"] * 3 + ["B"] * 3 + ["A+B"] * 2 + ["C"] * 3 + ["D"] * 2 + ["A+C"] * 2)
CONTEXTS = np.array(["x", "y"] * (len(LABELS) // 2))


def test_parse_holdouts():
    assert parse_holdouts(["KLF1", "MAPK1@U87MG"]) == (["KLF1"], [("MAPK1", "U87MG")])
    for bad in ("@x", "P@", "P@x@y", " "):
        with pytest.raises(InvalidInputError, match="--holdout"):
            parse_holdouts([bad])


def test_single_held_out_everywhere_excludes_its_combinations():
    split = holdout_split(LABELS, CONTEXTS, everywhere=["A"])
    assert set(LABELS[split.test]) == {"A"}
    assert not ({"A+B", "A+C"} & set(LABELS[split.train]))
    assert set(LABELS[split.params["excluded"]]) == {"A+B", "A+C"}
    assert "control" in set(LABELS[split.train])


def test_combination_and_pair_holdouts():
    split = holdout_split(LABELS, CONTEXTS, everywhere=["A+B"], pairs=[("C", "x")])
    assert set(zip(LABELS[split.test], CONTEXTS[split.test], strict=True)) == {("A+B", "x"), ("A+B", "y"), ("C", "x")}
    assert ("C", "y") in set(zip(LABELS[split.train], CONTEXTS[split.train], strict=True))
    assert set(LABELS[split.train]) >= {"A", "B"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"everywhere": ["Z"]}, "matches no cells"),
        ({"everywhere": ["control"]}, "control cells cannot be held out"),
        ({"pairs": [("D", "x")]}, "occurs in contexts"),
        ({"pairs": [("Z", "x")]}, "not in the data"),
        ({}, "held-out set is empty"),
    ],
)
def test_holdout_errors(kwargs, match):
    labels = LABELS.copy()
    ctx = CONTEXTS.copy()
    ctx[LABELS == "D"] = "y"
    with pytest.raises(InvalidInputError, match=match):
        holdout_split(labels, ctx, **kwargs)


@pytest.mark.parametrize("kind", ["agent", "combination", "pair"])
def test_carve_validation_moves_whole_conditions(kind):
    split = holdout_split(LABELS, CONTEXTS, everywhere=["D"])
    out = carve_validation(split, LABELS, CONTEXTS, kind=kind, fraction=0.5, seed=0)
    assert len(out.val) > 0
    assert np.array_equal(out.test, split.test)
    assert not set(out.val) & set(out.train)
    val_keys = {(LABELS[r], CONTEXTS[r]) for r in out.val}
    train_keys = {(LABELS[r], CONTEXTS[r]) for r in out.train}
    assert not val_keys & train_keys
    assert "control" not in {k for k, _ in val_keys}
    if kind == "agent":  # every condition containing a validation agent left training
        agents = set(out.params["val_units"])
        assert not any(agents & set(k.split("+")) for k, _ in train_keys)
    assert out.params["val_kind"] == kind
    again = carve_validation(split, LABELS, CONTEXTS, kind=kind, fraction=0.5, seed=0)
    assert np.array_equal(again.val, out.val)


def test_carve_validation_respects_eligibility_and_zero_fraction():
    split = holdout_split(LABELS, CONTEXTS, everywhere=["D"])
    out = carve_validation(split, LABELS, CONTEXTS, kind="agent", fraction=0.9, seed=0, eligible=["B", "C"])
    assert len(out.params["val_units"]) == 1
    assert set(out.params["val_units"]) <= {"B", "C"}
    none = carve_validation(split, LABELS, CONTEXTS, kind="agent", fraction=0.0, seed=0)
    assert len(none.val) == 0
    with pytest.raises(InvalidInputError, match="kind"):
        carve_validation(split, LABELS, CONTEXTS, kind="random", fraction=0.2, seed=0)
