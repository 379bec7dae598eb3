"""Sparse graph attention: each gene attends only to its regulators, in O(B x E x heads).

A dense attention over G genes with a mask that allows only regulatory edges still builds a ``G x G``
score matrix per head and cell -- 1.6 GB per head and cell at 20k genes. :class:`GraphAttention`
computes the same attention over the edge list instead (a graph attention layer, Veličković et al.,
ICLR 2018, arXiv:1710.10903, with transformer dot-product scores, Shi et al., IJCAI 2021,
arXiv:2009.03509): scores are computed per edge, normalised by a segment softmax over each target's
incoming edges (:func:`segment_softmax`, via ``scatter_reduce``/``index_add_``) and the values summed
back per target. Time and memory are O(B x E x W); a gene with no incoming edge gets a zero output.

:func:`dense_graph_attention_reference` is the dense masked equivalent, used by the tests (equality on
small graphs) and by ``benchmarks/bench_grn_attention.py`` (the cost comparison).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genailab.config import check_fraction, check_positive
from genailab.errors import InvalidInputError

__all__ = ["GraphAttention", "add_self_loops", "dense_graph_attention_reference", "segment_softmax"]


def segment_softmax(scores: torch.Tensor, index: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Softmax of ``scores`` over the entries that share a segment ``index``.

    Parameters
    ----------
    scores
        ``(B, E, H)`` one score per batch item, entry (edge) and head.
    index
        ``(E,)`` int64 segment (target node) of each entry, in ``[0, n_segments)``.
    n_segments
        Number of segments.

    Returns
    -------
    ``(B, E, H)`` weights that sum to 1 over each non-empty segment.
    """
    b, e, h = scores.shape
    expanded = index.view(1, e, 1).expand(b, e, h)  # (B, E, H)
    seg_max = scores.new_full((b, n_segments, h), -math.inf).scatter_reduce(
        1, expanded, scores.detach(), reduce="amax"
    )  # (B, S, H); the shift cancels in the softmax, so it carries no gradient
    ex = torch.exp(scores - seg_max[:, index])  # (B, E, H)
    denom = ex.new_zeros(b, n_segments, h).index_add_(1, index, ex)  # (B, S, H)
    return ex / denom[:, index]  # (B, E, H)


def add_self_loops(
    edge_index: torch.Tensor, edge_sign: torch.Tensor, n_nodes: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Append an edge ``i -> i`` (sign 0) for every node that has none.

    Parameters
    ----------
    edge_index
        ``(2, E)`` int64 ``[source, target]``.
    edge_sign
        ``(E,)`` float signs.
    n_nodes
        Number of nodes G.

    Returns
    -------
    ``(edge_index, edge_sign, n_added)`` with the loops appended after the original edges.
    """
    has_loop = torch.zeros(n_nodes, dtype=torch.bool, device=edge_index.device)
    loops = edge_index[0] == edge_index[1]
    has_loop[edge_index[0, loops]] = True
    nodes = torch.nonzero(~has_loop).flatten()  # (L,)
    edge_index = torch.cat([edge_index, nodes.expand(2, -1)], dim=1)  # (2, E + L)
    edge_sign = torch.cat([edge_sign, edge_sign.new_zeros(nodes.shape[0])])  # (E + L,)
    return edge_index, edge_sign, int(nodes.shape[0])


def _check_edges(edge_index: torch.Tensor, edge_sign: torch.Tensor | None, n_nodes: int) -> None:
    if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.dtype != torch.long:
        raise InvalidInputError(
            f"edge_index must be a (2, E) int64 tensor [source, target]; got {tuple(edge_index.shape)} "
            f"{edge_index.dtype}."
        )
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n_nodes):
        raise InvalidInputError(f"edge_index holds node ids outside [0, {n_nodes}) for h with {n_nodes} genes.")
    if edge_sign is not None and edge_sign.shape != (edge_index.shape[1],):
        raise InvalidInputError(
            f"edge_sign has shape {tuple(edge_sign.shape)}; expected ({edge_index.shape[1]},), one per edge."
        )


class GraphAttention(nn.Module):
    """Multi-head dot-product attention restricted to graph edges (targets attend to their sources).

    ``out_t = W_o concat_heads( sum_{s -> t} softmax_s(q_t . k_s / sqrt(d_h) + sign_{s,t} beta_h) v_s )``:
    ``beta`` is a learned per-head bias on the edge sign (+1 activation, -1 inhibition, 0 unknown),
    zero at init. A node with no incoming edge outputs exactly zero (the output projection has no
    bias). Self-loops are not added here: include ``i -> i`` edges (see :func:`add_self_loops`) for a
    node to attend to itself.

    Parameters
    ----------
    dim
        Token width W.
    n_heads
        Number of heads; must divide W.
    dropout
        Dropout on the attention weights (training only).
    """

    def __init__(self, dim: int, n_heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        check_positive("dim", dim, integer=True)
        check_positive("n_heads", n_heads, integer=True)
        check_fraction("dropout", dropout)
        if dim % n_heads:
            raise InvalidInputError(f"dim={dim} must be divisible by n_heads={n_heads}.")
        self.dim, self.n_heads = dim, n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim, bias=False)
        self.sign_bias = nn.Parameter(torch.zeros(n_heads))  # (H,)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, edge_sign: torch.Tensor | None = None) -> torch.Tensor:
        """Attend along edges.

        Parameters
        ----------
        h
            ``(B, G, W)`` node (gene) tokens.
        edge_index
            ``(2, E)`` int64 ``[source, target]``; pairs should be unique.
        edge_sign
            ``(E,)`` float edge signs, or ``None`` (no sign bias).

        Returns
        -------
        ``(B, G, W)``; row t depends only on ``h_t`` and the ``h_s`` of its sources s.
        """
        b, g, w = h.shape
        _check_edges(edge_index, edge_sign, g)
        heads, dh = self.n_heads, w // self.n_heads
        q, k, v = self.qkv(h).view(b, g, 3, heads, dh).unbind(dim=2)  # (B, G, H, dh) each
        src, tgt = edge_index[0], edge_index[1]
        scores = (q[:, tgt] * k[:, src]).sum(-1) / math.sqrt(dh)  # (B, E, H)
        if edge_sign is not None:
            scores = scores + edge_sign.to(scores.dtype)[:, None] * self.sign_bias  # (B, E, H)
        alpha = self.dropout(segment_softmax(scores, tgt, g))  # (B, E, H)
        out = h.new_zeros(b, g, heads, dh).index_add_(1, tgt, alpha[..., None] * v[:, src])  # (B, G, H, dh)
        return self.out(out.reshape(b, g, w))  # (B, G, W)


def dense_graph_attention_reference(
    attn: GraphAttention, h: torch.Tensor, edge_index: torch.Tensor, edge_sign: torch.Tensor | None = None
) -> torch.Tensor:
    """The dense masked equivalent of ``attn(h, edge_index, edge_sign)`` (no dropout), O(B x H x G^2).

    Builds the ``G x G`` edge mask (plus the per-head sign bias) and runs
    :func:`torch.nn.functional.scaled_dot_product_attention` with ``attn``'s weights; rows with no
    incoming edge are zeroed. For tests and the cost benchmark only; ``edge_index`` must not repeat
    a pair.

    Returns
    -------
    ``(B, G, W)``.
    """
    b, g, w = h.shape
    _check_edges(edge_index, edge_sign, g)
    heads, dh = attn.n_heads, w // attn.n_heads
    q, k, v = attn.qkv(h).view(b, g, 3, heads, dh).permute(2, 0, 3, 1, 4)  # (B, H, G, dh) each
    src, tgt = edge_index[0], edge_index[1]
    allowed = torch.zeros(g, g, dtype=torch.bool, device=h.device)  # (G_target, G_source)
    allowed[tgt, src] = True
    has_in = allowed.any(dim=1)  # (G,)
    allowed |= torch.diag(~has_in)  # a placeholder key keeps empty rows finite; they are zeroed below
    if edge_sign is None:
        mask: torch.Tensor = allowed  # (G, G) bool
    else:
        signs = torch.zeros(g, g, dtype=h.dtype, device=h.device)
        signs[tgt, src] = edge_sign.to(h.dtype)
        bias = signs * attn.sign_bias.view(heads, 1, 1)  # (H, G, G)
        mask = bias.masked_fill(~allowed, -math.inf)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, G, dh)
    out = out.transpose(1, 2).reshape(b, g, w) * has_in.view(1, g, 1)  # (B, G, W)
    return attn.out(out)
