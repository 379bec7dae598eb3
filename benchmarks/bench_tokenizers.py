"""Tokenizers side by side: one synthesis pipeline, six token spaces, plus the seed's simple-MLP row.

Same data, split, budget, hardware and evaluation for every row, in one run (each row in its own
process, so peak memory is its own):

- data: ``../shared/data/kang2018_pbmc_ctrl`` (8,684 cells x 2,511 genes; gene symbols in
  ``var['feature']``; a seeded subsample of ``--max-cells`` cells), a seeded 80/20 cell split; every
  row trains the VAE (its tokenizer) and a DiT on the same 80% with the same epoch budget,
  conditioned on cell type and donor, then generates one cell per held-out cell (``like`` the
  held-out 20%);
- rows: ``latent`` (default), ``pathway`` (MSigDB Hallmark), ``latent+pathway``, ``grn`` (CollecTRI),
  ``grn+latent``, ``rank`` (Geneformer-style, with the real Geneformer gene medians), and
  ``mlp baseline`` (latent tokens + the MLP backbone instead of the DiT: the seed's simple MLP);
- metrics: held-out reconstruction NLL per cell (VAE at the posterior mean), synthesis MMD and its
  ratio to the real-vs-real floor (:func:`genailab.evaluation.evaluate_synthesis`), VAE and diffusion
  training throughput, sampling throughput, peak RSS, parameter counts;
- Norman 2019 (``../shared/data/norman19_mcfaline23``, Norman cells only, subsampled): reconstruction
  NLL of each tokenizer's VAE (the perturbation recipes' first stage);
- one interpretability example: the pathway tokens that move most between CD14+ monocytes and CD4 T
  cells (:func:`genailab.tokenizers.attribution.token_shift` on held-out cells).

Run: ``python benchmarks/bench_tokenizers.py [--seeds 0] [--quick]``; writes
``benchmarks/results/tokenizers.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CONDITION = "cluster_id"
DONOR = "sample_id"
ROWS = ("latent", "pathway", "latent+pathway", "grn", "grn+latent", "rank", "mlp_baseline")
RESULTS = Path(__file__).resolve().parent / "results" / "tokenizers.json"


def _shared(*parts: str) -> Path | None:
    from genailab.data import shared_data_dir

    root = shared_data_dir()
    p = None if root is None else Path(root).joinpath(*parts)
    return p if p is not None and p.exists() else None


def _resources(row: str) -> dict[str, Any]:
    """Tokenizer name and resource files of a row (symbols from var['feature'] match the GMT / edges)."""
    name = "latent" if row == "mlp_baseline" else row
    out: dict[str, Any] = {"tokenizer.name": name, "symbols_key": "feature"}
    if "pathway" in name:
        out["gene_sets"] = str(_shared("gene_sets", "h.all.v7.5.1.symbols.gmt"))
    if "grn" in name:
        out["grn"] = str(_shared("grn", "omnipath_CollecTRI_subset_edges.tsv.gz"))
    if name == "rank":
        out["gene_medians"] = str(_shared("geneformer_dicts", "gene_median_dictionary.pkl"))
    if name == "latent":
        out.pop("symbols_key")
    return out


def worker(row: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from genailab.config import apply_overrides
    from genailab.data import DataSpec, random_split
    from genailab.evaluation import evaluate_synthesis
    from genailab.foundation.recipes import LatentDiffusionModel
    from genailab.training import TrainConfig
    from genailab.workflows import train_synth_on
    from genailab.workflows.runconfig import SynthRunConfig

    adata, reason = C.load_counts("kang2018_pbmc_ctrl")
    if adata is None:
        return {"skipped": reason}
    if args.max_cells and adata.n_obs > args.max_cells:  # a seeded subsample keeps the CPU budget
        keep = np.random.default_rng(seed).choice(adata.n_obs, args.max_cells, replace=False)
        adata = adata[np.sort(keep)].copy()
    split = random_split(adata.n_obs, val_fraction=0.0, test_fraction=0.2, seed=seed)
    train, test = adata[split.train].copy(), adata[split.test].copy()
    vae_epochs, diff_epochs = (2, 2) if args.quick else (args.vae_epochs, args.diffusion_epochs)
    config = SynthRunConfig(seed=seed, data=DataSpec(), condition_keys=(CONDITION, DONOR))
    config = apply_overrides(config, _resources(row), from_string=True)
    config = config.replace(
        vae_train=TrainConfig(max_epochs=vae_epochs, batch_size=128, early_stopping_patience=10, val_fraction=0.1),
        train=TrainConfig(max_epochs=diff_epochs, batch_size=256, early_stopping_patience=20, val_fraction=0.05),
    )
    if row == "mlp_baseline":
        config = config.replace(backbone="mlp")
    meter = C.CpuMeter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = train_synth_on(train, Path(tmp) / "run", config)
        model = LatentDiffusionModel.from_pretrained(Path(tmp) / "run")
        vae_run = C.read_json_file(Path(tmp) / "run" / "vae" / "run.json")
    cpu = meter.stop()
    nll = model.vae.evaluate_nll(test)["nll_per_cell"]
    t0 = time.perf_counter()
    syn = model.sample(like=test, seed=seed)
    sample_s = time.perf_counter() - t0
    metrics = evaluate_synthesis(test, syn, condition_key=CONDITION, seed=seed)
    vae = model.vae
    out = {
        "row": row,
        "seed": seed,
        "tokenizer": vae.config.tokenizer.name,
        "backbone": config.backbone,
        "latent_shape": list(vae.config.latent_shape),
        "recon_nll_per_cell": nll,
        "mmd": metrics["overall"]["mmd"]["synthetic"],
        "mmd_floor": metrics["overall"]["mmd"]["floor"],
        "mmd_ratio": metrics["overall"]["mmd"]["ratio"],
        "mmd_ratio_per_type": {c: v["mmd"]["ratio"] for c, v in metrics["per_condition"].items()},
        "auc": metrics["overall"]["classifier_auc"]["synthetic"],
        "vae_train_cells_per_s": vae_run["train"]["train_cells_per_s"],
        "vae_epochs": vae_run["train"]["epochs"],
        "vae_wall_s": summary["vae"]["wall_s"],
        "diffusion_train_cells_per_s": summary["train"]["train_cells_per_s"],
        "diffusion_epochs": summary["train"]["epochs"],
        "total_wall_s": cpu["wall_s"],
        "other_cpu_fraction": cpu["other_cpu_fraction"],
        "sample_cells_per_s": syn.n_obs / sample_s,
        "peak_rss_mb": C.peak_rss_mb(),
        "n_params_tokenizer": sum(p.numel() for p in vae.encoder.parameters()),
        "n_params_vae": sum(p.numel() for p in vae.parameters()),
        "n_params_diffusion": summary["n_trainable_parameters"],
        "tokenizer_report": vae_run.get("tokenizer", {}),
    }
    if "pathway" in row:
        out["interpretability"] = _pathway_example(model, test)
    out["norman"] = _norman_nll(row, seed, args)
    return out


def _pathway_example(model: Any, test: Any) -> list[dict[str, Any]]:
    """The pathway tokens that differ most between CD14+ monocytes and CD4 T cells (held-out cells)."""
    from genailab.tokenizers.attribution import token_shift

    z = model.vae.get_latent(test, key=None)  # (n, m, d)
    labels = test.obs[CONDITION].astype(str).to_numpy()
    names = model.vae.encoder.token_names()
    table = token_shift(z[labels == "CD14+ Monocytes"], z[labels == "CD4 T cells"], names)
    return table.head(8).to_dict(orient="records")


def _norman_nll(row: str, seed: int, args: argparse.Namespace) -> dict[str, Any] | None:
    """Reconstruction NLL of this row's tokenizer on Norman cells (VAE stage only)."""
    from genailab.config import apply_overrides
    from genailab.data import random_split
    from genailab.foundation.recipes import LatentTokenVAE
    from genailab.training import TrainConfig
    from genailab.workflows import train_vae_on
    from genailab.workflows.runconfig import VAERunConfig

    if row == "mlp_baseline":
        return None
    adata, reason = C.load_counts("norman19_mcfaline23")
    if adata is None:
        return {"skipped": reason}
    if "dataset" in adata.obs.columns:
        adata = adata[adata.obs["dataset"].astype(str).str.contains("norman", case=False).to_numpy()]
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(adata.n_obs, min(adata.n_obs, args.norman_cells), replace=False))
    adata = adata[keep].copy()
    split = random_split(adata.n_obs, val_fraction=0.0, test_fraction=0.2, seed=seed)
    train, test = adata[split.train].copy(), adata[split.test].copy()
    res = _resources(row)
    res.pop("symbols_key", None)  # Norman's var_names are symbols
    id_map = _shared("gene_sets", "orgHs_symbol_ensembl_entrez.tsv.gz")
    if "gene_medians" in res and id_map is not None:  # Geneformer's medians are keyed by Ensembl IDs
        res["id_map"] = str(id_map)
    config = apply_overrides(VAERunConfig(seed=seed), res, from_string=True)
    epochs = 2 if args.quick else args.vae_epochs
    config = config.replace(
        train=TrainConfig(max_epochs=epochs, batch_size=128, early_stopping_patience=10, val_fraction=0.1)
    )
    with tempfile.TemporaryDirectory() as tmp:
        summary = train_vae_on(train, Path(tmp) / "vae", config)
        vae = LatentTokenVAE.from_pretrained(Path(tmp) / "vae")
    return {
        "n_cells": int(adata.n_obs),
        "recon_nll_per_cell": vae.evaluate_nll(test)["nll_per_cell"],
        "train_cells_per_s": summary["train"]["train_cells_per_s"],
        "epochs": summary["train"]["epochs"],
        "n_params_vae": summary["n_parameters"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vae-epochs", type=int, default=12)
    p.add_argument("--diffusion-epochs", type=int, default=30)
    p.add_argument("--max-cells", type=int, default=4000, help="seeded Kang subsample (0 = all 8,684 cells)")
    p.add_argument("--norman-cells", type=int, default=3375)
    p.add_argument("--quick", action="store_true", help="2 epochs each: a smoke test of the script")
    p.add_argument("--worker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.worker:
        C.limit_threads(args.threads)
        result = worker(args.worker, args.seed, args)
        result["genailab_src_sha256"] = C.source_fingerprint()
        C.write_json(args.out, result)
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r for r in args.rows.split(",") if r]
    runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for seed in seeds:
        for row in rows:
            extra = ["--vae-epochs", str(args.vae_epochs), "--diffusion-epochs", str(args.diffusion_epochs)]
            extra += ["--norman-cells", str(args.norman_cells), "--threads", str(args.threads)]
            extra += ["--max-cells", str(args.max_cells)]
            if args.quick:
                extra.append("--quick")
            r = C.run_worker(Path(__file__), ["--worker", row, "--seed", str(seed), *extra], args.threads)
            if r.get("skipped"):
                print(f"SKIP: {r['skipped']}")
                return 0
            runs.append(r)
            print(
                f"[{time.perf_counter() - t0:6.0f}s] {row:15s} seed {seed}: NLL {r['recon_nll_per_cell']:.1f}, "
                f"MMD ratio {r['mmd_ratio']:.2f}, {r['total_wall_s']:.0f} s",
                flush=True,
            )
    headers = ["row", "tokens", "recon NLL", "MMD (floor)", "MMD/floor", "VAE cells/s", "diff cells/s",
               "sample cells/s", "peak RSS MB", "params tok / VAE / diff", "Norman NLL"]  # fmt: skip
    table = []
    for row in rows:
        rs = [r for r in runs if r["row"] == row]
        if not rs:
            continue
        nn = [r["norman"]["recon_nll_per_cell"] for r in rs if r.get("norman") and "recon_nll_per_cell" in r["norman"]]
        table.append(
            [
                row,
                "x".join(map(str, rs[0]["latent_shape"])),
                C.fmt([r["recon_nll_per_cell"] for r in rs]),
                f"{C.fmt([r['mmd'] for r in rs], 4)} ({C.fmt([r['mmd_floor'] for r in rs], 4)})",
                C.fmt([r["mmd_ratio"] for r in rs], 2),
                C.fmt([r["vae_train_cells_per_s"] for r in rs], 0),
                C.fmt([r["diffusion_train_cells_per_s"] for r in rs], 0),
                C.fmt([r["sample_cells_per_s"] for r in rs], 0),
                C.fmt([r["peak_rss_mb"] for r in rs], 0),
                f"{rs[0]['n_params_tokenizer']:,} / {rs[0]['n_params_vae']:,} / {rs[0]['n_params_diffusion']:,}",
                C.fmt(nn) if nn else "-",
            ]
        )
    C.print_table(headers, table)
    for r in runs:
        if r.get("interpretability"):
            print(f"\n{r['row']} (seed {r['seed']}): tokens that move most, CD14+ monocytes vs CD4 T cells")
            for t in r["interpretability"][:5]:
                print(f"  {t['token']:45s} effect {t['effect']:.2f}")
    C.write_json(
        args.results,
        {
            "benchmark": "tokenizers",
            "seeds": seeds,
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "worker", "results")},
            "machine": C.machine_info(args.threads),
            "contention": C.contention_note(runs),
            "runs": runs,
        },
    )
    print(f"\nwrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
