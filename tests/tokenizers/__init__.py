"""Tests of the tokenizers, plus tiny synthetic genes, gene sets and edges shared by them."""

from __future__ import annotations

import numpy as np
import torch

from genailab.data import EdgeList
from genailab.tokenizers import TokenizerConfig, TokenizerResources, build_tokenizer

GENES = tuple(f"G{i:02d}" for i in range(24))
# SET_A and SET_B overlap on G05-G07; TINY is below min_set_size=3; G13 and G20-G23 are in no kept set.
GENE_SETS = {
    "SET_A": tuple(GENES[0:8]),
    "SET_B": tuple(GENES[5:13]),
    "SET_C": tuple(GENES[14:20]),
    "TINY": (GENES[20], GENES[21]),
}
IN_SETS = set(GENES[0:13]) | set(GENES[14:20])
UNASSIGNED = [i for i, g in enumerate(GENES) if g not in IN_SETS]


def make_edges(genes=GENES, n_edges: int = 60, seed: int = 0) -> EdgeList:
    """Random signed regulator -> target edges among ``genes``; the last gene is never a target."""
    rng = np.random.default_rng(seed)
    src = rng.choice(len(genes), n_edges)
    tgt = rng.choice(len(genes) - 1, n_edges)
    return EdgeList(
        source=np.array([genes[i] for i in src]),
        target=np.array([genes[i] for i in tgt]),
        sign=rng.choice([-1.0, 0.0, 1.0], n_edges),
    )


def make_resources() -> TokenizerResources:
    medians = {g: float(1 + i % 5) for i, g in enumerate(GENES[:16])}
    return TokenizerResources(gene_sets=GENE_SETS, edges=make_edges(), gene_medians=medians)


def make_counts(batch: int = 4, n_genes: int = len(GENES), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Poisson counts with one empty cell (the last), and their library sizes ``(B, 1)``."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.poisson(torch.rand(batch, n_genes, generator=gen) * 6, generator=gen)
    counts[-1] = 0.0
    return counts, counts.sum(1, keepdim=True)


def build(name: str, resources: TokenizerResources | None = None, **overrides):
    """A tiny tokenizer ``name`` over :data:`GENES` (m = 3 requested, d = 4)."""
    config = TokenizerConfig(name=name, min_set_size=3, gene_dim=8, n_layers=1, n_heads=2, top_k=10, **overrides)
    return build_tokenizer(
        GENES,
        config=config,
        n_tokens=3,
        token_dim=4,
        hidden_dims=(16,),
        dropout=0.1,
        target_sum=1e4,
        resources=make_resources() if resources is None else resources,
    )


def randomise(module: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Perturb every parameter (zero-initialised paths included) so that every path is active."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module
