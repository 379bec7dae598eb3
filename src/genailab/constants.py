"""Keys shared across the package: mini-batch dict keys and AnnData slots we write.

Every module reads batch and output keys from here, never from string literals, so a rename is one
edit (the scvi-tools ``REGISTRY_KEYS`` habit).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ADATA_KEYS", "BATCH_KEYS"]


class _BatchKeys(NamedTuple):
    COUNTS: str = "counts"  # (B, G) float32 raw counts
    LIBRARY: str = "library"  # (B, 1) float32 observed library size (sum of counts)
    GENE_MASK: str = "gene_mask"  # (G,) bool: genes observed in this dataset (False = zero-filled)
    CAT_COVS: str = "cat_covs"  # (B, K) int64 codes of the registered categorical keys, spec order
    CONT_COVS: str = "cont_covs"  # (B, C) float32 registered continuous covariates, spec order
    INDICES: str = "indices"  # (B,) int64 row index of each cell in its AnnData
    LATENT: str = "latent"  # (B, m, d) float32 standardised latent tokens (diffusion training data)
    CONDITIONS: str = "conditions"  # (B, K) float32 condition values (codes or standardised numbers)


BATCH_KEYS = _BatchKeys()


class _AdataKeys(NamedTuple):
    LATENT: str = "X_genailab"  # obsm: (n, m*d) flattened latent means
    LATENT_TOKENS: str = "X_genailab_tokens"  # obsm: (n, m, d) latent token means
    SYNTH_LATENT: str = "X_genailab_synthetic_latent"  # obsm: (n, m, d) generated latent tokens
    SAMPLING: str = "genailab_sampling"  # uns: the settings a synthetic AnnData was sampled with
    UNS: str = "genailab"  # uns: provenance (model dir, version, config) of what we wrote


ADATA_KEYS = _AdataKeys()
