"""Atomic writes: every file we produce appears whole or not at all.

Each writer writes to a temporary sibling and renames it into place (``os.replace`` is atomic on
POSIX within one file system), so an interrupted run never leaves a half-written output.
Model directories write each file this way and ``config.json`` last, so a directory without it is
an unfinished save.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genailab.errors import OutputPathError

__all__ = [
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "check_writable",
    "write_h5ad",
]


def check_writable(path: str | os.PathLike[str], *, argument: str = "out") -> Path:
    """Fail early when ``path`` cannot be created, before any expensive work.

    Parameters
    ----------
    path
        A file or directory path that will be written.
    argument
        The argument name used in the error message.

    Returns
    -------
    The path as a :class:`~pathlib.Path`.

    Raises
    ------
    OutputPathError
        If the nearest existing parent is not a writable directory.
    """
    p = Path(path)
    parent = p.parent if not p.is_dir() else p
    probe = parent
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputPathError(
            f"{argument}={str(path)!r} cannot be written: {str(probe)!r} exists and is a file, not a directory."
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"{argument}={str(path)!r} cannot be written: no write permission in {str(probe)!r}. "
            "Choose another output location."
        )
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and atomically rename the result to ``path``.

    Parameters
    ----------
    path
        Final destination.
    write
        A function that writes a complete file at the path it is given.

    Returns
    -------
    The final path.
    """
    dest = check_writable(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputPathError(f"cannot create directory {str(dest.parent)!r}: {err.strerror}.") from err
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write a UTF-8 text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (numpy scalars and arrays are converted)."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=True) + "\n"
    return atomic_write_text(path, text)


def write_h5ad(adata: Any, path: str | os.PathLike[str]) -> Path:
    """Atomically write an AnnData to ``path`` (h5ad)."""
    return atomic_write(path, lambda tmp: adata.write_h5ad(tmp))
