"""Count distributions as real :class:`torch.distributions.Distribution` objects.

Count decoders return one of these over ``(B, G)`` counts, so a loss is ``-dist.log_prob(x)`` and a
sample is ``dist.sample()``. Parameter names follow scvi-tools (Lopez et al. 2018, "Deep generative
modeling for single-cell transcriptomics", Nat. Methods 15:1053): ``mu`` is the mean, ``theta`` the
inverse dispersion, ``zi_logits`` the logit of the extra-zero probability. All three classes expose
``.mu``.

When a decoder sets ``mu = library * scale`` with ``scale`` on the simplex over genes, the mean of each
distribution (``mu``, or ``(1 - pi) * mu`` with zero inflation) scales linearly with the library size:
doubling the library doubles the expected counts.

``log_prob`` upcasts bfloat16/float16 parameters to float32 and uses the stable functions of
:mod:`genailab.likelihoods.functional`. ``sample`` draws in float32 (float64 for float64 parameters),
without gradients, and returns float tensors holding integers. Argument and sample validation follow
:meth:`torch.distributions.Distribution.set_default_validate_args` unless ``validate_args`` is given:
invalid parameters, and negative or non-integer values passed to ``log_prob``, raise ``ValueError``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Gamma, constraints
from torch.distributions import Poisson as _TorchPoisson
from torch.distributions.utils import broadcast_all

from genailab.likelihoods.functional import log_nb_positive, log_poisson, log_zinb_positive

__all__ = ["NegativeBinomial", "Poisson", "ZeroInflatedNegativeBinomial"]

# The gamma mixing draw is effectively a point mass beyond this concentration (relative sd 1e-4,
# below the Poisson noise unless mu > 1e8); clamping keeps it finite and fast.
_MAX_SAMPLING_THETA = 1e8
_MIN_SAMPLING_THETA = 1e-8
# torch.poisson overflows int64 above ~9e18; no count model needs rates anywhere near this.
_MAX_POISSON_RATE = 1e15
_NO_SAMPLE_SHAPE = torch.Size()


def _sampling_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _poisson_counts(rate: Tensor) -> Tensor:
    """Poisson draws for a float rate tensor, robust to NaN-free but extreme rates."""
    return torch.poisson(rate.clamp(min=0.0, max=_MAX_POISSON_RATE))


class NegativeBinomial(Distribution):
    r"""Negative binomial over counts, parametrised by mean ``mu`` and inverse dispersion ``theta``.

    ``mean = mu`` and ``variance = mu + mu**2 / theta``; ``theta -> inf`` gives the Poisson. This is
    scipy's ``nbinom(n=theta, p=theta / (theta + mu))``. With ``mu = library * scale`` the mean scales
    linearly with the library size.

    Parameters
    ----------
    mu
        Means, ``>= 0``, any shape broadcastable with ``theta``.
    theta
        Inverse dispersions, ``> 0``.
    validate_args
        Check parameters and ``log_prob`` values (default: torch's global setting).

    Examples
    --------
    >>> nb = NegativeBinomial(mu=torch.tensor([2.0, 10.0]), theta=torch.tensor([1.0, 5.0]))
    >>> nb.variance
    tensor([ 6., 30.])
    >>> nb.log_prob(torch.tensor([0.0, 12.0])).shape
    torch.Size([2])
    """

    arg_constraints = {"mu": constraints.nonnegative, "theta": constraints.positive}
    support = constraints.nonnegative_integer
    has_rsample = False

    def __init__(self, mu: Tensor | float, theta: Tensor | float, validate_args: bool | None = None) -> None:
        self.mu, self.theta = broadcast_all(mu, theta)
        super().__init__(batch_shape=self.mu.shape, validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: NegativeBinomial | None = None) -> NegativeBinomial:
        """Return a view of this distribution with a larger batch shape."""
        new = self._get_checked_instance(NegativeBinomial, _instance)
        batch_shape = torch.Size(batch_shape)
        new.mu = self.mu.expand(batch_shape)
        new.theta = self.theta.expand(batch_shape)
        Distribution.__init__(new, batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        """``mu``."""
        return self.mu

    @property
    def variance(self) -> Tensor:
        """``mu + mu**2 / theta``."""
        return self.mu + self.mu**2 / self.theta

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-pmf of ``value`` (float32 for low-precision parameters); see :func:`log_nb_positive`."""
        if self._validate_args:
            self._validate_sample(value)
        return log_nb_positive(value, self.mu, self.theta)

    def _sample_rate(self, shape: torch.Size, dtype: torch.dtype) -> Tensor:
        """Gamma-distributed Poisson rates with mean ``mu`` and shape ``theta``."""
        mu = self.mu.to(dtype).expand(shape)
        theta = self.theta.to(dtype).clamp(_MIN_SAMPLING_THETA, _MAX_SAMPLING_THETA).expand(shape)
        gamma = Gamma(theta, torch.ones_like(theta), validate_args=False).sample()  # Gamma(theta, 1)
        return gamma * (mu / theta)  # Gamma(theta, rate=theta / mu): mean mu, variance mu**2 / theta

    def sample(self, sample_shape: torch.Size = _NO_SAMPLE_SHAPE) -> Tensor:
        """Draw counts of shape ``sample_shape + batch_shape`` through the gamma-Poisson mixture."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            return _poisson_counts(self._sample_rate(shape, _sampling_dtype(self.mu)))


class ZeroInflatedNegativeBinomial(NegativeBinomial):
    r"""Negative binomial with extra zeros: ``pi * [x == 0] + (1 - pi) * NB(x; mu, theta)``.

    ``pi = sigmoid(zi_logits)`` is the dropout probability. ``mean = (1 - pi) * mu`` and
    ``variance = (1 - pi) * mu * (1 + mu / theta + pi * mu)`` (from ``E[X^2] = (1 - pi) (Var_NB + mu^2)``).
    With ``mu = library * scale`` the mean scales linearly with the library size.

    Parameters
    ----------
    mu
        NB means, ``>= 0``.
    theta
        NB inverse dispersions, ``> 0``.
    zi_logits
        Logits of the extra-zero probability, real.
    validate_args
        Check parameters and ``log_prob`` values (default: torch's global setting).
    """

    arg_constraints = {
        "mu": constraints.nonnegative,
        "theta": constraints.positive,
        "zi_logits": constraints.real,
    }

    def __init__(
        self,
        mu: Tensor | float,
        theta: Tensor | float,
        zi_logits: Tensor | float,
        validate_args: bool | None = None,
    ) -> None:
        mu, theta, self.zi_logits = broadcast_all(mu, theta, zi_logits)
        super().__init__(mu, theta, validate_args=validate_args)

    def expand(
        self, batch_shape: torch.Size, _instance: ZeroInflatedNegativeBinomial | None = None
    ) -> ZeroInflatedNegativeBinomial:
        """Return a view of this distribution with a larger batch shape."""
        new = self._get_checked_instance(ZeroInflatedNegativeBinomial, _instance)
        new.zi_logits = self.zi_logits.expand(torch.Size(batch_shape))
        return super().expand(batch_shape, _instance=new)

    @property
    def zi_probs(self) -> Tensor:
        """Extra-zero probability ``pi = sigmoid(zi_logits)``."""
        return torch.sigmoid(self.zi_logits)

    @property
    def mean(self) -> Tensor:
        """``(1 - pi) * mu``."""
        return (1.0 - self.zi_probs) * self.mu

    @property
    def variance(self) -> Tensor:
        """``(1 - pi) * mu * (1 + mu / theta + pi * mu)``."""
        pi = self.zi_probs
        return (1.0 - pi) * self.mu * (1.0 + self.mu / self.theta + pi * self.mu)

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-pmf of ``value``; see :func:`log_zinb_positive`."""
        if self._validate_args:
            self._validate_sample(value)
        return log_zinb_positive(value, self.mu, self.theta, self.zi_logits)

    def sample(self, sample_shape: torch.Size = _NO_SAMPLE_SHAPE) -> Tensor:
        """Draw NB counts, then set each to zero with probability ``pi``."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            dtype = _sampling_dtype(self.mu)
            counts = _poisson_counts(self._sample_rate(shape, dtype))
            dropped = torch.rand(shape, dtype=dtype, device=counts.device) < self.zi_probs.to(dtype)
            return counts.masked_fill(dropped, 0.0)


class Poisson(_TorchPoisson):
    """Poisson over counts whose ``log_prob`` is stable and upcasts low-precision rates to float32.

    ``mean = variance = rate``; ``mu`` is an alias of ``rate``, so every count distribution here
    exposes ``.mu``. With ``rate = library * scale`` the mean scales linearly with the library size.

    Parameters
    ----------
    rate
        Means, ``>= 0``.
    validate_args
        Check parameters and ``log_prob`` values (default: torch's global setting).
    """

    @property
    def mu(self) -> Tensor:
        """Alias of ``rate``."""
        return self.rate

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-pmf of ``value``; see :func:`log_poisson`."""
        if self._validate_args:
            self._validate_sample(value)
        return log_poisson(value, self.rate)

    def sample(self, sample_shape: torch.Size = _NO_SAMPLE_SHAPE) -> Tensor:
        """Draw counts of shape ``sample_shape + batch_shape`` (float32, or float64 for float64 rates)."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            return _poisson_counts(self.rate.to(_sampling_dtype(self.rate)).expand(shape))
