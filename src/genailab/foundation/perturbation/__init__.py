"""Perturbation-response building blocks of the foundation layer.

- :mod:`genailab.foundation.perturbation.priors`: prior feature vectors of perturbed genes from gene sets and
  regulatory networks, so that genes never perturbed in training still get meaningful embeddings, and
  :func:`prior_distance` (how far an agent is, in prior space, from the agents a model was trained on).
- :mod:`genailab.foundation.perturbation.encoders`: agent encoders (``gene``, ``compound`` with dose
  response) and composers (``additive``, ``attention``, ``sum``), registered by name.
- :mod:`genailab.foundation.perturbation.compounds`: Morgan-fingerprint priors of compounds from SMILES
  (optional RDKit).
- :mod:`genailab.foundation.perturbation.vocab`: condition labels -> padded agent ids and doses.
"""

from genailab.foundation.perturbation.compounds import compound_priors, read_smiles
from genailab.foundation.perturbation.encoders import (
    COMPOSERS,
    PERTURBATION_ENCODERS,
    AdditiveComposer,
    AttentionComposer,
    CompoundEncoder,
    GeneEncoder,
    PerturbationEncoderConfig,
    SumComposer,
)
from genailab.foundation.perturbation.priors import (
    MAX_PRIOR_DISTANCE,
    PRIOR_SOURCES,
    GenePriors,
    build_gene_priors,
    prior_distance,
)
from genailab.foundation.perturbation.vocab import PerturbationVocab

__all__ = [
    "COMPOSERS",
    "MAX_PRIOR_DISTANCE",
    "PERTURBATION_ENCODERS",
    "PRIOR_SOURCES",
    "AdditiveComposer",
    "AttentionComposer",
    "CompoundEncoder",
    "GeneEncoder",
    "GenePriors",
    "PerturbationEncoderConfig",
    "PerturbationVocab",
    "SumComposer",
    "build_gene_priors",
    "compound_priors",
    "prior_distance",
    "read_smiles",
]
