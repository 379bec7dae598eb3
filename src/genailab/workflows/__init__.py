"""Workflows: the jobs behind the ``genailab`` command, callable from Python.

Each job resolves its typed run config once (:mod:`genailab.workflows.runconfig`), opens its run
directory through one helper, calls the recipes with resolved configs and writes the outputs atomically.

- :mod:`genailab.workflows.synth`: ``vae train | encode``, ``synth train | sample | counterfactual | evaluate``
  and the quick-start ``demo``;
- :mod:`genailab.workflows.perturb`: ``perturb train | predict | evaluate``;
- :mod:`genailab.workflows.adapt`: ``synth adapt | distill``, ``perturb adapt``.
"""

from genailab.workflows.synth import (
    counterfactual_synth,
    demo_config,
    encode_vae,
    evaluate_synth,
    run_demo,
    sample_synth,
    train_synth,
    train_synth_on,
    train_vae,
    train_vae_on,
)

__all__ = [
    "counterfactual_synth",
    "demo_config",
    "encode_vae",
    "evaluate_synth",
    "run_demo",
    "sample_synth",
    "train_synth",
    "train_synth_on",
    "train_vae",
    "train_vae_on",
]
