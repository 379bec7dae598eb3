"""Reconstruction quality of genailab's LatentTokenVAE vs scvi-tools SCVI on Norman19 + McFaline23.

Data: ``norman19_mcfaline23`` from the shared data folder (5,961 cells x 500 HVGs, integer counts
recovered from perturbench's ``devel.h5ad``; K562 CRISPRa + three glioblastoma lines with CRISPRi).
Skipped (exit 0) when the folder is absent.

Batch key: ``obs['cell_type']`` (k562, A172, T98G, U87MG). The four cell lines are the strongest
nuisance structure here and ``dataset`` is nested in it (norman19 == k562), so ``cell_type`` carries
all of ``dataset``'s information and more.

Fairness: exactly the settings of ``bench_vae_vs_scvi.py`` (``_common.VAESettings``): one seeded 80/10/10
``random_split`` per seed shared by both tools, training on the train cells only (no validation, no
early stopping), same width/latent/likelihood/optimiser/KL warm-up/epochs, one process per
``(method, seed)`` pinned to 2 torch threads, and every metric computed by the same code from each
model's posterior mean/sd and decoded NB ``(mu, theta)``:

- held-out NLL per cell (posterior-mean z, observed library, ``-sum_g log_nb_positive``), beside the
  library-scaled per-gene NB baseline ``genailab.evaluation.gene_nb_baseline_nll`` (same split);
- per-perturbation reconstruction: for each ``obs['condition']`` with >= 3 test cells, the Pearson r
  over genes between log1p of the observed mean and of the reconstructed mean (decoded NB mean at the
  posterior mean), both after scaling each cell to the median test library; ``delta r``: the same for
  the shift of each (cell line, perturbation) group from the test controls of its cell line;
- ``genailab.evaluation.marginal_agreement`` of the test counts and one posterior-predictive draw per
  cell (``z ~ q(z|x)``, ``x ~ NB(mu(z), theta)``): per-gene mean / variance / zero-fraction correlations.

Usage::

    .venv/bin/python benchmarks/bench_vae_norman.py            # 3 seeds x 2 methods, ~2 min on 2 cores
    .venv/bin/python benchmarks/bench_vae_norman.py --epochs 5 --seeds 0

Writes ``benchmarks/results/vae_norman.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    METHODS,
    RESULTS_DIR,
    VAESettings,
    contention_note,
    fmt,
    machine_info,
    mean_sd,
    print_table,
    run_seeds,
    source_versions,
    worker_main,
    write_json,
)

DATASET = "norman19_mcfaline23"
BATCH_KEY = "cell_type"
CONDITION_KEY = "condition"
CONTROL = "control"
MIN_CELLS = 3
METRICS = (
    "nll_per_cell",
    "kl_per_cell",
    "condition_r",
    "condition_r_pooled",
    "delta_r",
    "mean_corr",
    "var_corr",
    "zero_fraction_corr",
    "cells_per_s",
    "cells_per_cpu_s",
    "train_s",
    "peak_rss_mb",
    "loadavg_start",
    "cpu_utilisation",
    "other_cpu_fraction",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--epochs", type=int, default=30, help="training epochs for both methods (default 30)")
    p.add_argument("--seeds", type=str, default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per worker (default 2)")
    p.add_argument(
        "--scvi-plan",
        choices=("matched", "stock"),
        default="matched",
        help="scVI optimiser/KL warm-up: genailab's (matched, default) or scVI's own defaults (stock)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default: benchmarks/results/vae_norman.json, or vae_norman_scvi-stock.json)",
    )
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.out is None:
        suffix = "" if args.scvi_plan == "matched" else "_scvi-stock"
        args.out = RESULTS_DIR / f"vae_norman{suffix}.json"
    return args


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def reconstruction_metrics(x: np.ndarray, mean: np.ndarray, obs: Any) -> dict[str, float]:
    """Per-condition and per-(cell line, condition) delta correlations of observed vs reconstructed means.

    ``x`` and ``mean`` are ``(n, G)`` observed counts and decoded means of the same test cells, ``obs``
    their ``obs`` frame. Each cell is scaled to the median library first (the decoded mean carries the
    observed library, so this removes library-size differences between groups for both alike).
    """
    lib = x.sum(1, keepdims=True).clip(min=1.0)
    scale = np.median(lib) / lib
    xn, mn = x * scale, mean * scale
    cond = obs[CONDITION_KEY].astype(str).to_numpy()
    line = obs[BATCH_KEY].astype(str).to_numpy()

    def profile(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.log1p(a[rows].mean(0))

    rs, pooled_obs, pooled_rec = [], [], []
    for c in np.unique(cond):
        rows = cond == c
        if rows.sum() >= MIN_CELLS:
            po, pr = profile(xn, rows), profile(mn, rows)
            rs.append(_pearson(po, pr))
            pooled_obs.append(po)
            pooled_rec.append(pr)
    deltas = []
    for ln in np.unique(line):
        ctrl = (line == ln) & (cond == CONTROL)
        if ctrl.sum() < MIN_CELLS:
            continue
        co, cr = profile(xn, ctrl), profile(mn, ctrl)
        for c in np.unique(cond[(line == ln) & (cond != CONTROL)]):
            rows = (line == ln) & (cond == c)
            if rows.sum() >= MIN_CELLS:
                deltas.append(_pearson(profile(xn, rows) - co, profile(mn, rows) - cr))
    return {
        "condition_r": float(np.nanmean(rs)),
        "condition_r_pooled": _pearson(np.concatenate(pooled_obs), np.concatenate(pooled_rec)),
        "n_conditions": len(rs),
        "delta_r": float(np.nanmean(deltas)) if deltas else float("nan"),
        "n_delta_groups": len(deltas),
    }


def extra_metrics(adapter: Any, adata: Any, split: Any, evaluation: dict) -> dict[str, Any]:
    """Norman-specific metrics of one fitted model (called inside the worker)."""
    from genailab.evaluation import gene_nb_baseline_nll, marginal_agreement

    arr = evaluation["arrays"]
    obs = adata.obs.iloc[split.test]
    out = reconstruction_metrics(arr["x"], arr["mean"], obs)
    out.update(marginal_agreement(arr["x"], arr["sample"]))
    out["baseline_nll_per_cell"] = gene_nb_baseline_nll(adata.X[split.train], adata.X[split.test])
    return out


def report(runs: list[dict], seeds: list[int]) -> dict:
    by = {m: {r["seed"]: r for r in runs if r["method"] == m} for m in METHODS}
    base = [by["scvi"][s]["baseline_nll_per_cell"] for s in seeds]
    summary: dict = {"baseline_nll_per_cell": dict(zip(("mean", "sd"), mean_sd(base), strict=True))}
    for m in METHODS:
        summary[m] = {k: dict(zip(("mean", "sd"), mean_sd([by[m][s][k] for s in seeds]), strict=True)) for k in METRICS}
    dnll = [by["genailab"][s]["nll_per_cell"] - by["scvi"][s]["nll_per_cell"] for s in seeds]
    summary["delta_nll_vs_scvi"] = dict(zip(("mean", "sd"), mean_sd(dnll), strict=True))
    speed = [by["genailab"][s]["cells_per_s"] / by["scvi"][s]["cells_per_s"] for s in seeds]
    summary["speedup_vs_scvi"] = dict(zip(("mean", "sd"), mean_sd(speed), strict=True))
    r0 = runs[0]
    print(
        f"\n{DATASET}: {r0['n_train']} train / {r0['n_test']} test cells x {r0['n_genes']} genes, "
        f"batch = {BATCH_KEY}, seeds {seeds}, mean ± sd over seeds\n"
    )
    rows = [["per-gene NB baseline", fmt(base, 1), "", "", "", "", "", "", "", ""]]
    for m in METHODS:
        rs = [by[m][s] for s in seeds]
        rows.append(
            [
                m,
                fmt([r["nll_per_cell"] for r in rs], 1),
                fmt([r["baseline_nll_per_cell"] - r["nll_per_cell"] for r in rs], 1),
                fmt([r["kl_per_cell"] for r in rs], 1),
                fmt([r["condition_r"] for r in rs], 4),
                fmt([r["delta_r"] for r in rs], 3),
                fmt([r["mean_corr"] for r in rs], 4),
                fmt([r["var_corr"] for r in rs], 4),
                fmt([r["zero_fraction_corr"] for r in rs], 4),
                fmt([r["cells_per_s"] for r in rs], 0),
            ]
        )
    print_table(
        [
            "method",
            "test NLL/cell",
            "gain vs baseline",
            "test KL/cell",
            "condition r",
            "delta r",
            "PPC mean r",
            "PPC var r",
            "PPC zero-frac r",
            "train cells/s",
        ],
        rows,
    )
    print(
        f"\ngenailab - scVI test NLL/cell: {fmt(dnll, 2)} "
        f"({r0['n_conditions']} conditions and {r0['n_delta_groups']} delta groups "
        f"with >= {MIN_CELLS} test cells)"
    )
    print(f"genailab / scVI training cells/s: {fmt(speed, 2)}")
    print(contention_note(runs))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = VAESettings(epochs=args.epochs, threads=args.threads, scvi_plan=args.scvi_plan)
    if args.worker:
        worker_main(args.worker, args.seed, s, DATASET, BATCH_KEY, args.out, extra=extra_metrics)
        return 0
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    t0 = time.perf_counter()
    runs = run_seeds(
        Path(__file__),
        seeds,
        s,
        lambda r: (
            f"test NLL {r['nll_per_cell']:.2f} (baseline {r['baseline_nll_per_cell']:.2f}), "
            f"condition r {r['condition_r']:.4f}, {r['cells_per_s']:,.0f} cells/s"
        ),
    )
    if runs is None:
        return 0
    summary = report(runs, seeds)
    write_json(
        args.out,
        {
            "benchmark": "vae_norman",
            "dataset": DATASET,
            "batch_key": BATCH_KEY,
            "split": "genailab.data.random_split(n, val_fraction=0.1, test_fraction=0.1, seed); "
            "both train on split.train only (no validation, no early stopping)",
            "min_cells_per_group": MIN_CELLS,
            "seeds": seeds,
            "settings": s.to_dict(),
            "machine": machine_info(args.threads),
            "genailab_src_sha256": source_versions(runs),
            "total_wall_s": time.perf_counter() - t0,
            "summary": summary,
            "runs": runs,
        },
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
