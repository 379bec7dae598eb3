"""Data-driven gene modules: NMF programs as gene sets for the pathway tokenizer.

When no curated gene sets fit (another species, an unusual tissue), gene programs learned from the
data itself can play their role: non-negative matrix factorisation of the log-normalised expression
(Lee & Seung, Nature 1999; gene programs as in cNMF, Kotliar et al., eLife 2019) gives ``n_modules``
non-negative gene loadings; module ``i`` is the ``genes_per_module`` genes that load most on it.
:func:`fit_nmf_modules` returns them as a ``{name: genes}`` mapping that feeds
:class:`~genailab.tokenizers.PathwayTokenEncoder` exactly like a GMT (save it in
:class:`~genailab.tokenizers.TokenizerResources` so the model can be rebuilt).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from genailab.config import check_positive
from genailab.errors import InvalidInputError
from genailab.tokenizers.base import check_genes

__all__ = ["fit_nmf_modules"]


def fit_nmf_modules(
    expression: np.ndarray,
    genes: Sequence[str],
    *,
    n_modules: int = 20,
    genes_per_module: int = 50,
    seed: int = 0,
    max_iter: int = 400,
) -> dict[str, tuple[str, ...]]:
    """Fit NMF gene modules on log-normalised expression.

    Parameters
    ----------
    expression
        ``(cells, genes)`` log-normalised, finite, non-negative expression (dense or scipy sparse).
    genes
        The gene of each column.
    n_modules
        Number of NMF components (modules); at most ``min(cells, genes)``.
    genes_per_module
        Genes per module: those with the largest loadings (ties: lower column first); at most ``genes``.
    seed
        Seed of the NNDSVDa initialisation's randomness (the result is deterministic given the seed).
    max_iter
        Most coordinate-descent iterations.

    Returns
    -------
    ``{"module_00": genes, ...}`` in component order, each gene tuple sorted by loading.

    Raises
    ------
    InvalidInputError
        For a non-2-D, non-finite or negative matrix, a gene list of the wrong length, or sizes out of
        range.
    """
    from scipy import sparse
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    genes = check_genes(genes)
    x = expression.toarray() if sparse.issparse(expression) else np.asarray(expression)
    if x.ndim != 2 or x.shape[1] != len(genes):
        raise InvalidInputError(
            f"expression has shape {x.shape}; expected (cells, {len(genes)}) with one column per gene."
        )
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all() or (x < 0).any():
        raise InvalidInputError(
            "expression must be finite and non-negative (log-normalised counts, e.g. log1p(CP10k))."
        )
    check_positive("n_modules", n_modules, integer=True)
    check_positive("genes_per_module", genes_per_module, integer=True)
    check_positive("max_iter", max_iter, integer=True)
    if n_modules > min(x.shape):
        raise InvalidInputError(f"n_modules={n_modules} must be <= min(cells, genes) = {min(x.shape)}.")
    if genes_per_module > len(genes):
        raise InvalidInputError(f"genes_per_module={genes_per_module} must be <= the number of genes {len(genes)}.")
    if not x.any():
        raise InvalidInputError("expression is all zeros; NMF modules need expressed genes.")
    model = NMF(n_components=n_modules, init="nndsvda", random_state=seed, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few unconverged iterations do not change top genes
        model.fit(x)
    loadings = model.components_  # (n_modules, genes)
    width = max(2, len(str(n_modules - 1)))
    modules: dict[str, tuple[str, ...]] = {}
    for i, row in enumerate(loadings):
        top = np.argsort(-row, kind="stable")[:genes_per_module]
        modules[f"module_{i:0{width}d}"] = tuple(genes[j] for j in top)
    return modules
