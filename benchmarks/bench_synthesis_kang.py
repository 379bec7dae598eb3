"""Conditional synthesis on Kang 2018 PBMCs: genailab latent diffusion vs scVI generation vs the floor.

Side by side in one run, same data, split, hardware and evaluation:

- data: ``../shared/data/kang2018_pbmc_ctrl`` (8,684 cells x 2,511 genes, 4 cell types, 5 donors), a
  seeded 80/20 cell split; every model trains on the same 80% and generates one cell per held-out cell
  with that cell's cell type and donor (``like`` the held-out 20%);
- genailab: ``genailab synth train`` defaults (VAE, then DiT flow matching) conditioned on
  ``cluster_id`` and ``sample_id``;
- scVI prior sampling: SCVI with ``batch_key=sample_id`` and ``cluster_id`` as a categorical covariate
  (so its decoder sees both conditions), ``z ~ N(0, I)``, log-library from scVI's own per-batch prior,
  decoded with the held-out cells' donor and cell type;
- scVI posterior predictive: the held-out cells encoded and decoded again (an upper reference: it
  sees the cells it is scored against);
- the real-vs-real floor and every metric come from :func:`genailab.evaluation.evaluate_synthesis`
  (PCA fit on held-out real cells; per-cell-type MMD, energy, W1, classifier AUC).

Also: sampling throughput and quality against the number of function evaluations (100, 50, 20, 10, 5).
Each method runs in its own process (isolated peak RSS). Targets (issue 3): per-cell-type MMD within
1.5x of the floor, classifier AUC <= 0.60, both better than scVI prior sampling.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CONDITION = "cluster_id"
DONOR = "sample_id"
NFE_GRID = (100, 50, 20, 10, 5)


def _split(adata: Any, seed: int) -> tuple[Any, Any]:
    from genailab.data import random_split

    split = random_split(adata.n_obs, val_fraction=0.0, test_fraction=0.2, seed=seed)
    return adata[split.train].copy(), adata[split.test].copy()


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    per = metrics["per_condition"]
    mmd_ratios = {c: v["mmd"]["ratio"] for c, v in per.items()}
    return {
        "mmd_ratio_overall": metrics["overall"]["mmd"]["ratio"],
        "mmd_ratio_per_type": mmd_ratios,
        "mmd_ratio_worst_type": max(mmd_ratios.values()) if mmd_ratios else None,
        "auc_overall": metrics["overall"]["classifier_auc"]["synthetic"],
        "auc_floor": metrics["overall"]["classifier_auc"]["floor"],
        "auc_per_type": {c: v["classifier_auc"]["synthetic"] for c, v in per.items()},
        "energy_ratio_overall": metrics["overall"]["energy"]["ratio"],
        "w1_ratio_overall": metrics["overall"]["w1"]["ratio"],
        "fidelity_accuracy": ((metrics.get("fidelity") or {}).get("synthetic") or {}).get("accuracy"),
        "fidelity_floor": ((metrics.get("fidelity") or {}).get("floor") or {}).get("accuracy"),
        "marginals": metrics.get("marginals"),
    }


def worker_genailab(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from genailab.data import DataSpec
    from genailab.diffusion import nfe
    from genailab.evaluation import evaluate_synthesis
    from genailab.workflows import train_synth_on
    from genailab.workflows.runconfig import SynthRunConfig

    adata, _ = C.load_counts("kang2018_pbmc_ctrl")
    train, test = _split(adata, seed)
    config = SynthRunConfig(seed=seed, data=DataSpec(batch_key=DONOR), condition_keys=(CONDITION, DONOR))
    if args.quick:
        from genailab.training import TrainConfig

        config = config.replace(
            vae_train=config.vae_train.replace(max_epochs=3),
            train=TrainConfig(max_epochs=3, batch_size=256, progress_bar=False),
        )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = train_synth_on(train, Path(tmp) / "run", config)
        train_s = time.perf_counter() - t0
        from genailab.foundation.recipes import LatentDiffusionModel

        model = LatentDiffusionModel.from_pretrained(Path(tmp) / "run")
    t0 = time.perf_counter()
    syn = model.sample(like=test, seed=seed)
    default_s = time.perf_counter() - t0
    metrics = evaluate_synthesis(test, syn, condition_key=CONDITION, seed=seed)
    sweep = []
    for steps in NFE_GRID:
        t0 = time.perf_counter()
        s = model.sample(like=test, seed=seed, sampler="dpm++2m", steps=steps)
        wall = time.perf_counter() - t0
        m = evaluate_synthesis(test, s, condition_key=CONDITION, seed=seed)
        sweep.append(
            {
                "sampler": "dpm++2m",
                "steps": steps,
                "nfe": nfe("dpm++2m", steps),
                "cells_per_s": s.n_obs / wall,
                **_summary(m),
            }
        )
    return {
        "method": "genailab",
        "seed": seed,
        "train_s": train_s,
        "vae_s": summary["vae"]["wall_s"],
        "sample_s": default_s,
        "sample_cells_per_s": syn.n_obs / default_s,
        "sampler": model.config.sampler,
        "steps": model.config.steps,
        "nfe": nfe(model.config.sampler, model.config.steps),
        "n_trainable": summary["n_trainable_parameters"],
        "peak_rss_mb": C.peak_rss_mb(),
        **_summary(metrics),
        "nfe_sweep": sweep,
        "metrics": metrics,
    }


def worker_scvi(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    import anndata as ad
    import scvi
    import torch
    from scipy import sparse

    from genailab.evaluation import evaluate_synthesis

    scvi.settings.seed = seed
    adata, _ = C.load_counts("kang2018_pbmc_ctrl")
    train, test = _split(adata, seed)
    scvi.model.SCVI.setup_anndata(train, batch_key=DONOR, categorical_covariate_keys=[CONDITION])
    model = scvi.model.SCVI(train, gene_likelihood="nb")
    t0 = time.perf_counter()
    model.train(
        max_epochs=3 if args.quick else args.scvi_epochs, batch_size=128, early_stopping=True, enable_progress_bar=False
    )
    train_s = time.perf_counter() - t0
    manager = model.adata_manager
    batches = list(manager.get_state_registry("batch").categorical_mapping)
    cats = list(manager.get_state_registry("extra_categorical_covs").mappings[CONDITION])
    b_idx = torch.tensor([batches.index(v) for v in test.obs[DONOR].astype(str)]).view(-1, 1)
    c_idx = torch.tensor([cats.index(v) for v in test.obs[CONDITION].astype(str)]).view(-1, 1)
    module = model.module.eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = torch.randn(test.n_obs, module.n_latent, generator=gen)
        # scVI (use_observed_lib_size=True) keeps no library prior: draw each donor's log-library from a
        # normal fitted on its training cells, the same library model genailab's sampler uses.
        log_lib = np.log(np.asarray(train.X.sum(1)).ravel().clip(min=1))
        donors = train.obs[DONOR].astype(str).to_numpy()
        stats = {d: (log_lib[donors == d].mean(), log_lib[donors == d].std()) for d in np.unique(donors)}
        mean = torch.tensor([stats[d][0] for d in test.obs[DONOR].astype(str)], dtype=torch.float32).view(-1, 1)
        sd = torch.tensor([stats[d][1] for d in test.obs[DONOR].astype(str)], dtype=torch.float32).view(-1, 1)
        library = mean + sd * torch.randn(mean.shape, generator=gen)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        px = module.generative(z=z, library=library, batch_index=b_idx, cat_covs=c_idx)["px"]
        prior = px.sample().numpy()
        prior_s = time.perf_counter() - t0
    syn_prior = ad.AnnData(sparse.csr_matrix(prior.astype(np.float32)), obs=test.obs.copy(), var=test.var.copy())
    scvi.model.SCVI.setup_anndata(test, batch_key=DONOR, categorical_covariate_keys=[CONDITION])
    post = model.posterior_predictive_sample(test, n_samples=1)
    post = post.to_scipy_sparse() if hasattr(post, "to_scipy_sparse") else sparse.csr_matrix(np.asarray(post))
    syn_post = ad.AnnData(sparse.csr_matrix(post), obs=test.obs.copy(), var=test.var.copy())
    m_prior = evaluate_synthesis(test, syn_prior, condition_key=CONDITION, seed=seed)
    m_post = evaluate_synthesis(test, syn_post, condition_key=CONDITION, seed=seed)
    return {
        "method": "scvi",
        "seed": seed,
        "train_s": train_s,
        "epochs": model.history["elbo_train"].shape[0],
        "prior_cells_per_s": test.n_obs / max(prior_s, 1e-9),
        "peak_rss_mb": C.peak_rss_mb(),
        "prior": {**_summary(m_prior), "metrics": m_prior},
        "posterior": {**_summary(m_post), "metrics": m_post},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scvi-epochs", type=int, default=400)
    p.add_argument("--quick", action="store_true", help="3 epochs each: a smoke test of the script")
    p.add_argument("--worker", choices=("genailab", "scvi"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.worker:
        C.limit_threads(args.threads)
        fn = worker_genailab if args.worker == "genailab" else worker_scvi
        C.write_json(args.out, fn(args.seed, args))
        return 0
    _, reason = C.load_counts("kang2018_pbmc_ctrl")
    if reason:
        print(f"skipped: {reason}")
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = ["--threads", str(args.threads), "--scvi-epochs", str(args.scvi_epochs)] + (
        ["--quick"] if args.quick else []
    )
    runs = []
    partial = C.RESULTS_DIR / "synthesis_kang.partial.json"
    for seed in seeds:
        for method in ("genailab", "scvi"):
            print(f"running {method} seed {seed} ...", flush=True)
            runs.append(C.run_worker(Path(__file__), ["--worker", method, "--seed", str(seed), *extra], args.threads))
            C.write_json(partial, {"runs": runs})  # a later failure must not lose finished runs
    g = [r for r in runs if r["method"] == "genailab"]
    s = [r for r in runs if r["method"] == "scvi"]
    floor_auc = [r["auc_floor"] for r in g]

    def col(rows: list[dict], key: str) -> str:
        return C.fmt([r[key] for r in rows], 2)

    rows = [
        [
            "genailab (DiT flow)",
            col(g, "mmd_ratio_overall"),
            col(g, "mmd_ratio_worst_type"),
            col(g, "auc_overall"),
            col(g, "energy_ratio_overall"),
            C.fmt([r["train_s"] for r in g], 0),
            C.fmt([r["sample_cells_per_s"] for r in g], 0),
        ],
        [
            "scVI prior sampling",
            C.fmt([r["prior"]["mmd_ratio_overall"] for r in s], 2),
            C.fmt([r["prior"]["mmd_ratio_worst_type"] for r in s], 2),
            C.fmt([r["prior"]["auc_overall"] for r in s], 2),
            C.fmt([r["prior"]["energy_ratio_overall"] for r in s], 2),
            C.fmt([r["train_s"] for r in s], 0),
            C.fmt([r["prior_cells_per_s"] for r in s], 0),
        ],
        [
            "scVI posterior predictive (upper ref.)",
            C.fmt([r["posterior"]["mmd_ratio_overall"] for r in s], 2),
            C.fmt([r["posterior"]["mmd_ratio_worst_type"] for r in s], 2),
            C.fmt([r["posterior"]["auc_overall"] for r in s], 2),
            C.fmt([r["posterior"]["energy_ratio_overall"] for r in s], 2),
            "",
            "",
        ],
        ["real vs real (floor)", "1.00", "1.00", C.fmt(floor_auc, 2), "1.00", "", ""],
    ]
    C.print_table(
        ["method", "MMD/floor", "worst type MMD/floor", "AUC", "energy/floor", "train s", "sample cells/s"], rows
    )
    print("\nNFE sweep (genailab, dpm++2m):")
    sweep_rows = []
    for i, steps in enumerate(NFE_GRID):
        pts = [r["nfe_sweep"][i] for r in g]
        sweep_rows.append(
            [
                str(steps),
                str(pts[0]["nfe"]),
                C.fmt([q["cells_per_s"] for q in pts], 0),
                C.fmt([q["mmd_ratio_overall"] for q in pts], 2),
                C.fmt([q["mmd_ratio_worst_type"] for q in pts], 2),
                C.fmt([q["auc_overall"] for q in pts], 2),
            ]
        )
    C.print_table(["steps", "NFE", "cells/s", "MMD/floor", "worst type", "AUC"], sweep_rows)
    worst = [r["mmd_ratio_worst_type"] for r in g]
    targets = {
        "per_type_mmd_within_1.5x_floor": all(w <= 1.5 for w in worst),
        "auc_at_most_0.60": all(r["auc_overall"] <= 0.60 for r in g),
        "better_than_scvi_prior_mmd": np.mean([r["mmd_ratio_overall"] for r in g])
        < np.mean([r["prior"]["mmd_ratio_overall"] for r in s]),
        "better_than_scvi_prior_auc": np.mean([r["auc_overall"] for r in g])
        < np.mean([r["prior"]["auc_overall"] for r in s]),
    }
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    out = C.RESULTS_DIR / ("synthesis_kang_quick.json" if args.quick else "synthesis_kang.json")
    C.write_json(
        out,
        {
            "benchmark": "synthesis_kang",
            "seeds": seeds,
            "machine": C.machine_info(args.threads),
            "targets": targets,
            "runs": runs,
        },
    )
    partial.unlink(missing_ok=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
