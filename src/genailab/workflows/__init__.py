"""Workflows: the jobs behind the ``genailab`` command, callable from Python.

Each job resolves its typed run config once (:mod:`genailab.workflows.runconfig`), opens its run
directory through one helper (:mod:`genailab.workflows.rundir`), calls the recipes with resolved configs
and writes the outputs atomically.

- :mod:`genailab.workflows.vae`: ``vae train | encode``;
- :mod:`genailab.workflows.synth`: ``synth train | sample | counterfactual | evaluate``;
- :mod:`genailab.workflows.demo`: the quick-start ``demo``;
- :mod:`genailab.workflows.perturb`: ``perturb train | predict | evaluate``;
- :mod:`genailab.workflows.adapt`: ``synth adapt | distill``, ``perturb adapt``;
- :mod:`genailab.workflows.data_tools`: ``data convert-dict``;
- :mod:`genailab.workflows.rundir`: run directories (file names, same-run guard, run records);
- :mod:`genailab.workflows.runconfig`: typed run configs, resolved once.

The job functions are loaded on first use (PEP 562): importing this package costs nothing, so the
command line answers ``--help`` without importing torch. ``from genailab.workflows import train_vae``
works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genailab.workflows.adapt import adapt_perturb, adapt_synth, distill_synth
    from genailab.workflows.data_tools import convert_dictionary
    from genailab.workflows.demo import demo_config, run_demo
    from genailab.workflows.perturb import evaluate_perturb, predict_perturb, train_perturb, train_perturb_on
    from genailab.workflows.synth import (
        counterfactual_synth,
        evaluate_synth,
        sample_synth,
        train_synth,
        train_synth_on,
    )
    from genailab.workflows.vae import encode_vae, train_vae, train_vae_on

# job -> the module that defines it
JOBS: dict[str, str] = {
    "adapt_perturb": "adapt",
    "adapt_synth": "adapt",
    "convert_dictionary": "data_tools",
    "counterfactual_synth": "synth",
    "demo_config": "demo",
    "distill_synth": "adapt",
    "encode_vae": "vae",
    "evaluate_perturb": "perturb",
    "evaluate_synth": "synth",
    "predict_perturb": "perturb",
    "run_demo": "demo",
    "sample_synth": "synth",
    "train_perturb": "perturb",
    "train_perturb_on": "perturb",
    "train_synth": "synth",
    "train_synth_on": "synth",
    "train_vae": "vae",
    "train_vae_on": "vae",
}

__all__ = [
    "adapt_perturb",
    "adapt_synth",
    "convert_dictionary",
    "counterfactual_synth",
    "demo_config",
    "distill_synth",
    "encode_vae",
    "evaluate_perturb",
    "evaluate_synth",
    "predict_perturb",
    "run_demo",
    "sample_synth",
    "train_perturb",
    "train_perturb_on",
    "train_synth",
    "train_synth_on",
    "train_vae",
    "train_vae_on",
]


def __getattr__(name: str) -> Any:
    if name in JOBS:
        value = getattr(importlib.import_module(f"{__name__}.{JOBS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *JOBS})
