"""Which tokens moved between two groups of cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genailab.errors import InvalidInputError
from genailab.tokenizers import token_shift


def test_token_shift_ranks_the_moved_token_first():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 4, 3))
    b = rng.normal(size=(60, 4, 3))
    b[:, 2] += 2.0  # token 2 moves by 2 in every dimension
    table = token_shift(a, torch.as_tensor(b), ["t0", "t1", "immune", "t3"])
    assert list(table.columns) == ["token", "shift", "effect"]
    assert table.loc[0, "token"] == "immune"
    assert table.loc[0, "shift"] == pytest.approx(np.linalg.norm(b[:, 2].mean(0) - a[:, 2].mean(0)))
    assert table.loc[0, "effect"] > 5 * table.loc[1, "effect"]
    assert table["effect"].is_monotonic_decreasing


def test_token_shift_effect_is_scale_free_and_exact():
    a = np.zeros((2, 1, 2))
    a[:, 0, 0] = [-1.0, 1.0]
    b = a + np.array([3.0, 4.0])  # shift 5; pooled variance: dim0 (2+2)/2 = 2, dim1 0 -> mean 1 -> sd 1
    table = token_shift(a, b, ["z"])
    assert table.loc[0, "shift"] == pytest.approx(5.0)
    assert table.loc[0, "effect"] == pytest.approx(5.0)
    scaled = token_shift(10 * a, 10 * b, ["z"])
    assert scaled.loc[0, "effect"] == pytest.approx(5.0)


def test_token_shift_handles_constant_tokens():
    a = np.zeros((3, 2, 2))
    b = np.zeros((3, 2, 2))
    b[:, 1] = 1.0
    table = token_shift(a, b, ["still", "moved"]).set_index("token")
    assert table.loc["still", "effect"] == 0.0
    assert np.isinf(table.loc["moved", "effect"])


@pytest.mark.parametrize(
    ("a", "b", "names", "match"),
    [
        (np.zeros((3, 2)), np.zeros((3, 2)), ["x", "y"], "shape"),
        (np.zeros((3, 2, 2)), np.zeros((3, 3, 2)), ["x", "y"], "token shape"),
        (np.zeros((3, 2, 2)), np.zeros((3, 2, 2)), ["x"], "names"),
        (np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), ["x", "y"], "at least"),
        (np.full((3, 2, 2), np.nan), np.zeros((3, 2, 2)), ["x", "y"], "NaN"),
    ],
)
def test_token_shift_rejects_bad_input(a, b, names, match):
    with pytest.raises(InvalidInputError, match=match):
        token_shift(a, b, names)
