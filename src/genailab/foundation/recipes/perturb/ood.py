"""The OOD score of a perturbation query: ensemble disagreement combined with distance in prior space.

Ensemble disagreement alone misses unseen agents: members that learned a smooth map from prior
features agree on an agent they never saw (on Norman's unseen singles the disagreement-only score
was inverted, AUROC 0.25-0.31). The combined score of a query ``(condition, context)`` is

``score = (disagreement / s_dis + distance / s_dist) / 2 + pair_term * [a pair of its agents was never trained]``

- ``disagreement``: variance across members of the mean predicted latent shift;
- ``distance``: the largest, over the condition's agents, cosine distance in prior-feature space to
  the nearest trained agent (:func:`~genailab.foundation.perturbation.priors.prior_distance`; 0 for a
  trained agent, the maximum 2 for an agent without priors);
- ``s_dis`` and ``s_dist``: the medians of the two components on the *validation conditions* (unseen
  but in-distribution, carved from the training data in the image of the test split), so both are
  about 1 there (``s_dist`` is floored at :data:`MIN_DISTANCE_SCALE`: validation conditions of
  trained agents have distance 0);
- the pair term flags combinations whose agents were never trained together.

The fitted :class:`OODModel` is stored in ``calibration.json``; directories written before it keep
the disagreement-only score (``disagreement / ood_reference``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np

from genailab.errors import InvalidInputError
from genailab.foundation.perturbation.priors import prior_distance
from genailab.foundation.perturbation.vocab import PerturbationVocab

if TYPE_CHECKING:
    from genailab.foundation.perturbation.priors import GenePriors

__all__ = ["MIN_DISTANCE_SCALE", "PAIR_TERM", "OODModel", "condition_distance", "fit_ood_model", "trained_support"]

#: Added to the score of a combination with a pair of agents never trained together.
PAIR_TERM = 0.25
#: Floor of the prior-distance scale (cosine distance).
MIN_DISTANCE_SCALE = 0.1
_EPS = 1e-12


@dataclass
class OODModel:
    """The fitted combination of the OOD score's components (see the module docstring).

    Attributes
    ----------
    disagreement_scale
        Median ensemble disagreement on the validation conditions (on the training groups without any).
    distance_scale
        Median prior distance on the validation conditions (at least :data:`MIN_DISTANCE_SCALE`).
    trained_agents
        The agents of the training conditions (the reference of the prior distance).
    trained_pairs
        The agent pairs of the training combinations, each sorted.
    pair_term
        Added for a combination with an untrained pair.
    """

    disagreement_scale: float
    distance_scale: float
    trained_agents: tuple[str, ...]
    trained_pairs: tuple[tuple[str, str], ...] = ()
    pair_term: float = PAIR_TERM
    _pairs: set[tuple[str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.trained_agents = tuple(str(a) for a in self.trained_agents)
        self.trained_pairs = tuple(tuple(sorted((str(a), str(b)))) for a, b in self.trained_pairs)
        self._pairs = set(self.trained_pairs)

    def unseen_pair(self, agents: Sequence[str]) -> bool:
        """Whether two of ``agents`` were never trained together (``False`` for fewer than two)."""
        return any(tuple(sorted(p)) not in self._pairs for p in combinations(agents, 2))

    def score(self, disagreement: float, distance: float, agents: Sequence[str]) -> float:
        """The combined OOD score of a query with these components and ``agents``."""
        dis = float(disagreement) / max(self.disagreement_scale, _EPS)
        dist = float(distance) / max(self.distance_scale, MIN_DISTANCE_SCALE)
        return 0.5 * (dis + dist) + (self.pair_term if self.unseen_pair(agents) else 0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "disagreement_scale": self.disagreement_scale,
            "distance_scale": self.distance_scale,
            "trained_agents": list(self.trained_agents),
            "trained_pairs": [list(p) for p in self.trained_pairs],
            "pair_term": self.pair_term,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OODModel:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                disagreement_scale=float(data["disagreement_scale"]),
                distance_scale=float(data["distance_scale"]),
                trained_agents=tuple(data["trained_agents"]),
                trained_pairs=tuple((str(a), str(b)) for a, b in data.get("trained_pairs", [])),
                pair_term=float(data.get("pair_term", PAIR_TERM)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidInputError(f"malformed OOD model: {err}") from err


def trained_support(
    labels: Iterable[str], vocab: PerturbationVocab
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Agents and sorted agent pairs of the (training) condition ``labels`` (the control has none)."""
    agents: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    for label in set(map(str, labels)):
        parts = vocab.parts(label)
        agents.update(parts)
        pairs.update(tuple(sorted(p)) for p in combinations(parts, 2))
    return tuple(sorted(agents)), tuple(sorted(pairs))


def condition_distance(priors: GenePriors | None, agents: Sequence[str], trained_agents: Sequence[str]) -> float:
    """Largest prior distance of a condition's ``agents`` to the trained agents (0 for the control)."""
    if not agents:
        return 0.0
    return float(prior_distance(priors, list(agents), list(trained_agents)).max())


def fit_ood_model(
    trained_agents: Sequence[str],
    trained_pairs: Sequence[tuple[str, str]],
    val_disagreement: Sequence[float],
    val_distance: Sequence[float],
    *,
    fallback_disagreement: float,
) -> OODModel:
    """Scales from the validation conditions' components (``fallback_disagreement`` without any)."""
    dis = float(np.median(val_disagreement)) if len(val_disagreement) else float(fallback_disagreement)
    dist = float(np.median(val_distance)) if len(val_distance) else MIN_DISTANCE_SCALE
    return OODModel(
        disagreement_scale=dis,
        distance_scale=max(dist, MIN_DISTANCE_SCALE),
        trained_agents=tuple(trained_agents),
        trained_pairs=tuple(trained_pairs),
    )
