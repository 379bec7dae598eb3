"""Evaluation: metrics (pure functions over arrays) and HTML reports.

- :func:`gene_nb_baseline_nll`: held-out NLL of a library-scaled per-gene NB, the floor any count
  model must beat.
- :func:`knn_label_accuracy`, :func:`silhouette`: how well a latent space separates known labels.
- :func:`marginal_agreement`: per-gene mean / variance / zero-fraction agreement of two count matrices.
- :func:`write_html_report`: a self-contained HTML page (figures inlined as PNG).
"""

from genailab.evaluation.metrics import (
    gene_nb_baseline_nll,
    knn_label_accuracy,
    marginal_agreement,
    silhouette,
)
from genailab.evaluation.report import figure_to_html, write_html_report

__all__ = [
    "figure_to_html",
    "gene_nb_baseline_nll",
    "knn_label_accuracy",
    "marginal_agreement",
    "silhouette",
    "write_html_report",
]
