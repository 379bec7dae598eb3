"""Pathway tokens: one latent token per gene set, with a pathway-structured decoder.

:class:`PathwayTokenEncoder` (registered as ``"pathway"``) aggregates each gene set's member genes
into one hidden state per set through a sparse per-membership weight (memory O(memberships), never a
dense ``G x n_sets x h`` tensor), then maps every set state through one shared small MLP to the set's
posterior ``(mu, logvar)``. Genes in no kept set feed one ``residual`` token, or are dropped from the
encoder input. Its structured decoder, :class:`PathwayLogits`, writes each gene's logit from the tokens
of the sets that contain it, so a token is interpretable as "its pathway's activity" (pathway-structured
latents as in expiMap, Lotfollahi et al., Nat. Cell Biol. 2023, and VEGA, Seninge et al., Nat. Commun.
2021; overlap averaging follows the seed decoder).

Gene sets come from a GMT (e.g. MSigDB Hallmark, Liberzon et al., Cell Systems 2015), translated into the
model's gene-id space with :func:`harmonize_gene_sets`, or from data-driven NMF modules
(:func:`~genailab.tokenizers.modules.fit_nmf_modules`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import torch
from torch import nn

from genailab.data.genes import GeneIdMap
from genailab.errors import InvalidInputError
from genailab.nn import log_normalize, mlp
from genailab.tokenizers.base import (
    LOGVAR_RANGE,
    OVERLAPS,
    TOKENIZERS,
    UNASSIGNED_MODES,
    TokenBatch,
    TokenizerConfig,
    TokenizerResources,
    check_genes,
    resolve_gene_ids,
)

__all__ = [
    "RESIDUAL_TOKEN",
    "AverageOverlap",
    "LearnedOverlap",
    "PathwayLayout",
    "PathwayLogits",
    "PathwayTokenEncoder",
    "SparseMembership",
    "harmonize_gene_sets",
    "pathway_layout",
]

RESIDUAL_TOKEN = "residual"
"""Name of the token that encodes (and decodes) the genes in no kept set."""

_N_EXAMPLES = 5


# -------------------------------------------------------------------------------- harmonisation
def harmonize_gene_sets(
    gene_sets: Mapping[str, Sequence[str]],
    genes: Sequence[str],
    *,
    id_map: GeneIdMap | None = None,
) -> tuple[dict[str, tuple[str, ...]], dict[str, Any]]:
    """Translate gene sets into the model's gene ids and keep only model genes.

    Parameters
    ----------
    gene_sets
        Set name -> gene ids, e.g. from :func:`~genailab.data.read_gmt`.
    genes
        The model's gene list.
    id_map
        Symbol <-> Ensembl map, needed when the sets and the model use different id types.

    Returns
    -------
    ``(sets, report)``: set name -> member model genes (file order, duplicates removed; sets left with no
    model gene are dropped), and a JSON-able report (id types, whether translated, ids without a
    translation, ids not in the model, sets dropped as empty).

    Raises
    ------
    InvalidInputError
        If ``gene_sets`` is empty, the id types differ and no ``id_map`` is given, or no set shares a
        gene with the model.
    """
    if not isinstance(gene_sets, Mapping):
        raise InvalidInputError(f"gene_sets must be a mapping of set name -> gene ids, got {type(gene_sets).__name__}.")
    if not gene_sets or not any(len(v) for v in gene_sets.values()):
        raise InvalidInputError("gene_sets is empty; expected at least one set with genes (e.g. read_gmt(FILE.gmt)).")
    genes = check_genes(genes)
    ids = list(dict.fromkeys(g for members in gene_sets.values() for g in members))
    model_ids, id_report = resolve_gene_ids(ids, genes, id_map=id_map, what="gene sets")
    lookup = dict(zip(ids, model_ids, strict=True))
    sets: dict[str, tuple[str, ...]] = {}
    empty: list[str] = []
    for name, members in gene_sets.items():
        mapped = tuple(dict.fromkeys(m for m in (lookup[g] for g in members) if m is not None))
        if mapped:
            sets[str(name)] = mapped
        else:
            empty.append(str(name))
    if not sets:
        raise InvalidInputError(
            f"none of the {len(gene_sets)} gene sets shares a gene with the model's {len(genes)} genes (sets name "
            f"e.g. {', '.join(ids[:3])}; model e.g. {', '.join(genes[:3])}); check the species, the id type and "
            "that the sets match the model's genes."
        )
    report = {
        **id_report,
        "n_sets_input": len(gene_sets),
        "n_sets_with_model_genes": len(sets),
        "sets_without_model_genes": empty,
        "n_model_genes_in_sets": len({g for members in sets.values() for g in members}),
    }
    return sets, report


# ------------------------------------------------------------------------------------- layout
@dataclass(frozen=True, eq=False)
class PathwayLayout:
    """Which genes feed which pathway token (the memberships), and what was kept or dropped.

    Attributes
    ----------
    token_names
        Kept set names, then :data:`RESIDUAL_TOKEN` when genes in no set feed a residual token.
    gene_index
        ``(E,)`` int64: the gene of each membership.
    set_index
        ``(E,)`` int64: the token of each membership.
    n_genes
        Number of model genes G.
    report
        JSON-able summary (sets kept / dropped, genes in no set, memberships).
    """

    token_names: tuple[str, ...]
    gene_index: np.ndarray
    set_index: np.ndarray
    n_genes: int
    report: dict[str, Any]

    @property
    def n_tokens(self) -> int:
        """Number of pathway tokens (kept sets, plus the residual token if any)."""
        return len(self.token_names)


def pathway_layout(
    gene_sets: Mapping[str, Sequence[str]],
    genes: Sequence[str],
    *,
    min_set_size: int = 5,
    max_sets: int | None = None,
    unassigned: str = "residual",
) -> PathwayLayout:
    """Select the gene sets that become tokens and list their memberships.

    Sets with fewer than ``min_set_size`` model genes are dropped; of the rest at most ``max_sets`` are
    kept, largest overlap first (ties by name); kept sets stay in input order. Genes in no kept set
    feed one residual token (``unassigned="residual"``, only when there are such genes) or no token at
    all (``"drop"``). Set members that are not model genes are ignored (and counted).

    Raises
    ------
    InvalidInputError
        If ``gene_sets`` is empty, ``unassigned`` is unknown or no set has ``min_set_size`` model genes.
    """
    genes = check_genes(genes)
    if not isinstance(gene_sets, Mapping) or not gene_sets:
        raise InvalidInputError(
            "tokenizer 'pathway' needs a non-empty mapping of gene sets: pass --gene-sets FILE.gmt "
            "(or 'nmf' for data-driven modules)."
        )
    if unassigned not in UNASSIGNED_MODES:
        raise InvalidInputError(f"unassigned={unassigned!r} is not allowed; expected one of {UNASSIGNED_MODES}.")
    position = {g: i for i, g in enumerate(genes)}
    members = {name: [position[g] for g in dict.fromkeys(ids) if g in position] for name, ids in gene_sets.items()}
    n_unknown = len({g for ids in gene_sets.values() for g in ids if g not in position})
    small = {name: len(idx) for name, idx in members.items() if len(idx) < min_set_size}
    eligible = [name for name in members if name not in small]
    if not eligible:
        best = max(members, key=lambda n: (len(members[n]), n))
        raise InvalidInputError(
            f"no gene set has >= tokenizer.min_set_size={min_set_size} model genes (the largest, {best!r}, has "
            f"{len(members[best])}); lower tokenizer.min_set_size or check that the sets use the model's gene ids."
        )
    ranked = sorted(eligible, key=lambda n: (-len(members[n]), n))
    chosen = set(ranked if max_sets is None else ranked[:max_sets])
    kept = [name for name in eligible if name in chosen]
    gene_index = [g for name in kept for g in members[name]]
    set_index = [k for k, name in enumerate(kept) for _ in members[name]]
    in_sets = np.zeros(len(genes), dtype=bool)
    in_sets[gene_index] = True
    orphans = np.flatnonzero(~in_sets)
    residual = unassigned == "residual" and orphans.size > 0
    if residual:
        gene_index += orphans.tolist()
        set_index += [len(kept)] * orphans.size
    names = (*kept, RESIDUAL_TOKEN) if residual else tuple(kept)
    report = {
        "n_sets_input": len(gene_sets),
        "n_sets_kept": len(kept),
        "sets_kept": list(kept),
        "sets_dropped_small": small,
        "sets_dropped_max_sets": [n for n in eligible if n not in chosen],
        "n_set_genes_not_in_model": n_unknown,
        "n_memberships": len(gene_index),
        "n_genes_in_sets": int(in_sets.sum()),
        "n_genes_unassigned": int(orphans.size),
        "unassigned_examples": [genes[i] for i in orphans[:_N_EXAMPLES]],
        "unassigned": unassigned,
        "residual_token": residual,
        "n_genes_dropped": int(orphans.size) if unassigned == "drop" else 0,
    }
    return PathwayLayout(
        token_names=names,
        gene_index=np.asarray(gene_index, dtype=np.int64),
        set_index=np.asarray(set_index, dtype=np.int64),
        n_genes=len(genes),
        report=report,
    )


# ---------------------------------------------------------------------------------- sparse maps
class SparseMembership(nn.Module):
    """A sparse linear map whose non-zeros are the (membership, channel) pairs of a layout.

    ``out[b, r] = sum_j S[r, j] x[b, j]`` with ``S`` a ``(n_out, n_in)`` sparse matrix holding one
    value per entry of ``rows``/``cols``; the values are passed to :meth:`forward` (they are a module's
    parameters, possibly reweighted), so memory is O(non-zeros + B * (n_in + n_out)).

    Parameters
    ----------
    rows, cols
        ``(nnz,)`` int64 coordinates, unique as pairs.
    shape
        ``(n_out, n_in)``.
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int]) -> None:
        super().__init__()
        self.shape = shape
        order = torch.argsort(rows * shape[1] + cols)  # coalesced (row-major) order
        self.register_buffer("indices", torch.stack([rows[order], cols[order]]), persistent=False)
        self.register_buffer("order", order, persistent=False)

    def forward(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``values`` ``(nnz,)`` in the order of ``rows``/``cols``, ``x`` ``(B, n_in)`` -> ``(B, n_out)``."""
        s = torch.sparse_coo_tensor(
            self.indices, values[self.order], self.shape, is_coalesced=True, check_invariants=False
        )  # (n_out, n_in)
        return torch.sparse.mm(s, x.T).T  # (B, n_out)


def _membership_channels(outer: torch.Tensor, inner: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each membership e and channel c: ``(outer_e * width + c, inner_e)``, flattened as ``(E * width,)``."""
    c = torch.arange(width)
    return (outer[:, None] * width + c).reshape(-1), inner[:, None].expand(-1, width).reshape(-1)


# ------------------------------------------------------------------------------ overlap weights
@OVERLAPS.register("average")
class AverageOverlap(nn.Module):
    """Each gene's logit is the plain mean over the sets that contain it (the seed decoder).

    Parameters
    ----------
    gene_index
        ``(E,)`` gene of each membership.
    n_genes
        Number of genes G.
    """

    def __init__(self, gene_index: torch.Tensor, n_genes: int) -> None:
        super().__init__()
        degree = torch.bincount(gene_index, minlength=n_genes).clamp(min=1).float()  # (G,)
        self.register_buffer("weight", 1.0 / degree[gene_index], persistent=False)  # (E,)

    def forward(self) -> torch.Tensor:
        """``(E,)`` membership weights, summing to 1 over each gene's memberships."""
        return self.weight


@OVERLAPS.register("learned")
class LearnedOverlap(nn.Module):
    """Softmax over each gene's memberships of learned logits (zero at init = the plain average).

    Parameters
    ----------
    gene_index
        ``(E,)`` gene of each membership.
    n_genes
        Number of genes G.
    """

    def __init__(self, gene_index: torch.Tensor, n_genes: int) -> None:
        super().__init__()
        self.n_genes = n_genes
        self.register_buffer("gene_index", gene_index, persistent=False)
        self.logits = nn.Parameter(torch.zeros(gene_index.shape[0]))  # (E,)

    def forward(self) -> torch.Tensor:
        """``(E,)`` membership weights, summing to 1 over each gene's memberships (segment softmax)."""
        gmax = self.logits.new_full((self.n_genes,), -math.inf).scatter_reduce(
            0, self.gene_index, self.logits.detach(), reduce="amax"
        )  # (G,)
        e = torch.exp(self.logits - gmax[self.gene_index])  # (E,)
        denom = e.new_zeros(self.n_genes).index_add_(0, self.gene_index, e)  # (G,)
        return e / denom[self.gene_index]


# ------------------------------------------------------------------------------------ decoder
class PathwayLogits(nn.Module):
    """Pathway-structured gene logits: ``logit_g = sum_{k ∋ g} a_{k,g} <w_{k,g}, z_k> + b_g``.

    ``a`` comes from the overlap weighting (:data:`~genailab.tokenizers.OVERLAPS`): ``"average"`` =
    ``1 / |{k ∋ g}|``, ``"learned"`` = a softmax over g's memberships. A residual token decodes the genes
    in no set; genes that feed no token get only their bias. Memory is O(memberships x d).

    Parameters
    ----------
    gene_index, set_index
        ``(E,)`` int64 memberships (gene, token).
    n_genes, n_tokens, token_dim
        G, m and d.
    overlap
        Registered overlap weighting name.
    """

    def __init__(
        self,
        gene_index: torch.Tensor,
        set_index: torch.Tensor,
        *,
        n_genes: int,
        n_tokens: int,
        token_dim: int,
        overlap: str = "average",
    ) -> None:
        super().__init__()
        self.n_genes, self.n_tokens, self.token_dim = n_genes, n_tokens, token_dim
        self.weight = nn.Parameter(torch.randn(gene_index.shape[0], token_dim) / math.sqrt(token_dim))  # (E, d)
        self.bias = nn.Parameter(torch.zeros(n_genes))  # (G,)
        self.overlap = OVERLAPS.get(overlap)(gene_index, n_genes)
        cols, rows = _membership_channels(set_index, gene_index, token_dim)
        self.map = SparseMembership(rows, cols, (n_genes, n_tokens * token_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` ``(B, m, d)`` latent tokens -> ``(B, G)`` gene logits."""
        values = (self.overlap()[:, None] * self.weight).reshape(-1)  # (E * d,)
        return self.map(values, z.reshape(z.shape[0], -1)) + self.bias  # (B, G)


# ------------------------------------------------------------------------------------ encoder
@TOKENIZERS.register("pathway")
class PathwayTokenEncoder(nn.Module):
    """One Gaussian latent token per gene set (plus a residual token for the genes in no set).

    ``x = log1p(counts / library * target_sum)``; each set's hidden state is
    ``a_k = sum_{g in k} x_g w_{k,g} + b_k`` (one weight vector per membership, a sparse product), then a
    shared MLP and head map ``a_k`` to ``(mu_k, logvar_k)`` plus a per-token learned offset. Tokens of the
    real sets depend only on their member genes: changing genes outside every set moves only the
    residual token.

    Parameters
    ----------
    layout
        The memberships (from :func:`pathway_layout`).
    token_dim
        Latent token width d.
    set_dim
        Width h of each set's aggregated hidden state.
    hidden_dim
        Width of the shared per-token MLP.
    dropout
        Dropout in the shared MLP.
    target_sum
        Per-cell normalisation total before ``log1p``.
    overlap
        Overlap weighting of the structured decoder (see :class:`PathwayLogits`).
    """

    def __init__(
        self,
        layout: PathwayLayout,
        token_dim: int,
        *,
        set_dim: int = 16,
        hidden_dim: int = 64,
        dropout: float = 0.1,
        target_sum: float = 1e4,
        overlap: str = "average",
    ) -> None:
        super().__init__()
        self.layout = layout
        self.n_tokens, self.token_dim, self.set_dim = layout.n_tokens, token_dim, set_dim
        self.target_sum, self.overlap_mode = target_sum, overlap
        gene_index = torch.as_tensor(layout.gene_index)
        set_index = torch.as_tensor(layout.set_index)
        self.register_buffer("gene_index", gene_index, persistent=False)
        self.register_buffer("set_index", set_index, persistent=False)
        size = torch.bincount(set_index, minlength=self.n_tokens).float()  # (m,)
        bound = 1.0 / size[set_index].sqrt()  # (E,) fan-in of each set
        self.member_weight = nn.Parameter((torch.rand(len(set_index), set_dim) * 2 - 1) * bound[:, None])  # (E, h)
        self.set_bias = nn.Parameter(torch.zeros(self.n_tokens, set_dim))  # (m, h)
        rows, cols = _membership_channels(set_index, gene_index, set_dim)
        self.aggregate = SparseMembership(rows, cols, (self.n_tokens * set_dim, layout.n_genes))
        self.trunk = mlp([set_dim, hidden_dim], dropout=dropout)
        self.head = nn.Linear(hidden_dim, 2 * token_dim)
        self.token_offset = nn.Parameter(torch.zeros(self.n_tokens, 2 * token_dim))  # (m, 2d)

    @classmethod
    def build(
        cls,
        genes: Sequence[str],
        *,
        config: TokenizerConfig,
        n_tokens: int,
        token_dim: int,
        hidden_dims: tuple[int, ...],
        dropout: float,
        target_sum: float,
        resources: TokenizerResources,
    ) -> Self:
        """Build from the tokenizer contract; ``n_tokens`` is ignored (one token per kept set).

        Raises
        ------
        InvalidInputError
            If ``resources.gene_sets`` is missing or no set is large enough.
        """
        layout = _layout_from_resources(genes, config, resources, "pathway")
        return cls(
            layout,
            token_dim,
            set_dim=config.set_dim,
            hidden_dim=hidden_dims[-1] if hidden_dims else config.set_dim,
            dropout=dropout,
            target_sum=target_sum,
            overlap=config.overlap,
        )

    def set_states(self, counts: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """``(B, G)`` counts, ``(B, 1)`` library -> ``(B, m, h)`` per-set aggregated hidden states."""
        x = log_normalize(counts, library, self.target_sum)  # (B, G)
        agg = self.aggregate(self.member_weight.reshape(-1), x)  # (B, m * h)
        return agg.view(-1, self.n_tokens, self.set_dim) + self.set_bias  # (B, m, h)

    def forward(self, counts: torch.Tensor, library: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters.

        Parameters
        ----------
        counts
            ``(B, G)`` raw counts.
        library
            ``(B, 1)`` library sizes.

        Returns
        -------
        ``(mu, logvar)``, each ``(B, m, d)`` (m = kept sets (+ residual)).
        """
        out = self.head(self.trunk(self.set_states(counts, library))) + self.token_offset  # (B, m, 2d)
        mu, logvar = out.chunk(2, dim=-1)  # (B, m, d) each
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def tokenize(self, counts: torch.Tensor, library: torch.Tensor) -> TokenBatch:
        """Pathway tokens: ids = set index ``(B, m)``, values = aggregated hidden ``(B, m, h)``, mask all True."""
        values = self.set_states(counts, library)  # (B, m, h)
        b = values.shape[0]
        ids = torch.arange(self.n_tokens, device=values.device).expand(b, -1)  # (B, m)
        return TokenBatch(ids=ids, values=values, mask=torch.ones_like(ids, dtype=torch.bool))

    def token_names(self) -> list[str]:
        """Kept set names (in input order), then ``"residual"`` if present."""
        return list(self.layout.token_names)

    def report(self) -> dict[str, Any]:
        """JSON-able: sets kept/dropped, memberships, genes in no set (residual or dropped)."""
        return {
            "tokenizer": "pathway",
            "n_genes": self.layout.n_genes,
            "n_tokens": self.n_tokens,
            "token_dim": self.token_dim,
            "overlap": self.overlap_mode,
            **self.layout.report,
        }

    def decoder_logits(self) -> nn.Module | None:
        """A new :class:`PathwayLogits` over this encoder's memberships (the caller owns its parameters)."""
        return PathwayLogits(
            self.gene_index.cpu(),
            self.set_index.cpu(),
            n_genes=self.layout.n_genes,
            n_tokens=self.n_tokens,
            token_dim=self.token_dim,
            overlap=self.overlap_mode,
        )


def _layout_from_resources(
    genes: Sequence[str], config: TokenizerConfig, resources: TokenizerResources, name: str
) -> PathwayLayout:
    if resources is None or resources.gene_sets is None:
        raise InvalidInputError(
            f"tokenizer {name!r} needs gene sets: pass --gene-sets FILE.gmt (or 'nmf' for data-driven modules), "
            "i.e. TokenizerResources(gene_sets=...)."
        )
    return pathway_layout(
        resources.gene_sets,
        genes,
        min_set_size=config.min_set_size,
        max_sets=config.max_sets,
        unassigned=config.unassigned,
    )
