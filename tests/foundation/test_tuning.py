from __future__ import annotations

import pytest
from torch import nn

from genailab.errors import InvalidInputError
from genailab.foundation.tuning import apply_freeze, count_parameters


def _net():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_freeze_everything_and_report():
    net = _net()
    report = apply_freeze(net)
    assert report.n_trainable == 0
    assert report.n_total == count_parameters(net)[1] == 58
    assert "0 of 58" in str(report)


def test_freeze_by_pattern():
    net = _net()
    report = apply_freeze(net, [r"^0$"])
    assert report.targeted == ("0",)
    assert report.n_trainable == 18
    assert not net[0].weight.requires_grad
    assert net[2].weight.requires_grad
    assert report.trainable_fraction == pytest.approx(18 / 58)


def test_pattern_matching_nothing_is_an_error():
    with pytest.raises(InvalidInputError, match="matches no module"):
        apply_freeze(_net(), ["attention"])
