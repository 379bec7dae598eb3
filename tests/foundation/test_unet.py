from __future__ import annotations

import pytest
import torch

from genailab.errors import InvalidInputError
from genailab.foundation.backbones import BACKBONES, UNet1D, UNet1DConfig

from .contracts import BackboneContract

D, K, C = 4, 2, 3


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny shapes gain nothing from intra-op threads, and on a shared 2-core machine OpenMP barriers
    # make each op 100x slower; restore the global setting afterwards.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_unet(n: int, conditional: bool = True, **kw) -> UNet1D:
    fields = {"base_channels": 8, "levels": 2, "channel_mults": (1, 2), **kw}
    cond = {"n_cond_tokens": K, "cond_dim": C} if conditional else {}
    return UNet1D(UNet1DConfig(n_tokens=n, token_dim=D, **cond, **fields))


def randomise(m: UNet1D) -> UNet1D:
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


class TestUNetOddTokens(BackboneContract):
    n = 5

    def make_module(self):
        return make_unet(self.n, levels=3, channel_mults=(1, 2, 2))

    def make_inputs(self, batch):
        mask = torch.ones(batch, self.n, dtype=torch.bool)
        mask[:, -1] = False
        return torch.randn(batch, self.n, D), torch.rand(batch), torch.randn(batch, K, C), mask


class TestUNetOneToken(BackboneContract):
    n = 1

    def make_module(self):
        return make_unet(self.n, conditional=False, out_dim=2)

    def make_inputs(self, batch):
        return torch.randn(batch, self.n, D), torch.rand(batch), None, None


def test_registry_and_presets():
    assert BACKBONES.get("unet") is UNet1D
    tiny, small = UNet1DConfig.tiny(8, 16), UNet1DConfig.small(8, 16, 2, 5, dropout=0.1)
    assert (tiny.base_channels, tiny.levels, tiny.channel_mults) == (32, 2, (1, 2))
    assert (small.base_channels, small.levels, small.channel_mults, small.dropout) == (128, 3, (1, 2, 2), 0.1)
    assert UNet1DConfig.from_json(small.to_json()) == small


@pytest.mark.parametrize(("n", "levels", "expected"), [(1, 2, 0), (2, 2, 1), (3, 2, 2), (5, 3, 3), (16, 2, 2)])
def test_levels_are_clipped_to_the_token_count(n, levels, expected):
    m = make_unet(n, levels=levels, channel_mults=(1,) * levels)
    assert m.config.effective_levels == expected == len(m.down) == len(m.up)


def test_config_validation_messages():
    with pytest.raises(InvalidInputError, match=r"one multiplier per level \(levels=3\), got 2"):
        UNet1DConfig(levels=3, channel_mults=(1, 2))
    with pytest.raises(InvalidInputError, match=r"channel_mults\[1\]"):
        UNet1DConfig(levels=2, channel_mults=(1, 0))
    with pytest.raises(InvalidInputError, match="base_channels"):
        UNet1DConfig(base_channels=0)


@pytest.mark.parametrize("n", [1, 5])
def test_output_depends_on_input_condition_and_time_after_perturbing(n):
    m = randomise(make_unet(n, levels=3, channel_mults=(1, 2, 2)))
    x, t, cond = torch.randn(2, n, D), torch.rand(2), torch.randn(2, K, C)
    y = m(x, t, cond)
    assert not torch.allclose(y, m(torch.randn(2, n, D), t, cond))
    assert not torch.allclose(y, m(x, t, torch.randn(2, K, C)))
    assert not torch.allclose(y, m(x, torch.rand(2), cond))


def test_mask_zeroes_padding_values_at_input():
    m = randomise(make_unet(5))
    x, t, cond = torch.randn(2, 5, D), torch.rand(2), torch.randn(2, K, C)
    mask = torch.tensor([[True, True, True, False, False], [True, False, True, True, True]])
    x_zeroed = x * mask.unsqueeze(-1)
    torch.testing.assert_close(m(x, t, cond, mask), m(x_zeroed, t, cond, None))
    x2 = x.clone()
    x2[~mask] = 100.0
    torch.testing.assert_close(m(x, t, cond, mask), m(x2, t, cond, mask))
