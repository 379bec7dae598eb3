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
from genailab.foundation.recipes.perturb.base_shift import base_for_codes, codes_context_label
from genailab.foundation.recipes.perturb.calibration import (
    calibrated_sigma,
    interval,
    ood_score,
    ood_threshold,
    stratified_sigma,
)
from genailab.foundation.recipes.perturb.encoding import Cells
from genailab.foundation.recipes.vae.model import LatentTokenVAE
from genailab.nn import log_normalize as log_normalize_tensor

if TYPE_CHECKING:
    from anndata import AnnData

    from genailab.foundation.recipes.perturb.model import PerturbDeltaModel

__all__ = [
    "ResponsePrediction",
    "anchor_plan",
    "anchored_latent",
    "decoded_shift",
    "library_column",
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
        population: the observed control mean plus the ensemble's mean predicted shift. With the
        model's ``library_key`` counts are divided by the whole-transcriptome libraries (``library``).
    sigma
        ``(G,)`` ensemble standard deviation of the members' own (unanchored) predictions of ``mean``
        (for an anchored prediction combined with its distance from their mean,
        ``sqrt(sd^2 + (mean - their mean)^2)``), times the model's ``de_sigma_factor`` on the
        query's predicted responders (the response-size stratum of :mod:`.calibration`); calibrate it
        with the model's calibrator;
        ``None`` for a prediction without an ensemble (a latent baseline).
    members
        ``(K, G)`` each member's ``mean``.
    control_mean
        ``(G,)`` observed mean log-normalised expression of the control cells used.
    counts
        ``(n, G)`` sampled perturbed counts, one cell per control cell (ensemble mixture).
    expected
        ``(n, G)`` ensemble-mean expected counts of each predicted cell.
    ood_score
        How far the query is from the training data: ensemble disagreement on its mean latent shift
        combined with its agents' distance in prior space to the trained agents, each relative to its
        median on the validation conditions (about 1 for those, larger further out; see
        :mod:`~genailab.foundation.recipes.perturb.ood`). Models saved before that score: the
        disagreement relative to its median on the training groups.
    disagreement
        The raw disagreement (variance across members, averaged over latent coordinates).
    control_rows
        Rows of the controls AnnData behind ``counts`` and ``expected`` (row ``i`` is the prediction
        for control cell ``control_rows[i]``).
    context
        The query's context label (context values joined by ``|``; empty without context keys).
    novelty
        What is new about the query: unseen agents and whether the context is unseen.
    library
        ``(n,)`` the library each predicted cell was log-normalised with: its control cell's
        ``obs[library_key]`` (log-normalise ``counts`` with it to compare with ``mean``); ``None``
        without a library key (each cell's own row sum).
    prior_distance
        The prior-distance component of ``ood_score`` (``None`` for the disagreement-only score).
    """

    mean: np.ndarray
    sigma: np.ndarray | None
    members: np.ndarray
    control_mean: np.ndarray
    counts: np.ndarray
    expected: np.ndarray
    ood_score: float
    novelty: dict[str, Any]
    disagreement: float = 0.0
    control_rows: np.ndarray | None = None
    context: str = ""
    library: np.ndarray | None = None
    prior_distance: float | None = None


def member_decoders(model: PerturbDeltaModel) -> list[LatentTokenVAE]:
    """The VAE that decodes each member's latents (its own tuned copy under ``finetune='decoder'``)."""
    return [d if d is not None else model.vae for d in model.decoders]


def library_column(library: np.ndarray | None) -> torch.Tensor | None:
    """``(n, 1)`` float32 tensor of per-cell libraries for :func:`genailab.nn.log_normalize` (``None`` stays)."""
    return None if library is None else torch.as_tensor(np.asarray(library, np.float32)).view(-1, 1)


@torch.no_grad()
def decoded_shift(
    decoder: LatentTokenVAE,
    z_base: torch.Tensor,
    z: torch.Tensor,
    library: torch.Tensor,
    vae_batch: torch.Tensor | None,
    *,
    reps: int,
    seed: int,
    norm_library: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode ``z`` and ``z_base`` alike and return the shift of the mean log-normalised sampled cells.

    Both populations are sampled ``reps`` times with the same seed, so the decoder's bias and most
    of the sampling noise cancel in the difference (what is added to the observed control mean).

    Parameters
    ----------
    decoder
        The VAE that decodes.
    z_base, z
        ``(n, m, d)`` standardised latents of the control cells and of their perturbed predictions.
    library, vae_batch
        The decoder's library sizes ``(n,)`` (row sums over its genes) and batch index.
    reps
        Sampled cells per control cell.
    seed
        Seeds the sampling.
    norm_library
        ``(n, 1)`` libraries to log-normalise the sampled cells with (each predicted cell carries its
        control cell's); ``None``: their row sums.

    Returns
    -------
    ``(G,)`` shift, ``(n, G)`` expected counts of the predicted cells, ``(n, G)`` one sampled cell each.
    """
    dist = decoder.decode(decoder.unstandardize(z), library, vae_batch)
    base = decoder.decode(decoder.unstandardize(z_base), library, vae_batch)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        draws = dist.sample((reps,))  # (R, n, G)
        torch.manual_seed(seed)
        base_draws = base.sample((reps,))
    perturbed = log_normalize_tensor(draws, norm_library).mean((0, 1))  # (G,)
    unperturbed = log_normalize_tensor(base_draws, norm_library).mean((0, 1))
    return perturbed - unperturbed, dist.mean, draws[0]


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

    Notes
    -----
    The prediction starts from the model's base shift of the query context (if any), and every
    log-normalised mean uses the model's library rule (``config.library_key``). Agents with observed
    single-agent training cells in the query context enter through their observed response
    (:func:`anchored_latent`, ``config.composition='anchored'``; not for an explicit ``dose``).
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
    ids, doses = model.vocab.encode([condition] * n, None if dose is None else [dose] * n)
    if context_codes is None:
        context_codes = cells.context_codes[x_codes_row if x_codes_row is not None else rows[0]].numpy()
    ctx = torch.as_tensor(np.broadcast_to(context_codes, (n, len(model.config.context_keys))).copy())  # (n, K)
    reps = max(1, math.ceil(model.config.mc_cells / n))
    base = base_for_codes(model, context_codes)  # (m, d) or None
    norm_library = cells.norm_library(rows)  # (n,) or None
    lib_col = library_column(norm_library)
    anchors = anchor_plan(model, condition, context_codes) if dose is None else None
    means, spread, zs, expected, sampled = [], [], [], [], []
    for k, (net, dec) in enumerate(zip(model.nets, member_decoders(model), strict=True)):
        gen = torch.Generator().manual_seed(seed * 7919 + k)
        z = net(z_base, torch.as_tensor(ids), torch.as_tensor(doses), ctx, generator=gen, base=base)  # (n, m, d)
        zs.append(z)  # the members' own latents: their disagreement is the OOD score's and sigma's
        decode = {"reps": reps, "seed": seed * 104729 + k, "norm_library": lib_col}
        shift, mean_k, draw = decoded_shift(dec, z_base, z, library, vae_batch, **decode)
        spread.append(shift)
        if anchors is not None:
            z_a, residual = anchored_latent(model, net, dec, z_base, z, anchors, ctx, base, library, vae_batch, decode)
            shift, mean_k, draw = decoded_shift(dec, z_base, z_a, library, vae_batch, **decode)
            shift = shift + residual
        means.append(shift)
        expected.append(mean_k)
        sampled.append(draw)
    control_mean = log_normalize_tensor(counts, lib_col).mean(0)  # (G,)
    members = (control_mean.unsqueeze(0) + torch.stack(means)).numpy()  # (K, G)
    shifts = (torch.stack(zs) - z_base.unsqueeze(0)).mean(1)  # (K, m, d) mean latent shift per member
    disagreement = float(shifts.var(0).mean()) if len(zs) > 1 else 0.0
    ood, distance = ood_score(model, condition, disagreement)
    pick = torch.as_tensor(np.arange(n) % len(zs))
    cell_counts = torch.stack(sampled)[pick, torch.arange(n)]  # (n, G) one member per cell (mixture)
    novelty = {
        "unseen_agents": list(model.vocab.unseen(condition)),
        "unseen_context": bool((ctx < 0).any()),
    }
    # sigma: the members' spread on their own predictions, and for an anchored mean also how far it lies from
    # theirs (where the observed singles and the latent model disagree, neither is trusted blindly)
    plain = torch.stack(spread)  # (K, G) members' own shifts
    sigma = plain.std(0).numpy() if len(zs) > 1 else np.zeros(members.shape[1])
    if anchors is not None:
        gap = members.mean(0) - (control_mean + plain.mean(0)).numpy()
        sigma = np.sqrt(sigma**2 + gap**2)
    pred = ResponsePrediction(
        mean=members.mean(0),
        sigma=stratified_sigma(sigma, members.mean(0), control_mean.numpy(), model.de_sigma_factor),
        members=members,
        control_mean=control_mean.numpy(),
        counts=cell_counts.numpy(),
        expected=torch.stack(expected).mean(0).numpy(),
        ood_score=ood,
        disagreement=disagreement,
        control_rows=rows,
        novelty=novelty,
        library=norm_library,
        prior_distance=distance,
    )
    return pred, disagreement


def anchor_plan(
    model: PerturbDeltaModel, condition: str, context_codes: np.ndarray
) -> list[tuple[str, int | None]] | None:
    """Per agent of ``condition``, its row in ``model.observed_singles`` in the query context (``None``: not observed).

    ``None`` when the model composes in latent space only (``composition='latent'``, no anchors fitted)
    or when no agent of the query is anchored (the prediction is then the plain latent one).
    """
    singles = model.observed_singles
    if model.config.composition != "anchored" or singles is None:
        return None
    label = codes_context_label(model.config.context_keys, model.context_categories, context_codes)
    plan = [(a, singles.lookup(a, label)) for a in model.vocab.parts(condition)]
    return plan if any(r is not None for _, r in plan) else None


@torch.no_grad()
def anchored_latent(
    model: PerturbDeltaModel,
    net: torch.nn.Module,
    decoder: LatentTokenVAE,
    z_base: torch.Tensor,
    z: torch.Tensor,
    plan: list[tuple[str, int | None]],
    ctx: torch.Tensor,
    base: torch.Tensor | None,
    library: torch.Tensor,
    vae_batch: torch.Tensor | None,
    decode: Mapping[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One member's anchored prediction: the latent to decode and the gene-space residual to add.

    With the member's shift ``z - z_base`` for the query and ``v_a`` for each agent alone, the
    interaction is ``I = (z - z_base) - sum_a v_a``; the latent is ``z_base + sum_a u_a + I`` with
    ``u_a`` the observed shift ``s_a`` of an anchored agent (``v_a`` otherwise), and the residual is
    ``sum_{a anchored} w_a (r_a - D(s_a))``: what the observed single response holds beyond its decoded
    latent shift, shrunk per gene by ``w_a = b / (b + stderr^2)`` with ``b = max(e^2 - stderr^2, 0)`` the
    estimated squared bias of the decoded shift (``e = r_a - D(s_a)``) where it was measured on few or
    noisy cells (:mod:`~genailab.foundation.recipes.perturb.anchors`).

    Returns
    -------
    ``(z (n, m, d), residual (G,))``.
    """
    singles = model.observed_singles
    n = z_base.shape[0]
    interaction = z - z_base
    anchored = torch.zeros_like(z_base)
    residual = torch.zeros(model.vae.config.n_genes)
    for agent, row in plan:
        a_ids, a_dose = model.vocab.encode([agent] * n)
        v = net(z_base, torch.as_tensor(a_ids), torch.as_tensor(a_dose), ctx, base=base) - z_base  # (n, m, d)
        interaction = interaction - v
        if row is None:
            anchored = anchored + v
            continue
        s_a = torch.as_tensor(singles.shifts[row]).to(z_base.dtype)  # (m, d)
        anchored = anchored + s_a
        d_a = decoded_shift(decoder, z_base, z_base + s_a, library, vae_batch, **decode)[0]
        gap = torch.as_tensor(singles.responses[row]) - d_a  # (G,) what the observed response holds beyond D(s_a)
        noise = torch.as_tensor(singles.stderr[row]).pow(2)
        bias = (gap.pow(2) - noise).clamp(min=0.0)  # unbiased estimate of the decoder's squared bias
        residual = residual + gap * bias / (bias + noise).clamp(min=1e-12)  # shrunk where noisy
    return z_base + anchored + interaction, residual


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
