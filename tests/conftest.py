"""Shared fixtures: every test is seeded, and real data are found (or skipped) in one place."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

_SHARED_CANDIDATES = [
    os.environ.get("GENAILAB_SHARED_DATA", ""),
    str(Path(__file__).resolve().parents[1].parent / "shared" / "data"),
]


def _shared_dir() -> Path | None:
    for cand in _SHARED_CANDIDATES:
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ``../shared/data`` folder of real public datasets; skips the test when it is absent."""
    d = _shared_dir()
    if d is None:
        pytest.skip("real data folder ../shared/data (or $GENAILAB_SHARED_DATA) is absent")
    return d


def shared_file(shared: Path, relative: str) -> Path:
    """Return ``shared/relative`` or skip with a reason naming the missing file."""
    p = shared / relative
    if not p.exists():
        pytest.skip(f"real data file {relative} is absent from {shared}")
    return p


def make_count_adata(n_obs: int = 96, n_vars: int = 32, *, n_batches: int = 2, n_types: int = 3, seed: int = 0):
    """A small AnnData of NB counts with cell-type structure, batches and a continuous covariate."""
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    rng = np.random.default_rng(seed)
    types = rng.integers(0, n_types, n_obs)
    programs = rng.gamma(2.0, 1.0, size=(n_types, n_vars))
    lib = rng.lognormal(np.log(200), 0.3, n_obs)
    mu = programs[types] / programs[types].sum(1, keepdims=True) * lib[:, None]
    counts = rng.negative_binomial(5, 5 / (5 + mu)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type{t}" for t in types]),
            "batch": pd.Categorical([f"b{i % n_batches}" for i in range(n_obs)]),
            "age": rng.normal(50, 10, n_obs),
        },
        index=[f"cell{i}" for i in range(n_obs)],
    )
    var = pd.DataFrame(index=[f"G{j}" for j in range(n_vars)])
    return ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var)


@pytest.fixture
def tiny_adata():
    """96 cells x 32 genes of NB counts (CSR), obs cell_type / batch / age."""
    return make_count_adata()


def make_perturb_adata(n_per: int = 20, n_vars: int = 24, *, seed: int = 0):
    """A tiny perturbation screen: contexts A/B; control, g1, g2, g3, g1+g2 in each; planted gene-block effects.

    ``g1`` up-regulates genes 0-3, ``g2`` genes 4-7, ``g3`` down-regulates genes 8-11; the double adds both.
    """
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    rng = np.random.default_rng(seed)
    effects = {"g1": (slice(0, 4), 3.0), "g2": (slice(4, 8), 3.0), "g3": (slice(8, 12), 0.25)}
    base = {c: rng.gamma(3.0, 1.0, n_vars) for c in ("A", "B")}
    rows, labels, contexts = [], [], []
    for ctx in ("A", "B"):
        for cond in ("control", "g1", "g2", "g3", "g1+g2"):
            w = base[ctx].copy()
            for g in cond.split("+"):
                if g in effects:
                    sl, fold = effects[g]
                    w[sl] *= fold
            lib = rng.lognormal(np.log(300), 0.2, n_per)
            mu = w / w.sum() * lib[:, None]
            rows.append(rng.negative_binomial(8, 8 / (8 + mu)))
            labels += [cond] * n_per
            contexts += [ctx] * n_per
    obs = pd.DataFrame(
        {"condition": pd.Categorical(labels), "cell_type": pd.Categorical(contexts)},
        index=[f"c{i}" for i in range(len(labels))],
    )
    var = pd.DataFrame(index=[f"G{j}" for j in range(n_vars)])
    return ad.AnnData(X=sparse.csr_matrix(np.vstack(rows).astype(np.float32)), obs=obs, var=var)


def make_gene_priors(genes=("g1", "g2", "g3", "g4"), dim: int = 6, seed: int = 0):
    """Prior features for the agents of :func:`make_perturb_adata` plus an unseen ``g4`` (like ``g1``)."""
    from genailab.foundation.perturbation import GenePriors

    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(len(genes), dim)).astype(np.float32)
    if "g4" in genes and "g1" in genes:
        feats[list(genes).index("g4")] = feats[list(genes).index("g1")] + 0.1
    return GenePriors(genes=tuple(genes), features=feats, sources=("test",), block_dims=(dim,))
