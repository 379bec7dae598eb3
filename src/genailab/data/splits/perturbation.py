"""Perturbation split kinds on ``obs``: unseen single perturbations, combinations and contexts.

- ``"perturbation"``: :func:`holdout_perturbation_split`, single perturbations;
- ``"combination"``: :func:`combination_split`, doubles with 0, 1 or 2 seen singles;
- ``"context"``: :func:`context_split`, a perturbation in one context only.

Labels are parsed with :func:`genailab.data.labels.split_label`, the one label grammar.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from genailab.data.splits.base import (
    SPLITS,
    Split,
    available_values,
    carve_random_val,
    check_val_seed,
    frame_labels,
    holdout_count,
    label_parts,
    obs_frame,
    values_tuple,
)
from genailab.errors import InvalidInputError

__all__ = ["combination_split", "context_split", "holdout_perturbation_split"]


@SPLITS.register("perturbation")
def holdout_perturbation_split(
    obs: pd.DataFrame,
    perturbation_key: str,
    perturbations: str | Sequence[str] | None = None,
    *,
    n_holdout: int | float | None = None,
    control: str = "control",
    delimiter: str = "+",
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Hold out single perturbations: every cell whose condition contains one of them goes to test.

    Parameters
    ----------
    obs
        ``adata.obs`` (or the AnnData itself).
    perturbation_key
        ``obs`` column of conditions (``control``, ``KLF1``, ``SET+KLF1``).
    perturbations
        Single perturbations to hold out; ``None`` draws ``n_holdout`` of them at random with ``seed``.
    n_holdout
        Number (int) or fraction (float in (0, 1)) of the singles to draw when ``perturbations`` is None.
    control
        Label of control cells (always in train).
    delimiter
        Separator of combination labels.
    val_fraction
        Fraction of the non-test, non-control cells used for validation.
    seed
        Seed of the draws.

    Returns
    -------
    A :class:`Split` named ``"perturbation"``; ``params['held_out']`` lists the held-out singles.
    """
    frame = obs_frame(obs)
    labels = frame_labels(frame, perturbation_key, "perturbation_key")
    val_fraction, seed = check_val_seed(val_fraction, seed)
    uniq, inv, parts = label_parts(labels, control, delimiter, perturbation_key)
    singles = sorted({p for ps in parts for p in ps})
    if not singles:
        raise InvalidInputError(f"obs[{perturbation_key!r}] has no perturbed cells (only {control!r}).")
    rng = np.random.default_rng(seed)
    if perturbations is not None:
        if n_holdout is not None:
            raise InvalidInputError("pass either perturbations=... or n_holdout=..., not both.")
        held = values_tuple(perturbations, "perturbations")
        unknown = [p for p in held if p not in singles]
        if unknown:
            shown = ", ".join(repr(s) for s in singles[:30])
            raise InvalidInputError(
                f"perturbations {unknown} not found in obs[{perturbation_key!r}]; available single "
                f"perturbations: {shown}."
            )
    else:
        if n_holdout is None:
            raise InvalidInputError("pass perturbations=[...] to hold out, or n_holdout=k to draw k singles at random.")
        k = holdout_count(n_holdout, len(singles), "n_holdout")
        if k >= len(singles):
            raise InvalidInputError(
                f"n_holdout={n_holdout!r} would hold out {k} of the {len(singles)} single perturbations; "
                "leave at least one for training."
            )
        held = tuple(sorted(rng.choice(np.array(singles, dtype=object), size=k, replace=False).tolist()))
    held_set = set(held)
    test_label = np.array([bool(held_set.intersection(ps)) for ps in parts])
    control_label = np.array([ps == () for ps in parts])
    is_test = test_label[inv]
    is_control = control_label[inv]
    train_val, val = carve_random_val(np.flatnonzero(~is_test & ~is_control), val_fraction, rng)
    train = np.union1d(train_val, np.flatnonzero(is_control))
    params = {
        "seed": seed,
        "perturbation_key": perturbation_key,
        "held_out": list(held),
        "control": control,
        "delimiter": delimiter,
        "val_fraction": val_fraction,
        "n_obs": len(labels),
    }
    return Split("perturbation", train=train, val=val, test=np.flatnonzero(is_test), params=params)


@SPLITS.register("combination")
def combination_split(
    obs: pd.DataFrame,
    perturbation_key: str,
    *,
    seen: Literal[0, 1, 2],
    n_holdout: int | float | None = None,
    control: str = "control",
    delimiter: str = "+",
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Hold out double perturbations of which ``seen`` (0, 1 or 2) constituent singles are trained on.

    Only doubles whose two singles are both present in the data as single-perturbation cells
    qualify. Held-out doubles go to test. With ``seen=2`` both singles stay in train. With ``seen=1``
    one single of each held-out double (chosen with ``seed``) is removed, with ``seen=0`` both are:
    every cell whose condition contains a removed single (the single itself or another combination
    with it) is removed from train and validation and is *not* put in test, so test metrics cover
    the held-out doubles only. Those cells are listed in ``params['excluded']`` and the removed singles
    in ``params['removed_singles']`` (evaluate them separately as unseen singles if you like).
    Doubles are drawn in a seeded random order and kept when they are consistent with the doubles
    already held out (a single kept for one double is never removed for another).

    Parameters
    ----------
    obs
        ``adata.obs`` (or the AnnData itself).
    perturbation_key
        ``obs`` column of conditions.
    seen
        How many singles of each held-out double stay in train: 0, 1 or 2.
    n_holdout
        Number (int) or fraction (float in (0, 1)) of the qualifying doubles to hold out; ``None``
        holds out as many as possible.
    control
        Label of control cells (always in train).
    delimiter
        Separator of combination labels.
    val_fraction
        Fraction of the remaining non-control cells used for validation.
    seed
        Seed of the draws.

    Returns
    -------
    A :class:`Split` named ``"combination"``; ``params`` holds ``held_out`` (doubles), ``removed_singles``,
    ``excluded`` (row indices) and ``qualifying`` (all doubles that could be held out).

    Raises
    ------
    InvalidInputError
        If no double qualifies, or fewer than ``n_holdout`` can be held out consistently.
    """
    if isinstance(seen, bool) or seen not in (0, 1, 2):
        raise InvalidInputError(f"seen={seen!r} is not allowed; expected 0, 1 or 2.")
    frame = obs_frame(obs)
    labels = frame_labels(frame, perturbation_key, "perturbation_key")
    val_fraction, seed = check_val_seed(val_fraction, seed)
    uniq, inv, parts = label_parts(labels, control, delimiter, perturbation_key)
    single_labels = {ps[0] for ps in parts if len(ps) == 1}
    doubles = [(str(lab), ps) for lab, ps in zip(uniq.tolist(), parts, strict=True) if len(ps) == 2]
    qualifying = [(lab, ps) for lab, ps in doubles if ps[0] in single_labels and ps[1] in single_labels]
    if not qualifying:
        shown = ", ".join(repr(lab) for lab, _ in doubles[:10]) or "none"
        raise InvalidInputError(
            f"no double perturbation in obs[{perturbation_key!r}] has both of its singles present as "
            "single-perturbation "
            f"cells, so none can be held out with seen={seen}; doubles found: {shown}."
        )
    rng = np.random.default_rng(seed)
    target = len(qualifying) if n_holdout is None else holdout_count(n_holdout, len(qualifying), "n_holdout")
    if target > len(qualifying):
        raise InvalidInputError(
            f"n_holdout={n_holdout!r} exceeds the {len(qualifying)} qualifying doubles "
            f"({', '.join(lab for lab, _ in qualifying)})."
        )
    held: list[str] = []
    removed: set[str] = set()
    protected: set[str] = set()
    for i in rng.permutation(len(qualifying)):
        if len(held) == target:
            break
        label, (a, b) = qualifying[int(i)]
        if seen == 2:
            if a in removed or b in removed:
                continue
            protected.update((a, b))
        elif seen == 0:
            if a in protected or b in protected:
                continue
            removed.update((a, b))
        else:
            options = [(a, b), (b, a)] if rng.random() < 0.5 else [(b, a), (a, b)]
            choice = next(
                ((keep, drop) for keep, drop in options if keep not in removed and drop not in protected),
                None,
            )
            if choice is None:
                continue
            protected.add(choice[0])
            removed.add(choice[1])
        held.append(label)
    if n_holdout is not None and len(held) < target:
        raise InvalidInputError(
            f"only {len(held)} of the requested {target} doubles can be held out consistently with "
            f"seen={seen}; lower n_holdout."
        )
    held_set = set(held)
    test_label = np.array([lab in held_set for lab in uniq.tolist()])
    excluded_label = np.array([bool(removed.intersection(ps)) for ps in parts]) & ~test_label
    control_label = np.array([ps == () for ps in parts])
    is_test, is_excluded, is_control = test_label[inv], excluded_label[inv], control_label[inv]
    train_val, val = carve_random_val(np.flatnonzero(~is_test & ~is_excluded & ~is_control), val_fraction, rng)
    train = np.union1d(train_val, np.flatnonzero(is_control))
    params = {
        "seed": seed,
        "perturbation_key": perturbation_key,
        "seen": int(seen),
        "held_out": sorted(held),
        "removed_singles": sorted(removed),
        "excluded": np.flatnonzero(is_excluded).tolist(),
        "qualifying": [lab for lab, _ in qualifying],
        "control": control,
        "delimiter": delimiter,
        "val_fraction": val_fraction,
        "n_obs": len(labels),
    }
    return Split("combination", train=train, val=val, test=np.flatnonzero(is_test), params=params)


@SPLITS.register("context")
def context_split(
    obs: pd.DataFrame,
    perturbation_key: str,
    context_key: str,
    holdouts: Sequence[tuple[str, str]],
    *,
    control: str = "control",
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Hold out perturbation ``P`` in context ``C`` (a cell line, a donor) for each pair in ``holdouts``.

    Test holds the cells whose condition is exactly ``P`` and whose context is ``C``. ``P`` stays in
    train in the other contexts and the control cells of ``C`` stay in train, so the task is to
    transfer the response of ``P`` to context ``C``.

    Parameters
    ----------
    obs
        ``adata.obs`` (or the AnnData itself).
    perturbation_key
        ``obs`` column of conditions.
    context_key
        ``obs`` column of contexts (e.g. ``cell_type``).
    holdouts
        ``(perturbation, context)`` pairs.
    control
        Label of control cells (always in train; cannot be held out).
    val_fraction
        Fraction of the remaining non-control cells used for validation.
    seed
        Seed of the validation draw.

    Returns
    -------
    A :class:`Split` named ``"context"``; ``params['only_in_holdout_context']`` lists held-out
    perturbations that no training context has.

    Raises
    ------
    InvalidInputError
        For a malformed pair, an unknown perturbation or context, or a pair without cells.
    """
    frame = obs_frame(obs)
    labels = frame_labels(frame, perturbation_key, "perturbation_key")
    contexts = frame_labels(frame, context_key, "context_key")
    val_fraction, seed = check_val_seed(val_fraction, seed)
    if isinstance(holdouts, (str, bytes)) or not isinstance(holdouts, Sequence) or len(holdouts) == 0:
        raise InvalidInputError(
            f"holdouts={holdouts!r} must be a non-empty sequence of (perturbation, context) pairs, "
            "e.g. [('MAPK1', 'U87MG')]."
        )
    present_p, present_c = set(labels.tolist()), set(contexts.tolist())
    is_test = np.zeros(len(labels), dtype=bool)
    pairs: list[list[str]] = []
    for pair in holdouts:
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InvalidInputError(f"holdouts item {pair!r} must be a (perturbation, context) pair.")
        p, c = str(pair[0]), str(pair[1])
        if p == control:
            raise InvalidInputError(f"holdouts item {pair!r}: control cells cannot be held out; they stay in train.")
        if p not in present_p:
            raise InvalidInputError(
                f"perturbation {p!r} not found in obs[{perturbation_key!r}]; available: {available_values(labels)}."
            )
        if c not in present_c:
            raise InvalidInputError(
                f"context {c!r} not found in obs[{context_key!r}]; available: {available_values(contexts)}."
            )
        cells = (labels == p) & (contexts == c)
        if not cells.any():
            in_ctx = sorted(set(contexts[labels == p].tolist()))
            raise InvalidInputError(
                f"no cells have perturbation {p!r} in context {c!r}; {p!r} occurs in contexts {in_ctx}."
            )
        is_test |= cells
        pairs.append([p, c])
    is_control = labels == control
    pool = np.flatnonzero(~is_test & ~is_control)
    train_val, val = carve_random_val(pool, val_fraction, np.random.default_rng(seed))
    train = np.union1d(train_val, np.flatnonzero(is_control))
    trained = set(labels[~is_test].tolist())
    params = {
        "seed": seed,
        "perturbation_key": perturbation_key,
        "context_key": context_key,
        "holdouts": pairs,
        "only_in_holdout_context": sorted({p for p, _ in pairs if p not in trained}),
        "control": control,
        "val_fraction": val_fraction,
        "n_obs": len(labels),
    }
    return Split("context", train=train, val=val, test=np.flatnonzero(is_test), params=params)
