"""Run directories: one helper writes run_config.json first and run.json last, and guards the directory."""

from __future__ import annotations

import json

import pytest

from genailab.errors import InvalidInputError
from genailab.workflows.runconfig import DistillRunConfig, PerturbRunConfig
from genailab.workflows.rundir import (
    RUN_CONFIG,
    RUN_SUMMARY,
    RunDirectory,
    read_run_config,
    read_run_summary,
    split_path,
    write_output_record,
)


def test_open_writes_the_resolved_config_then_finish_writes_the_summary(tmp_path):
    out = tmp_path / "run"
    config = DistillRunConfig(seed=3)
    run = RunDirectory.open(out, config, data={"path": "x.h5ad"}, vae_dir=None)
    written = json.loads((out / RUN_CONFIG).read_text())
    assert list(written) == ["config", "seed", "data", "vae_dir", "versions"]
    assert written["seed"] == 3
    assert written["config"] == config.to_dict()
    assert "torch" in written["versions"]
    assert not (out / RUN_SUMMARY).exists()
    summary = run.finish({"metrics": {"a": 1.0}, "wall_s": 0.5})
    assert list(summary) == ["config", "seed", "data", "vae_dir", "model_dir", "metrics", "wall_s", "versions"]
    assert summary["model_dir"] == str(out)
    assert read_run_summary(out) == json.loads(json.dumps(summary))
    assert read_run_config(out)["data"] == {"path": "x.h5ad"}
    assert run.split_path == split_path(out) == out / "split.json"


def test_same_config_resumes_and_a_different_one_is_refused(tmp_path):
    out = tmp_path / "run"
    RunDirectory.open(out, DistillRunConfig(seed=0), data={"path": "x"})
    RunDirectory.open(out, DistillRunConfig(seed=0), data={"path": "x"})  # same: resume
    with pytest.raises(InvalidInputError, match="different config or data"):
        RunDirectory.open(out, DistillRunConfig(seed=1), data={"path": "x"})
    with pytest.raises(InvalidInputError, match="different config or data"):
        RunDirectory.open(out, DistillRunConfig(seed=0), data={"path": "y"})


def test_read_run_config_of_a_directory_without_one_is_none(tmp_path):
    assert read_run_config(tmp_path) is None


def test_output_record_sits_beside_the_output(tmp_path):
    out = tmp_path / "syn.h5ad"
    path = write_output_record(out, {"n_obs": 4})
    assert path == tmp_path / "syn.h5ad.run.json"
    assert json.loads(path.read_text()) == {"n_obs": 4}
    assert write_output_record(out, {"n": 1}, suffix=".json") == tmp_path / "syn.h5ad.json"


def test_every_split_kind_of_the_run_config_has_a_draw():
    from genailab.workflows.perturb import PERTURB_SPLITS
    from genailab.workflows.runconfig import SPLIT_KINDS

    assert sorted(PERTURB_SPLITS.names()) == sorted(SPLIT_KINDS)
    with pytest.raises(
        InvalidInputError,
        match="registered split kinds are: all, combo, combo_kfold, context, context_pair, none, single_kfold",
    ):
        PERTURB_SPLITS.get("random")
    with pytest.raises(InvalidInputError, match="split='random' is not allowed"):
        PerturbRunConfig(split="random")
