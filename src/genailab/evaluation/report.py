"""Old home of the HTML helpers, kept so ``genailab.evaluation.report`` imports keep working.

They live in :mod:`genailab.evaluation.reports.html`.
"""

from genailab.evaluation.reports.html import figure_to_html, write_html_report

__all__ = ["figure_to_html", "write_html_report"]
