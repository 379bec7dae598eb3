"""The token contract shared by every tokenizer.

Every tokenizer registered in :data:`TOKENIZERS` is an ``nn.Module`` *encoder* with the contract of
:class:`TokenEncoder`: it is built from the model's gene list, a :class:`TokenizerConfig` and the
prior-knowledge :class:`TokenizerResources` (gene sets, regulatory edges, Geneformer medians), and maps
raw counts ``(B, G)`` to a Gaussian posterior ``(mu, logvar)`` over ``m`` latent tokens of width ``d``.
The VAE, diffusion and decoding machinery is therefore the same whatever the tokenizer; only the
encoder (and optionally a structured decoder, :meth:`TokenEncoder.decoder_logits`) changes.

This module also holds the gene-id harmonisation shared by the gene-set and edge readers
(:func:`resolve_gene_ids`), so that gene sets or edges named by symbols can be used with a model
whose genes are Ensembl IDs (and vice versa) given a :class:`~genailab.data.GeneIdMap`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
import torch
from torch import nn

from genailab.config import Config, check_choice, check_positive
from genailab.data.gene_sets import EdgeList
from genailab.data.genes import GeneIdMap, detect_id_type, strip_ensembl_version
from genailab.errors import InvalidInputError
from genailab.registry import Registry

__all__ = [
    "LOGVAR_RANGE",
    "OVERLAPS",
    "TOKENIZERS",
    "UNASSIGNED_MODES",
    "TokenBatch",
    "TokenEncoder",
    "TokenizerConfig",
    "TokenizerResources",
    "build_tokenizer",
    "check_genes",
    "resolve_gene_ids",
]

TOKENIZERS: Registry = Registry("tokenizer")
"""Tokenizer name -> encoder class (each with the :class:`TokenEncoder` contract)."""

OVERLAPS: Registry = Registry("overlap weighting")
"""How a pathway-structured decoder combines the sets a gene belongs to (``"average"``, ``"learned"``)."""

UNASSIGNED_MODES = ("residual", "drop")
"""What a pathway tokenizer does with genes that are in no kept set."""

LOGVAR_RANGE = (-12.0, 8.0)
"""Every encoder clamps its posterior log-variance to this range."""


@dataclass
class TokenBatch:
    """A batch of token sequences.

    Attributes
    ----------
    ids
        ``(B, N)`` int64 token identities (latent slot, gene, pathway, ...).
    values
        ``(B, N, D)`` float token values (D = 1 for scalar values such as rank tokens' expression).
    mask
        ``(B, N)`` bool, True where a token is real (False = padding).
    """

    ids: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        b, n = self.ids.shape
        assert self.values.shape[:2] == (b, n), f"values {tuple(self.values.shape)} vs ids {(b, n)}"
        assert self.mask.shape == (b, n), f"mask {tuple(self.mask.shape)} vs ids {(b, n)}"


# ------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class TokenizerConfig(Config):
    """Which tokenizer encodes counts into latent tokens, and its structural options.

    The latent shape ``(m, d)``, hidden widths, dropout and normalisation total come from the model
    config and are passed to :meth:`TokenEncoder.build`; this config holds only what is specific to
    the tokenizers. Defaults suit ~2k genes on a CPU.

    Parameters
    ----------
    name
        Registered tokenizer name (see ``TOKENIZERS.names()``): ``"latent"``, ``"pathway"``, ``"grn"``,
        ``"grn+latent"``, ``"latent+pathway"`` or ``"rank"``.
    min_set_size
        Pathway tokens: gene sets with fewer model genes are dropped (and reported).
    max_sets
        Pathway tokens: keep at most this many sets, largest overlap with the model genes first (ties
        by name); ``None`` keeps every set of at least ``min_set_size`` genes.
    unassigned
        Pathway tokens: genes in no kept set feed one ``"residual"`` token, or are ``"drop"``-ped from
        the encoder input (the structured decoder then gives them only a per-gene bias).
    overlap
        Pathway decoder: how a gene's logit combines its sets, ``"average"`` (plain mean) or
        ``"learned"`` (softmax over learned per-membership logits, equal to the average at init).
    set_dim
        Pathway tokens: width h of the per-set aggregated hidden state.
    gene_dim
        Width of the gene tokens inside the GRN and rank encoders.
    n_layers
        GRN: graph-attention blocks; rank: transformer-encoder layers.
    n_heads
        Attention heads (must divide ``gene_dim``).
    self_loops
        GRN: every gene also attends to itself (so genes without regulators keep their own state).
    top_k
        Rank tokens: the ``top_k`` most expressed (median-scaled) genes of each cell are kept.
    n_free_tokens
        ``"latent+pathway"``: free latent tokens beside the pathway tokens.
    """

    name: str = "latent"
    min_set_size: int = 5
    max_sets: int | None = None
    unassigned: str = "residual"
    overlap: str = "average"
    set_dim: int = 16
    gene_dim: int = 32
    n_layers: int = 2
    n_heads: int = 2
    self_loops: bool = True
    top_k: int = 256
    n_free_tokens: int = 4

    def __post_init__(self) -> None:
        check_choice("tokenizer.name", self.name, TOKENIZERS.names())
        check_positive("tokenizer.min_set_size", self.min_set_size, integer=True)
        if self.max_sets is not None:
            check_positive("tokenizer.max_sets", self.max_sets, integer=True)
        check_choice("tokenizer.unassigned", self.unassigned, UNASSIGNED_MODES)
        check_choice("tokenizer.overlap", self.overlap, OVERLAPS.names())
        for field in ("set_dim", "gene_dim", "n_layers", "n_heads", "top_k", "n_free_tokens"):
            check_positive(f"tokenizer.{field}", getattr(self, field), integer=True)
        if self.gene_dim % self.n_heads:
            raise InvalidInputError(
                f"tokenizer.gene_dim={self.gene_dim} must be divisible by tokenizer.n_heads={self.n_heads}."
            )
        if not isinstance(self.self_loops, bool):
            raise InvalidInputError(f"tokenizer.self_loops={self.self_loops!r} must be true or false.")


# ---------------------------------------------------------------------------------------- resources
@dataclass(frozen=True, eq=False)
class TokenizerResources:
    """Data a tokenizer is built from; saved beside the model as JSON (:meth:`to_dict` / :meth:`from_dict`).

    All ids must already be in the model's gene-id space (see
    :func:`~genailab.tokenizers.harmonize_gene_sets` and :func:`~genailab.tokenizers.harmonize_edges`).

    Parameters
    ----------
    gene_sets
        Set name -> gene ids (pathway tokens, or data-driven modules from
        :func:`~genailab.tokenizers.fit_nmf_modules`).
    edges
        Regulator -> target edges (GRN tokens).
    gene_medians
        Gene id -> Geneformer-style non-zero median expression (rank tokens; genes without one use 1).
    """

    gene_sets: Mapping[str, tuple[str, ...]] | None = None
    edges: EdgeList | None = None
    gene_medians: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if self.gene_sets is not None:
            if not isinstance(self.gene_sets, Mapping):
                raise InvalidInputError(
                    f"gene_sets must be a mapping of set name -> gene ids, got {type(self.gene_sets).__name__}."
                )
            sets: dict[str, tuple[str, ...]] = {}
            for name, genes in self.gene_sets.items():
                if isinstance(genes, str) or not isinstance(genes, Sequence | np.ndarray):
                    raise InvalidInputError(f"gene_sets[{name!r}] must be a sequence of gene ids, got {genes!r}.")
                sets[str(name)] = tuple(str(g) for g in genes)
            object.__setattr__(self, "gene_sets", sets)
        if self.edges is not None and not isinstance(self.edges, EdgeList):
            raise InvalidInputError(f"edges must be an EdgeList or None, got {type(self.edges).__name__}.")
        if self.gene_medians is not None:
            if not isinstance(self.gene_medians, Mapping):
                raise InvalidInputError(
                    f"gene_medians must be a mapping of gene id -> median, got {type(self.gene_medians).__name__}."
                )
            medians = {str(g): float(v) for g, v in self.gene_medians.items()}
            bad = [(g, v) for g, v in medians.items() if not (math.isfinite(v) and v > 0)]
            if bad:
                raise InvalidInputError(
                    f"gene_medians[{bad[0][0]!r}]={bad[0][1]!r}; every median must be finite and > 0."
                )
            object.__setattr__(self, "gene_medians", medians)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (edges as ``{"source": [...], "target": [...], "sign": [...]}``)."""
        edges = None
        if self.edges is not None:
            edges = {
                "source": self.edges.source.tolist(),
                "target": self.edges.target.tolist(),
                "sign": self.edges.sign.tolist(),
            }
        return {
            "gene_sets": None if self.gene_sets is None else {k: list(v) for k, v in self.gene_sets.items()},
            "edges": edges,
            "gene_medians": None if self.gene_medians is None else dict(self.gene_medians),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenizerResources:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"TokenizerResources: expected a mapping, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"TokenizerResources: unknown key(s) {unknown}; valid keys are {sorted(known)}.")
        edges = data.get("edges")
        if edges is not None:
            missing = sorted({"source", "target", "sign"} - set(edges))
            if missing:
                raise InvalidInputError(f"TokenizerResources edges lack key(s) {missing}.")
            edges = EdgeList(
                source=np.asarray(edges["source"], dtype=str),
                target=np.asarray(edges["target"], dtype=str),
                sign=np.asarray(edges["sign"], dtype=np.float64),
            )
        sets = data.get("gene_sets")
        return cls(
            gene_sets=None if sets is None else {k: tuple(v) for k, v in sets.items()},
            edges=edges,
            gene_medians=data.get("gene_medians"),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenizerResources):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


# ----------------------------------------------------------------------------------------- contract
@runtime_checkable
class TokenEncoder(Protocol):
    """What every registered tokenizer provides (the contract of :class:`LatentTokenEncoder`, extended).

    Attributes
    ----------
    n_tokens
        Number m of latent tokens actually produced (a pathway tokenizer's m is its number of kept
        sets, plus one residual token, plus free tokens for the hybrid).
    token_dim
        Latent token width d.
    """

    n_tokens: int
    token_dim: int

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
        """Build the encoder for the model's ``genes`` from the config and the resources."""
        ...

    def forward(self, counts: torch.Tensor, library: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, G)`` counts and ``(B, 1)`` library -> ``(mu, logvar)``, each ``(B, m, d)``."""
        ...

    def tokenize(self, counts: torch.Tensor, library: torch.Tensor) -> TokenBatch:
        """The tokenizer's own input token space."""
        ...

    def token_names(self) -> list[str]:
        """Names of the ``m`` latent tokens."""
        ...

    def report(self) -> dict[str, Any]:
        """JSON-able summary: genes used/dropped, sets kept/dropped, edges kept, ..."""
        ...

    def decoder_logits(self) -> nn.Module | None:
        """A module ``z (B, m, d) -> gene logits (B, G)`` for a structured decoder, or ``None``."""
        ...


def build_tokenizer(
    genes: Sequence[str],
    *,
    config: TokenizerConfig,
    n_tokens: int,
    token_dim: int,
    hidden_dims: tuple[int, ...],
    dropout: float,
    target_sum: float,
    resources: TokenizerResources | None = None,
) -> nn.Module:
    """Build the tokenizer named by ``config.name`` (see :meth:`TokenEncoder.build` for the arguments).

    Raises
    ------
    InvalidInputError
        If the tokenizer needs a resource that is missing, or an argument is invalid.
    """
    if not isinstance(config, TokenizerConfig):
        raise InvalidInputError(f"config must be a TokenizerConfig, got {type(config).__name__}.")
    check_positive("n_tokens", n_tokens, integer=True)
    check_positive("token_dim", token_dim, integer=True)
    return TOKENIZERS.get(config.name).build(
        genes,
        config=config,
        n_tokens=n_tokens,
        token_dim=token_dim,
        hidden_dims=tuple(hidden_dims),
        dropout=dropout,
        target_sum=target_sum,
        resources=TokenizerResources() if resources is None else resources,
    )


# ------------------------------------------------------------------------------------------ helpers
def check_genes(genes: Sequence[str], argument: str = "genes") -> tuple[str, ...]:
    """Validate the model's gene list: a non-empty sequence of unique strings.

    Returns
    -------
    The genes as a tuple.
    """
    if isinstance(genes, str) or not isinstance(genes, Sequence | np.ndarray):
        raise InvalidInputError(f"{argument} must be a sequence of gene ids, got {type(genes).__name__}.")
    out = tuple(genes)
    if not out:
        raise InvalidInputError(f"{argument} is empty; expected the model's gene list.")
    bad = [g for g in out if not isinstance(g, str)]
    if bad:
        raise InvalidInputError(f"{argument} must hold strings; found {bad[0]!r} ({type(bad[0]).__name__}).")
    if len(set(out)) != len(out):
        seen: set[str] = set()
        dups = [g for g in out if g in seen or seen.add(g)]
        raise InvalidInputError(
            f"{argument} has duplicate id(s) (e.g. {dups[:3]}); a model's gene list must be unique."
        )
    return out


def resolve_gene_ids(
    ids: Sequence[str],
    genes: Sequence[str],
    *,
    id_map: GeneIdMap | None,
    what: str,
) -> tuple[list[str | None], dict[str, Any]]:
    """Map prior-knowledge gene ids onto the model's genes (translating symbols <-> Ensembl when needed).

    Ensembl version suffixes are ignored on both sides.

    Parameters
    ----------
    ids
        Gene ids as named by the prior (a GMT, an edge table).
    genes
        The model's gene list.
    id_map
        Symbol <-> Ensembl map, needed only when the two id types differ.
    what
        What ``ids`` come from, for messages (``"gene sets"``, ``"edges"``).

    Returns
    -------
    ``(model_ids, report)``: the model gene each id maps to (``None`` when it has no translation or is
    not a model gene), and a report with the id types, whether ids were translated and how many ids
    could not be translated / are not model genes.

    Raises
    ------
    InvalidInputError
        If the id types differ and no ``id_map`` is given.
    """
    if id_map is not None and not isinstance(id_map, GeneIdMap):
        raise InvalidInputError(f"id_map must be a GeneIdMap or None, got {type(id_map).__name__}.")
    ids = list(ids)
    src_type = detect_id_type(ids)
    tgt_type = detect_id_type(list(genes))
    translated = src_type != tgt_type
    if translated:
        if id_map is None:
            raise InvalidInputError(
                f"the {what} name genes by {src_type} ids (e.g. {', '.join(ids[:3])}) but the model's genes are "
                f"{tgt_type} ids (e.g. {', '.join(list(genes)[:3])}); pass id_map=GeneIdMap.from_tsv(...) (CLI: "
                "--id-map FILE.tsv) to translate them, or build the model on the var column that holds "
                f"{src_type} ids."
            )
        keys: list[str | None] = id_map.translate(ids, to=tgt_type)
    else:
        keys = [strip_ensembl_version(i) for i in ids]
    model = {strip_ensembl_version(g): g for g in genes}
    out = [None if k is None else model.get(strip_ensembl_version(k)) for k in keys]
    report = {
        "source_id_type": src_type,
        "model_id_type": tgt_type,
        "translated": translated,
        "n_ids": len(set(ids)),
        "n_untranslated": len({i for i, k in zip(ids, keys, strict=True) if k is None}),
        "n_not_in_model": len({i for i, k, o in zip(ids, keys, out, strict=True) if k is not None and o is None}),
    }
    return out, report
