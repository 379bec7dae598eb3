"""Bundled and shared real datasets.

:func:`pbmc68k_reduced` is the default demo dataset: scanpy's bundled 700 PBMCs x 765 genes, with
integer counts recovered exactly from its log-normalised ``raw.X``. :func:`load_shared` reads the
real datasets kept outside the repository in a ``shared/data`` folder (see :func:`shared_data_dir`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from anndata import AnnData

from genailab.data.counts import read_h5ad, recover_counts
from genailab.errors import InvalidInputError

__all__ = ["SHARED_DATASETS", "load_shared", "pbmc68k_reduced", "shared_data_dir"]

ENV_VAR = "GENAILAB_SHARED_DATA"

#: name -> candidate file paths inside the shared data folder (first existing one is used).
SHARED_DATASETS: dict[str, tuple[str, ...]] = {
    "pbmc68k_reduced": ("pbmc68k_reduced/pbmc68k_reduced_counts_recovered.h5ad",),
    "kang2018_pbmc_ctrl": ("kang2018_pbmc_ctrl/kang2018_pbmc_ctrl_counts.h5ad",),
    "norman19_mcfaline23": (
        "norman19_mcfaline23/norman19_mcfaline23_counts.h5ad",
        "norman19_mcfaline23/devel_counts_recovered.h5ad",
    ),
}


def shared_data_dir() -> Path | None:
    """Find the real-data folder.

    Looks, in order, at the ``GENAILAB_SHARED_DATA`` environment variable, then for a ``shared/data``
    folder beside one of the parent directories of this file or of the working directory (the
    repository layout is ``<root>/main`` beside ``<root>/shared/data``).

    Returns
    -------
    The folder, or ``None`` when none is found (tests on real data then skip).
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            return path
        warnings.warn(f"{ENV_VAR}={env!r} is not a directory; ignoring it.", stacklevel=2)
    seen: set[Path] = set()
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for parent in (start, *start.parents):
            if parent in seen:
                continue
            seen.add(parent)
            candidate = parent / "shared" / "data"
            if candidate.is_dir():
                return candidate
    return None


def pbmc68k_reduced() -> AnnData:
    """The bundled scanpy ``pbmc68k_reduced`` with integer counts recovered exactly.

    ``raw.X`` of the bundled file is ``log1p(normalize_total(counts, 1e4))`` for its 765 genes and
    ``obs['n_counts']`` holds the library sizes, so
    ``recover_counts(source="raw", method="library_size", library_key="n_counts")`` gives the counts
    (max residual ~0.08 before rounding). ``obs`` (``bulk_labels``, ``louvain``, ...) is kept.

    Returns
    -------
    AnnData with 700 cells x 765 genes and int32 CSR counts in ``X``.

    Raises
    ------
    ImportError
        If scanpy is not installed (``pip install 'genailab[scanpy]'``).
    """
    try:
        import scanpy as sc
    except ImportError as err:
        raise ImportError(
            "pbmc68k_reduced() needs scanpy for its bundled data; install it with pip install 'genailab[scanpy]'."
        ) from err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = sc.datasets.pbmc68k_reduced()
    counts, _ = recover_counts(raw, source="raw", method="library_size", library_key="n_counts", target_sum=1e4)
    return counts


def load_shared(name: str, *, backed: bool = False) -> AnnData:
    """Read one of the shared real datasets by name.

    Parameters
    ----------
    name
        ``"pbmc68k_reduced"``, ``"kang2018_pbmc_ctrl"`` or ``"norman19_mcfaline23"``.
    backed
        Open in backed read-only mode.

    Returns
    -------
    The AnnData (integer counts in ``X``).

    Raises
    ------
    InvalidInputError
        For an unknown name (the message lists the names), or when the shared data folder or the file
        is absent.
    """
    if name not in SHARED_DATASETS:
        raise InvalidInputError(f"unknown shared dataset {name!r}; available: {', '.join(sorted(SHARED_DATASETS))}.")
    root = shared_data_dir()
    if root is None:
        raise InvalidInputError(
            f"the shared data folder was not found, so {name!r} cannot be loaded; set "
            f"{ENV_VAR}=/path/to/shared/data "
            "or place the repository beside a shared/data folder."
        )
    for rel in SHARED_DATASETS[name]:
        path = root / rel
        if path.is_file():
            return read_h5ad(path, backed=backed)
    raise InvalidInputError(
        f"shared dataset {name!r} is absent from {str(root)!r} (looked for {', '.join(SHARED_DATASETS[name])})."
    )
