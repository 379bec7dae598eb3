"""Shared helpers of the side-by-side benchmarks: matched settings, model adapters, metrics, workers.

Both benchmark scripts train genailab's :class:`~genailab.foundation.recipes.vae.model.LatentTokenVAE`
and scvi-tools' ``SCVI`` with the settings in :class:`VAESettings`, each ``(method, seed)`` in its own
Python process (so peak RSS and import costs are isolated), and score both models with the *same* code:
an adapter per tool exposes ``encode`` (posterior mean and sd) and ``decode`` (NB ``mu``/``theta``) and
everything downstream (NLL via :func:`genailab.likelihoods.log_nb_positive`, KL, posterior-predictive
samples) is computed here, identically for both.

Heavy packages (torch, genailab, scvi) are imported inside functions, so the orchestrating parent
process stays light and only the workers pay for them.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
METHODS = ("genailab", "scvi")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
EVAL_CHUNK = 1024


# ----------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class VAESettings:
    """Everything both methods share. One hidden layer of 128, latent 10, NB with per-gene theta."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-6
    adam_eps: float = 1e-8
    n_hidden: int = 128
    n_tokens: int = 2  # genailab latent (2 tokens x 5) == scVI n_latent 10
    token_dim: int = 5
    dropout: float = 0.1
    kl_warmup_epochs: float = 5.0
    likelihood: str = "nb"
    dispersion: str = "gene"
    threads: int = 2
    # "matched": scVI trains with AdamW(eps=1e-8) and a per-step KL warm-up over kl_warmup_epochs,
    # exactly genailab's procedure. "stock": scVI's own defaults (Adam eps=0.01, 400-epoch warm-up).
    scvi_plan: str = "matched"

    @property
    def n_latent(self) -> int:
        return self.n_tokens * self.token_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"n_latent": self.n_latent}


# ----------------------------------------------------------------------------------------- machine
def limit_threads(n: int) -> None:
    """Pin torch to ``n`` intra-op threads (the env variables are set by :func:`run_worker`)."""
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


class CpuMeter:
    """Wall time, this process's CPU time, and the CPU time every *other* process used meanwhile.

    The last comes from the machine-wide busy time in ``/proc/stat`` minus our own CPU time (Linux only,
    else ``None``); ``other_cpu_fraction`` = that over the machine's capacity (cores x wall time), so
    ~0 on a quiet machine and e.g. 0.5 when other jobs kept one of two cores busy.
    """

    def __init__(self) -> None:
        self.wall, self.cpu, self.busy = time.perf_counter(), time.process_time(), _machine_busy_s()

    def stop(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self.wall
        cpu = time.process_time() - self.cpu
        busy = _machine_busy_s()
        other = None if busy is None or self.busy is None else max(busy - self.busy - cpu, 0.0)
        n = os.cpu_count() or 1
        return {
            "wall_s": wall,
            "cpu_s": cpu,
            "other_cpu_s": other,
            "other_cpu_fraction": None if other is None else other / (n * wall),
        }


def _machine_busy_s() -> float | None:
    """Seconds all CPUs spent busy since boot (user + nice + system + irq + softirq + steal)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 2**20


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(threads: int) -> dict[str, Any]:
    """CPU, memory and package versions, for the results JSON."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    mem_gb = None
    try:
        import psutil

        mem_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return {
        "date": _dt.date.today().isoformat(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "memory_gb": mem_gb,
        "torch_threads": threads,
        "versions": {
            p: _version(p) for p in ("genailab", "torch", "scvi-tools", "lightning", "anndata", "numpy", "scipy")
        },
    }


def source_fingerprint() -> str:
    """Short sha256 of genailab's source files, so a result can be matched to the code it measured."""
    import genailab

    root = Path(genailab.__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


# ----------------------------------------------------------------------------------------- stats
def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def fmt(values: Sequence[float], digits: int = 1) -> str:
    m, s = mean_sd(values)
    return f"{m:,.{digits}f} ± {s:,.{digits}f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a GitHub-markdown table (so it can be pasted into BENCHMARKS.md as is)."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


# ----------------------------------------------------------------------------------------- workers
def run_worker(script: Path, args: Sequence[str], threads: int) -> dict[str, Any]:
    """Run ``python script --worker ... --out tmp.json`` in a fresh process and return its JSON."""
    with tempfile.TemporaryDirectory(prefix="genailab-bench-") as tmp:
        out = Path(tmp) / "result.json"
        env = os.environ | {k: str(threads) for k in THREAD_ENV} | {"PYTHONHASHSEED": "0"}
        cmd = [sys.executable, str(script), *args, "--out", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.is_file():
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
            raise RuntimeError(f"worker {' '.join(args)} failed with exit code {proc.returncode}")
        result = json.loads(out.read_text())
        result["process_wall_s"] = time.perf_counter() - t0
        return result


def run_seeds(script: Path, seeds: Sequence[int], s: VAESettings, describe: Callable[[dict], str]) -> list[dict] | None:
    """Run every ``(method, seed)`` worker of ``script``, alternating the method order between seeds.

    Returns the per-run records, or ``None`` (after printing the reason) when the data are absent.
    ``describe(record)`` gives the progress line printed after each run.
    """
    runs: list[dict] = []
    t0 = time.perf_counter()
    for i, seed in enumerate(seeds):
        for method in METHODS if i % 2 == 0 else METHODS[::-1]:  # spread any drift over both methods
            args = ["--worker", method, "--seed", str(seed), "--epochs", str(s.epochs)]
            args += ["--threads", str(s.threads), "--scvi-plan", s.scvi_plan]
            r = run_worker(script, args, s.threads)
            if r.get("skipped"):
                print(f"SKIP: {r['skipped']}")
                return None
            runs.append(r)
            other = r.get("other_cpu_fraction")
            busy = "" if other is None or other < 0.1 else f" [other processes used {100 * other:.0f}% CPU]"
            print(f"[{time.perf_counter() - t0:5.0f}s] {method:8s} seed {seed}: {describe(r)}{busy}", flush=True)
    return runs


def source_versions(runs: Sequence[dict]) -> list[str]:
    """Fingerprints of the genailab code the genailab runs trained with; warns if it changed mid-run.

    (scVI runs only use genailab to load and split the data, so their fingerprint does not matter.)
    """
    fps = sorted({str(r.get("genailab_src_sha256")) for r in runs if r["method"] == "genailab"})
    if len(fps) > 1:
        print(f"WARNING: genailab's source changed between the genailab runs ({', '.join(fps)}); rerun.")
    return fps


def contention_note(runs: Sequence[dict]) -> str:
    """One line on whether other processes competed for the CPU while the models trained."""
    other = [r.get("other_cpu_fraction") for r in runs]
    if not other:
        return "no runs."
    if any(o is None for o in other):
        return "CPU use of other processes unknown (no /proc/stat)."
    note = (
        f"other processes used {100 * min(other):.0f}-{100 * max(other):.0f}% of the machine's CPU "
        "while the models trained"
    )
    if max(other) > 0.1:
        note += ": wall-clock figures are inflated for some runs; rerun on a quiet machine"
    return note


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def load_counts(name: str) -> tuple[Any, str | None]:
    """A shared dataset with float32 CSR counts, or ``(None, reason)`` when it cannot be loaded."""
    from genailab.data import load_shared, shared_data_dir

    root = shared_data_dir()
    if root is None:
        return None, f"no shared data folder found (set GENAILAB_SHARED_DATA); cannot load {name!r}"
    try:
        adata = load_shared(name)
    except Exception as err:  # noqa: BLE001 - any load failure is a skip reason, reported as such
        return None, f"cannot load {name!r} from {root}: {err}"
    # Same dtype for both tools, so neither pays for an int -> float conversion per batch.
    adata.X = adata.X.astype(np.float32)
    return adata, None


def dense_rows(adata: Any, rows: np.ndarray) -> np.ndarray:
    x = adata.X[rows]
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)


# ----------------------------------------------------------------------------------------- training
def train_genailab(adata: Any, split: Any, batch_key: str, s: VAESettings, seed: int) -> tuple[Any, dict]:
    """Build and fit a LatentTokenVAE on ``split.train`` (no validation, no early stopping)."""
    from genailab.data import DataSpec
    from genailab.foundation.recipes.vae.model import LatentTokenVAE
    from genailab.training import TrainConfig, seed_everything

    seed_everything(seed)  # weight initialisation
    t0 = time.perf_counter()
    model = LatentTokenVAE.from_anndata(
        adata,
        DataSpec(batch_key=batch_key),
        preset="tiny",
        overrides={
            "n_tokens": s.n_tokens,
            "token_dim": s.token_dim,
            "hidden_dims": (s.n_hidden,),
            "likelihood": s.likelihood,
            "dispersion": s.dispersion,
            "dropout": s.dropout,
            "kl_weight": 1.0,
            "kl_warmup_epochs": s.kl_warmup_epochs,
        },
    )
    setup_s = time.perf_counter() - t0
    train = TrainConfig(
        max_epochs=s.epochs,
        batch_size=s.batch_size,
        lr=s.lr,
        weight_decay=s.weight_decay,
        val_fraction=0.0,
        early_stopping_patience=0,
        accelerator="cpu",
        devices=1,
        progress_bar=False,
    )
    fit_split = dataclasses.replace(split, val=np.empty(0, dtype=np.int64))  # train-only, like scVI
    meter = CpuMeter()
    result = model.fit(adata, train, split=fit_split, seed=seed)
    timing = meter.stop()
    return model, {
        "setup_s": setup_s,
        "train_s": timing["wall_s"],
        "train_cpu_s": timing["cpu_s"],
        "other_cpu_fraction": timing["other_cpu_fraction"],
        "epochs_run": result.epochs,
        "steps": result.steps,
        "own_train_cells_per_s": result.train_cells_per_s,
        "own_trainer_wall_s": result.wall_s,
        "final_train_loss": result.final_train_loss,
        "n_params": sum(p.numel() for p in model.parameters()),
    }


def train_scvi(adata: Any, split: Any, batch_key: str, s: VAESettings, seed: int, root_dir: str) -> tuple[Any, dict]:
    """Build and fit scvi-tools SCVI on ``split.train`` (no validation, no early stopping)."""
    import scvi

    limit_threads(s.threads)
    scvi.settings.seed = seed
    scvi.settings.dl_num_workers = 0
    t0 = time.perf_counter()
    scvi.model.SCVI.setup_anndata(adata, batch_key=batch_key)
    model = scvi.model.SCVI(
        adata,
        n_hidden=s.n_hidden,
        n_latent=s.n_latent,
        n_layers=1,
        dropout_rate=s.dropout,
        dispersion=s.dispersion,
        gene_likelihood=s.likelihood,
    )
    setup_s = time.perf_counter() - t0
    n_train = len(split.train)
    steps_per_epoch = n_train // s.batch_size  # drop_last, like genailab
    if s.scvi_plan == "matched":
        plan = {
            "lr": s.lr,
            "weight_decay": s.weight_decay,
            "optimizer": "AdamW",
            "eps": s.adam_eps,
            "n_epochs_kl_warmup": None,
            "n_steps_kl_warmup": int(round(s.kl_warmup_epochs * steps_per_epoch)),
        }
    elif s.scvi_plan == "stock":
        plan = {"lr": s.lr}
    else:
        raise ValueError(f"scvi_plan={s.scvi_plan!r}; expected 'matched' or 'stock'.")
    # The val + test cells go to scVI's test slot: it never loads them while training (scVI only
    # validates with early stopping), so scVI, like genailab here, trains on split.train alone.
    heldout = np.sort(np.concatenate([split.val, split.test]))
    meter = CpuMeter()
    model.train(
        max_epochs=s.epochs,
        accelerator="cpu",
        devices=1,
        batch_size=s.batch_size,
        early_stopping=False,
        datasplitter_kwargs={
            "external_indexing": [np.asarray(split.train), np.array([], dtype=np.int64), heldout],
            "drop_last": True,
        },
        plan_kwargs=plan,
        enable_progress_bar=False,
        default_root_dir=root_dir,
    )
    timing = meter.stop()
    history = model.history.get("train_loss")  # one row per epoch
    return model, {
        "setup_s": setup_s,
        "train_s": timing["wall_s"],
        "train_cpu_s": timing["cpu_s"],
        "other_cpu_fraction": timing["other_cpu_fraction"],
        "epochs_run": len(history) if history is not None else None,
        "final_train_loss": float(history.iloc[-1, 0]) if history is not None and len(history) else None,
        "n_params": sum(p.numel() for p in model.module.parameters()),
        "plan_kwargs": plan,
    }


# ----------------------------------------------------------------------------------------- adapters
class GenailabAdapter:
    """``encode``/``decode`` of a fitted LatentTokenVAE over rows of ``adata``, via its public API."""

    def __init__(self, model: Any, adata: Any) -> None:
        self.model, self.adata = model.eval(), adata

    def batches(self, rows: np.ndarray) -> Any:
        from genailab.data import CountsDataset, make_dataloader

        ds = CountsDataset(self.adata, self.model.registry, indices=rows)
        return make_dataloader(ds, batch_size=EVAL_CHUNK, shuffle=False)

    def encode(self, batch: dict) -> tuple[Any, Any]:
        from genailab.constants import BATCH_KEYS

        mu, logvar = self.model.encode(batch[BATCH_KEYS.COUNTS], batch[BATCH_KEYS.LIBRARY])  # (B, m, d)
        return mu.flatten(1), (0.5 * logvar).exp().flatten(1)  # (B, L) each

    def decode(self, z: Any, batch: dict) -> tuple[Any, Any]:
        from genailab.constants import BATCH_KEYS

        z = z.view(-1, *self.model.config.latent_shape)  # (B, m, d)
        dist = self.model.decode(z, batch[BATCH_KEYS.LIBRARY], self.model.batch_index(batch))
        return dist.mu, dist.theta  # (B, G) each

    @staticmethod
    def counts(batch: dict) -> Any:
        from genailab.constants import BATCH_KEYS

        return batch[BATCH_KEYS.COUNTS]


class ScviAdapter:
    """``encode``/``decode`` of a fitted scvi-tools SCVI via ``module.inference`` / ``generative``.

    With ``use_observed_lib_size=True`` (the default), ``inference`` returns the observed log-library
    and ``generative`` scales its softmax by it, exactly like genailab's decoder.
    """

    def __init__(self, model: Any, adata: Any) -> None:
        from scvi import REGISTRY_KEYS

        self.model, self.adata = model, adata
        self.module = model.module.eval()
        self.codes = np.asarray(model.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).reshape(-1)

    def batches(self, rows: np.ndarray) -> Any:
        import torch

        for start in range(0, len(rows), EVAL_CHUNK):
            r = rows[start : start + EVAL_CHUNK]
            yield {
                "x": torch.from_numpy(dense_rows(self.adata, r)),
                "batch_index": torch.from_numpy(self.codes[r].astype(np.int64)).view(-1, 1),
            }

    def encode(self, batch: dict) -> tuple[Any, Any]:
        out = self.module.inference(x=batch["x"], batch_index=batch["batch_index"])
        batch["library"] = out["library"]  # (B, 1) log observed library
        return out["qz"].loc, out["qz"].scale  # (B, L) each

    def decode(self, z: Any, batch: dict) -> tuple[Any, Any]:
        px = self.module.generative(z=z, library=batch["library"], batch_index=batch["batch_index"])["px"]
        return px.mu, px.theta.expand_as(px.mu)  # (B, G) each

    @staticmethod
    def counts(batch: dict) -> Any:
        return batch["x"]


def evaluate(adapter: Any, rows: np.ndarray, seed: int, *, keep: bool = False) -> dict[str, Any]:
    """Score held-out cells ``rows`` the same way for any adapter.

    Per cell: NLL = ``-sum_g log NB(x_g; mu_g, theta_g)`` (float64 :func:`log_nb_positive`) with
    ``(mu, theta)`` decoded at the posterior mean of ``z`` and the cell's observed library and batch;
    ``KL(q(z|x) || N(0, I))``. With ``keep``, also returns the arrays (observed counts, decoded means
    at the posterior mean and one posterior-predictive sample: ``z ~ q(z|x)``, ``x ~ NB``).
    """
    import torch

    from genailab.likelihoods import log_nb_positive

    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    nll, kl, xs, means, samples = [], [], [], [], []
    with torch.no_grad():
        for batch in adapter.batches(rows):
            x = adapter.counts(batch)
            z_mean, z_std = adapter.encode(batch)
            mu, theta = adapter.decode(z_mean, batch)
            nll.append(-log_nb_positive(x.double(), mu.double(), theta.double()).sum(-1).numpy())
            kl.append((0.5 * (z_mean**2 + z_std**2 - 1.0) - z_std.log()).sum(-1).double().numpy())
            if keep:
                eps = torch.randn(z_mean.shape, generator=gen)
                mu_s, theta_s = adapter.decode(z_mean + z_std * eps, batch)
                xs.append(x.numpy())
                means.append(mu.numpy())
                samples.append(nb_sample(mu_s.double().numpy(), theta_s.double().numpy(), rng))
    out: dict[str, Any] = {
        "nll_per_cell": float(np.concatenate(nll).mean()),
        "kl_per_cell": float(np.concatenate(kl).mean()),
        "n_cells": int(len(rows)),
    }
    if keep:
        out["arrays"] = {
            "x": np.concatenate(xs),
            "mean": np.concatenate(means),
            "sample": np.concatenate(samples),
        }
    return out


def nb_sample(mu: np.ndarray, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma-Poisson draws from ``NB(mu, theta)`` (variance ``mu + mu**2 / theta``)."""
    rate = rng.gamma(shape=theta, scale=np.maximum(mu, 1e-12) / theta)
    return rng.poisson(rate).astype(np.float32)


# ----------------------------------------------------------------------------------------- worker
def worker_main(
    method: str,
    seed: int,
    s: VAESettings,
    dataset: str,
    batch_key: str,
    out: Path,
    extra: Callable[[Any, Any, Any, dict], dict] | None = None,
) -> None:
    """Train one ``(method, seed)`` on ``dataset``, score its test cells and write ``out`` (JSON).

    ``extra(adapter, adata, split, evaluation)`` may add dataset-specific metrics.
    """
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]  # > 0.5 means something else was running: timings are suspect
    fingerprint = source_fingerprint()
    limit_threads(s.threads)
    from genailab.data import random_split

    adata, reason = load_counts(dataset)
    if adata is None:
        write_json(out, {"skipped": reason})
        return
    split = random_split(adata.n_obs, val_fraction=0.1, test_fraction=0.1, seed=seed)
    rss_after_load = peak_rss_mb()
    with tempfile.TemporaryDirectory(prefix=f"{method}-") as tmp:
        if method == "genailab":
            model, info = train_genailab(adata, split, batch_key, s, seed)
            adapter: Any = GenailabAdapter(model, adata)
            info["own_nll_per_cell"] = model.evaluate_nll(adata, indices=split.test)["nll_per_cell"]
        elif method == "scvi":
            model, info = train_scvi(adata, split, batch_key, s, seed, tmp)
            adapter = ScviAdapter(model, adata)
            info["own_reconstruction_error"] = float(
                model.get_reconstruction_error(adata, indices=split.test, batch_size=EVAL_CHUNK)["reconstruction_loss"]
            )
        else:
            raise ValueError(f"method={method!r}; expected one of {METHODS}.")
        import torch

        threads_used = torch.get_num_threads()
        rss_after_train = peak_rss_mb()
        t0 = time.perf_counter()
        evaluation = evaluate(adapter, split.test, seed, keep=extra is not None)
        eval_s = time.perf_counter() - t0
        extras = extra(adapter, adata, split, evaluation) if extra is not None else {}
    evaluation.pop("arrays", None)
    n_train = len(split.train)
    record = {
        "method": method,
        "seed": seed,
        "genailab_src_sha256": fingerprint,
        "dataset": dataset,
        "n_obs": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_train": n_train,
        "n_test": int(len(split.test)),
        "cells_per_s": n_train * s.epochs / info["train_s"],
        # CPU time of all threads: less sensitive than wall time to other processes on the machine.
        "cells_per_cpu_s": n_train * s.epochs / info["train_cpu_s"],
        # ~1 when the training threads had the cores to themselves; well below 1 under contention.
        "cpu_utilisation": info["train_cpu_s"] / info["train_s"] / s.threads,
        **info,
        **evaluation,
        **extras,
        "eval_s": eval_s,
        "torch_threads": threads_used,
        "peak_rss_mb_after_load": rss_after_load,
        "peak_rss_mb_after_train": rss_after_train,
        "peak_rss_mb": peak_rss_mb(),
        "worker_wall_s": time.perf_counter() - t_start,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg()[0],
    }
    write_json(out, record)


def read_json_file(path: Path) -> dict[str, Any]:
    """A JSON file's content ({} when absent)."""
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}
