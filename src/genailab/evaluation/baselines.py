"""Simple perturbation-response baselines that any learned model must beat.

Each baseline is a class registered by name in :data:`BASELINES` (importing this module registers every one,
those of :mod:`genailab.evaluation.baselines_data` included) with the protocol

``fit(train: PseudoBulk, *, priors: GenePriors | None = None, validation: PseudoBulk | None = None) -> self``
    learn from training pseudo-bulk profiles (and, for some, prior gene features or validation conditions carved
    from training); a baseline that cannot be fitted from what it was given raises
    :class:`~genailab.errors.InvalidInputError`;
``predict(condition: str, context: str = "") -> np.ndarray | None``
    the predicted *mean* log-normalised expression ``(G,)`` of the cells with ``condition`` in ``context``,
    or ``None`` when the baseline does not apply to that query (e.g. ``additive`` without both singles).

Every prediction starts from the control mean of the query's context; a context without control cells in the
training data raises :class:`~genailab.errors.UnknownLabelError`.

=====================  =======================================================================================
``no_change``          the control mean.
``train_mean``         control + the mean delta of the training perturbations (Csendes et al., 2025).
``additive``           control + the sum of the single-gene deltas (Norman et al., Science 2019;
                       Ahlmann-Eltze et al., Nat Methods 2025).
``linear``             control + a bilinear ridge model on gene PCs and prior perturbation features
                       (Ahlmann-Eltze et al., Nat Methods 2025).
``context_mean``       control + the mean delta of the same condition in the other contexts (scGen-style
                       transfer; Lotfollahi et al., Nat Methods 2019).
``shrunk_additive``    control + ``a`` x the sum of the single deltas, ``a`` fitted on validation combinations
                       (:mod:`~genailab.evaluation.baselines_data`, as the two below).
``knn_prior``          control + the mean delta of the ``k`` trained agents nearest in prior-feature space.
``linear_data``        ``linear`` with perturbation embeddings from the training data (the perturbed gene's
                       row of the gene PCs).
=====================  =======================================================================================
"""

from __future__ import annotations

from typing import Self

import numpy as np

from genailab.errors import InvalidInputError
from genailab.evaluation.baselines_base import (
    BASELINES,
    BaselineBase,
    PerturbationBaseline,
    additive_delta,
    check_k_ridge,
    ridge_bilinear,
)
from genailab.evaluation.baselines_data import KNNPriorBaseline, LinearDataBaseline, ShrunkAdditiveBaseline
from genailab.evaluation.pseudobulk import PseudoBulk
from genailab.foundation.perturbation.priors import GenePriors

__all__ = [
    "BASELINES",
    "AdditiveBaseline",
    "BaselineBase",
    "ContextMeanBaseline",
    "KNNPriorBaseline",
    "LinearBaseline",
    "LinearDataBaseline",
    "NoChangeBaseline",
    "PerturbationBaseline",
    "ShrunkAdditiveBaseline",
    "TrainMeanBaseline",
]


@BASELINES.register("no_change")
class NoChangeBaseline(BaselineBase):
    """Predict the control mean of the query context: the perturbation has no effect."""

    def predict(self, condition: str, context: str = "") -> np.ndarray | None:
        """Predict the control mean of ``context``.

        Parameters
        ----------
        condition
            Condition label (ignored).
        context
            Context label.

        Returns
        -------
        np.ndarray
            Shape ``(G,)``.
        """
        return self._control(context).copy()


@BASELINES.register("train_mean")
class TrainMeanBaseline(BaselineBase):
    """Control plus the mean delta of all training perturbations.

    The mean is over the perturbed groups of the query's context when it has any, else over every context.
    A strong baseline for unseen perturbations (Csendes et al., "Benchmarking foundation cell models for
    post-perturbation RNA-seq prediction", BMC Genomics 2025).
    """

    def fit(self, train: PseudoBulk, *, priors: GenePriors | None = None, validation: PseudoBulk | None = None) -> Self:
        """Store the training pseudo-bulk and its mean deltas.

        Parameters
        ----------
        train
            Training pseudo-bulk; at least one perturbed group must share its context with control cells.
        priors
            Unused.
        validation
            Unused.

        Returns
        -------
        Self
            The fitted baseline.
        """
        self._check_inputs(train, priors, validation)
        keys = train.perturbed_keys()
        if not keys:
            raise InvalidInputError(
                "train_mean needs at least one perturbed group in a context with control cells; train has none."
            )
        self._train = train
        deltas = {k: train.delta(*k) for k in keys}
        self._overall = np.mean(list(deltas.values()), axis=0)
        self._by_context = {
            x: np.mean([d for (_, cx), d in deltas.items() if cx == x], axis=0) for x in {cx for _, cx in keys}
        }
        return self

    def predict(self, condition: str, context: str = "") -> np.ndarray | None:
        """Predict control + mean training delta.

        Parameters
        ----------
        condition
            Condition label (ignored: every perturbation gets the same prediction).
        context
            Context label.

        Returns
        -------
        np.ndarray
            Shape ``(G,)``.
        """
        control = self._control(context)
        return control + self._by_context.get(context, self._overall)


@BASELINES.register("additive")
class AdditiveBaseline(BaselineBase):
    """Control plus the sum of the single-perturbation deltas of the query's constituents in its context.

    The additive model of combinatorial perturbations (Norman et al., Science 2019), which deep models rarely
    beat (Ahlmann-Eltze, Huber & Anders, Nat Methods 2025). Returns ``None`` unless every constituent single
    was measured in training in that context; a seen single is predicted as its own training mean.
    """

    def predict(self, condition: str, context: str = "") -> np.ndarray | None:
        """Predict control + sum of single deltas.

        Parameters
        ----------
        condition
            Condition label, e.g. ``"SET+KLF1"``.
        context
            Context label.

        Returns
        -------
        np.ndarray or None
            Shape ``(G,)``; ``None`` if a constituent single is not in training in ``context``.
        """
        control = self._control(context)
        summed = additive_delta(self._fitted(), condition, context)
        return None if summed is None else control + summed


@BASELINES.register("linear")
class LinearBaseline(BaselineBase):
    """Bilinear ridge model on gene embeddings and prior perturbation embeddings.

    The linear baseline of Ahlmann-Eltze, Huber & Anders ("Deep-learning-based gene perturbation effect
    prediction does not yet outperform simple linear baselines", Nat Methods 2025). With ``Y`` the training
    deltas ``(G, P)`` (one column per perturbed training group, contexts pooled) and ``b`` its row means,
    ``G_emb`` the top-``k`` principal components of ``Y - b`` (gene scores ``U * S``), and ``P_emb`` ``(P, d)``
    the prior features of each training perturbation (a combination sums its singles' features; centred on the
    training mean ``p_bar`` so that ``b`` is the intercept)::

        W = (G_embᵀ G_emb + λI)⁻¹ G_embᵀ (Y - b) P_emb (P_embᵀ P_emb + λI)⁻¹
        prediction = control(context) + G_emb W (p - p_bar) + b

    Groups whose genes are not all in ``priors`` are left out of the fit, and predicted as ``None``.

    Parameters
    ----------
    k
        Number of gene principal components (capped at the number of genes and of usable training groups).
    ridge
        Ridge penalty ``λ``.
    """

    def __init__(self, *, k: int = 10, ridge: float = 0.1) -> None:
        self.k, self.ridge = check_k_ridge(k, ridge)

    def _embedding(self, condition: str) -> np.ndarray | None:
        singles = self._fitted().singles(condition)
        if not singles:
            return None
        feats, has = self._priors.lookup(list(singles))
        if not has.all():
            return None
        return feats.astype(np.float64).sum(axis=0)  # (d,)

    def fit(self, train: PseudoBulk, *, priors: GenePriors | None = None, validation: PseudoBulk | None = None) -> Self:
        """Fit ``G_emb``, ``b``, ``p_bar`` and ``W`` on the training deltas.

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
            If ``priors`` is ``None`` or no perturbed training group has priors for all its genes.
        """
        self._check_inputs(train, priors, validation)
        if priors is None:
            raise InvalidInputError(
                "the linear baseline needs gene priors (priors=GenePriors, e.g. from build_gene_priors) to embed "
                "perturbations; got priors=None."
            )
        self._train, self._priors = train, priors
        columns, embeddings = [], []
        for cond, ctx in train.perturbed_keys():
            emb = self._embedding(cond)
            if emb is not None:
                columns.append(train.delta(cond, ctx))
                embeddings.append(emb)
        if not columns:
            self._train = None
            raise InvalidInputError(
                f"the linear baseline found no perturbed training group whose genes all have priors "
                f"(conditions: {[c for c in train.conditions if c != train.control][:10]}); check the gene names."
            )
        y = np.stack(columns, axis=1)  # (G, P)
        p = np.stack(embeddings, axis=0)  # (P, d)
        self.b_ = y.mean(axis=1)  # (G,)
        self.p_bar_ = p.mean(axis=0)  # (d,)
        y_c, p_c = y - self.b_[:, None], p - self.p_bar_
        u, s, _ = np.linalg.svd(y_c, full_matrices=False)
        k = min(self.k, s.size)
        self.gene_embedding_ = u[:, :k] * s[:k]  # (G, K)
        self.w_ = ridge_bilinear(self.gene_embedding_, y_c, p_c, self.ridge)  # (K, d)
        self.n_fit_ = len(columns)
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
            Shape ``(G,)``; ``None`` if a gene of ``condition`` has no prior features.
        """
        control = self._control(context)
        if condition == self._fitted().control:
            return control.copy()
        emb = self._embedding(condition)
        if emb is None:
            return None
        return control + self.gene_embedding_ @ (self.w_ @ (emb - self.p_bar_)) + self.b_


@BASELINES.register("context_mean")
class ContextMeanBaseline(BaselineBase):
    """Control of the query context plus the mean delta of the same condition in the other training contexts.

    The delta-transfer idea of scGen (Lotfollahi, Wolf & Theis, Nat Methods 2019) in expression space: a
    perturbation is assumed to shift every context the same way. Returns ``None`` when the condition was not
    trained in any other context with controls.
    """

    def predict(self, condition: str, context: str = "") -> np.ndarray | None:
        """Predict control + mean delta of ``condition`` in the other contexts.

        Parameters
        ----------
        condition
            Condition label.
        context
            Context label.

        Returns
        -------
        np.ndarray or None
            Shape ``(G,)``; ``None`` if ``condition`` is not in training in another context with controls.
        """
        train = self._fitted()
        control = self._control(context)
        if condition == train.control:
            return control.copy()
        others = [x for c, x in train.perturbed_keys() if c == condition and x != context]
        if not others:
            return None
        return control + np.mean([train.delta(condition, x) for x in others], axis=0)
