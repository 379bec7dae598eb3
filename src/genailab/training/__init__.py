"""Training: a thin Lightning layer over recipes.

Recipes are plain ``nn.Module``s with ``training_step(batch, epoch=...) -> LossOutput``;
:func:`fit_recipe` wraps one in :class:`RecipeModule` and gives it Lightning's progress bar,
validation, early stopping, checkpoints (resume after a kill), CSV metrics, mixed precision and
``devices``/``strategy`` pass-through for DDP.
"""

from genailab.training.lightning import (
    RecipeModule,
    TrainConfig,
    TrainResult,
    fit_recipe,
    seed_everything,
    split_indices,
    train_loaders,
)

__all__ = [
    "RecipeModule",
    "TrainConfig",
    "TrainResult",
    "fit_recipe",
    "seed_everything",
    "split_indices",
    "train_loaders",
]
