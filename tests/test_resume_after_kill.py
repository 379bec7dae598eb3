"""A training process killed with SIGKILL resumes from its last checkpoint when rerun."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import make_count_adata

SCRIPT = """
import sys
from genailab.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_then_rerun_resumes(tmp_path):
    data = tmp_path / "data.h5ad"
    make_count_adata(n_obs=2048, n_vars=32).write_h5ad(data)
    run = tmp_path / "run"
    argv = [
        sys.executable,
        "-c",
        SCRIPT,
        "vae",
        "train",
        str(data),
        "--out",
        str(run),
        "--set",
        "preset=tiny",
        "--set",
        "train.max_epochs=6",
        "--set",
        "train.early_stopping_patience=0",
        "--set",
        "train.progress_bar=false",
        "--set",
        "train.batch_size=16",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists()
    assert not (run / "config.json").exists()
    assert not list(run.glob(".*.tmp"))  # no half-written files left behind

    # rerun with the same settings: it resumes and only trains the remaining epochs
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "run.json").read_text())
    assert summary["train"]["resumed_from"] == str(last)
    assert summary["train"]["epochs"] == 6
    # the history covers every epoch once (the checkpoint carried the killed segment's rows) ...
    assert [row["epoch"] for row in summary["history"]] == [float(e) for e in range(6)]
    # ... and the resumed segment did not redo the first epoch
    with (run / "logs" / "version_1" / "metrics.csv").open() as fh:
        assert "0" not in {row["epoch"] for row in csv.DictReader(fh)}
    assert (run / "config.json").is_file()
    assert Path(run / "logs" / "version_0" / "metrics.csv").is_file()
    assert Path(run / "logs" / "version_1" / "metrics.csv").is_file()
