from __future__ import annotations

import json

import pytest

from genailab.errors import InvalidInputError, OutputPathError
from genailab.io import atomic_write, atomic_write_json, check_writable
from genailab.registry import Registry


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out.txt"

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(dest, broken)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_whole_file(tmp_path):
    dest = tmp_path / "sub" / "m.json"
    atomic_write_json(dest, {"a": 1})
    atomic_write_json(dest, {"a": 2})
    assert json.loads(dest.read_text()) == {"a": 2}
    assert [p.name for p in dest.parent.iterdir()] == ["m.json"]
    assert dest.stat().st_mode & 0o044  # readable by group/others like any ordinary file (umask 022)


def test_unwritable_output_is_refused_early(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match="is a file"):
        check_writable(blocker / "out.h5ad")
    with pytest.raises(OutputPathError):
        atomic_write_json(blocker / "x.json", {})


def test_registry_lists_names():
    reg = Registry("widget")

    @reg.register("b")
    class B: ...

    @reg.register("a")
    class A: ...

    assert reg.get("a") is A
    assert "b" in reg
    assert reg.names() == ("a", "b")
    assert len(reg) == 2
    with pytest.raises(InvalidInputError, match="registered widgets are: a, b"):
        reg.get("c")
    with pytest.raises(InvalidInputError, match="already registered"):
        reg.register("a")(B)


def test_adapted_model_kinds_are_a_registry_whose_errors_list_the_kinds(tmp_path):
    torch = pytest.importorskip("torch")
    from genailab.foundation.recipes.adapted import ADAPTED_KINDS, AdaptedKind, save_adapted

    assert ADAPTED_KINDS.names() == ("perturbation", "synthesis")
    assert all(isinstance(ADAPTED_KINDS.get(n), AdaptedKind) for n in ADAPTED_KINDS)
    with pytest.raises(InvalidInputError, match="perturbation, synthesis"):
        save_adapted(torch.nn.Linear(2, 2), tmp_path / "out", base_dir=tmp_path, record={"kind": "tokenizer"})
    assert not (tmp_path / "out").exists()
