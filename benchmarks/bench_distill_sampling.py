"""Sampling speed of a distilled few-step student against its teacher, side by side.

Times the diffusion part of sampling (noise -> latents, without VAE decoding) for three rows on the same
noise and conditions: the teacher at its own step count (default 50 Euler steps), the teacher cut to the
student's step count, and the student at its step count (``steps`` of its config, 4 for the default
:class:`~genailab.foundation.recipes.distill.DistillConfig`). Each row reports network evaluations per
cell (``nfe``, doubled by classifier-free guidance with a scale != 1), the median wall time of
``--repeats`` timed runs after a one-cell warm-up, cells per second and the speed-up over the teacher's
full run. How closely the student's samples track the teacher's is not measured here: that is the
``fidelity`` entry of the distillation report (``distill.json``).

Models:

- default: a tiny *untrained* pair built in seconds on synthetic counts: a tiny VAE (one epoch, which
  calibrates its latent scale), a DiT teacher of ``--teacher-preset`` and a student of
  ``--student-preset`` from :func:`~genailab.foundation.recipes.distill.build_student`. Sampling cost
  does not depend on the weights, so the timings hold for trained models of the same sizes.
- ``--teacher DIR --student DIR``: saved models (``save_pretrained`` / ``save_distilled``); conditions are
  encoded from ``--adata FILE.h5ad`` (needed when the teacher is conditional).

Usage::

    .venv/bin/python benchmarks/bench_distill_sampling.py                      # tiny pair, ~30 s on 1 thread
    .venv/bin/python benchmarks/bench_distill_sampling.py --cells 8192 --device cuda
    .venv/bin/python benchmarks/bench_distill_sampling.py --teacher runs/ldm --student runs/ldm_tiny4 \\
        --adata data.h5ad --cells 8192

Writes ``benchmarks/results/distill_sampling.json``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

OUT_NAME = "distill_sampling.json"
CONDITION_KEY = "cell_type"


# ----------------------------------------------------------------------------------------- timing
def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_sampling(
    model: Any,
    n: int,
    conditions: Any = None,
    *,
    steps: int | None = None,
    sampler: str | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 2048,
) -> dict[str, Any]:
    """Time the generation of ``n`` latents (the diffusion part of sampling, without VAE decoding).

    Parameters
    ----------
    model
        A :class:`~genailab.foundation.recipes.LatentDiffusionModel` (teacher or student), on the device
        to time.
    n
        Number of cells.
    conditions
        ``(N, K)`` encoded conditions to draw ``n`` rows from (seeded, with replacement); ``None`` for an
        unconditional model.
    steps, sampler, guidance_scale
        Sampling settings (defaults from the model's config).
    seed
        Seeds the noise and the condition draws.
    batch_size
        Cells per sampling batch.

    Returns
    -------
    ``{"n", "steps", "sampler", "nfe", "guidance_scale", "wall_s", "cells_per_s", "device"}`` where
    ``nfe`` counts network evaluations per cell (doubled by classifier-free guidance with a scale != 1).
    A one-cell, one-step warm-up run is not timed.
    """
    import torch

    from genailab.config import check_positive
    from genailab.diffusion import nfe
    from genailab.foundation.recipes.distill.pairs import check_conditions, draw_conditions

    check_positive("n", n, integer=True)
    with torch.no_grad():
        cond = check_conditions(model, conditions)
        steps = model.config.steps if steps is None else steps
        sampler = model.config.sampler if sampler is None else sampler
        guidance = model.config.guidance_scale if guidance_scale is None else guidance_scale
        nfe_per_cell = nfe(sampler, steps) * (2 if (model.config.condition_keys and guidance != 1.0) else 1)
        gen = torch.Generator().manual_seed(seed)
        m, d = model.vae.config.latent_shape
        dev = next(model.parameters()).device
        noise = torch.randn(n, m, d, generator=gen).to(dev)  # (n, m, d)
        cv = draw_conditions(cond, n, gen).to(dev)  # (n, K)
        model.sample_latents(cv[:1], guidance_scale=guidance, steps=1, sampler=sampler, x_start=noise[:1])  # warm-up
        _sync(dev)
        t0 = time.perf_counter()
        model.sample_latents(
            cv, guidance_scale=guidance, steps=steps, sampler=sampler, seed=seed, x_start=noise, batch_size=batch_size
        )
        _sync(dev)
        wall = time.perf_counter() - t0
    return {
        "n": n,
        "steps": steps,
        "sampler": sampler,
        "nfe": nfe_per_cell,
        "guidance_scale": guidance,
        "wall_s": wall,
        "cells_per_s": n / wall if wall > 0 else math.inf,
        "device": str(dev),
    }


def compare(
    teacher: Any,
    student: Any,
    conditions: Any,
    *,
    n: int,
    teacher_steps: int = 50,
    repeats: int = 3,
    seed: int = 0,
    batch_size: int = 2048,
) -> list[dict[str, Any]]:
    """Rows for the teacher at ``teacher_steps``, the teacher at the student's steps, and the student.

    Every row samples the same noise and conditions with the teacher's sampler (the student uses its own,
    ``euler``) and keeps the median wall time of ``repeats`` timed runs.
    """
    student_steps = student.config.steps
    runs = (
        (f"teacher ({teacher_steps} {teacher.config.sampler})", teacher, teacher_steps, teacher.config.sampler),
        (f"teacher ({student_steps} {teacher.config.sampler})", teacher, student_steps, teacher.config.sampler),
        (f"student ({student_steps} {student.config.sampler})", student, student_steps, student.config.sampler),
    )
    rows = []
    for label, model, steps, sampler in runs:
        timings = [
            benchmark_sampling(model, n, conditions, steps=steps, sampler=sampler, seed=seed, batch_size=batch_size)
            for _ in range(repeats)
        ]
        wall = statistics.median(t["wall_s"] for t in timings)
        rows.append(
            timings[0]
            | {
                "model": label,
                "n_params": sum(p.numel() for p in model.trained_modules().parameters()),
                "wall_s": wall,
                "wall_s_runs": [t["wall_s"] for t in timings],
                "cells_per_s": n / wall if wall > 0 else math.inf,
            }
        )
    base = rows[0]["cells_per_s"]
    for row in rows:
        row["speedup"] = row["cells_per_s"] / base if base > 0 else math.nan
    return rows


# ----------------------------------------------------------------------------------------- models
def synthetic_counts(n_obs: int = 256, n_vars: int = 64, n_types: int = 3, seed: int = 0) -> Any:
    """NB counts with ``n_types`` cell types in ``obs["cell_type"]``, as a small AnnData."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    from scipy import sparse

    rng = np.random.default_rng(seed)
    types = rng.integers(0, n_types, n_obs)
    programs = rng.gamma(2.0, 1.0, size=(n_types, n_vars))
    lib = rng.lognormal(np.log(200), 0.3, n_obs)
    mu = programs[types] / programs[types].sum(1, keepdims=True) * lib[:, None]
    counts = rng.negative_binomial(5, 5 / (5 + mu)).astype(np.float32)
    obs = pd.DataFrame(
        {CONDITION_KEY: pd.Categorical([f"type{t}" for t in types])}, index=[f"cell{i}" for i in range(n_obs)]
    )
    return ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(n_vars)]))


def tiny_pair(
    *, teacher_preset: str = "small", student_preset: str = "tiny", steps: int = 4, seed: int = 0
) -> tuple[Any, Any, Any]:
    """An untrained ``(teacher, student, conditions)`` over a tiny VAE of synthetic counts.

    The VAE trains for one epoch, which calibrates its latent scale (a diffusion model needs it).
    """
    import torch

    from genailab.data import DataSpec
    from genailab.foundation.recipes import LatentDiffusionConfig, LatentDiffusionModel, LatentTokenVAE
    from genailab.foundation.recipes.distill import DistillConfig, build_student
    from genailab.training import TrainConfig

    torch.manual_seed(seed)
    adata = synthetic_counts(seed=seed)
    vae = LatentTokenVAE.from_anndata(adata, DataSpec(categorical_covariate_keys=(CONDITION_KEY,)), preset="tiny")
    vae.fit(adata, TrainConfig(max_epochs=1, batch_size=64, progress_bar=False, early_stopping_patience=0), seed=seed)
    teacher = LatentDiffusionModel.from_vae(
        vae,
        condition_keys=(CONDITION_KEY,),
        backbone="dit",
        backbone_preset=teacher_preset,
        config=LatentDiffusionConfig(objective="flow", sampler="euler", steps=50),
    )
    student = build_student(teacher, DistillConfig(student_preset=student_preset, steps=steps))
    return teacher.eval(), student.eval(), teacher.encode_conditions(adata)


def saved_pair(teacher_dir: Path, student_dir: Path, adata_path: Path | None) -> tuple[Any, Any, Any]:
    """``(teacher, student, conditions)`` loaded from model directories and an h5ad of real cells."""
    import anndata as ad

    from genailab.foundation.recipes import LatentDiffusionModel

    teacher = LatentDiffusionModel.from_pretrained(teacher_dir).eval()
    student = LatentDiffusionModel.from_pretrained(student_dir).eval()
    if not teacher.config.condition_keys:
        return teacher, student, None
    if adata_path is None:
        raise SystemExit(f"the teacher is conditioned on {list(teacher.config.condition_keys)}: pass --adata FILE.h5ad")
    return teacher, student, teacher.encode_conditions(ad.read_h5ad(adata_path))


# ----------------------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, help="saved teacher directory (default: a tiny untrained pair)")
    p.add_argument("--student", type=Path, help="saved student directory (with --teacher)")
    p.add_argument("--adata", type=Path, help="h5ad of real cells to draw conditions from (with --teacher)")
    p.add_argument("--teacher-preset", default="small", help="DiT preset of the tiny pair's teacher")
    p.add_argument("--student-preset", default="tiny", help="DiT preset of the tiny pair's student")
    p.add_argument("--student-steps", type=int, default=4, help="Euler steps of the tiny pair's student")
    p.add_argument("--teacher-steps", type=int, default=50)
    p.add_argument("--cells", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", type=Path, default=C.RESULTS_DIR / OUT_NAME)
    args = p.parse_args(argv)
    if (args.teacher is None) != (args.student is None):
        p.error("--teacher and --student go together")

    import torch

    C.limit_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.teacher is not None:
        teacher, student, cond = saved_pair(args.teacher, args.student, args.adata)
        source = {"teacher": str(args.teacher), "student": str(args.student)}
    else:
        teacher, student, cond = tiny_pair(
            teacher_preset=args.teacher_preset, student_preset=args.student_preset, steps=args.student_steps,
            seed=args.seed,
        )  # fmt: skip
        source = {"teacher": f"untrained dit/{args.teacher_preset}", "student": f"untrained dit/{args.student_preset}"}
    teacher, student = teacher.to(device), student.to(device)
    rows = compare(
        teacher, student, cond, n=args.cells, teacher_steps=args.teacher_steps, repeats=args.repeats,
        seed=args.seed, batch_size=args.batch_size,
    )  # fmt: skip
    C.print_table(
        ["model", "params", "nfe", "wall s", "cells/s", "speed-up"],
        [
            [r["model"], f"{r['n_params']:,}", r["nfe"], f"{r['wall_s']:.3f}", f"{r['cells_per_s']:,.0f}",
             f"{r['speedup']:.1f}x"]
            for r in rows
        ],
    )  # fmt: skip
    C.write_json(
        args.out,
        {
            "benchmark": "distill_sampling",
            "models": source,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "rows": rows,
            "machine": C.machine_info(args.threads) | {"device": str(device)},
            "genailab_src_sha256": C.source_fingerprint(),
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
