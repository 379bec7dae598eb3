from __future__ import annotations

import pytest
import torch

from genailab.errors import CheckpointError, InvalidInputError
from genailab.foundation.backbones import BACKBONES, MLPBackbone, MLPBackboneConfig

from .contracts import BackboneContract


class TestMLPBackbone(BackboneContract):
    def make_module(self):
        return MLPBackbone(
            MLPBackboneConfig(n_tokens=4, token_dim=8, n_cond_tokens=2, cond_dim=5, hidden_dim=32, depth=2)
        )

    def make_inputs(self, batch):
        return torch.randn(batch, 4, 8), torch.rand(batch), torch.randn(batch, 2, 5), None


def test_registry_and_shape_errors(tmp_path):
    assert BACKBONES.get("mlp") is MLPBackbone
    m = MLPBackbone(MLPBackboneConfig(n_tokens=4, token_dim=8, n_cond_tokens=2, cond_dim=5, hidden_dim=16))
    with pytest.raises(InvalidInputError, match=r"x must have shape \(B, 4, 8\)"):
        m(torch.randn(2, 3, 8), torch.rand(2), torch.randn(2, 2, 5))
    with pytest.raises(InvalidInputError, match="cond must have shape"):
        m(torch.randn(2, 4, 8), torch.rand(2), None)
    with pytest.raises(InvalidInputError, match="t must have shape"):
        m(torch.randn(2, 4, 8), torch.rand(3), torch.randn(2, 2, 5))
    with pytest.raises(InvalidInputError, match="hidden_dim"):
        MLPBackboneConfig(hidden_dim=0)
    with pytest.raises(CheckpointError, match="does not exist"):
        MLPBackbone.from_pretrained(tmp_path / "missing")


def test_mask_hides_padding_tokens():
    m = MLPBackbone(MLPBackboneConfig(n_tokens=4, token_dim=2, hidden_dim=16))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 4, 2)
    mask = torch.tensor([[True, True, False, False]])
    x2 = x.clone()
    x2[:, 2:] = 100.0
    torch.testing.assert_close(m(x, None, None, mask), m(x2, None, None, mask))
