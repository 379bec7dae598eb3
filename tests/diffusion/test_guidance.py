import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genailab.diffusion import cfg_combine, compose_guidance
from genailab.errors import InvalidInputError


def _preds(seed=0, k=2):
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(3, 4, 5, generator=g)
    return full, {f"key{i}": torch.randn(3, 4, 5, generator=g) for i in range(k)}


def test_cfg_endpoints_and_extrapolation():
    cond, uncond = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(cfg_combine(cond, uncond, 1.0), cond)
    assert torch.equal(cfg_combine(cond, uncond, 0), uncond)
    torch.testing.assert_close(cfg_combine(cond, uncond, 2.0), 2 * cond - uncond)
    torch.testing.assert_close(cfg_combine(cond, uncond, 0.5), 0.5 * (cond + uncond))


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(-10, 10, allow_nan=False))
def test_cfg_is_affine_in_scale(scale):
    cond, uncond = torch.ones(2, 3), torch.zeros(2, 3)
    torch.testing.assert_close(cfg_combine(cond, uncond, scale), torch.full((2, 3), scale))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "2", True])
def test_cfg_rejects_bad_scale(bad):
    with pytest.raises(InvalidInputError, match="guidance_scale="):
        cfg_combine(torch.zeros(2), torch.zeros(2), bad)


def test_cfg_rejects_shape_mismatch():
    with pytest.raises(InvalidInputError, match="uncond must be a tensor with the shape of cond \\(2, 3\\)"):
        cfg_combine(torch.zeros(2, 3), torch.zeros(2, 1), 2.0)


def test_compose_all_ones_returns_full():
    full, dropped = _preds()
    assert torch.equal(compose_guidance(full, dropped, {"key0": 1.0, "key1": 1.0}), full)
    assert torch.equal(compose_guidance(full, dropped, {}), full)


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.5])
def test_compose_with_one_key_equals_cfg(scale):
    full, dropped = _preds(k=1)
    torch.testing.assert_close(
        compose_guidance(full, dropped, {"key0": scale}), cfg_combine(full, dropped["key0"], scale)
    )


def test_compose_sums_per_key_terms_and_ignores_unscaled_keys():
    full, dropped = _preds(k=3)
    out = compose_guidance(full, dropped, {"key0": 2.0, "key1": 0.0})
    expected = full + 1.0 * (full - dropped["key0"]) - 1.0 * (full - dropped["key1"])
    torch.testing.assert_close(out, expected)


def test_compose_errors():
    full, dropped = _preds()
    with pytest.raises(InvalidInputError, match="scales has key\\(s\\) \\['other'\\].*dropped has keys"):
        compose_guidance(full, dropped, {"key0": 2.0, "other": 2.0})
    with pytest.raises(InvalidInputError, match="guidance_scale\\['key0'\\]=nan"):
        compose_guidance(full, dropped, {"key0": math.nan})
    with pytest.raises(InvalidInputError, match="dropped\\['key1'\\] must be a tensor with the shape of full"):
        compose_guidance(full, {**dropped, "key1": full[:1]}, {"key1": 2.0})
