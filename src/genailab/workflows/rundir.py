"""Run directories: the one home of their file names, the same-run guard and the run records.

A training job's ``--out`` directory holds

- ``run_config.json``, written first once the inputs are validated (:meth:`RunDirectory.check` refuses a
  conflicting run before any work, :meth:`RunDirectory.start` writes the file; a refused input leaves
  ``--out`` free for the corrected rerun): the resolved config, the seed, a description of the inputs and
  the library versions. Rerunning with the same config and data resumes the run; a different config or
  data in the same directory is refused rather than mixed, and so is a directory holding checkpoints or a
  model whose ``run_config.json`` is missing or unreadable (nothing proves they belong to this run).
- ``split.json`` where the job splits cells;
- the model files (written by the recipes, ``config.json`` last);
- ``run.json``, written when training finished: the resolved config again plus the metrics, the per-epoch
  history of every segment (a resumed or rerun run keeps the epochs before it) and wall time.

Jobs that write one file (``vae encode``, ``synth sample``, ``synth counterfactual``) record it beside the
file, in ``OUT.run.json``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genailab.config import Config
from genailab.errors import GenailabError, InvalidInputError
from genailab.io import atomic_write_json
from genailab.serialization import CONFIG_NAME, read_json
from genailab.training.lightning import CHECKPOINT_DIR
from genailab.workflows.runconfig import versions

__all__ = [
    "RUN_CONFIG",
    "RUN_SUMMARY",
    "SPLIT",
    "RunDirectory",
    "check_same_run",
    "merge_history",
    "read_run_config",
    "read_run_summary",
    "run_artifacts",
    "split_path",
    "write_output_record",
]

RUN_CONFIG = "run_config.json"
RUN_SUMMARY = "run.json"
SPLIT = "split.json"
OUTPUT_RECORD_SUFFIX = ".run.json"


@dataclass(frozen=True)
class RunDirectory:
    """A run directory: where it is and the resolved record written to ``run_config.json``.

    Check one with :meth:`check` before validating the inputs, write its ``run_config.json`` with
    :meth:`start` (or :meth:`started`) once they passed, and finish it with :meth:`finish`; :meth:`open`
    checks and starts at once.

    Parameters
    ----------
    path
        The run directory.
    resolved
        ``{"config": ..., "seed": ..., **inputs}``: the part of ``run_config.json`` that a rerun must match
        (``config`` and ``data``), and the first keys of ``run.json``.
    resuming
        Whether ``path`` already held this run's ``run_config.json`` when it was checked (a rerun).
    """

    path: Path
    resolved: dict[str, Any]
    resuming: bool = False

    @classmethod
    def check(cls, out: Path, config: Config, **inputs: Any) -> RunDirectory:
        """Refuse a different run in ``out``; write nothing (validate the inputs, then :meth:`start`).

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
            ``out`` holds a run with a different config or data, or checkpoints/a model without a readable
            ``run_config.json``.
        """
        resolved = {"config": config.to_dict(), "seed": config.seed, **inputs}
        check_same_run(out, resolved)
        return cls(Path(out), resolved, resuming=(Path(out) / RUN_CONFIG).is_file())

    def start(self) -> RunDirectory:
        """Create the directory and write ``run_config.json`` (call once the inputs are validated)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / RUN_CONFIG, {**self.resolved, "versions": versions()})
        return self

    @contextlib.contextmanager
    def started(self) -> Iterator[RunDirectory]:
        """:meth:`start`, undone when the job refuses its input before it trained or saved anything.

        For jobs whose last checks run inside the recipe: a refusal (a :class:`~genailab.errors.GenailabError`)
        raised before the first checkpoint removes the ``run_config.json`` this call wrote, so the corrected
        rerun is not refused as a different run.
        """
        fresh = not self.resuming and not (self.path / RUN_CONFIG).is_file()
        self.start()
        try:
            yield self
        except GenailabError:
            if fresh and not run_artifacts(self.path, nested=True):
                (self.path / RUN_CONFIG).unlink(missing_ok=True)
            raise

    @classmethod
    def open(cls, out: Path, config: Config, **inputs: Any) -> RunDirectory:
        """:meth:`check` then :meth:`start`: refuse a different run in ``out``, create it and write ``run_config.json``.

        Raises
        ------
        InvalidInputError
            See :meth:`check`.
        """
        return cls.check(out, config, **inputs).start()

    @property
    def split_path(self) -> Path:
        """Where the run's cell split is saved."""
        return split_path(self.path)

    def finish(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``run.json``: the resolved record, the model directory, ``record`` and the versions.

        A ``history`` in ``record`` (per-epoch rows with an ``epoch``) is merged with the one of an earlier
        ``run.json`` of this run (:func:`merge_history`), so a rerun or a resumed run keeps every epoch.

        Returns
        -------
        The summary written.
        """
        record = dict(record)
        if isinstance(record.get("history"), list):
            record["history"] = merge_history(_previous_history(self.path), record["history"])
        summary = {**self.resolved, "model_dir": str(self.path), **record, "versions": versions()}
        atomic_write_json(self.path / RUN_SUMMARY, summary)
        return summary


def _previous_history(directory: Path) -> list[Any]:
    """The ``history`` of an earlier ``run.json`` in ``directory`` (``[]`` when it has none or it is unreadable)."""
    try:
        history = json.loads((directory / RUN_SUMMARY).read_text(encoding="utf-8")).get("history")
    except (OSError, ValueError, AttributeError):
        return []
    return history if isinstance(history, list) else []


def merge_history(previous: Sequence[Any], segment: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The full per-epoch history: the ``previous`` rows of epochs before the ``segment``'s first, then it.

    A rerun of a finished run trains nothing (``segment`` empty) and keeps ``previous``; a resumed run
    whose checkpoint carried the history already starts at epoch 0 and replaces it.
    """
    if not segment:
        return list(previous)
    first = segment[0].get("epoch")
    if not isinstance(first, (int, float)):
        return list(segment)
    kept = [
        row
        for row in previous
        if isinstance(row, Mapping) and isinstance(row.get("epoch"), (int, float)) and row["epoch"] < first
    ]
    return [*kept, *segment]


def run_artifacts(directory: Path, *, nested: bool = False) -> list[Path]:
    """What training left in a run directory: ``config.json``, ``run.json`` and checkpoints.

    Parameters
    ----------
    directory
        The run directory.
    nested
        Also count sub-directories that are runs of their own (they hold a ``run_config.json``, like a
        synthesis run's ``vae/``); by default those guard themselves and are left out.
    """
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [d / name for name in (CONFIG_NAME, RUN_SUMMARY) if (d / name).is_file()]
    found += sorted((d / CHECKPOINT_DIR).glob("*.ckpt"))
    for sub in sorted(p for p in d.iterdir() if p.is_dir() and p.name != CHECKPOINT_DIR):
        if nested or not (sub / RUN_CONFIG).is_file():
            found += sorted(sub.glob(f"**/{CHECKPOINT_DIR}/*.ckpt"))
    return found


def split_path(directory: Path) -> Path:
    """Where a run directory's cell split is saved (``split.json``)."""
    return Path(directory) / SPLIT


def _start_over(out: Path) -> str:
    return f"choose another --out, or delete {str(out)!r} to start over."


def check_same_run(out: Path, resolved: Mapping[str, Any]) -> None:
    """Refuse ``out`` unless it is free or holds this very run (same config and data: a rerun resumes it).

    Raises
    ------
    InvalidInputError
        ``run_config.json`` names a different config or data; or it is unreadable; or it is missing while
        ``out`` holds checkpoints or a model (see :func:`run_artifacts`), which a rerun would resume or
        overwrite without knowing their config.
    """
    out = Path(out)
    prev = out / RUN_CONFIG
    if not prev.is_file():
        found = run_artifacts(out)
        if found:
            raise InvalidInputError(
                f"out={str(out)!r} holds {str(found[0].relative_to(out))!r} from an earlier run but no {RUN_CONFIG}, "
                "so nothing shows which config it was trained with; rather than resume or overwrite it, "
                + _start_over(out)
            )
        return
    try:
        old = json.loads(prev.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
        old, reason = None, str(err)
    else:
        reason = "it is not a JSON object"
    if not isinstance(old, dict):
        raise InvalidInputError(
            f"{str(prev)!r} is unreadable ({reason}), so it cannot show that the run in out={str(out)!r} has "
            "the same config; rather than resume or overwrite it, " + _start_over(out)
        )
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
