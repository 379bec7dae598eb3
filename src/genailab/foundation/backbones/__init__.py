"""Backbones: token-sequence networks behind one contract.

``forward(x: (B, N, D), t: (B,) | None, cond: (B, K, C) | None, mask: (B, N) bool | None) -> (B, N, D_out)``

where ``cond`` holds K condition tokens of width C (one per registered condition key, see
:mod:`genailab.foundation.conditioning`): cross-attention attends over them, adaLN / FiLM pool them.
They keep N, treat samples independently and are deterministic in eval mode. Implementations
register under :data:`BACKBONES` by name so configs and the CLI can pick them.
"""

from genailab.foundation.backbones.base import BACKBONES, Backbone, BackboneConfig
from genailab.foundation.backbones.mlp import MLPBackbone, MLPBackboneConfig

__all__ = ["BACKBONES", "Backbone", "BackboneConfig", "MLPBackbone", "MLPBackboneConfig"]

from genailab.foundation.backbones.dit import DiT, DiTBlock, DiTConfig  # noqa: E402
from genailab.foundation.backbones.unet import UNet1D, UNet1DConfig  # noqa: E402

__all__ += ["DiT", "DiTBlock", "DiTConfig", "UNet1D", "UNet1DConfig"]

from genailab.foundation.backbones.presets import (  # noqa: E402
    backbone_config,
    backbone_from_dict,
    backbone_name,
    backbone_presets,
    backbone_to_dict,
    build_backbone,
)

__all__ += [
    "backbone_config",
    "backbone_from_dict",
    "backbone_name",
    "backbone_presets",
    "backbone_to_dict",
    "build_backbone",
]
