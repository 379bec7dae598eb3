from __future__ import annotations

import pytest
import torch

from genailab.errors import InvalidInputError
from genailab.foundation.backbones import BACKBONES, DiT, DiTConfig

from .contracts import BackboneContract

N, D, K, C = 6, 4, 2, 3


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny shapes gain nothing from intra-op threads, and on a shared 2-core machine OpenMP barriers
    # make each op 100x slower; restore the global setting afterwards.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_dit(conditioning: str = "adaln", **kw) -> DiT:
    fields = {"hidden_dim": 16, "depth": 2, "n_heads": 2, **kw}
    return DiT(DiTConfig(n_tokens=N, token_dim=D, n_cond_tokens=K, cond_dim=C, conditioning=conditioning, **fields))


def randomise(m: DiT) -> DiT:
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def padding_mask(batch: int) -> torch.Tensor:
    mask = torch.ones(batch, N, dtype=torch.bool)
    mask[:, -2:] = False
    mask[0, 1] = False
    return mask


class _DiTContract(BackboneContract):
    conditioning = "adaln"

    def make_module(self):
        return make_dit(self.conditioning)

    def make_inputs(self, batch):
        return torch.randn(batch, N, D), torch.rand(batch), torch.randn(batch, K, C), padding_mask(batch)


class TestDiTAdaLN(_DiTContract):
    conditioning = "adaln"


class TestDiTFiLM(_DiTContract):
    conditioning = "film"


class TestDiTCrossAttention(_DiTContract):
    conditioning = "cross_attention"


class TestDiTUnconditionalNoMask(BackboneContract):
    def make_module(self):
        return DiT(DiTConfig.tiny(N, D, hidden_dim=16, n_heads=2, depth=1, out_dim=3))

    def make_inputs(self, batch):
        return torch.randn(batch, N, D), torch.rand(batch), None, None


def test_registry_and_presets():
    assert BACKBONES.get("dit") is DiT
    for preset, (w, depth, heads) in {
        "tiny": (64, 2, 4),
        "small": (128, 3, 4),
        "base": (256, 6, 4),
        "large": (512, 8, 8),
    }.items():
        cfg = getattr(DiTConfig, preset)(8, 16, 2, 5, conditioning="film")
        assert (cfg.hidden_dim, cfg.depth, cfg.n_heads) == (w, depth, heads)
        assert (cfg.n_tokens, cfg.token_dim, cfg.n_cond_tokens, cfg.cond_dim, cfg.conditioning) == (
            8,
            16,
            2,
            5,
            "film",
        )


def test_config_validation_messages():
    with pytest.raises(InvalidInputError, match="'adaln', 'cross_attention', 'film'"):
        DiTConfig(conditioning="concat")
    with pytest.raises(InvalidInputError, match="hidden_dim=30 must be divisible by n_heads=4"):
        DiTConfig(hidden_dim=30, n_heads=4)
    with pytest.raises(InvalidInputError, match="needs condition tokens.*'adaln', 'film'"):
        DiTConfig(conditioning="cross_attention")
    with pytest.raises(InvalidInputError, match="mlp_ratio"):
        DiTConfig(mlp_ratio=0.0)
    with pytest.raises(InvalidInputError, match="dropout"):
        DiTConfig(dropout=1.0)


def test_config_json_round_trip():
    cfg = DiTConfig.tiny(N, D, K, C, conditioning="cross_attention", mlp_ratio=2.0)
    assert DiTConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("conditioning", ["adaln", "film", "cross_attention"])
def test_mask_hides_padding_tokens(conditioning):
    m = randomise(make_dit(conditioning))
    x, t, cond, mask = torch.randn(2, N, D), torch.rand(2), torch.randn(2, K, C), padding_mask(2)
    x2 = x.clone()
    x2[~mask] = 100.0 * torch.randn_like(x2[~mask])
    y, y2 = m(x, t, cond, mask), m(x2, t, cond, mask)
    torch.testing.assert_close(y[mask], y2[mask])
    assert not torch.allclose(m(x, t, cond, None)[mask], m(x2, t, cond, None)[mask])  # without it, they leak


def test_all_padding_sample_is_finite():
    m = randomise(make_dit())
    mask = padding_mask(2)
    mask[1] = False
    assert torch.isfinite(m(torch.randn(2, N, D), torch.rand(2), torch.randn(2, K, C), mask)).all()


@pytest.mark.parametrize("conditioning", ["adaln", "film", "cross_attention"])
def test_output_depends_on_condition_and_time_after_perturbing(conditioning):
    m = randomise(make_dit(conditioning))
    x, t, cond = torch.randn(2, N, D), torch.rand(2), torch.randn(2, K, C)
    y = m(x, t, cond)
    assert not torch.allclose(y, m(x, t, torch.randn(2, K, C)))
    assert not torch.allclose(y, m(x, torch.rand(2), cond))


def test_dropout_only_in_train_mode():
    m = randomise(make_dit(dropout=0.5))
    inputs = (torch.randn(2, N, D), torch.rand(2), torch.randn(2, K, C))
    torch.testing.assert_close(m.eval()(*inputs), m(*inputs))
    m.train()
    assert not torch.allclose(m(*inputs), m(*inputs))


def test_shape_errors():
    m = make_dit()
    with pytest.raises(InvalidInputError, match="cond must have shape"):
        m(torch.randn(2, N, D), torch.rand(2), torch.randn(2, K + 1, C))
    with pytest.raises(InvalidInputError, match="mask must have shape"):
        m(torch.randn(2, N, D), torch.rand(2), torch.randn(2, K, C), torch.ones(2, N - 1, dtype=torch.bool))
