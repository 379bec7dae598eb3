"""Tokenizers: interchangeable encoders from counts ``(B, G)`` to Gaussian latent tokens ``(B, m, d)``.

Tokenization is an architectural choice. Every tokenizer registered in :data:`TOKENIZERS` has the
same contract (:class:`TokenEncoder`: ``build``, ``forward -> (mu, logvar)``, ``tokenize``,
``token_names``, ``report``, ``decoder_logits``), so the count VAE, the latent diffusion and decoding
stay one pipeline whichever is chosen with :class:`TokenizerConfig`:

==================  =============================================================================
name                tokens
==================  =============================================================================
``"latent"``        learned latent tokens from an MLP over all genes (:class:`LatentTokenEncoder`)
``"pathway"``       one token per gene set (+ residual), pathway-structured decoder
                    (:class:`PathwayTokenEncoder`, :class:`PathwayLogits`); gene sets from a GMT or
                    data-driven NMF modules (:func:`fit_nmf_modules`)
``"grn"``           gene tokens refined by sparse graph attention over prior regulatory edges, pooled
                    into m tokens (:class:`GRNTokenEncoder`, :class:`GraphAttention`)
``"grn+latent"``    the GRN tokens plus a learned latent adjacency (:class:`GRNLatentEncoder`)
``"latent+pathway"``  pathway tokens plus free latent tokens (:class:`PathwayLatentEncoder`)
``"rank"``          Geneformer-style rank-value tokens through a small transformer
                    (:class:`RankTokenEncoder`, :func:`rank_tokenize`)
==================  =============================================================================

Prior knowledge (:class:`TokenizerResources`) is translated into the model's gene ids with
:func:`harmonize_gene_sets` / :func:`harmonize_edges`; :func:`token_shift` says which tokens moved
between two groups of cells.
"""

from genailab.nn import log_normalize
from genailab.tokenizers.attribution import token_shift
from genailab.tokenizers.base import (
    OVERLAPS,
    TOKENIZERS,
    TokenBatch,
    TokenEncoder,
    TokenizerConfig,
    TokenizerResources,
    build_tokenizer,
)
from genailab.tokenizers.grn import GRNTokenEncoder, edge_index_from, harmonize_edges
from genailab.tokenizers.hybrid import GRNLatentEncoder, LearnedAdjacency, PathwayLatentEncoder
from genailab.tokenizers.latent import LatentTokenEncoder
from genailab.tokenizers.modules import fit_nmf_modules
from genailab.tokenizers.pathway import (
    PathwayLayout,
    PathwayLogits,
    PathwayTokenEncoder,
    harmonize_gene_sets,
    pathway_layout,
)
from genailab.tokenizers.rank import RankTokenEncoder, gene_medians_from_geneformer, rank_tokenize
from genailab.tokenizers.sparse_attention import GraphAttention, dense_graph_attention_reference

__all__ = [
    "OVERLAPS",
    "TOKENIZERS",
    "GRNLatentEncoder",
    "GRNTokenEncoder",
    "GraphAttention",
    "LatentTokenEncoder",
    "LearnedAdjacency",
    "PathwayLatentEncoder",
    "PathwayLayout",
    "PathwayLogits",
    "PathwayTokenEncoder",
    "RankTokenEncoder",
    "TokenBatch",
    "TokenEncoder",
    "TokenizerConfig",
    "TokenizerResources",
    "build_tokenizer",
    "dense_graph_attention_reference",
    "edge_index_from",
    "fit_nmf_modules",
    "gene_medians_from_geneformer",
    "harmonize_edges",
    "harmonize_gene_sets",
    "log_normalize",
    "pathway_layout",
    "rank_tokenize",
    "token_shift",
]
