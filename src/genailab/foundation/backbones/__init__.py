"""Backbones: token-sequence networks behind one contract.

``forward(x: (B, N, D), t: (B,) | None, cond: (B, C) | None, mask: (B, N) bool | None) -> (B, N, D_out)``.
They keep N, treat samples independently and are deterministic in eval mode. Implementations
register under :data:`BACKBONES` by name so configs and the CLI can pick them.
"""

from genailab.foundation.backbones.base import BACKBONES, Backbone, BackboneConfig
from genailab.foundation.backbones.mlp import MLPBackbone, MLPBackboneConfig

__all__ = ["BACKBONES", "Backbone", "BackboneConfig", "MLPBackbone", "MLPBackboneConfig"]
