"""The perturbation vocabulary: condition labels -> padded agent ids and doses."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from genailab.data.spec import parse_dose, split_label
from genailab.errors import InvalidInputError, UnknownLabelError

__all__ = ["PerturbationVocab"]

_OTHER_DELIMITERS = ("+", "_", ",", ";", "|", "&", "/")


@dataclass(frozen=True)
class PerturbationVocab:
    """Agents (genes or compounds) a perturbation model can encode.

    Parameters
    ----------
    agents
        Agent names; the first ``n_trained`` were seen in training (they have identity vectors), the
        rest are known only through prior features.
    n_trained
        Number of agents seen in training.
    control
        The control label (no agent).
    delimiter
        Separator of combination labels (``'SET+KLF1'``).
    """

    agents: tuple[str, ...]
    n_trained: int
    control: str = "control"
    delimiter: str = "+"
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.delimiter or self.delimiter.isspace():
            raise InvalidInputError(f"delimiter={self.delimiter!r} must be a non-blank string such as '+'.")
        if self.delimiter in self.control:
            raise InvalidInputError(
                f"the control label {self.control!r} contains the combination delimiter {self.delimiter!r}; "
                "choose another delimiter (e.g. combination_delimiter='|') or rename the control."
            )
        if len(set(self.agents)) != len(self.agents):
            raise InvalidInputError("agents must be unique.")
        clash = [a for a in self.agents if self.delimiter in a]
        if clash:
            raise InvalidInputError(
                f"agent names {clash[:5]} contain the combination delimiter {self.delimiter!r}, so combination "
                "labels would be ambiguous; choose another delimiter."
            )
        if not 1 <= self.n_trained <= len(self.agents):
            raise InvalidInputError(f"n_trained={self.n_trained} must be in [1, {len(self.agents)}].")
        object.__setattr__(self, "_index", {a: i for i, a in enumerate(self.agents)})

    @classmethod
    def build(
        cls,
        conditions: Iterable[str],
        *,
        control: str = "control",
        delimiter: str = "+",
        prior_agents: Sequence[str] = (),
    ) -> PerturbationVocab:
        """Vocabulary of the agents in training ``conditions`` followed by the other ``prior_agents``."""
        if delimiter in control:
            cls((), 1, control, delimiter)  # raises the delimiter-clash error
        trained = sorted({a for c in set(conditions) for a in split_label(str(c), control, delimiter, key=None)})
        if not trained:
            raise InvalidInputError(
                f"the training data has no perturbed cells (every condition is the control {control!r})."
            )
        known = set(trained)
        rest = sorted({str(a) for a in prior_agents if str(a) not in known and delimiter not in str(a)})
        return cls(tuple(trained) + tuple(rest), len(trained), control, delimiter)

    # ------------------------------------------------------------------ queries
    def parts(self, label: str) -> tuple[str, ...]:
        """Agents of a condition label (``()`` for the control)."""
        parts = split_label(str(label), self.control, self.delimiter, key=None)
        if len(set(parts)) != len(parts):
            raise InvalidInputError(f"perturbation {label!r} lists an agent twice.")
        return parts

    def is_trained(self, agent: str) -> bool:
        """Whether ``agent`` was seen in training."""
        i = self._index.get(agent)
        return i is not None and i < self.n_trained

    def unseen(self, label: str) -> tuple[str, ...]:
        """Agents of ``label`` that were not seen in training."""
        return tuple(a for a in self.parts(label) if not self.is_trained(a))

    def _unknown_error(self, label: str, agent: str) -> UnknownLabelError:
        hint = ""
        other = [d for d in _OTHER_DELIMITERS if d != self.delimiter and d in agent]
        if other:
            hint = f" It contains {other[0]!r}; combinations are joined with {self.delimiter!r} in this model."
        return UnknownLabelError(
            f"perturbation {label!r}: agent {agent!r} was never seen in training and has no prior features "
            f"(gene sets / GRN), so the model cannot embed it.{hint} Add a prior source that covers it "
            "(priors.gene_sets / priors.grn) or choose another perturbation."
        )

    def encode(
        self, labels: Sequence[str], doses: Sequence[Any] | None = None, *, n_slots: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Padded agent ids ``(n, S)`` (``-1`` = no agent) and doses ``(n, S)`` of condition labels.

        Parameters
        ----------
        labels
            Condition labels, e.g. ``['control', 'KLF1', 'SET+KLF1']``.
        doses
            Per label a dose (number or ``'1+0.5'`` matching the agents); ``None`` = dose 1.
        n_slots
            Set size ``S`` (default: the largest combination among ``labels``, at least 1).
        """
        uniq, inv = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
        parts = [self.parts(u) for u in uniq.tolist()]
        for label, ps in zip(uniq.tolist(), parts, strict=True):
            for a in ps:
                if a not in self._index:
                    raise self._unknown_error(label, a)
        s = max([len(p) for p in parts] + [1]) if n_slots is None else int(n_slots)
        if any(len(p) > s for p in parts):
            raise InvalidInputError(f"a perturbation has more than n_slots={s} agents.")
        table = np.full((len(uniq), s), -1, dtype=np.int64)
        for i, ps in enumerate(parts):
            table[i, : len(ps)] = [self._index[a] for a in ps]
        ids = table[inv]
        dose = np.where(ids >= 0, 1.0, 0.0).astype(np.float32)
        if doses is not None:
            if len(doses) != len(labels):
                raise InvalidInputError(f"doses has {len(doses)} entries but labels has {len(labels)}.")
            cache: dict[Any, tuple[float, ...]] = {}
            for row, value in enumerate(doses):
                n = int((ids[row] >= 0).sum())
                if n == 0:
                    continue
                key = value if isinstance(value, (str, int, float)) else str(value)
                parsed = cache.get(key) or cache.setdefault(key, parse_dose(value, self.delimiter, key="dose"))
                if len(parsed) == 1:
                    parsed = parsed * n
                if len(parsed) != n:
                    raise InvalidInputError(
                        f"dose {value!r} of perturbation {labels[row]!r} has {len(parsed)} parts for {n} agents."
                    )
                dose[row, :n] = parsed
        return ids, dose

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "agents": list(self.agents),
            "n_trained": self.n_trained,
            "control": self.control,
            "delimiter": self.delimiter,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PerturbationVocab:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(tuple(data["agents"]), int(data["n_trained"]), str(data["control"]), str(data["delimiter"]))
        except (KeyError, TypeError) as err:
            raise InvalidInputError(f"malformed perturbation vocabulary: {err}") from err
