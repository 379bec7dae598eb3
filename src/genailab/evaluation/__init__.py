"""Evaluation: metrics (pure functions over arrays) and HTML reports.

- :func:`gene_nb_baseline_nll`: held-out NLL of a library-scaled per-gene NB, the floor any count
  model must beat.
- :func:`knn_label_accuracy`, :func:`silhouette`: how well a latent space separates known labels.
- :func:`marginal_agreement`: per-gene mean / variance / zero-fraction agreement of two count matrices.
- :func:`write_html_report`, :func:`figure_to_html`: a self-contained HTML page (figures inlined as PNG);
  every report lives in :mod:`genailab.evaluation.reports`.
- :func:`mmd_rbf`, :func:`energy_distance`, :func:`wasserstein1`, :func:`classifier_auc`: two-sample
  distances between point clouds (e.g. PCA coordinates of real and synthetic cells).
- :func:`pseudobulk`, :data:`BASELINES`: perturbation pseudo-bulk profiles and the simple baselines
  (no-change, train-mean, additive, shrunk additive, linear with prior or data-derived embeddings, kNN in
  prior space, context-mean) every model is compared with.
- :func:`evaluate_synthesis`, :func:`write_synthesis_report`: synthetic vs real cells, every distance next
  to a real-vs-real floor, with a JSON + HTML report.
- :func:`evaluate_perturbation_predictions`, :func:`write_perturbation_report`: predicted perturbation
  responses scored per query and per method, with uncertainty, and a JSON + HTML report.
"""

from genailab.evaluation.baselines import (
    BASELINES,
    AdditiveBaseline,
    BaselineBase,
    ContextMeanBaseline,
    KNNPriorBaseline,
    LinearBaseline,
    LinearDataBaseline,
    NoChangeBaseline,
    PerturbationBaseline,
    ShrunkAdditiveBaseline,
    TrainMeanBaseline,
)
from genailab.evaluation.distribution import (
    classifier_auc,
    energy_distance,
    median_distance,
    mmd_rbf,
    wasserstein1,
)
from genailab.evaluation.metrics import (
    gene_nb_baseline_nll,
    knn_label_accuracy,
    marginal_agreement,
    silhouette,
)
from genailab.evaluation.perturbation import (
    LOWER_IS_BETTER,
    PerturbationEvaluation,
    bootstrap_ci,
    evaluate_perturbation_predictions,
    paired_difference,
)
from genailab.evaluation.perturbation_metrics import QueryPrediction, QueryTruth, query_metrics
from genailab.evaluation.pseudobulk import PseudoBulk, pseudobulk
from genailab.evaluation.reports import (
    figure_to_html,
    write_html_report,
    write_perturbation_report,
    write_synthesis_report,
)
from genailab.evaluation.synthesis import SynthesisEmbedding, evaluate_synthesis, pca_embed

__all__ = [
    "LOWER_IS_BETTER",
    "bootstrap_ci",
    "paired_difference",
    "BASELINES",
    "AdditiveBaseline",
    "BaselineBase",
    "KNNPriorBaseline",
    "LinearDataBaseline",
    "ShrunkAdditiveBaseline",
    "ContextMeanBaseline",
    "LinearBaseline",
    "NoChangeBaseline",
    "PerturbationBaseline",
    "PerturbationEvaluation",
    "PseudoBulk",
    "QueryPrediction",
    "QueryTruth",
    "SynthesisEmbedding",
    "TrainMeanBaseline",
    "classifier_auc",
    "energy_distance",
    "evaluate_perturbation_predictions",
    "evaluate_synthesis",
    "figure_to_html",
    "gene_nb_baseline_nll",
    "knn_label_accuracy",
    "marginal_agreement",
    "median_distance",
    "mmd_rbf",
    "pca_embed",
    "pseudobulk",
    "query_metrics",
    "silhouette",
    "wasserstein1",
    "write_html_report",
    "write_perturbation_report",
    "write_synthesis_report",
]
