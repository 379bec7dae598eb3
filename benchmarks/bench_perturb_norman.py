"""Perturbation response on Norman 2019 / McFaline 2023: genailab vs every baseline, over folds of held-out conditions.

Tasks (one fresh process per (task, fold, seed), all on the same hardware; the protocol of issue 12):

- ``norman_combo``: every Norman double in 5 folds (``combo_kfold``); reported separately for doubles with
  2/2, 1/2 and 0/2 singles seen in training; targets: beat ``additive`` and ``shrunk_additive`` on
  Pearson-delta (top-20 DE) and L2 over the top-N genes.
- ``norman_single``: the singles with prior features in 5 folds (``single_kfold``); target: beat
  ``train_mean`` on Pearson-delta (all genes and top-20 DE).
- ``mcfaline_context``: one (perturbation, glioma line) pair per fold (``context_pair``); target: beat
  ``train_mean`` of the same line.

Standard normalisation: every cell, observed or predicted, is log-normalised by its whole-transcriptome
library (``library_key="ncounts"``), not the row sum over the 500 HVGs. Every table holds every baseline
(no-change, train-mean, additive, shrunk additive, latent-additive, the VAE oracle marked as a ceiling,
linear with prior and with data-derived embeddings, kNN in prior space, context-mean). Intervals are 95%
bootstrap intervals over held-out conditions pooled across folds (each condition averaged over seeds
first), and paired differences of genailab vs additive / shrunk_additive / train_mean the same way.

Hyper-parameters are the library defaults or a JSON written by ``select_perturb_hparams.py`` (``--hparams``),
which chooses on validation conditions only. ``--quick`` (2 members, 10 epochs) is a smoke run. Usage::

    python benchmarks/bench_perturb_norman.py [--tasks norman_combo ...] [--folds 0 1 2 3 4] [--seeds 0]
        [--threads 2] [--quick] [--hparams benchmarks/results/perturb_hparams.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, print_table, run_worker, source_fingerprint, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "perturb_norman.json"
TASKS = {
    "norman_combo": {"dataset": "norman19", "split": "combo_kfold", "targets": ("additive", "shrunk_additive")},
    "norman_single": {"dataset": "norman19", "split": "single_kfold", "targets": ("train_mean",)},
    "mcfaline_context": {"dataset": "mcfaline23", "split": "context_pair", "targets": ("train_mean",)},
}
COMPARE_TO = ("additive", "shrunk_additive", "train_mean")
TABLE_METRICS = ("pearson_delta", "pearson_delta_de20", "mse_de20", "l2_top_n", "direction_acc_de20", "e_distance")
UNCERTAINTY_KEYS = (
    "coverage_90", "coverage90_de20_mean", "coverage90_de20_in_target", "width90_de20_mean", "crps_de20_mean", "ece",
    "ood_auroc", "spearman_ood_error_pearson_de20", "vs_reference",
)  # fmt: skip
QUICK = {"model.n_members": 2, "vae_train.max_epochs": 10, "train.max_epochs": 10, "model.mc_cells": 500}


def _shared() -> Path:
    from genailab.data.datasets import shared_data_dir

    d = shared_data_dir()
    if d is None:
        raise SystemExit("../shared/data is absent; this benchmark needs the Norman/McFaline data.")
    return d


def task_config(task: str, fold: int, seed: int, *, quick: bool, hparams: dict[str, Any] | None = None) -> Any:
    """The run config of one (task, fold, seed): standard normalisation, priors, optional chosen hyper-parameters."""
    from genailab.workflows.runconfig import PerturbRunConfig

    data = _shared()
    sets = data / "gene_sets"
    config = PerturbRunConfig(
        seed=seed,
        perturbation_key="condition",
        control="control",
        context_key="cell_type",
        library_key="ncounts",
        split=TASKS[task]["split"],
        split_fold=fold,
        split_folds=5,
        gene_sets=(str(sets / "h.all.v7.5.1.symbols.gmt"), str(sets / "GO_BP_propagated_15-500_human_symbols.gmt.gz")),
        grn=(str(data / "grn" / "omnipath_CollecTRI_subset_edges.tsv.gz"),),
    )
    overrides = {"train.progress_bar": False, "vae_train.progress_bar": False}
    overrides.update((hparams or {}).get(task, {}))
    if quick:
        overrides.update(QUICK)
    return apply_run_overrides(config, overrides)


def apply_run_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """``config`` with dotted overrides; ``vae.*`` and ``backbone_config.*`` extend the pass-through sections."""
    from genailab.config import apply_overrides

    sections = ("vae", "backbone_config")
    rest = {k: v for k, v in overrides.items() if k.partition(".")[0] not in sections}
    config = apply_overrides(config, rest)
    for name in sections:
        items = {k.partition(".")[2]: str(v) for k, v in overrides.items() if k.partition(".")[0] == name}
        if items:
            config = config.replace(**{name: tuple(sorted({**dict(getattr(config, name)), **items}.items()))})
    return config


def load_task_data(task: str) -> Any:
    import anndata as ad

    adata = ad.read_h5ad(_shared() / "norman19_mcfaline23" / "norman19_mcfaline23_counts.h5ad")
    if "ncounts" not in adata.obs.columns:
        raise SystemExit("obs['ncounts'] (whole-transcriptome library sizes) is missing from the data.")
    return adata[adata.obs["dataset"].astype(str) == TASKS[task]["dataset"]].copy()


def worker(task: str, fold: int, seed: int, out: Path, quick: bool, hparams: Path | None) -> None:
    from genailab.workflows.perturb import evaluate_perturb, train_perturb_on

    chosen = json.loads(hparams.read_text())["chosen"] if hparams else None
    config = task_config(task, fold, seed, quick=quick, hparams=chosen)
    adata = load_task_data(task)
    hallmark = str(_shared() / "gene_sets" / "h.all.v7.5.1.symbols.gmt")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = train_perturb_on(adata, Path(tmp) / "run", config)
        t_train = time.perf_counter() - t0
        ev = evaluate_perturb(Path(tmp) / "run", adata, Path(tmp) / "eval", gene_sets=[hallmark], seed=seed)
    result = {
        "task": task,
        "fold": fold,
        "seed": seed,
        "quick": quick,
        "held_out": run["held_out"] + ["@".join(p) for p in run["held_out_pairs"]],
        "seen": run["seen"],
        "val_conditions": run["split"]["val_conditions"],
        "train_wall_s": t_train,
        "n_trainable_parameters": run["n_trainable_parameters"],
        "per_query": ev["per_query"],
        "summary": ev["summary"],
        "uncertainty": ev["uncertainty"],
        "by_seen": ev["by_seen"],
        "settings": ev["settings"],
    }
    out.write_text(json.dumps(result))


def _pooled(runs: list[dict]) -> Any:
    """Per-query rows of every run; each (method, condition, context) averaged over seeds."""
    import pandas as pd

    frame = pd.DataFrame([{**row, "fold": r["fold"]} for r in runs for row in r["per_query"]])
    cols = [m for m in TABLE_METRICS if m in frame.columns]
    frame[cols] = frame[cols].apply(pd.to_numeric, errors="coerce")
    return frame.groupby(["method", "condition", "context", "seen"], as_index=False)[cols].mean()


def _cell(row: dict, metric: str) -> str:
    m, lo, hi = row.get(f"{metric}_mean"), row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if m is None or m != m:
        return "n/a"
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if lo == lo and hi == hi else f"{m:.3f}"


def task_tables(runs: list[dict], *, n_boot: int = 1000) -> dict[str, Any]:
    """Per seen-ness group: every method's mean and 95% interval, and genailab's paired differences."""
    from genailab.evaluation.perturbation_stats import comparison_table, summarise_metrics

    pooled = _pooled(runs)
    metrics = [m for m in TABLE_METRICS if m in pooled.columns]
    methods = ["genailab"] + sorted(set(pooled["method"]) - {"genailab"})
    out = {}
    for group in sorted(set(pooled["seen"]), reverse=True):
        sub = pooled[pooled["seen"] == group]
        # every method in every table: one that does not apply to this group shows n = 0
        summary = summarise_metrics(sub, methods, metrics, n_boot=n_boot).to_dict(orient="records")
        comp = comparison_table(sub, COMPARE_TO, metrics=metrics, n_boot=n_boot)
        comp = comp[comp["method"] == "genailab"].to_dict(orient="records")
        n_cond = int(sub[sub["method"] == "genailab"].shape[0])
        out[group] = {"n_conditions": n_cond, "summary": summary, "paired_vs": comp}
        print(f"\n  seen {group}: {n_cond} held-out conditions (mean [95% bootstrap CI over conditions])")
        label = {"vae_oracle": "vae_oracle (ceiling)", "control_sd": "control_sd (trivial sigma, same mean)"}
        rows = [[label.get(r["method"], r["method"]), str(r["n_queries"]), *(_cell(r, m) for m in metrics)]
                for r in summary]  # fmt: skip
        print_table(["method", "n", *metrics], rows)
        for c in comp:
            if c["metric"] in ("pearson_delta", "pearson_delta_de20", "l2_top_n"):
                ci = f"[{c['ci_low']:.3f}, {c['ci_high']:.3f}]"
                print(f"  genailab - {c['reference']} on {c['metric']}: {c['mean_difference']:+.3f} {ci}, "
                      f"better on {c['fraction_better']:.0%} of {c['n_queries']}")  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="Smoke run: 2 members, 10 epochs (figures not reportable).")
    ap.add_argument("--hparams", type=Path, help="JSON written by select_perturb_hparams.py ('chosen' per task).")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--results", type=Path, default=RESULTS, help="Where to write the results JSON.")
    ap.add_argument("--worker", nargs=3, metavar=("TASK", "FOLD", "SEED"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--resume-from", type=Path,
                    help="results JSON of an earlier invocation (same code): its runs of other (task, fold, seed) "
                    "join this one's tables")  # fmt: skip
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]), args.out, args.quick, args.hparams)
        return
    script = Path(__file__).resolve()
    extra = (["--quick"] if args.quick else []) + (["--hparams", str(args.hparams.resolve())] if args.hparams else [])
    runs, t0 = [], time.perf_counter()
    todo = {(t, f, s) for t in args.tasks for f in args.folds for s in args.seeds}
    if args.resume_from:
        earlier = json.loads(args.resume_from.read_text())["runs"]
        runs = [r for r in earlier if (r["task"], r["fold"], r["seed"]) not in todo]
        print(f"kept {len(runs)} finished run(s) from {args.resume_from}")
    tasks = sorted({*args.tasks, *(r["task"] for r in runs)}, key=list(TASKS).index)
    for task in args.tasks:
        for fold in args.folds:
            for seed in args.seeds:
                r = run_worker(script, ["--worker", task, str(fold), str(seed), *extra], args.threads)
                runs.append(r)
                print(f"{task} fold {fold} seed {seed}: held out {r['held_out']} (seen {r['seen']}), "
                      f"{r['process_wall_s']:.0f} s", flush=True)  # fmt: skip
                write_json(args.results, {"partial": True, "runs": runs})
    tables = {}
    for task in tasks:
        task_runs = [r for r in runs if r["task"] == task]
        folds, seeds = sorted({r["fold"] for r in task_runs}), sorted({r["seed"] for r in task_runs})
        print(f"\n{task} (folds {folds}, seeds {seeds}; library_key=ncounts)")
        unc = {m: {k: [r["uncertainty"].get(m, {}).get(k) for r in task_runs] for k in UNCERTAINTY_KEYS}
               for m in ("genailab", "control_sd")}  # fmt: skip
        tables[task] = {"targets": TASKS[task]["targets"], "by_seen": task_tables(task_runs, n_boot=args.n_boot),
                        "uncertainty": unc}  # fmt: skip
    write_json(
        args.results,
        {
            "benchmark": "perturbation response (Norman 2019 / McFaline 2023), folds of held-out conditions",
            "folds": sorted({r["fold"] for r in runs}),
            "seeds": sorted({r["seed"] for r in runs}),
            "resumed_from": str(args.resume_from) if args.resume_from else None,
            "quick": args.quick,
            "hparams": str(args.hparams) if args.hparams else None,
            "machine": machine_info(args.threads),
            "source": source_fingerprint(),
            "wall_s": time.perf_counter() - t0,
            "tasks": tables,
            "runs": runs,
        },
    )
    print(f"\nwrote {args.results} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
