"""Count likelihoods: stable log-densities, count distributions and learned count heads.

Three layers, each usable alone:

- :mod:`~genailab.likelihoods.functional`: pure, stable log-pmfs (:func:`log_nb_positive`,
  :func:`log_zinb_positive`, :func:`log_poisson`).
- :mod:`~genailab.likelihoods.distributions`: :class:`NegativeBinomial`,
  :class:`ZeroInflatedNegativeBinomial` and :class:`Poisson` as ``torch.distributions`` objects.
- :mod:`~genailab.likelihoods.heads`: ``nn.Module`` count heads ``(h, library) -> Distribution`` and
  dispersion modes, picked by name from :data:`COUNT_HEADS` and :data:`DISPERSIONS`, plus the
  reconstruction loss :func:`masked_nll`.
"""

from genailab.likelihoods.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from genailab.likelihoods.functional import log_nb_positive, log_poisson, log_zinb_positive
from genailab.likelihoods.heads import (
    COUNT_HEADS,
    DISPERSIONS,
    LOG_THETA_RANGE,
    CountHead,
    Dispersion,
    GeneCellDispersion,
    GeneConditionDispersion,
    GeneDispersion,
    NBHead,
    PoissonHead,
    ZINBHead,
    make_count_head,
    masked_nll,
)

__all__ = [
    "COUNT_HEADS",
    "DISPERSIONS",
    "LOG_THETA_RANGE",
    "CountHead",
    "Dispersion",
    "GeneCellDispersion",
    "GeneConditionDispersion",
    "GeneDispersion",
    "NBHead",
    "NegativeBinomial",
    "Poisson",
    "PoissonHead",
    "ZINBHead",
    "ZeroInflatedNegativeBinomial",
    "log_nb_positive",
    "log_poisson",
    "log_zinb_positive",
    "make_count_head",
    "masked_nll",
]
