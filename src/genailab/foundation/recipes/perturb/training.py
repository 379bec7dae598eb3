"""Training the perturbation ensemble: each member on batches of (condition, context) groups, then calibration.

Each training step draws, for a few (condition, context) groups, control cells and perturbed cells
of the same context, predicts every control cell's perturbed state, pairs predictions with observed
cells by exact OT within the group (:func:`~genailab.foundation.recipes.perturb.batches.ot_pairing`)
and minimises the paired latent error plus the decoder NLL of the observed counts. Members differ in
seed and batch order (a deep ensemble, Lakshminarayanan et al. 2017).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from genailab.errors import InvalidInputError
from genailab.foundation.objectives import LossOutput
from genailab.foundation.recipes.perturb.anchors import fit_observed_singles
from genailab.foundation.recipes.perturb.base_shift import fit_base_shift
from genailab.foundation.recipes.perturb.batches import GROUP_BATCH_KEYS, GroupBatches, group_loader, ot_pairing
from genailab.foundation.recipes.perturb.calibration import calibrate
from genailab.foundation.recipes.perturb.encoding import controls_by_context
from genailab.foundation.recipes.perturb.net import PerturbDeltaNet
from genailab.foundation.recipes.vae.model import LatentTokenVAE
from genailab.likelihoods.heads import masked_nll
from genailab.training import fit_recipe

if TYPE_CHECKING:
    from anndata import AnnData

    from genailab.foundation.recipes.perturb.model import PerturbDeltaModel
    from genailab.training import TrainConfig

__all__ = ["MemberTrainer", "fit_ensemble"]


class MemberTrainer(nn.Module):
    """Training wrapper of one member: the net plus the (frozen, or decoder-tuned) VAE.

    Parameters
    ----------
    net
        The member.
    vae
        The VAE that decodes its predictions (a decoder-tuned copy under ``finetune='decoder'``).
    """

    def __init__(self, net: PerturbDeltaNet, vae: LatentTokenVAE) -> None:
        super().__init__()
        self.net = net
        self.vae = vae

    def train(self, mode: bool = True) -> MemberTrainer:
        """Train the member; the VAE stays in eval mode (no dropout in the frozen decoder)."""
        super().train(mode)
        self.vae.eval()
        return self

    def training_step(self, batch: dict[str, torch.Tensor], *, epoch: float | None = None) -> LossOutput:
        """OT-paired latent error + per-gene NLL of the observed perturbed counts.

        ``batch`` holds :data:`~genailab.foundation.recipes.perturb.batches.GROUP_BATCH_KEYS` tensors of
        ``B`` rows: latents ``(B, m, d)``, counts ``(B, G)``, ids and doses ``(B, S)``, context ``(B, K)``.
        """
        k = GROUP_BATCH_KEYS
        z_pred = self.net(
            batch[k.z_control], batch[k.ids], batch[k.dose], batch.get(k.context), base=batch.get(k.base)
        )  # (B, m, d)
        perm = ot_pairing(z_pred, batch[k.z_target], batch[k.group])
        target = batch[k.z_target][perm]
        latent = (z_pred - target).pow(2).mean()
        vae_batch = batch.get(k.vae_batch)
        dist = self.vae.decode(
            self.vae.unstandardize(z_pred), batch[k.library][perm], None if vae_batch is None else vae_batch[perm]
        )
        counts = batch[k.counts][perm]  # (B, G)
        nll = masked_nll(dist, counts).mean() / counts.shape[1]
        loss = latent + self.net.config.nll_weight * nll
        return LossOutput(
            loss=loss, terms={"latent": latent.detach(), "nll_per_gene": nll.detach()}, n_obs=z_pred.shape[0]
        )


def fit_ensemble(
    model: PerturbDeltaModel,
    adata: AnnData,
    train_rows: np.ndarray,
    val_rows: np.ndarray | None,
    config: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    seed: int = 0,
) -> list[Any]:
    """Fit the base shift, train every member of ``model``, then calibrate it (see :meth:`PerturbDeltaModel.fit`).

    With ``config.base_shift='context_mean'`` (and a formulation that uses it) ``model.base_shift`` is
    fitted on the training rows first (contexts of an earlier fit that ``train_rows`` lack are kept), and
    with ``config.composition='anchored'`` so are the observed single-agent responses
    (``model.observed_singles``; not for models with a dose key).
    """
    train_rows = np.asarray(train_rows, dtype=np.int64)
    val_rows = np.asarray(val_rows if val_rows is not None else [], dtype=np.int64)
    control = model.vocab.control
    cells = model.cell_data(adata, np.union1d(train_rows, val_rows))
    controls = controls_by_context(cells, train_rows, control)
    if not controls:
        raise InvalidInputError(f"the training rows hold no control cells ({control!r}).")
    pert_train = train_rows[cells.labels[train_rows] != control]
    pert_val = val_rows[cells.labels[val_rows] != control]
    if len(pert_train) == 0:
        raise InvalidInputError("the training rows hold no perturbed cells.")
    base = None
    if model.config.base_shift == "context_mean" and getattr(model.nets[0].formulation, "uses_base", False):
        base = fit_base_shift(cells, train_rows, model.vocab, previous=model.base_shift)
    model.base_shift = base
    anchored = model.config.composition == "anchored" and model.dose_key is None
    if anchored and getattr(model.nets[0].formulation, "uses_base", False):
        model.observed_singles = fit_observed_singles(cells, train_rows, model.vocab, previous=model.observed_singles)
    results = []
    for k, net in enumerate(model.nets):
        member_seed = seed * 1000 + k
        vae = model.vae
        if model.config.finetune == "decoder":
            vae = copy.deepcopy(model.vae)
            vae.decoder.requires_grad_(True)
            model.decoders[k] = vae
        trainer = MemberTrainer(net, vae)
        train_ds = GroupBatches(
            cells, pert_train, controls, vae, model.config, seed=member_seed, shuffle=True, base=base
        )
        val_loader = None
        if len(pert_val):
            val_ds = GroupBatches(cells, pert_val, controls, vae, model.config, seed=seed, shuffle=False, base=base)
            val_loader = group_loader(val_ds)
        member_dir = None if out_dir is None else Path(out_dir) / f"member_{k}"
        results.append(
            fit_recipe(trainer, group_loader(train_ds), val_loader, config, out_dir=member_dir, seed=member_seed)
        )
        net.eval()
        if model.decoders[k] is not None:
            model.decoders[k].eval().requires_grad_(False)
    model.eval()
    calibrate(model, adata, cells, train_rows, val_rows, seed=seed)
    return results
