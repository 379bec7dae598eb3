"""Per-query perturbation metrics and the inputs they score.

A *query* is one perturbation (``condition``) in one cellular ``context``: :class:`QueryTruth` holds
its observed perturbed and control cells (log-normalised, ``log1p(counts / library * 1e4)``),
:class:`QueryPrediction` one method's prediction of it. :func:`query_metrics` scores one prediction
(every name in :data:`METRICS`); deltas are taken against the observed control mean of the context
and "DE genes" are the genes with the largest ``|Welch t|`` between the observed perturbed and control
cells (:func:`top_de_genes`). :func:`gene_set_indices` maps named gene sets to column indices for the
pathway metrics. :func:`check_truths` and :func:`check_predictions` validate whole evaluation inputs.
:data:`LOWER_IS_BETTER` names the metrics where smaller is better.

``l2_top_n`` (called ``l2_top1000`` in earlier versions) is the L2 distance of the predicted and observed means
over the ``N = min(n_expressed, G)`` genes most expressed in the controls: with a 500-gene matrix it is
the L2 over all 500 genes, not over 1000.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from genailab.config import check_count
from genailab.errors import InvalidInputError
from genailab.evaluation.distribution import energy_distance

__all__ = [
    "LOWER_IS_BETTER",
    "METRICS",
    "QueryPrediction",
    "QueryTruth",
    "check_count",
    "check_predictions",
    "check_truths",
    "gene_set_indices",
    "query_metrics",
    "top_de_genes",
]

METRICS = (
    "pearson_delta",
    "pearson_delta_de20",
    "mse_de20",
    "l2_top_n",
    "direction_acc_de20",
    "r2_mean_de100",
    "pathway_pearson",
    "pathway_sign_agreement",
    "e_distance",
)
# Metrics where a smaller value is better (every other metric: larger is better). Includes the derived
# per-query columns of the evaluation (the energy distance relative to the no-change reference).
LOWER_IS_BETTER: frozenset[str] = frozenset({"mse_de20", "l2_top_n", "e_distance", "e_distance_ratio_to_no_change"})
MIN_SET_SIZE = 5  # gene sets with fewer genes are ignored
MIN_SETS = 3  # pathway metrics need at least this many usable sets


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclass
class QueryTruth:
    """Observed cells of one query.

    Attributes
    ----------
    condition
        Perturbation label (e.g. ``"KLF1+ctrl"``).
    context
        Cellular context (cell line, cell type, donor).
    perturbed
        ``(n1, G)`` log-normalised perturbed cells.
    control
        ``(n0, G)`` log-normalised control cells of the same context.
    """

    condition: str
    context: str
    perturbed: np.ndarray
    control: np.ndarray


@dataclass
class QueryPrediction:
    """One method's prediction for one query.

    Attributes
    ----------
    mean
        ``(G,)`` predicted mean log-normalised expression of the perturbed population.
    sigma
        ``(G,)`` raw predictive standard deviation of that mean, or ``None``.
    cells
        ``(n, G)`` predicted log-normalised cells, or ``None``.
    ood_score
        Out-of-distribution score of the query (higher = less familiar), or ``None``.
    """

    mean: np.ndarray
    sigma: np.ndarray | None = None
    cells: np.ndarray | None = None
    ood_score: float | None = None


def _matrix(a: object, name: str, n_genes: int | None, min_rows: int = 1) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2 or (n_genes is not None and arr.shape[1] != n_genes) or arr.shape[0] < min_rows:
        want = f"(n >= {min_rows}, {n_genes if n_genes is not None else 'G'})"
        raise InvalidInputError(f"{name} has shape {arr.shape}; expected {want}.")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values; expected finite log-normalised values.")
    return arr


def _vector(a: object, name: str, n_genes: int) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.shape != (n_genes,):
        raise InvalidInputError(f"{name} has shape {arr.shape}; expected ({n_genes},), one value per gene.")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values; expected finite values.")
    return arr


def _welch_t(perturbed: np.ndarray, control: np.ndarray) -> np.ndarray:
    """``(G,)`` Welch t of perturbed vs control; 0 where both groups have zero variance."""
    n1, n0 = perturbed.shape[0], control.shape[0]
    v1 = perturbed.var(0, ddof=1) if n1 > 1 else np.zeros(perturbed.shape[1])
    v0 = control.var(0, ddof=1) if n0 > 1 else np.zeros(control.shape[1])
    se = np.sqrt(v1 / n1 + v0 / n0)
    diff = perturbed.mean(0) - control.mean(0)
    return np.where(se > 0, diff / np.where(se > 0, se, 1.0), 0.0)


def _ranked_de(perturbed: np.ndarray, control: np.ndarray) -> np.ndarray:
    """All gene indices by decreasing ``|Welch t|``, ties by gene index."""
    return np.argsort(-np.abs(_welch_t(perturbed, control)), kind="stable")


def top_de_genes(perturbed: np.ndarray, control: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` genes with the largest ``|Welch t|`` between perturbed and control cells.

    Parameters
    ----------
    perturbed, control
        ``(n1, G)`` and ``(n0, G)`` log-normalised cells.
    k
        Number of genes, capped at ``G``.

    Returns
    -------
    ``(min(k, G),)`` int array, most significant first. Genes with zero variance in both groups get
    ``t = 0``; ties are broken by gene index.
    """
    p = _matrix(perturbed, "perturbed", None)
    c = _matrix(control, "control", p.shape[1])
    k = check_count(k, "k")
    return _ranked_de(p, c)[:k]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; ``nan`` (no warning) for fewer than 2 values or a constant vector."""
    if a.size < 2:
        return float("nan")
    da, db = a - a.mean(), b - b.mean()
    na, nb = float(np.sqrt(da @ da)), float(np.sqrt(db @ db))
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()), 1.0)
    if na <= 1e-12 * scale * math.sqrt(a.size) or nb <= 1e-12 * scale * math.sqrt(b.size):
        return float("nan")
    return float(np.clip(da @ db / (na * nb), -1.0, 1.0))


def _r2(pred: np.ndarray, obs: np.ndarray) -> float:
    ss_tot = float(((obs - obs.mean()) ** 2).sum())
    if ss_tot == 0:
        return float("nan")
    return 1.0 - float(((obs - pred) ** 2).sum()) / ss_tot


def _pathway(
    pred_delta: np.ndarray, obs_delta: np.ndarray, sets: Mapping[str, np.ndarray] | None
) -> tuple[float, float]:
    if sets is None:
        return float("nan"), float("nan")
    usable = [np.asarray(idx, dtype=np.int64) for idx in sets.values() if len(idx) >= MIN_SET_SIZE]
    if len(usable) < MIN_SETS:
        return float("nan"), float("nan")
    p = np.array([pred_delta[idx].mean() for idx in usable])
    o = np.array([obs_delta[idx].mean() for idx in usable])
    return _pearson(p, o), float((np.sign(p) == np.sign(o)).mean())


def _check_gene_sets(gene_sets: Mapping[str, np.ndarray], n_genes: int) -> dict[str, np.ndarray]:
    if not isinstance(gene_sets, Mapping):
        raise InvalidInputError(f"gene_sets is a {type(gene_sets).__name__}; expected a mapping name -> gene indices.")
    out = {}
    for name, idx in gene_sets.items():
        arr = np.asarray(idx)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise InvalidInputError(
                f"gene_sets[{name!r}] has dtype {arr.dtype}, shape {arr.shape}; expected 1-D int indices."
            )
        if arr.size and (arr.min() < 0 or arr.max() >= n_genes):
            raise InvalidInputError(f"gene_sets[{name!r}] has indices outside [0, {n_genes}); expected gene indices.")
        out[str(name)] = arr.astype(np.int64)
    return out


def query_metrics(
    pred: QueryPrediction,
    truth: QueryTruth,
    *,
    gene_sets: Mapping[str, np.ndarray] | None = None,
    n_de: int = 20,
    n_de_r2: int = 100,
    n_expressed: int = 1000,
    seed: int = 0,
    pca: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, float]:
    """Score one prediction against one query's observed cells.

    Parameters
    ----------
    pred
        The prediction; ``pred.mean`` is ``(G,)``, ``pred.cells`` (if any) ``(n, G)``.
    truth
        The observed perturbed and control cells, ``(n1, G)`` and ``(n0, G)``.
    gene_sets
        Gene sets as index arrays (see :func:`gene_set_indices`); sets with fewer than 5 genes are ignored.
    n_de
        Number of top DE genes for ``*_de20`` metrics (capped at ``G``).
    n_de_r2
        Number of top DE genes for ``r2_mean_de100``.
    n_expressed
        Number of most expressed genes (by control mean) for ``l2_top_n``, capped at ``G``: with fewer
        genes the L2 covers all of them (the evaluation records the effective N).
    seed
        Seed of the energy-distance subsample.
    pca
        Callable mapping ``(n, G)`` cells to ``(n, k)`` coordinates before the energy distance; ``None``
        uses the genes themselves.

    Returns
    -------
    ``{name: value}`` for every name in :data:`METRICS`; ``nan`` where undefined (a constant vector in a
    correlation, no gene sets or fewer than 3 usable ones, no predicted cells or fewer than 2 cells on
    either side of the energy distance, a constant observed vector in R^2).
    """
    obs_cells = _matrix(truth.perturbed, "truth.perturbed", None)
    n_genes = obs_cells.shape[1]
    ctrl = _matrix(truth.control, "truth.control", n_genes)
    mean = _vector(pred.mean, "pred.mean", n_genes)
    n_de = check_count(n_de, "n_de")
    n_de_r2 = check_count(n_de_r2, "n_de_r2")
    n_expressed = check_count(n_expressed, "n_expressed")
    sets = None if gene_sets is None else _check_gene_sets(gene_sets, n_genes)

    ctrl_mean, obs_mean = ctrl.mean(0), obs_cells.mean(0)  # (G,)
    obs_delta, pred_delta = obs_mean - ctrl_mean, mean - ctrl_mean  # (G,)
    ranked = _ranked_de(obs_cells, ctrl)
    de, de_r2 = ranked[:n_de], ranked[:n_de_r2]
    expressed = np.argsort(-ctrl_mean, kind="stable")[:n_expressed]
    pathway_r, pathway_sign = _pathway(pred_delta, obs_delta, sets)

    e_dist = float("nan")
    if pred.cells is not None:
        cells = _matrix(pred.cells, "pred.cells", n_genes)
        if cells.shape[0] >= 2 and obs_cells.shape[0] >= 2:
            a, b = (cells, obs_cells) if pca is None else (np.asarray(pca(cells)), np.asarray(pca(obs_cells)))
            e_dist = energy_distance(a, b, seed=seed)
    return {
        "pearson_delta": _pearson(pred_delta, obs_delta),
        "pearson_delta_de20": _pearson(pred_delta[de], obs_delta[de]),
        "mse_de20": float(((mean[de] - obs_mean[de]) ** 2).mean()),
        "l2_top_n": float(np.linalg.norm(mean[expressed] - obs_mean[expressed])),
        "direction_acc_de20": float((np.sign(pred_delta[de]) == np.sign(obs_delta[de])).mean()),
        "r2_mean_de100": _r2(mean[de_r2], obs_mean[de_r2]),
        "pathway_pearson": pathway_r,
        "pathway_sign_agreement": pathway_sign,
        "e_distance": e_dist,
    }


def gene_set_indices(
    gene_sets: Mapping[str, Sequence[str]], genes: Sequence[str], min_size: int = MIN_SET_SIZE
) -> dict[str, np.ndarray]:
    """Map gene sets given by gene names to sorted column indices of ``genes``.

    Parameters
    ----------
    gene_sets
        ``{set name: gene names}``; names absent from ``genes`` are dropped.
    genes
        The gene (column) order of the expression arrays; names must be unique.
    min_size
        Sets with fewer matched genes are left out.

    Returns
    -------
    ``{set name: (k,) int array}`` of sorted unique indices, for sets with ``k >= min_size``.
    """
    min_size = check_count(min_size, "min_size")
    names = [str(g) for g in genes]
    position = {g: i for i, g in enumerate(names)}
    if len(position) != len(names):
        dup = sorted({g for g in names if names.count(g) > 1})[:5]
        raise InvalidInputError(f"genes has duplicated names (e.g. {dup}); expected unique gene names.")
    if not isinstance(gene_sets, Mapping):
        raise InvalidInputError(f"gene_sets is a {type(gene_sets).__name__}; expected a mapping name -> gene names.")
    out = {}
    for name, members in gene_sets.items():
        if isinstance(members, str):
            raise InvalidInputError(f"gene_sets[{name!r}] is a string; expected a sequence of gene names.")
        idx = np.unique([position[str(g)] for g in members if str(g) in position]).astype(np.int64)
        if idx.size >= min_size:
            out[str(name)] = idx
    return out


# --------------------------------------------------------------------------------------------------
# Whole evaluation inputs
# --------------------------------------------------------------------------------------------------


def check_truths(truths: Sequence[QueryTruth], n_genes: int) -> list[QueryTruth]:
    """Validate the queries of an evaluation.

    Parameters
    ----------
    truths
        A non-empty sequence of :class:`QueryTruth`, arrays with ``n_genes`` columns.
    n_genes
        The number of genes (columns).

    Returns
    -------
    Copies with string labels and finite float64 arrays.

    Raises
    ------
    InvalidInputError
        If ``truths`` is empty or not a sequence of :class:`QueryTruth`, or an array is malformed.
    """
    if isinstance(truths, QueryTruth) or not isinstance(truths, Sequence) or len(truths) == 0:
        raise InvalidInputError(f"truths is {type(truths).__name__}; expected a non-empty sequence of QueryTruth.")
    out = []
    for i, t in enumerate(truths):
        if not isinstance(t, QueryTruth):
            raise InvalidInputError(f"truths[{i}] is a {type(t).__name__}; expected a QueryTruth.")
        where = f"truths[{i}] ({t.condition!r}, {t.context!r})"
        out.append(
            QueryTruth(
                str(t.condition),
                str(t.context),
                _matrix(t.perturbed, f"{where}.perturbed", n_genes),
                _matrix(t.control, f"{where}.control", n_genes),
            )
        )
    return out


def check_predictions(
    predictions: Mapping[str, Sequence[QueryPrediction | None]], truths: list[QueryTruth], n_genes: int
) -> dict[str, list[QueryPrediction | None]]:
    """Validate every method's predictions against the (checked) queries.

    Parameters
    ----------
    predictions
        ``{method: [QueryPrediction or None, ...]}``, one entry per query.
    truths
        The checked queries (:func:`check_truths`).
    n_genes
        The number of genes (columns).

    Returns
    -------
    ``{str(method): [QueryPrediction or None, ...]}`` with finite float64 arrays and float OOD scores.

    Raises
    ------
    InvalidInputError
        On a wrong entry count, a non-prediction entry, a malformed array, negative sigmas or a
        non-finite OOD score.
    """
    if not isinstance(predictions, Mapping) or not predictions:
        raise InvalidInputError(
            f"predictions is {type(predictions).__name__}; expected a non-empty mapping method -> list of predictions."
        )
    out: dict[str, list[QueryPrediction | None]] = {}
    for method, preds in predictions.items():
        if not isinstance(preds, Sequence) or len(preds) != len(truths):
            got = len(preds) if isinstance(preds, Sequence) else type(preds).__name__
            raise InvalidInputError(
                f"predictions[{method!r}] has {got} entries; expected {len(truths)}, one per query (None to skip)."
            )
        checked: list[QueryPrediction | None] = []
        for i, (p, t) in enumerate(zip(preds, truths, strict=True)):
            if p is None:
                checked.append(None)
                continue
            where = f"predictions[{method!r}][{i}] (query {t.condition!r}, {t.context!r})"
            if not isinstance(p, QueryPrediction):
                raise InvalidInputError(f"{where} is a {type(p).__name__}; expected a QueryPrediction or None.")
            sigma = None if p.sigma is None else _vector(p.sigma, f"{where}.sigma", n_genes)
            if sigma is not None and (sigma < 0).any():
                raise InvalidInputError(f"{where}.sigma has negative values; expected standard deviations >= 0.")
            ood = p.ood_score
            if ood is not None and not (isinstance(ood, int | float | np.number) and math.isfinite(ood)):
                raise InvalidInputError(f"{where}.ood_score={ood!r}; expected a finite number or None.")
            checked.append(
                QueryPrediction(
                    _vector(p.mean, f"{where}.mean", n_genes),
                    sigma,
                    None if p.cells is None else _matrix(p.cells, f"{where}.cells", n_genes),
                    None if ood is None else float(ood),
                )
            )
        out[str(method)] = checked
    return out
