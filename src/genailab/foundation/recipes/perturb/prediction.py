"""Predicting a perturbation's response with the ensemble: queries, control selection, AnnData output.

Every prediction is *cell-level*: each member shifts each control cell's latent, its decoder turns
the result into counts, and the members' mean log-normalised shifts give the mean response and its
spread (:class:`ResponsePrediction`). :func:`response_anndata` writes one predicted perturbed cell
per control cell with the calibrated interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from genailab.constants import BATCH_KEYS
from genailab.data.spec import obs_labels
from genailab.errors import InvalidInputError, MissingKeyError
from genailab.foundation.recipes.perturb.calibration import calibrated_sigma, interval, ood_threshold
from genailab.foundation.recipes.perturb.encoding import Cells
from genailab.foundation.recipes.vae.model import LatentTokenVAE
from genailab.nn import log_normalize as log_normalize_tensor

if TYPE_CHECKING:
    from anndata import AnnData

    from genailab.foundation.recipes.perturb.model import PerturbDeltaModel

__all__ = [
    "ResponsePrediction",
    "member_decoders",
    "predict_response",
    "query",
    "response_anndata",
    "select_controls",
]


@dataclass
class ResponsePrediction:
    """Predicted response of one (perturbation, context) query.

    Attributes
    ----------
    mean
        ``(G,)`` predicted mean log-normalised expression (log1p of counts per 10k) of the perturbed
        population: the observed control mean plus the ensemble's mean predicted shift.
    sigma
        ``(G,)`` ensemble standard deviation of ``mean`` (raw; calibrate with the model's calibrator).
    members
        ``(K, G)`` each member's ``mean``.
    control_mean
        ``(G,)`` observed mean log-normalised expression of the control cells used.
    counts
        ``(n, G)`` sampled perturbed counts, one cell per control cell (ensemble mixture).
    expected
        ``(n, G)`` ensemble-mean expected counts of each predicted cell.
    ood_score
        Ensemble disagreement on the query's mean latent shift, relative to the median disagreement on
        the training (perturbation, context) groups: about 1 for what the model was trained on,
        larger the further the query is from it (an unseen agent known only by its priors, an unseen
        context with the null token).
    disagreement
        The raw disagreement (variance across members, averaged over latent coordinates).
    control_rows
        Rows of the controls AnnData behind ``counts`` and ``expected`` (row ``i`` is the prediction
        for control cell ``control_rows[i]``).
    context
        The query's context label (context values joined by ``|``; empty without context keys).
    novelty
        What is new about the query: unseen agents and whether the context is unseen.
    """

    mean: np.ndarray
    sigma: np.ndarray
    members: np.ndarray
    control_mean: np.ndarray
    counts: np.ndarray
    expected: np.ndarray
    ood_score: float
    novelty: dict[str, Any]
    disagreement: float = 0.0
    control_rows: np.ndarray | None = None
    context: str = ""


def member_decoders(model: PerturbDeltaModel) -> list[LatentTokenVAE]:
    """The VAE that decodes each member's latents (its own tuned copy under ``finetune='decoder'``)."""
    return [d if d is not None else model.vae for d in model.decoders]


@torch.no_grad()
def query(
    model: PerturbDeltaModel,
    adata: AnnData,
    control_rows: np.ndarray,
    condition: str,
    *,
    x_codes_row: int | None = None,
    cells: Cells | None = None,
    context_codes: np.ndarray | None = None,
    seed: int = 0,
    max_controls: int | None = 1000,
    dose: Any = None,
) -> tuple[ResponsePrediction, float]:
    """Predict ``condition`` from ``adata``'s control cells ``control_rows``; returns (prediction, disagreement).

    Parameters
    ----------
    model
        The ensemble.
    adata, control_rows
        The cells and the rows of the control cells to start from.
    condition
        Condition label, e.g. ``'SET+KLF1'``.
    x_codes_row
        Row of ``cells`` whose context codes the query takes (default: the first control row).
    cells
        Pre-encoded ``adata`` (default: encode the control rows now).
    context_codes
        ``(K,)`` context codes of the query (overrides ``x_codes_row``).
    seed
        Seeds the members' noise, the count sampling and the draw of ``max_controls`` controls.
    max_controls
        Use at most this many control cells (``None`` = all).
    dose
        Dose of the perturbation (default 1).
    """
    model.eval()
    rng = np.random.default_rng(seed)
    rows = np.asarray(control_rows, dtype=np.int64)
    if max_controls is not None and len(rows) > max_controls:
        rows = np.sort(rng.choice(rows, max_controls, replace=False))
    if cells is None:
        cells = model.cell_data(adata, rows)
    read = cells.counts_ds[rows.tolist()]
    counts, library = read[BATCH_KEYS.COUNTS], read[BATCH_KEYS.LIBRARY]  # (n, G), (n,)
    vae_batch = model.vae.batch_index(read)
    z_base = cells.z[torch.as_tensor(rows)]  # (n, m, d)
    n = len(rows)
    ids, dose = model.vocab.encode([condition] * n, None if dose is None else [dose] * n)
    if context_codes is None:
        context_codes = cells.context_codes[x_codes_row if x_codes_row is not None else rows[0]].numpy()
    ctx = torch.as_tensor(np.broadcast_to(context_codes, (n, len(model.config.context_keys))).copy())  # (n, K)
    reps = max(1, math.ceil(model.config.mc_cells / n))
    means, zs, expected, sampled = [], [], [], []
    for k, (net, dec) in enumerate(zip(model.nets, member_decoders(model), strict=True)):
        gen = torch.Generator().manual_seed(seed * 7919 + k)
        z = net(z_base, torch.as_tensor(ids), torch.as_tensor(dose), ctx, generator=gen)  # (n, m, d)
        zs.append(z)
        dist = dec.decode(dec.unstandardize(z), library, vae_batch)
        base = dec.decode(dec.unstandardize(z_base), library, vae_batch)
        with torch.random.fork_rng():
            torch.manual_seed(seed * 104729 + k)
            draws = dist.sample((reps,))  # (R, n, G)
            torch.manual_seed(seed * 104729 + k)
            base_draws = base.sample((reps,))
        shift = log_normalize_tensor(draws).mean((0, 1)) - log_normalize_tensor(base_draws).mean((0, 1))  # (G,)
        means.append(shift)
        expected.append(dist.mean)
        sampled.append(draws[0])
    control_mean = log_normalize_tensor(counts).mean(0)  # (G,)
    members = (control_mean.unsqueeze(0) + torch.stack(means)).numpy()  # (K, G)
    shifts = (torch.stack(zs) - z_base.unsqueeze(0)).mean(1)  # (K, m, d) mean latent shift per member
    disagreement = float(shifts.var(0).mean()) if len(zs) > 1 else 0.0
    ood = disagreement / max(model.ood_reference, 1e-12)
    pick = torch.as_tensor(np.arange(n) % len(zs))
    cell_counts = torch.stack(sampled)[pick, torch.arange(n)]  # (n, G) one member per cell (mixture)
    novelty = {
        "unseen_agents": list(model.vocab.unseen(condition)),
        "unseen_context": bool((ctx < 0).any()),
    }
    pred = ResponsePrediction(
        mean=members.mean(0),
        sigma=members.std(0, ddof=1) if len(zs) > 1 else np.zeros(members.shape[1]),
        members=members,
        control_mean=control_mean.numpy(),
        counts=cell_counts.numpy(),
        expected=torch.stack(expected).mean(0).numpy(),
        ood_score=ood,
        disagreement=disagreement,
        control_rows=rows,
        novelty=novelty,
    )
    return pred, disagreement


def select_controls(
    model: PerturbDeltaModel, controls: AnnData, context: Mapping[str, str] | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """The control cells of ``controls`` in the query ``context``: (rows, ``(K,)`` context codes, context label)."""
    keys = model.config.context_keys
    context = dict(context or {})
    unknown = [k for k in context if k not in keys]
    if unknown:
        raise InvalidInputError(f"context keys {unknown} are not context keys of this model ({list(keys)}).")
    missing = [k for k in keys if k not in controls.obs.columns and k not in context]
    if missing:
        raise MissingKeyError(
            f"controls.obs lacks the context column(s) {missing}; add them or pass the context explicitly."
        )
    rows = np.arange(controls.n_obs)
    if model.perturbation_key in controls.obs.columns:
        labels = obs_labels(controls, model.perturbation_key, "perturbation_key")
        rows = rows[labels == model.vocab.control]
    given = {k: v for k, v in context.items() if k in controls.obs.columns}
    for k, v in given.items():
        rows = rows[obs_labels(controls, k, "context")[rows] == str(v)]
    if len(rows) == 0:
        raise InvalidInputError(
            f"no control cells ({model.perturbation_key}={model.vocab.control!r}) in context {context or '(any)'}; "
            "predictions start from control cells of the query context."
        )
    fill = {k: v for k, v in context.items() if k not in controls.obs.columns}
    codes = model.context_codes(controls[rows], fill)
    labels = model.context_labels(controls[rows], fill)
    if len(set(labels.tolist())) > 1:
        raise InvalidInputError(
            f"the control cells span several contexts ({sorted(set(labels.tolist()))[:5]}); pass --context."
        )
    return rows, codes[0], str(labels[0])


def predict_response(
    model: PerturbDeltaModel,
    controls: AnnData,
    perturbation: str,
    *,
    context: Mapping[str, str] | None = None,
    allow_ood: bool = False,
    seed: int = 0,
    max_controls: int | None = 1000,
    dose: Any = None,
) -> ResponsePrediction:
    """Predict the response to ``perturbation`` of the control cells in ``controls``.

    Parameters
    ----------
    model
        The ensemble (``model.predict_response(controls, ...)`` passes itself).
    controls
        Control cells (counts). With context keys, cells outside ``context`` are ignored; a
        context column missing from ``controls.obs`` takes the value given in ``context``.
    perturbation
        Condition label, e.g. ``'KLF1'`` or ``'SET+KLF1'``.
    context
        Context values, e.g. ``{'cell_type': 'k562'}`` (default: the controls' own, which must be
        a single context).
    allow_ood
        Allow a context never seen in training (its token is the learned null token); the OOD
        score says how far the query is from the training data.
    seed
        Seeds the count sampling (and the draw of ``max_controls`` controls).
    max_controls
        Use at most this many control cells (``None`` = all; memory grows with cells x genes x members).
    dose
        Dose of the perturbation (a number, or ``'1+0.5'`` per agent of a combination; default 1).
    """
    model.vocab.parts(perturbation)
    model.vocab.encode([perturbation], None if dose is None else [dose])  # unknown agents -> clear error first
    rows, codes, label = select_controls(model, controls, context)
    if bool((codes < 0).any()) and not allow_ood:
        raise InvalidInputError(
            f"context {label!r} was never seen in training (known: "
            f"{ {k: list(v) for k, v in model.context_categories.items()} }); pass allow_ood=True "
            "(--allow-ood) to predict with the learned null context and read the OOD score."
        )
    pred, _ = query(
        model, controls, rows, perturbation, context_codes=codes, seed=seed, max_controls=max_controls, dose=dose
    )
    pred.context = label
    return pred


def response_anndata(
    model: PerturbDeltaModel,
    pred: ResponsePrediction,
    controls: AnnData,
    perturbation: str,
    *,
    seed: int,
    level: float,
    dose: Any,
) -> AnnData:
    """One predicted perturbed cell per control cell of ``pred``, with the calibrated ``level`` interval.

    See :meth:`~genailab.foundation.recipes.perturb.model.PerturbDeltaModel.predict` for the layout.
    """
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    rows, label = pred.control_rows, pred.context
    tag = f"{int(round(level * 100))}"
    sigma = calibrated_sigma(model.calibrator, pred.sigma)
    lo, hi = interval(model.calibrator, pred.mean, pred.sigma, level)
    half_lo, half_hi = pred.mean - lo, hi - pred.mean
    var = pd.DataFrame(
        {
            "mean_response": pred.mean,
            "control_mean": pred.control_mean,
            "delta": pred.mean - pred.control_mean,
            "sigma": sigma,
            f"lower_{tag}": lo,
            f"upper_{tag}": hi,
        },
        index=pd.Index(list(model.vae.genes), name="gene"),
    )
    obs = controls.obs.iloc[rows].copy()
    obs[model.perturbation_key] = perturbation
    obs["control_cell"] = obs.index.astype(str)
    obs["ood_score"] = pred.ood_score
    obs.index = [f"{i}_{perturbation}" for i in obs.index.astype(str)]
    out = ad.AnnData(X=sparse.csr_matrix(pred.counts.astype(np.float32)), obs=obs, var=var)
    out.layers["mean"] = pred.expected.astype(np.float32)
    out.layers[f"lower_{tag}"] = (pred.expected * np.exp(-half_lo)).astype(np.float32)
    out.layers[f"upper_{tag}"] = (pred.expected * np.exp(half_hi)).astype(np.float32)
    out.uns["genailab_perturb"] = {
        "perturbation": perturbation,
        "context": label,
        "ood_score": float(pred.ood_score),
        "ood": bool(pred.novelty["unseen_context"] or pred.ood_score > ood_threshold(model.seen_ood_scores)),
        "unseen_agents": list(pred.novelty["unseen_agents"]),
        "unseen_context": bool(pred.novelty["unseen_context"]),
        "calibrated": model.calibrator is not None,
        "level": float(level),
        "dose": "" if dose is None else str(dose),
        "seed": int(seed),
    }
    return out
