"""``genailab perturb evaluate``: the model, its reference methods and every baseline on a run's test split.

The protocol (issue 12) in one place, so the CLI and the benchmark score alike:

- **Normalisation.** With a library key (``--library-key ncounts``) every cell, observed or predicted, is
  log-normalised by its whole-transcriptome library (predicted cells carry their control cell's library);
  without one, by the row sum of the matrix's genes, and the report says so.
- **Methods.** ``genailab``; every registered baseline, fitted on the training pseudo-bulk and, where it
  tunes anything (e.g. the shrinkage of ``shrunk_additive``), on the *validation* conditions of the split;
  ``latent_additive`` (decode the sum of the training singles' observed latent shifts); ``latent_interaction``
  (the gene-space additive prediction plus the decoder's interaction term ``D(s_A + s_B) - D(s_A) - D(s_B)``
  of those shifts: the singles exact, the latent model only for what is not additive); ``vae_oracle``
  (decode the held-out cells' own observed latent shift: a *ceiling* of any latent model on this VAE, not a
  prediction); ``control_sd`` (genailab's mean with the per-gene SD of the context's control cells as sigma,
  conformalised on the validation conditions like the model: the trivial-sigma reference).
- **Seen-ness.** Each query is labelled ``seen = "k/n"``: ``k`` of its ``n`` agents have single-agent cells
  in training; the summary is also given per seen-ness (``by_seen``).
- **Peer scorer.** With ``cell_eval=True`` (the ``[eval]`` extra), cell-eval's Pearson-delta and DE overlap of
  the predicted cells are written beside ours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genailab.constants import BATCH_KEYS
from genailab.data import Split, log_normalize, obs_labels, read_gmt, read_h5ad, split_label
from genailab.errors import InvalidInputError, MissingKeyError
from genailab.evaluation import (
    BASELINES,
    QueryPrediction,
    QueryTruth,
    evaluate_perturbation_predictions,
    pseudobulk,
    write_perturbation_report,
)
from genailab.evaluation.perturbation_metrics import METRICS
from genailab.evaluation.perturbation_stats import comparison_table, summarise_metrics
from genailab.foundation.objectives.uncertainty import ConformalCalibrator
from genailab.foundation.recipes import PerturbDeltaModel, load_model
from genailab.foundation.recipes.perturb.latent_baselines import decode_shift_response, observed_latent_shift
from genailab.io import atomic_write_json, check_writable
from genailab.workflows.rundir import read_run_config, split_path

__all__ = ["COMPARE_TO", "count_seen_agents", "evaluate_perturb", "resolve_library", "seen_label"]

COMPARE_TO = ("additive", "shrunk_additive", "train_mean", "no_change")
CONTEXT_COLUMN = "_genailab_context"


def count_seen_agents(labels: np.ndarray, train_rows: np.ndarray, *, control: str, delimiter: str) -> set[str]:
    """Agents with single-agent cells among ``train_rows`` (any context): the agents a model has *seen*."""
    seen = set()
    for lab in set(np.asarray(labels)[np.asarray(train_rows, dtype=np.int64)].tolist()):
        parts = split_label(lab, control, delimiter, key=None)
        if len(parts) == 1:
            seen.add(parts[0])
    return seen


def seen_label(condition: str, seen: set[str], *, control: str, delimiter: str) -> str:
    """``"k/n"``: ``k`` of the ``n`` agents of ``condition`` are in ``seen``."""
    parts = split_label(condition, control, delimiter, key=None)
    return f"{sum(a in seen for a in parts)}/{len(parts)}"


def resolve_library(adata: Any, library_key: str | None) -> tuple[np.ndarray | None, list[str]]:
    """Per-cell library sizes from ``obs[library_key]`` (``None``: row sums), and the warnings to report."""
    if library_key is None:
        note = (
            f"library sizes are the row sums over the {adata.n_vars} genes of the matrix; when it is a gene "
            "subset, pass --library-key (an obs column of whole-transcriptome totals)"
        )
        if "ncounts" in adata.obs.columns:
            note += "; obs['ncounts'] exists: --library-key ncounts gives the standard scale"
        return None, [note + "."]
    if library_key not in adata.obs.columns:
        shown = ", ".join(map(str, list(adata.obs.columns)[:20]))
        raise MissingKeyError(f"--library-key {library_key!r} is not an obs column (columns: {shown}).")
    lib = np.asarray(adata.obs[library_key], dtype=np.float64)
    if not np.isfinite(lib).all() or (lib <= 0).any():
        raise InvalidInputError(f"obs[{library_key!r}] must hold positive finite library sizes.")
    return lib, []


class _Scorer:
    """Log-normalised cells of a run's data, and the model's queries, shared by all methods."""

    def __init__(self, model: Any, adata: Any, library: np.ndarray | None, seed: int) -> None:
        self.model, self.adata, self.library, self.seed = model, adata, library, seed
        self.labels = obs_labels(adata, model.perturbation_key, "perturbation_key")
        self.contexts = model.context_labels(adata)
        self.control = model.vocab.control
        self.cells = model.cell_data(adata, np.flatnonzero(self.labels == self.control))
        self._ctrl: dict[str, np.ndarray] = {}

    def lognorm(self, rows: np.ndarray) -> np.ndarray:
        counts = self.cells.counts_ds[rows.tolist()][BATCH_KEYS.COUNTS].numpy()
        return log_normalize(counts, library=None if self.library is None else self.library[rows])

    def control_rows(self, ctx: str) -> np.ndarray:
        rows = np.flatnonzero((self.labels == self.control) & (self.contexts == ctx))
        if len(rows) == 0:
            raise InvalidInputError(f"no control cells in context {ctx!r} to predict from.")
        return rows

    def control_cells(self, ctx: str) -> np.ndarray:
        if ctx not in self._ctrl:
            self._ctrl[ctx] = self.lognorm(self.control_rows(ctx))
        return self._ctrl[ctx]

    def query(self, condition: str, ctx: str) -> Any:
        ctrl = self.control_rows(ctx)
        codes = self.model.context_codes(self.adata[ctrl[:1]])[0]
        pred, _ = self.model.query(self.adata, ctrl, condition, cells=self.cells, context_codes=codes, seed=self.seed)
        return pred

    def decoded(self, shift: Any, ctx: str) -> QueryPrediction:
        """The decoded response of latent ``shift``: its mean and its log-normalised predicted cells."""
        resp = self.decode(shift, ctx)
        return QueryPrediction(mean=resp.mean, cells=log_normalize(resp.counts, library=resp.library))

    def decode(self, shift: Any, ctx: str) -> Any:
        """:func:`decode_shift_response` of ``shift`` from the context's control cells."""
        return decode_shift_response(self.model, self.adata, self.control_rows(ctx), shift, seed=self.seed)


#: Floor of the trivial sigma, as a quantile of the positive control SDs: a gene with no expression in the
#: control cells has SD 0, and a zero sigma would make the conformal scores (|error| / sigma) unbounded.
CONTROL_SD_FLOOR_QUANTILE = 0.1


def control_sd(control_cells: np.ndarray) -> np.ndarray:
    """The model-free reference sigma: each gene's SD over the context's control cells, floored.

    Parameters
    ----------
    control_cells
        ``(n, G)`` log-normalised control cells of the query's context.

    Returns
    -------
    ``(G,)`` SDs; zeros (and SDs below it) are raised to the ``CONTROL_SD_FLOOR_QUANTILE`` quantile of the
    positive SDs (or 1e-3 when no gene varies).
    """
    sd = control_cells.std(0, ddof=1) if len(control_cells) > 1 else np.zeros(control_cells.shape[1])
    positive = sd[sd > 0]
    floor = float(np.quantile(positive, CONTROL_SD_FLOOR_QUANTILE)) if positive.size else 1e-3
    return np.maximum(sd, floor)


def _control_sd_calibrator(scorer: _Scorer, split: Split) -> ConformalCalibrator | None:
    """The trivial sigma (control SD) conformalised on the validation conditions, as the model's calibrator is."""
    val = np.asarray(split.val)
    keys = sorted({(scorer.labels[r], scorer.contexts[r]) for r in val.tolist()})
    y, mu, sd = [], [], []
    for cond, ctx in keys:
        rows = val[(scorer.labels[val] == cond) & (scorer.contexts[val] == ctx)]
        y.append(scorer.lognorm(rows).mean(0))
        mu.append(scorer.query(cond, ctx).mean)
        sd.append(control_sd(scorer.control_cells(ctx)))
    return ConformalCalibrator.fit(np.stack(y), np.stack(mu), np.stack(sd)) if y else None


def _fit_baselines(scorer: _Scorer, split: Split, library_key: str | None) -> tuple[dict, dict[str, str]]:
    model, adata = scorer.model, scorer.adata
    tmp = adata.copy()
    tmp.obs[CONTEXT_COLUMN] = scorer.contexts
    kw = {"context_key": CONTEXT_COLUMN, "control": scorer.control, "delimiter": model.vocab.delimiter,
          "library_key": library_key}  # fmt: skip
    train_pb = pseudobulk(tmp, model.perturbation_key, indices=split.train, **kw)
    val_pb = None
    if len(split.val):
        train_ctrl = split.train[scorer.labels[split.train] == scorer.control]
        val_pb = pseudobulk(tmp, model.perturbation_key, indices=np.union1d(split.val, train_ctrl), **kw)
    fitted, skipped = {}, {}
    for name in BASELINES.names():
        try:
            fitted[name] = BASELINES.get(name)().fit(train_pb, priors=model.priors, validation=val_pb)
        except InvalidInputError as err:  # e.g. the linear model without gene priors
            skipped[name] = str(err)
    return fitted, skipped


def _latent_compositions(
    scorer: _Scorer, split: Split, condition: str, ctx: str, additive: np.ndarray | None
) -> tuple[QueryPrediction | None, QueryPrediction | None]:
    """Latent-additive and latent-interaction predictions of a combination (``None`` unless every single trained).

    ``latent_additive`` decodes the sum of the training singles' observed latent shifts.
    ``latent_interaction`` keeps the gene-space additive prediction and adds only what the decoder's
    non-linearity makes of the sum: ``additive + D(s_A + s_B) - D(s_A) - D(s_B)`` with ``D(s)`` the
    decoded mean shift of latent shift ``s`` (so the singles' responses are exact, not squeezed through
    the VAE, and the latent model contributes the interaction).
    """
    parts = split_label(condition, scorer.control, scorer.model.vocab.delimiter, key=None)
    if len(parts) < 2:
        return None, None
    train = np.asarray(split.train)
    ctrl = scorer.control_rows(ctx)
    shifts = []
    for agent in parts:
        rows = train[(scorer.labels[train] == agent) & (scorer.contexts[train] == ctx)]
        if len(rows) == 0:
            return None, None
        shifts.append(observed_latent_shift(scorer.model, scorer.adata, rows, ctrl))
    resp = scorer.decode(sum(shifts), ctx)
    joint = QueryPrediction(mean=resp.mean, cells=log_normalize(resp.counts, library=resp.library))
    if additive is None:
        return joint, None
    interaction = resp.mean - resp.control_mean  # D(sum), then minus each D(s_a)
    for s in shifts:
        single = scorer.decode(s, ctx)
        interaction = interaction - (single.mean - single.control_mean)
    return joint, QueryPrediction(mean=np.asarray(additive, np.float64) + interaction)


def evaluate_perturb(
    model_dir: str | Path,
    data: str | Path | Any,
    out: str | Path,
    *,
    gene_sets: Sequence[str] | None = None,
    seed: int = 0,
    library_key: str | None = None,
    cell_eval: bool = False,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """``genailab perturb evaluate``: the model and every baseline on the test split saved in ``model_dir``.

    ``library_key`` defaults to the run's (``run_config.json``); see the module docstring for the methods.
    """
    out = check_writable(out, argument="--out")
    d = Path(model_dir)
    model = load_model(d, expected=PerturbDeltaModel)
    split = Split.load(split_path(d))
    run_cfg = dict((read_run_config(d) or {}).get("config", {}))
    adata = read_h5ad(data) if isinstance(data, (str, Path)) else data
    if int(split.params.get("n_obs", adata.n_obs)) != adata.n_obs:
        raise InvalidInputError(
            f"the split in {str(d)!r} is for {split.params.get('n_obs')} cells but DATA has {adata.n_obs}; "
            "evaluate on the data the model was trained on."
        )
    lk = library_key if library_key is not None else run_cfg.get("library_key")
    library, warnings = resolve_library(adata, lk)
    scorer = _Scorer(model, adata, library, seed)
    baselines, skipped = _fit_baselines(scorer, split, lk)
    control, delim = scorer.control, model.vocab.delimiter
    seen_agents = count_seen_agents(scorer.labels, split.train, control=control, delimiter=delim)
    test = np.asarray(split.test)
    queries = sorted({(scorer.labels[r], scorer.contexts[r]) for r in test.tolist()})
    ctrl_cal = _control_sd_calibrator(scorer, split)
    methods = ["genailab", "control_sd", *baselines, "latent_additive", "latent_interaction", "vae_oracle"]
    truths, preds = [], {m: [] for m in methods}
    seen_of = {}
    for condition, ctx in queries:
        rows = test[(scorer.labels[test] == condition) & (scorer.contexts[test] == ctx)]
        ctrl_x = scorer.control_cells(ctx)
        truths.append(QueryTruth(condition=condition, context=ctx, perturbed=scorer.lognorm(rows), control=ctrl_x))
        seen_of[(condition, ctx)] = seen_label(condition, seen_agents, control=control, delimiter=delim)
        pred = scorer.query(condition, ctx)
        cells = log_normalize(pred.counts, library=pred.library)
        preds["genailab"].append(
            QueryPrediction(mean=pred.mean, sigma=pred.sigma, cells=cells, ood_score=pred.ood_score)
        )
        preds["control_sd"].append(QueryPrediction(mean=pred.mean, sigma=control_sd(ctrl_x)))
        for name, base in baselines.items():
            m = base.predict(condition, ctx)
            cells_ref = ctrl_x if name == "no_change" else None  # the energy distance's reference
            preds[name].append(None if m is None else QueryPrediction(mean=np.asarray(m, np.float64), cells=cells_ref))
        additive = baselines["additive"].predict(condition, ctx) if "additive" in baselines else None
        joint, hybrid = _latent_compositions(scorer, split, condition, ctx, additive)
        preds["latent_additive"].append(joint)
        preds["latent_interaction"].append(hybrid)
        preds["vae_oracle"].append(
            scorer.decoded(observed_latent_shift(model, adata, rows, scorer.control_rows(ctx)), ctx)
        )
    sets = {}
    for path in gene_sets if gene_sets is not None else list(run_cfg.get("gene_sets", []))[:1]:
        sets.update(read_gmt(path))
    calibrators = {k: v for k, v in (("genailab", model.calibrator), ("control_sd", ctrl_cal)) if v is not None}
    negatives = list(model.ood_negatives)
    evaluation = evaluate_perturbation_predictions(
        truths,
        preds,
        genes=list(model.vae.genes),
        gene_sets=sets or None,
        calibrator=calibrators or None,
        ood_negatives={"genailab": negatives} if negatives else None,
        sigma_reference={"genailab": "control_sd"},
        compare_to=COMPARE_TO,
        n_boot=n_boot,
        seed=seed,
    )
    per_query = evaluation.per_query
    per_query["seen"] = [seen_of[(c, x)] for c, x in zip(per_query["condition"], per_query["context"], strict=True)]
    by_seen = _by_seen(per_query, methods, n_boot=n_boot, seed=seed)
    evaluation.settings.update(
        {
            "library_key": lk,
            "normalisation": "log1p(counts / obs[library_key] * 1e4)" if lk else "log1p(counts / row sum * 1e4)",
            "warnings": warnings,
            "skipped_baselines": skipped,
            "validation_conditions": split.params.get("val_conditions", []),
            "ceilings": {
                "vae_oracle": "decodes the held-out cells' own observed latent shift: a ceiling, not a prediction"
            },  # fmt: skip
            "references": {
                "control_sd": "genailab's mean with the control cells' per-gene SD as sigma (floored at the "
                "10th percentile of the positive SDs), conformalised on the validation conditions"
            },  # fmt: skip
            "seen": "k/n: k of the query's n agents have single-agent cells in training",
            "ood_negatives": "validation conditions" if negatives else "none (no OOD AUROC)",
        }
    )
    summary: dict[str, Any] = {}
    if cell_eval:
        summary["cell_eval"] = _cell_eval_or_note(truths, preds, list(model.vae.genes), out)
        evaluation.settings["cell_eval"] = summary["cell_eval"]
    paths = write_perturbation_report(evaluation, out, truths=truths, predictions=preds,
                                      title=f"Perturbation evaluation: {split.name} split")  # fmt: skip
    result = evaluation.to_dict()
    summary = {
        "model_dir": str(d.resolve()),
        "split": split.name,
        "fold": split.params.get("fold"),
        "library_key": lk,
        "warnings": warnings,
        "n_queries": len(queries),
        "methods": list(preds),
        "summary": result["summary"],
        "uncertainty": result["uncertainty"],
        "per_query": result["per_query"],
        "by_seen": by_seen,
        **{k: v for k, v in result.items() if k not in ("summary", "uncertainty", "per_query")},
        **summary,
        "files": {k: str(v) for k, v in paths.items()},
        "seed": seed,
    }
    atomic_write_json(out / "evaluate.json", summary)
    return summary


def _by_seen(per_query: Any, methods: Sequence[str], *, n_boot: int, seed: int) -> dict[str, Any]:
    """Summary and paired comparisons per seen-ness group (``"2/2"``, ``"1/2"``, ...)."""
    metrics = [m for m in METRICS if m in per_query.columns]
    out = {}
    for group in sorted(set(per_query["seen"].tolist()), reverse=True):
        sub = per_query[per_query["seen"] == group]
        present = [m for m in methods if (sub["method"] == m).any()]
        out[group] = {
            "summary": summarise_metrics(sub, present, metrics, n_boot=n_boot, seed=seed).to_dict(orient="records"),
            "comparisons": comparison_table(sub, COMPARE_TO, n_boot=n_boot, seed=seed).to_dict(orient="records"),
        }
    return out


def _cell_eval_or_note(
    truths: Sequence[QueryTruth], preds: Mapping[str, Sequence[QueryPrediction | None]], genes: list[str], out: Path
) -> dict[str, Any]:
    """cell-eval's Pearson-delta and DE overlap of every method with predicted cells, beside ours (or why not).

    cell-eval has no contexts, so it runs once per context, with that context's control cells as the
    control of both the real and the predicted AnnData. ``ours_pearson_delta_cells`` is our Pearson delta of
    the same predicted cells' mean (the figure cell-eval's ``pearson_delta`` measures).
    """
    try:
        from cell_eval import MetricsEvaluator
    except ImportError:
        return {"skipped": "cell-eval is not installed (pip install 'genailab[eval]')"}
    import anndata as ad
    import pandas as pd

    def frame(blocks: list[tuple[str, np.ndarray]]) -> Any:
        obs = pd.DataFrame({"target": [lab for lab, x in blocks for _ in range(len(x))]})
        obs.index = [f"c{i}" for i in range(len(obs))]
        return ad.AnnData(np.vstack([x for _, x in blocks]).astype(np.float32), obs=obs,
                          var=pd.DataFrame(index=list(genes)))  # fmt: skip

    ctrl_label, scores = "__control__", {}
    for method, ps in preds.items():
        if method == "no_change" or not any(p is not None and p.cells is not None for p in ps):
            continue
        rows = []
        for ctx in sorted({t.context for t in truths}):
            idx = [
                i for i, t in enumerate(truths) if t.context == ctx and ps[i] is not None and ps[i].cells is not None
            ]
            if not idx:
                continue
            ctrl = truths[idx[0]].control
            real = frame([(ctrl_label, ctrl), *((truths[i].condition, truths[i].perturbed) for i in idx)])
            pred = frame([(ctrl_label, ctrl), *((truths[i].condition, ps[i].cells) for i in idx)])
            evaluator = MetricsEvaluator(pred, real, control_pert=ctrl_label, pert_col="target", num_threads=1,
                                         outdir=str(out / method / (ctx or "all")))  # fmt: skip
            res, _ = evaluator.compute(profile="minimal", write_csv=False)
            table = res.to_pandas().set_index("perturbation")
            for i in idx:
                t, c = truths[i], ps[i].cells
                base = t.control.mean(0)
                ours = float(np.corrcoef(c.mean(0) - base, t.perturbed.mean(0) - base)[0, 1])
                got = table.loc[t.condition] if t.condition in table.index else {}
                rows.append({"condition": t.condition, "context": ctx, "ours_pearson_delta_cells": ours,
                             "cell_eval_pearson_delta": _num(got, "pearson_delta"),
                             "cell_eval_overlap_at_N": _num(got, "overlap_at_N")})  # fmt: skip
        scores[method] = rows
    return {"version": _version("cell-eval"), "profile": "minimal", "per_query": scores}


def _num(row: Any, key: str) -> float | None:
    try:
        v = float(row[key])
    except (KeyError, TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)
