"""Prior feature vectors for perturbed genes, from gene sets and gene regulatory networks.

A perturbation model that embeds each perturbed gene by a learned lookup table cannot say anything about a
gene it never saw perturbed. Describing each gene instead by what is *known* about it -- the pathways it
belongs to and its regulatory neighbourhood -- gives every gene with prior knowledge a meaningful vector,
the idea behind GEARS' gene-ontology graph (Roohani et al., Nat Biotechnol 2024) and the perturbation
embeddings of the linear baseline of Ahlmann-Eltze et al. (Nat Methods 2025).

Prior sources (``GenePriors.sources``), each one block of columns:

``"gene_sets"``
    Binary gene x set membership over the union of all gene-set collections given (e.g. MSigDB Hallmark,
    GO Biological Process), each set's column weighted by ``1 / sqrt(set size)`` so that huge sets count
    less, reduced by truncated SVD (latent semantic analysis) and L2-normalised per gene.
``"grn"``
    A signed gene x neighbourhood matrix from regulatory edges (e.g. CollecTRI, DoRothEA, TRRUST): for a gene
    ``g``, ``+sign`` in the column of each of its targets (``g`` as regulator) and, in separate columns,
    ``+sign`` in the column of each of its regulators (``g`` as target). Unsigned edges (sign 0) enter with
    weight :data:`UNSIGNED_EDGE_WEIGHT`; an edge listed several times gets its mean weight. Columns are
    weighted by ``1 / sqrt(number of genes in the column)`` (hub regulators count less), then truncated SVD
    and per-gene L2 normalisation. ``COMPLEX:`` pseudo-genes are never rows (they stay as regulator
    columns).

The features of a gene are the concatenation of the blocks; a gene absent from a block has zeros there.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import sparse

from genailab.data.gene_sets import EdgeList, read_edges, read_gmt
from genailab.errors import CheckpointError, InvalidInputError
from genailab.io import atomic_write, atomic_write_json

__all__ = [
    "MAX_PRIOR_DISTANCE",
    "PRIOR_SOURCES",
    "UNSIGNED_EDGE_WEIGHT",
    "GenePriors",
    "build_gene_priors",
    "prior_distance",
]

#: Names of the feature blocks that :func:`build_gene_priors` can produce, in column order.
PRIOR_SOURCES = ("gene_sets", "grn")
#: Weight of an edge whose sign is unknown or mixed (sign 0), so that it still links its two genes.
UNSIGNED_EDGE_WEIGHT = 0.5
#: Distance of an agent without prior features (or of any agent when no reference agent has them).
MAX_PRIOR_DISTANCE = 2.0
#: GRN target columns are restricted to readout genes only when at least this many of them are targets.
MIN_READOUT_TARGETS = 20

FEATURES_NAME = "gene_priors.safetensors"
META_NAME = "gene_priors.json"
_FORMAT = "genailab.gene_priors"
_FORMAT_VERSION = 1
_DENSE_SVD_MAX_ENTRIES = 1_000_000


@dataclasses.dataclass(frozen=True, eq=False)
class GenePriors:
    """Prior feature vectors of genes, one row per gene.

    Parameters
    ----------
    genes
        Gene symbols, unique, shape ``(n_genes,)``.
    features
        Feature matrix, shape ``(n_genes, dim)``, stored as float32.
    sources
        Name of each block of columns (e.g. ``("gene_sets", "grn")``).
    block_dims
        Width of each block; sums to ``dim``.
    """

    genes: tuple[str, ...]
    features: np.ndarray
    sources: tuple[str, ...]
    block_dims: tuple[int, ...]
    _index: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        genes = tuple(str(g) for g in self.genes)
        features = np.ascontiguousarray(np.asarray(self.features, dtype=np.float32))
        sources = tuple(str(s) for s in self.sources)
        block_dims = tuple(int(d) for d in self.block_dims)
        if features.ndim != 2 or features.shape[0] != len(genes):
            raise InvalidInputError(
                f"GenePriors features must have shape (n_genes={len(genes)}, dim), got {features.shape}."
            )
        if len(set(genes)) != len(genes):
            dup = next(g for i, g in enumerate(genes) if g in genes[:i])
            raise InvalidInputError(f"GenePriors genes must be unique; {dup!r} appears more than once.")
        if len(sources) != len(block_dims) or sum(block_dims) != features.shape[1] or min(block_dims, default=1) < 1:
            raise InvalidInputError(
                f"GenePriors sources={sources} and block_dims={block_dims} must have one positive width per "
                f"source summing to the feature dimension {features.shape[1]}."
            )
        if not np.isfinite(features).all():
            raise InvalidInputError("GenePriors features must be finite; got NaN or infinite values.")
        object.__setattr__(self, "genes", genes)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "block_dims", block_dims)
        object.__setattr__(self, "_index", {g: i for i, g in enumerate(genes)})

    @property
    def dim(self) -> int:
        """Feature dimension (sum of ``block_dims``)."""
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return len(self.genes)

    def __contains__(self, gene: object) -> bool:
        return gene in self._index

    def lookup(self, genes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return the features of ``genes``, zeros for genes without priors.

        Parameters
        ----------
        genes
            Gene symbols, length ``n`` (a list or tuple, not a single string).

        Returns
        -------
        features : np.ndarray
            Shape ``(n, dim)``, float32; all-zero rows for unknown genes.
        has : np.ndarray
            Shape ``(n,)``, bool; whether each gene has prior features.
        """
        if isinstance(genes, str):
            raise InvalidInputError(f"genes={genes!r} must be a sequence of gene symbols, not a single string.")
        rows = np.array([self._index.get(str(g), -1) for g in genes], dtype=np.int64)
        has = rows >= 0
        out = np.zeros((rows.shape[0], self.dim), dtype=np.float32)
        out[has] = self.features[rows[has]]
        return out, has

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``gene_priors.safetensors`` (features) and then ``gene_priors.json`` (genes, blocks).

        Parameters
        ----------
        directory
            Output directory (created if needed).
        """
        from safetensors.numpy import save_file

        d = Path(directory)
        atomic_write(d / FEATURES_NAME, lambda tmp: save_file({"features": self.features}, str(tmp)))
        meta = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "genes": list(self.genes),
            "sources": list(self.sources),
            "block_dims": list(self.block_dims),
        }
        atomic_write_json(d / META_NAME, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> GenePriors:
        """Load priors written by :meth:`save`.

        Parameters
        ----------
        directory
            Directory holding ``gene_priors.json`` and ``gene_priors.safetensors``.

        Returns
        -------
        GenePriors
            The saved priors.

        Raises
        ------
        CheckpointError
            If a file is missing, truncated or corrupt, or the two files disagree.
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        d = Path(directory)
        meta_path, feat_path = d / META_NAME, d / FEATURES_NAME
        for p in (meta_path, feat_path):
            if not p.is_file():
                raise CheckpointError(f"{str(p)!r} is missing; expected a gene-priors directory written by save().")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            genes, sources, block_dims = meta["genes"], meta["sources"], meta["block_dims"]
            if meta.get("format") != _FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, expected {_FORMAT!r}")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{str(meta_path)!r} is not a valid gene-priors JSON file: {err}.") from err
        try:
            features = load_file(str(feat_path))["features"]
        except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(
                f"{str(feat_path)!r} is not a readable gene-priors safetensors file (truncated or corrupt): {err}."
            ) from err
        try:
            return cls(genes=tuple(genes), features=features, sources=tuple(sources), block_dims=tuple(block_dims))
        except (InvalidInputError, TypeError) as err:
            raise CheckpointError(f"{str(d)!r}: {META_NAME} and {FEATURES_NAME} are inconsistent: {err}") from err


def prior_distance(priors: GenePriors | None, agents: Sequence[str], reference: Sequence[str]) -> np.ndarray:
    """Cosine distance in prior-feature space from each agent to its nearest reference agent.

    ``1 - max_r cos(features(agent), features(r))`` over the ``reference`` agents with prior features
    (e.g. the agents a model was trained on); in ``[0, 2]``.

    Parameters
    ----------
    priors
        Prior features (``None``: no agent has any).
    agents
        The query agents, length ``n``.
    reference
        The reference agents.

    Returns
    -------
    np.ndarray
        Shape ``(n,)``, float64: 0 for an agent of ``reference`` itself, :data:`MAX_PRIOR_DISTANCE`
        for an agent without (non-zero) prior features or when no reference agent has them.

    Examples
    --------
    >>> p = GenePriors(("a", "b", "c"), np.array([[1, 0], [1, 0.1], [-1, 0]]), ("x",), (2,))
    >>> prior_distance(p, ["b", "c", "z", "a"], ["a"]).round(3).tolist()
    [0.005, 2.0, 2.0, 0.0]
    """
    if isinstance(agents, str) or isinstance(reference, str):
        raise InvalidInputError("agents and reference must be sequences of agent names, not single strings.")
    agents = [str(a) for a in agents]
    ref_set = {str(r) for r in reference}
    out = np.full(len(agents), MAX_PRIOR_DISTANCE, dtype=np.float64)
    if priors is not None and agents:
        ref_f, ref_has = priors.lookup(sorted(ref_set))
        ref_f = ref_f[ref_has].astype(np.float64)
        ref_n = np.linalg.norm(ref_f, axis=1)
        ref_f = ref_f[ref_n > 0] / ref_n[ref_n > 0, None]
        q_f, q_has = priors.lookup(agents)
        q_f = q_f.astype(np.float64)
        q_n = np.linalg.norm(q_f, axis=1)
        ok = q_has & (q_n > 0)
        if len(ref_f) and ok.any():
            sim = (q_f[ok] / q_n[ok, None]) @ ref_f.T  # (n_ok, n_ref)
            out[ok] = np.clip(1.0 - sim.max(1), 0.0, MAX_PRIOR_DISTANCE)
    out[np.array([a in ref_set for a in agents], dtype=bool)] = 0.0
    return out


def _is_pseudo_gene(name: str) -> bool:
    return name.upper().startswith("COMPLEX:")


def _column_weighted(matrix: sparse.csr_matrix) -> sparse.csr_matrix:
    """Divide each column by sqrt(number of non-zero rows), so that large sets/hubs count less."""
    size = np.asarray((matrix != 0).sum(axis=0)).ravel().astype(np.float64)
    scale = 1.0 / np.sqrt(np.maximum(size, 1.0))
    return sparse.csr_matrix(matrix @ sparse.diags(scale))


def _svd_features(matrix: sparse.csr_matrix, n_components: int, seed: int) -> np.ndarray:
    """Rows of ``U * S`` of a truncated SVD, L2-normalised; exact SVD for small matrices."""
    n_rows, n_cols = matrix.shape
    if n_rows * n_cols <= _DENSE_SVD_MAX_ENTRIES:
        u, s, _ = np.linalg.svd(matrix.toarray(), full_matrices=False)
        tol = s.max(initial=0.0) * max(n_rows, n_cols) * np.finfo(np.float64).eps
        rank = int((s > tol).sum())
        k = max(1, min(n_components, rank))
        u, s = u[:, :k], s[:k]
        # Deterministic signs: the largest-magnitude entry of each component is positive (as sklearn's svd_flip).
        signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(k)])
        signs[signs == 0] = 1.0
        emb = u * (s * signs)
    else:
        from sklearn.decomposition import TruncatedSVD

        k = max(1, min(n_components, min(n_rows, n_cols) - 1))
        emb = TruncatedSVD(n_components=k, algorithm="randomized", random_state=seed).fit_transform(matrix)
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    # Rows the truncation leaves (numerically) at zero carry no information: keep them exactly zero.
    keep = norm > 1e-6 * max(float(norm.max(initial=0.0)), np.finfo(np.float64).tiny)
    return np.divide(emb, norm, out=np.zeros_like(emb), where=keep)


def _gene_set_block(
    gene_sets: Sequence[str | Path | Mapping[str, Sequence[str]]], n_components: int, seed: int
) -> tuple[tuple[str, ...], np.ndarray]:
    merged: dict[str, set[str]] = {}
    for i, item in enumerate(gene_sets):
        if isinstance(item, Mapping):
            sets = {str(k): tuple(str(g) for g in v) for k, v in item.items()}
        elif isinstance(item, (str, os.PathLike)):
            sets = read_gmt(item)
        else:
            raise InvalidInputError(
                f"gene_sets[{i}] is a {type(item).__name__}; expected a GMT path or a mapping set name -> genes."
            )
        for name, genes in sets.items():
            merged.setdefault(name, set()).update(g for g in genes if g)
    merged = {k: v for k, v in merged.items() if v}
    genes = tuple(sorted(set().union(*merged.values()))) if merged else ()
    if not genes:
        return (), np.zeros((0, 0))
    index = {g: i for i, g in enumerate(genes)}
    rows, cols = [], []
    for j, name in enumerate(sorted(merged)):
        members = [index[g] for g in sorted(merged[name])]
        rows.extend(members)
        cols.extend([j] * len(members))
    membership = sparse.csr_matrix(
        (np.ones(len(rows)), (np.asarray(rows), np.asarray(cols))), shape=(len(genes), len(merged))
    )
    return genes, _svd_features(_column_weighted(membership), n_components, seed)


def _grn_block(
    grn: Sequence[str | Path | EdgeList], readout_genes: Sequence[str] | None, n_components: int, seed: int
) -> tuple[tuple[str, ...], np.ndarray]:
    sources, targets, signs = [], [], []
    for i, item in enumerate(grn):
        if isinstance(item, EdgeList):
            edges = item
        elif isinstance(item, (str, os.PathLike)):
            edges = read_edges(item)
        else:
            raise InvalidInputError(f"grn[{i}] is a {type(item).__name__}; expected an edge-table path or EdgeList.")
        sources.append(edges.source)
        targets.append(edges.target)
        signs.append(edges.sign)
    if not sources:
        return (), np.zeros((0, 0))
    src, tgt, sgn = np.concatenate(sources), np.concatenate(targets), np.concatenate(signs)
    weight = np.where(sgn == 0, UNSIGNED_EDGE_WEIGHT, np.sign(sgn))
    keep = src != tgt  # self-loops say nothing about the neighbourhood
    src, tgt, weight = src[keep], tgt[keep], weight[keep]

    # Target columns ("g regulates t"), optionally only measured readout genes.
    target_names = np.unique(tgt)
    if readout_genes is not None:
        readout = np.asarray(sorted({str(g) for g in readout_genes}), dtype=str)
        hit = np.intersect1d(target_names, readout)
        if hit.size >= MIN_READOUT_TARGETS:
            target_names = hit
    regulator_names = np.unique(src)

    # Rows: every real gene seen as regulator or target.
    all_genes = np.union1d(src, tgt)
    row_genes = np.array([g for g in all_genes if not _is_pseudo_gene(g)], dtype=str)
    if row_genes.size == 0:
        return (), np.zeros((0, 0))
    row_of = {g: i for i, g in enumerate(row_genes.tolist())}
    out_col = {g: j for j, g in enumerate(target_names.tolist())}
    in_col = {g: len(out_col) + j for j, g in enumerate(regulator_names.tolist())}
    n_cols = len(out_col) + len(in_col)

    rows, cols, vals = [], [], []
    for s, t, w in zip(src.tolist(), tgt.tolist(), weight.tolist(), strict=True):
        if s in row_of and t in out_col:  # s as regulator: +sign at its target t
            rows.append(row_of[s])
            cols.append(out_col[t])
            vals.append(w)
        if t in row_of:  # t as target: +sign at its regulator s
            rows.append(row_of[t])
            cols.append(in_col[s])
            vals.append(w)
    # Mean weight of edges listed more than once (e.g. in several resources).
    flat = np.asarray(rows, dtype=np.int64) * n_cols + np.asarray(cols, dtype=np.int64)
    cells, inverse = np.unique(flat, return_inverse=True)
    mean = np.bincount(inverse, weights=np.asarray(vals, dtype=np.float64)) / np.bincount(inverse)
    adjacency = sparse.csr_matrix((mean, (cells // n_cols, cells % n_cols)), shape=(row_genes.size, n_cols))
    adjacency.eliminate_zeros()
    nonempty = np.asarray((adjacency != 0).sum(axis=1)).ravel() > 0
    adjacency = adjacency[nonempty]
    genes = tuple(row_genes[nonempty].tolist())
    if not genes:
        return (), np.zeros((0, 0))
    return genes, _svd_features(_column_weighted(adjacency), n_components, seed)


def _nonzero_rows(genes: tuple[str, ...], feats: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """Drop genes whose block features are all zero: they do not have that block."""
    if not genes:
        return genes, feats
    keep = np.abs(feats).sum(axis=1) > 0
    return tuple(g for g, k in zip(genes, keep, strict=True) if k), feats[keep]


def build_gene_priors(
    *,
    gene_sets: Sequence[str | Path | Mapping[str, Sequence[str]]] = (),
    grn: Sequence[str | Path | EdgeList] = (),
    readout_genes: Sequence[str] | None = None,
    n_components: int = 32,
    seed: int = 0,
) -> GenePriors:
    """Build prior feature vectors of genes from gene-set collections and regulatory networks.

    See the module docstring for the two blocks (``"gene_sets"``, ``"grn"``). The result is deterministic
    for a given ``seed``.

    Parameters
    ----------
    gene_sets
        GMT files (plain or ``.gz``) and/or mappings set name -> genes; sets of one name are merged.
    grn
        Edge tables (read with :func:`~genailab.data.gene_sets.read_edges`) and/or :class:`EdgeList` objects.
    readout_genes
        Measured genes. When at least 20 GRN targets are among them, the GRN target columns are restricted to
        them (a perturbed regulator is then described by its effect on measured genes).
    n_components
        Width of each block, capped at the block matrix's rank (small blocks, exact SVD) or at its smaller
        side minus one (large blocks, randomized truncated SVD).
    seed
        Random state of the truncated SVD.

    Returns
    -------
    GenePriors
        Genes (sorted union over blocks), features ``(n_genes, dim)`` and the blocks present.

    Raises
    ------
    InvalidInputError
        If neither ``gene_sets`` nor ``grn`` is given, ``n_components`` is not a positive integer, an input has
        the wrong type or no gene is found.
    """
    if isinstance(gene_sets, (str, os.PathLike, Mapping)) or isinstance(grn, (str, os.PathLike, EdgeList)):
        raise InvalidInputError("gene_sets and grn must be sequences of sources, e.g. gene_sets=[path]; got a single.")
    if not gene_sets and not grn:
        raise InvalidInputError("build_gene_priors needs gene_sets=[...] and/or grn=[...]; both are empty.")
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise InvalidInputError(f"n_components={n_components!r} must be a positive integer.")
    if isinstance(readout_genes, str):
        raise InvalidInputError(f"readout_genes={readout_genes!r} must be a sequence of gene symbols, not a string.")

    blocks: list[tuple[str, tuple[str, ...], np.ndarray]] = []
    if gene_sets:
        genes, feats = _nonzero_rows(*_gene_set_block(gene_sets, n_components, seed))
        if genes:
            blocks.append(("gene_sets", genes, feats))
    if grn:
        genes, feats = _nonzero_rows(*_grn_block(grn, readout_genes, n_components, seed))
        if genes:
            blocks.append(("grn", genes, feats))
    if not blocks:
        raise InvalidInputError("build_gene_priors found no genes in the given gene_sets/grn sources.")

    all_genes = tuple(sorted(set().union(*(set(g) for _, g, _ in blocks))))
    index = {g: i for i, g in enumerate(all_genes)}
    dims = [feats.shape[1] for _, _, feats in blocks]
    features = np.zeros((len(all_genes), sum(dims)), dtype=np.float32)
    offset = 0
    for (_, genes, feats), width in zip(blocks, dims, strict=True):
        features[[index[g] for g in genes], offset : offset + width] = feats
        offset += width
    return GenePriors(
        genes=all_genes, features=features, sources=tuple(name for name, _, _ in blocks), block_dims=tuple(dims)
    )
