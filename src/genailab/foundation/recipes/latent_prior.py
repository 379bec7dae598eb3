"""A Gaussian latent prior per condition group over a frozen VAE: latent synthesis without diffusion.

``counts -> frozen VAE encoder -> standardised latents -> one Gaussian per (condition tuple) group
-> latent -> frozen VAE decoder -> NB/ZINB counts``

:class:`GaussianLatentPrior` is the "no diffusion" reference of the synthesis diagnosis ladder: it keeps
everything of :class:`~genailab.foundation.recipes.LatentDiffusionModel` except the learned latent
prior, which becomes a Gaussian fitted to the standardised posterior-mean latents of the training cells
of each condition group (e.g. cell type x donor). The covariance is full or diagonal and shrunk towards
the pooled within-group covariance, strongly for small groups: with ``n`` training cells in a group and
``shrinkage = k`` (a pseudo-count of cells), the group's covariance is ``(1 - w) S_group + w S_pooled``
with ``w = k / (k + n - 1)``. Counts are decoded exactly as ``LatentDiffusionModel.sample`` decodes
them (library sizes from the VAE's per-batch log-normal library model, counts drawn from the decoder's
distribution), so any difference between the two is the latent prior alone.

A condition combination not seen in training (each value seen) backs off to an additive mean (the
overall mean plus each value's main effect) with the pooled covariance; a value never seen is an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from genailab._version import __version__
from genailab.errors import InvalidInputError, MissingKeyError, UnknownLabelError
from genailab.foundation.recipes.latent_sampling import samples_to_anndata, synthetic_obs
from genailab.foundation.recipes.vae.model import LatentTokenVAE

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["COVARIANCES", "GaussianLatentPrior", "GroupGaussian"]

COVARIANCES = ("full", "diag")
_JITTER = 1e-6  # added to covariance diagonals before the Cholesky factorisation


@dataclass(frozen=True)
class GroupGaussian:
    """The Gaussian of one condition group in the flattened standardised latent space.

    Attributes
    ----------
    mean
        ``(D,)`` mean, ``D = m * d``.
    factor
        ``(D, D)`` lower Cholesky factor of the covariance (``full``) or ``(D,)`` standard deviations
        (``diag``).
    n_cells
        Training cells of the group (0 for an additive back-off).
    weight
        Weight of the pooled covariance in this group's covariance (1 = pooled only).
    """

    mean: np.ndarray
    factor: np.ndarray
    n_cells: int
    weight: float

    def draw(self, eps: np.ndarray) -> np.ndarray:
        """Latents from standard normal draws.

        Parameters
        ----------
        eps
            ``(n, D)`` standard normal draws.

        Returns
        -------
        ``(n, D)`` latents ``mean + factor @ eps``.
        """
        if self.factor.ndim == 1:
            return self.mean + eps * self.factor
        return self.mean + eps @ self.factor.T


def _factor(cov: np.ndarray, covariance: str) -> np.ndarray:
    """Cholesky factor (full) or standard deviations (diag) of ``cov`` with a small jitter."""
    if covariance == "diag":
        return np.sqrt(np.clip(np.diag(cov), 0.0, None) + _JITTER)
    d = cov.shape[0]
    scale = max(float(np.trace(cov)) / max(d, 1), 1.0)
    for k in range(6):  # raise the jitter until the factorisation succeeds (near-singular covariances)
        try:
            return np.linalg.cholesky(cov + (_JITTER * scale * 10**k) * np.eye(d))
        except np.linalg.LinAlgError:
            continue
    raise InvalidInputError("a group covariance is not positive definite even after regularisation.")


def _labels(adata: AnnData, keys: Sequence[str]) -> np.ndarray:
    """``(n, K)`` string labels of the condition keys, checked present."""
    missing = [k for k in keys if k not in adata.obs.columns]
    if missing:
        raise MissingKeyError(
            f"condition key(s) {missing} are not obs columns; available: {list(adata.obs.columns)[:20]}."
        )
    if not keys:
        return np.zeros((adata.n_obs, 0), dtype=object)
    return np.stack([adata.obs[k].astype(str).to_numpy(dtype=object) for k in keys], axis=1)


def _condition_columns(
    keys: tuple[str, ...],
    categories: Mapping[str, Sequence[str]],
    n: int | None,
    conditions: Mapping[str, Any] | None,
    like: AnnData | None,
) -> tuple[dict[str, np.ndarray], int]:
    """``({key: (n,) values}, n)`` from ``like`` or from ``n`` and ``conditions``, checked against ``categories``."""
    if like is not None:
        if n is not None or conditions is not None:
            raise InvalidInputError("give either like=REFERENCE or n and conditions, not both.")
        labels = _labels(like, keys)
        columns, n_cells = {k: labels[:, j] for j, k in enumerate(keys)}, like.n_obs
    else:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InvalidInputError(f"n={n!r} must be a positive integer.")
        conditions = dict(conditions or {})
        unknown = [k for k in conditions if k not in keys]
        if unknown:
            raise InvalidInputError(f"unknown condition key(s) {unknown}; this prior is conditioned on {list(keys)}.")
        missing = [k for k in keys if k not in conditions]
        if missing:
            raise InvalidInputError(f"conditions must give a value for {missing} (the prior's keys are {list(keys)}).")
        n_cells = int(n)
        columns = {}
        for k in keys:
            v = conditions[k]
            v = np.asarray(v, dtype=object).astype(str) if np.ndim(v) else np.full(n_cells, str(v), dtype=object)
            if len(v) != n_cells:
                raise InvalidInputError(f"condition {k!r} has {len(v)} values, expected {n_cells}.")
            columns[k] = v
    for k, v in columns.items():
        unseen = sorted({str(x) for x in v} - set(categories[k]))
        if unseen:
            raise UnknownLabelError(
                f"condition {k}={unseen[:10]} was not seen in training; known values: {list(categories[k])[:20]}."
            )
    return columns, n_cells


class GaussianLatentPrior:
    """Per-condition-group Gaussians in a frozen VAE's standardised latent space, decoded to counts.

    Build it with :meth:`fit`; :meth:`sample` has the interface and output of
    :meth:`LatentDiffusionModel.sample <genailab.foundation.recipes.LatentDiffusionModel.sample>`
    (without guidance, steps or sampler). It is an in-memory baseline: fitting takes one encoder pass.

    Parameters
    ----------
    vae
        The trained, calibrated VAE whose latents the Gaussians describe.
    condition_keys
        The obs keys the groups are formed from, in order.
    groups
        ``{condition tuple: GroupGaussian}``.
    categories
        ``{key: values seen in training}``.
    main_effects
        ``{key: {value: (D,) mean of the cells with that value}}`` for the additive back-off.
    overall
        The pooled Gaussian (overall mean, pooled within-group covariance).
    covariance, shrinkage
        The settings the groups were fitted with.

    Examples
    --------
    >>> prior = GaussianLatentPrior.fit(vae, train, ("cell_type", "donor"))  # doctest: +SKIP
    >>> syn = prior.sample(like=heldout, seed=0)  # doctest: +SKIP
    """

    def __init__(
        self,
        vae: LatentTokenVAE,
        condition_keys: Sequence[str],
        groups: Mapping[tuple[str, ...], GroupGaussian],
        categories: Mapping[str, Sequence[str]],
        main_effects: Mapping[str, Mapping[str, np.ndarray]],
        overall: GroupGaussian,
        *,
        covariance: str = "full",
        shrinkage: float = 32.0,
    ) -> None:
        self.vae = vae
        self.condition_keys = tuple(condition_keys)
        self.groups = dict(groups)
        self.categories = {k: tuple(v) for k, v in categories.items()}
        self.main_effects = {k: dict(v) for k, v in main_effects.items()}
        self.overall = overall
        self.covariance = covariance
        self.shrinkage = float(shrinkage)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        vae: LatentTokenVAE,
        adata: AnnData,
        condition_keys: Sequence[str],
        *,
        covariance: str = "full",
        shrinkage: float = 32.0,
        batch_size: int = 1024,
    ) -> GaussianLatentPrior:
        """Fit one Gaussian per condition group to the standardised training latents of ``adata``.

        Parameters
        ----------
        vae
            A trained, calibrated :class:`~genailab.foundation.recipes.LatentTokenVAE` (frozen: only
            its encoder runs here).
        adata
            Training cells (genes aligned to the VAE's; obs holding the condition keys).
        condition_keys
            obs columns whose value tuples form the groups (treated as categorical labels). The
            VAE's batch key, when among them, also picks the decoder's batch and library model.
        covariance
            ``"full"`` or ``"diag"``.
        shrinkage
            Pseudo-count ``k`` of cells: a group of ``n`` cells mixes its own covariance with the
            pooled within-group covariance at weight ``k / (k + n - 1)`` on the pooled one (0 = no
            shrinkage; groups of one cell always use the pooled covariance).
        batch_size
            Encoder batch size.

        Returns
        -------
        The fitted prior.

        Raises
        ------
        InvalidInputError
            On an unknown ``covariance``, a negative ``shrinkage``, an uncalibrated VAE or fewer than 2
            cells.
        MissingKeyError
            If a condition key is not an obs column.
        """
        if covariance not in COVARIANCES:
            raise InvalidInputError(f"covariance={covariance!r}; expected one of {list(COVARIANCES)}.")
        if not np.isfinite(shrinkage) or shrinkage < 0:
            raise InvalidInputError(f"shrinkage={shrinkage!r} must be a finite number >= 0.")
        if not bool(vae.calibrated):
            raise InvalidInputError("the VAE is not calibrated (its latent scale is unknown); train it with fit().")
        keys = tuple(condition_keys)
        labels = _labels(adata, keys)  # (n, K)
        if adata.n_obs < 2:
            raise InvalidInputError(f"fit needs at least 2 cells, got {adata.n_obs}.")
        z = vae.get_latent(adata, key=None, standardize=True, batch_size=batch_size)
        z = z.reshape(z.shape[0], -1).astype(np.float64)  # (n, D)
        tuples = [tuple(row) for row in labels] if keys else [()] * z.shape[0]
        index: dict[tuple[str, ...], list[int]] = {}
        for i, t in enumerate(tuples):
            index.setdefault(t, []).append(i)
        stats = {}
        scatter = np.zeros((z.shape[1], z.shape[1]))
        for t, rows in index.items():
            zg = z[rows]
            mean = zg.mean(0)
            centred = zg - mean
            stats[t] = (mean, centred.T @ centred, len(rows))  # (D,), (D, D) scatter, n
            scatter += stats[t][1]
        dof = z.shape[0] - len(index)
        pooled = scatter / dof if dof > 0 else np.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1])
        groups = {}
        for t, (mean, sc, n) in stats.items():
            weight = 1.0 if n < 2 else (shrinkage / (shrinkage + n - 1) if shrinkage > 0 else 0.0)
            own = sc / (n - 1) if n >= 2 else pooled
            groups[t] = GroupGaussian(mean, _factor((1 - weight) * own + weight * pooled, covariance), n, weight)
        categories = {k: tuple(sorted(set(labels[:, j].tolist()))) for j, k in enumerate(keys)}
        main_effects = {k: {v: z[labels[:, j] == v].mean(0) for v in categories[k]} for j, k in enumerate(keys)}
        overall = GroupGaussian(z.mean(0), _factor(pooled, covariance), z.shape[0], 1.0)
        return cls(vae, keys, groups, categories, main_effects, overall, covariance=covariance, shrinkage=shrinkage)

    # ------------------------------------------------------------------ sampling
    def group_of(self, values: tuple[str, ...]) -> GroupGaussian:
        """The Gaussian for one condition tuple.

        Parameters
        ----------
        values
            One value per condition key, each seen in training.

        Returns
        -------
        The group's Gaussian; for a combination not seen in training, the overall mean plus each
        value's main effect with the pooled covariance (``n_cells`` 0).
        """
        if values in self.groups:
            return self.groups[values]
        mean = self.overall.mean.copy()
        for key, value in zip(self.condition_keys, values, strict=True):
            mean += self.main_effects[key][value] - self.overall.mean
        return GroupGaussian(mean, self.overall.factor, 0, 1.0)

    def sample_latents(self, columns: Mapping[str, np.ndarray], n: int, seed: int = 0) -> tuple[torch.Tensor, int]:
        """Standardised latents for condition columns (values seen in training).

        One standard-normal draw per cell, in cell order, so a cell's latent depends on its group and
        the seed only.

        Parameters
        ----------
        columns
            ``{key: (n,) values}`` for every condition key.
        n
            Number of cells.
        seed
            Seed of the draws.

        Returns
        -------
        ``((n, m, d) float32 latents, number of cells drawn from an additive back-off)``.
        """
        m, d = self.vae.config.latent_shape
        eps = np.random.default_rng(seed).standard_normal((n, m * d))
        tuples = list(zip(*(np.asarray(columns[k]) for k in self.condition_keys), strict=True)) or [()] * n
        out = np.empty((n, m * d))
        by_group: dict[tuple[str, ...], list[int]] = {}
        for i, t in enumerate(tuples):
            by_group.setdefault(tuple(str(x) for x in t), []).append(i)
        backed_off = 0
        for t, rows in by_group.items():
            out[rows] = self.group_of(t).draw(eps[rows])
            backed_off += 0 if t in self.groups else len(rows)
        return torch.from_numpy(out.reshape(n, m, d).astype(np.float32)), backed_off

    def _batch_index(self, columns: Mapping[str, np.ndarray], n: int) -> torch.Tensor | None:
        """Decoder batch codes as ``LatentDiffusionModel`` sets them (-1 when the batch key is not a condition)."""
        vae = self.vae
        if vae.batch_column is None:
            return None
        batch_key = vae.registry.spec.batch_key
        if batch_key not in self.condition_keys:
            return torch.full((n,), -1, dtype=torch.long)
        cats = {c: i for i, c in enumerate(vae.registry.categories[batch_key])}
        return torch.tensor([cats.get(str(v), -1) for v in columns[batch_key]], dtype=torch.long)

    @torch.no_grad()
    def sample(
        self,
        n: int | None = None,
        conditions: Mapping[str, Any] | None = None,
        *,
        like: AnnData | None = None,
        seed: int = 0,
    ) -> AnnData:
        """Generate synthetic cells as integer counts drawn from the decoder's distribution.

        Parameters
        ----------
        n
            Number of cells (not with ``like``).
        conditions
            ``{key: value}`` (the same for every cell) or ``{key: [n values]}``; every condition key
            must be given. Not with ``like``.
        like
            A reference AnnData: one synthetic cell per reference cell, with its conditions.
        seed
            Seeds the latents, the library sizes and the count draws.

        Returns
        -------
        AnnData laid out as :meth:`LatentDiffusionModel.sample
        <genailab.foundation.recipes.LatentDiffusionModel.sample>` lays it out: integer counts in
        ``X``, conditions and library sizes in ``obs``, the standardised latents in
        ``obsm["X_genailab_synthetic_latent"]`` and the settings in ``uns["genailab_sampling"]``.

        Raises
        ------
        UnknownLabelError
            If a condition value was not seen in training.
        InvalidInputError
            On inconsistent arguments.
        """
        columns, n_cells = _condition_columns(self.condition_keys, self.categories, n, conditions, like)
        z, backed_off = self.sample_latents(columns, n_cells, seed)
        vae = self.vae.eval()
        batch_index = self._batch_index(columns, n_cells)
        # Decoded exactly as LatentDiffusionModel decodes (same method, same seed offsets): only the prior differs.
        counts, library = vae.sample_counts(z, batch_index, seed=seed)
        obs = synthetic_obs(columns, n_cells, self.condition_keys)
        settings = {
            "generator": f"GaussianLatentPrior({self.covariance})",
            "shrinkage": self.shrinkage,
            "n_backed_off": backed_off,
            "seed": seed,
            "mode": "like" if like is not None else "conditions",
            "genailab_version": __version__,
        }
        return samples_to_anndata(counts, z, obs, library, vae.genes, settings)

    def summary(self) -> list[dict[str, Any]]:
        """One row per group: its condition values, training cells and pooled-covariance weight.

        Returns
        -------
        A list of dicts ``{key: value, ..., "n_cells", "pooled_weight"}``, sorted by group.
        """
        return [
            {**dict(zip(self.condition_keys, t, strict=True)), "n_cells": g.n_cells, "pooled_weight": g.weight}
            for t, g in sorted(self.groups.items())
        ]

    def __repr__(self) -> str:
        m, d = self.vae.config.latent_shape
        return (
            f"GaussianLatentPrior(keys={list(self.condition_keys)}, groups={len(self.groups)}, "
            f"covariance={self.covariance!r}, shrinkage={self.shrinkage:g}, latent={m}x{d})"
        )
