"""HTML reports: one module per report, over a shared page builder.

- :func:`write_html_report`, :func:`figure_to_html` (:mod:`~genailab.evaluation.reports.html`): a
  self-contained HTML page of tables and inlined PNG figures.
- :func:`write_synthesis_report` (:mod:`~genailab.evaluation.reports.synthesis`): synthetic vs real cells.
- :func:`write_perturbation_report` (:mod:`~genailab.evaluation.reports.perturbation`): perturbation
  response predictions.
- :func:`write_vae_report`, :func:`vae_report_metrics` (:mod:`~genailab.evaluation.reports.vae`): a trained
  VAE's held-out NLL, count recovery and latent structure.

Each report writes ``metrics.json`` and ``report.html`` into its output directory.
"""

from genailab.evaluation.reports.html import figure_to_html, write_html_report
from genailab.evaluation.reports.perturbation import write_perturbation_report
from genailab.evaluation.reports.synthesis import write_synthesis_report
from genailab.evaluation.reports.vae import vae_report_metrics, write_vae_report

__all__ = [
    "figure_to_html",
    "vae_report_metrics",
    "write_html_report",
    "write_perturbation_report",
    "write_synthesis_report",
    "write_vae_report",
]
