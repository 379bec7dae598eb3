"""Metrics as pure functions of arrays (no parameters, no model objects)."""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.special import gammaln

from genailab.errors import InvalidInputError

__all__ = ["gene_nb_baseline_nll", "knn_label_accuracy", "marginal_agreement", "silhouette"]


def _dense(x: np.ndarray | sparse.spmatrix) -> np.ndarray:
    return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float64)


def gene_nb_baseline_nll(train: np.ndarray | sparse.spmatrix, test: np.ndarray | sparse.spmatrix) -> float:
    """Per-cell NLL on ``test`` of the library-scaled per-gene negative binomial fitted on ``train``.

    The baseline predicts ``mu_cg = library_c * p_g`` (``p_g`` = gene's share of all training counts)
    with a per-gene dispersion from the method of moments on size-normalised training counts. A count
    model that does not beat it has learned nothing about cell states.

    Parameters
    ----------
    train, test
        ``(n, G)`` raw counts with the same genes.

    Returns
    -------
    Mean over test cells of the NLL summed over genes (nats).
    """
    xtr, xte = _dense(train), _dense(test)
    if xtr.shape[1] != xte.shape[1]:
        raise InvalidInputError(f"train has {xtr.shape[1]} genes but test has {xte.shape[1]}.")
    lib_tr = xtr.sum(1, keepdims=True).clip(min=1)
    p = (xtr.sum(0) + 0.5) / (xtr.sum() + 0.5 * xtr.shape[1])  # (G,)
    norm = xtr / lib_tr * np.median(lib_tr)
    m, v = norm.mean(0), norm.var(0)
    theta = np.where(v > m, m**2 / np.maximum(v - m, 1e-8), 1e4).clip(1e-3, 1e4)  # (G,)
    mu = xte.sum(1, keepdims=True).clip(min=1) * p  # (n, G)
    log_p = (
        gammaln(xte + theta)
        - gammaln(theta)
        - gammaln(xte + 1)
        + theta * (np.log(theta) - np.log(theta + mu))
        + xte * (np.log(mu) - np.log(theta + mu))
    )
    return float(-log_p.sum(1).mean())


def knn_label_accuracy(z: np.ndarray, labels: np.ndarray, *, k: int = 15, n_folds: int = 5, seed: int = 0) -> float:
    """Cross-validated k-nearest-neighbour accuracy of predicting ``labels`` from embedding ``z``."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    labels = np.asarray(labels).astype(str)
    _, counts = np.unique(labels, return_counts=True)
    folds = int(min(n_folds, counts.min())) if counts.min() >= 2 else 2
    cv = StratifiedKFold(n_splits=max(folds, 2), shuffle=True, random_state=seed)
    clf = KNeighborsClassifier(n_neighbors=min(k, len(labels) - 1))
    return float(cross_val_score(clf, np.asarray(z).reshape(len(labels), -1), labels, cv=cv).mean())


def silhouette(z: np.ndarray, labels: np.ndarray, *, seed: int = 0, sample_size: int = 5000) -> float:
    """Silhouette width of ``labels`` in embedding ``z`` (-1..1; higher = better separated)."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels).astype(str)
    z = np.asarray(z).reshape(len(labels), -1)
    return float(silhouette_score(z, labels, sample_size=min(sample_size, len(labels)), random_state=seed))


def marginal_agreement(real: np.ndarray | sparse.spmatrix, other: np.ndarray | sparse.spmatrix) -> dict[str, float]:
    """Pearson correlations of per-gene log-mean, log-variance and zero fraction between two matrices."""
    a, b = _dense(real), _dense(other)
    if a.shape[1] != b.shape[1]:
        raise InvalidInputError(f"real has {a.shape[1]} genes but other has {b.shape[1]}.")

    def corr(x: np.ndarray, y: np.ndarray) -> float:
        if x.std() == 0 or y.std() == 0:
            return float("nan")
        return float(np.corrcoef(x, y)[0, 1])

    return {
        "mean_corr": corr(np.log1p(a.mean(0)), np.log1p(b.mean(0))),
        "var_corr": corr(np.log1p(a.var(0)), np.log1p(b.var(0))),
        "zero_fraction_corr": corr((a == 0).mean(0), (b == 0).mean(0)),
    }
