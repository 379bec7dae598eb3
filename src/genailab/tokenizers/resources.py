"""Build a tokenizer's resources (gene sets, GRN edges, gene medians) from the files a run names.

The run config (:class:`~genailab.workflows.runconfig.TokenizerRunFields`) names files; this module reads
them, fits data-driven modules when asked (``gene_sets="nmf"`` / ``"nmf:K"``), maps every gene ID
into the data's ID space (an ``id_map`` TSV, or a ``var`` column of symbols) and returns
:class:`~genailab.tokenizers.TokenizerResources` plus a harmonisation report. The resources are
saved with the model, so a trained model never needs the files again.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

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

__all__ = ["RESOURCE_USERS", "load_tokenizer_resources"]

#: Which resource each built-in tokenizer reads (a resource given to a tokenizer that ignores it is an error).
RESOURCE_USERS: dict[str, frozenset[str]] = {
    "latent": frozenset(),
    "pathway": frozenset({"gene_sets"}),
    "latent+pathway": frozenset({"gene_sets"}),
    "grn": frozenset({"grn"}),
    "grn+latent": frozenset({"grn"}),
    "rank": frozenset({"gene_medians"}),
}


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
        if not path.is_file():
            raise InvalidInputError(f"gene_medians={str(path)!r} does not exist; expected a Geneformer median .pkl.")
        try:
            with path.open("rb") as fh:
                table = pickle.load(fh)  # noqa: S301 - a user-named local file, like Geneformer's own loader
        except (pickle.UnpicklingError, EOFError, OSError) as err:
            raise InvalidInputError(f"gene_medians={str(path)!r} is not a readable pickle: {err}") from err
        if not isinstance(table, dict):
            raise InvalidInputError(f"gene_medians={str(path)!r} must hold a dict of gene ID -> median.")
        keys = [str(k) for k in table]
        if not keys:
            raise InvalidInputError(f"gene_medians={str(path)!r} is empty.")
        if detect_id_type(keys) == detect_id_type(genes):  # same ID space: a direct lookup
            values = {g: float(table[g]) for g in genes if g in table}
            medians = {g: v for g, v in values.items() if np.isfinite(v) and v > 0}  # others use 1
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
