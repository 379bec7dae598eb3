"""Tuning strategies side by side: adapt a pretrained model with each method, on the same task and budget.

Task 1 (synthesis, ``../shared/data/kang2018_pbmc_ctrl``): pretrain the synthesis stack (VAE + DiT,
conditioned on cell type and donor) on 4 donors; adapt to the 5th donor (``1016``) with 1%, 10% and
100% of its adaptation pool (a seeded 40% of its cells are held out for evaluation). Methods: full
fine-tune, from scratch (a new DiT on the new donor only, same frozen VAE), linear probe (the output
head), bottleneck adapters, LoRA r=4/8/16 (PEFT), partial unfreezing K=1/2 and conditioning-only. Every
method extends the donor table by the new donor. Per row: trainable parameters, wall time, peak RSS,
held-out MMD (:func:`genailab.evaluation.evaluate_synthesis`, ratio to the real-vs-real floor) and the
held-out diffusion loss (flow-matching MSE on the held-out cells' latents over a fixed grid of times and
noises: the "NLL" of a flow model up to constants).

Task 2 (perturbation, McFaline 2023 glioma lines): pretrain the perturbation model on T98G; adapt to
U87MG with few cells (its controls and a few cells of 5 of its 9 perturbations); Pearson-delta on
the 4 held-out perturbations in U87MG. Same methods (LoRA / adapters on the delta network's MLP).

Distillation: the Task-1 base (50-step Euler teacher) distilled into a tiny 4-step student; sampling
speed and MMD side by side.

Targets (issue 4): LoRA or conditioning-only reaches >= 95% of full fine-tuning's quality with <= 5% of
its trainable parameters and beats from-scratch at 1% and 10% of the data; the 4-step student samples
>= 10x faster than the 50-step teacher with MMD within 10%.

Run: ``python benchmarks/bench_tuning_strategies.py [--seed 0] [--jobs 2]``; writes
``benchmarks/results/tuning_strategies.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CELL_TYPE = "cluster_id"
DONOR = "sample_id"
NEW_DONOR = "1016"
FRACTIONS = (0.01, 0.1, 1.0)
METHODS: dict[str, dict[str, Any]] = {
    "full": {"method": "full"},
    "scratch": {},
    "linear_probe": {"method": "linear_probe"},
    "adapter": {"method": "adapter", "adapter_dim": 16},
    "lora_r4": {"method": "lora", "rank": 4, "targets": ("attn", "mlp")},
    "lora_r8": {"method": "lora", "rank": 8, "targets": ("attn", "mlp")},
    "lora_r16": {"method": "lora", "rank": 16, "targets": ("attn", "mlp")},
    "partial_k1": {"method": "partial", "last_k": 1},
    "partial_k2": {"method": "partial", "last_k": 2},
    "conditioning": {"method": "conditioning"},
}
# with 1% and 10% of the cells (to keep the CPU budget) the main contenders only; --all-methods runs every one
FEW_CELL_METHODS = ("full", "scratch", "linear_probe", "adapter", "lora_r8", "conditioning")
PERTURB_METHODS = ("full", "scratch", "linear_probe", "adapter", "lora_r4", "lora_r8", "partial_k1", "conditioning")
RESULTS = Path(__file__).resolve().parent / "results" / "tuning_strategies.json"


# ------------------------------------------------------------------------------------------- data
def _kang(seed: int) -> tuple[Any, Any, Any, Any]:
    """(base cells, new-donor adaptation pool, new-donor test cells, all cells)."""
    adata, reason = C.load_counts("kang2018_pbmc_ctrl")
    if adata is None:
        raise SystemExit(f"SKIP: {reason}")
    donor = adata.obs[DONOR].astype(str).to_numpy()
    base = adata[donor != NEW_DONOR].copy()
    new_rows = np.flatnonzero(donor == NEW_DONOR)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(new_rows)
    n_test = int(round(0.4 * len(perm)))
    test = adata[np.sort(perm[:n_test])].copy()
    pool = adata[perm[n_test:]].copy()  # in random order: a prefix is a random subset
    return base, pool, test, adata


def _subset(pool: Any, fraction: float, n_donor: int) -> Any:
    n = min(pool.n_obs, max(2, int(round(fraction * n_donor))))
    return pool[:n].copy()


def _train_config(n_cells: int, steps: int, batch: int) -> Any:
    from genailab.training import TrainConfig

    per_epoch = max(1, math.ceil(n_cells / batch))
    val = 0.1 if n_cells >= 100 else 0.0
    return TrainConfig(
        max_epochs=max(1, math.ceil(steps / per_epoch)),
        batch_size=batch,
        lr=1e-3,
        early_stopping_patience=max(5, math.ceil(steps / per_epoch) // 4) if val else 0,
        val_fraction=val,
        progress_bar=False,
    )


# -------------------------------------------------------------------------------------- task 1
def pretrain_synth(out: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from genailab.data import DataSpec
    from genailab.training import TrainConfig
    from genailab.workflows import train_synth_on
    from genailab.workflows.runconfig import SynthRunConfig

    base, _, _, _ = _kang(seed)
    config = SynthRunConfig(seed=seed, data=DataSpec(), condition_keys=(CELL_TYPE, DONOR))
    config = config.replace(
        vae_train=TrainConfig(max_epochs=args.vae_epochs, batch_size=128, early_stopping_patience=10, val_fraction=0.1),
        train=TrainConfig(max_epochs=args.base_epochs, batch_size=256, early_stopping_patience=20, val_fraction=0.05),
    )
    t0 = time.perf_counter()
    summary = train_synth_on(base, out, config)
    return {
        "wall_s": time.perf_counter() - t0,
        "n_cells": int(base.n_obs),
        "n_trainable": summary["n_trainable_parameters"],
    }


def heldout_diffusion_loss(model: Any, test: Any, seed: int) -> float:
    """Flow-matching MSE on held-out latents over a fixed grid of times and noises (lower is better)."""
    import torch

    with torch.no_grad():
        return _heldout_loss(model, test, seed)


def _heldout_loss(model: Any, test: Any, seed: int) -> float:
    import torch

    ds = model.latent_dataset(test)
    z0, cond_values = ds.tensors["latent"], ds.tensors["conditions"]
    model.eval()
    cond = model.conditioning(cond_values, drop=torch.zeros(cond_values.shape, dtype=torch.bool))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for t_val in np.linspace(0.05, 0.95, 10):
        for _ in range(2):
            noise = torch.randn(z0.shape, generator=gen)
            t = torch.full((z0.shape[0],), float(t_val))
            pred = model.backbone(model.objective.add_noise(z0, noise, t), t, cond)
            losses.append(float(model.objective.loss(pred, z0, noise, t).mean()))
    return float(np.mean(losses))


def worker_synth(method: str, fraction: float, seed: int, base_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from genailab.evaluation import evaluate_synthesis
    from genailab.foundation.recipes import LatentDiffusionModel
    from genailab.foundation.recipes.adapted import adapt_synthesis
    from genailab.foundation.tuning import TuningConfig
    from genailab.training import seed_everything

    _, pool, test, _ = _kang(seed)
    n_donor = pool.n_obs + test.n_obs
    new = _subset(pool, fraction, n_donor)
    train = _train_config(new.n_obs, args.steps, 128)
    meter = C.CpuMeter()
    with tempfile.TemporaryDirectory() as tmp:
        if method == "scratch":
            seed_everything(seed)
            base = LatentDiffusionModel.from_pretrained(base_dir)
            vae = base.vae
            vae.registry = vae.registry.with_categories(DONOR, [NEW_DONOR])
            model = LatentDiffusionModel.from_vae(
                vae,
                condition_keys=(CELL_TYPE, DONOR),
                backbone="dit",
                backbone_preset="small",
                config=base.config,
            )
            from genailab.foundation.tuning import count_parameters

            res = model.fit(new, train, out_dir=tmp, seed=seed)
            n_train, n_total = count_parameters(model.trained_modules())
            report = {"n_trainable": n_train, "n_total": n_total, "method": "scratch"}
            epochs = res.epochs
        else:
            tuning = TuningConfig(**METHODS[method])
            model, record = adapt_synthesis(base_dir, new, tuning, train, out_dir=tmp, seed=seed)
            model.use_ema_weights()
            report = record["report"]
            epochs = record["train"]["epochs"]
    cpu = meter.stop()
    model.eval()
    syn = model.sample(like=test, seed=seed)
    metrics = evaluate_synthesis(test, syn, condition_key=CELL_TYPE, seed=seed)
    return {
        "task": "synthesis",
        "method": method,
        "fraction": fraction,
        "n_cells": int(new.n_obs),
        "seed": seed,
        "n_trainable": report["n_trainable"],
        "n_total": report["n_total"],
        "epochs": epochs,
        "wall_s": cpu["wall_s"],
        "other_cpu_fraction": cpu["other_cpu_fraction"],
        "peak_rss_mb": C.peak_rss_mb(),
        "mmd": metrics["overall"]["mmd"]["synthetic"],
        "mmd_floor": metrics["overall"]["mmd"]["floor"],
        "mmd_ratio": metrics["overall"]["mmd"]["ratio"],
        "heldout_diffusion_loss": heldout_diffusion_loss(model, test, seed),
    }


# -------------------------------------------------------------------------------------- task 2
def _mcfaline(seed: int) -> tuple[Any, Any, Any, list[str]]:
    """(T98G cells, U87MG adaptation cells, U87MG evaluation cells, held-out perturbations)."""
    adata, reason = C.load_counts("norman19_mcfaline23")
    if adata is None:
        raise SystemExit(f"SKIP: {reason}")
    adata = adata[adata.obs["dataset"].astype(str).to_numpy() == "mcfaline23"].copy()
    line = adata.obs["cell_type"].astype(str).to_numpy()
    cond = adata.obs["condition"].astype(str).to_numpy()
    base = adata[line == "T98G"].copy()
    rng = np.random.default_rng(seed)
    perts = sorted(set(cond[line == "U87MG"].tolist()) - {"control"})
    held = sorted(rng.choice(perts, 4, replace=False).tolist())
    u = np.flatnonzero(line == "U87MG")
    ctrl = rng.permutation(u[cond[u] == "control"])
    adapt_rows = [ctrl[:50]]
    for p in perts:
        if p not in held:
            rows = u[cond[u] == p]
            adapt_rows.append(rng.choice(rows, min(len(rows), 20), replace=False))
    eval_rows = np.concatenate([ctrl[50:], u[np.isin(cond[u], held)]])
    return base, adata[np.sort(np.concatenate(adapt_rows))].copy(), adata[np.sort(eval_rows)].copy(), held


def _perturb_run_config(seed: int, args: argparse.Namespace) -> Any:
    from genailab.training import TrainConfig
    from genailab.workflows.runconfig import PerturbRunConfig

    # gene-set and GRN priors let a model embed perturbations it never trained on (the scratch model
    # sees only 5 of the 9 agents)
    priors = {
        "gene_sets": tuple(str(p) for p in [_shared_file("gene_sets", "h.all.v7.5.1.symbols.gmt")] if p),
        "grn": tuple(str(p) for p in [_shared_file("grn", "omnipath_CollecTRI_subset_edges.tsv.gz")] if p),
    }
    config = PerturbRunConfig(seed=seed, perturbation_key="condition", context_key="cell_type", split="all", **priors)
    return config.replace(
        model=config.model.replace(n_members=args.members),
        vae_train=TrainConfig(max_epochs=args.vae_epochs, batch_size=128, early_stopping_patience=10, val_fraction=0.1),
        train=TrainConfig(max_epochs=args.perturb_epochs, batch_size=256, early_stopping_patience=15, val_fraction=0.0),
    )


def _shared_file(*parts: str) -> Path | None:
    from genailab.data import shared_data_dir

    root = shared_data_dir()
    p = None if root is None else Path(root).joinpath(*parts)
    return p if p is not None and p.is_file() else None


def pearson_delta(model: Any, evaluation: Any, held: list[str], seed: int) -> dict[str, float]:
    """Mean Pearson correlation of predicted vs observed mean shifts (all genes and top-20 DE genes)."""
    from genailab.data.counts import log_normalize

    cond = evaluation.obs["condition"].astype(str).to_numpy()
    controls = evaluation[cond == "control"].copy()
    x = log_normalize(C.dense_rows(evaluation, np.arange(evaluation.n_obs)))
    ctrl_mean = x[cond == "control"].mean(0)
    all_r, top_r = [], []
    for p in held:
        pred = model.predict_response(controls, p, context={"cell_type": "U87MG"}, allow_ood=True, seed=seed)
        d_pred = pred.mean - pred.control_mean
        d_obs = x[cond == p].mean(0) - ctrl_mean
        all_r.append(float(np.corrcoef(d_pred, d_obs)[0, 1]))
        top = np.argsort(-np.abs(d_obs))[:20]
        top_r.append(float(np.corrcoef(d_pred[top], d_obs[top])[0, 1]))
    return {"pearson_delta": float(np.mean(all_r)), "pearson_delta_top20": float(np.mean(top_r))}


def worker_perturb(method: str, seed: int, base_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from genailab.foundation.recipes import PerturbDeltaModel
    from genailab.foundation.recipes.adapted import adapt_perturbation
    from genailab.foundation.tuning import TuningConfig, count_parameters
    from genailab.workflows.perturb import train_perturb_on

    _, adapt, evaluation, held = _mcfaline(seed)
    meter = C.CpuMeter()
    with tempfile.TemporaryDirectory() as tmp:
        if method == "scratch":
            train_perturb_on(adapt, Path(tmp) / "run", _perturb_run_config(seed, args), vae_dir=base_dir / "vae")
            model = PerturbDeltaModel.from_pretrained(Path(tmp) / "run")
            n_train, n_total = count_parameters(model.nets)
            report = {"n_trainable": n_train, "n_total": n_total}
        else:
            fields = {**METHODS[method], "targets": ("mlp",)}  # the delta network is an MLP backbone
            train = _train_config(adapt.n_obs, args.steps, 256).replace(val_fraction=0.0, early_stopping_patience=0)
            model, record = adapt_perturbation(
                base_dir, adapt, TuningConfig(**fields), train, val_fraction=0.25, out_dir=tmp, seed=seed
            )
            report = record["report"]
            report["n_total"] = report["n_total"] * len(model.nets)
            report["n_trainable"] = report["n_trainable"] * len(model.nets)
    cpu = meter.stop()
    return {
        "task": "perturbation",
        "method": method,
        "seed": seed,
        "n_cells": int(adapt.n_obs),
        "held_out": held,
        "n_trainable": report["n_trainable"],
        "n_total": report["n_total"],
        "wall_s": cpu["wall_s"],
        "other_cpu_fraction": cpu["other_cpu_fraction"],
        "peak_rss_mb": C.peak_rss_mb(),
        **pearson_delta(model, evaluation, held, seed),
    }


def pretrain_perturb(out: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from genailab.workflows.perturb import train_perturb_on

    base, _, _, _ = _mcfaline(seed)
    t0 = time.perf_counter()
    train_perturb_on(base, out, _perturb_run_config(seed, args))
    return {"wall_s": time.perf_counter() - t0, "n_cells": int(base.n_obs)}


# ---------------------------------------------------------------------------------- distillation
def worker_distill(seed: int, base_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from bench_distill_sampling import benchmark_sampling
    from genailab.evaluation import evaluate_synthesis
    from genailab.foundation.recipes import LatentDiffusionModel
    from genailab.foundation.recipes.distill import DistillConfig, distill_latent_diffusion
    from genailab.training import TrainConfig

    base_cells, _, _, adata = _kang(seed)
    from genailab.data import random_split

    teacher = LatentDiffusionModel.from_pretrained(base_dir)
    split = random_split(base_cells.n_obs, val_fraction=0.0, test_fraction=0.2, seed=seed)
    test = base_cells[split.test].copy()  # the teacher saw these cells; both models are scored on them
    cond = teacher.encode_conditions(base_cells)
    config = DistillConfig(student_preset="tiny", steps=4, teacher_steps=50, n_pairs=args.pairs)
    train = TrainConfig(max_epochs=args.distill_epochs, batch_size=256, early_stopping_patience=15, val_fraction=0.1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        student, report = distill_latent_diffusion(teacher, cond, config, train, out_dir=tmp, seed=seed)
        distill_s = time.perf_counter() - t0
    rows = []
    for name, model, steps in (("teacher (50 euler)", teacher, 50), ("student (4 euler)", student, 4),
                               ("teacher (4 euler)", teacher, 4)):  # fmt: skip
        speed = benchmark_sampling(model, 2048, cond, steps=steps, sampler="euler", seed=seed)
        t0 = time.perf_counter()
        syn = model.sample(like=test, seed=seed, steps=steps, sampler="euler")
        end_to_end = test.n_obs / (time.perf_counter() - t0)
        m = evaluate_synthesis(test, syn, condition_key=CELL_TYPE, seed=seed)
        rows.append(
            {
                "model": name,
                "n_params": sum(p.numel() for p in model.trained_modules().parameters()),
                "latent_cells_per_s": speed["cells_per_s"],
                "end_to_end_cells_per_s": end_to_end,
                "nfe": speed["nfe"],
                "mmd": m["overall"]["mmd"]["synthetic"],
                "mmd_floor": m["overall"]["mmd"]["floor"],
                "mmd_ratio": m["overall"]["mmd"]["ratio"],
            }
        )
    return {"task": "distillation", "seed": seed, "distill_s": distill_s, "rows": rows,
            "report": {k: v for k, v in report.items() if k != "history"}}  # fmt: skip


# ------------------------------------------------------------------------------------------ driver
def _worker(args: argparse.Namespace) -> dict[str, Any]:
    C.limit_threads(args.threads)
    base = Path(args.base_dir)
    if args.worker == "synth":
        return worker_synth(args.method, args.fraction, args.seed, base, args)
    if args.worker == "perturb":
        return worker_perturb(args.method, args.seed, base, args)
    if args.worker == "distill":
        return worker_distill(args.seed, base, args)
    if args.worker == "pretrain_synth":
        return pretrain_synth(base, args.seed, args)
    return pretrain_perturb(base, args.seed, args)


def _common_args(args: argparse.Namespace) -> list[str]:
    out = ["--seed", str(args.seed), "--threads", str(args.threads), "--steps", str(args.steps)]
    for k in ("vae_epochs", "base_epochs", "perturb_epochs", "members", "pairs", "distill_epochs"):
        out += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="workers run in parallel (threads each)")
    p.add_argument("--steps", type=int, default=150, help="optimiser steps of each adaptation")
    p.add_argument("--vae-epochs", type=int, default=15)
    p.add_argument("--base-epochs", type=int, default=40)
    p.add_argument("--perturb-epochs", type=int, default=40)
    p.add_argument("--members", type=int, default=2)
    p.add_argument("--pairs", type=int, default=4096)
    p.add_argument("--distill-epochs", type=int, default=40)
    p.add_argument("--tasks", default="synthesis,perturbation,distillation")
    p.add_argument("--all-methods", action="store_true", help="every method at 1% and 10% too")
    p.add_argument("--worker")
    p.add_argument("--method")
    p.add_argument("--fraction", type=float, default=1.0)
    p.add_argument("--base-dir")
    p.add_argument("--out", type=Path)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--work-dir", type=Path, help="where the pretrained bases are kept (default: a temp folder)")
    args = p.parse_args()
    if args.worker:
        result = _worker(args)
        result["genailab_src_sha256"] = C.source_fingerprint()
        C.write_json(args.out, result)
        return 0
    tasks = args.tasks.split(",")
    script = Path(__file__)
    runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    common = _common_args(args)
    work = args.work_dir or Path(tempfile.gettempdir()) / f"genailab-tuning-seed{args.seed}"
    synth_base, perturb_base = work / "synth_base", work / "perturb_base"
    pre: dict[str, Any] = {}
    # the bases are kept in the work dir, so a rerun (e.g. after a crash) reuses them
    for task, base, worker in (("synthesis", synth_base, "pretrain_synth"), ("perturbation", perturb_base,
                                                                           "pretrain_perturb")):  # fmt: skip
        needed = task in tasks or (task == "synthesis" and "distillation" in tasks)
        if needed and not (base / "config.json").is_file():
            pre[task] = C.run_worker(script, ["--worker", worker, "--base-dir", str(base), *common], args.threads)
            print(f"[{time.perf_counter() - t0:6.0f}s] pretrained the {task} base in {pre[task]['wall_s']:.0f} s")
    jobs: list[list[str]] = []
    if "distillation" in tasks:
        jobs.append(["--worker", "distill", "--base-dir", str(synth_base)])
    if "synthesis" in tasks:
        for frac in FRACTIONS:
            for method in METHODS if frac == 1.0 or args.all_methods else FEW_CELL_METHODS:
                jobs.append(["--worker", "synth", "--method", method, "--fraction", str(frac),
                             "--base-dir", str(synth_base)])  # fmt: skip
    if "perturbation" in tasks:
        for method in PERTURB_METHODS:
            jobs.append(["--worker", "perturb", "--method", method, "--base-dir", str(perturb_base)])

    def record() -> None:  # after every job, so a partial run still leaves its figures
        C.write_json(
            args.results,
            {
                "benchmark": "tuning strategies and distillation",
                "seed": args.seed,
                "settings": {k: str(v) for k, v in vars(args).items() if k not in ("out", "worker", "results")},
                "machine": C.machine_info(args.threads),
                "contention": C.contention_note([r for r in runs if "other_cpu_fraction" in r]),
                "pretraining": pre,
                "runs": runs,
            },
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(C.run_worker, script, [*job, *common], args.threads): job for job in jobs}
        for fut in concurrent.futures.as_completed(futures):
            job = futures[fut]
            try:
                r = fut.result()
            except RuntimeError as err:  # one failing method must not lose the others' figures
                r = {"task": job[1], "method": job[3] if len(job) > 3 else "", "error": str(err)}
            runs.append(r)
            label = f"{r['task']:12s} {r.get('method', ''):13s} {r.get('fraction', '')} {r.get('error', '')}"
            print(f"[{time.perf_counter() - t0:6.0f}s] {label}", flush=True)
            record()
    _print_tables([r for r in runs if "error" not in r])
    record()
    print(f"\nwrote {args.results}")
    return 0


def _print_tables(runs: list[dict[str, Any]]) -> None:
    synth = [r for r in runs if r["task"] == "synthesis"]
    for frac in FRACTIONS:
        rows = sorted((r for r in synth if r["fraction"] == frac), key=lambda r: list(METHODS).index(r["method"]))
        if not rows:
            continue
        full = next((r for r in rows if r["method"] == "full"), None)
        print(f"\nTask 1: new donor, {100 * frac:g}% of its cells ({rows[0]['n_cells']} cells)")
        C.print_table(
            [
                "method",
                "trainable",
                "% of full",
                "wall s",
                "peak MB",
                "MMD",
                "MMD/floor",
                "quality vs full",
                "held-out loss",
            ],  # fmt: skip
            [
                [
                    r["method"],
                    f"{r['n_trainable']:,}",
                    f"{100 * r['n_trainable'] / full['n_trainable']:.1f}" if full else "-",
                    f"{r['wall_s']:.0f}",
                    f"{r['peak_rss_mb']:.0f}",
                    f"{r['mmd']:.4f}",
                    f"{r['mmd_ratio']:.2f}",
                    f"{full['mmd'] / r['mmd']:.2f}" if full else "-",
                    f"{r['heldout_diffusion_loss']:.4f}",
                ]
                for r in rows
            ],
        )
    pert = sorted((r for r in runs if r["task"] == "perturbation"), key=lambda r: PERTURB_METHODS.index(r["method"]))
    if pert:
        full = next((r for r in pert if r["method"] == "full"), None)
        print(f"\nTask 2: new cell line U87MG ({pert[0]['n_cells']} cells), held out {pert[0]['held_out']}")
        C.print_table(
            ["method", "trainable", "% of full", "wall s", "peak MB", "Pearson delta", "top-20 DE", "vs full"],
            [
                [
                    r["method"],
                    f"{r['n_trainable']:,}",
                    f"{100 * r['n_trainable'] / full['n_trainable']:.1f}" if full else "-",
                    f"{r['wall_s']:.0f}",
                    f"{r['peak_rss_mb']:.0f}",
                    f"{r['pearson_delta']:.3f}",
                    f"{r['pearson_delta_top20']:.3f}",
                    f"{r['pearson_delta'] / full['pearson_delta']:.2f}" if full and full["pearson_delta"] else "-",
                ]
                for r in pert
            ],
        )
    for r in runs:
        if r["task"] == "distillation":
            print("\nDistillation")
            C.print_table(
                ["model", "params", "NFE", "latent cells/s", "end-to-end cells/s", "MMD", "MMD/floor"],
                [
                    [
                        x["model"],
                        f"{x['n_params']:,}",
                        str(x["nfe"]),
                        f"{x['latent_cells_per_s']:.0f}",
                        f"{x['end_to_end_cells_per_s']:.0f}",
                        f"{x['mmd']:.4f}",
                        f"{x['mmd_ratio']:.2f}",
                    ]  # fmt: skip
                    for x in r["rows"]
                ],
            )


if __name__ == "__main__":
    raise SystemExit(main())
