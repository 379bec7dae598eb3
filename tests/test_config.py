from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from genailab.config import (
    Config,
    apply_overrides,
    check_choice,
    check_positive,
    load_yaml_overrides,
    parse_set_options,
)
from genailab.errors import InvalidInputError


@dataclass(frozen=True)
class Inner(Config):
    rank: int = 4
    targets: tuple[str, ...] = ("attn",)
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer(Config):
    lr: float = 1e-3
    flag: bool = False
    name: str | None = None
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)


def test_overrides_are_typed():
    cfg = apply_overrides(
        Outer(), {"lr": "0.01", "flag": "true", "inner.rank": "8", "inner.targets": "q,v", "inner.mode": "b"}
    )
    assert cfg.lr == 0.01
    assert cfg.flag is True
    assert cfg.inner == Inner(rank=8, targets=("q", "v"), mode="b")
    assert apply_overrides(Outer(), {"name": "null"}).name is None
    assert apply_overrides(Outer(), {"inner.targets": "[a, b]"}).inner.targets == ("a", "b")


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("nope", "1", "unknown config key 'nope'"),
        ("inner.nope", "1", "unknown config key 'inner.nope'"),
        ("lr.x", "1", "not a nested section"),
        ("inner.rank", "eight", "must be an integer"),
        ("inner.rank", "2.5", "must be an integer"),
        ("flag", "maybe", "true or false"),
        ("inner.mode", "c", "expected one of 'a', 'b'"),
        ("lr", "-1", "must be > 0"),
    ],
)
def test_bad_overrides_name_the_key(key, value, match):
    with pytest.raises(InvalidInputError, match=match):
        apply_overrides(Outer(), {key: value})


def test_json_round_trip_and_unknown_keys():
    cfg = Outer(lr=0.5, inner=Inner(rank=2, targets=("x",)))
    assert Outer.from_json(cfg.to_json()) == cfg
    with pytest.raises(InvalidInputError, match="unknown key"):
        Outer.from_dict({"lr": 1.0, "bogus": 2})


def test_yaml_flattening(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lr: 0.1\ninner:\n  rank: 16\n  targets: [q, k]\n")
    flat = load_yaml_overrides(p)
    assert flat == {"lr": 0.1, "inner.rank": 16, "inner.targets": ["q", "k"]}
    cfg = apply_overrides(Outer(), flat, from_string=False)
    assert cfg.inner.rank == 16
    assert cfg.inner.targets == ("q", "k")
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_yaml_overrides(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    with pytest.raises(InvalidInputError, match="mapping"):
        load_yaml_overrides(tmp_path / "bad.yaml")


def test_set_option_parsing():
    assert parse_set_options(["a.b=1", "c = x=y"]) == {"a.b": "1", "c": "x=y"}
    with pytest.raises(InvalidInputError, match="key=value"):
        parse_set_options(["novalue"])


def test_check_helpers():
    check_choice("x", "a", ["a", "b"])
    with pytest.raises(InvalidInputError, match="x='c'"):
        check_choice("x", "c", ["a", "b"])
    for bad in (0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(InvalidInputError):
            check_positive("v", bad)
