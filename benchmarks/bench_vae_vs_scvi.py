"""genailab LatentTokenVAE vs scvi-tools SCVI: training throughput and held-out NLL, side by side.

Target (issue): genailab trains at >= 2x scvi-tools' cells/s with a held-out NLL no worse.

Data: ``kang2018_pbmc_ctrl`` from the shared data folder (8,684 PBMCs x 2,511 genes, raw UMI counts,
batch = ``obs['sample_id']``, 5 donors). Skipped (exit 0) when the folder is absent.

Fairness:

- one seeded ``genailab.data.random_split(n, val_fraction=0.1, test_fraction=0.1, seed)`` per seed, so
  both tools see identical training cells and are scored on identical held-out test cells. Both train
  on the training cells only, without validation or early stopping (scVI never validates unless early
  stopping is on, so this is its default path); the validation cells are unused by both;
- same model size and objective: one hidden layer of 128, latent 10 (genailab: 2 tokens x 5),
  dropout 0.1, NB likelihood with one theta per gene, decoder conditioned on the donor, observed library
  size; same training procedure: batch 128 with the last partial batch dropped, 30 epochs, AdamW
  (lr 1e-3, weight decay 1e-6, eps 1e-8), KL weight rising linearly per step over 5 epochs.
  ``--scvi-plan stock`` instead trains scVI with its own defaults (Adam eps 0.01, 400-epoch warm-up);
- architecture details stay each tool's own (scVI: BatchNorm, one-hot batch injected in every decoder
  layer, log1p(x) encoder input; genailab: LayerNorm + GELU, batch embedding at the decoder input,
  log1p(normalised x) encoder input);
- each (method, seed) runs in a fresh process pinned to the same number of torch threads (2), the
  method order alternating between seeds; cells/s = n_train * epochs / wall time of the train call
  (``model.fit`` / ``model.train``, including their setup; genailab's own epoch-only
  ``TrainResult.train_cells_per_s`` is reported beside it);
- held-out NLL is computed by the same code for both (``_common.evaluate``): posterior-mean latent ->
  decoder NB (mu, theta) with the cell's observed library and donor -> ``-sum_g log_nb_positive``.
  scVI's own ``get_reconstruction_error`` (one posterior sample) is reported for reference.

Usage::

    .venv/bin/python benchmarks/bench_vae_vs_scvi.py               # 3 seeds x 2 methods, ~4-5 min on 2 cores
    .venv/bin/python benchmarks/bench_vae_vs_scvi.py --epochs 5 --seeds 0

Writes ``benchmarks/results/vae_vs_scvi.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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

DATASET = "kang2018_pbmc_ctrl"
BATCH_KEY = "sample_id"
SPEEDUP_TARGET = 2.0
NLL_REL_TOLERANCE = 0.005  # genailab's NLL may exceed scVI's by at most 0.5%


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
        help="results JSON (default: benchmarks/results/vae_vs_scvi.json, or vae_vs_scvi_scvi-stock.json)",
    )
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.out is None:
        suffix = "" if args.scvi_plan == "matched" else "_scvi-stock"
        args.out = RESULTS_DIR / f"vae_vs_scvi{suffix}.json"
    return args


def settings(args: argparse.Namespace) -> VAESettings:
    return VAESettings(epochs=args.epochs, threads=args.threads, scvi_plan=args.scvi_plan)


def summarise(runs: list[dict], seeds: list[int]) -> dict:
    by = {m: {r["seed"]: r for r in runs if r["method"] == m} for m in METHODS}
    ratios = [by["genailab"][s]["cells_per_s"] / by["scvi"][s]["cells_per_s"] for s in seeds]
    cpu_ratios = [by["genailab"][s]["cells_per_cpu_s"] / by["scvi"][s]["cells_per_cpu_s"] for s in seeds]
    dnll = [by["genailab"][s]["nll_per_cell"] - by["scvi"][s]["nll_per_cell"] for s in seeds]
    summary: dict = {"per_method": {}, "paired": {}}
    for m in METHODS:
        rs = [by[m][s] for s in seeds]
        keys = ["cells_per_s", "cells_per_cpu_s", "train_s", "train_cpu_s", "nll_per_cell", "kl_per_cell"]
        keys += ["peak_rss_mb", "setup_s", "loadavg_start", "loadavg_end", "cpu_utilisation", "other_cpu_fraction"]
        keys += ["own_train_cells_per_s", "own_nll_per_cell"] if m == "genailab" else []
        keys += ["own_reconstruction_error"] if m == "scvi" else []
        summary["per_method"][m] = {
            k: dict(zip(("mean", "sd"), mean_sd([r[k] for r in rs]), strict=True)) for k in keys
        }
    nll_g = summary["per_method"]["genailab"]["nll_per_cell"]["mean"]
    nll_s = summary["per_method"]["scvi"]["nll_per_cell"]["mean"]
    ratio_mean = mean_sd(ratios)[0]
    summary["paired"] = {
        "speedup_per_seed": ratios,
        "speedup": dict(zip(("mean", "sd"), mean_sd(ratios), strict=True)),
        "speedup_cpu_time_per_seed": cpu_ratios,
        "speedup_cpu_time": dict(zip(("mean", "sd"), mean_sd(cpu_ratios), strict=True)),
        "delta_nll_per_seed": dnll,
        "delta_nll": dict(zip(("mean", "sd"), mean_sd(dnll), strict=True)),
        "delta_nll_relative": (nll_g - nll_s) / nll_s,
    }
    summary["targets"] = {
        "speedup_target": SPEEDUP_TARGET,
        "speedup_pass": ratio_mean >= SPEEDUP_TARGET,
        "nll_tolerance_relative": NLL_REL_TOLERANCE,
        "nll_pass": nll_g <= nll_s * (1 + NLL_REL_TOLERANCE),
    }
    return summary


def report(runs: list[dict], seeds: list[int], summary: dict) -> None:
    by = {m: [r for r in runs if r["method"] == m] for m in METHODS}
    ratios = summary["paired"]["speedup_per_seed"]
    cpu_ratios = summary["paired"]["speedup_cpu_time_per_seed"]
    dnll = summary["paired"]["delta_nll_per_seed"]
    rows = []
    for m in METHODS:
        rs = by[m]
        rows.append(
            [
                m,
                fmt([r["cells_per_s"] for r in rs], 0),
                fmt(ratios, 2) if m == "genailab" else "1.00",
                fmt([r["train_s"] for r in rs], 1),
                fmt([r["cells_per_cpu_s"] for r in rs], 0),
                fmt(cpu_ratios, 2) if m == "genailab" else "1.00",
                fmt([r["nll_per_cell"] for r in rs], 1),
                fmt(dnll, 1) if m == "genailab" else "0.0",
                fmt([r["kl_per_cell"] for r in rs], 1),
                fmt([r["peak_rss_mb"] for r in rs], 0),
            ]
        )
    print(
        f"\n{DATASET}: {runs[0]['n_train']} train / {runs[0]['n_test']} test cells x {runs[0]['n_genes']} "
        f"genes, seeds {seeds}, mean ± sd over seeds\n"
    )
    print_table(
        [
            "method",
            "train cells/s",
            "ratio vs scVI",
            "train wall s",
            "cells/CPU-s",
            "ratio (CPU)",
            "test NLL/cell",
            "Δ NLL vs scVI",
            "test KL/cell",
            "peak RSS MB",
        ],
        rows,
    )
    g, s = summary["per_method"]["genailab"], summary["per_method"]["scvi"]
    print(
        f"\nreference: genailab TrainResult.train_cells_per_s (epochs only) "
        f"{g['own_train_cells_per_s']['mean']:,.0f} ± {g['own_train_cells_per_s']['sd']:,.0f}; "
        f"genailab evaluate_nll {g['own_nll_per_cell']['mean']:.1f}; "
        f"scVI get_reconstruction_error (1 posterior sample) {s['own_reconstruction_error']['mean']:.1f}"
    )
    print(contention_note(runs))
    t = summary["targets"]
    sp = summary["paired"]["speedup"]
    print(
        f"\nspeed  target ratio >= {SPEEDUP_TARGET:g}: {sp['mean']:.2f} ± {sp['sd']:.2f} -> "
        f"{'PASS' if t['speedup_pass'] else 'FAIL'}"
    )
    print(
        f"NLL    target genailab <= scVI + {100 * NLL_REL_TOLERANCE:g}%: "
        f"{100 * summary['paired']['delta_nll_relative']:+.2f}% -> {'PASS' if t['nll_pass'] else 'FAIL'}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = settings(args)
    if args.worker:
        worker_main(args.worker, args.seed, s, DATASET, BATCH_KEY, args.out)
        return 0
    from genailab.data import shared_data_dir

    if shared_data_dir() is None:
        print(f"SKIP: no shared data folder (set GENAILAB_SHARED_DATA); {DATASET} is needed.")
        return 0
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    t0 = time.perf_counter()
    runs = run_seeds(
        Path(__file__),
        seeds,
        s,
        lambda r: (
            f"{r['cells_per_s']:8,.0f} cells/s, train {r['train_s']:5.1f}s, "
            f"test NLL {r['nll_per_cell']:.2f}, peak RSS {r['peak_rss_mb']:.0f} MB"
        ),
    )
    if runs is None:
        return 0
    summary = summarise(runs, seeds)
    report(runs, seeds, summary)
    write_json(
        args.out,
        {
            "benchmark": "vae_vs_scvi",
            "dataset": DATASET,
            "batch_key": BATCH_KEY,
            "split": "genailab.data.random_split(n, val_fraction=0.1, test_fraction=0.1, seed); "
            "both train on split.train only (no validation, no early stopping)",
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
