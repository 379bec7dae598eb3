"""Run directories: the one home of their file names, the same-run guard and the run records.

A training job's ``--out`` directory holds

- ``run_config.json``, written first: the resolved config, the seed, a description of the inputs and the
  library versions. Rerunning with the same config and data resumes the run; a different config or data
  in the same directory is refused rather than mixed.
- ``split.json`` where the job splits cells;
- the model files (written by the recipes, ``config.json`` last);
- ``run.json``, written when training finished: the resolved config again plus the metrics, history and
  wall time.

Jobs that write one file (``vae encode``, ``synth sample``, ``synth counterfactual``) record it beside the
file, in ``OUT.run.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genailab.config import Config
from genailab.errors import InvalidInputError
from genailab.io import atomic_write_json
from genailab.serialization import read_json
from genailab.workflows.runconfig import versions

__all__ = [
    "RUN_CONFIG",
    "RUN_SUMMARY",
    "SPLIT",
    "RunDirectory",
    "check_same_run",
    "read_run_config",
    "read_run_summary",
    "split_path",
    "write_output_record",
]

RUN_CONFIG = "run_config.json"
RUN_SUMMARY = "run.json"
SPLIT = "split.json"
OUTPUT_RECORD_SUFFIX = ".run.json"


@dataclass(frozen=True)
class RunDirectory:
    """An opened run directory: where it is and the resolved record written to ``run_config.json``.

    Open one with :meth:`open`; finish it with :meth:`finish`.

    Parameters
    ----------
    path
        The run directory.
    resolved
        ``{"config": ..., "seed": ..., **inputs}``: the part of ``run_config.json`` that a rerun must match
        (``config`` and ``data``), and the first keys of ``run.json``.
    """

    path: Path
    resolved: dict[str, Any]

    @classmethod
    def open(cls, out: Path, config: Config, **inputs: Any) -> RunDirectory:
        """Refuse a different run in ``out``, create it and write ``run_config.json``.

        Parameters
        ----------
        out
            The run directory (already checked writable).
        config
            The resolved run config (a :class:`~genailab.config.Config` with a ``seed``).
        **inputs
            Descriptions of the inputs, in the order they are recorded (``data``, ``vae_dir``, ``base``, ...).

        Raises
        ------
        InvalidInputError
            ``out`` holds a run with a different config or data.
        """
        resolved = {"config": config.to_dict(), "seed": config.seed, **inputs}
        check_same_run(out, resolved)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / RUN_CONFIG, {**resolved, "versions": versions()})
        return cls(out, resolved)

    @property
    def split_path(self) -> Path:
        """Where the run's cell split is saved."""
        return split_path(self.path)

    def finish(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``run.json``: the resolved record, the model directory, ``record`` and the versions.

        Returns
        -------
        The summary written.
        """
        summary = {**self.resolved, "model_dir": str(self.path), **record, "versions": versions()}
        atomic_write_json(self.path / RUN_SUMMARY, summary)
        return summary


def split_path(directory: Path) -> Path:
    """Where a run directory's cell split is saved (``split.json``)."""
    return Path(directory) / SPLIT


def check_same_run(out: Path, resolved: Mapping[str, Any]) -> None:
    """Refuse ``out`` when it holds a run whose config or data differ from ``resolved`` (same: resume)."""
    prev = out / RUN_CONFIG
    if not prev.is_file():
        return
    try:
        old = json.loads(prev.read_text())
    except json.JSONDecodeError:
        return
    if old.get("config") != resolved["config"] or old.get("data") != resolved["data"]:
        raise InvalidInputError(
            f"out={str(out)!r} already holds a run with a different config or data; rerun with the same "
            "settings to resume it, or choose another --out."
        )


def read_run_config(directory: Path) -> dict[str, Any] | None:
    """The ``run_config.json`` of a run directory, or ``None`` when it has none.

    Raises
    ------
    CheckpointError
        The file is corrupt.
    """
    path = Path(directory) / RUN_CONFIG
    if not path.is_file():
        return None
    return dict(read_json(path, what=f"run config {str(path)!r}"))


def read_run_summary(directory: Path) -> dict[str, Any]:
    """The ``run.json`` of a finished run directory."""
    return json.loads((Path(directory) / RUN_SUMMARY).read_text())


def write_output_record(out: Path, record: Mapping[str, Any], *, suffix: str = OUTPUT_RECORD_SUFFIX) -> Path:
    """Record how a one-file output was made, beside it (``OUT.h5ad`` -> ``OUT.h5ad.run.json``)."""
    return atomic_write_json(out.with_name(out.name + suffix), dict(record))
