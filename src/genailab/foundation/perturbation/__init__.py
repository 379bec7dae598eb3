"""Perturbation-response building blocks of the foundation layer.

- :mod:`genailab.foundation.perturbation.priors`: prior feature vectors of perturbed genes from gene sets and
  regulatory networks, so that genes never perturbed in training still get meaningful embeddings.
"""

from genailab.foundation.perturbation.priors import PRIOR_SOURCES, GenePriors, build_gene_priors

__all__ = ["PRIOR_SOURCES", "GenePriors", "build_gene_priors"]
