"""Training batches of the perturbation recipe: (condition, context) groups and their exact OT pairing.

Control and perturbed cells are never paired in the data, so a batch holds, for a few
(condition, context) groups, control cells and observed perturbed cells of the same context;
:func:`ot_pairing` pairs each prediction with one observed cell of its group by exact assignment on
squared latent distance (minibatch OT, Tong et al. 2024, arXiv:2302.00482).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from genailab.constants import BATCH_KEYS
from genailab.errors import InvalidInputError
from genailab.foundation.recipes.perturb.base_shift import BaseShift
from genailab.foundation.recipes.perturb.config import PerturbDeltaConfig
from genailab.foundation.recipes.perturb.encoding import Cells
from genailab.foundation.recipes.vae.model import LatentTokenVAE

__all__ = ["GROUP_BATCH_KEYS", "EpochSampler", "GroupBatchKeys", "GroupBatches", "group_loader", "ot_pairing"]


@dataclass(frozen=True)
class GroupBatchKeys:
    """Keys of a training batch of :class:`GroupBatches`."""

    z_control: str = "z_control"  # (B, m, d) standardised latents of control cells
    z_target: str = "z_target"  # (B, m, d) standardised latents of observed perturbed cells
    counts: str = "counts"  # (B, G) counts of the observed perturbed cells
    library: str = "library"  # (B,) their library sizes
    vae_batch: str = "vae_batch"  # (B,) their VAE batch index (absent without batch keys)
    ids: str = "ids"  # (B, S) agent ids
    dose: str = "dose"  # (B, S) doses
    context: str = "context"  # (B, K) context codes
    group: str = "group"  # (B,) group number within the batch
    base: str = "base"  # (B, m, d) per-agent base shift of each row's context (absent without a base)


GROUP_BATCH_KEYS = GroupBatchKeys()


def ot_pairing(pred: torch.Tensor, target: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Index into ``target`` pairing each prediction with one observed cell of its group (exact OT).

    Parameters
    ----------
    pred, target
        ``(B, ...)`` predicted and observed latents.
    group
        ``(B,)`` group of each row; rows pair only within their group.

    Returns
    -------
    ``(B,)`` long tensor: row ``i`` of ``pred`` pairs with row ``perm[i]`` of ``target``.
    """
    from scipy.optimize import linear_sum_assignment

    perm = torch.empty(pred.shape[0], dtype=torch.long)
    p, t = pred.flatten(1).detach().cpu(), target.flatten(1).detach().cpu()
    g = group.cpu()
    for gid in torch.unique(g):
        rows = torch.nonzero(g == gid).view(-1)
        cost = torch.cdist(p[rows].double(), t[rows].double()).pow(2).numpy()
        r, c = linear_sum_assignment(cost)
        perm[rows[torch.as_tensor(r)]] = rows[torch.as_tensor(c)]
    return perm.to(pred.device)


class GroupBatches(torch.utils.data.Dataset):
    """Batches of (condition, context) groups: control cells of the context + observed perturbed cells.

    Parameters
    ----------
    cells
        Encoded cells (:func:`~genailab.foundation.recipes.perturb.encoding.cell_data`).
    rows
        Rows of the perturbed cells to batch.
    controls
        Per context label, the rows of its control cells.
    vae
        The VAE whose batch index the batches carry.
    config
        Recipe settings (``groups_per_batch``, ``cells_per_group``).
    seed
        Seeds the draws (with the epoch when shuffling).
    shuffle
        Draw random groups (training) or walk through every group in order (validation).
    base
        The fitted base shift (:class:`~genailab.foundation.recipes.perturb.base_shift.BaseShift`):
        each batch then carries every row's ``(m, d)`` per-agent base (``None``: no base).
    """

    def __init__(
        self,
        cells: Cells,
        rows: np.ndarray,
        controls: Mapping[str, np.ndarray],
        vae: LatentTokenVAE,
        config: PerturbDeltaConfig,
        *,
        seed: int,
        shuffle: bool,
        base: BaseShift | None = None,
    ) -> None:
        self.cells, self.vae, self.config, self.seed, self.shuffle = cells, vae, config, seed, shuffle
        self.base = base
        self.epoch = 0
        keys = np.char.add(np.char.add(cells.labels[rows].astype(str), "\x00"), cells.contexts[rows].astype(str))
        uniq, inv = np.unique(keys, return_inverse=True)
        self.groups = [rows[inv == i] for i in range(len(uniq))]
        self.controls = controls
        for g in self.groups:
            ctx = cells.contexts[g[0]]
            if ctx not in controls or len(controls[ctx]) == 0:
                raise InvalidInputError(
                    f"no control cells in context {ctx!r} (condition {cells.labels[g[0]]!r}); every context with "
                    "perturbed cells needs control cells to predict from."
                )
        n_cells = sum(len(g) for g in self.groups)
        per_batch = config.groups_per_batch * config.cells_per_group
        self.n_batches = (
            max(1, math.ceil(n_cells / per_batch)) if shuffle else math.ceil(len(self.groups) / config.groups_per_batch)
        )

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the next draws."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_batches

    @staticmethod
    def _pick(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(pool, size=n, replace=len(pool) < n)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        cfg, cells, k = self.config, self.cells, GROUP_BATCH_KEYS
        rng = np.random.default_rng([self.seed, self.epoch if self.shuffle else 0, int(i)])
        if self.shuffle:
            n_groups = min(cfg.groups_per_batch, len(self.groups))
            chosen = rng.choice(len(self.groups), size=n_groups, replace=False)
        else:
            chosen = np.arange(i * cfg.groups_per_batch, min((i + 1) * cfg.groups_per_batch, len(self.groups)))
        n = cfg.cells_per_group
        pert, ctrl, group = [], [], []
        for j, gi in enumerate(chosen.tolist()):
            g = self.groups[gi]
            pert.append(self._pick(g, n, rng))
            ctrl.append(self._pick(self.controls[cells.contexts[g[0]]], n, rng))
            group.append(np.full(n, j))
        pert_rows, ctrl_rows = np.concatenate(pert), np.concatenate(ctrl)
        read = cells.counts_ds[pert_rows.tolist()]
        batch = {
            k.z_control: cells.z[ctrl_rows],
            k.z_target: cells.z[pert_rows],
            k.counts: read[BATCH_KEYS.COUNTS],
            k.library: read[BATCH_KEYS.LIBRARY],
            k.ids: cells.ids[pert_rows],
            k.dose: cells.dose[pert_rows],
            k.context: cells.context_codes[pert_rows],
            k.group: torch.as_tensor(np.concatenate(group)),
        }
        vb = self.vae.batch_index(read)
        if vb is not None:
            batch[k.vae_batch] = vb
        if self.base is not None:  # one context per group: its base, repeated for the group's rows
            bases = [self.base.tensor(str(cells.contexts[self.groups[gi][0]])) for gi in chosen.tolist()]
            batch[k.base] = torch.stack(bases).repeat_interleave(n, dim=0)  # (B, m, d)
        return batch


class EpochSampler(torch.utils.data.Sampler):
    """Yields batch numbers and forwards Lightning's ``set_epoch`` to the batch dataset."""

    def __init__(self, ds: GroupBatches) -> None:
        self.ds = ds

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the batch dataset."""
        self.ds.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.ds)))

    def __len__(self) -> int:
        return len(self.ds)


def group_loader(ds: GroupBatches) -> torch.utils.data.DataLoader:
    """A loader of ``ds``'s ready-made batches (no collation, no workers)."""
    return torch.utils.data.DataLoader(ds, batch_size=None, sampler=EpochSampler(ds), num_workers=0)
