"""Observed single-agent responses: the anchors a combination of seen agents is composed from.

A latent-shift model squeezes every response through the VAE, and on Norman even decoding the
held-out cells' own latent shift (the VAE oracle) loses to the gene-space additive baseline on L2:
the bottleneck costs the genes that respond most. With ``PerturbDeltaConfig.composition='anchored'``
(the default of new models) the recipe keeps, for every agent with single-agent training cells in a
context, its observed response in both spaces (fitted on the training cells only):

- ``response`` ``r_a``: mean log-normalised expression of the agent's cells minus that of the
  context's control cells (the model's library rule), ``(G,)``;
- ``shift`` ``s_a``: mean standardised latent of the agent's cells minus the controls', ``(m, d)``;
- ``stderr``: the standard error of ``r_a`` per gene (from the cells' variance), ``(G,)``.

A query of agents ``A`` in that context is then predicted, per member ``k``, as

``control mean + D_k(sum_a u_a + I_k) + sum_{a anchored} w_a * (r_a - D_k(s_a))``

with ``u_a = s_a`` for an anchored agent and the member's own single-agent shift otherwise, ``I_k``
the member's interaction (its shift for the combination minus the sum of its single-agent shifts)
``D_k`` the decoded mean shift and, per gene, ``w_a = b / (b + stderr^2)`` with ``b = max(e^2 - stderr^2, 0)``
(``e = r_a - D_k(s_a)``): the empirical-Bayes weight of the observed response against the decoded one, whose
squared bias ``b`` estimates; the residual shrinks toward the decoded latent where the response is noisy.
A seen single is its observed response where it was measured precisely; a double of two seen
singles is the gene-space additive response plus what the decoder's non-linearity and the learned
interaction make of the sum; unseen agents go through the model as before (``u_a`` learned,
no residual). The fitted :class:`ObservedSingles` is stored in ``observed_singles.safetensors``
(absent in directories written before it: ``composition='latent'``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from genailab.constants import BATCH_KEYS
from genailab.data.counts import log_normalize
from genailab.errors import CheckpointError
from genailab.foundation.perturbation.vocab import PerturbationVocab
from genailab.foundation.recipes.perturb.encoding import Cells
from genailab.io import atomic_write

__all__ = ["OBSERVED_SINGLES_NAME", "ObservedSingles", "fit_observed_singles"]

OBSERVED_SINGLES_NAME = "observed_singles.safetensors"


@dataclass
class ObservedSingles:
    """Observed single-agent responses per (agent, context).

    Attributes
    ----------
    keys
        ``(agent, context label)`` of each row.
    responses
        ``(N, G)`` gene-space responses ``r_a`` (log-normalised, minus the control mean).
    shifts
        ``(N, m, d)`` standardised latent shifts ``s_a``.
    stderr
        ``(N, G)`` standard errors of ``responses``.
    n_cells
        ``(N,)`` cells behind each row.
    """

    keys: list[tuple[str, str]]
    responses: np.ndarray
    shifts: np.ndarray
    stderr: np.ndarray
    n_cells: np.ndarray

    def __post_init__(self) -> None:
        self._index = {k: i for i, k in enumerate(self.keys)}

    def lookup(self, agent: str, context: str | None) -> int | None:
        """Row of ``(agent, context)``, or ``None`` when the agent has no single-agent cells there."""
        return None if context is None else self._index.get((str(agent), str(context)))

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/observed_singles.safetensors`` atomically (keys in its metadata)."""
        path = Path(directory) / OBSERVED_SINGLES_NAME
        tensors = {
            "responses": np.ascontiguousarray(self.responses, np.float32),
            "shifts": np.ascontiguousarray(self.shifts, np.float32),
            "stderr": np.ascontiguousarray(self.stderr, np.float32),
            "n_cells": np.ascontiguousarray(self.n_cells, np.int64),
        }
        meta = {"keys": json.dumps([list(k) for k in self.keys])}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def check_shapes(self, n_genes: int, latent_shape: Sequence[int], *, where: str) -> None:
        """Raise :class:`CheckpointError` unless the arrays fit a model of ``n_genes`` and ``latent_shape``."""
        n = len(self.keys)
        want = {"responses": (n, n_genes), "shifts": (n, *latent_shape), "stderr": (n, n_genes), "n_cells": (n,)}
        got = {"responses": self.responses.shape, "shifts": self.shifts.shape, "stderr": self.stderr.shape,
               "n_cells": self.n_cells.shape}  # fmt: skip
        if any(tuple(got[k]) != tuple(v) for k, v in want.items()):
            raise CheckpointError(f"{where}: {OBSERVED_SINGLES_NAME} holds shapes {got}; the model expects {want}.")

    @classmethod
    def load(cls, directory: str | Path) -> ObservedSingles | None:
        """Read the file of :meth:`save` (``None`` when the directory has none).

        Raises
        ------
        CheckpointError
            The file is corrupt or inconsistent (check it against the model with :meth:`check_shapes`).
        """
        path = Path(directory) / OBSERVED_SINGLES_NAME
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="numpy") as f:
                keys = [tuple(str(v) for v in k) for k in json.loads((f.metadata() or {})["keys"])]
            data = load_file(str(path))
            out = cls(keys, data["responses"], data["shifts"], data["stderr"], data["n_cells"])
        except (SafetensorError, OSError, KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{str(path)!r} is corrupt or not an observed-singles file: {err}") from err
        if not (len(out.responses) == len(out.shifts) == len(out.stderr) == len(out.n_cells) == len(keys)):
            raise CheckpointError(f"{str(path)!r} holds {len(keys)} keys but arrays of other lengths.")
        return out


@torch.no_grad()
def fit_observed_singles(
    cells: Cells,
    rows: np.ndarray,
    vocab: PerturbationVocab,
    *,
    previous: ObservedSingles | None = None,
) -> ObservedSingles | None:
    """Fit the observed single-agent responses on the training cells ``rows``.

    Parameters
    ----------
    cells
        Encoded cells (standardised latents, labels, context labels, counts, libraries).
    rows
        The training rows (controls and perturbed cells); validation and test cells must not be here.
    vocab
        Names the control and splits labels into agents (only single-agent conditions are kept).
    previous
        Anchors fitted before (e.g. the pretrained model's when adapting): rows of contexts absent
        from ``rows`` are kept, the others replaced.

    Returns
    -------
    The fitted :class:`ObservedSingles`, or ``previous`` when ``rows`` hold no single agent with
    control cells in its context.
    """
    rows = np.asarray(rows, dtype=np.int64)
    labels, contexts = cells.labels[rows].astype(str), cells.contexts[rows].astype(str)

    def profile(sub: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean log-normalised expression, its squared standard error and the mean latent of ``sub``."""
        counts = cells.counts_ds[sub.tolist()][BATCH_KEYS.COUNTS].numpy()
        x = log_normalize(counts, library=cells.norm_library(sub))
        var = x.var(0, ddof=1) / len(sub) if len(sub) > 1 else np.full(x.shape[1], np.inf)
        return x.mean(0), var, cells.z[torch.as_tensor(sub)].double().mean(0).numpy()

    keys, responses, shifts, stderr, n_cells = [], [], [], [], []
    for ctx in sorted(set(contexts.tolist())):
        in_ctx = contexts == ctx
        ctrl = rows[in_ctx & (labels == vocab.control)]
        if len(ctrl) == 0:
            continue
        x0, v0, z0 = profile(ctrl)
        for cond in sorted(set(labels[in_ctx].tolist()) - {vocab.control}):
            parts = vocab.parts(cond)
            if len(parts) != 1:
                continue
            sub = rows[in_ctx & (labels == cond)]
            x, v, z = profile(sub)
            keys.append((parts[0], ctx))
            responses.append(x - x0)
            shifts.append(z - z0)
            stderr.append(np.sqrt(v + v0))
            n_cells.append(len(sub))
    if not keys:
        return previous
    fitted_ctx = {c for _, c in keys}
    if previous is not None:  # keep the earlier fit's contexts this fit does not cover
        for i, (agent, ctx) in enumerate(previous.keys):
            if ctx not in fitted_ctx:
                keys.append((agent, ctx))
                responses.append(previous.responses[i])
                shifts.append(previous.shifts[i])
                stderr.append(previous.stderr[i])
                n_cells.append(int(previous.n_cells[i]))
    return ObservedSingles(
        keys,
        np.asarray(responses, np.float32),
        np.asarray(shifts, np.float32),
        np.asarray(stderr, np.float32),
        np.asarray(n_cells, np.int64),
    )
