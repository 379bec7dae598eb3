"""How well are perturbation responses predicted? Per-query metrics, a per-method summary and uncertainty.

A *query* is one perturbation (``condition``) in one cellular ``context``; its truth is the observed
perturbed cells and the observed control cells of that context, both log-normalised per cell
(``log1p(counts / library * 1e4)``). A method predicts the mean expression of the perturbed population,
optionally a raw per-gene predictive standard deviation of that mean, predicted cells and an
out-of-distribution score.

:func:`query_metrics` scores one query. Deltas are taken against the observed control mean of the
context (``delta = mean - control mean``), so a method that predicts "no change" has a constant zero
delta and a ``nan`` delta correlation. "DE genes" are the genes with the largest ``|Welch t|`` between
the observed perturbed and control cells (:func:`top_de_genes`), so they depend only on the truth.

:func:`evaluate_perturbation_predictions` scores every (method, query) pair, summarises each metric per
method (mean and sd across queries) and, for methods with a sigma, scores the uncertainty: coverage of
conformal intervals from a :class:`~genailab.foundation.objectives.uncertainty.ConformalCalibrator`
(Gaussian intervals of the raw sigma when none is given), CRPS and calibration error of the calibrated
Gaussian, the rank correlation of sigma with the absolute error, a risk-coverage curve, and an OOD
AUROC of the method's query scores against its scores on seen perturbations.

:func:`write_perturbation_report` writes ``metrics.json`` and a one-file ``report.html``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genailab.errors import InvalidInputError
from genailab.evaluation.distribution import energy_distance
from genailab.foundation.objectives.uncertainty import (
    LEVELS,
    ConformalCalibrator,
    auroc,
    calibration_curve,
    gaussian_crps,
    interval_coverage,
    regression_ece,
    risk_coverage,
    spearman,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "METRICS",
    "PerturbationEvaluation",
    "QueryPrediction",
    "QueryTruth",
    "evaluate_perturbation_predictions",
    "gene_set_indices",
    "query_metrics",
    "top_de_genes",
    "write_perturbation_report",
]

METRICS = (
    "pearson_delta",
    "pearson_delta_de20",
    "mse_de20",
    "l2_top1000",
    "direction_acc_de20",
    "r2_mean_de100",
    "pathway_pearson",
    "pathway_sign_agreement",
    "e_distance",
)
MIN_SET_SIZE = 5  # gene sets with fewer genes are ignored
MIN_SETS = 3  # pathway metrics need at least this many usable sets
MAX_CURVE_POINTS = 200
MAX_SCATTER_QUERIES = 12


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


def _check_count(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidInputError(f"{name}={value!r}; expected an integer >= {minimum}.")
    return int(value)


# --------------------------------------------------------------------------------------------------
# Per-query metrics
# --------------------------------------------------------------------------------------------------


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
    k = _check_count(k, "k")
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
        Number of most expressed genes (by control mean) for ``l2_top1000``.
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
    n_de = _check_count(n_de, "n_de")
    n_de_r2 = _check_count(n_de_r2, "n_de_r2")
    n_expressed = _check_count(n_expressed, "n_expressed")
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
        "l2_top1000": float(np.linalg.norm(mean[expressed] - obs_mean[expressed])),
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
    min_size = _check_count(min_size, "min_size")
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
# Evaluation over methods and queries
# --------------------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    """Nested dict/list copy with numpy scalars and arrays as Python values and non-finite floats as None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer | bool | np.bool_):
        return obj.item() if isinstance(obj, np.generic) else obj
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


@dataclass
class PerturbationEvaluation:
    """Result of :func:`evaluate_perturbation_predictions`.

    Attributes
    ----------
    per_query
        One row per (method, condition, context): ``method``, ``condition``, ``context``, every metric of
        :data:`METRICS`, ``n_cells`` (observed perturbed cells) and ``ood_score`` when any prediction
        has one.
    summary
        One row per method: ``method``, ``n_queries`` and ``<metric>_mean`` / ``<metric>_sd`` (sd with
        ddof=1; ``nan`` values are skipped).
    uncertainty
        ``{method: {...}}`` for methods with a sigma (coverage, CRPS, ECE, Spearman, curves) or with OOD
        scores on both the queries and the seen perturbations (``ood_auroc``).
    settings
        The settings used (PCs of the energy distance, seed, whether intervals were calibrated).
    """

    per_query: pd.DataFrame
    summary: pd.DataFrame
    uncertainty: dict[str, dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (non-finite numbers become ``None``).

        Returns
        -------
        ``{"summary": [rows], "per_query": [rows], "uncertainty": {...}, "settings": {...}}``.
        """
        return _jsonable(
            {
                "summary": self.summary.to_dict(orient="records"),
                "per_query": self.per_query.to_dict(orient="records"),
                "uncertainty": self.uncertainty,
                "settings": self.settings,
            }
        )


def _check_truths(truths: Sequence[QueryTruth], n_genes: int) -> list[QueryTruth]:
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


def _check_predictions(
    predictions: Mapping[str, Sequence[QueryPrediction | None]], truths: list[QueryTruth], n_genes: int
) -> dict[str, list[QueryPrediction | None]]:
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


def _fit_pca(truths: list[QueryTruth], n_pcs: int, seed: int) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """PCA on all observed cells (each distinct control array once)."""
    from sklearn.decomposition import PCA

    blocks, seen = [], set()
    for t in truths:
        blocks.append(t.perturbed)
        key = (id(t.control), t.control.shape)
        if key not in seen:
            seen.add(key)
            blocks.append(t.control)
    x = np.vstack(blocks)
    k = int(max(1, min(n_pcs, x.shape[0] - 1, x.shape[1])))
    pca = PCA(n_components=k, random_state=seed).fit(x)
    return pca.transform, k


def _calibrator_for(
    method: str, calibrator: ConformalCalibrator | Mapping[str, ConformalCalibrator] | None
) -> tuple[ConformalCalibrator, bool]:
    if isinstance(calibrator, Mapping):
        calibrator = calibrator.get(method)
    if calibrator is None:
        return ConformalCalibrator.uncalibrated(), False
    if not isinstance(calibrator, ConformalCalibrator):
        raise InvalidInputError(f"calibrator is a {type(calibrator).__name__}; expected a ConformalCalibrator or None.")
    return calibrator, True


def _subsample_curve(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    idx = np.unique(np.linspace(0, x.size - 1, min(MAX_CURVE_POINTS, x.size)).round().astype(int))
    return x[idx].tolist(), y[idx].tolist()


def _sigma_scores(
    preds: list[QueryPrediction | None], truths: list[QueryTruth], calibrator: ConformalCalibrator, calibrated: bool
) -> dict[str, Any] | None:
    pairs = [(p, t) for p, t in zip(preds, truths, strict=True) if p is not None and p.sigma is not None]
    if not pairs:
        return None
    y = np.concatenate([t.perturbed.mean(0) for _, t in pairs])  # (n_queries * G,)
    mu = np.concatenate([p.mean for p, _ in pairs])
    sigma = np.concatenate([p.sigma for p, _ in pairs])
    cal_sigma = calibrator.calibrated_sigma(sigma)
    abs_err = np.abs(mu - y)
    out: dict[str, Any] = {"n_queries": len(pairs), "n_values": int(y.size), "calibrated": calibrated}
    for level in LEVELS:
        key = f"coverage_{round(level * 100)}"
        if any(math.isclose(level, lv, abs_tol=1e-9) for lv in calibrator.levels):
            out[key] = interval_coverage(y, *calibrator.interval(mu, sigma, level))
        else:
            out[key] = float("nan")
    out["crps"] = float(gaussian_crps(y, mu, cal_sigma).mean())
    out["ece"] = regression_ece(y, mu, cal_sigma)
    out["spearman_sigma_error"] = spearman(cal_sigma, abs_err)
    nominal, observed = calibration_curve(y, mu, cal_sigma)
    out["calibration_curve"] = {"nominal": nominal.tolist(), "observed": observed.tolist()}
    coverage, risk = risk_coverage(abs_err, cal_sigma)
    cov, rsk = _subsample_curve(coverage, risk)
    out["risk_coverage"] = {"coverage": cov, "risk": rsk}
    return out


def _ood_auroc(
    method: str, preds: list[QueryPrediction | None], seen_ood_scores: Mapping[str, Sequence[float]] | None
) -> float | None:
    if seen_ood_scores is None or method not in seen_ood_scores:
        return None
    pos = [p.ood_score for p in preds if p is not None and p.ood_score is not None]
    neg = np.asarray(seen_ood_scores[method], dtype=np.float64).ravel()
    if not pos or neg.size == 0:
        return None
    return auroc(np.asarray(pos), neg)


def evaluate_perturbation_predictions(
    truths: Sequence[QueryTruth],
    predictions: Mapping[str, Sequence[QueryPrediction | None]],
    *,
    genes: Sequence[str],
    gene_sets: Mapping[str, Sequence[str]] | None = None,
    calibrator: ConformalCalibrator | Mapping[str, ConformalCalibrator] | None = None,
    seen_ood_scores: Mapping[str, Sequence[float]] | None = None,
    n_pcs: int = 30,
    seed: int = 0,
) -> PerturbationEvaluation:
    """Score every method on every query, summarise per method and score the uncertainty.

    Parameters
    ----------
    truths
        One :class:`QueryTruth` per query, arrays with ``len(genes)`` columns.
    predictions
        ``{method: [QueryPrediction or None, ...]}`` aligned with ``truths``; ``None`` means the method
        does not apply to that query (no row).
    genes
        Gene names of the columns.
    gene_sets
        ``{set name: gene names}`` for the pathway metrics (sets with >= 5 matched genes are used).
    calibrator
        Conformal calibrator of the raw sigmas (one for every method, or ``{method: calibrator}``), fitted
        on held-out data; ``None`` (or a method missing from the mapping) uses Gaussian intervals of the
        raw sigma (:meth:`ConformalCalibrator.uncalibrated`).
    seen_ood_scores
        ``{method: OOD scores of training / seen perturbations}``, the negatives of the OOD AUROC whose
        positives are the method's query ``ood_score`` values; methods absent here get no AUROC.
    n_pcs
        PCs of the PCA (fitted on all observed cells) in which the energy distance is measured; capped
        at ``n_cells - 1`` and ``G``.
    seed
        Seed of the PCA and the energy-distance subsamples.

    Returns
    -------
    The :class:`PerturbationEvaluation`.
    """
    import pandas as pd

    n_genes = len(genes)
    if n_genes == 0:
        raise InvalidInputError("genes is empty; expected one name per expression column.")
    n_pcs = _check_count(n_pcs, "n_pcs")
    truths = _check_truths(truths, n_genes)
    preds = _check_predictions(predictions, truths, n_genes)
    sets = None if gene_sets is None else gene_set_indices(gene_sets, genes)
    if seen_ood_scores is not None and not isinstance(seen_ood_scores, Mapping):
        raise InvalidInputError(
            f"seen_ood_scores is a {type(seen_ood_scores).__name__}; expected a mapping method -> scores or None."
        )

    any_cells = any(p is not None and p.cells is not None for ps in preds.values() for p in ps)
    pca, k = _fit_pca(truths, n_pcs, seed) if any_cells else (None, 0)
    has_ood = any(p is not None and p.ood_score is not None for ps in preds.values() for p in ps)

    rows = []
    for method, method_preds in preds.items():
        for p, t in zip(method_preds, truths, strict=True):
            if p is None:
                continue
            row: dict[str, Any] = {"method": method, "condition": t.condition, "context": t.context}
            row.update(query_metrics(p, t, gene_sets=sets, seed=seed, pca=pca))
            row["n_cells"] = int(t.perturbed.shape[0])
            if has_ood:
                row["ood_score"] = float("nan") if p.ood_score is None else p.ood_score
            rows.append(row)
    columns = ["method", "condition", "context", *METRICS, "n_cells", *(["ood_score"] if has_ood else [])]
    per_query = pd.DataFrame(rows, columns=columns)

    summary_rows = []
    for method in preds:
        sub = per_query[per_query["method"] == method]
        srow: dict[str, Any] = {"method": method, "n_queries": len(sub)}
        for m in METRICS:
            srow[f"{m}_mean"] = float(sub[m].mean()) if len(sub) else float("nan")
            srow[f"{m}_sd"] = float(sub[m].std(ddof=1)) if len(sub) > 1 else float("nan")
        summary_rows.append(srow)
    summary = pd.DataFrame(summary_rows)

    uncertainty: dict[str, dict[str, Any]] = {}
    for method, method_preds in preds.items():
        cal, calibrated = _calibrator_for(method, calibrator)
        entry = _sigma_scores(method_preds, truths, cal, calibrated) or {}
        ood = _ood_auroc(method, method_preds, seen_ood_scores)
        if ood is not None:
            entry["ood_auroc"] = ood
        if entry:
            uncertainty[method] = entry

    settings = {
        "n_queries": len(truths),
        "n_genes": n_genes,
        "methods": list(preds),
        "n_pcs": k,
        "seed": seed,
        "n_gene_sets": None if sets is None else len(sets),
        "delta": "mean - observed control mean of the context",
        "de_genes": "largest |Welch t| of observed perturbed vs control cells",
    }
    return PerturbationEvaluation(per_query, summary, uncertainty, settings)


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

_HOW_TO_READ = """
<p>Each query is one perturbation in one context. <code>delta</code> = mean expression minus the observed
control mean of the context; DE genes are the top genes by |Welch t| of observed perturbed vs control cells.
Higher is better for Pearson, direction accuracy, R&sup2; and pathway agreement; lower is better for MSE, L2 and
the energy distance (in PCA space of the observed cells). Uncertainty: coverage should match its nominal level,
ECE and CRPS are lower-is-better, and a useful sigma makes the risk grow with coverage.</p>
"""


def _display(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(v) else "n/a"
    return v


def _table_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _display(v) for k, v in rec.items()} for rec in df.to_dict(orient="records")]


def _scatter_section(
    truths: Sequence[QueryTruth], predictions: Mapping[str, Sequence[QueryPrediction | None]], n_de: int
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genailab.evaluation.report import figure_to_html

    shown = list(range(min(len(truths), MAX_SCATTER_QUERIES)))
    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.0 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax in axes.ravel()[len(shown) :]:
        ax.set_visible(False)
    for ax, i in zip(axes.ravel(), shown, strict=False):
        t = truths[i]
        perturbed, control = np.asarray(t.perturbed, dtype=np.float64), np.asarray(t.control, dtype=np.float64)
        ctrl_mean = control.mean(0)
        obs_delta = perturbed.mean(0) - ctrl_mean
        de = _ranked_de(perturbed, control)[:n_de]
        lo, hi = float(obs_delta.min()), float(obs_delta.max())
        for j, (method, preds) in enumerate(predictions.items()):
            p = preds[i]
            if p is None:
                continue
            pred_delta = np.asarray(p.mean, dtype=np.float64) - ctrl_mean
            c = colours[j % len(colours)]
            ax.scatter(obs_delta, pred_delta, s=4, alpha=0.35, color=c, label=method)
            ax.scatter(obs_delta[de], pred_delta[de], s=18, color=c, edgecolors="black", linewidths=0.6)
            lo, hi = min(lo, float(pred_delta.min())), max(hi, float(pred_delta.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        ax.set_title(f"{t.condition} | {t.context}", fontsize=8)
        ax.set_xlabel("observed delta", fontsize=8)
        ax.set_ylabel("predicted delta", fontsize=8)
        ax.tick_params(labelsize=7)
    legend: dict[str, Any] = {}  # a method may be absent from the first panel
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), fontsize=8, markerscale=3)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    note = f"<p>Outlined points: top-{n_de} DE genes of each query; dashed: the diagonal.</p>"
    return note + figure_to_html(fig, alt="predicted vs observed delta per query")


def _curve_section(uncertainty: Mapping[str, Mapping[str, Any]], key: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genailab.evaluation.report import figure_to_html

    fig, ax = plt.subplots(figsize=(4.5, 4.0))
    for method, entry in uncertainty.items():
        curve = entry.get(key)
        if not curve:
            continue
        if key == "calibration_curve":
            ax.plot(curve["nominal"], curve["observed"], marker="o", ms=3, label=method)
        else:
            ax.plot(curve["coverage"], curve["risk"], label=method)
    if key == "calibration_curve":
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set_xlabel("nominal coverage")
        ax.set_ylabel("observed coverage")
    else:
        ax.set_xlabel("coverage (fraction of most certain genes kept)")
        ax.set_ylabel("mean |error|")
    ax.legend(fontsize=8)
    return figure_to_html(fig, alt=key.replace("_", " "))


def write_perturbation_report(
    evaluation: PerturbationEvaluation,
    out_dir: str | Path,
    *,
    truths: Sequence[QueryTruth],
    predictions: Mapping[str, Sequence[QueryPrediction | None]],
    title: str = "Perturbation evaluation",
) -> dict[str, Path]:
    """Write ``out_dir/metrics.json`` and a self-contained ``out_dir/report.html``.

    Parameters
    ----------
    evaluation
        The result of :func:`evaluate_perturbation_predictions`.
    out_dir
        Output directory, created if missing; both files are written atomically.
    truths, predictions
        The inputs that were evaluated (for the delta scatter plots of the first 12 queries).
    title
        Page title.

    Returns
    -------
    ``{"metrics": path of metrics.json, "report": path of report.html}``.
    """
    from genailab.evaluation.report import write_html_report
    from genailab.io import atomic_write_json

    if not isinstance(evaluation, PerturbationEvaluation):
        raise InvalidInputError(f"evaluation is a {type(evaluation).__name__}; expected a PerturbationEvaluation.")
    truths = list(truths)
    if not truths:
        raise InvalidInputError("truths is empty; expected the sequence of QueryTruth that was evaluated.")
    for method, preds in predictions.items():
        if len(preds) != len(truths):
            raise InvalidInputError(
                f"predictions[{method!r}] has {len(preds)} entries; expected {len(truths)}, one per query."
            )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    sections: list[tuple[str, Any]] = [("How to read this", _HOW_TO_READ)]
    sections.append(("Summary per method (mean and sd across queries)", _table_rows(evaluation.summary)))
    if evaluation.uncertainty:
        scalar_rows = [
            {"method": m, **{k: v for k, v in e.items() if not isinstance(v, Mapping)}}
            for m, e in evaluation.uncertainty.items()
        ]
        sections.append(("Uncertainty", [{k: _display(v) for k, v in r.items()} for r in scalar_rows]))
        if any("calibration_curve" in e for e in evaluation.uncertainty.values()):
            sections.append(("Calibration curve", _curve_section(evaluation.uncertainty, "calibration_curve")))
            sections.append(("Risk-coverage curve", _curve_section(evaluation.uncertainty, "risk_coverage")))
    n_de = 20
    sections.append(
        (
            f"Predicted vs observed delta (first {min(len(truths), MAX_SCATTER_QUERIES)} queries)",
            _scatter_section(truths, predictions, n_de),
        )
    )
    sections.append(("Per query", _table_rows(evaluation.per_query)))
    sections.append(("Settings", [{"setting": k, "value": str(v)} for k, v in evaluation.settings.items()]))

    metrics_path = atomic_write_json(out / "metrics.json", evaluation.to_dict())
    report_path = write_html_report(out / "report.html", title, sections)
    return {"metrics": metrics_path, "report": report_path}
