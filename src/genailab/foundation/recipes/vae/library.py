"""The library-size model of generated cells (``LatentTokenVAEConfig.library_model``).

A generated cell's log library is drawn from a Gaussian: its mean is a per-batch intercept plus, with
``library_model="latent"``, a ridge regression on the cell's standardised latent (clipped to the range
seen on the training cells), its SD the per-batch residual SD. Fitted after training on the training
cells by :func:`fit_library_model`, stored as buffers of the VAE (``log_library_mean``,
``log_library_std``, ``library_weight``, ``library_offset_range``); drawn by
:meth:`~genailab.foundation.recipes.vae.module.LatentTokenVAEModule.sample_library`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from genailab.constants import BATCH_KEYS

if TYPE_CHECKING:
    from genailab.foundation.recipes.vae.module import LatentTokenVAEModule

__all__ = ["fit_library_model", "library_features", "library_offset"]

#: Largest flattened latent the regression reads as is; larger latents use the token mean.
MAX_LIBRARY_FEATURES = 1024


@torch.no_grad()
def fit_library_model(module: LatentTokenVAEModule, batches: Iterable[dict[str, torch.Tensor]]) -> None:
    """Fit the library model on training ``batches`` (re-iterable: one pass per stage).

    Needs the latent standardisation fitted first. Sets ``library_weight`` (``library_model="latent"``),
    then the per-batch intercepts and residual SDs and the offset range.
    """
    if hasattr(module, "library_weight"):
        module.library_weight.copy_(_fit_library_weight(module, batches))
    _fit_library_intercepts(module, batches)


def _library_pass(
    module: LatentTokenVAEModule, batches: Iterable[dict[str, torch.Tensor]]
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(features (B, p) float64, log library (B,) float64, batch codes (B,))`` per mini-batch.

    Without a latent regression (``library_model="batch"``) nothing is encoded: the features are ``(B, 0)``.
    """
    latent = hasattr(module, "library_weight")
    for batch in batches:
        log_lib = batch[BATCH_KEYS.LIBRARY].clamp(min=1.0).log().view(-1).double()
        bi = module.batch_index(batch)
        idx = torch.zeros_like(log_lib, dtype=torch.long) if bi is None else bi.clamp(min=0)
        if latent:
            mu = module.encode(batch[BATCH_KEYS.COUNTS], batch[BATCH_KEYS.LIBRARY])[0]
            feats = library_features(module.standardize(mu)).double()
        else:
            feats = torch.zeros(log_lib.shape[0], 0, dtype=torch.float64)
        yield feats, log_lib, idx


def _fit_library_weight(
    module: LatentTokenVAEModule, batches: Iterable[dict[str, torch.Tensor]], ridge: float = 1.0
) -> torch.Tensor:
    """Ridge weights of log library on latent features, with one free intercept per batch.

    Solves the normal equations of ``[features, one-hot(batch)]`` (the intercepts unpenalised,
    the weights with ``ridge``; features are standardised latents, so one scale fits all).
    """
    n_lib = module.log_library_mean.shape[0]
    p = module.library_weight.shape[0]
    gram = torch.zeros(p + n_lib, p + n_lib, dtype=torch.float64)
    rhs = torch.zeros(p + n_lib, dtype=torch.float64)
    for feats, log_lib, idx in _library_pass(module, batches):
        x = torch.cat([feats, nn.functional.one_hot(idx, n_lib).double()], dim=1)
        gram += x.T @ x
        rhs += x.T @ log_lib
    penalty = torch.cat([torch.full((p,), ridge), torch.zeros(n_lib)]).double()
    seen = gram.diagonal()[p:] > 0  # batches without training cells keep no intercept column
    keep = torch.cat([torch.ones(p, dtype=torch.bool), seen])
    theta = torch.linalg.solve(gram[keep][:, keep] + torch.diag(penalty[keep]), rhs[keep])
    return theta[:p].float()


def _fit_library_intercepts(module: LatentTokenVAEModule, batches: Iterable[dict[str, torch.Tensor]]) -> None:
    """Per-batch mean and SD of ``log library - library_weight . features`` (unseen batches: pooled)."""
    n_lib = module.log_library_mean.shape[0]
    l1, l2 = torch.zeros(n_lib, dtype=torch.float64), torch.zeros(n_lib, dtype=torch.float64)
    ln = torch.zeros(n_lib, dtype=torch.float64)
    lo, hi = math.inf, -math.inf
    for feats, log_lib, idx in _library_pass(module, batches):
        offset = library_offset(module, feats, clip=False)
        if offset.numel():
            lo, hi = min(lo, float(offset.min())), max(hi, float(offset.max()))
        resid = log_lib - offset
        l1.index_add_(0, idx, resid)
        l2.index_add_(0, idx, resid.pow(2))
        ln.index_add_(0, idx, torch.ones_like(resid))
    seen = ln > 0
    lmean = torch.where(seen, l1 / ln.clamp(min=1), (l1.sum() / ln.sum()).expand_as(l1))
    lvar = torch.where(seen, l2 / ln.clamp(min=1) - lmean.pow(2), torch.ones_like(l1))
    module.log_library_mean.copy_(lmean.float())
    module.log_library_std.copy_(lvar.clamp(min=1e-6).sqrt().float())
    if hasattr(module, "library_offset_range"):
        module.library_offset_range.copy_(torch.tensor([lo, hi]))


def library_features(z_std: torch.Tensor) -> torch.Tensor:
    """``(n, m, d)`` standardised latents -> ``(n, p)`` library-model features.

    The flattened latent when ``m * d <= 1024``; the token mean ``(n, d)`` for larger latents (keeps
    the ``p x p`` normal equations small).
    """
    flat = z_std.reshape(z_std.shape[0], -1)
    return flat if flat.shape[1] <= MAX_LIBRARY_FEATURES else z_std.mean(1)


def library_offset(module: LatentTokenVAEModule, feats: torch.Tensor, *, clip: bool = True) -> torch.Tensor:
    """``(n,)`` latent part of the log-library mean (zero for ``library_model="batch"``).

    ``clip`` bounds it to the range seen on the training cells (``library_offset_range``).
    """
    if not hasattr(module, "library_weight"):
        return torch.zeros(feats.shape[0], dtype=feats.dtype, device=feats.device)
    offset = feats @ module.library_weight.to(feats.dtype)
    if clip:
        lo, hi = module.library_offset_range.to(feats.dtype)
        offset = offset.clamp(min=lo, max=hi)
    return offset
