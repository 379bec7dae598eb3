"""Readers for prior knowledge: gene sets (GMT) and regulatory edge lists (TSV/CSV).

Both readers are format-level and general: they return plain Python/numpy structures that pathway and
GRN tokenizers, perturbation priors and pathway-consistency metrics build on.

* :func:`read_gmt` reads MSigDB-style GMT files (``name<TAB>description<TAB>gene<TAB>gene...``), plain
  or gzipped, e.g. the Hallmark collection (Liberzon et al., Cell Systems 2015) or GO Biological Process.
* :func:`read_edges` reads a table of ``source -> target`` edges with an optional sign, e.g. the
  OmniPath exports of CollecTRI (Müller-Dott et al., NAR 2023), DoRothEA or TRRUST.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd

from genailab.errors import InvalidInputError, MissingKeyError

__all__ = ["EdgeList", "read_edges", "read_gmt"]

#: Column names tried, in order, when ``read_edges`` auto-detects the source/target/sign columns.
SOURCE_COLUMNS = ("source_symbol", "source", "tf", "regulator", "from")
TARGET_COLUMNS = ("target_symbol", "target", "gene", "to")
SIGN_COLUMNS = ("mor", "sign", "weight")


def _existing_file(path: str | os.PathLike[str], expected: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"path={str(path)!r} does not exist or is not a file; expected {expected}.")
    return p


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_gmt(path: str | os.PathLike[str]) -> dict[str, tuple[str, ...]]:
    """Read a GMT gene-set file (plain or ``.gz``).

    Each non-empty line is ``name<TAB>description<TAB>gene1<TAB>gene2...``. Genes are stripped, empty
    fields dropped and duplicates removed keeping the first occurrence.

    Parameters
    ----------
    path
        A ``.gmt`` or ``.gmt.gz`` file.

    Returns
    -------
    dict[str, tuple[str, ...]]
        Set name -> its genes, in file order.

    Raises
    ------
    InvalidInputError
        If the file is missing, unreadable, holds no sets, has a line without genes (the line number is
        given) or names a set twice.
    """
    p = _existing_file(path, "a GMT gene-set file (.gmt or .gmt.gz)")
    sets: dict[str, tuple[str, ...]] = {}
    try:
        with _open_text(p) as fh:
            for lineno, line in enumerate(fh, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                name = fields[0].strip()
                if not name:
                    raise InvalidInputError(f"{str(p)!r} line {lineno}: empty gene-set name; expected name<TAB>...")
                genes = tuple(dict.fromkeys(g.strip() for g in fields[2:] if g.strip()))
                if not genes:
                    raise InvalidInputError(
                        f"{str(p)!r} line {lineno}: gene set {name!r} lists no genes; expected "
                        "name<TAB>description<TAB>gene1<TAB>gene2... (tab-separated)."
                    )
                if name in sets:
                    raise InvalidInputError(
                        f"{str(p)!r} line {lineno}: gene set {name!r} appears twice; set names must be unique."
                    )
                sets[name] = genes
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise InvalidInputError(f"path={str(p)!r} could not be read as a GMT text file: {err}.") from err
    if not sets:
        raise InvalidInputError(f"path={str(p)!r} holds no gene sets; expected at least one GMT line.")
    return sets


@dataclasses.dataclass(frozen=True)
class EdgeList:
    """Directed ``source -> target`` edges with a sign.

    Parameters
    ----------
    source
        Regulator ids, shape ``(E,)``, dtype ``str``.
    target
        Target ids, shape ``(E,)``, dtype ``str``.
    sign
        Edge sign, shape ``(E,)``, float: ``+1`` activation, ``-1`` inhibition, ``0`` unknown/mixed.
    """

    source: np.ndarray
    target: np.ndarray
    sign: np.ndarray

    def __post_init__(self) -> None:
        src = np.asarray(self.source, dtype=str)
        tgt = np.asarray(self.target, dtype=str)
        sgn = np.asarray(self.sign, dtype=np.float64)
        if src.ndim != 1 or tgt.shape != src.shape or sgn.shape != src.shape:
            raise InvalidInputError(
                f"EdgeList source/target/sign must be 1-D of one length, got shapes {src.shape}, {tgt.shape}, "
                f"{sgn.shape}."
            )
        if not np.isfinite(sgn).all():
            raise InvalidInputError("EdgeList sign must be finite; got NaN or infinite values.")
        object.__setattr__(self, "source", src)
        object.__setattr__(self, "target", tgt)
        object.__setattr__(self, "sign", sgn)

    def __len__(self) -> int:
        return int(self.source.shape[0])

    @property
    def genes(self) -> tuple[str, ...]:
        """Sorted union of source and target ids."""
        return tuple(sorted(set(self.source.tolist()) | set(self.target.tolist())))


def _pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], role: str, path: Path) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise MissingKeyError(
                f"{role}_col={wanted!r} is not a column of {str(path)!r}; available columns: {', '.join(columns)}."
            )
        return wanted
    lower = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    raise MissingKeyError(
        f"{str(path)!r} has no {role} column (looked for {', '.join(candidates)}); available columns: "
        f"{', '.join(columns)}. Pass {role}_col=... to name it."
    )


def read_edges(
    path: str | os.PathLike[str],
    *,
    source_col: str | None = None,
    target_col: str | None = None,
    sign_col: str | None = None,
) -> EdgeList:
    """Read a table of regulatory edges (TSV or CSV, optionally ``.gz``).

    Columns are auto-detected unless named: the source is the first of ``source_symbol``, ``source``,
    ``tf``, ``regulator``, ``from``; the target the first of ``target_symbol``, ``target``, ``gene``, ``to``
    (symbol columns win, so OmniPath exports whose ``target`` holds UniProt accessions give symbols); the
    sign the first of ``mor``, ``sign``, ``weight`` (reduced to its sign), else ``+1`` for every edge.
    Rows with an empty source or target are dropped.

    Parameters
    ----------
    path
        A ``.tsv``/``.txt`` (tab-separated) or ``.csv`` (comma-separated) file, optionally gzipped.
    source_col, target_col, sign_col
        Column names overriding auto-detection.

    Returns
    -------
    EdgeList
        The edges in file order.

    Raises
    ------
    MissingKeyError
        If a named or required column is absent (the available columns are listed).
    InvalidInputError
        If the file is missing or unreadable, the sign column is not numeric, or no edge remains.
    """
    p = _existing_file(path, "an edge table (.tsv/.csv, optionally .gz)")
    suffixes = [s.lower() for s in p.suffixes if s.lower() != ".gz"]
    sep = "," if suffixes and suffixes[-1] == ".csv" else "\t"
    try:
        table = pd.read_csv(p, sep=sep, dtype=str, keep_default_na=False, compression="infer")
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError, EOFError) as err:
        raise InvalidInputError(
            f"path={str(p)!r} could not be read as a {'CSV' if sep == ',' else 'TSV'}: {err}."
        ) from err
    columns = [str(c) for c in table.columns]
    src_col = _pick_column(columns, source_col, SOURCE_COLUMNS, "source", p)
    tgt_col = _pick_column(columns, target_col, TARGET_COLUMNS, "target", p)
    if sign_col is None:
        lower = {c.lower(): c for c in columns}
        sign_col = next((lower[c] for c in SIGN_COLUMNS if c in lower), None)
    elif sign_col not in columns:
        raise MissingKeyError(
            f"sign_col={sign_col!r} is not a column of {str(p)!r}; available columns: {', '.join(columns)}."
        )
    source = table[src_col].str.strip()
    target = table[tgt_col].str.strip()
    keep = (source != "") & (target != "") & source.str.lower().ne("nan") & target.str.lower().ne("nan")
    if sign_col is None:
        sign = np.ones(len(table), dtype=np.float64)
    else:
        raw = pd.to_numeric(table[sign_col].str.strip().replace("", "0"), errors="coerce")
        if raw[keep].isna().any():
            bad = table[sign_col][keep & raw.isna()].iloc[0]
            raise InvalidInputError(
                f"sign column {sign_col!r} of {str(p)!r} must be numeric; got {bad!r}. Pass sign_col=... to pick "
                "another column."
            )
        sign = np.sign(raw.fillna(0).to_numpy(dtype=np.float64))
    keep_arr = keep.to_numpy()
    if not keep_arr.any():
        raise InvalidInputError(
            f"path={str(p)!r} holds no edges with a non-empty {src_col!r} and {tgt_col!r}; expected at least one."
        )
    return EdgeList(
        source=source.to_numpy()[keep_arr].astype(str),
        target=target.to_numpy()[keep_arr].astype(str),
        sign=sign[keep_arr],
    )
