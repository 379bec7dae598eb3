import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genailab.diffusion import cfg_combine, check_guidance, compose_guidance, guided_denoiser
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


# ---------------------------------------------------------------- guided_denoiser
KEYS = ("cell_type", "batch")


class _Net:
    """A toy conditional network: the prediction is ``x * t + sum of the kept keys' offsets``; records calls."""

    offsets = {"cell_type": 1.0, "batch": 10.0}

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond):
        self.calls.append(cond)
        shift = 0.0 if cond is None else sum(self.offsets[k] for k in KEYS if k not in cond)
        return x * t.view(-1, 1) + shift

    @staticmethod
    def condition(nulled):  # the "condition input" is just the set of nulled keys
        return frozenset(nulled)


def _run(guidance, keys=KEYS):
    net = _Net()
    x, t = torch.randn(3, 4), torch.full((3,), 0.5)
    out = guided_denoiser(net, keys, guidance, _Net.condition)(x, t)
    return out, x * 0.5, net.calls


def test_guided_denoiser_without_keys_is_unconditional():
    out, base, calls = _run({"anything": 3.0}, keys=())
    torch.testing.assert_close(out, base)
    assert calls == [None]


@pytest.mark.parametrize("guidance", [1.0, {}, {"cell_type": 1.0}])
def test_guided_denoiser_scale_one_is_one_conditional_call(guidance):
    out, base, calls = _run(guidance)
    torch.testing.assert_close(out, base + 11.0)
    assert calls == [frozenset()]


@pytest.mark.parametrize("scale", [0.0, 2.0, -0.5])
def test_guided_denoiser_joint_scale_is_cfg_against_all_keys_nulled(scale):
    out, base, calls = _run(scale)
    torch.testing.assert_close(out, cfg_combine(base + 11.0, base, scale))
    assert calls == [frozenset(), frozenset(KEYS)]


def test_guided_denoiser_per_key_scales_compose():
    out, base, calls = _run({"cell_type": 3.0, "batch": 0.0})
    full = base + 11.0
    expected = compose_guidance(full, {"cell_type": base + 10.0, "batch": base + 1.0}, {"cell_type": 3.0, "batch": 0.0})
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out, base + 3.0 * 1.0 + 0.0 * 10.0)  # each key's offset scaled by its own s_k
    assert calls == [frozenset(), frozenset({"cell_type"}), frozenset({"batch"})]


def test_guided_denoiser_builds_conditions_once():
    built = []

    def condition(nulled):
        built.append(nulled)
        return frozenset(nulled)

    denoise = guided_denoiser(_Net(), KEYS, {"batch": 2.0}, condition)
    for _ in range(3):
        denoise(torch.zeros(2, 4), torch.zeros(2))
    assert built == [(), ("batch",)]


def test_guided_denoiser_rejects_unknown_keys():
    with pytest.raises(InvalidInputError, match="unknown condition key\\(s\\) \\['tissue'\\]; keys are"):
        guided_denoiser(_Net(), KEYS, {"tissue": 2.0}, _Net.condition)


@pytest.mark.parametrize("bad", [math.nan, math.inf, "2", True, {"cell_type": math.nan}])
def test_check_guidance_rejects_non_finite_scales(bad):
    with pytest.raises(InvalidInputError, match="must be a finite number"):
        check_guidance(bad)
    check_guidance(2.0)
    check_guidance({"cell_type": 0.0, "batch": 3})
