"""Baselines a reviewer runs before believing a perturbation model: shrinkage, prior-space kNN, data-linear.

=====================  =======================================================================================
``shrunk_additive``    control + ``a`` x (sum of the single deltas), ``a`` fitted by least squares on validation
                       combinations. A model that only shrinks its deltas "beats additive on L2" under the
                       usual normalisation; this baseline makes that visible.
``knn_prior``          control + the mean delta of the ``k`` trained single agents nearest in prior-feature
                       space (cosine similarity of :class:`~genailab.foundation.perturbation.GenePriors`),
                       summed over the agents of a combination.
``linear_data``        the linear baseline of Ahlmann-Eltze et al. (Nat Methods 2025) with perturbation
                       embeddings taken from the training data: a perturbed gene is embedded by its own row of
                       the gene principal components of the training deltas.
=====================  =======================================================================================

Registered in :data:`~genailab.evaluation.baselines_base.BASELINES`; import
:mod:`genailab.evaluation.baselines` to get every baseline registered.
"""

from __future__ import annotations

from typing import Self

import numpy as np

from genailab.errors import InvalidInputError
from genailab.evaluation.baselines_base import (
    BASELINES,
    BaselineBase,
    additive_delta,
    check_k_ridge,
    ridge_bilinear,
)
from genailab.evaluation.pseudobulk import PseudoBulk
from genailab.foundation.perturbation.priors import GenePriors

__all__ = ["KNNPriorBaseline", "LinearDataBaseline", "ShrunkAdditiveBaseline"]


@BASELINES.register("shrunk_additive")
class ShrunkAdditiveBaseline(BaselineBase):
    """Control plus a fitted scalar times the sum of the single-perturbation deltas.

    ``prediction = control(context) + a * sum_s delta_s(context)``, where ``a`` (:attr:`shrinkage`) minimises
    ``sum_v ||mean_v - control(context_v) - a * sum_s delta_s(context_v)||²`` over the *validation* combinations
    ``v`` (two or more singles) whose singles were all measured in training in that context; the control means
    and single deltas are the training ones, exactly as at prediction time. ``a < 1`` is pure shrinkage of the
    additive model, which lowers L2 without changing Pearson delta; any model should beat this baseline, not only
    ``additive``, before claiming an L2 win on combinations.

    Attributes
    ----------
    shrinkage
        The fitted ``a`` (``None`` before :meth:`fit`).
    n_fit_
        Number of validation combinations ``a`` was fitted on.
    """

    shrinkage: float | None = None

    def fit(self, train: PseudoBulk, *, priors: GenePriors | None = None, validation: PseudoBulk | None = None) -> Self:
        """Fit the shrinkage ``a`` on the validation combinations.

        Parameters
        ----------
        train
            Training pseudo-bulk (control means and single deltas).
        priors
            Unused.
        validation
            Validation pseudo-bulk (conditions carved from training, never the test set); it need not contain
            control cells. Required.

        Returns
        -------
        Self
            The fitted baseline.

        Raises
        ------
        InvalidInputError
            If ``validation`` is ``None`` or holds no combination whose singles are all in training in a context
            with training controls (or only combinations whose singles have zero deltas).
        """
        self._check_inputs(train, priors, validation)
        if validation is None:
            raise InvalidInputError(
                "shrunk_additive needs validation combinations (validation=PseudoBulk of held-out combinations "
                "carved from training, whose singles are all in training) to fit its shrinkage; got validation=None."
            )
        num = den = 0.0
        used = []
        for cond, ctx in validation.keys:
            if cond == validation.control or len(train.singles(cond)) < 2 or not train.has_control(ctx):
                continue
            summed = additive_delta(train, cond, ctx)
            if summed is None:
                continue
            observed = validation.mean(cond, ctx) - train.control_mean(ctx)
            num += float(observed @ summed)
            den += float(summed @ summed)
            used.append((cond, ctx))
        if not used or den <= 0.0:
            combos = [c for c, _ in validation.keys if len(validation.singles(c)) >= 2]
            raise InvalidInputError(
                "shrunk_additive needs validation combinations whose singles are all in training (in a context with "
                f"training controls) and have non-zero deltas; validation combinations: {combos[:10]} "
                f"({len(combos)} in all), usable: {len(used)}."
            )
        self._train = train
        self.shrinkage = num / den
        self.n_fit_ = len(used)
        return self

    def predict(self, condition: str, context: str = "") -> np.ndarray | None:
        """Predict control + ``a`` x sum of the single deltas.

        Parameters
        ----------
        condition
            Condition label, e.g. ``"SET+KLF1"``; the control label gives the control mean.
        context
            Context label.

        Returns
        -------
        np.ndarray or None
            Shape ``(G,)``; ``None`` if a constituent single is not in training in ``context``.
        """
        train = self._fitted()
        control = self._control(context)
        summed = additive_delta(train, condition, context)
        if summed is None:
            return None
        return control + self.shrinkage * summed


@BASELINES.register("knn_prior")
class KNNPriorBaseline(BaselineBase):
    """Control plus, for each agent of the query, the mean delta of its ``k`` nearest trained single agents.

    Neighbours are the single agents measured in training in the query's context (every context pooled, with an
    agent's deltas averaged over contexts, when the query's context has none) that have non-zero prior features,
    ranked by the cosine similarity of their prior features to the query agent's (ties broken by name). An agent
    measured in training is its own nearest neighbour. A combination sums its agents' predicted deltas, as
    ``additive`` does. The prior-space analogue of the kNN baselines that similarity-based methods are judged
    against (e.g. GEARS' gene-ontology similarity, Roohani et al., Nat Biotechnol 2024).

    Parameters
    ----------
    k
        Number of neighbours (fewer when fewer trained agents have priors).
    """

    def __init__(self, *, k: int = 5) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k={k!r} must be a positive integer (number of nearest trained agents).")
        self.k = k

    def fit(self, train: PseudoBulk, *, priors: GenePriors | None = None, validation: PseudoBulk | None = None) -> Self:
        """Index the trained single agents by their unit-norm prior features.

        Parameters
        ----------
        train
            Training pseudo-bulk.
        priors
            Prior gene features (required), e.g. from :func:`~genailab.foundation.perturbation.build_gene_priors`.
        validation
            Unused.

        Returns
        -------
        Self
            The fitted baseline.

        Raises
        ------
        InvalidInputError
            If ``priors`` is ``None`` or no single agent measured in training has non-zero prior features.
        """
        self._check_inputs(train, priors, validation)
        if priors is None:
            raise InvalidInputError(
                "knn_prior needs gene priors (priors=GenePriors, e.g. from build_gene_priors) to find the nearest "
                "trained agents; got priors=None."
            )
        by_context: dict[str, dict[str, np.ndarray]] = {}
        for cond, ctx in train.perturbed_keys():
            singles = train.singles(cond)
            if len(singles) == 1:
                by_context.setdefault(ctx, {})[singles[0]] = train.delta(cond, ctx)
        pooled: dict[str, list[np.ndarray]] = {}
        for deltas in by_context.values():
            for agent, d in deltas.items():
                pooled.setdefault(agent, []).append(d)
        self._priors = priors
        pools = {ctx: self._pool(deltas) for ctx, deltas in by_context.items()}
        self._pools = {ctx: pool for ctx, pool in pools.items() if pool is not None}
        self._pooled = self._pool({a: np.mean(ds, axis=0) for a, ds in pooled.items()})
        if self._pooled is None:
            raise InvalidInputError(
                f"knn_prior found no single agent in training with non-zero prior features (trained singles: "
                f"{sorted(pooled)[:10]}); check the gene names of the priors."
            )
        self._train = train
        return self

    def _unit_features(self, agents: list[str]) -> tuple[np.ndarray, np.ndarray]:
        feats, has = self._priors.lookup(agents)
        feats = feats.astype(np.float64)
        norm = np.linalg.norm(feats, axis=1)
        ok = has & (norm > 0)
        return np.divide(feats, norm[:, None], out=np.zeros_like(feats), where=ok[:, None]), ok

    def _pool(self, deltas: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        agents = sorted(deltas)
        unit, ok = self._unit_features(agents)
        if not ok.any():
            return None
        keep = np.flatnonzero(ok)
        return unit[keep], np.stack([deltas[agents[i]] for i in keep])  # (A, d), (A, G)

    def predict(self, condition: str, context: str = "") -> np.ndarray | None:
        """Predict control + sum over agents of the mean delta of their ``k`` nearest trained agents.

        Parameters
        ----------
        condition
            Condition label; the control label gives the control mean.
        context
            Context label.

        Returns
        -------
        np.ndarray or None
            Shape ``(G,)``; ``None`` if an agent of ``condition`` has no (or all-zero) prior features.
        """
        train = self._fitted()
        control = self._control(context)
        agents = list(train.singles(condition))
        if not agents:
            return control.copy()
        unit, ok = self._unit_features(agents)
        if not ok.all():
            return None
        features, deltas = self._pools.get(context, self._pooled)
        similarity = unit @ features.T  # (n_agents, A); pool rows are sorted by name, so a stable sort breaks ties
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, : self.k]
        return control + deltas[nearest].mean(axis=1).sum(axis=0)


@BASELINES.register("linear_data")
class LinearDataBaseline(BaselineBase):
    """Bilinear ridge model whose perturbation embeddings come from the training data itself.

    The "training data" variant of the linear baseline of Ahlmann-Eltze, Huber & Anders (Nat Methods 2025). With
    ``Y`` the training deltas ``(G, P)`` (one column per perturbed training group whose genes are all readout
    genes, contexts pooled), ``b`` its row means and ``G_emb`` the top-``k`` principal components of ``Y - b``
    (gene scores ``U * S``, one row per readout gene), a perturbation of gene ``g`` is embedded by ``G_emb[g]``
    (a combination sums its genes' rows; centred on the training mean ``p_bar``)::

        W = (G_embᵀ G_emb + λI)⁻¹ G_embᵀ (Y - b) P_emb (P_embᵀ P_emb + λI)⁻¹
        prediction = control(context) + G_emb W (p - p_bar) + b

    Any perturbed gene in the readout gets an embedding, measured as a perturbation in training or not; a
    perturbation of a gene outside the readout is predicted as ``None``.

    Parameters
    ----------
    k
        Number of gene principal components (capped at the rank of the training deltas).
    ridge
        Ridge penalty ``λ``.
    """

    def __init__(self, *, k: int = 10, ridge: float = 0.1) -> None:
        self.k, self.ridge = check_k_ridge(k, ridge)

    def _embedding(self, condition: str) -> np.ndarray | None:
        train = self._fitted()
        rows = [self._gene_index.get(s) for s in train.singles(condition)]
        if not rows or any(r is None for r in rows):
            return None
        return self.gene_embedding_[rows].sum(axis=0)  # (K,)

    def fit(self, train: PseudoBulk, *, priors: GenePriors | None = None, validation: PseudoBulk | None = None) -> Self:
        """Fit ``G_emb``, ``b``, ``p_bar`` and ``W`` on the training deltas.

        Parameters
        ----------
        train
            Training pseudo-bulk.
        priors
            Unused (the embeddings come from ``train``).
        validation
            Unused.

        Returns
        -------
        Self
            The fitted baseline.

        Raises
        ------
        InvalidInputError
            If no perturbed training group has all its genes among the readout genes.
        """
        self._check_inputs(train, priors, validation)
        gene_index = {g: i for i, g in enumerate(train.genes)}
        keys = [(c, x) for c, x in train.perturbed_keys() if all(s in gene_index for s in train.singles(c))]
        if not keys:
            raise InvalidInputError(
                "linear_data found no perturbed training group whose genes are all readout genes (conditions: "
                f"{[c for c in train.conditions if c != train.control][:10]}); a perturbation is embedded by its "
                "gene's row of the readout, so its gene must be measured."
            )
        y = np.stack([train.delta(c, x) for c, x in keys], axis=1)  # (G, P)
        self.b_ = y.mean(axis=1)  # (G,)
        y_c = y - self.b_[:, None]
        u, s, _ = np.linalg.svd(y_c, full_matrices=False)
        rank = int((s > s.max(initial=0.0) * max(y_c.shape) * np.finfo(np.float64).eps).sum())
        k = max(1, min(self.k, rank))
        self.gene_embedding_ = u[:, :k] * s[:k]  # (G, K)
        self._train, self._gene_index = train, gene_index
        p = np.stack([self._embedding(c) for c, _ in keys], axis=0)  # (P, K)
        self.p_bar_ = p.mean(axis=0)  # (K,)
        if rank == 0:  # every training delta is the same: b alone predicts them
            self.w_ = np.zeros((k, k))
        else:
            self.w_ = ridge_bilinear(self.gene_embedding_, y_c, p - self.p_bar_, self.ridge)  # (K, K)
        self.n_fit_ = len(keys)
        return self

    def predict(self, condition: str, context: str = "") -> np.ndarray | None:
        """Predict control + ``G_emb W (p - p_bar) + b``.

        Parameters
        ----------
        condition
            Condition label; the control label gives the control mean.
        context
            Context label.

        Returns
        -------
        np.ndarray or None
            Shape ``(G,)``; ``None`` if a gene of ``condition`` is not a readout gene.
        """
        control = self._control(context)
        if condition == self._fitted().control:
            return control.copy()
        emb = self._embedding(condition)
        if emb is None:
            return None
        return control + self.gene_embedding_ @ (self.w_ @ (emb - self.p_bar_)) + self.b_
