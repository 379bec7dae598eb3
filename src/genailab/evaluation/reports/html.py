"""Self-contained HTML pages: tables plus matplotlib figures inlined as PNG.

The shared page builder of every report in :mod:`genailab.evaluation.reports`: :func:`figure_to_html`
turns a figure into an inline ``<img>`` tag and :func:`write_html_report` writes headed sections (raw
HTML or tables of row dicts) to one file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from genailab.io import atomic_write_text

__all__ = ["figure_to_html", "write_html_report"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.fig{display:inline-block;margin:0.5em}code{background:#f6f6f6;padding:1px 4px}
"""


def figure_to_html(fig: Any, *, alt: str = "figure") -> str:
    """Render a matplotlib figure to an inline ``<img>`` tag and close it.

    Parameters
    ----------
    fig
        A matplotlib figure; it is closed after rendering.
    alt
        The image's alternative text.

    Returns
    -------
    A ``<div class="fig">`` holding the figure as a base64 PNG (110 dpi, tight bounding box).
    """
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<div class="fig"><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></div>'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html_report(
    path: str | Path,
    title: str,
    sections: Sequence[tuple[str, str | Sequence[Mapping[str, Any]]]],
) -> Path:
    """Write a one-file HTML report atomically.

    Parameters
    ----------
    path
        Output ``.html`` path.
    title
        Page title.
    sections
        ``(heading, content)`` pairs; content is raw HTML (e.g. from :func:`figure_to_html`) or a list
        of row dicts rendered as a table.

    Returns
    -------
    The path written.
    """
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    for heading, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(content if isinstance(content, str) else _table(content))
    parts.append("</body></html>")
    return atomic_write_text(path, "\n".join(parts))
