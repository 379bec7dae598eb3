"""GRN tokens: gene tokens refined along prior regulatory edges, pooled into latent tokens.

:class:`GRNTokenEncoder` (registered as ``"grn"``) embeds every gene as a token (gene identity + its
log-normalised value), runs ``n_layers`` pre-LN blocks of sparse :class:`GraphAttention` (each gene
attends only to its regulators in a prior network such as CollecTRI, Müller-Dott et al., NAR 2023) and
an MLP, then pools the ``G`` gene tokens into ``m`` latent tokens by learned-query cross-attention
(O(m x G), as in the Perceiver, Jaegle et al., ICML 2021, arXiv:2103.03206) and maps them to
``(mu, logvar)``. Edges come from :func:`~genailab.data.read_edges`, translated into the model's gene ids
with :func:`harmonize_edges`, and become an ``edge_index`` with :func:`edge_index_from`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import torch
from torch import nn

from genailab.data.gene_sets import EdgeList
from genailab.data.genes import GeneIdMap, detect_id_type
from genailab.errors import InvalidInputError
from genailab.nn import log_normalize, mlp, multi_head_attention
from genailab.tokenizers.base import (
    LOGVAR_RANGE,
    TOKENIZERS,
    TokenBatch,
    TokenizerConfig,
    TokenizerResources,
    check_genes,
    resolve_gene_ids,
)
from genailab.tokenizers.sparse_attention import GraphAttention, add_self_loops

__all__ = ["GRNTokenEncoder", "GraphBlock", "QueryPooling", "edge_index_from", "harmonize_edges"]


def _check_edge_list(edges: EdgeList, argument: str = "edges") -> None:
    if not isinstance(edges, EdgeList):
        raise InvalidInputError(f"{argument} must be an EdgeList (see read_edges), got {type(edges).__name__}.")
    if len(edges) == 0:
        raise InvalidInputError(f"{argument} is empty; expected at least one regulator -> target edge.")


def harmonize_edges(
    edges: EdgeList, genes: Sequence[str], *, id_map: GeneIdMap | None = None
) -> tuple[EdgeList, dict[str, Any]]:
    """Translate an edge list into the model's gene ids and keep the edges between model genes.

    Parameters
    ----------
    edges
        Regulator -> target edges, e.g. from :func:`~genailab.data.read_edges`.
    genes
        The model's gene list.
    id_map
        Symbol <-> Ensembl map, needed when the edges and the model use different id types.

    Returns
    -------
    ``(edges, report)``: the edges whose source and target are both model genes (in model ids, input
    order), and a JSON-able report (id types, ids without translation, ids not in the model, edges
    kept / dropped).

    Raises
    ------
    InvalidInputError
        If ``edges`` is empty, the id types differ and no ``id_map`` is given, or no edge joins two
        model genes.
    """
    _check_edge_list(edges)
    genes = check_genes(genes)
    ids = list(dict.fromkeys([*edges.source.tolist(), *edges.target.tolist()]))
    model_ids, id_report = resolve_gene_ids(ids, genes, id_map=id_map, what="edges")
    lookup = dict(zip(ids, model_ids, strict=True))
    src = np.array([lookup[s] or "" for s in edges.source.tolist()], dtype=object)
    tgt = np.array([lookup[t] or "" for t in edges.target.tolist()], dtype=object)
    keep = (src != "") & (tgt != "")
    if not keep.any():
        raise InvalidInputError(
            f"none of the {len(edges)} edges joins two of the model's {len(genes)} genes (edges name e.g. "
            f"{', '.join(ids[:3])}; model e.g. {', '.join(genes[:3])}); check the species, the id type and that "
            "the network covers the model's genes."
        )
    out = EdgeList(source=src[keep].astype(str), target=tgt[keep].astype(str), sign=edges.sign[keep])
    report = {**id_report, "n_edges_input": len(edges), "n_edges_kept": len(out), "n_edges_dropped": int((~keep).sum())}
    return out, report


def edge_index_from(
    edges: EdgeList, genes: Sequence[str], *, self_loops: bool = False
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Turn edges (in the model's gene ids) into a ``(2, E)`` ``[source, target]`` index over ``genes``.

    Edges with an endpoint outside ``genes`` are dropped; repeated ``(source, target)`` pairs keep the
    first sign. With ``self_loops``, an edge ``g -> g`` (sign 0) is added for every gene lacking one.

    Parameters
    ----------
    edges
        Regulator -> target edges in the model's gene ids (see :func:`harmonize_edges`).
    genes
        The model's gene list.
    self_loops
        Whether every gene also attends to itself.

    Returns
    -------
    ``(edge_index, sign, report)``: ``(2, E)`` int64, ``(E,)`` float32, and a JSON-able report (edges
    input / kept / outside the genes / duplicated, self-loops added, regulators, targets, genes with
    no regulator).

    Raises
    ------
    InvalidInputError
        If ``edges`` is empty or no edge joins two of ``genes`` (with a hint when the id types differ).
    """
    _check_edge_list(edges)
    genes = check_genes(genes)
    position = {g: i for i, g in enumerate(genes)}
    src = np.array([position.get(s, -1) for s in edges.source.tolist()], dtype=np.int64)
    tgt = np.array([position.get(t, -1) for t in edges.target.tolist()], dtype=np.int64)
    known = (src >= 0) & (tgt >= 0)
    if not known.any():
        hint = ""
        edge_type, gene_type = detect_id_type(list(edges.genes)), detect_id_type(list(genes))
        if edge_type != gene_type:
            hint = f" The edges use {edge_type} ids but the model's genes are {gene_type} ids: use harmonize_edges."
        raise InvalidInputError(
            f"none of the {len(edges)} edges joins two of the model's {len(genes)} genes (edges e.g. "
            f"{edges.source[0]} -> {edges.target[0]}; genes e.g. {', '.join(genes[:3])}).{hint}"
        )
    pairs = src[known] * len(genes) + tgt[known]
    _, first = np.unique(pairs, return_index=True)
    first = np.sort(first)  # input order, first occurrence of each pair
    edge_index = torch.as_tensor(np.stack([src[known][first], tgt[known][first]]))  # (2, E)
    sign = torch.as_tensor(edges.sign[known][first], dtype=torch.float32)  # (E,)
    n_loops = 0
    if self_loops:
        edge_index, sign, n_loops = add_self_loops(edge_index, sign, len(genes))
    has_in = torch.zeros(len(genes), dtype=torch.bool)
    has_in[edge_index[1]] = True
    report = {
        "n_edges_input": len(edges),
        "n_edges_outside_genes": int((~known).sum()),
        "n_edges_duplicated": int(known.sum() - first.size),
        "n_edges_kept": int(first.size),
        "n_self_loops_added": n_loops,
        "n_regulators": int(np.unique(src[known][first]).size),
        "n_targets": int(np.unique(tgt[known][first]).size),
        "n_genes_without_regulator": int((~has_in).sum()),
    }
    return edge_index, sign, report


class GraphBlock(nn.Module):
    """Pre-LN block: ``h + GraphAttention(LN(h))``, then ``h + MLP(LN(h))``; the identity at init.

    Parameters
    ----------
    dim, n_heads, dropout
        Width, attention heads and dropout.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GraphAttention(dim, n_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        nn.init.zeros_(self.attn.out.weight)  # added paths start as the identity
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, edge_sign: torch.Tensor) -> torch.Tensor:
        """``(B, G, W)`` -> ``(B, G, W)``."""
        h = h + self.attn(self.norm1(h), edge_index, edge_sign)  # (B, G, W)
        return h + self.mlp(self.norm2(h))  # (B, G, W)


class QueryPooling(nn.Module):
    """``m`` learned queries cross-attend over ``N`` tokens: ``(B, N, W)`` -> ``(B, m, W)``, O(m x N).

    Parameters
    ----------
    n_queries, dim, n_heads
        m, W and attention heads.
    """

    def __init__(self, n_queries: int, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.queries = nn.Parameter(torch.randn(n_queries, dim) * dim**-0.5)  # (m, W)
        self.norm = nn.LayerNorm(dim)
        self.kv = nn.Linear(dim, 2 * dim)

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens`` ``(B, N, W)``, ``key_mask`` ``(B, N)`` bool (True = real) -> ``(B, m, W)``."""
        k, v = self.kv(self.norm(tokens)).chunk(2, dim=-1)  # (B, N, W) each
        q = self.queries.expand(tokens.shape[0], -1, -1)  # (B, m, W)
        return q + multi_head_attention(q, k, v, self.n_heads, key_mask=key_mask)  # (B, m, W)


@TOKENIZERS.register("grn")
class GRNTokenEncoder(nn.Module):
    """Gene tokens refined by sparse graph attention over prior edges, pooled into m latent tokens.

    Parameters
    ----------
    n_genes
        Number of genes G.
    edge_index, edge_sign
        ``(2, E)`` int64 ``[source, target]`` and ``(E,)`` float signs over the genes (self-loops
        included when wanted), e.g. from :func:`edge_index_from`.
    n_tokens, token_dim
        Latent shape ``(m, d)``.
    gene_dim
        Width W of the gene tokens.
    n_layers, n_heads
        Graph-attention blocks and heads.
    hidden_dim
        Width of the MLP between pooling and the ``(mu, logvar)`` head.
    dropout
        Dropout in the blocks and the head MLP.
    target_sum
        Per-cell normalisation total before ``log1p``.
    edge_report
        The report of :func:`edge_index_from` (kept in :meth:`report`).
    """

    def __init__(
        self,
        n_genes: int,
        edge_index: torch.Tensor,
        edge_sign: torch.Tensor,
        n_tokens: int,
        token_dim: int,
        *,
        gene_dim: int = 32,
        n_layers: int = 2,
        n_heads: int = 2,
        hidden_dim: int = 64,
        dropout: float = 0.1,
        target_sum: float = 1e4,
        edge_report: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.n_genes, self.n_tokens, self.token_dim, self.target_sum = n_genes, n_tokens, token_dim, target_sum
        self.edge_report = dict(edge_report or {})
        self.register_buffer("edge_index", edge_index.long(), persistent=False)
        self.register_buffer("edge_sign", edge_sign.float(), persistent=False)
        self.gene_embedding = nn.Parameter(torch.randn(n_genes, gene_dim) * 0.02)  # (G, W)
        self.value_mlp = nn.Sequential(nn.Linear(1, gene_dim), nn.GELU(), nn.Linear(gene_dim, gene_dim))
        self.blocks = nn.ModuleList(GraphBlock(gene_dim, n_heads, dropout) for _ in range(n_layers))
        self.pool = QueryPooling(n_tokens, gene_dim, n_heads)
        self.trunk = mlp([gene_dim, hidden_dim], dropout=dropout)
        self.head = nn.Linear(hidden_dim, 2 * token_dim)

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
        """Build from the tokenizer contract.

        Raises
        ------
        InvalidInputError
            If ``resources.edges`` is missing, empty or joins no two model genes.
        """
        genes = check_genes(genes)
        if resources is None or resources.edges is None:
            raise InvalidInputError(
                f"tokenizer {config.name!r} needs regulatory edges: pass --grn FILE.tsv (a source/target edge "
                "table such as CollecTRI), i.e. TokenizerResources(edges=read_edges(...))."
            )
        edge_index, sign, report = edge_index_from(resources.edges, genes, self_loops=config.self_loops)
        return cls(
            len(genes),
            edge_index,
            sign,
            n_tokens,
            token_dim,
            gene_dim=config.gene_dim,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
            hidden_dim=hidden_dims[-1] if hidden_dims else config.gene_dim,
            dropout=dropout,
            target_sum=target_sum,
            edge_report={**report, "self_loops": config.self_loops},
        )

    def gene_tokens(self, counts: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """``(B, G)`` counts, ``(B, 1)`` library -> ``(B, G, W)`` gene tokens after the graph blocks."""
        x = log_normalize(counts, library, self.target_sum)  # (B, G)
        h = self.gene_embedding + self.value_mlp(x.unsqueeze(-1))  # (B, G, W)
        for block in self.blocks:
            h = block(h, self.edge_index, self.edge_sign)  # (B, G, W)
        return h

    def pooled(self, counts: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """``(B, m, W)`` latent token states (learned-query pooling of the gene tokens)."""
        return self.pool(self.gene_tokens(counts, library))  # (B, m, W)

    def posterior(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, m, W)`` token states -> ``(mu, logvar)``, each ``(B, m, d)``."""
        mu, logvar = self.head(self.trunk(states)).chunk(2, dim=-1)  # (B, m, d) each
        return mu, logvar.clamp(*LOGVAR_RANGE)

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
        ``(mu, logvar)``, each ``(B, m, d)``.
        """
        return self.posterior(self.pooled(counts, library))

    def tokenize(self, counts: torch.Tensor, library: torch.Tensor) -> TokenBatch:
        """Gene tokens: ids = gene index ``(B, G)``, values = log-normalised value ``(B, G, 1)``, mask all True."""
        x = log_normalize(counts, library, self.target_sum)  # (B, G)
        ids = torch.arange(self.n_genes, device=x.device).expand(x.shape[0], -1)  # (B, G)
        return TokenBatch(ids=ids, values=x.unsqueeze(-1), mask=torch.ones_like(ids, dtype=torch.bool))

    def token_names(self) -> list[str]:
        """``["grn_0", ..., "grn_{m-1}"]``."""
        return [f"grn_{i}" for i in range(self.n_tokens)]

    def report(self) -> dict[str, Any]:
        """JSON-able: edges kept / dropped, self-loops, genes without a regulator."""
        return {
            "tokenizer": "grn",
            "n_genes": self.n_genes,
            "n_tokens": self.n_tokens,
            "token_dim": self.token_dim,
            "n_layers": len(self.blocks),
            "n_edges": int(self.edge_index.shape[1]),
            **self.edge_report,
        }

    def decoder_logits(self) -> nn.Module | None:
        """``None``: GRN tokens use the default MLP decoder."""
        return None
