"""The synthesis report: ``metrics.json`` plus a one-file ``report.html`` of synthetic vs real cells.

:func:`write_synthesis_report` lays out the result of
:func:`~genailab.evaluation.synthesis.evaluate_synthesis` as tables (every distance next to its
real-vs-real floor, per condition, count marginals, cell-type fidelity, settings) and figures (UMAP or
PCA of held-out real and synthetic cells, mean-variance, zero fraction and library size).
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from genailab.config import check_count
from genailab.errors import InvalidInputError
from genailab.evaluation.reports.html import figure_to_html, write_html_report
from genailab.evaluation.synthesis import METRICS, evaluate_synthesis
from genailab.evaluation.synthesis_embedding import (
    SynthesisEmbedding,
    SynthesisInputs,
    check_sizes,
    embed_inputs,
    gene_stats,
    library_sizes,
    mean_var_fit,
    prepare_inputs,
    subsample,
)
from genailab.io import atomic_write_json

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["write_synthesis_report"]

_HOW_TO_READ = """
<p><b>How to read this.</b> Real cells were split into three random thirds: F fits the principal
components, A is the reference and B the floor. Every distance compares real part A with (i) a synthetic
sample of the same size as B (<i>synthetic</i>) and (ii) real part B (<i>real-vs-real floor</i>): the floor
is the score a perfect generator would get at this sample size, so the <b>ratio</b> synthetic / floor is
about 1 for synthetic cells indistinguishable from real ones and grows as they drift (lower is better).
<code>classifier_auc</code> is the cross-validated ROC AUC of a gradient-boosted classifier separating real
from synthetic cells: the target is <b>0.5</b> (indistinguishable), 1.0 means every synthetic cell is
recognisable. MMD, energy, W1 and AUC are computed on principal components fitted on real part F only, so
no compared cell helped fit them. Marginals compare per-gene statistics of the counts; fidelity is the
accuracy with which a classifier trained on real cells recovers the label each synthetic cell was
generated for, next to its accuracy on held-out real cells.</p>
"""

_LADDER_HOW_TO_READ = """
<p><b>Where the gap comes from.</b> Each row is one condition; each column a rung of the diagnosis ladder
as a ratio to its own real-vs-real floor (1 = as close as two random halves of the real cells; floors are
medians over random re-splits of the real cells, so the ratios here can differ from the single-split ratios
above). <i>generator</i>: the synthetic cells (MMD in PCs). <i>VAE ceiling</i>: the real cells encoded,
decoded and counts drawn again (posterior predictive): no latent generator on this VAE does better, so a
high ceiling points at the decoder and count model. <i>latent prior</i>: MMD between the generated latents
and the encoded real cells in the VAE's standardised latent space; coverage below its floor means missed
modes, precision below its floor or a variance ratio above 1 means blurred ones. <i>library</i>: W1 of log
library sizes; <i>zero excess</i>: mean per-gene zero fraction, synthetic minus real (floor in brackets).
<i>held back by</i>: the rungs above 1.5x.</p>
"""

_EMBED_NOTE = (
    "PCA fitted on one third of the real cells (part F); the real cells shown are the other two thirds, "
    "so real and synthetic points are both out-of-sample projections."
)

# Column labels of the count-marginal table, in order.
_MARGINAL_COLUMNS = {
    "real": "real part A",
    "synthetic": "synthetic",
    "floor": "real part B (floor)",
    "synthetic_diff": "synthetic - A",
    "floor_diff": "B - A",
    "ratio": "ratio",
}
_COLORS = {"real": "tab:blue", "synthetic": "tab:orange"}


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def _num(v: Any) -> Any:
    return "n/a" if v is None else v


def _metric_rows(scope: Mapping[str, Any], prefix: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    rows = []
    for name in METRICS:
        entry = scope.get(name) or {}
        row = dict(prefix or {})
        row.update(
            {
                "metric": name,
                "synthetic": _num(entry.get("synthetic")),
                "real-vs-real floor": _num(entry.get("floor")),
                "ratio": _num(entry.get("ratio")),
            }
        )
        rows.append(row)
    return rows


def _pair(entry: Mapping[str, Any] | None) -> str:
    """``synthetic (floor)`` of a ``{"synthetic", "floor"}`` entry."""
    if not entry or entry.get("synthetic") is None:
        return "n/a"
    floor = entry.get("floor")
    return f"{entry['synthetic']:.3g} ({'n/a' if floor is None else f'{floor:.3g}'})"


def _ladder_sections(ladder: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The "Where the gap comes from" explanation and its one-row-per-condition table."""
    note = (ladder.get("heldout") or {}).get("note")
    intro = _LADDER_HOW_TO_READ + (f"<p><i>{html.escape(str(note))}</i></p>" if note else "")
    rows = []
    for r in ladder.get("per_type", []):
        interval = r.get("floor_mmd_interval") or [None, None]
        rows.append(
            {
                "condition": r.get("condition"),
                "generator / floor": _num(r.get("generator_mmd_ratio")),
                "floor MMD^2 [2.5%, 97.5%]": (
                    "n/a"
                    if r.get("floor_mmd") is None or None in interval
                    else f"{r['floor_mmd']:.3g} [{interval[0]:.3g}, {interval[1]:.3g}]"
                ),
                "VAE ceiling / floor": _num(r.get("ceiling_mmd_ratio")),
                "latent prior / floor": _num(r.get("latent_mmd_ratio")),
                "latent coverage": _pair(r.get("latent_coverage")),
                "latent precision": _pair(r.get("latent_precision")),
                "latent variance ratio": _pair(r.get("latent_variance_ratio")),
                "library W1 / floor": _num(r.get("library_w1_ratio")),
                "zero excess": _pair(r.get("zero_fraction_excess")),
                "held back by": ", ".join(r.get("held_back_by") or []) or "-",
            }
        )
    return [("Where the gap comes from", intro), ("Diagnosis ladder (per condition)", rows)]


def _table_sections(metrics: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The explanation and every table before the figures: summary, conditions, marginals, fidelity."""
    sections: list[tuple[str, Any]] = [("How to read this", _HOW_TO_READ)]
    sections.append(("Summary (all cells)", _metric_rows(metrics.get("overall", {}))))
    per_cond = metrics.get("per_condition", {})
    if per_cond:
        rows = []
        for value, scope in per_cond.items():
            prefix = {"condition": value, "n real": scope.get("n_real"), "n syn": scope.get("n_syn")}
            rows.extend(_metric_rows(scope, prefix))
        sections.append(("Per condition", rows))
    skipped = metrics.get("skipped_conditions", [])
    if skipped:
        sections.append(("Skipped conditions", [dict(s) for s in skipped]))
    comp = metrics.get("composition")
    if comp:
        comp_rows = [
            {
                "condition": v,
                "real fraction": comp["real"].get(v),
                "synthetic fraction": comp["synthetic"].get(v),
            }
            for v in comp["real"]
        ]
        comp_rows.append({"condition": "total variation distance", "real fraction": comp["total_variation"]})
        sections.append(("Condition composition (all cells)", comp_rows))
    marg_rows = [
        {"quantity": name, **{label: _num(entry.get(key)) for key, label in _MARGINAL_COLUMNS.items() if key in entry}}
        for name, entry in metrics.get("marginals", {}).items()
    ]
    if marg_rows:
        sections.append(("Count marginals (real part A vs synthetic, and vs real part B)", marg_rows))
    fid = metrics.get("fidelity", {})
    if "synthetic" in fid:
        fid_rows = [
            {
                "cells": "synthetic (label = generating condition)",
                **{k2: _num(v) for k2, v in fid["synthetic"].items()},
            },
            {"cells": "real part B (floor)", **{k2: _num(v) for k2, v in fid["floor"].items()}},
        ]
        sections.append((f"Cell-type fidelity ({fid.get('key')})", fid_rows))
    elif fid.get("note"):
        sections.append(("Cell-type fidelity", f"<p>{html.escape(str(fid['note']))}</p>"))
    if metrics.get("ladder"):
        sections.extend(_ladder_sections(metrics["ladder"]))
    return sections


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def _embed_2d(z: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``z`` by UMAP (fit on the joint PCs) or its first two PCs."""
    if method == "umap" and z.shape[0] > 3:
        try:
            import umap  # lazy: slow import and numba JIT on first use
        except ImportError as err:
            note = f"umap-learn could not be imported ({err}); showing the first two PCs instead. {_EMBED_NOTE}"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reducer = umap.UMAP(n_components=2, n_neighbors=min(15, z.shape[0] - 1), random_state=seed)
                return reducer.fit_transform(z), f"UMAP of the joint PCs. {_EMBED_NOTE}"
        return z[:, :2], note
    return z[:, :2], f"First two principal components. {_EMBED_NOTE}"


def _embedding_section(
    plt: Any, inputs: SynthesisInputs, emb: SynthesisEmbedding, embedding: str, seed: int, max_plot: int
) -> tuple[str, str]:
    """Held-out real and synthetic cells in 2-D, by source and (with conditions) by condition."""
    rng = np.random.default_rng(seed)
    ri = subsample(emb.held_out_idx, max_plot, rng)  # real cells that did not fit the PCA
    si = subsample(np.arange(emb.z_syn.shape[0]), max_plot, rng)
    z = np.vstack([emb.z_real[ri], emb.z_syn[si]])
    if z.shape[1] < 2:
        z = np.hstack([z, np.zeros((z.shape[0], 1))])
    xy, note = _embed_2d(z, embedding, seed)
    n_r = len(ri)

    panels = 1 if inputs.real_cond is None else 3
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.5), squeeze=False, sharex=True, sharey=True)
    ax = axes[0, 0]
    ax.scatter(xy[:n_r, 0], xy[:n_r, 1], s=4, alpha=0.5, label="real", color="tab:blue")
    ax.scatter(xy[n_r:, 0], xy[n_r:, 1], s=4, alpha=0.5, label="synthetic", color="tab:orange")
    ax.set_title("by source")
    ax.legend(markerscale=3)
    if inputs.real_cond is not None:
        labels = np.concatenate([inputs.real_cond[ri], inputs.syn_cond[si]])
        values = sorted(set(labels.tolist()))
        cmap = plt.get_cmap("tab10" if len(values) <= 10 else "tab20")
        for j, (title, sl) in enumerate(
            (("real, by condition", slice(0, n_r)), ("synthetic, by condition", slice(n_r, None)))
        ):
            ax = axes[0, j + 1]
            for i, v in enumerate(values):
                mask = labels[sl] == v
                ax.scatter(xy[sl][mask, 0], xy[sl][mask, 1], s=4, alpha=0.6, color=cmap(i % cmap.N), label=v)
            ax.set_title(title)
        if len(values) <= 20:
            axes[0, 2].legend(markerscale=3, fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return "Embedding", f"<p>{html.escape(note)}</p>" + figure_to_html(fig, alt="embedding")


def _mean_variance_section(plt: Any, stats: Mapping[str, tuple[np.ndarray, ...]]) -> tuple[str, str]:
    """Log variance against log mean per gene, with the fitted lines and the Poisson diagonal."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for key, (mean, var, _) in stats.items():
        keep = (mean > 0) & (var > 0)
        ax.scatter(np.log(mean[keep]), np.log(var[keep]), s=6, alpha=0.5, color=_COLORS[key], label=key)
        slope, intercept = mean_var_fit(mean, var)
        if math.isfinite(slope):
            xs = np.linspace(np.log(mean[keep]).min(), np.log(mean[keep]).max(), 2)
            style = "-" if key == "real" else ":"
            label = f"{key} fit: slope {slope:.2f}"
            ax.plot(xs, intercept + slope * xs, color=_COLORS[key], lw=1.8, ls=style, label=label)
    lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
    hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="Poisson (var = mean)")
    ax.set_xlabel("log mean count per gene")
    ax.set_ylabel("log variance per gene")
    ax.legend(fontsize=8)
    return "Mean-variance relationship", figure_to_html(fig, alt="mean-variance")


def _zero_library_section(
    plt: Any, inputs: SynthesisInputs, stats: Mapping[str, tuple[np.ndarray, ...]]
) -> tuple[str, str]:
    """Histograms of the per-gene zero fraction and of ``log1p`` library size."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(0, 1, 31)
    for key, (_, _, zf) in stats.items():
        axes[0].hist(zf, bins=bins, alpha=0.5, color=_COLORS[key], label=key)
    axes[0].set_xlabel("fraction of cells with zero count (per gene)")
    axes[0].set_ylabel("genes")
    axes[0].legend()
    logs = {"real": np.log1p(library_sizes(inputs.real)), "synthetic": np.log1p(library_sizes(inputs.syn))}
    edges = np.linspace(min(v.min() for v in logs.values()), max(v.max() for v in logs.values()) + 1e-9, 41)
    for key, v in logs.items():
        axes[1].hist(v, bins=edges, alpha=0.5, color=_COLORS[key], label=key, density=True)
    axes[1].set_xlabel("log1p(library size)")
    axes[1].set_ylabel("density")
    axes[1].legend()
    return "Zero fraction and library size", figure_to_html(fig, alt="zero fraction and library size")


def _figures(
    inputs: SynthesisInputs, emb: SynthesisEmbedding, embedding: str, seed: int, max_plot: int
) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = [_embedding_section(plt, inputs, emb, embedding, seed, max_plot)]
    stats = {"real": gene_stats(inputs.real), "synthetic": gene_stats(inputs.syn)}
    sections.append(_mean_variance_section(plt, stats))
    sections.append(_zero_library_section(plt, inputs, stats))
    return sections


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def write_synthesis_report(
    out_dir: str | Path,
    real: AnnData,
    syn: AnnData,
    metrics: Mapping[str, Any] | None = None,
    *,
    condition_key: str | None = None,
    layer: str | None = None,
    seed: int = 0,
    embedding: Literal["umap", "pca"] = "umap",
    max_plot_cells: int = 5000,
) -> Path:
    """Write ``out_dir/metrics.json`` and a self-contained ``out_dir/report.html``.

    Parameters
    ----------
    out_dir
        Output directory (created if needed); both files are written atomically.
    real, syn
        The AnnData objects that were evaluated.
    metrics
        The result of :func:`~genailab.evaluation.synthesis.evaluate_synthesis`; ``None`` computes it
        with ``condition_key``, ``layer`` and ``seed``.
    condition_key
        ``obs`` column (in both objects) used to colour the embedding; ``None`` colours by source only.
    layer
        Layer holding the counts in both objects; ``None`` for ``X``.
    seed
        Seed of the PCA, UMAP and plot subsamples.
    embedding
        ``"umap"`` (umap-learn on the joint PCs of a PCA fitted on real cells; falls back to the first
        two PCs, with a note, when umap-learn cannot be imported) or ``"pca"`` (first two PCs, fast).
    max_plot_cells
        At most this many real and this many synthetic cells are embedded and plotted.

    Returns
    -------
    The path of ``report.html``.

    Raises
    ------
    InvalidInputError
        On an unknown ``embedding``, ``max_plot_cells < 2`` or inputs that
        :func:`~genailab.evaluation.synthesis.evaluate_synthesis` rejects.
    """
    if embedding not in ("umap", "pca"):
        raise InvalidInputError(f"embedding={embedding!r}; expected one of 'umap', 'pca'.")
    check_count(max_plot_cells, "max_plot_cells", 2)
    if metrics is None:
        metrics = evaluate_synthesis(real, syn, condition_key=condition_key, layer=layer, seed=seed)
    out = Path(out_dir)
    inputs = prepare_inputs(real, syn, layer=layer, condition_key=condition_key, classifier_key=None)
    check_sizes(inputs)
    n_pcs = int(metrics.get("settings", {}).get("n_pcs_requested", 30))
    emb = embed_inputs(inputs, n_pcs, seed)

    sections = _table_sections(metrics)
    sections.extend(_figures(inputs, emb, embedding, seed, max_plot_cells))
    settings = metrics.get("settings", {})
    sections.append(("Settings", [{"setting": k2, "value": _num(v)} for k2, v in settings.items()]))

    atomic_write_json(out / "metrics.json", metrics)
    return write_html_report(out / "report.html", "Synthetic cells vs real cells", sections)
