"""The perturbation-baseline protocol, its registry and the plumbing every baseline shares.

The baselines themselves live in :mod:`genailab.evaluation.baselines` (which imports every baseline module, so
that importing it fills :data:`BASELINES`) and :mod:`genailab.evaluation.baselines_data`. Each follows

``fit(train: PseudoBulk, *, priors: GenePriors | None = None, validation: PseudoBulk | None = None) -> self``
    learn from training pseudo-bulk profiles (and, for some, prior gene features or validation conditions
    carved from training, never the test conditions); a baseline that cannot be fitted from what it was given
    raises :class:`~genailab.errors.InvalidInputError` (a workflow skips it);
``predict(condition: str, context: str = "") -> np.ndarray | None``
    the predicted *mean* log-normalised expression ``(G,)`` of the cells with ``condition`` in ``context``,
    or ``None`` when the baseline does not apply to that query.
"""

from __future__ import annotations

import numbers
from typing import Protocol, Self

import numpy as np

from genailab.errors import InvalidInputError
from genailab.evaluation.pseudobulk import PseudoBulk
from genailab.foundation.perturbation.priors import GenePriors
from genailab.registry import Registry

__all__ = ["BASELINES", "BaselineBase", "PerturbationBaseline", "additive_delta", "check_k_ridge", "ridge_bilinear"]


class PerturbationBaseline(Protocol):
    """The protocol every registered baseline follows."""

    def fit(self, train: PseudoBulk, *, priors: GenePriors | None = None, validation: PseudoBulk | None = None) -> Self:
        """Learn from training pseudo-bulk profiles (and optionally prior gene features and validation groups)."""
        ...

    def predict(self, condition: str, context: str = "") -> np.ndarray | None:
        """Predicted mean log-normalised expression ``(G,)``, or ``None`` when not applicable."""
        ...


BASELINES: Registry[type[PerturbationBaseline]] = Registry("perturbation baseline")


class BaselineBase:
    """Shared plumbing: input checks at ``fit`` and the control mean of the query context.

    Subclasses override :meth:`fit` (calling :meth:`_check_inputs` and setting ``self._train``) when they learn
    more than the training pseudo-bulk itself, and implement ``predict``.
    """

    _train: PseudoBulk | None = None

    def fit(self, train: PseudoBulk, *, priors: GenePriors | None = None, validation: PseudoBulk | None = None) -> Self:
        """Store the training pseudo-bulk.

        Parameters
        ----------
        train
            Training pseudo-bulk profiles.
        priors
            Prior gene features (unused by this baseline).
        validation
            Validation pseudo-bulk (unused by this baseline).

        Returns
        -------
        Self
            The fitted baseline.
        """
        self._check_inputs(train, priors, validation)
        self._train = train
        return self

    @staticmethod
    def _check_inputs(train: PseudoBulk, priors: GenePriors | None, validation: PseudoBulk | None = None) -> None:
        if not isinstance(train, PseudoBulk):
            raise InvalidInputError(f"train must be a PseudoBulk (see pseudobulk()), got {type(train).__name__}.")
        if priors is not None and not isinstance(priors, GenePriors):
            raise InvalidInputError(f"priors must be GenePriors or None, got {type(priors).__name__}.")
        if validation is None:
            return
        if not isinstance(validation, PseudoBulk):
            raise InvalidInputError(
                f"validation must be a PseudoBulk (see pseudobulk()) or None, got {type(validation).__name__}."
            )
        if validation.genes != train.genes:
            extra = sorted(set(validation.genes) ^ set(train.genes))[:5]
            raise InvalidInputError(
                f"validation and train must have the same genes in the same order; got {validation.n_genes} and "
                f"{train.n_genes} genes (in one but not the other: {extra or 'none, the order differs'})."
            )
        if validation.library_key != train.library_key:
            raise InvalidInputError(
                f"validation (library_key={validation.library_key!r}) and train (library_key={train.library_key!r}) "
                "must be normalised the same way."
            )

    def _fitted(self) -> PseudoBulk:
        if self._train is None:
            raise InvalidInputError(f"{type(self).__name__} is not fitted; call fit(train) before predict().")
        return self._train

    def _control(self, context: str) -> np.ndarray:
        return self._fitted().control_mean(context)


def additive_delta(train: PseudoBulk, condition: str, context: str = "") -> np.ndarray | None:
    """Sum of the training deltas of the single perturbations of ``condition`` in ``context``.

    Parameters
    ----------
    train
        Training pseudo-bulk.
    condition
        Condition label, e.g. ``"SET+KLF1"``; the control label gives zeros.
    context
        Context label; it must have control cells in ``train``.

    Returns
    -------
    np.ndarray or None
        Shape ``(G,)``; ``None`` if a constituent single was not measured in training in ``context``.
    """
    singles = train.singles(condition)
    if not all(train.has(s, context) for s in singles):
        return None
    return sum((train.delta(s, context) for s in singles), np.zeros(train.n_genes))


def check_k_ridge(k: int, ridge: float) -> tuple[int, float]:
    """Validate the number of gene components and the ridge penalty of a bilinear baseline.

    Parameters
    ----------
    k
        Number of gene principal components; a positive integer.
    ridge
        Ridge penalty; a finite non-negative number.

    Returns
    -------
    tuple[int, float]
        ``(k, float(ridge))``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k={k!r} must be a positive integer (number of gene principal components).")
    if isinstance(ridge, bool) or not isinstance(ridge, numbers.Real) or not np.isfinite(ridge) or ridge < 0:
        raise InvalidInputError(f"ridge={ridge!r} must be a finite non-negative number.")
    return k, float(ridge)


def ridge_bilinear(
    gene_embedding: np.ndarray, y_centred: np.ndarray, p_centred: np.ndarray, ridge: float
) -> np.ndarray:
    """Ridge solution ``W`` of ``Y ≈ G W Pᵀ`` (Ahlmann-Eltze, Huber & Anders, Nat Methods 2025).

    ``W = (GᵀG + λI)⁻¹ Gᵀ Y P (PᵀP + λI)⁻¹``.

    Parameters
    ----------
    gene_embedding
        ``G``, shape ``(n_genes, K)``.
    y_centred
        ``Y``, shape ``(n_genes, P)``: one column per training perturbation, centred by its row means.
    p_centred
        ``P``, shape ``(P, d)``: one embedding per training perturbation, centred by its mean.
    ridge
        ``λ``.

    Returns
    -------
    np.ndarray
        ``W``, shape ``(K, d)``.
    """
    g = gene_embedding
    left = np.linalg.solve(g.T @ g + ridge * np.eye(g.shape[1]), g.T @ y_centred)  # (K, P)
    right = np.linalg.solve(p_centred.T @ p_centred + ridge * np.eye(p_centred.shape[1]), p_centred.T).T  # (P, d)
    return left @ right
