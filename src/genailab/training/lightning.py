"""Lightning wrapper, trainer factory and resume logic.

Checkpoints are read with ``weights_only=True``: a Lightning checkpoint of ours holds tensors, numbers,
strings and containers only, so nothing in a ``last.ckpt`` left in a run directory can run code on resume.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import pickle
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genailab.config import Config, check_choice, check_fraction, check_positive
from genailab.data import make_dataloader, random_split
from genailab.errors import CheckpointError, InvalidInputError
from genailab.io import check_writable

__all__ = [
    "RecipeModule",
    "TrainConfig",
    "TrainResult",
    "fit_recipe",
    "load_checkpoint",
    "seed_everything",
    "split_indices",
    "train_loaders",
]

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "64-true")
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInputError(f"seed={seed!r} must be a non-negative integer.")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ["PL_GLOBAL_SEED"] = str(seed)


@dataclass(frozen=True)
class TrainConfig(Config):
    """Training settings shared by every recipe.

    Parameters
    ----------
    max_epochs
        Upper bound on epochs (early stopping may end sooner).
    batch_size
        Cells per mini-batch.
    lr, weight_decay
        AdamW learning rate and weight decay.
    val_fraction
        Fraction of cells held out for validation (0 disables validation and early stopping).
    early_stopping_patience
        Epochs without improvement of ``val/loss`` before stopping (0 disables early stopping).
    min_delta
        Minimum improvement that counts.
    precision
        Lightning precision: ``32-true``, ``bf16-mixed``, ``16-mixed`` (GPU) or ``64-true``.
    accelerator, devices, strategy, num_nodes
        Passed to ``lightning.Trainer`` (``strategy="ddp"`` with ``devices=N`` for several GPUs).
    num_workers
        DataLoader worker processes (0 reads in the main process; fastest for in-memory data).
    checkpoint_every_n_steps
        Also checkpoint every N optimiser steps (0 = only at epoch ends).
    gradient_clip_val
        Clip the gradient norm to this value (0 = no clipping).
    progress_bar
        Show Lightning's progress bar.
    log_every_n_steps
        How often training metrics are written to ``logs/metrics.csv``.
    """

    max_epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-6
    val_fraction: float = 0.1
    early_stopping_patience: int = 10
    min_delta: float = 0.0
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    num_workers: int = 0
    checkpoint_every_n_steps: int = 0
    gradient_clip_val: float = 0.0
    progress_bar: bool = True
    log_every_n_steps: int = 10

    def __post_init__(self) -> None:
        check_positive("max_epochs", self.max_epochs, integer=True)
        check_positive("batch_size", self.batch_size, integer=True)
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, strict=False)
        check_fraction("val_fraction", self.val_fraction)
        check_positive("early_stopping_patience", self.early_stopping_patience, strict=False, integer=True)
        check_positive("min_delta", self.min_delta, strict=False)
        check_choice("precision", self.precision, PRECISIONS)
        check_positive("num_nodes", self.num_nodes, integer=True)
        check_positive("num_workers", self.num_workers, strict=False, integer=True)
        check_positive("checkpoint_every_n_steps", self.checkpoint_every_n_steps, strict=False, integer=True)
        check_positive("gradient_clip_val", self.gradient_clip_val, strict=False)
        check_positive("log_every_n_steps", self.log_every_n_steps, integer=True)


@dataclass
class TrainResult:
    """Summary of a :func:`fit_recipe` run."""

    epochs: int
    steps: int
    best_val_loss: float | None
    final_train_loss: float | None
    train_cells_per_s: float
    wall_s: float
    resumed_from: str | None = None
    stopped_early: bool = False
    out_dir: str | None = None
    split: Any = None
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (without the split)."""
        return {
            "epochs": self.epochs,
            "steps": self.steps,
            "best_val_loss": self.best_val_loss,
            "final_train_loss": self.final_train_loss,
            "train_cells_per_s": self.train_cells_per_s,
            "wall_s": self.wall_s,
            "resumed_from": self.resumed_from,
            "stopped_early": self.stopped_early,
        }


def RecipeModule(  # noqa: N802 - returns the lazily imported class's instance
    recipe: nn.Module, config: TrainConfig, train_loader: Any = None, val_loader: Any = None
) -> Any:
    """Wrap ``recipe`` (a module with ``training_step(batch, epoch=...) -> LossOutput``) for Lightning.

    Lightning is imported lazily (it costs ~6 s), so importing genailab stays fast; the class itself is
    :class:`genailab.training.module.LightningRecipe`, whose module imports Lightning at its top and is
    therefore loaded here, on first use, rather than with this module.
    """
    lightning_recipe = importlib.import_module("genailab.training.module").LightningRecipe
    return lightning_recipe(recipe, config, train_loader, val_loader)


def _quiet_lightning() -> None:
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning.fabric.utilities.seed",
        "lightning.pytorch.callbacks.model_summary",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*_check_is_max_epochs.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*isinstance.*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # frozen parts stay in eval


def fit_recipe(
    recipe: nn.Module,
    train_loader: Any,
    val_loader: Any | None,
    config: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    seed: int = 0,
    resume: bool = True,
) -> TrainResult:
    """Train ``recipe`` with Lightning.

    Parameters
    ----------
    recipe
        A module with ``training_step(batch, epoch=...) -> LossOutput``.
    train_loader, val_loader
        Data loaders of batch dicts (``val_loader=None`` disables validation and early stopping).
    config
        Training settings.
    out_dir
        Run directory: ``checkpoints/`` (``last.ckpt`` + best) and ``logs/version_K/metrics.csv``
        (one folder per training segment, so resuming keeps earlier metrics) go here.
        ``None`` trains without checkpoints or logs.
    seed
        Seeds every source of randomness before training.
    resume
        Resume from ``out_dir/checkpoints/last.ckpt`` when it exists (a killed run continues
        where its last checkpoint left it).

    Returns
    -------
    :class:`TrainResult`.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    _quiet_lightning()
    seed_everything(seed)
    module = RecipeModule(recipe, config, train_loader, val_loader)
    callbacks: list[Any] = []
    logger: Any = False
    ckpt_path = None
    ckpt_dir = None
    if out_dir is not None:
        out = check_writable(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        ckpt_dir = out / CHECKPOINT_DIR
        if val_loader is not None:  # the best epoch by validation loss
            callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", save_top_k=1))
        # The latest state, every epoch (and every n steps): what a rerun resumes from. A separate callback,
        # since Lightning's save_last only writes when the monitored checkpoint improved in the same step.
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename=LAST_CHECKPOINT.removesuffix(".ckpt"),
                monitor=None,
                save_top_k=1,
                enable_version_counter=False,
                every_n_train_steps=config.checkpoint_every_n_steps or None,
            )
        )
        from lightning.pytorch.loggers import CSVLogger

        # One folder per (resumed) segment: logs/version_0/metrics.csv, version_1/... so a resumed run
        # never overwrites the metrics of the segment before it.
        logger = CSVLogger(save_dir=str(out), name="logs")
        last = ckpt_dir / LAST_CHECKPOINT
        if resume and last.is_file():
            load_checkpoint(last)  # refuse a truncated or unsafe file with a message, before Lightning reads it
            ckpt_path = str(last)
    if val_loader is not None and config.early_stopping_patience > 0:
        callbacks.append(
            EarlyStopping(monitor="val/loss", patience=config.early_stopping_patience, min_delta=config.min_delta)
        )
    trainer = L.Trainer(
        max_epochs=config.max_epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        precision=config.precision,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=out_dir is not None,
        enable_progress_bar=config.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=config.log_every_n_steps,
        gradient_clip_val=config.gradient_clip_val or None,
        num_sanity_val_steps=0,
        limit_val_batches=None if val_loader is not None else 0,
        use_distributed_sampler=False,
        default_root_dir=str(out_dir) if out_dir is not None else None,
    )
    t0 = time.perf_counter()
    trainer.fit(module, ckpt_path=ckpt_path, **_weights_only(trainer))
    wall = time.perf_counter() - t0
    recipe.eval()
    best = None
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.best_model_score is not None:
            best = float(cb.best_model_score)
    if best is None and "val/loss" in trainer.callback_metrics:
        best = float(trainer.callback_metrics["val/loss"])
    train_loss = trainer.callback_metrics.get("train/loss_epoch")
    stopped = any(isinstance(cb, EarlyStopping) and cb.stopped_epoch > 0 for cb in callbacks)
    epochs, steps = trainer.current_epoch, trainer.global_step
    if steps == 0 and ckpt_dir is not None and (ckpt_dir / LAST_CHECKPOINT).is_file():
        # spawn-based strategies train in child processes; their progress is in the checkpoint
        epochs, steps = _checkpoint_progress(ckpt_dir / LAST_CHECKPOINT)
    return TrainResult(
        epochs=epochs,
        steps=steps,
        best_val_loss=best,
        final_train_loss=float(train_loss) if train_loss is not None else None,
        train_cells_per_s=module.cells_seen / module.train_time if module.train_time > 0 else 0.0,
        wall_s=wall,
        resumed_from=ckpt_path,
        stopped_early=stopped,
        out_dir=str(out_dir) if out_dir is not None else None,
        history=module.history,
    )


def _weights_only(trainer: Any) -> dict[str, bool]:
    """``{"weights_only": True}`` where ``Trainer.fit`` takes it (Lightning >= 2.5), else ``{}`` (torch's default)."""
    return {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a Lightning checkpoint safely (``weights_only=True``: tensors, numbers, strings and containers only).

    Raises
    ------
    CheckpointError
        The file is truncated or corrupt, or holds objects a checkpoint never needs (a pickle that would run
        code); the message names the file to delete.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read safely: it is truncated, corrupt or holds objects a "
            f"checkpoint never needs ({first}). Delete it to restart this training from the beginning, or "
            "choose another --out."
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a Lightning checkpoint.")
    return state


def _checkpoint_progress(path: Path) -> tuple[int, int]:
    """``(epoch, global_step)`` recorded in a Lightning checkpoint this run wrote."""
    state = load_checkpoint(path)
    return int(state.get("epoch", 0)) + 1, int(state.get("global_step", 0))


def split_indices(n_obs: int, config: TrainConfig, split: Any = None, *, seed: int = 0) -> tuple[Any, Any, Any]:
    """``(split, train_idx, val_idx)``: ``split`` as given, else a random train/validation split.

    With ``split=None`` and ``config.val_fraction > 0``, ``val_fraction`` of the cells validate (and
    drive early stopping); with ``val_fraction == 0`` every cell trains. A given split's ``val`` cells
    validate whatever ``val_fraction`` says; its ``test`` cells are never used.
    """
    if split is None and config.val_fraction > 0:
        split = random_split(n_obs, val_fraction=config.val_fraction, test_fraction=0.0, seed=seed)
    if split is None:
        return None, np.arange(n_obs), np.array([], dtype=np.int64)
    return split, split.train, split.val


def train_loaders(train_ds: Any, val_ds: Any | None, config: TrainConfig, *, seed: int = 0) -> tuple[Any, Any]:
    """Shuffled training loader (last partial batch dropped when there is more than one) and validation loader."""
    train_loader = make_dataloader(
        train_ds, batch_size=config.batch_size, shuffle=True, seed=seed, drop_last=len(train_ds) > config.batch_size
    )
    val_loader = None
    if val_ds is not None and len(val_ds):
        val_loader = make_dataloader(val_ds, batch_size=max(config.batch_size, 512), shuffle=False)
    return train_loader, val_loader
