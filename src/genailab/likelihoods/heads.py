"""Count heads: learned modules that map a hidden state to a count distribution over genes.

A :class:`CountHead` turns ``h`` ``(B, H)`` and the observed library size ``(B, 1)`` into a
:class:`~torch.distributions.Distribution` over ``(B, G)`` counts, scVI style (Lopez et al. 2018,
"Deep generative modeling for single-cell transcriptomics", Nat. Methods 15:1053)::

    scale = softmax(Linear(h))     # (B, G), on the simplex over measured genes
    mu    = library * scale        # (B, G), so the mean is linear in the library size

Heads are registered by name in :data:`COUNT_HEADS` (``"nb"``, ``"zinb"``, ``"poisson"``) and the NB
dispersion ``theta`` comes from a module registered in :data:`DISPERSIONS` (``"gene"``, ``"gene-cell"``,
``"gene-condition"``; scVI's ``dispersion`` options, with ``"gene-condition"`` covering its
``"gene-batch"``/``"gene-label"``). :func:`make_count_head` builds one from names, and
:func:`masked_nll` is the per-cell reconstruction loss.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from genailab.config import check_positive
from genailab.errors import InvalidInputError
from genailab.likelihoods.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from genailab.registry import Registry

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
    "PoissonHead",
    "ZINBHead",
    "make_count_head",
    "masked_nll",
]

#: ``log(theta)`` is clamped to this range: ``theta`` from ~4.5e-5 (extreme overdispersion) to
#: ~3.3e6 (indistinguishable from Poisson at single-cell depths). Gradients stop at the bounds.
LOG_THETA_RANGE: tuple[float, float] = (-10.0, 15.0)

DISPERSIONS: Registry[type[Dispersion]] = Registry("dispersion")
COUNT_HEADS: Registry[type[CountHead]] = Registry("count head")


def _theta_from_log(log_theta: Tensor) -> Tensor:
    return torch.exp(log_theta.clamp(*LOG_THETA_RANGE))


def _check_gene_mask(gene_mask: Tensor, n_cells: int, n_genes: int) -> None:
    shape = tuple(getattr(gene_mask, "shape", ()))
    is_bool = isinstance(gene_mask, Tensor) and gene_mask.dtype == torch.bool
    if not is_bool or shape not in {(n_genes,), (n_cells, n_genes)}:
        raise InvalidInputError(
            f"gene_mask must be a bool tensor of shape ({n_genes},) or ({n_cells}, {n_genes}); got "
            f"{getattr(gene_mask, 'dtype', type(gene_mask).__name__)} {shape}."
        )


def _check_n_conditions(n_conditions: int | None) -> None:
    if n_conditions is not None:
        check_positive("n_conditions", n_conditions, integer=True)


# --------------------------------------------------------------------------------------------------
# Dispersions
# --------------------------------------------------------------------------------------------------


class Dispersion(nn.Module, abc.ABC):
    """Base class of the NB inverse-dispersion modules: ``forward(h, condition) -> theta`` ``(B, G)``.

    Every mode starts at ``theta = 1`` (its parameters are zero-initialised ``log theta``) and keeps
    ``log theta`` within :data:`LOG_THETA_RANGE`.

    Parameters
    ----------
    n_hidden
        Width ``H`` of the hidden state.
    n_genes
        Number of genes ``G``.
    n_conditions
        Number of condition codes (only ``"gene-condition"`` uses it).
    """

    def __init__(self, n_hidden: int, n_genes: int, n_conditions: int | None = None) -> None:
        super().__init__()
        check_positive("n_hidden", n_hidden, integer=True)
        check_positive("n_genes", n_genes, integer=True)
        _check_n_conditions(n_conditions)
        self.n_hidden = n_hidden
        self.n_genes = n_genes
        self.n_conditions = n_conditions

    @abc.abstractmethod
    def forward(self, h: Tensor, condition: Tensor | None = None) -> Tensor:
        """Return positive ``theta`` ``(B, G)`` for hidden states ``h`` ``(B, H)``."""


@DISPERSIONS.register("gene")
class GeneDispersion(Dispersion):
    """One learned ``theta`` per gene, shared by all cells (scVI ``dispersion="gene"``)."""

    def __init__(self, n_hidden: int, n_genes: int, n_conditions: int | None = None) -> None:
        super().__init__(n_hidden, n_genes, n_conditions)
        self.log_theta = nn.Parameter(torch.zeros(n_genes))  # (G,)

    def forward(self, h: Tensor, condition: Tensor | None = None) -> Tensor:
        """Return ``theta`` ``(B, G)`` (the ``(G,)`` parameter broadcast over the batch).

        Parameters
        ----------
        h
            Hidden states ``(B, H)``; only the batch size is used.
        condition
            Ignored.

        Returns
        -------
        Tensor
            ``theta`` ``(B, G)``, positive.
        """
        return _theta_from_log(self.log_theta).expand(h.shape[0], -1)  # (B, G) view


@DISPERSIONS.register("gene-cell")
class GeneCellDispersion(Dispersion):
    """``theta`` per gene and cell, predicted from ``h`` by a linear layer (scVI ``"gene-cell"``)."""

    def __init__(self, n_hidden: int, n_genes: int, n_conditions: int | None = None) -> None:
        super().__init__(n_hidden, n_genes, n_conditions)
        self.linear = nn.Linear(n_hidden, n_genes)
        nn.init.zeros_(self.linear.weight)  # start at theta = 1 for every cell, like the other modes
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: Tensor, condition: Tensor | None = None) -> Tensor:
        """Return ``theta`` ``(B, G)``.

        Parameters
        ----------
        h
            Hidden states ``(B, H)``.
        condition
            Ignored.

        Returns
        -------
        Tensor
            ``theta`` ``(B, G)``, positive.
        """
        return _theta_from_log(self.linear(h))  # (B, G)


@DISPERSIONS.register("gene-condition")
class GeneConditionDispersion(Dispersion):
    """One ``theta`` per gene and condition code (batch, label, ...; scVI ``"gene-batch"``).

    Raises
    ------
    InvalidInputError
        If ``n_conditions`` is None or < 1.
    """

    def __init__(self, n_hidden: int, n_genes: int, n_conditions: int | None = None) -> None:
        if n_conditions is None:
            raise InvalidInputError(
                "n_conditions=None: dispersion 'gene-condition' needs n_conditions, the number of "
                "condition codes (an integer >= 1)."
            )
        super().__init__(n_hidden, n_genes, n_conditions)
        self.log_theta = nn.Embedding(n_conditions, n_genes)  # (C, G)
        nn.init.zeros_(self.log_theta.weight)

    def forward(self, h: Tensor, condition: Tensor | None = None) -> Tensor:
        """Return ``theta`` ``(B, G)`` for each cell's condition.

        Parameters
        ----------
        h
            Hidden states ``(B, H)``; only the batch size is used.
        condition
            Integer codes ``(B,)`` in ``[0, n_conditions)``.

        Returns
        -------
        Tensor
            ``theta`` ``(B, G)``, positive.

        Raises
        ------
        InvalidInputError
            If ``condition`` is missing, not an integer ``(B,)`` tensor, or out of range.
        """
        n = self.n_conditions
        if condition is None:
            raise InvalidInputError(
                f"condition=None: dispersion 'gene-condition' needs condition, a (B,) integer tensor "
                f"of codes in [0, {n})."
            )
        if not isinstance(condition, Tensor) or condition.dtype.is_floating_point or condition.dtype is torch.bool:
            raise InvalidInputError(
                f"condition must be an integer tensor of codes in [0, {n}), got "
                f"{getattr(condition, 'dtype', type(condition).__name__)}."
            )
        if condition.shape != (h.shape[0],):
            raise InvalidInputError(
                f"condition has shape {tuple(condition.shape)}; expected ({h.shape[0]},), one code per cell."
            )
        if condition.numel():
            low, high = int(condition.min()), int(condition.max())
            if low < 0 or high >= n:
                raise InvalidInputError(
                    f"condition holds code {low if low < 0 else high}; expected codes in [0, {n}) (n_conditions={n})."
                )
        return _theta_from_log(self.log_theta(condition))  # (B, G)


# --------------------------------------------------------------------------------------------------
# Count heads
# --------------------------------------------------------------------------------------------------


class CountHead(nn.Module, abc.ABC):
    """Base class: ``forward(h, library, condition, gene_mask) -> Distribution`` over ``(B, G)`` counts.

    Computes ``mu = library * softmax(Linear(h))`` and hands it to :meth:`distribution`, which each
    registered head implements.

    Parameters
    ----------
    n_hidden
        Width ``H`` of the hidden state.
    n_genes
        Number of genes ``G``.
    dispersion
        Name of a :data:`DISPERSIONS` mode for heads with an NB component.
    n_conditions
        Number of condition codes, for ``dispersion="gene-condition"``.
    """

    def __init__(self, n_hidden: int, n_genes: int, dispersion: str = "gene", n_conditions: int | None = None) -> None:
        super().__init__()
        check_positive("n_hidden", n_hidden, integer=True)
        check_positive("n_genes", n_genes, integer=True)
        _check_n_conditions(n_conditions)
        DISPERSIONS.get(dispersion)  # fail early, listing the registered modes
        self.n_hidden = n_hidden
        self.n_genes = n_genes
        self.dispersion_name = dispersion
        self.scale_logits = nn.Linear(n_hidden, n_genes)

    def forward(
        self,
        h: Tensor,
        library: Tensor,
        condition: Tensor | None = None,
        gene_mask: Tensor | None = None,
        logits: Tensor | None = None,
    ) -> Distribution:
        """Return the count distribution for each cell.

        Parameters
        ----------
        h
            Hidden states ``(B, H)``.
        library
            Library sizes ``(B, 1)`` or ``(B,)``.
        condition
            Integer codes ``(B,)``, used by ``dispersion="gene-condition"``.
        gene_mask
            Bool ``(G,)`` or ``(B, G)``; False marks genes not measured in this data. Their logits are
            set to ``-inf``, so the softmax renormalises over measured genes and their mean is 0.
        logits
            ``(B, G)`` gene logits computed elsewhere (a structured decoder, e.g. pathway tokens
            decoding their member genes); replaces ``Linear(h)``. ``h`` still feeds the dispersion and
            the zero-inflation gate.

        Returns
        -------
        Distribution
            Batch shape ``(B, G)``; its mean is linear in ``library``.

        Raises
        ------
        InvalidInputError
            For inputs of the wrong shape or dtype, or a cell with every gene masked.
        """
        library = self._check_inputs(h, library, gene_mask)  # (B, 1)
        if logits is None:
            logits = self.scale_logits(h)  # (B, G)
        elif logits.shape != (h.shape[0], self.n_genes):
            raise InvalidInputError(
                f"logits has shape {tuple(logits.shape)}; expected ({h.shape[0]}, {self.n_genes}), (batch, n_genes)."
            )
        if gene_mask is not None and not bool(gene_mask.all()):  # skip the (B, G) pass when all are measured
            logits = logits.masked_fill(~gene_mask, float("-inf"))
        scale = torch.softmax(logits, dim=-1)  # (B, G), rows sum to 1 over measured genes
        mu = library * scale  # (B, G)
        return self.distribution(h, mu, condition)

    @abc.abstractmethod
    def distribution(self, h: Tensor, mu: Tensor, condition: Tensor | None) -> Distribution:
        """Build the distribution from hidden states ``(B, H)`` and means ``(B, G)``.

        Heads build it with ``validate_args=False``: their parameters are valid by construction and the
        counts were validated once by the data layer, so the per-step support checks (an integer and a
        sign pass over every ``(B, G)`` entry) would only cost time.
        """

    def _check_inputs(self, h: Tensor, library: Tensor, gene_mask: Tensor | None) -> Tensor:
        if not isinstance(h, Tensor) or h.dim() != 2 or h.shape[1] != self.n_hidden:
            raise InvalidInputError(
                f"h has shape {tuple(getattr(h, 'shape', ()))}; expected (B, {self.n_hidden}), (batch, n_hidden)."
            )
        n_cells = h.shape[0]
        if not isinstance(library, Tensor) or tuple(library.shape) not in {(n_cells,), (n_cells, 1)}:
            raise InvalidInputError(
                f"library has shape {tuple(getattr(library, 'shape', ()))}; expected ({n_cells}, 1) or "
                f"({n_cells},), one library size per cell of h {tuple(h.shape)}."
            )
        if gene_mask is not None:
            _check_gene_mask(gene_mask, n_cells, self.n_genes)
            if not bool(gene_mask.any(dim=-1).all()):
                raise InvalidInputError("gene_mask masks every gene of a cell; at least one gene must be measured.")
        return library.reshape(n_cells, 1)


@COUNT_HEADS.register("nb")
class NBHead(CountHead):
    """Negative binomial head: :class:`NegativeBinomial` ``(mu, theta)``, ``theta`` from a dispersion mode."""

    def __init__(self, n_hidden: int, n_genes: int, dispersion: str = "gene", n_conditions: int | None = None) -> None:
        super().__init__(n_hidden, n_genes, dispersion, n_conditions)
        self.dispersion = DISPERSIONS.get(dispersion)(n_hidden, n_genes, n_conditions)

    def distribution(self, h: Tensor, mu: Tensor, condition: Tensor | None) -> Distribution:
        """``NegativeBinomial(mu, theta(h, condition))``."""
        return NegativeBinomial(mu, self.dispersion(h, condition), validate_args=False)


@COUNT_HEADS.register("zinb")
class ZINBHead(NBHead):
    """Zero-inflated NB head: adds ``zi_logits = Linear(h)`` ``(B, G)`` to :class:`NBHead`."""

    def __init__(self, n_hidden: int, n_genes: int, dispersion: str = "gene", n_conditions: int | None = None) -> None:
        super().__init__(n_hidden, n_genes, dispersion, n_conditions)
        self.zi_logits = nn.Linear(n_hidden, n_genes)

    def distribution(self, h: Tensor, mu: Tensor, condition: Tensor | None) -> Distribution:
        """``ZeroInflatedNegativeBinomial(mu, theta(h, condition), zi_logits(h))``."""
        return ZeroInflatedNegativeBinomial(mu, self.dispersion(h, condition), self.zi_logits(h), validate_args=False)


@COUNT_HEADS.register("poisson")
class PoissonHead(CountHead):
    """Poisson head: :class:`Poisson` ``(mu)``; no dispersion (``dispersion`` is checked, then ignored)."""

    def distribution(self, h: Tensor, mu: Tensor, condition: Tensor | None) -> Distribution:
        """``Poisson(mu)``."""
        return Poisson(mu, validate_args=False)


def make_count_head(
    name: str, n_hidden: int, n_genes: int, dispersion: str = "gene", n_conditions: int | None = None
) -> CountHead:
    """Build the count head registered as ``name`` in :data:`COUNT_HEADS`.

    Parameters
    ----------
    name
        ``"nb"``, ``"zinb"``, ``"poisson"`` or another registered head.
    n_hidden
        Width ``H`` of the hidden state.
    n_genes
        Number of genes ``G``.
    dispersion
        A :data:`DISPERSIONS` mode: ``"gene"``, ``"gene-cell"`` or ``"gene-condition"``.
    n_conditions
        Number of condition codes, required by ``"gene-condition"``.

    Returns
    -------
    CountHead
        The new head.

    Raises
    ------
    InvalidInputError
        For an unknown head or dispersion name (the message lists the registered ones) or bad sizes.
    """
    return COUNT_HEADS.get(name)(n_hidden, n_genes, dispersion=dispersion, n_conditions=n_conditions)


def masked_nll(dist: Distribution, x: Tensor, gene_mask: Tensor | None = None) -> Tensor:
    """Per-cell negative log-likelihood, summed over measured genes.

    Parameters
    ----------
    dist
        A count distribution with batch shape ``(B, G)``.
    x
        Observed counts ``(B, G)``.
    gene_mask
        Bool ``(G,)`` or ``(B, G)``; genes marked False (not measured) are left out of the sum.

    Returns
    -------
    Tensor
        ``-sum_g log p(x_bg)`` over measured genes, shape ``(B,)``.

    Raises
    ------
    InvalidInputError
        If ``x`` is not ``(B, G)`` matching ``dist``, or ``gene_mask`` has the wrong dtype or shape.
    """
    batch_shape = tuple(dist.batch_shape)
    if len(batch_shape) != 2 or not isinstance(x, Tensor) or tuple(x.shape) != batch_shape:
        raise InvalidInputError(
            f"x has shape {tuple(getattr(x, 'shape', ()))}; expected {batch_shape}, the distribution's "
            "(B, G) batch shape."
        )
    log_prob = dist.log_prob(x)  # (B, G)
    if gene_mask is not None:
        _check_gene_mask(gene_mask, *batch_shape)
        if not bool(gene_mask.all()):
            log_prob = torch.where(gene_mask, log_prob, log_prob.new_zeros(()))
    return -log_prob.sum(dim=-1)  # (B,)
