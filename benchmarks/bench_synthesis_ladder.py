"""Where does the synthesis fidelity gap come from? The diagnosis ladder per cell type (issue 16).

For each dataset and seeded 80/20 cell split (``--splits 0 1 2``), in its own process:

- data: ``kang`` = ``../shared/data/kang2018_pbmc_ctrl`` (conditions ``cluster_id`` + ``sample_id``, donor =
  VAE batch key), ``pbmc68k`` = ``../shared/data/pbmc68k_reduced`` (``bulk_labels``); held-out cells whose
  condition values never occur in the training 80% are dropped (counted);
- genailab: ``genailab.workflows.train_synth_on`` with the library defaults (VAE, then DiT flow matching);
- rows per cell type, all scored on the held-out 20% by the same code
  (:mod:`genailab.evaluation.synthesis_ladder`): the real-vs-real floor (median of ``--n-boot`` random
  re-splits of the held-out cells, with its 2.5-97.5% range), the VAE ceiling (posterior predictive of the
  held-out cells) and the aggregate posterior (training cells of the type re-decoded), genailab diffusion,
  :class:`~genailab.foundation.recipes.latent_prior.GaussianLatentPrior` with diagonal and full covariance
  (the same VAE, a per-group Gaussian in place of diffusion), the latent-prior MMD ratio and
  coverage/precision, library-size W1 and zero-fraction excess, and the rung holding each type back;
- overall: classifier AUC (gradient-boosted detector) per method;
- rung 4 (options): ``--guidance-sweep`` samples the diffusion model with guidance 1, 2, 3 on each key;
  ``--conditioning-sweep`` retrains the diffusion stage on the same VAE with each key alone;
- ``--scvi``: scVI prior sampling and scVI aggregate-posterior sampling per (type, donor) group, on the
  same split (needs scvi-tools, the ``[bench]`` extra).

Writes ``benchmarks/results/synthesis_ladder.json`` (``synthesis_ladder_<datasets>.json`` for a subset of the
datasets; ``_quick`` appended with ``--quick``).
Targets (issue 16): every type with >= 100 held-out cells within 1.5x of its floor, AUC <= 0.55.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DATASETS: dict[str, dict[str, Any]] = {
    "kang": {
        "name": "kang2018_pbmc_ctrl",
        "keys": ("cluster_id", "sample_id"),
        "type": "cluster_id",
        "donor": "sample_id",
    },
    "pbmc68k": {"name": "pbmc68k_reduced", "keys": ("bulk_labels",), "type": "bulk_labels", "donor": None},
}
GUIDANCE = (1.0, 2.0, 3.0)
QUICK_CELLS = 3000


def _split(adata: Any, seed: int, keys: tuple[str, ...]) -> tuple[Any, Any, int]:
    from genailab.data import random_split

    split = random_split(adata.n_obs, val_fraction=0.0, test_fraction=0.2, seed=seed)
    train, test = adata[split.train].copy(), adata[split.test].copy()
    keep = np.ones(test.n_obs, dtype=bool)
    for k in keys:
        keep &= test.obs[k].astype(str).isin(set(train.obs[k].astype(str))).to_numpy()
    return train, test[keep].copy(), int((~keep).sum())


def _load(ds: dict[str, Any], quick: bool, seed: int) -> Any:
    adata, reason = C.load_counts(ds["name"])
    if reason:
        raise RuntimeError(reason)
    if quick and adata.n_obs > QUICK_CELLS:
        rows = np.sort(np.random.default_rng(seed).choice(adata.n_obs, QUICK_CELLS, replace=False))
        adata = adata[rows].copy()
    return adata


def _ladder(real: Any, syn: Any, ceiling: Any, model: Any, ds: dict[str, Any], seed: int, n_boot: int) -> dict:
    """Score one generator's cells and condense its rungs (the latent rung needs a genailab latent model)."""
    from genailab.evaluation.synthesis_ladder import count_model_gap, ladder_rows, latent_prior_gap, score_generator

    key = ds["type"]
    score = score_generator(real, syn, condition_key=key, seed=seed, n_boot=n_boot)
    latent = (
        latent_prior_gap(model, real, condition_key=key, synthetic=syn, seed=seed, n_boot=n_boot) if model else None
    )
    counts = count_model_gap(real, syn, condition_key=key, seed=seed, n_boot=n_boot)
    return {
        "auc": score["overall"]["classifier_auc"]["synthetic"],
        "auc_floor": score["overall"]["classifier_auc"]["floor"],
        "auc_rf": score["overall"].get("classifier_auc_rf", {}).get("synthetic"),
        "auc_rf_floor": score["overall"].get("classifier_auc_rf", {}).get("floor"),
        "mmd_ratio_single_split": score["overall"]["mmd"]["ratio"],
        "rows": ladder_rows(score, ceiling, latent, counts),
        "metrics": score,
        "latent_prior": latent,
        "count_model": counts,
    }


def worker_genailab(dataset: str, split: int, args: argparse.Namespace) -> dict[str, Any]:
    from genailab.data import DataSpec
    from genailab.evaluation.synthesis_ladder import vae_ceiling
    from genailab.foundation.recipes import LatentDiffusionModel
    from genailab.foundation.recipes.latent_prior import GaussianLatentPrior
    from genailab.workflows import train_synth_on
    from genailab.workflows.runconfig import SynthRunConfig

    ds = DATASETS[dataset]
    train, test, dropped = _split(_load(ds, args.quick, split), split, ds["keys"])
    spec = DataSpec(batch_key=ds["donor"]) if ds["donor"] else DataSpec()
    config = SynthRunConfig(seed=split, data=spec, condition_keys=ds["keys"])
    if args.quick:
        config = config.replace(
            vae_train=config.vae_train.replace(max_epochs=5, progress_bar=False),
            train=config.train.replace(max_epochs=5, progress_bar=False),
        )
    out: dict[str, Any] = {"dataset": dataset, "split": split, "n_train": train.n_obs, "n_heldout": test.n_obs}
    out["n_heldout_dropped_unseen_condition"] = dropped
    out["n_heldout_per_type"] = test.obs[ds["type"]].astype(str).value_counts().to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = train_synth_on(train, Path(tmp) / "run", config)
        out["train_s"] = time.perf_counter() - t0
        out["vae_s"] = summary["vae"]["wall_s"]
        model = LatentDiffusionModel.from_pretrained(Path(tmp) / "run")
        vae = model.vae
        t0 = time.perf_counter()
        ceiling = vae_ceiling(vae, train, test, condition_key=ds["type"], seed=split, n_boot=args.n_boot)
        out["ceiling_s"] = time.perf_counter() - t0
        out["ceiling"] = ceiling
        methods: dict[str, Any] = {}
        t0 = time.perf_counter()
        syn = model.sample(like=test, seed=split)
        out["diffusion_sample_s"] = time.perf_counter() - t0
        methods["diffusion"] = _ladder(test, syn, ceiling, model, ds, split, args.n_boot)
        if vae.config.library_model != "batch":  # the same latents with the earlier per-donor library model
            old = _redecode_with_batch_library(vae, syn, train, ds["donor"], split)
            methods["diffusion_batch_library"] = _ladder(test, old, ceiling, model, ds, split, args.n_boot)
        for cov in ("diag", "full"):
            t0 = time.perf_counter()
            prior = GaussianLatentPrior.fit(vae, train, ds["keys"], covariance=cov)
            syn = prior.sample(like=test, seed=split)
            methods[f"gaussian_{cov}"] = _ladder(test, syn, ceiling, prior, ds, split, args.n_boot)
            methods[f"gaussian_{cov}"]["fit_sample_s"] = time.perf_counter() - t0
        if args.guidance_sweep:
            out["guidance_sweep"] = _guidance_sweep(model, test, ceiling, ds, split, args)
        if args.conditioning_sweep:
            out["conditioning_sweep"] = _conditioning_sweep(train, test, ceiling, ds, split, config, tmp, args)
    for m in methods.values():  # keep the JSON small: drop the per-metric detail of the generator scores
        m["metrics"] = {k: m["metrics"][k] for k in ("overall", "per_condition", "marginals")}
    out["methods"] = methods
    out["peak_rss_mb"] = C.peak_rss_mb()
    return out


def _redecode_with_batch_library(vae: Any, syn: Any, train: Any, donor: str | None, seed: int) -> Any:
    """``syn``'s latents decoded again with library sizes from one log-normal per donor (``library_model="batch"``).

    The per-donor mean and SD of the training cells' log library sizes, as the batch library model fits
    them; counts are drawn from the same VAE at the same standardised latents with the same seed offsets.
    """
    import torch

    from genailab.constants import ADATA_KEYS
    from genailab.data import make_dataloader
    from genailab.evaluation.synthesis_embedding import library_sizes

    log_lib = np.log(np.maximum(library_sizes(train.X), 1.0))
    groups = train.obs[donor].astype(str).to_numpy() if donor else np.zeros(train.n_obs, dtype=str)
    stats = {g: (log_lib[groups == g].mean(), log_lib[groups == g].std()) for g in np.unique(groups)}
    want = syn.obs[donor].astype(str).to_numpy() if donor else np.zeros(syn.n_obs, dtype=str)
    rng = np.random.default_rng(seed + 1)
    lib = np.array([np.exp(rng.normal(*stats[g])) for g in want]).round().clip(min=1.0)
    loader = make_dataloader(vae.count_dataset(syn), batch_size=len(want), shuffle=False)
    batch_index = vae.batch_index(next(iter(loader))) if len(want) else None
    z = torch.as_tensor(syn.obsm[ADATA_KEYS.SYNTH_LATENT])
    counts, library = vae.sample_counts(
        z, batch_index, seed=seed, library=torch.as_tensor(lib, dtype=torch.float32).unsqueeze(-1)
    )
    out = syn.copy()
    out.X = type(syn.X)(counts)
    out.obs["library_size"] = library.view(-1).numpy()
    return out


def _guidance_sweep(model: Any, test: Any, ceiling: Any, ds: dict, split: int, args: argparse.Namespace) -> list:
    sweep = []
    for key in ds["keys"]:
        for scale in GUIDANCE:
            syn = model.sample(like=test, seed=split, guidance_scale={key: scale})
            r = _ladder(test, syn, ceiling, model, ds, split, args.n_boot)
            sweep.append({"key": key, "scale": scale, "auc": r["auc"], "rows": r["rows"]})
    return sweep


def _conditioning_sweep(
    train: Any, test: Any, ceiling: Any, ds: dict, split: int, config: Any, tmp: str, args: argparse.Namespace
) -> list:
    from genailab.foundation.recipes import LatentDiffusionModel
    from genailab.workflows import train_synth_on

    if len(ds["keys"]) < 2:
        return []
    sweep = []
    for key in ds["keys"]:
        run = Path(tmp) / f"run_{key}"
        train_synth_on(train, run, config.replace(condition_keys=(key,)), vae_dir=Path(tmp) / "run" / "vae")
        model = LatentDiffusionModel.from_pretrained(run)
        r = _ladder(test, model.sample(like=test, seed=split), ceiling, model, ds, split, args.n_boot)
        sweep.append({"condition_keys": [key], "auc": r["auc"], "rows": r["rows"]})
    return sweep


def worker_scvi(dataset: str, split: int, args: argparse.Namespace) -> dict[str, Any]:
    """scVI prior sampling and aggregate-posterior sampling per (type, donor) group on the same split."""
    import anndata as ad
    import scvi
    import torch
    from scipy import sparse

    ds = DATASETS[dataset]
    scvi.settings.seed = split
    train, test, _ = _split(_load(ds, args.quick, split), split, ds["keys"])
    tkey, dkey = ds["type"], ds["donor"]
    scvi.model.SCVI.setup_anndata(train, batch_key=dkey, categorical_covariate_keys=[tkey])
    model = scvi.model.SCVI(train, gene_likelihood="nb")
    t0 = time.perf_counter()
    model.train(max_epochs=3 if args.quick else args.scvi_epochs, early_stopping=True, enable_progress_bar=False)
    train_s = time.perf_counter() - t0
    manager = model.adata_manager
    batches = [str(b) for b in manager.get_state_registry("batch").categorical_mapping]
    cats = [str(c) for c in manager.get_state_registry("extra_categorical_covs").mappings[tkey]]
    donors_tr = train.obs[dkey].astype(str).to_numpy() if dkey else np.full(train.n_obs, batches[0])
    donors_te = test.obs[dkey].astype(str).to_numpy() if dkey else np.full(test.n_obs, batches[0])
    types_tr, types_te = train.obs[tkey].astype(str).to_numpy(), test.obs[tkey].astype(str).to_numpy()
    log_lib = np.log(np.asarray(train.X.sum(1)).ravel().clip(min=1))
    lib_stats = {d: (log_lib[donors_tr == d].mean(), log_lib[donors_tr == d].std()) for d in np.unique(donors_tr)}
    rng = np.random.default_rng(split)
    b_idx = torch.tensor([batches.index(v) for v in donors_te]).view(-1, 1)
    c_idx = torch.tensor([cats.index(v) for v in types_te]).view(-1, 1)
    library = torch.tensor(
        [lib_stats[d][0] + lib_stats[d][1] * rng.standard_normal() for d in donors_te], dtype=torch.float32
    ).view(-1, 1)
    # Aggregate posterior per group: a Gaussian (diagonal) fitted to the training cells' posterior means of
    # the same type and donor; the type alone when the group has fewer than 5 training cells.
    z_tr = model.get_latent_representation(train)
    z_agg = np.empty((test.n_obs, z_tr.shape[1]), dtype=np.float32)
    for i, (t, d) in enumerate(zip(types_te, donors_te, strict=True)):
        rows = (types_tr == t) & (donors_tr == d)
        rows = rows if rows.sum() >= 5 else types_tr == t
        z_agg[i] = rng.normal(z_tr[rows].mean(0), z_tr[rows].std(0) + 1e-6)
    module = model.module.eval()
    out: dict[str, Any] = {"dataset": dataset, "split": split, "train_s": train_s, "methods": {}}
    with torch.no_grad():
        torch.manual_seed(split)
        for name, z in (
            ("scvi_prior", torch.randn(test.n_obs, module.n_latent, generator=torch.Generator().manual_seed(split))),
            ("scvi_aggregate_posterior", torch.from_numpy(z_agg)),
        ):
            px = module.generative(z=z, library=library, batch_index=b_idx, cat_covs=c_idx)["px"]
            syn = ad.AnnData(
                sparse.csr_matrix(px.sample().numpy().astype(np.float32)), obs=test.obs.copy(), var=test.var.copy()
            )
            r = _ladder(test, syn, None, None, ds, split, args.n_boot)
            r["metrics"] = {k: r["metrics"][k] for k in ("overall", "per_condition")}
            out["methods"][name] = r
    out["peak_rss_mb"] = C.peak_rss_mb()
    return out


# ----------------------------------------------------------------------------------------- table
METHOD_COLUMNS = (
    ("diffusion", "diffusion"),
    ("diffusion_batch_library", "diffusion, per-donor library (previous default)"),
    ("gaussian_diag", "Gauss diag"),
    ("gaussian_full", "Gauss full"),
    ("scvi_prior", "scVI prior"),
    ("scvi_aggregate_posterior", "scVI agg. post."),
)


def _row_of(run: dict, method: str, cond: str) -> dict | None:
    m = run.get("methods", {}).get(method)
    return None if m is None else next((r for r in m["rows"] if r["condition"] == cond), None)


def _cell(values: list[float | None], digits: int = 2) -> str:
    vals = [v for v in values if v is not None]
    return C.fmt(vals, digits) if vals else "n/a"


def print_dataset(dataset: str, runs: list[dict]) -> None:
    runs_g = [r for r in runs if r["dataset"] == dataset and "ceiling" in r]
    if not runs_g:
        return
    by_split = {r["split"]: dict(r) for r in runs_g}
    for r in runs:
        if r["dataset"] == dataset and "ceiling" not in r:  # scVI runs join their split's methods
            by_split.setdefault(r["split"], {"methods": {}})["methods"].update(r["methods"])
    merged = list(by_split.values())
    methods = [(k, label) for k, label in METHOD_COLUMNS if any(k in r["methods"] for r in merged)]
    conds = [r["condition"] for r in merged[0]["methods"]["diffusion"]["rows"]]
    headers = ["type", "n held-out", "floor MMD^2 [2.5-97.5%]", "VAE ceiling", "agg. posterior"]
    headers += [label for _, label in methods]
    headers += [
        "latent MMD diff.",
        "latent MMD Gauss full",
        "coverage diff. (floor)",
        "lib W1 diff.",
        "lib W1 diff., per-donor library",
        "zero excess diff.",
        "held back by (diff.)",
    ]
    rows = []
    for cond in conds:
        d = [_row_of(r, "diffusion", cond) for r in merged]
        d = [x for x in d if x is not None]
        if not d:
            continue
        n = [r["n_heldout"] if cond == "all cells" else r["n_heldout_per_type"].get(cond) for r in merged]
        lo = [x["floor_mmd_interval"][0] for x in d if x["floor_mmd_interval"]]
        hi = [x["floor_mmd_interval"][1] for x in d if x["floor_mmd_interval"]]
        floor = f"{np.mean([x['floor_mmd'] for x in d]):.4f} [{np.mean(lo):.4f}-{np.mean(hi):.4f}]" if lo else "n/a"
        row = [cond, C.fmt([v for v in n if v is not None], 0), floor]
        row += [_cell([x["ceiling_mmd_ratio"] for x in d]), _cell([x["aggregate_posterior_mmd_ratio"] for x in d])]
        for k, _ in methods:
            row.append(_cell([(_row_of(r, k, cond) or {}).get("generator_mmd_ratio") for r in merged]))
        gf = [_row_of(r, "gaussian_full", cond) or {} for r in merged]
        cov = [x["latent_coverage"] for x in d if x["latent_coverage"]]
        row += [
            _cell([x["latent_mmd_ratio"] for x in d]),
            _cell([x.get("latent_mmd_ratio") for x in gf]),
            f"{np.mean([c['synthetic'] for c in cov]):.2f} ({np.mean([c['floor'] for c in cov]):.2f})"
            if cov
            else "n/a",
            _cell([x["library_w1_ratio"] for x in d]),
            _cell([(_row_of(r, "diffusion_batch_library", cond) or {}).get("library_w1_ratio") for r in merged]),
            _cell([(x["zero_fraction_excess"] or {}).get("synthetic") for x in d], 3),
            "; ".join(sorted({c for x in d for c in x["held_back_by"]})) or "-",
        ]
        rows.append(row)
    print(
        f"\n## {dataset}: MMD / floor per cell type, mean ± sd over {len(merged)} split(s) (floor: median of re-splits)"
    )
    C.print_table(headers, rows)

    def aucs(k: str, key: str) -> str:
        return _cell([r["methods"][k].get(key) for r in merged if k in r["methods"]])

    auc_rows = [[label, aucs(k, "auc"), aucs(k, "auc_rf")] for k, label in methods]
    auc_rows.append(["real vs real (floor)", aucs("diffusion", "auc_floor"), aucs("diffusion", "auc_rf_floor")])
    C.print_table(["method", "classifier AUC, gradient-boosted", "classifier AUC, random forest"], auc_rows)


def targets(runs: list[dict]) -> dict[str, bool]:
    g = [r for r in runs if "ceiling" in r]
    big = [
        x["generator_mmd_ratio"]
        for r in g
        for x in r["methods"]["diffusion"]["rows"]
        if x["condition"] != "all cells" and r["n_heldout_per_type"].get(x["condition"], 0) >= 100
    ]
    return {
        "types_with_100_heldout_within_1.5x_floor": bool(big) and all(v is not None and v <= 1.5 for v in big),
        "auc_at_most_0.55": all(r["methods"]["diffusion"]["auc"] <= 0.55 for r in g),
        "auc_rf_at_most_0.55": all((r["methods"]["diffusion"].get("auc_rf") or 1.0) <= 0.55 for r in g),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--splits", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-boot", type=int, default=20, help="random re-splits per floor")
    p.add_argument("--quick", action="store_true", help=f"5 epochs per stage, at most {QUICK_CELLS} cells, 5 re-splits")
    p.add_argument("--scvi", action="store_true", help="add scVI prior and aggregate-posterior baselines")
    p.add_argument("--scvi-epochs", type=int, default=400)
    p.add_argument("--guidance-sweep", action="store_true", help="rung 4: guidance 1-3 per key")
    p.add_argument("--conditioning-sweep", action="store_true", help="rung 4: retrain on each key alone")
    p.add_argument("--worker", choices=("genailab", "scvi"))
    p.add_argument("--dataset", choices=list(DATASETS))
    p.add_argument("--split", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--resume-from",
        type=Path,
        help="results JSON of an earlier invocation: its runs of other splits join this one's tables",
    )
    args = p.parse_args()
    if args.quick:
        args.n_boot = min(args.n_boot, 5)
    if args.worker:
        C.limit_threads(args.threads)
        fn = worker_genailab if args.worker == "genailab" else worker_scvi
        C.write_json(args.out, fn(args.dataset, args.split, args))
        return 0
    flags = ["--threads", str(args.threads), "--n-boot", str(args.n_boot), "--scvi-epochs", str(args.scvi_epochs)]
    flags += [
        f
        for f, on in (
            ("--quick", args.quick),
            ("--guidance-sweep", args.guidance_sweep),
            ("--conditioning-sweep", args.conditioning_sweep),
        )
        if on
    ]
    runs: list[dict] = []
    if args.resume_from:  # finished runs of an earlier invocation (same code): keep those not re-run here
        earlier = json.loads(args.resume_from.read_text())["runs"]
        runs = [r for r in earlier if not (r["dataset"] in args.datasets and r["split"] in args.splits)]
        print(f"kept {len(runs)} finished run(s) from {args.resume_from}")
    name = "synthesis_ladder" + ("" if set(args.datasets) == set(DATASETS) else "_" + "_".join(args.datasets))
    name += "_quick" if args.quick else ""
    partial = C.RESULTS_DIR / f"{name}.partial.json"
    t_all = time.perf_counter()
    for dataset in args.datasets:
        _, reason = C.load_counts(DATASETS[dataset]["name"])
        if reason:
            print(f"skipped {dataset}: {reason}")
            continue
        for split in args.splits:
            for worker in ("genailab", "scvi") if args.scvi else ("genailab",):
                print(f"running {worker} on {dataset} split {split} ...", flush=True)
                cmd = ["--worker", worker, "--dataset", dataset, "--split", str(split), *flags]
                runs.append(C.run_worker(Path(__file__), cmd, args.threads))
                C.write_json(partial, {"runs": runs})  # a later failure must not lose finished runs
    for dataset in args.datasets:
        print_dataset(dataset, runs)
    goals = targets(runs)
    for goal, ok in goals.items():
        print(f"{'PASS' if ok else 'FAIL'}  {goal}")
    wall = time.perf_counter() - t_all
    out = C.RESULTS_DIR / f"{name}.json"
    C.write_json(
        out,
        {
            "benchmark": "synthesis_ladder",
            "datasets": args.datasets,
            "splits": sorted({r["split"] for r in runs}),
            "resumed_from": str(args.resume_from) if args.resume_from else None,
            "quick": args.quick,
            "n_boot": args.n_boot,
            "wall_s": wall,
            "machine": C.machine_info(args.threads),
            "targets": goals,
            "runs": runs,
        },
    )
    partial.unlink(missing_ok=True)
    print(f"wrote {out} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
