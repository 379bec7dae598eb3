"""genailab: adapt pretrained foundation models to gene-expression synthesis and perturbation response.

Don't fine-tune the world, fine-tune the steering wheel: large backbones stay frozen, small modules
train, and every strategy is a one-line switch.

Layout
------
- :mod:`genailab.data`: AnnData reading, count validation/recovery, registration, gene
  harmonisation, splits and streaming mini-batches.
- :mod:`genailab.likelihoods`: NB / ZINB / Poisson distributions and count heads.
- :mod:`genailab.tokenizers`: counts -> tokens (latent tokens by default).
- :mod:`genailab.foundation`: ``backbones``, ``conditioning``, ``tuning``, ``objectives``, ``recipes``.
- :mod:`genailab.training`: the thin Lightning layer (checkpoints, resume, early stopping).
- :mod:`genailab.evaluation`: metrics and HTML reports.
- :mod:`genailab.cli`: the ``genailab`` command.

The names below are imported lazily so that ``import genailab`` and ``genailab --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from genailab._version import __version__

_LAZY = {
    "DataSpec": "genailab.data",
    "DataRegistry": "genailab.data",
    "setup_anndata": "genailab.data",
    "read_h5ad": "genailab.data",
    "validate_counts": "genailab.data",
    "recover_counts": "genailab.data",
    "align_genes": "genailab.data",
    "pbmc68k_reduced": "genailab.data",
    "NegativeBinomial": "genailab.likelihoods",
    "ZeroInflatedNegativeBinomial": "genailab.likelihoods",
    "Poisson": "genailab.likelihoods",
    "LatentTokenVAE": "genailab.foundation.recipes",
    "LatentTokenVAEConfig": "genailab.foundation.recipes",
    "TrainConfig": "genailab.training",
    "seed_everything": "genailab.training",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'genailab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
