"""The base latent shift every agent starts from: the mean training response in its context.

Most of what an unseen perturbation does is often the response shared by all perturbations of the
screen in that context (the signal the train-mean baseline exploits; Csendes et al. 2025). With
``PerturbDeltaConfig.base_shift='context_mean'`` the recipe fits, on the training cells and before
the members, the mean *per-agent* observed latent shift of the training perturbations in each context

``base(x) = mean_c [(mean z of c's cells in x - mean z of x's control cells) / n_agents(c)]``

(each training condition ``c`` of context ``x`` weighs the same; standardised latents of the frozen
VAE). A prediction for a condition of ``n`` agents starts from ``n * base(x)`` and the members learn
the deviation from it; an unseen context takes the mean of ``base`` over the training contexts.
The fitted :class:`BaseShift` is stored in ``calibration.json`` (absent in directories written
before it existed: no base).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from genailab.errors import InvalidInputError
from genailab.foundation.perturbation.vocab import PerturbationVocab
from genailab.foundation.recipes.perturb.encoding import Cells

if TYPE_CHECKING:
    from genailab.foundation.recipes.perturb.model import PerturbDeltaModel

__all__ = ["BaseShift", "base_for_codes", "codes_context_label", "fit_base_shift"]


@dataclass
class BaseShift:
    """Per context label, the mean per-agent training latent shift ``(m, d)``, and their mean.

    Attributes
    ----------
    contexts
        Context label (context values joined by ``|``; ``''`` without context keys) -> ``(m, d)``.
    mean
        ``(m, d)`` mean over the contexts (the base of an unseen context).
    """

    contexts: dict[str, np.ndarray]
    mean: np.ndarray

    def lookup(self, label: str | None) -> np.ndarray:
        """``(m, d)`` base of context ``label`` (the mean over contexts for ``None`` or an unseen label)."""
        if label is not None and label in self.contexts:
            return self.contexts[label]
        return self.mean

    def tensor(self, label: str | None) -> torch.Tensor:
        """:meth:`lookup` as a float32 tensor."""
        return torch.as_tensor(np.asarray(self.lookup(label), dtype=np.float32))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "contexts": {k: np.asarray(v, np.float64).tolist() for k, v in self.contexts.items()},
            "mean": np.asarray(self.mean, np.float64).tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaseShift:
        """Inverse of :meth:`to_dict`."""
        try:
            contexts = {str(k): np.asarray(v, np.float64) for k, v in data["contexts"].items()}
            mean = np.asarray(data["mean"], np.float64)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InvalidInputError(f"malformed base shift: {err}") from err
        if mean.ndim != 2 or any(v.shape != mean.shape for v in contexts.values()):
            raise InvalidInputError(
                f"malformed base shift: shapes {[v.shape for v in contexts.values()]} / {mean.shape}."
            )
        return cls(contexts, mean)


def fit_base_shift(
    cells: Cells,
    rows: np.ndarray,
    vocab: PerturbationVocab,
    *,
    previous: BaseShift | None = None,
) -> BaseShift | None:
    """Fit the base shift on the training cells ``rows`` (controls and perturbed cells).

    Parameters
    ----------
    cells
        Encoded cells (standardised latents, labels, context labels).
    rows
        The training rows.
    vocab
        Splits condition labels into agents (and names the control).
    previous
        A base fitted before (e.g. the pretrained model's, when adapting to a new context): its
        contexts absent from ``rows`` are kept, the others replaced.

    Returns
    -------
    The fitted :class:`BaseShift`, or ``previous`` when ``rows`` hold no context with both control
    and perturbed cells.
    """
    rows = np.asarray(rows, dtype=np.int64)
    labels, contexts = cells.labels[rows].astype(str), cells.contexts[rows].astype(str)
    z = cells.z[torch.as_tensor(rows)].double().numpy()  # (n, m, d)
    fitted: dict[str, np.ndarray] = {}
    for ctx in sorted(set(contexts.tolist())):
        in_ctx = contexts == ctx
        ctrl = in_ctx & (labels == vocab.control)
        if not ctrl.any():
            continue
        z_ctrl = z[ctrl].mean(0)
        shifts = []
        for cond in sorted(set(labels[in_ctx & ~ctrl].tolist())):
            n_agents = max(1, len(vocab.parts(cond)))
            shifts.append((z[in_ctx & (labels == cond)].mean(0) - z_ctrl) / n_agents)
        if shifts:
            fitted[ctx] = np.mean(shifts, axis=0)
    if not fitted:
        return previous
    merged = {**(previous.contexts if previous is not None else {}), **fitted}
    return BaseShift(merged, np.mean(list(merged.values()), axis=0))


def codes_context_label(keys: Sequence[str], categories: Mapping[str, Sequence[str]], codes: np.ndarray) -> str | None:
    """The context label of ``(K,)`` context ``codes`` (``None`` when a code is unseen, ``-1``)."""
    codes = np.asarray(codes).reshape(-1)
    if len(codes) != len(keys):
        raise InvalidInputError(f"got {len(codes)} context codes for the context keys {tuple(keys)}.")
    if (codes < 0).any():
        return None
    return "|".join(str(categories[k][int(c)]) for k, c in zip(keys, codes.tolist(), strict=True))


def base_for_codes(model: PerturbDeltaModel, codes: np.ndarray) -> torch.Tensor | None:
    """``(m, d)`` base shift of a query with ``(K,)`` context ``codes`` (``None`` when the model has none)."""
    if model.config.base_shift == "none" or model.base_shift is None:
        return None
    return model.base_shift.tensor(codes_context_label(model.config.context_keys, model.context_categories, codes))
