"""Choose perturbation hyper-parameters on validation conditions only, and record every candidate tried.

For one task of ``bench_perturb_norman.py`` and one outer fold, the outer test conditions are removed from
the data *before anything else* (their cells never reach this script's training, priors, normalisation or
scoring). The remaining training conditions are split again by the same split kind (inner fold
``--inner-fold`` of ``--inner-folds``): the inner held-out conditions are the *selection* conditions. Each
candidate (formulation, base shift, VAE KL weight, ensemble size, ...) trains on the inner training cells
exactly as the CLI does and is scored on the selection conditions; the best Pearson delta on the top-20 DE
genes wins (ties: lower L2 over the top-N genes). The JSON under ``benchmarks/results/`` lists the outer test
conditions (for the audit), the selection conditions, every candidate with its scores, and the choice,
which ``bench_perturb_norman.py --hparams FILE`` then applies; test conditions are scored once, there.

Usage::

    python benchmarks/select_perturb_hparams.py [--task norman_combo] [--fold 0] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import limit_threads, machine_info, source_fingerprint, write_json  # noqa: E402
from bench_perturb_norman import TASKS, apply_run_overrides, load_task_data, task_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GRID = {
    "model.formulation": ["shift", "delta"],
    "model.base_shift": ["context_mean", "none"],
    "vae.kl_weight": ["0.1", "0.05"],
    "model.n_members": [3, 5],
}
QUICK_CANDIDATES = [
    {"model.base_shift": "context_mean"},
    {"model.base_shift": "none"},
]
SCORE = ("pearson_delta_de20", "l2_top_n")  # maximise the first; ties: minimise the second


def outer_test_rows(adata: Any, config: Any) -> tuple[np.ndarray, list[str]]:
    """Rows and conditions of the outer fold's test set (the split the benchmark will score once)."""
    from genailab.foundation.perturbation.priors import build_gene_priors
    from genailab.workflows.perturb import make_split

    priors = build_gene_priors(
        gene_sets=list(config.gene_sets), grn=list(config.grn), readout_genes=list(adata.var_names),
        n_components=config.prior_components, seed=config.seed,
    )  # fmt: skip
    split = make_split(adata, config, priors)
    labels = adata.obs[config.perturbation_key].astype(str).to_numpy()
    contexts = adata.obs[config.context_key].astype(str).to_numpy()
    held = sorted({f"{labels[r]}@{contexts[r]}" for r in split.test.tolist()})
    return np.asarray(split.test), held


def candidates(quick: bool) -> list[dict[str, Any]]:
    if quick:
        return [dict(c) for c in QUICK_CANDIDATES]
    keys = list(GRID)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(GRID[k] for k in keys))]


def score_candidate(adata: Any, config: Any, overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    """Train on the inner training cells, score genailab on the inner held-out (selection) conditions."""
    from genailab.workflows.perturb import evaluate_perturb, train_perturb_on

    cfg = apply_run_overrides(config, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = train_perturb_on(adata, Path(tmp) / "run", cfg)
        ev = evaluate_perturb(Path(tmp) / "run", adata, Path(tmp) / "eval", seed=seed, n_boot=200)
    row = next(r for r in ev["summary"] if r["method"] == "genailab")
    return {
        "overrides": overrides,
        "selection_conditions": run["held_out"] + ["@".join(p) for p in run["held_out_pairs"]],
        "scores": {m: row.get(f"{m}_mean") for m in SCORE},
        "wall_s": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="norman_combo", choices=list(TASKS))
    ap.add_argument("--fold", type=int, default=0, help="Outer fold whose test conditions are excluded.")
    ap.add_argument("--inner-fold", type=int, default=0)
    ap.add_argument("--inner-folds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="Two candidates with the benchmark's quick settings.")
    ap.add_argument("--out", type=Path, help="Result JSON (default benchmarks/results/perturb_hparams_TASK.json).")
    args = ap.parse_args()
    limit_threads(args.threads)
    t0 = time.perf_counter()
    adata = load_task_data(args.task)
    outer = task_config(args.task, args.fold, args.seed, quick=args.quick)
    test_rows, test_conditions = outer_test_rows(adata, outer)
    keep = np.setdiff1d(np.arange(adata.n_obs), test_rows)
    train_side = adata[keep].copy()  # the outer test cells are gone from here on
    inner = outer.replace(split_fold=args.inner_fold, split_folds=args.inner_folds)
    tried = []
    for overrides in candidates(args.quick):
        result = score_candidate(train_side, inner, overrides, args.seed)
        leaked = set(result["selection_conditions"]) & {c.split("@")[0] for c in test_conditions}
        if leaked:
            raise SystemExit(f"selection conditions overlap the test conditions: {sorted(leaked)}")
        tried.append(result)
        print(f"{overrides}: {result['scores']} ({result['wall_s']:.0f} s)", flush=True)
    valid = [t for t in tried if t["scores"][SCORE[0]] is not None]
    best = max(valid, key=lambda t: (t["scores"][SCORE[0]], -(t["scores"][SCORE[1]] or np.inf))) if valid else None
    out = args.out or RESULTS / f"perturb_hparams_{args.task}{'_quick' if args.quick else ''}.json"
    write_json(
        out,
        {
            "task": args.task,
            "outer_fold": args.fold,
            "inner_fold": args.inner_fold,
            "inner_folds": args.inner_folds,
            "seed": args.seed,
            "quick": args.quick,
            "criterion": f"max {SCORE[0]} of genailab on the selection conditions; ties: min {SCORE[1]}",
            "outer_test_conditions_excluded": test_conditions,
            "n_cells_used": int(train_side.n_obs),
            "candidates": tried,
            "chosen": {args.task: best["overrides"] if best else {}},
            "machine": machine_info(args.threads),
            "source": source_fingerprint(),
            "wall_s": time.perf_counter() - t0,
        },
    )
    print(f"chose {best['overrides'] if best else None}; wrote {out}")


if __name__ == "__main__":
    main()
