"""Where does a synthesis fidelity gap come from? The diagnosis ladder, per cell type, beside its floor.

A latent generator (``counts -> frozen VAE -> latent prior -> decoder -> counts``) can lose fidelity at
each stage. Each rung isolates one, per condition (e.g. cell type), next to a resampled real-vs-real
floor (:mod:`genailab.evaluation.synthesis_floor`):

1. :func:`vae_ceiling` -- **the VAE ceiling**: held-out real cells encoded, decoded and counts sampled
   (posterior predictive), scored against the same held-out cells like any generator. No latent
   generator on this VAE can do better, so a type far from its floor here is held back by the decoder
   and count model. With the training cells it also scores the **aggregate posterior**: training cells
   of each type re-decoded, i.e. a perfect latent prior that never saw the held-out cells.
2. :func:`latent_prior_gap` -- **the latent prior**: MMD in the VAE's standardised latent space between
   the generator's latents (conditioned like the held-out cells) and the encoded held-out cells, beside
   the floor of two halves of the encoded cells; precision/coverage and the variance ratio tell missed
   modes from blurred ones.
3. :func:`count_model_gap` -- **library sizes and zeros**: per type, W1 of log library sizes, mean and
   per-gene zero fractions, synthetic vs real vs floor.

(Rung 4, conditioning and guidance sweeps, is a benchmark option: ``benchmarks/bench_synthesis_ladder.py``.)

:func:`synthesis_ladder` runs the rungs a model supports and :func:`ladder_rows` condenses them into one
row per type with the rung that holds it back. :func:`score_generator` is
:func:`~genailab.evaluation.synthesis.evaluate_synthesis` plus the resampled MMD floor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from genailab.config import check_count
from genailab.constants import ADATA_KEYS, BATCH_KEYS
from genailab.data import make_dataloader
from genailab.errors import InvalidInputError
from genailab.evaluation.synthesis import clean_json, evaluate_synthesis
from genailab.evaluation.synthesis_embedding import gene_stats, library_sizes, prepare_inputs, subsample
from genailab.evaluation.synthesis_floor import (
    floor_spread,
    neighbourhood_stats,
    ratio_of,
    resampled_mmd,
    resampled_w1,
)

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "count_model_gap",
    "ladder_rows",
    "latent_prior_gap",
    "posterior_predictive",
    "score_generator",
    "synthesis_ladder",
    "vae_ceiling",
]

THRESHOLD = 1.5  # a rung "holds a type back" when its ratio to the floor exceeds this


def _labels(adata: AnnData, key: str | None) -> np.ndarray:
    if key is None:
        return np.full(adata.n_obs, "all", dtype=object)
    if key not in adata.obs.columns:
        raise InvalidInputError(f"condition_key={key!r} is not an obs column; available: {list(adata.obs.columns)}.")
    return adata.obs[key].astype(str).to_numpy(dtype=object)


def score_generator(
    real: AnnData,
    syn: AnnData,
    *,
    condition_key: str | None = None,
    layer: str | None = None,
    n_pcs: int = 30,
    seed: int = 0,
    n_boot: int = 20,
) -> dict[str, Any]:
    """:func:`~genailab.evaluation.synthesis.evaluate_synthesis` plus ``"floor_spread"`` (resampled MMD).

    Parameters
    ----------
    real, syn
        Held-out real cells and the synthetic cells generated like them (counts, same genes).
    condition_key, layer, n_pcs, seed
        As for ``evaluate_synthesis``.
    n_boot
        Random re-splits of the held-out real cells for the floor's spread
        (:func:`~genailab.evaluation.synthesis_floor.floor_spread`).

    Returns
    -------
    The ``evaluate_synthesis`` dict with a ``"floor_spread"`` entry.
    """
    metrics = evaluate_synthesis(real, syn, condition_key=condition_key, layer=layer, n_pcs=n_pcs, seed=seed)
    metrics["floor_spread"] = floor_spread(
        real, syn, condition_key=condition_key, layer=layer, n_pcs=n_pcs, seed=seed, n_boot=n_boot
    )
    return clean_json(metrics)


# --------------------------------------------------------------------------------------------------
# Rung 1: the VAE ceiling
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def posterior_predictive(
    vae: Any,
    adata: AnnData,
    *,
    latent: str = "mean",
    library: str = "observed",
    seed: int = 0,
    batch_size: int = 1024,
) -> AnnData:
    """Encode ``adata``, decode and draw counts: one posterior-predictive cell per input cell.

    Parameters
    ----------
    vae
        A trained :class:`~genailab.foundation.recipes.LatentTokenVAE`.
    adata
        Cells to re-generate (genes aligned to the VAE's).
    latent
        ``"mean"``: decode the posterior mean; ``"sample"``: a draw from ``q(z | x)``.
    library
        ``"observed"``: each cell's own library size; ``"model"``: drawn from the VAE's library model.
    seed
        Seeds the latent draws, library sizes and counts.
    batch_size
        Cells per forward pass.

    Returns
    -------
    AnnData with integer counts in ``X`` (the VAE's genes) and a copy of ``adata.obs``.
    """
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    if latent not in ("mean", "sample") or library not in ("observed", "model"):
        raise InvalidInputError(
            f"latent={latent!r}, library={library!r}; expected latent in ('mean', 'sample') and library in "
            "('observed', 'model')."
        )
    vae.eval()
    gen = torch.Generator().manual_seed(seed)
    out = []
    with torch.random.fork_rng():  # Distribution.sample draws from the global generator; keep the caller's
        torch.manual_seed(seed + 2)
        for batch in make_dataloader(vae.count_dataset(adata), batch_size=batch_size, shuffle=False):
            counts, lib = batch[BATCH_KEYS.COUNTS], batch[BATCH_KEYS.LIBRARY]
            mu, logvar = vae.encode(counts, lib)
            z = mu if latent == "mean" else mu + torch.randn(mu.shape, generator=gen) * (0.5 * logvar).exp()
            bi = vae.batch_index(batch)
            if library == "model":
                lib = vae.sample_library(bi, counts.shape[0], gen, z_std=vae.standardize(z))
            out.append(vae.decode(z, lib, bi, batch.get(BATCH_KEYS.GENE_MASK)).sample())
    x = torch.cat(out).numpy().astype(np.int32) if out else np.zeros((0, len(vae.genes)), np.int32)
    obs = adata.obs.copy()
    obs.index = pd.Index([f"pp_{i}" for i in range(adata.n_obs)])
    return ad.AnnData(sparse.csr_matrix(x), obs=obs, var=pd.DataFrame(index=pd.Index(list(vae.genes))))


def vae_ceiling(
    vae: Any,
    real_train: AnnData | None,
    real_heldout: AnnData,
    *,
    condition_key: str | None = None,
    latent: str = "mean",
    seed: int = 0,
    n_pcs: int = 30,
    n_boot: int = 20,
) -> dict[str, Any]:
    """Rung 1: the VAE's posterior predictive of the held-out cells, scored like a generator.

    Parameters
    ----------
    vae
        The generator's frozen :class:`~genailab.foundation.recipes.LatentTokenVAE`.
    real_train
        The VAE's training cells, or ``None``. When given, also scores the **aggregate posterior**: for
        each held-out cell, a random training cell of the same condition re-decoded (a perfect latent
        prior that never saw the held-out cells; conditions absent from training are dropped).
    real_heldout
        Held-out real cells: the reference and the cells re-generated.
    condition_key
        obs column with the cell type (per-condition metrics).
    latent
        ``"mean"`` or ``"sample"`` (see :func:`posterior_predictive`); the observed library is used.
    seed, n_pcs, n_boot
        See :func:`score_generator`.

    Returns
    -------
    ``{"posterior_predictive": score, "aggregate_posterior": score or None, "settings": {...}}`` with
    :func:`score_generator` dicts.
    """
    pp = posterior_predictive(vae, real_heldout, latent=latent, seed=seed)
    kw = {"condition_key": condition_key, "n_pcs": n_pcs, "seed": seed, "n_boot": n_boot}
    out: dict[str, Any] = {"posterior_predictive": score_generator(real_heldout, pp, **kw), "aggregate_posterior": None}
    if real_train is not None:
        held, train = _labels(real_heldout, condition_key), _labels(real_train, condition_key)
        rng = np.random.default_rng([seed, 7])
        rows = []
        for value in held:  # one training cell per held-out cell, same condition, with replacement
            pool = np.flatnonzero(train == value)
            if len(pool):
                rows.append(int(rng.choice(pool)))
        if len(rows) >= 2:
            agg = posterior_predictive(vae, real_train[np.asarray(rows)], latent=latent, seed=seed)
            out["aggregate_posterior"] = score_generator(real_heldout, agg, **kw)
    out["settings"] = {
        "latent": latent,
        "library": "observed",
        "posterior_predictive": "held-out cells encoded, decoded and counts drawn (sees its targets: an upper bound)",
        "aggregate_posterior": "a random training cell of the same condition per held-out cell, re-decoded",
    }
    return clean_json(out)


# --------------------------------------------------------------------------------------------------
# Rung 2: the latent prior
# --------------------------------------------------------------------------------------------------


def latent_prior_gap(
    model: Any,
    real_heldout: AnnData,
    *,
    condition_key: str | None = None,
    synthetic: AnnData | None = None,
    seed: int = 0,
    n_boot: int = 20,
    k: int = 5,
    min_cells: int = 10,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Rung 2: generated vs encoded held-out latents in the VAE's standardised latent space.

    Parameters
    ----------
    model
        A latent generator with a ``vae`` attribute and ``sample(like=..., seed=...)`` returning the
        generated standardised latents in ``obsm["X_genailab_synthetic_latent"]``
        (:class:`~genailab.foundation.recipes.LatentDiffusionModel`,
        :class:`~genailab.foundation.recipes.latent_prior.GaussianLatentPrior`).
    real_heldout
        Held-out real cells (encoded with the model's VAE).
    condition_key
        obs column with the cell type; ``None`` for all cells only.
    synthetic
        Cells the model already generated like ``real_heldout`` (their latents are reused);
        ``None`` samples them.
    seed
        Seeds the sampling, splits and subsamples.
    n_boot
        Random splits for the MMD floor (:func:`~genailab.evaluation.synthesis_floor.resampled_mmd`).
    k
        Neighbourhood size of precision and coverage.
    min_cells
        Conditions with fewer real or generated cells are skipped.
    batch_size
        Encoder batch size.

    Returns
    -------
    ``{"overall": entry, "per_condition": {value: entry}, "settings": {...}}``, each entry
    ``{"mmd": resampled MMD^2, "neighbourhood": precision/coverage/variance ratio, "n_real", "n_syn"}``.
    """
    check_count(min_cells, "min_cells", 4)
    if synthetic is None or ADATA_KEYS.SYNTH_LATENT not in synthetic.obsm:
        synthetic = model.sample(like=real_heldout, seed=seed)
    z_gen = np.asarray(synthetic.obsm[ADATA_KEYS.SYNTH_LATENT], dtype=float)
    z_gen = z_gen.reshape(z_gen.shape[0], -1)
    z_real = model.vae.get_latent(real_heldout, key=None, standardize=True, batch_size=batch_size)
    z_real = z_real.reshape(z_real.shape[0], -1).astype(float)
    if z_gen.shape[1] != z_real.shape[1]:
        raise InvalidInputError(
            f"the synthetic latents have {z_gen.shape[1]} dimensions, the model's VAE {z_real.shape[1]}; "
            "were the cells generated by this model?"
        )
    lab_real, lab_gen = _labels(real_heldout, condition_key), _labels(synthetic, condition_key)

    def entry(r: np.ndarray, g: np.ndarray) -> dict[str, Any]:
        return {
            "mmd": resampled_mmd(r, g, n_boot=n_boot, seed=seed),
            "neighbourhood": neighbourhood_stats(r, g, k=k, seed=seed),
            "n_real": len(r),
            "n_syn": len(g),
        }

    per: dict[str, Any] = {}
    if condition_key is not None:
        for value in sorted(set(lab_real.tolist())):
            r, g = z_real[lab_real == value], z_gen[lab_gen == value]
            if len(r) >= min_cells and len(g) >= min_cells:
                per[value] = entry(r, g)
    settings = {
        "space": "the VAE's standardised posterior-mean latents, flattened",
        "mmd": "RBF kernels at the median distance of the reference half x (0.5, 1, 2), V-statistic",
        "floor": "two random halves of the encoded held-out cells",
        "n_boot": n_boot,
        "k": k,
        "min_cells": min_cells,
    }
    return clean_json({"overall": entry(z_real, z_gen), "per_condition": per, "settings": settings})


# --------------------------------------------------------------------------------------------------
# Rung 3: library sizes and zeros
# --------------------------------------------------------------------------------------------------


def _count_entry(a: Any, b: Any, s: Any, real_all: Any, syn_all: Any, n_boot: int, seed: int) -> dict[str, Any]:
    """Library and zero statistics of synthetic ``s`` and real half ``b`` (floor) against real half ``a``."""
    out: dict[str, Any] = {
        "log_library_w1": resampled_w1(
            np.log1p(library_sizes(real_all)), np.log1p(library_sizes(syn_all)), n_boot=n_boot, seed=seed
        ),
        "n_real": real_all.shape[0],
        "n_syn": syn_all.shape[0],
    }
    za = gene_stats(a)[2]
    lib_a = np.log1p(library_sizes(a))
    for key, m in (("synthetic", s), ("floor", b)):
        zf = gene_stats(m)[2]
        cell_zero = 1.0 - np.asarray((m != 0).sum(1)).ravel() / m.shape[1]
        out.setdefault("log_library_mean_diff", {})[key] = float(np.log1p(library_sizes(m)).mean() - lib_a.mean())
        out.setdefault("cell_zero_fraction", {})[key] = float(cell_zero.mean())
        out.setdefault("gene_zero_fraction_excess", {})[key] = float((zf - za).mean())
        out.setdefault("gene_zero_fraction_corr", {})[key] = (
            float(np.corrcoef(zf, za)[0, 1]) if zf.std() > 0 and za.std() > 0 else None
        )
    out["cell_zero_fraction"]["real"] = float((1.0 - np.asarray((a != 0).sum(1)).ravel() / a.shape[1]).mean())
    return out


def count_model_gap(
    real: AnnData,
    synthetic: AnnData,
    *,
    condition_key: str | None = None,
    layer: str | None = None,
    seed: int = 0,
    n_boot: int = 20,
    min_cells: int = 10,
) -> dict[str, Any]:
    """Rung 3: library-size and zero-fraction distributions, synthetic vs real vs floor, per type.

    The real cells of each scope are split at random into halves ``A`` (reference) and ``B`` (floor);
    the synthetic cells are subsampled to ``|B|``. Reported per scope: ``log_library_w1`` (W1 of
    ``log1p`` library sizes with a resampled floor), ``log_library_mean_diff`` (signed shift from ``A``),
    ``cell_zero_fraction`` (mean fraction of zero genes per cell: real, synthetic, floor),
    ``gene_zero_fraction_excess`` (mean over genes of the zero-fraction difference from ``A``; > 0 =
    too many zeros) and ``gene_zero_fraction_corr`` (per-gene zero fractions vs ``A``).

    Parameters
    ----------
    real, synthetic
        AnnData of counts with the same genes.
    condition_key
        obs column of both with the cell type; ``None`` for all cells only.
    layer
        Layer with the counts in both; ``None`` for ``X``.
    seed, n_boot
        Seed of the splits; random splits of the library W1 floor.
    min_cells
        Conditions with fewer real or synthetic cells are skipped.

    Returns
    -------
    ``{"overall": entry, "per_condition": {value: entry}, "settings": {...}}``.
    """
    check_count(min_cells, "min_cells", 4)
    inputs = prepare_inputs(real, synthetic, layer=layer, condition_key=condition_key, classifier_key=None)
    rng = np.random.default_rng([seed, 3])

    def scope(r_idx: np.ndarray, s_idx: np.ndarray) -> dict[str, Any]:
        perm = rng.permutation(r_idx)
        a, b = perm[: len(perm) // 2], perm[len(perm) // 2 :]
        s = subsample(s_idx, len(b), rng)
        b = b[: len(s)]
        r_all, s_all = inputs.real[np.sort(r_idx)], inputs.syn[np.sort(s_idx)]
        return _count_entry(inputs.real[np.sort(a)], inputs.real[np.sort(b)], inputs.syn[s], r_all, s_all, n_boot, seed)

    per: dict[str, Any] = {}
    if inputs.real_cond is not None:
        for value in sorted(set(inputs.real_cond.tolist())):
            r_idx, s_idx = np.flatnonzero(inputs.real_cond == value), np.flatnonzero(inputs.syn_cond == value)
            if len(r_idx) >= min_cells and len(s_idx) >= min_cells:
                per[value] = scope(r_idx, s_idx)
    overall = scope(np.arange(inputs.real.shape[0]), np.arange(inputs.syn.shape[0]))
    settings = {"split": "real cells of each scope in random halves A (reference) and B (floor)", "n_boot": n_boot}
    return clean_json({"overall": overall, "per_condition": per, "settings": settings})


# --------------------------------------------------------------------------------------------------
# The ladder in one call, and one row per type
# --------------------------------------------------------------------------------------------------


def _scope(rung: Mapping[str, Any] | None, value: str | None) -> Mapping[str, Any] | None:
    if not rung:
        return None
    return rung.get("overall") if value is None else rung.get("per_condition", {}).get(value)


def ladder_rows(
    generator: Mapping[str, Any] | None = None,
    ceiling: Mapping[str, Any] | None = None,
    latent: Mapping[str, Any] | None = None,
    counts: Mapping[str, Any] | None = None,
    *,
    threshold: float = THRESHOLD,
) -> list[dict[str, Any]]:
    """One row per cell type (and one for all cells): each rung's ratio to its floor and the verdict.

    Parameters
    ----------
    generator
        :func:`score_generator` of the generator's cells.
    ceiling, latent, counts
        Results of :func:`vae_ceiling`, :func:`latent_prior_gap`, :func:`count_model_gap` (any may be
        ``None``).
    threshold
        A rung holds a type back when its ratio exceeds this (zeros: when the synthetic zero-fraction
        excess exceeds ``max(0.02, 3 |floor excess|)``).

    Returns
    -------
    Rows with ``condition``, ``generator_mmd_ratio`` (median over re-splits), ``floor_mmd`` and its
    interval, ``ceiling_mmd_ratio``, ``aggregate_posterior_mmd_ratio``, ``latent_mmd_ratio``,
    ``latent_coverage``/``latent_precision``/``latent_variance_ratio`` (synthetic, floor),
    ``library_w1_ratio``, ``zero_fraction_excess`` and ``held_back_by`` (list of rungs).
    """
    spread = (generator or {}).get("floor_spread")
    pp = (ceiling or {}).get("posterior_predictive")
    agg = (ceiling or {}).get("aggregate_posterior")
    values: list[str | None] = [None]
    for src in (spread, latent, counts, (pp or {}).get("floor_spread")):
        for v in (src or {}).get("per_condition", {}):
            if v not in values:
                values.append(v)
    rows = []
    for value in values:
        g = _scope(spread, value)
        lat = _scope(latent, value) or {}
        cnt = _scope(counts, value) or {}
        nb = lat.get("neighbourhood") or {}
        row: dict[str, Any] = {
            "condition": "all cells" if value is None else value,
            "generator_mmd_ratio": ratio_of(g),
            "floor_mmd": (g or {}).get("floor"),
            "floor_mmd_interval": [(g or {}).get("floor_q025"), (g or {}).get("floor_q975")] if g else None,
            "ceiling_mmd_ratio": ratio_of(_scope((pp or {}).get("floor_spread"), value)),
            "aggregate_posterior_mmd_ratio": ratio_of(_scope((agg or {}).get("floor_spread"), value)),
            "latent_mmd_ratio": ratio_of(lat.get("mmd")),
            "latent_coverage": nb.get("coverage"),
            "latent_precision": nb.get("precision"),
            "latent_variance_ratio": nb.get("variance_ratio"),
            "library_w1_ratio": ratio_of(cnt.get("log_library_w1")),
            "zero_fraction_excess": cnt.get("gene_zero_fraction_excess"),
        }
        row["held_back_by"] = _verdict(row, threshold)
        rows.append(row)
    return rows


def _verdict(row: Mapping[str, Any], threshold: float) -> list[str]:
    gen = row["generator_mmd_ratio"]
    if gen is not None and gen <= threshold:
        return []
    causes = []
    for key, name in (
        ("ceiling_mmd_ratio", "VAE ceiling (decoder and count model)"),
        ("latent_mmd_ratio", "latent prior"),
        ("library_w1_ratio", "library sizes"),
    ):
        if row[key] is not None and row[key] > threshold:
            causes.append(name)
    zero = row["zero_fraction_excess"] or {}
    if zero.get("synthetic") is not None and abs(zero["synthetic"]) > max(0.02, 3 * abs(zero.get("floor") or 0.0)):
        causes.append("zero fraction")
    return causes or ([f"no rung above {threshold:g}x"] if gen is not None else [])


def synthesis_ladder(
    model: Any,
    real_heldout: AnnData,
    synthetic: AnnData,
    *,
    condition_key: str | None = None,
    real_train: AnnData | None = None,
    layer: str | None = None,
    seed: int = 0,
    n_pcs: int = 30,
    n_boot: int = 20,
) -> dict[str, Any]:
    """Every rung a latent generator supports, for synthetic cells generated like held-out real cells.

    Parameters
    ----------
    model
        The generator (``vae`` attribute and ``sample(like=...)``, see :func:`latent_prior_gap`).
    real_heldout
        Real cells the model did not train on; ``synthetic`` imitates them.
    synthetic
        The generator's cells (one per held-out cell, its conditions).
    condition_key
        obs column with the cell type.
    real_train
        The training cells, for the aggregate-posterior reference (optional).
    layer, seed, n_pcs, n_boot
        As for :func:`score_generator`.

    Returns
    -------
    ``{"generator_floor_spread", "ceiling", "latent_prior", "count_model", "per_type", "settings"}``;
    ``per_type`` is :func:`ladder_rows`.
    """
    spread = floor_spread(
        real_heldout, synthetic, condition_key=condition_key, layer=layer, n_pcs=n_pcs, seed=seed, n_boot=n_boot
    )
    ceiling = vae_ceiling(
        model.vae, real_train, real_heldout, condition_key=condition_key, seed=seed, n_pcs=n_pcs, n_boot=n_boot
    )
    latent = latent_prior_gap(
        model, real_heldout, condition_key=condition_key, synthetic=synthetic, seed=seed, n_boot=n_boot
    )
    counts = count_model_gap(
        real_heldout, synthetic, condition_key=condition_key, layer=layer, seed=seed, n_boot=n_boot
    )
    return clean_json(
        {
            "generator_floor_spread": spread,
            "ceiling": ceiling,
            "latent_prior": latent,
            "count_model": counts,
            "per_type": ladder_rows({"floor_spread": spread}, ceiling, latent, counts),
            "settings": {"condition_key": condition_key, "threshold": THRESHOLD, "n_boot": n_boot, "seed": seed},
        }
    )
