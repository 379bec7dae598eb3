"""The Lightning module that trains any recipe (imported lazily: Lightning costs ~6 s to import)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from torch import nn

from genailab.errors import InvalidInputError

__all__ = ["HISTORY_KEY", "LightningRecipe"]

#: Where a checkpoint keeps the per-epoch history of the run (older checkpoints lack it: their history restarts).
HISTORY_KEY = "genailab_history"


def _shard(loader: Any, trainer: Any) -> Any:
    """Give our batch sampler the trainer's world size and rank (DDP); a no-op on one device."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "num_replicas") and hasattr(sampler, "rank"):
        sampler.num_replicas, sampler.rank = int(trainer.world_size), int(trainer.global_rank)
    return loader


class LightningRecipe(L.LightningModule):
    """Delegates the maths to ``recipe.training_step(batch, epoch=...) -> LossOutput``.

    Parameters
    ----------
    recipe
        The model; a plain ``nn.Module`` that stays testable without Lightning.
    config
        A :class:`~genailab.training.TrainConfig`.
    train_loader, val_loader
        Data loaders, handed to Lightning through the dataloader hooks (which run inside each DDP
        process, so our batch samplers shard by the true rank).
    """

    def __init__(self, recipe: nn.Module, config: Any, train_loader: Any = None, val_loader: Any = None) -> None:
        super().__init__()
        self.recipe = recipe
        self.train_config = config
        self._train_loader, self._val_loader = train_loader, val_loader
        self.cells_seen = 0
        self.train_time = 0.0
        self._epoch_start = 0.0
        self.history: list[dict[str, float]] = []

    def _progress(self, batch_idx: int) -> float:
        n = self.trainer.num_training_batches
        n = n if isinstance(n, int) and n > 0 else 1
        return self.current_epoch + batch_idx / n

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.recipe.training_step(batch, epoch=self._progress(batch_idx))
        bs = out.n_obs or None
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=bs, on_step=True, on_epoch=True)
        for k, v in out.terms.items():
            self.log(f"train/{k}", v, batch_size=bs, on_step=False, on_epoch=True)
        for k, v in out.metrics.items():
            self.log(f"train/{k}", float(v), batch_size=bs, on_step=False, on_epoch=True)
        self.cells_seen += out.n_obs
        return out.loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        hook = getattr(self.recipe, "on_train_batch_end", None)
        if callable(hook):
            hook()  # e.g. EMA updates; the recipe owns that state so it is checkpointed with it

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.recipe.training_step(batch, epoch=None)
        bs = out.n_obs or None
        self.log("val/loss", out.loss, prog_bar=True, batch_size=bs, on_epoch=True, sync_dist=True)
        for k, v in out.terms.items():
            self.log(f"val/{k}", v, batch_size=bs, on_epoch=True, sync_dist=True)

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        self.train_time += time.perf_counter() - self._epoch_start
        row = {"epoch": float(self.current_epoch)}
        row.update({k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1})
        self.history.append(row)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the per-epoch history travels with the checkpoint, so a resumed run reports every epoch, not its last segment
        checkpoint[HISTORY_KEY] = [dict(row) for row in self.history]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = [dict(row) for row in checkpoint.get(HISTORY_KEY, [])]

    def train_dataloader(self) -> Any:
        return _shard(self._train_loader, self.trainer)

    def val_dataloader(self) -> Any:
        return _shard(self._val_loader, self.trainer) if self._val_loader is not None else []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.recipe.parameters() if p.requires_grad]
        if not params:
            raise InvalidInputError("the recipe has no trainable parameters; check the tuning/freeze settings.")
        # The fused kernel (one pass over all parameters) is faster on CPU and GPU; fall back where a
        # device or dtype lacks it.
        fused = all(p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) for p in params)
        try:
            return torch.optim.AdamW(
                params, lr=self.train_config.lr, weight_decay=self.train_config.weight_decay, fused=fused
            )
        except RuntimeError:
            return torch.optim.AdamW(params, lr=self.train_config.lr, weight_decay=self.train_config.weight_decay)
