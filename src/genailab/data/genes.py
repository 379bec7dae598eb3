"""Mapping a dataset's genes onto a model's gene list.

A pretrained model has a fixed, ordered gene list; a dataset measures another set of genes, named by
symbols (``CD3D``) or Ensembl IDs (``ENSG00000167286``, possibly with a version suffix ``.12``).
:func:`align_genes` matches the two (translating between symbols and Ensembl IDs with a
:class:`GeneIdMap` when their ID types differ) and returns a :class:`GeneAlignment` whose report says
how many genes matched; :func:`apply_alignment` reorders count rows into the model's gene order,
zero-filling genes the dataset did not measure (the alignment's ``mask`` marks them).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from genailab.errors import GeneOverlapError, InvalidInputError, MissingKeyError

__all__ = [
    "GeneAlignment",
    "GeneAlignmentReport",
    "GeneIdMap",
    "align_genes",
    "apply_alignment",
    "detect_id_type",
    "strip_ensembl_version",
]

_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
_VERSION_RE = re.compile(r"^(ENS[A-Z]*G\d{6,})\.\d+$")
_N_EXAMPLES = 5


def strip_ensembl_version(name: str) -> str:
    """``'ENSG00000141510.17'`` -> ``'ENSG00000141510'``; other names are returned unchanged."""
    m = _VERSION_RE.match(name)
    return m.group(1) if m else name


@dataclasses.dataclass(frozen=True, eq=False)
class GeneIdMap:
    """A symbol <-> Ensembl ID mapping (any mapping the user provides).

    When a symbol maps to several Ensembl IDs (or an ID to several symbols), the first pair read wins.
    Ensembl version suffixes are stripped.

    Attributes
    ----------
    symbol_to_ensembl
        Symbol -> Ensembl ID.
    ensembl_to_symbol
        Ensembl ID -> symbol.
    """

    symbol_to_ensembl: Mapping[str, str]
    ensembl_to_symbol: Mapping[str, str]

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> GeneIdMap:
        """Build from ``(symbol, ensembl_id)`` pairs (pairs with an empty or missing member are skipped)."""
        s2e: dict[str, str] = {}
        e2s: dict[str, str] = {}
        for item in pairs:
            try:
                symbol, ensembl = item
            except (TypeError, ValueError):
                raise InvalidInputError(f"pairs must hold (symbol, ensembl_id) tuples, got {item!r}.") from None
            if not isinstance(symbol, str) or not isinstance(ensembl, str) or not symbol or not ensembl:
                continue
            ensembl = strip_ensembl_version(ensembl.strip())
            symbol = symbol.strip()
            s2e.setdefault(symbol, ensembl)
            e2s.setdefault(ensembl, symbol)
        if not s2e:
            raise InvalidInputError("GeneIdMap: no (symbol, ensembl_id) pairs given; the map would be empty.")
        return cls(symbol_to_ensembl=s2e, ensembl_to_symbol=e2s)

    @classmethod
    def from_tsv(
        cls,
        path: str | os.PathLike[str],
        symbol_col: str = "symbol",
        ensembl_col: str = "ensembl_id",
    ) -> GeneIdMap:
        """Read a tab-separated file (``.gz`` allowed) with a header row.

        Parameters
        ----------
        path
            The file, e.g. ``shared/data/gene_sets/orgHs_symbol_ensembl_entrez.tsv.gz``.
        symbol_col, ensembl_col
            Header names of the symbol and Ensembl ID columns.

        Raises
        ------
        InvalidInputError
            If the file does not exist or cannot be parsed.
        MissingKeyError
            If a named column is absent (the message lists the columns).
        """
        import pandas as pd

        p = Path(path)
        if not p.is_file():
            raise InvalidInputError(f"path={str(path)!r} does not exist or is not a file; expected a TSV gene map.")
        try:
            df = pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False)
        except Exception as err:  # pandas raises many parser errors
            raise InvalidInputError(f"path={str(path)!r} could not be read as a TSV file: {err}") from err
        for arg, col in (("symbol_col", symbol_col), ("ensembl_col", ensembl_col)):
            if col not in df.columns:
                raise MissingKeyError(
                    f"{arg}={col!r} is not a column of {str(path)!r}; columns are {list(df.columns)}."
                )
        return cls.from_pairs(zip(df[symbol_col].tolist(), df[ensembl_col].tolist(), strict=True))

    def __len__(self) -> int:
        return len(self.symbol_to_ensembl)

    def __repr__(self) -> str:
        return f"GeneIdMap({len(self.symbol_to_ensembl)} symbols, {len(self.ensembl_to_symbol)} Ensembl IDs)"

    def translate(self, names: Sequence[str], to: Literal["ensembl", "symbol"]) -> list[str | None]:
        """Translate names to ``to`` IDs (``None`` where the map has no entry)."""
        if to == "ensembl":
            return [self.symbol_to_ensembl.get(n) for n in names]
        if to == "symbol":
            return [self.ensembl_to_symbol.get(strip_ensembl_version(n)) for n in names]
        raise InvalidInputError(f"to={to!r} is not allowed; expected 'ensembl' or 'symbol'.")


def _as_names(names: Any, argument: str) -> list[str]:
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise InvalidInputError(f"{argument} must be a sequence of gene names, got {type(names).__name__}.")
    out = list(names)
    bad = [n for n in out if not isinstance(n, str)]
    if bad:
        raise InvalidInputError(f"{argument} must hold strings; found {bad[0]!r} ({type(bad[0]).__name__}).")
    return out


def detect_id_type(names: Sequence[str]) -> Literal["ensembl", "symbol"]:
    """Guess whether gene names are Ensembl IDs (``ENSG``, ``ENSMUSG``, ... prefix) or symbols.

    Names count as Ensembl when more than half match ``ENS<species>G<digits>[.version]``.

    Raises
    ------
    InvalidInputError
        If ``names`` is empty or not a sequence of strings.
    """
    values = _as_names(names, "names")
    if not values:
        raise InvalidInputError("names is empty; cannot detect the gene ID type of an empty gene list.")
    n_ens = sum(1 for n in values if _ENSEMBL_RE.match(n))
    return "ensembl" if n_ens * 2 > len(values) else "symbol"


@dataclasses.dataclass(frozen=True)
class GeneAlignmentReport:
    """How a dataset's genes matched a model's gene list.

    Attributes
    ----------
    n_target
        Genes in the model's list.
    n_source
        Genes in the dataset (including duplicates).
    n_matched
        Target genes found in the dataset.
    n_missing
        Target genes not measured (zero-filled and masked).
    n_extra
        Distinct dataset genes not in the target list (ignored), including untranslatable ones.
    n_duplicates
        Dataset genes dropped because an earlier gene had the same (normalised) name.
    fraction_matched
        ``n_matched / n_target``.
    translated
        Whether dataset names were translated between symbols and Ensembl IDs.
    source_id_type, target_id_type
        Detected ID types.
    n_untranslated
        Dataset genes the ID map could not translate (0 without translation).
    missing_examples, extra_examples
        Up to five missing target genes and extra dataset genes.
    """

    n_target: int
    n_source: int
    n_matched: int
    n_missing: int
    n_extra: int
    n_duplicates: int
    fraction_matched: float
    translated: bool
    source_id_type: str = "symbol"
    target_id_type: str = "symbol"
    n_untranslated: int = 0
    missing_examples: tuple[str, ...] = ()
    extra_examples: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = (
            f"{self.n_matched} of {self.n_target} model genes ({self.fraction_matched:.1%}) were found "
            "among the "
            f"{self.n_source} dataset genes; {self.n_missing} are missing and will be zero-filled and masked"
        )
        if self.missing_examples:
            text += f" (e.g. {', '.join(self.missing_examples)})"
        text += f"; {self.n_extra} dataset genes are not in the model and are ignored"
        if self.extra_examples:
            text += f" (e.g. {', '.join(self.extra_examples)})"
        text += "."
        if self.translated:
            text += (
                f" Dataset {self.source_id_type} names were translated to {self.target_id_type} names with "
                "the "
                f"ID map ({self.n_untranslated} had no entry)."
            )
        if self.n_duplicates:
            text += f" {self.n_duplicates} duplicate dataset genes were dropped (first occurrence kept)."
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain-data dict."""
        out = dataclasses.asdict(self)
        out["missing_examples"] = list(self.missing_examples)
        out["extra_examples"] = list(self.extra_examples)
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class GeneAlignment:
    """Where each model gene is in a dataset.

    Attributes
    ----------
    source_index
        ``(G_target,)`` int64: column of each model gene in the dataset, ``-1`` if missing.
    mask
        ``(G_target,)`` bool: whether the model gene was measured.
    report
        A :class:`GeneAlignmentReport`.
    target_genes
        The model's gene names, in order.
    """

    source_index: np.ndarray
    mask: np.ndarray
    report: GeneAlignmentReport
    target_genes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        idx = np.asarray(self.source_index, dtype=np.int64)
        mask = np.asarray(self.mask, dtype=bool)
        if idx.ndim != 1 or mask.shape != idx.shape or not np.array_equal(mask, idx >= 0):
            raise InvalidInputError(
                "GeneAlignment: source_index and mask must be 1-D, equal length, mask == index >= 0."
            )
        object.__setattr__(self, "source_index", idx)
        object.__setattr__(self, "mask", mask)

    @property
    def n_target(self) -> int:
        """Number of model genes."""
        return int(self.source_index.shape[0])

    @property
    def n_source(self) -> int:
        """Number of dataset genes (columns the alignment expects)."""
        return self.report.n_source

    def __str__(self) -> str:
        return str(self.report)


def align_genes(
    source_genes: Sequence[str],
    target_genes: Sequence[str],
    *,
    id_map: GeneIdMap | None = None,
    min_overlap: float | int = 0.0,
    argument: str = "adata",
) -> GeneAlignment:
    """Match a dataset's genes (``source_genes``) to a model's gene list (``target_genes``).

    Ensembl version suffixes are stripped on both sides. When the two lists use different ID types
    (symbols vs Ensembl IDs), the dataset names are translated to the model's type with ``id_map``.
    Duplicate dataset genes keep their first occurrence and are counted in the report.

    Parameters
    ----------
    source_genes
        The dataset's gene names (e.g. ``adata.var_names``).
    target_genes
        The model's gene names, unique, in model order.
    id_map
        Symbol <-> Ensembl map, needed only when the ID types differ.
    min_overlap
        Least acceptable overlap: a float in ``[0, 1]`` is a fraction of the target genes, an int a
        number of genes. Zero overlap always raises.
    argument
        Name of the dataset argument, used in error messages.

    Returns
    -------
    A :class:`GeneAlignment`.

    Raises
    ------
    GeneOverlapError
        If no gene (or fewer than ``min_overlap``) matches, or the ID types differ and no ``id_map``
        was given.
    InvalidInputError
        For empty or non-string gene lists, duplicate target genes or a bad ``min_overlap``.

    Examples
    --------
    >>> al = align_genes(["B", "A", "Z"], ["A", "B", "C"])
    >>> al.source_index.tolist(), al.report.n_missing
    ([1, 0, -1], 1)
    """
    source = _as_names(source_genes, f"{argument} genes")
    target = _as_names(target_genes, "target_genes")
    if not source:
        raise InvalidInputError(f"{argument} has no genes; expected at least one gene name.")
    if not target:
        raise InvalidInputError("target_genes is empty; expected the model's gene list.")
    if id_map is not None and not isinstance(id_map, GeneIdMap):
        raise InvalidInputError(f"id_map must be a GeneIdMap or None, got {type(id_map).__name__}.")
    if isinstance(min_overlap, np.integer):
        min_overlap = int(min_overlap)
    elif isinstance(min_overlap, np.floating):
        min_overlap = float(min_overlap)
    if isinstance(min_overlap, bool) or not isinstance(min_overlap, (int, float)):
        raise InvalidInputError(f"min_overlap={min_overlap!r} must be a fraction in [0, 1] or a gene count.")
    if isinstance(min_overlap, float) and not 0.0 <= min_overlap <= 1.0:
        raise InvalidInputError(f"min_overlap={min_overlap!r} as a float must be a fraction in [0, 1].")
    if isinstance(min_overlap, int) and min_overlap < 0:
        raise InvalidInputError(f"min_overlap={min_overlap!r} as an int must be a gene count >= 0.")

    target_norm = [strip_ensembl_version(t) for t in target]
    dup_t = len(target_norm) - len(set(target_norm))
    if dup_t:
        seen: set[str] = set()
        dups = [t for t in target_norm if t in seen or seen.add(t)]
        raise InvalidInputError(
            f"target_genes has {dup_t} duplicate name(s) (e.g. {dups[:3]}); a model's gene list must be unique."
        )
    src_type = detect_id_type(source)
    tgt_type = detect_id_type(target)
    translated = src_type != tgt_type
    n_untranslated = 0
    if translated:
        if id_map is None:
            raise GeneOverlapError(
                f"{argument} genes look like {src_type} names (e.g. {', '.join(source[:3])}) but the "
                "model's genes "
                f"are {tgt_type} names (e.g. {', '.join(target[:3])}); pass id_map=GeneIdMap.from_tsv(...) "
                "to "
                "translate between them, or use a var column holding the other ID type "
                "(e.g. adata.var['feature'])."
            )
        keys: list[str | None] = id_map.translate(source, to=tgt_type)
        n_untranslated = sum(k is None for k in keys)
    else:
        keys = [strip_ensembl_version(s) for s in source]

    position: dict[str, int] = {}
    n_duplicates = 0
    for i, k in enumerate(keys):
        if k is None:
            continue
        if k in position:
            n_duplicates += 1
        else:
            position[k] = i
    source_index = np.array([position.get(t, -1) for t in target_norm], dtype=np.int64)
    mask = source_index >= 0
    n_target = len(target)
    n_matched = int(mask.sum())
    target_set = set(target_norm)
    extra = [source[i] for i, k in enumerate(keys) if k is None or (k not in target_set and position.get(k) == i)]
    report = GeneAlignmentReport(
        n_target=n_target,
        n_source=len(source),
        n_matched=n_matched,
        n_missing=n_target - n_matched,
        n_extra=len(extra),
        n_duplicates=n_duplicates,
        fraction_matched=n_matched / n_target,
        translated=translated,
        source_id_type=src_type,
        target_id_type=tgt_type,
        n_untranslated=n_untranslated,
        missing_examples=tuple(target[j] for j in np.flatnonzero(~mask)[:_N_EXAMPLES]),
        extra_examples=tuple(extra[:_N_EXAMPLES]),
    )
    if n_matched == 0:
        hint = (
            f" The names were translated with the ID map ({n_untranslated} of {len(source)} had no entry); "
            "check that it covers this species."
            if translated
            else f" Both lists look like {src_type} names; check the species, the case of the symbols and "
            "that you passed the right var column."
        )
        raise GeneOverlapError(
            f"{argument} shares no genes with the model's {n_target} genes (dataset e.g. "
            f"{', '.join(source[:3])}; "
            f"model e.g. {', '.join(target[:3])}).{hint}"
        )
    required = min_overlap * n_target if isinstance(min_overlap, float) else min_overlap
    if n_matched < required:
        raise GeneOverlapError(
            f"{argument} shares {n_matched} of the model's {n_target} genes ({report.fraction_matched:.1%}); "
            f"min_overlap={min_overlap!r} requires at least {int(np.ceil(required))}. {report}"
        )
    return GeneAlignment(source_index=source_index, mask=mask, report=report, target_genes=tuple(target))


def apply_alignment(matrix_rows: Any, alignment: GeneAlignment) -> np.ndarray:
    """Reorder count rows into the model's gene order, zero-filling missing genes.

    Parameters
    ----------
    matrix_rows
        ``(B, G_source)`` dense array or scipy sparse (CSR) rows.
    alignment
        From :func:`align_genes`.

    Returns
    -------
    ``(B, G_target)`` float32 array.

    Raises
    ------
    InvalidInputError
        If the number of columns is not the alignment's number of dataset genes.
    """
    if not isinstance(alignment, GeneAlignment):
        raise InvalidInputError(f"alignment must be a GeneAlignment, got {type(alignment).__name__}.")
    shape = getattr(matrix_rows, "shape", None)
    if shape is None or len(shape) != 2 or shape[1] != alignment.n_source:
        raise InvalidInputError(
            f"matrix_rows has shape {shape}; expected (B, {alignment.n_source}) columns in the dataset's gene order."
        )
    n_rows = int(shape[0])
    g_t = alignment.n_target
    cols = alignment.source_index[alignment.mask]
    if sp.issparse(matrix_rows):
        csr = sp.csr_matrix(matrix_rows)
        lut = np.full(alignment.n_source, -1, dtype=np.int64)
        lut[cols] = np.flatnonzero(alignment.mask)
        target_col = lut[csr.indices]
        keep = target_col >= 0
        rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(csr.indptr))
        flat = rows[keep] * g_t + target_col[keep]
        out = np.bincount(flat, weights=csr.data[keep], minlength=n_rows * g_t)
        return out.reshape(n_rows, g_t).astype(np.float32)
    dense = np.asarray(matrix_rows)
    out = np.zeros((n_rows, g_t), dtype=np.float32)
    out[:, alignment.mask] = dense[:, cols]
    return out
