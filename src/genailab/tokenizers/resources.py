"""Build a tokenizer's resources (gene sets, GRN edges, gene medians) from the files a run names.

The run config (:class:`~genailab.workflows.runconfig.TokenizerRunFields`) names files; this module reads
them, fits data-driven modules when asked (``gene_sets="nmf"`` / ``"nmf:K"``), maps every gene ID
into the data's ID space (an ``id_map`` TSV, or a ``var`` column of symbols) and returns
:class:`~genailab.tokenizers.TokenizerResources` plus a harmonisation report. The resources are
saved with the model, so a trained model never needs the files again.

Gene dictionaries (Geneformer's ``gene_median_dictionary.pkl`` and the like) are read by
:func:`read_gene_dictionary` from JSON, a two-column TSV or a pickle. A pickle is read by
:class:`DictUnpickler`, which builds only plain containers, strings, numbers and NumPy scalars and
arrays: a pickle that names any other callable (``os.system``, ``builtins.eval``, a class) is refused
before anything runs, since unpickling it could execute code.
"""

from __future__ import annotations

import csv
import json
import math
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

from genailab.data.counts import log_normalize
from genailab.data.gene_sets import read_edges, read_gmt
from genailab.data.genes import GeneIdMap, detect_id_type
from genailab.errors import InvalidInputError, MissingKeyError
from genailab.tokenizers.base import TokenizerResources
from genailab.tokenizers.grn import harmonize_edges
from genailab.tokenizers.modules import fit_nmf_modules
from genailab.tokenizers.pathway import harmonize_gene_sets
from genailab.tokenizers.rank import gene_medians_from_geneformer

__all__ = [
    "DICTIONARY_SUFFIXES",
    "RESOURCE_USERS",
    "SAFE_PICKLE_GLOBALS",
    "DictUnpickler",
    "load_tokenizer_resources",
    "read_gene_dictionary",
]

#: Which resource each built-in tokenizer reads (a resource given to a tokenizer that ignores it is an error).
RESOURCE_USERS: dict[str, frozenset[str]] = {
    "latent": frozenset(),
    "pathway": frozenset({"gene_sets"}),
    "latent+pathway": frozenset({"gene_sets"}),
    "grn": frozenset({"grn"}),
    "grn+latent": frozenset({"grn"}),
    "rank": frozenset({"gene_medians"}),
}


#: The globals a pickled dictionary of plain values may name: containers, the codec protocol 0-2 pickles use
#: for bytes, and NumPy's scalar and array reconstructors (NumPy 1 ``numpy.core`` and NumPy 2 ``numpy._core``).
#: None of them runs code of the pickle's choosing.
SAFE_PICKLE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {(mod, name) for mod in ("builtins", "__builtin__") for name in ("set", "frozenset", "bytearray")}
    | {("collections", "OrderedDict"), ("_codecs", "encode"), ("numpy", "dtype"), ("numpy", "ndarray")}
    | {(f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("scalar", "_reconstruct")}
    | {(f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")}
)

#: File kinds :func:`read_gene_dictionary` reads (any other suffix is read as a pickle).
DICTIONARY_SUFFIXES = (".json", ".tsv", ".pkl")


class DictUnpickler(pickle.Unpickler):
    """An unpickler that builds plain dictionaries only: every global outside :data:`SAFE_PICKLE_GLOBALS` is refused.

    Parameters
    ----------
    file
        The open binary pickle.
    source
        The file's name, for the error message.
    """

    def __init__(self, file: IO[bytes], *, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed global (NumPy 1 names to their NumPy 2 home); refuse any other."""
        if (module, name) not in SAFE_PICKLE_GLOBALS:
            raise InvalidInputError(
                f"{self.source!r} is a pickle that refers to {module}.{name}, which a dictionary of genes, "
                "strings and numbers never needs; genailab refused to load it, since unpickling it could run "
                "code. Only dict, list, tuple, set, str, int, float, bool, None and NumPy scalars/arrays are "
                "read from pickles; give the dictionary as .json or a two-column .tsv (gene, value) instead."
            )
        if module.startswith("numpy.core."):  # written by NumPy 1; NumPy 2 moved the module to numpy._core
            try:
                return super().find_class(module.replace("numpy.core.", "numpy._core.", 1), name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def _tsv_value(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


#: First-column names that mark the first TSV row as a header.
_TSV_HEADERS = frozenset({"gene", "genes", "gene_id", "gene_name", "symbol", "ensembl_id", "ensembl", "id", "key"})


def _read_tsv_dictionary(path: Path, *, argument: str) -> dict[str, Any]:
    """``gene<TAB>value`` rows (numbers where they parse); ``#`` comments and a header row are skipped.

    The first row is a header when its first column is a usual header name (``gene``, ``symbol``, ...) or
    when its value is text above numeric values.
    """
    with path.open(newline="", encoding="utf-8") as fh:
        rows = [[c.strip() for c in r] for r in csv.reader(fh, delimiter="\t") if r and not r[0].startswith("#")]
    for i, row in enumerate(rows):
        if len(row) != 2:
            raise InvalidInputError(
                f"{argument}={str(path)!r} row {i + 1} has {len(row)} column(s); expected two tab-separated "
                "columns: gene, value."
            )
    values = [_tsv_value(v) for _, v in rows]
    header = bool(rows) and (
        rows[0][0].lower() in _TSV_HEADERS
        or (isinstance(values[0], str) and len(values) > 1 and isinstance(values[1], float))
    )
    start = 1 if header else 0
    return {gene: value for (gene, _), value in zip(rows[start:], values[start:], strict=True)}


def _read_pickle_dictionary(path: Path, *, argument: str) -> Any:
    with path.open("rb") as fh:
        try:
            return DictUnpickler(fh, source=str(path)).load()
        except InvalidInputError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as err:
            raise InvalidInputError(
                f"{argument}={str(path)!r} is not a readable pickle ({type(err).__name__}: {err}); expected a "
                f"gene dictionary ({', '.join(DICTIONARY_SUFFIXES)})."
            ) from err


def read_gene_dictionary(path: str | Path, *, argument: str = "path") -> dict[str, Any]:
    """Read a dictionary of gene -> value from ``.json``, a two-column ``.tsv`` or a pickle (restricted).

    Parameters
    ----------
    path
        The file: a JSON object, tab-separated ``gene<TAB>value`` rows (an optional header), or a pickled
        ``dict`` (Geneformer's ``.pkl`` dictionaries) read by :class:`DictUnpickler`.
    argument
        The option or field that named the file, for error messages.

    Returns
    -------
    The dictionary, keys as strings.

    Raises
    ------
    InvalidInputError
        A missing or unreadable file, one that does not hold a dictionary, or a pickle that names anything
        but plain containers, strings, numbers and NumPy scalars/arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(
            f"{argument}={str(path)!r} does not exist; expected a gene dictionary ({', '.join(DICTIONARY_SUFFIXES)})."
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            table = json.loads(path.read_text(encoding="utf-8"))
        elif suffix == ".tsv":
            table = _read_tsv_dictionary(path, argument=argument)
        else:
            table = _read_pickle_dictionary(path, argument=argument)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"{argument}={str(path)!r} is not readable {suffix[1:]} text: {err}.") from err
    except OSError as err:
        raise InvalidInputError(f"{argument}={str(path)!r} cannot be read: {err.strerror or err}.") from err
    if not isinstance(table, dict):
        raise InvalidInputError(
            f"{argument}={str(path)!r} holds a {type(table).__name__}, not a dictionary of gene -> value."
        )
    bad = [k for k in table if not isinstance(k, (str, int))]
    if bad:
        raise InvalidInputError(
            f"{argument}={str(path)!r} has keys that are not gene names (e.g. {bad[0]!r}); expected gene -> value."
        )
    return {str(k): v for k, v in table.items()}


def _numeric_table(table: dict[str, Any], *, argument: str, path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in table.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"{argument}={str(path)!r} maps {key!r} to {value!r}, which is not a number; expected gene -> median."
            ) from None
    return out


def _id_map(adata: Any, config: Any) -> Any:
    if config.id_map is not None:
        return GeneIdMap.from_tsv(config.id_map)
    if config.symbols_key is not None:
        if config.symbols_key not in adata.var.columns:
            raise MissingKeyError(
                f"symbols_key={config.symbols_key!r} is not a var column; available: {list(adata.var.columns)}."
            )
        symbols = [str(s) for s in adata.var[config.symbols_key]]
        return GeneIdMap.from_pairs(zip(symbols, [str(g) for g in adata.var_names], strict=True))
    return None


def _nmf_count(spec: str, default: int) -> int:
    _, _, k = spec.partition(":")
    if not k:
        return default
    try:
        n = int(k)
    except ValueError:
        raise InvalidInputError(f"gene_sets={spec!r}: expected 'nmf' or 'nmf:K' with an integer K.") from None
    if n < 2:
        raise InvalidInputError(f"gene_sets={spec!r}: K must be at least 2.")
    return n


def _log_expression(adata: Any, rows: np.ndarray | None, layer: str | None, max_cells: int, seed: int) -> np.ndarray:
    """Log-normalised counts (CP10k) of up to ``max_cells`` of ``rows``, drawn with ``seed``."""
    rows = np.arange(adata.n_obs) if rows is None else np.asarray(rows)
    if len(rows) > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_cells, replace=False))
    sub = adata[rows]
    return log_normalize(sub.layers[layer] if layer is not None else sub.X, target_sum=1e4)


def load_tokenizer_resources(
    adata: Any, config: Any, *, rows: np.ndarray | None = None, seed: int = 0
) -> tuple[TokenizerResources, dict[str, Any]]:
    """Read and harmonise the resources a run's tokenizer needs.

    Parameters
    ----------
    adata
        The training data (its ``var_names`` are the model's genes).
    config
        A run config with the :class:`~genailab.workflows.runconfig.TokenizerRunFields` fields and ``data``.
    rows
        The training rows (data-driven modules are fitted on them only).
    seed
        Seeds the module fit.

    Returns
    -------
    The resources and a JSON-able report (files read, genes matched and dropped, modules fitted).

    Raises
    ------
    InvalidInputError
        For a resource the chosen tokenizer does not use, or a file whose genes do not match.
    """
    name = config.tokenizer.name
    given = {k for k in ("gene_sets", "grn", "gene_medians") if getattr(config, k) is not None}
    used = RESOURCE_USERS.get(name)
    if used is not None and given - used:
        extra = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(given - used))
        raise InvalidInputError(
            f"{extra} given, but tokenizer {name!r} does not use it; tokenizers that do: "
            + "; ".join(
                f"{k.replace('_', '-')}: {', '.join(n for n, u in RESOURCE_USERS.items() if k in u)}"
                for k in sorted(given - used)
            )  # fmt: skip
            + "."
        )
    genes = [str(g) for g in adata.var_names]
    id_map = _id_map(adata, config)
    report: dict[str, Any] = {}
    gene_sets = edges = medians = None
    if config.gene_sets is not None:
        spec = str(config.gene_sets)
        if spec == "nmf" or spec.startswith("nmf:"):
            k = _nmf_count(spec, config.n_modules)
            layer = config.data.layer if hasattr(config, "data") else None
            per = min(config.module_genes, len(genes))
            x = _log_expression(adata, rows, layer, 5000, seed)
            gene_sets = fit_nmf_modules(x, genes, n_modules=k, genes_per_module=per, seed=seed)
            report["gene_sets"] = {"source": "nmf", "n_modules": k, "genes_per_module": per}
        else:
            gene_sets, rep = harmonize_gene_sets(read_gmt(spec), genes, id_map=id_map)
            report["gene_sets"] = {"source": str(Path(spec).resolve()), **rep}
    if config.grn is not None:
        edges, rep = harmonize_edges(read_edges(config.grn), genes, id_map=id_map)
        report["grn"] = {"source": str(Path(config.grn).resolve()), **rep}
    if config.gene_medians is not None:
        path = Path(config.gene_medians)
        table = _numeric_table(read_gene_dictionary(path, argument="gene_medians"), argument="gene_medians", path=path)
        keys = list(table)
        if not keys:
            raise InvalidInputError(f"gene_medians={str(path)!r} is empty.")
        if detect_id_type(keys) == detect_id_type(genes):  # same ID space: a direct lookup
            values = {g: table[g] for g in genes if g in table}
            medians = {g: v for g, v in values.items() if math.isfinite(v) and v > 0}  # others use 1
        else:
            if id_map is None:
                raise InvalidInputError(
                    f"gene_medians={str(path)!r} is keyed by {detect_id_type(keys)} IDs but the data's genes are "
                    f"{detect_id_type(genes)}s; pass --id-map (a symbol/ensembl_id TSV) or --symbols-key (a var "
                    "column of symbols)."
                )
            medians = gene_medians_from_geneformer(table, id_map.symbol_to_ensembl, genes)
        if not medians:
            raise InvalidInputError(f"gene_medians={str(path)!r} has no median for any of the data's genes.")
        report["gene_medians"] = {"source": str(path.resolve()), "n_matched": len(medians), "n_genes": len(genes)}
    return TokenizerResources(gene_sets=gene_sets, edges=edges, gene_medians=medians), report
