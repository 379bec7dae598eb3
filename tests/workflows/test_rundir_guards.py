"""Run directories that never lie: the same-run guard, refusals that leave ``--out`` free, and the full history."""

from __future__ import annotations

import json

import pytest

from genailab.cli import main
from genailab.errors import InvalidInputError
from genailab.workflows.runconfig import DistillRunConfig, PerturbRunConfig
from genailab.workflows.rundir import RUN_CONFIG, RUN_SUMMARY, RunDirectory, merge_history, run_artifacts

from ..conftest import make_count_adata, make_perturb_adata

FAST = ["--set", "train.max_epochs=2", "--set", "train.progress_bar=false", "--set", "preset=tiny"]


@pytest.fixture
def h5ad(tmp_path):
    path = tmp_path / "data.h5ad"
    make_count_adata(n_obs=48, n_vars=16).write_h5ad(path)
    return path


# ------------------------------------------------------------------------------ item 4: the same-run guard
@pytest.mark.parametrize("content", ["{not json", "", "[1, 2]", "\xff"])
def test_an_unreadable_run_config_is_a_conflicting_run(tmp_path, content):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (out / RUN_CONFIG).write_text(content, encoding="latin-1")
    with pytest.raises(InvalidInputError, match="unreadable") as err:
        RunDirectory.check(out, DistillRunConfig(seed=0), data={"path": "x"})
    assert "choose another --out" in str(err.value)
    (out / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(InvalidInputError, match="unreadable"):  # unreadable is refused even without checkpoints
        RunDirectory.open(out, DistillRunConfig(seed=0), data={"path": "x"})
    assert (out / RUN_CONFIG).read_text(encoding="latin-1") == content  # never overwritten


@pytest.mark.parametrize("left", ["checkpoints/last.ckpt", "member_0/checkpoints/last.ckpt", "config.json", "run.json"])
def test_checkpoints_or_a_model_without_run_config_are_refused(tmp_path, left):
    out = tmp_path / "run"
    (out / left).parent.mkdir(parents=True, exist_ok=True)
    (out / left).write_bytes(b"x")
    with pytest.raises(InvalidInputError, match="no run_config.json") as err:
        RunDirectory.check(out, DistillRunConfig(seed=0), data={"path": "x"})
    assert left in str(err.value)
    assert "delete" in str(err.value)
    assert not (out / RUN_CONFIG).exists()


def test_a_free_directory_and_a_nested_run_that_guards_itself_are_accepted(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # unrelated files do not make a run
    (out / "logs").mkdir()
    (out / "vae" / "checkpoints").mkdir(parents=True)  # a synthesis run's own VAE run, with its run_config
    (out / "vae" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (out / "vae" / RUN_CONFIG).write_text("{}")
    run = RunDirectory.check(out, DistillRunConfig(seed=0), data={"path": "x"})
    assert not run.resuming
    assert not (out / RUN_CONFIG).exists()
    assert run_artifacts(out) == []
    assert run_artifacts(out, nested=True) == [out / "vae" / "checkpoints" / "last.ckpt"]
    run.start()
    assert RunDirectory.check(out, DistillRunConfig(seed=0), data={"path": "x"}).resuming


def test_cli_rerun_over_a_corrupt_run_config_is_refused_and_changes_nothing(h5ad, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["vae", "train", str(h5ad), "--out", str(run), *FAST]) == 0
    (run / RUN_CONFIG).write_text('{"config": ')  # truncated by hand, disk trouble, ...
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["vae", "train", str(h5ad), "--out", str(run), *FAST, "--seed", "4"]) == 2
    err = capsys.readouterr().err
    assert "unreadable" in err
    assert "Traceback" not in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    (run / RUN_CONFIG).unlink()
    assert main(["vae", "train", str(h5ad), "--out", str(run), *FAST, "--seed", "4"]) == 2
    assert "no run_config.json" in capsys.readouterr().err.replace("\n", " ")


# ------------------------------------------------------------------- item 5: a refusal leaves --out free
def test_a_refused_vae_run_does_not_lock_its_out(h5ad, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["vae", "train", str(h5ad), "--out", str(run), *FAST, "--batch-key", "donor"]) == 2
    assert "donor" in capsys.readouterr().err
    assert not (run / RUN_CONFIG).exists()
    # the fixed key and another config: accepted, not refused as "a different config"
    assert main(["vae", "train", str(h5ad), "--out", str(run), *FAST, "--batch-key", "batch", "--seed", "2"]) == 0
    assert json.loads((run / RUN_CONFIG).read_text())["config"]["data"]["batch_key"] == "batch"


def test_a_refused_synth_run_writes_neither_run_config_nor_vae(h5ad, tmp_path, capsys):
    run = tmp_path / "run"
    fast = ["--set", "vae_preset=tiny", "--set", "vae_train.max_epochs=1", "--set", "vae_train.progress_bar=false",
            "--set", "backbone_preset=tiny", "--set", "train.max_epochs=1",
            "--set", "train.progress_bar=false"]  # fmt: skip
    base = ["synth", "train", str(h5ad), "--out", str(run), "--condition-keys", "cell_type", *fast]
    assert main([*base, "--batch-key", "donor"]) == 2  # refused by the VAE's data checks
    assert "donor" in capsys.readouterr().err
    assert main([*base, "--set", "backbone_config.nonsense=1"]) == 2  # refused by the backbone, after the VAE's
    err = capsys.readouterr().err
    assert "nonsense" in err
    assert "Traceback" not in err
    assert not (run / RUN_CONFIG).exists()
    assert not (run / "vae").exists()
    assert main([*base, "--batch-key", "batch", "--seed", "1"]) == 0
    summary = json.loads((run / RUN_SUMMARY).read_text())
    assert summary["config"]["data"]["batch_key"] == "batch"
    assert [r["epoch"] for r in summary["history"]] == [0.0]


def test_a_refused_perturb_run_does_not_lock_its_out(tmp_path, capsys):
    data = tmp_path / "screen.h5ad"
    make_perturb_adata().write_h5ad(data)
    run = tmp_path / "run"
    argv = ["perturb", "train", str(data), "--perturbation-key", "condition", "--out", str(run)]
    assert main([*argv, "--control", "ctrl"]) == 2  # not a label: refused by the split, before any write
    assert "--control 'ctrl'" in capsys.readouterr().err
    assert not (run / RUN_CONFIG).exists()
    assert not (run / "split.json").exists()
    # the corrected config is no longer refused as "a different config" (checked without training)
    RunDirectory.check(run, PerturbRunConfig(perturbation_key="condition", control="control"), data={"path": "x"})


def _refuse_inside(run: RunDirectory, error: Exception, *, checkpoint: bool = False) -> None:
    """Run a job body inside ``run.started()`` that (after writing a checkpoint, if asked) raises ``error``."""
    with run.started():
        assert (run.path / RUN_CONFIG).is_file()
        if checkpoint:
            (run.path / "checkpoints").mkdir(exist_ok=True)
            (run.path / "checkpoints" / "last.ckpt").write_bytes(b"x")
        raise error


def test_started_undoes_run_config_on_a_refusal_before_training_only(tmp_path):
    out = tmp_path / "run"
    run = RunDirectory.check(out, DistillRunConfig(seed=0), data={"path": "x"})
    with pytest.raises(InvalidInputError):
        _refuse_inside(run, InvalidInputError("new cells lack the base's condition key"))
    assert not (out / RUN_CONFIG).exists()
    with pytest.raises(RuntimeError):  # not a refusal: an unexpected failure keeps the record
        _refuse_inside(run, RuntimeError("boom"))
    assert (out / RUN_CONFIG).is_file()
    (out / RUN_CONFIG).unlink()
    with pytest.raises(InvalidInputError):  # training had written a checkpoint: kept
        _refuse_inside(run, InvalidInputError("late refusal"), checkpoint=True)
    assert (out / RUN_CONFIG).is_file()
    resumed = RunDirectory.check(out, DistillRunConfig(seed=0), data={"path": "x"})
    (out / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(InvalidInputError):  # a resumed run's record is never removed
        _refuse_inside(resumed, InvalidInputError("refused"))
    assert (out / RUN_CONFIG).is_file()


# -------------------------------------------------------------------------- item 7: the full history
def test_merge_history():
    old = [{"epoch": 0.0, "loss": 3.0}, {"epoch": 1.0, "loss": 2.0}]
    assert merge_history(old, []) == old  # a rerun of a finished run trained nothing
    assert merge_history(old, [{"epoch": 2.0, "loss": 1.0}]) == [*old, {"epoch": 2.0, "loss": 1.0}]
    assert merge_history(old, [{"epoch": 1.0, "loss": 1.5}]) == [old[0], {"epoch": 1.0, "loss": 1.5}]
    full = [{"epoch": 0.0, "loss": 9.0}, {"epoch": 1.0, "loss": 8.0}]
    assert merge_history(old, full) == full  # a checkpoint that carried the history replaces it


def test_finish_keeps_the_history_of_earlier_segments(tmp_path):
    out = tmp_path / "run"
    run = RunDirectory.open(out, DistillRunConfig(seed=0), data={"path": "x"})
    run.finish({"history": [{"epoch": 0.0}, {"epoch": 1.0}]})
    assert [r["epoch"] for r in run.finish({"history": []})["history"]] == [0.0, 1.0]
    assert [r["epoch"] for r in run.finish({"history": [{"epoch": 2.0}]})["history"]] == [0.0, 1.0, 2.0]
    assert [r["epoch"] for r in json.loads((out / RUN_SUMMARY).read_text())["history"]] == [0.0, 1.0, 2.0]
    assert "history" not in run.finish({"metrics": {}})


def test_cli_rerun_of_a_finished_run_keeps_its_history(h5ad, tmp_path):
    run = tmp_path / "run"
    assert main(["vae", "train", str(h5ad), "--out", str(run), *FAST]) == 0
    first = json.loads((run / RUN_SUMMARY).read_text())["history"]
    assert [r["epoch"] for r in first] == [0.0, 1.0]
    assert main(["vae", "train", str(h5ad), "--out", str(run), *FAST]) == 0
    assert json.loads((run / RUN_SUMMARY).read_text())["history"] == first
