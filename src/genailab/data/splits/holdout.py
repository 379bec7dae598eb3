"""Explicit hold-outs (split kind ``"holdout"``) and validation conditions for ``genailab perturb train``.

The other split kinds live beside this module in :mod:`genailab.data.splits`; this one adds

- :func:`holdout_split`: ``--holdout P`` (a single agent everywhere, or one combination) and
  ``--holdout P@C`` (perturbation ``P`` only in context ``C``);
- :func:`carve_validation`: validation *conditions* carved from the training ones in the image of the
  test set (unseen agents, unseen combinations or unseen (perturbation, context) pairs), used to stop
  training early and to calibrate uncertainty, so no hyper-parameter ever sees the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from genailab.data.labels import split_label
from genailab.data.splits.base import SPLITS, Split
from genailab.errors import InvalidInputError

__all__ = ["VAL_KINDS", "carve_validation", "holdout_split", "parse_holdouts"]

VAL_KINDS = ("agent", "combination", "pair")


def parse_holdouts(items: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """``['KLF1', 'MAPK1@U87MG']`` -> ``(['KLF1'], [('MAPK1', 'U87MG')])``."""
    everywhere, pairs = [], []
    for item in items:
        text = str(item).strip()
        if not text:
            raise InvalidInputError("--holdout got an empty value; expected P or P@CONTEXT.")
        if "@" in text:
            p, _, c = text.partition("@")
            if not p or not c or "@" in c:
                raise InvalidInputError(f"--holdout {item!r} must be P@CONTEXT with one '@'.")
            pairs.append((p, c))
        else:
            everywhere.append(text)
    return everywhere, pairs


@SPLITS.register("holdout")
def holdout_split(
    labels: np.ndarray,
    contexts: np.ndarray,
    *,
    everywhere: Sequence[str] = (),
    pairs: Sequence[tuple[str, str]] = (),
    control: str = "control",
    delimiter: str = "+",
    name: str = "holdout",
    params: dict[str, Any] | None = None,
) -> Split:
    """Hold out perturbations everywhere (``P``) or in one context (``P@C``).

    A held-out *single* agent is unseen: cells of ``P`` go to test and every combination containing
    ``P`` is excluded from training too (listed in ``params['excluded']``). A held-out combination
    removes only that combination. A pair removes ``P`` in context ``C`` only.

    Raises
    ------
    InvalidInputError
        For a perturbation or pair without cells, a held-out control, or an empty test set.
    """
    labels = np.asarray(labels, dtype=object).astype(str)
    contexts = np.asarray(contexts, dtype=object).astype(str)
    present = set(labels.tolist())
    is_test = np.zeros(len(labels), dtype=bool)
    excluded = np.zeros(len(labels), dtype=bool)
    parts = {lab: split_label(lab, control, delimiter, key=None) for lab in present}
    for p in everywhere:
        if p == control:
            raise InvalidInputError("--holdout control: control cells cannot be held out; they stay in train.")
        if p not in present:
            shown = ", ".join(sorted(present - {control})[:30])
            raise InvalidInputError(f"--holdout {p!r} matches no cells; perturbations in the data: {shown}.")
        is_test |= labels == p
        if len(split_label(p, control, delimiter, key=None)) == 1:
            with_p = [lab for lab, ps in parts.items() if p in ps and lab != p]
            excluded |= np.isin(labels, with_p)
    for p, c in pairs:
        if p == control:
            raise InvalidInputError(f"--holdout {p}@{c}: control cells cannot be held out.")
        cells = (labels == p) & (contexts == c)
        if not cells.any():
            where = sorted(set(contexts[labels == p].tolist()))
            raise InvalidInputError(
                f"--holdout {p}@{c} matches no cells; {p!r} occurs in contexts {where}"
                if where
                else f"--holdout {p}@{c}: perturbation {p!r} is not in the data."
            )
        is_test |= cells
    if not is_test.any():
        raise InvalidInputError("the held-out set is empty; name perturbations with --holdout or choose a --split.")
    excluded &= ~is_test
    train = np.flatnonzero(~is_test & ~excluded)
    return Split(
        name,
        train=train,
        val=np.array([], dtype=np.int64),
        test=np.flatnonzero(is_test),
        params={
            **(params or {}),
            "held_out": sorted(set(everywhere)),
            "held_out_pairs": [list(p) for p in pairs],
            "excluded": np.flatnonzero(excluded).tolist(),
            "control": control,
            "delimiter": delimiter,
            "n_obs": len(labels),
        },
    )


def carve_validation(
    split: Split,
    labels: np.ndarray,
    contexts: np.ndarray,
    *,
    kind: str,
    fraction: float,
    seed: int,
    control: str = "control",
    delimiter: str = "+",
    eligible: Sequence[str] | None = None,
) -> Split:
    """Move validation *conditions* out of ``split.train`` into ``split.val``.

    Parameters
    ----------
    split
        A split whose ``train`` holds controls and training perturbations.
    labels, contexts
        Per-cell condition and context labels.
    kind
        ``agent`` (hold out single agents: every training condition containing one), ``combination``
        (hold out multi-agent conditions) or ``pair`` (hold out a condition in one context where it
        is also trained in another).
    fraction
        Share of the eligible units to hold out (at least one when there are three or more; none
        when ``fraction == 0``).
    seed
        Seed of the draw.
    eligible
        Agents the model can embed without having trained on them (those with prior features);
        ``None`` = any. ``agent`` draws only these; ``combination`` draws only combinations whose
        agents are each eligible or trained in another condition.

    Returns
    -------
    The split with ``val`` filled and ``params['val_conditions']`` listing the (condition, context) pairs.
    """
    if kind not in VAL_KINDS:
        raise InvalidInputError(f"kind={kind!r} is not allowed; expected one of {VAL_KINDS}.")
    labels = np.asarray(labels, dtype=object).astype(str)
    contexts = np.asarray(contexts, dtype=object).astype(str)
    train = np.asarray(split.train)
    pert = train[labels[train] != control]
    rng = np.random.default_rng(seed)
    uniq = sorted(set(labels[pert].tolist()))
    parts = {lab: split_label(lab, control, delimiter, key=None) for lab in uniq}
    if kind == "agent":
        units = sorted({a for lab in uniq for a in parts[lab] if len(parts[lab]) == 1})
        if eligible is not None:
            units = [u for u in units if u in set(eligible)]
    elif kind == "combination":
        known = None if eligible is None else set(eligible)

        def embeddable(lab: str) -> bool:
            others = {a for o in uniq if o != lab for a in parts[o]}
            return known is None or all(a in known or a in others for a in parts[lab])

        units = [lab for lab in uniq if len(parts[lab]) > 1 and embeddable(lab)]
    else:
        ctx_of = {lab: set(contexts[pert][labels[pert] == lab].tolist()) for lab in uniq}
        units = [f"{lab}@{c}" for lab in uniq if len(ctx_of[lab]) > 1 for c in sorted(ctx_of[lab])]
    k = int(round(fraction * len(units)))
    if fraction > 0 and len(units) >= 3:
        k = min(max(k, 1), len(units) - 1)
    else:
        k = min(k, max(len(units) - 1, 0))
    chosen = sorted(rng.choice(np.array(units, dtype=object), size=k, replace=False).tolist()) if k else []
    is_val = np.zeros(len(labels), dtype=bool)
    for unit in chosen:
        if kind == "agent":
            is_val |= np.isin(labels, [lab for lab in uniq if unit in parts[lab]])
        elif kind == "combination":
            is_val |= labels == unit
        else:
            lab, _, c = unit.partition("@")
            is_val |= (labels == lab) & (contexts == c)
    val = train[is_val[train]]
    keys = sorted({(labels[r], contexts[r]) for r in val.tolist()})
    return Split(
        split.name,
        train=np.setdiff1d(train, val),
        val=val,
        test=split.test,
        params={**split.params, "val_kind": kind, "val_units": chosen, "val_conditions": [list(k) for k in keys]},
    )
